"""Train a small sentencepiece model with Moshi's special ids (0 unk, 1 bos, 2 eos, 3 pad)."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import sentencepiece


def train_tokenizer(
    texts: Iterable[str],
    output: str | Path,
    vocab_size: int = 64,
    model_type: str = "unigram",
    normalization: str = "nmt_nfkc",
    num_threads: int = 16,
) -> Path:
    """Write ``output`` (a ``.model`` file) trained on ``texts``; ids 0-3 are unk, bos, eos, pad.

    ``normalization`` is sentencepiece's ``normalization_rule_name``; one thread trains reproducibly.
    """
    output = Path(output)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        normalization_rule_name=normalization,
        num_threads=num_threads,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(model.getvalue())
    return output
