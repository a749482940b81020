"""Root pytest configuration.

Triton fixes its interpreter mode when first imported, and lightning or torch._dynamo may import
it early during collection; setting the mode here lets the kernel tests run Triton on the CPU
whatever the collection order.
"""

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")


def _benchmarks_reference():  # noqa: ANN202
    """benchmarks/reference.py, the one definition of the oracle's glue (the benchmarks are scripts,
    not a package: loaded from its path)."""
    path = Path(__file__).parent / "benchmarks" / "reference.py"
    spec = importlib.util.spec_from_file_location("duplex_benchmarks_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference_checkpoint_info = _benchmarks_reference().reference_checkpoint_info


@pytest.fixture(scope="session")
def reference_info():  # noqa: ANN201
    """:func:`reference_checkpoint_info`, for tests that run the oracle on a checkpoint directory."""
    return reference_checkpoint_info
