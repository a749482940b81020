"""A conversation dataset on disk, in the moshi-finetune format (docs/architecture.md §8.2).

``audio/conversation_NNNNNN.wav`` (16-bit stereo: the model left, the user right) with its word
alignments in ``.json`` beside it, the ``data.jsonl`` index (each line also says which questions
were asked, and when), ``conversations.json`` (what made the dataset) and, for the train split, a
SentencePiece ``tokenizer.model`` trained on the script. The held-out split asks every question of
the script in turn, in voices the train split never uses: the LM's test set.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import soundfile
from duplex.demo.data.conversations.config import ConversationConfig
from duplex.demo.data.conversations.generator import ConversationGenerator
from duplex.demo.data.conversations.script import BACKCHANNELS, SCRIPT, words
from duplex.demo.data.speech.dataset import one_torch_thread
from duplex.demo.data.speech.splits import Split, check_split
from duplex.demo.data.speech.voices import voices

INDEX_NAME = "data.jsonl"
MANIFEST_NAME = "conversations.json"
TOKENIZER_NAME = "tokenizer.model"


def script_corpus() -> list[str]:
    """The script's sentences as the text stream writes them (lower case, no punctuation)."""
    sentences = [e.answer for e in SCRIPT] + [e.question for e in SCRIPT] + list(BACKCHANNELS)
    return [" ".join(words(s)) for s in sentences]


def script_digest() -> str:
    """A short digest of the script (questions, answers, backchannels): datasets written from
    another script are not this one's, whatever their count and seed."""
    text = json.dumps([[e.question, e.answer] for e in SCRIPT] + [list(BACKCHANNELS)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_conversations(
    output: str | Path,
    count: int,
    split: Split = "train",
    seed: int = 0,
    config: ConversationConfig | None = None,
    tokenizer_vocab_size: int = 200,
) -> Path:
    """Write ``count`` conversations of ``split`` under ``output``; returns the index path."""
    split = check_split(split)
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    config = config or ConversationConfig()
    output = Path(output)
    (output / "audio").mkdir(parents=True, exist_ok=True)
    user_voices = [v for v in voices(split) if v.name != config.model_voice]
    generator = ConversationGenerator(user_voices, config)
    lines = []
    with one_torch_thread():
        for index in range(count):
            asked = [index % len(SCRIPT)] if split == "heldout" else None
            conversation = generator.conversation(seed, index, asked)
            relative = f"audio/conversation_{index:06d}.wav"
            soundfile.write(str(output / relative), conversation.audio, config.sample_rate, subtype="PCM_16")
            alignments = {"alignments": conversation.alignments}
            (output / relative).with_suffix(".json").write_text(json.dumps(alignments))
            lines.append(json.dumps({"path": relative, **conversation.record()}))
    index_path = output / INDEX_NAME
    index_path.write_text("\n".join(lines) + "\n")
    manifest = {
        "split": split,
        "seed": seed,
        "conversations": count,
        "script": script_digest(),
        "config": config.model_dump(mode="json"),
    }
    (output / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    if split == "train":
        from duplex.lm.data.text_tokenizer import train_tokenizer

        train_tokenizer(script_corpus(), output / TOKENIZER_NAME, vocab_size=tokenizer_vocab_size)
    return index_path
