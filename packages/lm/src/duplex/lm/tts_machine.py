"""The TTS state machine: which text token the model reads next (docs/architecture.md §5.3).

A TTS model is not given time-aligned text; it decides when each word starts. At every step its
text prediction is read as one of two wishes: PAD (keep going) or NEW_WORD (start the next word).
The machine grants or overrides it:

* while the current word's tokens are still being fed, or in forced padding (the first
  ``initial_padding`` steps, or an entry's own padding), it pads, feeding the queued tokens one
  per step;
* after ``max_padding`` pads in a row it starts the next word whatever the model says;
* on NEW_WORD it takes the next entry: its tokens are queued (the first is fed on the spot), its
  text and step go to the transcript. With ``second_stream_ahead`` = k, the tokens of the word k
  entries further on go to a second text stream, fed alongside, and the step's token becomes
  ``(second + 1) * card + first``, the muxed id the model's text embedding splits again;
* with no entry left, the stream ends (``end_step``), unless the text is still coming in
  (``State.open``): then it pads and waits.

A stream whose text is still coming should not be stepped while :meth:`State.needs_text`: the
next word and the ``second_stream_ahead`` words after it are not all there yet. Holding the step
until they arrive makes the speech the same however, and however fast, the text comes in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from duplex.lm.tts_script import Entry

NEW_WORD = 0
PAD = 3
ZERO = -1  # embeds to nothing


@dataclass
class State:
    entries: deque[Entry]
    remaining_padding: int
    forced_padding: int
    queued: deque[int] = field(default_factory=deque)
    lookahead: deque[int] = field(default_factory=deque)
    end_step: int | None = None
    open: bool = False  # more entries may still come (streamed text): never end, wait
    transcript: list[tuple[str, int]] = field(default_factory=list)  # (word, step it started)

    def add(self, entries: Iterable[Entry]) -> None:
        self.entries.extend(entries)

    def needs_text(self, ahead: int) -> bool:
        """Whether a word start now would lack the next word or its ``ahead`` followers."""
        if not self.open:
            return False
        words = 0
        for entry in self.entries:
            words += bool(entry.tokens)
            if words > ahead:
                return False
        return True

    def tokens_ahead(self, ahead: int) -> list[int]:
        """The tokens of the ``ahead``-th upcoming entry that has any."""
        for entry in self.entries:
            if entry.tokens:
                ahead -= 1
                if ahead == 0:
                    return entry.tokens
        return []


@dataclass
class TTSMachine:
    card: int  # text_card + 1: the base of the muxed second stream
    second_stream_ahead: int = 0
    max_padding: int = 8
    initial_padding: int = 2

    def new_state(self, entries: Iterable[Entry], open: bool = False) -> State:
        return State(deque(entries), self.initial_padding, self.initial_padding, open=open)

    def next_token(self, step: int, state: State, predicted: int) -> int:
        """The text token fed at ``step`` given the model's ``predicted`` one."""
        wish = predicted if predicted in (NEW_WORD, PAD) else PAD
        if state.queued or state.forced_padding > 0:
            wish = PAD
        elif state.remaining_padding <= 0:
            wish = NEW_WORD

        if wish == NEW_WORD:
            wish = self._start_word(step, state)

        if wish == PAD:
            state.remaining_padding = max(state.remaining_padding - 1, 0)
            state.forced_padding = max(state.forced_padding - 1, 0)
            token = state.queued.popleft() if state.queued else PAD
        else:
            token = NEW_WORD
        if not self.second_stream_ahead:
            return token
        second = ZERO
        if token == NEW_WORD:  # the marker moves to the second stream; the word's first token is fed
            second = NEW_WORD
            token = state.queued.popleft() if state.queued else PAD
        elif state.lookahead:
            second = state.lookahead.popleft()
        return (second + 1) * self.card + token

    def _start_word(self, step: int, state: State) -> int:
        """Take the next entry on NEW_WORD; returns what the step becomes (NEW_WORD or PAD)."""
        if not state.entries:
            if state.open:  # the text is still coming: wait for it
                return PAD
            ended = state.end_step is not None
            if not ended:
                state.end_step = step
            return NEW_WORD if self.second_stream_ahead and not ended else PAD
        entry = state.entries.popleft()
        state.forced_padding = entry.padding
        if not entry.tokens:  # a break: as if the model had padded
            return PAD
        state.transcript.append((entry.text, step))
        state.queued.extend(entry.tokens)
        if self.second_stream_ahead:
            state.lookahead.extend(state.tokens_ahead(self.second_stream_ahead))
        state.remaining_padding = self.max_padding
        return NEW_WORD
