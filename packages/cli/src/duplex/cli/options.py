"""Option values shared by several commands, parsed once (a bad value is a usage error, exit 2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from duplex.cli.errors import usage_error

if TYPE_CHECKING:
    from duplex.codec.kernels.weight_formats import WeightFormat

QUANTIZE_HELP = (
    "Store the LM's matmul weights in low precision: none, bf16 or int8 (weight-only, per-channel "
    "scales; docs/nn-api.md). Fewer bytes to read per step: faster on a CPU, less memory."
)


def quantize_option(name: str) -> WeightFormat | None:
    """``--quantize``: ``none`` (the weights as stored) -> None, else ``bf16`` or ``int8``."""
    if name == "none":
        return None
    from duplex.codec.kernels.weight_formats import WEIGHT_FORMATS

    if name not in WEIGHT_FORMATS:
        allowed = ", ".join(("none", *WEIGHT_FORMATS))
        raise usage_error(f"must be one of {allowed}, got {name!r}", "--quantize")
    return name  # type: ignore[return-value]


NUMERICS_HELP = (
    "fast (the fastest kernels for the device, within float rounding of the reference) or reference "
    "(torch's own ops in the reference's order: its tokens and audio, bit for bit)."
)
NUMERICS = ("fast", "reference")


def numerics_option(name: str) -> str:
    """``--numerics``: ``fast`` or ``reference`` (checked before any model is loaded)."""
    if name not in NUMERICS:
        raise usage_error(f"must be fast or reference, got {name!r}", "--numerics")
    return name
