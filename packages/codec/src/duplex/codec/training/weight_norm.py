"""Weight normalisation of the SEANet convolutions while training, folded away for export.

Mimi was trained with weight-normed convolutions; the released weights are the folded products
``g * v / ||v||`` (docs/architecture.md §1.1, §7.2, ``norm="none"``). :func:`add_weight_norm`
reparametrises every convolution of the encoder and decoder in place; :func:`fold_weight_norm`
turns them back into plain weights, so the state dict has the official key names again.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

_CONVOLUTIONS = (nn.Conv1d, nn.ConvTranspose1d)


def _convolutions(model: nn.Module, parts: tuple[str, ...]) -> list[nn.Module]:
    found = []
    for part in parts:
        module = getattr(model, part, None)
        if module is None:
            raise ValueError(f"{type(model).__name__} has no submodule {part!r} to weight-norm")
        found += [m for m in module.modules() if isinstance(m, _CONVOLUTIONS)]
    return found


def add_weight_norm(model: nn.Module, parts: tuple[str, ...] = ("encoder", "decoder")) -> int:
    """Weight-norm every convolution under ``model.<part>``; returns how many were wrapped."""
    convolutions = [m for m in _convolutions(model, parts) if not parametrize.is_parametrized(m, "weight")]
    for conv in convolutions:
        weight_norm(conv, name="weight", dim=0)
    return len(convolutions)


def fold_weight_norm(model: nn.Module) -> int:
    """Replace every weight-norm parametrisation under ``model`` by its plain weight."""
    folded = 0
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            folded += 1
    return folded


def has_weight_norm(model: nn.Module) -> bool:
    return any(parametrize.is_parametrized(m, "weight") for m in model.modules())
