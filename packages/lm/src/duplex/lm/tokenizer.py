"""The text tokenizer of the inner-monologue stream: a SentencePiece model (docs/architecture.md §3.10).

Moshi's vocabulary reserves ids 0 ``<unk>``, 1 ``<s>``, 2 ``</s>`` and 3 ``<pad>``; the text
stream uses 3 as PAD (nothing said at this frame) and reuses 0 as EPAD (the last padding frame
before a word). A generated token prints as its piece with "▁" turned into a space, and PAD /
EPAD print nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece

WORD_BOUNDARY = "\u2581"  # "▁", SentencePiece's marker for a preceding space


class TextTokenizer:
    """A SentencePiece model with the text-stream conventions of Moshi."""

    def __init__(self, processor: sentencepiece.SentencePieceProcessor, pad_id: int = 3, epad_id: int = 0):
        self.processor = processor
        self.pad_id = pad_id
        self.epad_id = epad_id
        if not 0 <= pad_id < self.vocab_size or not 0 <= epad_id < self.vocab_size:
            raise ValueError(
                f"pad_id={pad_id} / epad_id={epad_id} outside the vocabulary of {self.vocab_size}"
            )

    @classmethod
    def from_file(cls, path: str | Path, pad_id: int = 3, epad_id: int = 0) -> TextTokenizer:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no SentencePiece model at {path}")
        processor = sentencepiece.SentencePieceProcessor()
        try:
            processor.Load(str(path))
        except (OSError, RuntimeError) as error:
            raise ValueError(f"{path} is not a SentencePiece model: {error}") from error
        return cls(processor, pad_id=pad_id, epad_id=epad_id)

    # -- vocabulary -----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.processor.GetPieceSize()

    @property
    def unk_id(self) -> int:
        return self.processor.unk_id()

    @property
    def bos_id(self) -> int:
        return self.processor.bos_id()

    @property
    def eos_id(self) -> int:
        return self.processor.eos_id()

    def __len__(self) -> int:
        return self.vocab_size

    def _check(self, token: int) -> int:
        token = int(token)
        if not 0 <= token < self.vocab_size:
            raise ValueError(f"text token {token} outside the vocabulary [0, {self.vocab_size})")
        return token

    # -- text <-> ids ---------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return list(self.processor.EncodeAsIds(text))

    def encode_words(self, text: str) -> list[list[int]]:
        """Ids of each whitespace-separated word (how text is laid out on the frame grid)."""
        return [self.encode(word) for word in text.split()]

    def decode(self, tokens: Iterable[int]) -> str:
        """Text of a token sequence; PAD and EPAD are dropped."""
        ids = [self._check(t) for t in tokens]
        return self.processor.DecodeIds([t for t in ids if t not in (self.pad_id, self.epad_id)])

    def piece(self, token: int) -> str:
        return self.processor.IdToPiece(self._check(token))

    def token_text(self, token: int) -> str:
        """What a streamed text token prints: its piece with "▁" as a space, nothing for PAD/EPAD."""
        token = self._check(token)
        if token in (self.pad_id, self.epad_id):
            return ""
        return self.processor.IdToPiece(token).replace(WORD_BOUNDARY, " ")

    def tokens_text(self, tokens: Sequence[int]) -> str:
        """The concatenated :meth:`token_text` of a stream of generated tokens."""
        return "".join(self.token_text(t) for t in tokens)
