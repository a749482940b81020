"""LoRA adapters for the LM (docs/architecture.md §3.11): every linear weight gets a low-rank update.

``apply_lora(model, rank, scaling)`` adds to each weight ``W`` of an ``nn.Linear`` (and to each
fused attention projection) an update ``scaling * B @ A`` with ``A [rank, in]`` (random) and
``B [out, rank]`` (zeros, so the model is unchanged until trained). Attention projections that hold
one matrix per depformer step get one ``(A_i, B_i)`` pair per step, stacked along dim 0 like the
weights. Embedding tables are left alone. The adapters are torch parametrizations, so code that
reads ``module.weight`` sees the adapted weight and nothing else changes.

File format (what moshi-finetune writes and the reference reads): ``<linear>.lora_A.weight`` /
``<linear>.lora_B.weight``, and for attention ``<attn>.in_proj.lora_A.weight`` (steps stacked),
``<attn>.out_proj.lora_A.weight``; the reference's per-step names ``<attn>.in_projs.{i}.lora_A.weight``
are accepted on load.

``fuse_lora(model)`` folds the updates into plain weights (``W + scaling * B @ A``) for inference.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from duplex.codec.nn import StreamingMultiheadAttention
from torch import nn
from torch.nn.utils import parametrize


class LoRAUpdate(nn.Module):
    """The parametrization ``W -> W + scaling * stack_i(B_i @ A_i)`` over ``sets`` stacked blocks."""

    def __init__(self, out_features: int, in_features: int, rank: int, scaling: float, sets: int = 1) -> None:
        super().__init__()
        if out_features % sets:
            raise ValueError(f"{out_features} rows cannot be split into {sets} weight sets")
        self.rank = rank
        self.scaling = scaling
        self.sets = sets
        self.lora_A = nn.Parameter(torch.empty(sets * rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def delta(self) -> torch.Tensor:
        down = self.lora_A.view(self.sets, self.rank, -1)
        up = self.lora_B.view(self.sets, -1, self.rank)
        return (up @ down).flatten(0, 1) * self.scaling

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta().to(weight.dtype)


def _lora_targets(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, int]]:
    """(file prefix, module, parameter name, weight sets) of every weight that takes an adapter."""
    attention_linears: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, StreamingMultiheadAttention):
            prefix = f"{name}." if name else ""
            attention_linears.add(id(module.out_proj))
            yield f"{prefix}in_proj", module, "in_proj_weight", module.mult
            yield f"{prefix}out_proj", module.out_proj, "weight", module.mult
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and id(module) not in attention_linears:
            yield name, module, "weight", 1


def _update(module: nn.Module, parameter: str) -> LoRAUpdate | None:
    if not parametrize.is_parametrized(module, parameter):
        return None
    for candidate in module.parametrizations[parameter]:
        if isinstance(candidate, LoRAUpdate):
            return candidate
    return None


def apply_lora(model: nn.Module, rank: int, scaling: float = 2.0, freeze_base: bool = True) -> nn.Module:
    """Add LoRA adapters to every linear weight of ``model`` (in place; returns it).

    With ``freeze_base`` every other parameter stops requiring gradients, so an optimiser over
    ``model.parameters()`` trains only the adapters."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    targets = list(_lora_targets(model))
    if any(_update(module, parameter) is not None for _, module, parameter, _ in targets):
        raise RuntimeError("the model already has LoRA adapters")
    if freeze_base:
        for param in model.parameters():
            param.requires_grad_(False)
    for _, module, parameter, sets in targets:
        weight = getattr(module, parameter)
        out_features, in_features = weight.shape
        update = LoRAUpdate(out_features, in_features, rank, scaling, sets)
        update.to(device=weight.device, dtype=weight.dtype)
        parametrize.register_parametrization(module, parameter, update, unsafe=True)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights under their file names (``<linear>.lora_A.weight``, ...)."""
    state: dict[str, torch.Tensor] = {}
    for prefix, module, parameter, _ in _lora_targets(model):
        update = _update(module, parameter)
        if update is not None:
            state[f"{prefix}.lora_A.weight"] = update.lora_A.detach()
            state[f"{prefix}.lora_B.weight"] = update.lora_B.detach()
    if not state:
        raise RuntimeError("the model has no LoRA adapters; call apply_lora first")
    return state


_PER_STEP_LORA = re.compile(
    r"^(?P<prefix>.*)\.(?P<kind>in|out)_projs\.(?P<index>\d+)\.(?P<part>lora_[AB])\.weight$"
)


def _canonical_lora_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    per_step: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in state.items():
        if match := _PER_STEP_LORA.match(key):
            fused = f"{match['prefix']}.{match['kind']}_proj.{match['part']}.weight"
            per_step.setdefault(fused, {})[int(match["index"])] = value
        else:
            out[key] = value
    for key, parts in per_step.items():
        out[key] = torch.cat([parts[i] for i in sorted(parts)], dim=0)
    return out


def load_lora(model: nn.Module, source: str | Path | Mapping[str, torch.Tensor]) -> nn.Module:
    """Load adapter weights (a safetensors file or a state dict) into a model with adapters.

    Every key must belong to an adapter of matching shape; adapters absent from the file keep
    their values."""
    if isinstance(source, str | Path):
        from duplex.codec.checkpoint import read_safetensors

        state, _ = read_safetensors(source)
    else:
        state = dict(source)
    state = _canonical_lora_names(state)
    updates = {}
    for prefix, module, parameter, _ in _lora_targets(model):
        update = _update(module, parameter)
        if update is not None:
            updates[f"{prefix}.lora_A.weight"] = update.lora_A
            updates[f"{prefix}.lora_B.weight"] = update.lora_B
    if not updates:
        raise RuntimeError("the model has no LoRA adapters; call apply_lora (or load with lora=true) first")
    unexpected = sorted(set(state) - set(updates))
    misshaped = sorted(
        f"{k}: expected {list(updates[k].shape)}, got {list(state[k].shape)}"
        for k in set(state) & set(updates)
        if state[k].shape != updates[k].shape
    )
    if unexpected or misshaped:
        lines = ["LoRA weights do not match the model's adapters:"]
        if unexpected:
            lines += [f"  unexpected keys ({len(unexpected)}):", *[f"    {k}" for k in unexpected[:40]]]
        if misshaped:
            lines += [f"  wrong shapes ({len(misshaped)}):", *[f"    {k}" for k in misshaped[:40]]]
        raise ValueError("\n".join(lines))
    with torch.no_grad():
        for key, value in state.items():
            updates[key].copy_(value.to(updates[key].dtype))
    return model


def fuse_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight (``W + scaling * B @ A``) and remove the adapters."""
    for _, module, parameter, _ in _lora_targets(model):
        if _update(module, parameter) is not None:
            parametrize.remove_parametrizations(module, parameter, leave_parametrized=True)
    return model
