"""A speech dataset on disk: ``audio/clip_NNNNNN.wav`` (16-bit mono) and a ``data.jsonl`` index.

Codec training (``duplex train codec --data DIR``) reads the index's ``path`` fields; the other
fields (text, voice, prosody, levels) document each clip for evaluation and inspection.
``speech.json`` records what made the dataset (split, seed, sentence source, config), so the same
command can make it again. The train and held-out splits go to separate folders: the held-out
one is a codec run's ``--validation-data``, or the test set its scores are reported on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import soundfile
import torch
from duplex.demo.data.speech.clips import SpeechGenerator
from duplex.demo.data.speech.config import SpeechConfig
from duplex.demo.data.speech.sentences import SentenceSource
from duplex.demo.data.speech.splits import Split, check_split
from duplex.demo.data.speech.voices import Voice, voices

INDEX_NAME = "data.jsonl"
MANIFEST_NAME = "speech.json"
AUDIO_FOLDER = "audio"


def clip_path(index: int) -> str:
    return f"{AUDIO_FOLDER}/clip_{index:06d}.wav"


def _write_clip(generator: SpeechGenerator, output: Path, seed: int, index: int) -> dict[str, Any]:
    clip = generator.clip(seed, index)
    relative = clip_path(index)
    soundfile.write(str(output / relative), clip.audio, clip.sample_rate, subtype="PCM_16")
    return {"path": relative, **clip.record()}


# One generator per worker process, made once by the pool's initializer.
_worker_generator: SpeechGenerator | None = None


def _start_worker(sentences: Sequence[str], clip_voices: Sequence[Voice], config: SpeechConfig) -> None:
    global _worker_generator
    torch.set_num_threads(1)  # the resampling is small: threads only contend
    _worker_generator = SpeechGenerator(sentences, clip_voices, config)


def _worker_clip(job: tuple[Path, int, int]) -> dict[str, Any]:
    assert _worker_generator is not None, "a worker runs _start_worker first"
    return _write_clip(_worker_generator, *job)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one thread for the block: dataset writers resample small clips, where threads only
    contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _records(
    generator_args: tuple[Sequence[str], Sequence[Voice], SpeechConfig],
    output: Path,
    seed: int,
    clips: int,
    workers: int,
) -> Iterator[dict[str, Any]]:
    """The index records of clips ``0 .. clips - 1`` in order, each written as it is made."""
    if workers <= 1:
        generator = SpeechGenerator(*generator_args)
        with one_torch_thread():
            for index in range(clips):
                yield _write_clip(generator, output, seed, index)
        return
    # spawn, not fork: the parent may hold torch's threads, which a forked child inherits broken.
    with ProcessPoolExecutor(
        workers, mp_context=get_context("spawn"), initializer=_start_worker, initargs=generator_args
    ) as pool:
        yield from pool.map(_worker_clip, [(output, seed, index) for index in range(clips)], chunksize=4)


def write_speech_dataset(
    output: str | Path,
    clips: int,
    *,
    seed: int = 0,
    split: Split = "train",
    config: SpeechConfig | None = None,
    source: SentenceSource | None = None,
    workers: int = 1,
    on_clip: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """Write ``clips`` clips of ``split`` under ``output`` and return the index (``output/data.jsonl``).

    ``source`` defaults to the standard library's docstrings; ``workers`` > 1 makes clips in that
    many processes (the same clips: each depends only on ``seed`` and its index). ``on_clip`` sees
    each clip's index record as it is written. Clips of an earlier, larger run in ``output/audio``
    are removed, so the folder holds exactly the dataset.
    """
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    check_split(split)
    config = config or SpeechConfig()
    source = source or SentenceSource.stdlib()
    sentences = source.split(split)
    output = Path(output)
    (output / AUDIO_FOLDER).mkdir(parents=True, exist_ok=True)

    records = []
    for record in _records((sentences, voices(split), config), output, seed, clips, min(workers, clips)):
        records.append(record)
        if on_clip is not None:
            on_clip(record)
    written = {record["path"] for record in records}
    for stale in (output / AUDIO_FOLDER).glob("clip_*.wav"):
        if f"{AUDIO_FOLDER}/{stale.name}" not in written:
            stale.unlink()

    index = output / INDEX_NAME
    partial = output / f"{INDEX_NAME}.{os.getpid()}.tmp"
    partial.write_text("".join(json.dumps(record) + "\n" for record in records))
    partial.replace(index)
    manifest = {
        "split": split,
        "seed": seed,
        "clips": clips,
        "seconds": round(sum(record["duration"] for record in records), 3),
        "sentence_source": source.name,
        "sentences_in_split": len(sentences),
        "voices_in_split": len(voices(split)),
        "heldout_fraction": source.heldout_fraction,
        "config": config.model_dump(mode="json"),
    }
    (output / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return index
