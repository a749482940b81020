"""The reference package's view of a checkpoint directory, for the benchmarks that run it side by side."""

from __future__ import annotations

from pathlib import Path


def reference_checkpoint_info(directory: Path):  # noqa: ANN201
    """moshi's CheckpointInfo of a local checkpoint in the official layout (as duplex writes it)."""
    from moshi.models import loaders

    return loaders.CheckpointInfo.from_hf_repo(
        "unused/unused",
        moshi_weights=directory / "model.safetensors",
        mimi_weights=directory / "mimi.safetensors",
        tokenizer=directory / "tokenizer.model",
        config_path=directory / "config.json",
        mimi_config_path=directory / "mimi_config.json",
    )
