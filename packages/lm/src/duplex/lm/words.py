"""Words with times from a streaming STT model's text tokens (docs/architecture.md §5.2).

The STT models write their transcript on the text stream, ``audio_delay`` seconds behind the
audio: PAD (3) while nothing new is said, then EPAD (0) at the step before a word's first piece,
then the word's SentencePiece pieces. So the tokens between two EPADs spell one word, the word
starts at the step after the first EPAD and ends at the second. Its times are those steps at
12.5 steps/s, less the time the text lags: the silence fed before the audio plus the model's
audio delay. Two rarer cases are handled as the reference's read-out does:

* several words between two EPADs (said quickly, the boundary skipped): each word gets as many
  steps as it has pieces, the last one the rest of the segment;
* the last word (no EPAD after it): it ends at the first end-of-text token after its start, else
  one second after its start, else at the last step.

:class:`WordReader` does this as the tokens arrive, one reader per stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from duplex.lm.tokenizer import TextTokenizer


@dataclass(frozen=True)
class Word:
    text: str
    start: float  # seconds from the start of the audio
    end: float

    def to_dict(self) -> dict:
        return {"text": self.text, "start": round(self.start, 3), "end": round(self.end, 3)}


@dataclass
class WordReader:
    """Turn one stream's text tokens into :class:`Word` s as they arrive.

    ``offset``: seconds the text lags the audio (silence prefix + audio delay). ``push(token)``
    returns the words that the token completes; ``finish()`` those still open. ``close_after``
    (seconds, live streams): a word whose pieces stopped that long ago is closed as the last word
    of a stream would be, without waiting for the next word's marker (pieces that still come
    before that marker are then dropped).
    """

    tokenizer: TextTokenizer
    frame_rate: float
    offset: float
    close_after: float | None = None
    step: int = 0
    _start: int | None = None  # first step of the open segment (after its EPAD)
    _pieces: list[tuple[int, int]] = field(default_factory=list)  # (step, token) of the open segment
    _end_of_text: int | None = None  # first end-of-text step inside the open segment

    def time(self, step: int) -> float:
        return max(0.0, step / self.frame_rate - self.offset)

    def push(self, token: int) -> list[Word]:
        step, self.step = self.step, self.step + 1
        words: list[Word] = []
        if token == self.tokenizer.epad_id:
            if self._start is not None:
                words = self._close(step)
            self._start, self._pieces, self._end_of_text = step + 1, [], None
        elif self._start is not None:
            if token == self.tokenizer.eos_id and self._end_of_text is None:
                self._end_of_text = step
            elif token > self.tokenizer.pad_id:
                self._pieces.append((step, token))
            elif self.close_after is not None and self._pieces:
                if self.step - self._pieces[-1][0] > self.close_after * self.frame_rate:
                    words = self.finish()
        return words

    def finish(self) -> list[Word]:
        """Close the last segment (the end of the stream)."""
        if self._start is None:
            return []
        end = self._end_of_text
        if end is None:
            end = min(self.step, math.ceil(self._start + self.frame_rate))
        # pieces after the end do not belong to the word
        self._pieces = [(step, token) for step, token in self._pieces if step < end]
        words = self._close(end)
        self._start, self._pieces, self._end_of_text = None, [], None
        return words

    def _close(self, end: int) -> list[Word]:
        start = self._start
        assert start is not None
        texts = self.tokenizer.decode([token for _, token in self._pieces]).split()
        words = []
        for text in texts[:-1]:  # words said so fast that their boundary is missing
            length = len(self.tokenizer.encode(text))
            words.append(Word(text, self.time(start), self.time(start + length)))
            start += length
        if texts:
            words.append(Word(texts[-1], self.time(start), self.time(end)))
        return words
