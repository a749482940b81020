"""What a TTS model is asked to say: a script of turns, split into word entries (docs/architecture.md §5.3).

A script is a list of turns, alternating between the main speaker (first voice) and the other;
an empty first turn starts with the other speaker. Text may tag its turns instead, with ``[S1]``
(main) and ``[S2]`` (other): :func:`parse_turns`. In a turn, words are separated by whitespace
and ``<break time="1.5s"/>`` inserts about that much silence.

Each word becomes an :class:`Entry`: its token ids, preceded by the speaker's turn token (main
1, other 2) on the first word of a turn when the speaker changes (multi-speaker models only),
and the padding steps forced after it. A break is an entry without tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from duplex.lm.tokenizer import TextTokenizer

MAIN_SPEAKER_TOKEN = 1
OTHER_SPEAKER_TOKEN = 2
_BREAK = re.compile(r'<break\s+time="([0-9]+(?:\.[0-9]*)?)s"\s*/?>')
_SPEAKER_TAG = re.compile(r"\[S([12])\]")
_DROPPED = str.maketrans({"’": "'", ":": " ", "(": None, ")": None})


@dataclass
class Entry:
    """One word to say (or, without tokens, a pause of ``padding`` steps)."""

    tokens: list[int]
    text: str
    padding: int = 0


def parse_turns(text: str) -> list[str]:
    """Turns of a text tagged ``[S1]`` / ``[S2]`` (untagged text: one turn of the main speaker)."""
    parts = _SPEAKER_TAG.split(text)
    segments = [(0, parts[0])] + [
        (int(tag) - 1, body) for tag, body in zip(parts[1::2], parts[2::2], strict=True)
    ]
    turns: list[str] = []
    for speaker, body in segments:
        if not body.strip():
            continue
        if not turns and speaker == 1:
            turns.append("")  # an empty first turn: the other speaker starts
        if turns and (len(turns) - 1) % 2 == speaker:
            turns[-1] = f"{turns[-1]} {body.strip()}".strip()
        else:
            turns.append(body.strip())
    return turns


def script_entries(
    script: Sequence[str],
    tokenizer: TextTokenizer,
    frame_rate: float,
    multi_speaker: bool = True,
    padding_between: int = 0,
) -> list[Entry]:
    """The entries of a script of turns; ``padding_between``: steps forced after every word (longer
    words get their extra pieces on top), which makes the model articulate more clearly."""
    entries: list[Entry] = []
    last_speaker: int | None = None
    for index, turn in enumerate(script):
        speaker = index % 2
        first_word = True
        for part, piece in enumerate(_BREAK.split(turn.translate(_DROPPED))):
            if part % 2:  # the captured duration of a break
                entries.append(Entry([], "", padding=round(float(piece) * frame_rate)))
                continue
            for word in piece.split():
                tokens = tokenizer.encode(word)
                if first_word and multi_speaker and speaker != last_speaker:
                    tokens.insert(0, MAIN_SPEAKER_TOKEN if speaker == 0 else OTHER_SPEAKER_TOKEN)
                    last_speaker = speaker
                first_word = False
                padding = max(0, padding_between + len(tokens) - 1) if padding_between > 0 else 0
                entries.append(Entry(tokens, word, padding))
    return entries
