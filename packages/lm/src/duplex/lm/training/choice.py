"""Teacher-forced answer choice on scripted conversations (``duplex data conversations``).

The first text token of a scripted answer says which answer the model picked (no two answers open
with the same word), and the user's question is all that tells the right one. Fed the recording up
to that token, how often is the LM's most likely token the right one? Scored with the user's audio
as recorded and, beside it, with the user silenced (zero tokens): what the LM gets from the
question is the difference. Far faster than a live call, and free of its timing: a training run's
own conversations against new ones in the same voices tells memorising from learning
(docs/architecture.md §8.3).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from duplex.lm.data.dataset import dialogue_sequence
from duplex.lm.data.format import find_index, load_dataset
from duplex.lm.data.interleave import FRAME_RATE, TEXT_EPAD, TEXT_PAD, ZERO_TOKEN
from duplex.lm.data.token_cache import TokenCache
from duplex.lm.model import LMModel


@torch.no_grad()
def answer_choice_accuracy(
    model: LMModel,
    conversations: str | Path,
    cache: TokenCache,
    tokenize,  # noqa: ANN001 (str -> list[int])
    context_frames: int = 100,
    limit: int | None = None,
) -> dict[str, float]:
    """``exchanges``, ``accuracy`` and ``accuracy_user_silenced`` over the exchanges of the first
    ``limit`` conversations of the folder ``conversations``."""
    model = model.eval()
    dep_q = model.config.dep_q
    index = find_index(conversations)
    records = [json.loads(line) for line in index.read_text().splitlines() if line.strip()][:limit]
    dialogues = {d.entry.audio_path.resolve(): d for d in load_dataset(conversations)}
    right = {"accuracy": 0, "accuracy_user_silenced": 0}
    exchanges = 0
    for record in records:
        sequence = dialogue_sequence(
            dialogues[(index.parent / record["path"]).resolve()], cache, tokenize, dep_q
        )
        for exchange in record["exchanges"]:
            onset = int(exchange["answer_s"][0] * FRAME_RATE)  # as the text stream places words
            text = sequence[0]
            spoken = [t for t in range(onset, text.shape[0]) if int(text[t]) not in (TEXT_PAD, TEXT_EPAD)]
            if not spoken:
                continue
            first = spoken[0]
            start = max(0, first - context_frames)
            window = sequence[:, start : first + 1]
            silenced = window.clone()
            silenced[1 + dep_q :] = ZERO_TOKEN
            logits = model(torch.stack([window, silenced])).text_logits[:, 0, -1]
            chosen = logits.argmax(-1) == text[first]
            right["accuracy"] += int(chosen[0])
            right["accuracy_user_silenced"] += int(chosen[1])
            exchanges += 1
    if exchanges == 0:
        raise ValueError(f"{conversations}: no scripted exchanges to score (is it a conversations folder?)")
    return {"exchanges": exchanges, **{k: v / exchanges for k, v in right.items()}}
