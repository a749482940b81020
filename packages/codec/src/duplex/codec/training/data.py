"""Audio for codec training: fixed-length mono segments cut from a folder of audio files.

The folder may hold a moshi-finetune ``.jsonl`` index (every channel of every listed file is a
separate voice) or just audio files (searched recursively). Audio is resampled to the codec's
rate; near-silent segments are skipped, they teach nothing and make SI-SDR meaningless.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile
import torch
from duplex.codec.audio import resample
from torch.utils.data import Dataset

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def audio_files(data: str | Path) -> list[Path]:
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(
            f"codec training data {data} does not exist: pass --data a folder of audio files or a "
            "moshi-finetune dataset (`duplex data synth DIR` writes one)"
        )
    indexes = [data] if data.suffix == ".jsonl" else sorted(data.glob("*.jsonl"))
    if indexes:
        root = indexes[0].parent
        files = []
        for number, line in enumerate(indexes[0].read_text().splitlines(), start=1):
            if line.strip():
                try:
                    record = json.loads(line)
                    path = Path(record["path"])
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise ValueError(
                        f'{indexes[0]}:{number}: each line must be a JSON object with a "path" '
                        f"({type(error).__name__}: {error})"
                    ) from None
                files.append(path if path.is_absolute() else root / path)
    else:
        files = sorted(p for p in data.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no audio files (or .jsonl index) found in {data}")
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"audio files listed in the index do not exist: {', '.join(missing[:5])}")
    return files


class AudioSegments(Dataset):
    """Mono segments ``[1, segment_samples]`` of every channel of every file."""

    def __init__(
        self, files: list[Path], sample_rate: int, segment_samples: int, min_rms: float = 1e-3
    ) -> None:
        self.segments: list[torch.Tensor] = []
        for path in files:
            wav, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
            channels = resample(torch.from_numpy(np.ascontiguousarray(wav.T)), int(rate), sample_rate)
            for channel in channels:
                for start in range(0, channel.shape[-1] - segment_samples + 1, segment_samples):
                    segment = channel[start : start + segment_samples]
                    if segment.pow(2).mean().sqrt() >= min_rms:
                        self.segments.append(segment[None].clone())
        if not self.segments:
            raise ValueError(
                f"no segment of {segment_samples} samples above RMS {min_rms} in {len(files)} file(s)"
            )

    @classmethod
    def from_folder(cls, data: str | Path, sample_rate: int, segment_samples: int) -> AudioSegments:
        return cls(audio_files(data), sample_rate, segment_samples)

    def __len__(self) -> int:
        return len(self.segments)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.segments[index]
