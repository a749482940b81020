"""Root pytest configuration.

Triton fixes its interpreter mode when first imported, and lightning or torch._dynamo may import
it early during collection; setting the mode here lets the kernel tests run Triton on the CPU
whatever the collection order.
"""

import os

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")


def reference_checkpoint_info(directory):  # noqa: ANN001, ANN201
    """The reference's CheckpointInfo of a local checkpoint directory in the official layout (as
    written by duplex: model, mimi, tokenizer, config.json and mimi_config.json)."""
    from moshi.models import loaders

    return loaders.CheckpointInfo.from_hf_repo(
        "unused/unused",
        moshi_weights=directory / "model.safetensors",
        mimi_weights=directory / "mimi.safetensors",
        tokenizer=directory / "tokenizer.model",
        config_path=directory / "config.json",
        mimi_config_path=directory / "mimi_config.json",
    )


@pytest.fixture(scope="session")
def reference_info():  # noqa: ANN201
    """:func:`reference_checkpoint_info`, for tests that run the oracle on a checkpoint directory."""
    return reference_checkpoint_info
