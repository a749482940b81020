"""TTS voices: the official voice-embedding files and the cross-attention condition they make
(docs/architecture.md §5.3).

A voice file is a safetensors file holding ``speaker_wavs [1, dim, frames]`` (the official ones:
``dim`` 512, 125 frames, 10 s of Mimi latent), named ``<voice>.<sig>@<epoch>.safetensors`` after the
``model_id`` of the model it was made for. Up to ``max_speakers`` voices make one condition: each
voice fills its own block of ``frames`` steps, the first is the main speaker, and the blocks of
absent speakers are masked (the conditioner's learnt padding takes their place).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from duplex.lm.conditioners import TensorCondition
from duplex.lm.config import LMConfig
from safetensors import SafetensorError
from safetensors.torch import load_file

VOICE_KEY = "speaker_wavs"
DEFAULT_MAX_SPEAKERS = 5


def voice_file_name(name: str, config: LMConfig) -> str:
    """The file name of voice ``name`` for the model of ``config`` (its ``model_id`` suffix)."""
    model_id = config.model_id
    if "sig" in model_id and "epoch" in model_id:
        return f"{name}.{model_id['sig']}@{model_id['epoch']}.safetensors"
    return f"{name}.safetensors"


def find_voice(voice: str | Path, config: LMConfig, directories: Sequence[Path]) -> Path:
    """A voice given as a ``.safetensors`` path, or by name among ``directories``."""
    path = Path(voice)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"voice file {path} does not exist")
        return path
    file_name = voice_file_name(str(voice), config)
    for directory in directories:
        candidate = directory / file_name
        if candidate.is_file():
            return candidate
    known = sorted(
        p.name.split(".")[0]
        for d in directories
        if d.is_dir()
        for p in d.glob(f"*{file_name[len(str(voice)) :]}")
    )
    where = ", ".join(str(d) for d in directories) or "no voice directory"
    hint = f"known voices: {', '.join(known)}" if known else "give a .safetensors voice file"
    raise ValueError(f"unknown voice {voice!r} (looked for {file_name} in {where}); {hint}")


def load_voice(path: str | Path, dim: int) -> torch.Tensor:
    """The embedding ``[frames, dim]`` of a voice file, checked."""
    path = Path(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a voice file (safetensors): {error}") from error
    if VOICE_KEY not in tensors:
        raise ValueError(f"{path} holds no {VOICE_KEY!r} tensor (found {sorted(tensors)}): not a voice file")
    embedding = tensors[VOICE_KEY]
    if embedding.dim() != 3 or embedding.shape[0] != 1 or embedding.shape[1] != dim:
        raise ValueError(
            f"{path}: {VOICE_KEY} has shape {list(embedding.shape)}, this model takes [1, {dim}, frames]"
        )
    if not embedding.is_floating_point() or not embedding.isfinite().all():
        raise ValueError(f"{path}: {VOICE_KEY} must hold finite floating-point values")
    return embedding[0].t().float()


def voice_condition(
    voices: Sequence[torch.Tensor], max_speakers: int = DEFAULT_MAX_SPEAKERS
) -> TensorCondition:
    """The cross-attention condition of up to ``max_speakers`` voice embeddings ``[frames, dim]``."""
    if not voices:
        raise ValueError("a voice is required: this model speaks in a given voice")
    if len(voices) > max_speakers:
        raise ValueError(f"{len(voices)} voices given; this model takes at most {max_speakers}")
    frames, dim = voices[0].shape
    tensor = torch.zeros(max_speakers, frames, dim)
    mask = torch.zeros(max_speakers, frames, dtype=torch.bool)
    for index, voice in enumerate(voices):
        if voice.shape != (frames, dim):
            raise ValueError(f"voice {index} has shape {list(voice.shape)}, the first {[frames, dim]}")
        tensor[index] = voice
        mask[index] = True
    return TensorCondition(tensor.view(-1, dim), mask.view(-1))
