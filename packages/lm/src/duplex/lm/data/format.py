"""The moshi-finetune dataset format: reading and validating it.

A dataset is a ``.jsonl`` index, one ``{"path": ..., "duration": ...}`` object a line. Each path
names a stereo wav (the model's voice on the left channel, the user's on the right), relative to
the index's folder unless absolute. Next to each wav, a ``.json`` with the same stem holds the
word alignments::

    {"alignments": [["hello", [0.12, 0.48], "SPEAKER_MAIN"], ...]}

with times in seconds. Words of the speaker named ``main_speaker`` form the model's text stream.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import soundfile

MAIN_SPEAKER = "SPEAKER_MAIN"
USER_SPEAKER = "SPEAKER_USER"  # what duplex's own datasets call the other side
# Words may end this much after the audio (timings are rounded by aligners).
TIMING_TOLERANCE_S = 0.05
# The index's duration may differ from the audio's by this much (or this fraction of it): indexes
# round durations, but one that is far off describes another file (or a corrupt one).
DURATION_TOLERANCE_S = 0.5
DURATION_TOLERANCE_FRACTION = 0.02


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class Word:
    text: str
    start: float
    end: float
    speaker: str


@dataclass(frozen=True)
class DialogueEntry:
    """One line of the index, resolved against the index's folder."""

    audio_path: Path
    duration: float

    @property
    def alignment_path(self) -> Path:
        return self.audio_path.with_suffix(".json")


def read_index(index_path: str | Path) -> list[DialogueEntry]:
    """Parse a ``.jsonl`` index; paths are resolved relative to its folder."""
    index_path = Path(index_path)
    if not index_path.is_file():
        raise DatasetError(f"dataset index {index_path} does not exist")
    entries = []
    for line_number, line in enumerate(index_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{index_path}:{line_number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{where}: not valid JSON ({error.msg})") from error
        if not isinstance(record, dict) or "path" not in record or "duration" not in record:
            raise DatasetError(f'{where}: each line must be an object with "path" and "duration"')
        duration = record["duration"]
        if not isinstance(duration, int | float) or duration <= 0:
            raise DatasetError(f"{where}: duration must be a positive number, got {duration!r}")
        path = Path(record["path"])
        if not path.is_absolute():
            path = index_path.parent / path
        entries.append(DialogueEntry(audio_path=path, duration=float(duration)))
    if not entries:
        raise DatasetError(f"dataset index {index_path} lists no files")
    return entries


def find_index(data: str | Path) -> Path:
    """Accept either the ``.jsonl`` itself or a folder holding exactly one."""
    data = Path(data)
    if data.is_file():
        return data
    if not data.is_dir():
        raise DatasetError(f"dataset {data} does not exist")
    candidates = sorted(data.glob("*.jsonl"))
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise DatasetError(f"dataset folder {data} must hold exactly one .jsonl index (found: {found})")
    return candidates[0]


def read_alignments(path: str | Path) -> list[Word]:
    """Read one alignment ``.json``; every word is checked for shape and ordering of its times."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"alignment file {path} does not exist")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from error
    if not isinstance(content, dict) or not isinstance(content.get("alignments"), list):
        raise DatasetError(f'{path}: expected an object with an "alignments" list')
    words = []
    for i, item in enumerate(content["alignments"]):
        try:
            text, (start, end), speaker = item
            start, end = float(start), float(end)
        except (TypeError, ValueError) as error:
            raise DatasetError(
                f"{path}: alignment {i} must be [word, [start, end], speaker], got {item!r}"
            ) from error
        if not isinstance(text, str) or not isinstance(speaker, str):
            raise DatasetError(f"{path}: alignment {i} must have a string word and speaker, got {item!r}")
        if start < 0 or end < start:
            raise DatasetError(f"{path}: word {text!r} has invalid times [{start}, {end}]")
        words.append(Word(text=text, start=start, end=end, speaker=speaker))
    return words


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def audio_info(path: str | Path) -> AudioInfo:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"audio file {path} does not exist")
    try:
        info = soundfile.info(str(path))
    except RuntimeError as error:
        raise DatasetError(f"{path}: not a readable audio file ({error})") from error
    return AudioInfo(sample_rate=info.samplerate, channels=info.channels, frames=info.frames)


@dataclass(frozen=True)
class Dialogue:
    """A validated entry: its audio facts and its words."""

    entry: DialogueEntry
    audio: AudioInfo
    words: list[Word]


def load_dialogue(entry: DialogueEntry, require_stereo: bool = True) -> Dialogue:
    """Check one entry end to end: audio exists, is stereo and lasts what the index says, alignments
    parse and fit the audio."""
    info = audio_info(entry.audio_path)
    if require_stereo and info.channels != 2:
        raise DatasetError(
            f"{entry.audio_path}: expected stereo audio (model left, user right), "
            f"got {info.channels} channel(s)"
        )
    tolerance = max(DURATION_TOLERANCE_S, DURATION_TOLERANCE_FRACTION * info.duration)
    if abs(entry.duration - info.duration) > tolerance:
        raise DatasetError(
            f"{entry.audio_path}: the index says {entry.duration:g} s but the audio lasts "
            f"{info.duration:.3f} s; fix the duration in the .jsonl index (or the file it names)"
        )
    words = read_alignments(entry.alignment_path)
    for word in words:
        if word.end > info.duration + TIMING_TOLERANCE_S:
            raise DatasetError(
                f"{entry.alignment_path}: word {word.text!r} at [{word.start:.3f}, {word.end:.3f}] s "
                f"lies outside the audio ({info.duration:.3f} s)"
            )
    return Dialogue(entry=entry, audio=info, words=words)


def load_dataset(data: str | Path, require_stereo: bool = True) -> list[Dialogue]:
    """Read and validate a whole dataset (index file or the folder holding it)."""
    return [load_dialogue(entry, require_stereo) for entry in read_index(find_index(data))]
