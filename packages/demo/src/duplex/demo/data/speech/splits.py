"""Train and held-out splits: which sentences and voices a clip may use.

Codec quality is scored on sentences and voices never seen in training, so the split is a fixed
property of each sentence (a hash of its text) and of each voice (a fixed list), not of a draw:
any number of training clips, from any seed, never touches the held-out side.
"""

from __future__ import annotations

import hashlib
from typing import Literal, get_args

Split = Literal["train", "heldout"]
SPLITS: tuple[str, ...] = get_args(Split)

# The share of sentences (by hash) reserved for evaluation.
HELDOUT_FRACTION = 0.05


def check_split(split: str) -> Split:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    return split  # type: ignore[return-value]


def sentence_key(sentence: str) -> str:
    """The form two sentences share when they are the same sentence (case and spacing aside)."""
    return " ".join(sentence.lower().split())


def is_heldout_sentence(sentence: str, fraction: float = HELDOUT_FRACTION) -> bool:
    """Whether ``sentence`` belongs to the held-out split: the first 8 bytes of the SHA-256 of its key,
    read as a fraction of 2**64, fall below ``fraction``. Stable across runs, machines and corpora."""
    digest = hashlib.sha256(sentence_key(sentence).encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64
