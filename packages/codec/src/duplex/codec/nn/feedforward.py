"""Transformer feed-forward blocks (docs/architecture.md §2.5).

``gating="none"`` is the plain MLP of Mimi: ``linear2(GELU(linear1(x)))`` with exact GELU, held
directly by the layer (keys ``linear1`` / ``linear2``). Any other gating name is a gated linear
unit, ``linear_out(act(gate) * value)`` where ``linear_in`` produces ``[gate | value]``, held under
``gating`` (or ``gating.{i}`` with per-step weights).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from duplex.codec.nn.linear import Linear
from duplex.codec.nn.per_step import apply_per_step, weight_set_count
from duplex.codec.nn.schema import GATINGS
from torch import nn
from torch.nn import functional as F

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu": F.gelu,
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "elu": F.elu,
    "leaky_relu": F.leaky_relu,
    "mish": F.mish,
    "softsign": F.softsign,
    "identity": lambda x: x,
}
assert set(GATINGS) == {"none", *_ACTIVATIONS}, "every gating name has its activation"


def gated_hidden_size(dim: int, dim_feedforward: int) -> int:
    """Hidden width of a gated unit: ``21 * dim // 8`` for the 4x default, else ``2 * dim_ff // 3``."""
    return (21 * dim) // 8 if dim_feedforward == 4 * dim else (2 * dim_feedforward) // 3


class ActivationGating(nn.Module):
    def __init__(self, dim: int, dim_feedforward: int, activation: str) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"unknown gating activation {activation!r}; expected one of {list(_ACTIVATIONS)}"
            )
        hidden = gated_hidden_size(dim, dim_feedforward)
        self.activation_name = activation
        self.activation = _ACTIVATIONS[activation]
        self.linear_in = Linear(dim, 2 * hidden, bias=False)
        self.linear_out = Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.linear_in(x).chunk(2, dim=-1)
        return self.linear_out(self.activation(gate) * value)

    def extra_repr(self) -> str:
        return f"activation={self.activation_name}"


class PerStepGating(nn.ModuleList):
    """One :class:`ActivationGating` per weight set; step ``t`` uses set ``schedule[t]`` (or ``t``)."""

    def __init__(
        self,
        dim: int,
        dim_feedforward: int,
        activation: str,
        weights_per_step: int,
        schedule: Sequence[int] | None = None,
    ) -> None:
        count = weight_set_count(weights_per_step, schedule)
        super().__init__([ActivationGating(dim, dim_feedforward, activation) for _ in range(count)])
        self.weights_per_step = weights_per_step
        self.schedule = list(schedule) if schedule is not None else None

    def forward(self, x: torch.Tensor, first_step: int) -> torch.Tensor:  # type: ignore[override]
        return apply_per_step(lambda i, xs: self[i](xs), x, first_step, self.weights_per_step, self.schedule)


def make_feedforward(
    gating: str,
    dim: int,
    dim_feedforward: int,
    weights_per_step: int = 0,
    schedule: Sequence[int] | None = None,
) -> dict[str, nn.Module]:
    """The named feed-forward parts a transformer layer registers on itself."""
    if gating == "none":
        if weights_per_step:
            raise ValueError("weights_per_step needs a gated feed-forward (gating != 'none')")
        return {
            "linear1": Linear(dim, dim_feedforward, bias=False),
            "linear2": Linear(dim_feedforward, dim, bias=False),
        }
    if weights_per_step:
        return {"gating": PerStepGating(dim, dim_feedforward, gating, weights_per_step, schedule)}
    return {"gating": ActivationGating(dim, dim_feedforward, gating)}
