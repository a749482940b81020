"""Low-precision weights (docs/nn-api.md): matmul weights stored in bfloat16 or int8.

A module declares the matmul weights it owns in ``low_precision_weights`` (``Linear``: ``weight``;
the attentions: ``in_proj_weight``) and passes ``<name>_scale`` along with each to the ``linear``
op. :func:`quantize_weights` stores those weights in one of the formats of
:mod:`duplex.codec.kernels.weight_formats` (bf16, or int8 with scales).

Activations keep their dtype (``activation_dtype``: a float32 model with bf16 or int8 weights
computes in float32); the ops widen the weights as they read them. The quantized tensors keep the
float weight's name (``...weight`` int8, plus ``...weight_scale``), so a saved model is the float
layout with the weights narrowed and the scales beside them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from duplex.codec.kernels.weight_formats import (
    SCALE_SUFFIX,
    QuantizationError,
    check_group_size,
    check_weight_format,
    is_quantized,
    quantize_int8,
)
from torch import nn
from torch.nn.utils import parametrize


def low_precision_sites(root: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """``(qualified name, module, attribute)`` of every matmul weight under ``root``."""
    for prefix, module in root.named_modules():
        for attribute in getattr(module, "low_precision_weights", ()):
            yield (f"{prefix}.{attribute}" if prefix else attribute), module, attribute


def quantize_weights(
    root: nn.Module,
    mode: str,
    group_size: int | None = None,
    keep: Callable[[str], bool] | None = None,
) -> list[str]:
    """Store the matmul weights under ``root`` in ``mode`` (in place), except those whose qualified
    name ``keep`` accepts; returns the names converted. Works on meta tensors (a model being
    built for loading). Refuses weights already in low precision and parametrized (LoRA) ones."""
    mode = check_weight_format(mode)
    sites = [site for site in low_precision_sites(root) if keep is None or not keep(site[0])]
    for name, module, attribute in sites:
        if parametrize.is_parametrized(module, attribute):
            raise QuantizationError(f"{name} has a LoRA parametrization: fuse LoRA before quantizing")
        weight = getattr(module, attribute)
        if is_quantized(weight) or weight.dtype is torch.bfloat16 and mode == "bf16":
            raise QuantizationError(
                f"{name} is already stored in {'int8' if is_quantized(weight) else 'bf16'}: quantize "
                "the float model (load its float checkpoint again)"
            )
        if mode == "int8":
            check_group_size(weight.shape[1], group_size, name)
    for _, module, attribute in sites:
        weight = getattr(module, attribute)
        if getattr(module, "activation_dtype", None) is None:
            module.activation_dtype = weight.dtype
        if mode == "bf16":
            setattr(module, attribute, nn.Parameter(weight.detach().to(torch.bfloat16), requires_grad=False))
            continue
        values, scale = quantize_int8(weight, group_size)
        del module._parameters[attribute]
        module.register_buffer(attribute, values)
        setattr(module, attribute + SCALE_SUFFIX, scale)
    return [name for name, _, _ in sites]


def set_activation_dtype(root: nn.Module, dtype: torch.dtype) -> None:
    """The dtype the low-precision modules under ``root`` compute in (their KV caches' too)."""
    for _, module, _ in low_precision_sites(root):
        module.activation_dtype = dtype


def weight_dtype(module: nn.Module, attribute: str) -> torch.dtype:
    """What ``module`` computes in: its weight's dtype, or the one recorded when it was narrowed."""
    recorded = getattr(module, "activation_dtype", None)
    return recorded if recorded is not None else getattr(module, attribute).dtype
