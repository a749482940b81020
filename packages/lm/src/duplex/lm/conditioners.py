"""Conditioning: what a conditioned LM (TTS, Hibiki) is told besides its streams (docs/architecture.md §5.5).

A *conditioner* turns one attribute of each batch item into vectors of the model's width:

* :class:`LUTConditioner`: a named value (``"very_good"``, ``"2.0"``) -> one learnt vector;
* :class:`TensorConditioner`: a given tensor ``[T, dim]`` (a TTS voice) -> ``[T, model dim]``.

An absent value (None) becomes the conditioner's learnt padding vector, and so does every masked
time step of a tensor. The :class:`Fuser` then makes the two inputs of the model: the ``sum``
conditions added to every step's input embedding (``[B, 1, D]``), and the ``cross`` conditions,
joined along time, that the cross-attention layers attend to (``[B, S, D]``), with sinusoidal
positions when the config asks for them.

Parameter names follow the official checkpoints: ``condition_provider.conditioners.<name>.embed``,
``.output_proj``, ``.learnt_padding``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from duplex.codec.nn import sinusoidal_embedding
from duplex.lm.config import ConditionerConfig, FuserConfig, LUTConditionerConfig, TensorConditionerConfig
from torch import nn


@dataclass(frozen=True)
class TensorCondition:
    """A tensor attribute of one batch item: ``tensor [T, dim]`` and ``mask [T]`` (false steps take
    the learnt padding)."""

    tensor: torch.Tensor
    mask: torch.Tensor

    @staticmethod
    def full(tensor: torch.Tensor) -> TensorCondition:
        return TensorCondition(tensor, torch.ones(tensor.shape[0], dtype=torch.bool, device=tensor.device))

    def dropped(self) -> TensorCondition:
        """The same length, every step masked (the unconditioned half of classifier-free guidance)."""
        return TensorCondition(torch.zeros_like(self.tensor), torch.zeros_like(self.mask))


ConditionValue = str | TensorCondition | None
Attributes = Mapping[str, ConditionValue]


@dataclass
class Conditioning:
    """The fused conditions of a batch: ``sum [B, 1, D]`` and ``cross [B, S, D]`` (None when unused)."""

    sum: torch.Tensor | None
    cross: torch.Tensor | None


class _Conditioner(nn.Module):
    def __init__(self, settings: LUTConditionerConfig | TensorConditionerConfig, output_dim: int) -> None:
        super().__init__()
        self.output_dim = output_dim
        self.output_proj: nn.Module = nn.Identity()
        if settings.force_linear or settings.dim != output_dim:
            self.output_proj = nn.Linear(settings.dim, output_dim, bias=False)
        self.learnt_padding: nn.Parameter | None = None
        if settings.learn_padding:
            self.learnt_padding = nn.Parameter(torch.randn(1, 1, output_dim) * 0.2)

    def _finish(self, embedded: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Project ``embedded [B, T, dim]``; where ``mask [B, T]`` is false, the learnt padding."""
        out = self.output_proj(embedded)
        keep = mask.float()[..., None]
        if self.learnt_padding is None:
            return out * keep
        return out * keep + self.learnt_padding * (1 - keep)


class LUTConditioner(_Conditioner):
    def __init__(self, settings: LUTConditionerConfig, output_dim: int) -> None:
        super().__init__(settings, output_dim)
        self.n_bins = settings.n_bins
        self.possible_values = settings.possible_values
        self.embed = nn.Embedding(settings.n_bins + 1, settings.dim)  # the last row: absent
        with torch.no_grad():
            self.embed.weight.mul_(settings.init_scale)

    def index(self, value: str | None) -> int:
        if value is None:
            return self.n_bins
        if not isinstance(value, str):
            raise TypeError(f"a table condition takes a string value, got {type(value).__name__}")
        if self.possible_values is None:  # unlisted values are hashed into the bins
            return int(hashlib.sha256(value.encode("utf-8")).hexdigest(), 16) % self.n_bins
        if value not in self.possible_values:
            raise ValueError(f"{value!r} is not a possible value; expected one of {self.possible_values}")
        return self.possible_values.index(value)

    def forward(self, values: Sequence[str | None]) -> torch.Tensor:
        """One value per batch item -> ``[B, 1, output_dim]``."""
        device = self.embed.weight.device
        tokens = torch.tensor([self.index(v) for v in values], dtype=torch.long, device=device)[:, None]
        mask = torch.tensor([v is not None for v in values], dtype=torch.bool, device=device)[:, None]
        return self._finish(self.embed(tokens), mask)


class TensorConditioner(_Conditioner):
    def __init__(self, settings: TensorConditionerConfig, output_dim: int) -> None:
        super().__init__(settings, output_dim)
        self.dim = settings.dim

    def forward(self, values: Sequence[TensorCondition]) -> torch.Tensor:
        """One tensor condition per batch item (padded to the longest) -> ``[B, T, output_dim]``."""
        for value in values:
            if not isinstance(value, TensorCondition):
                raise TypeError(f"a tensor condition takes a TensorCondition, got {type(value).__name__}")
            if value.tensor.dim() != 2 or value.tensor.shape[1] != self.dim:
                raise ValueError(
                    f"a tensor condition must have shape [T, {self.dim}], got {list(value.tensor.shape)}"
                )
        device = self.output_proj.weight.device if isinstance(self.output_proj, nn.Linear) else None
        length = max(value.tensor.shape[0] for value in values)
        tensor = torch.zeros(len(values), length, self.dim, device=device)
        mask = torch.zeros(len(values), length, dtype=torch.bool, device=device)
        for row, value in enumerate(values):
            tensor[row, : value.tensor.shape[0]] = value.tensor
            mask[row, : value.mask.shape[0]] = value.mask
        return self._finish(tensor, mask)


class ConditionProvider(nn.Module):
    """The conditioners of a model, by name (``condition_provider.conditioners.<name>``)."""

    def __init__(self, configs: Mapping[str, ConditionerConfig], output_dim: int) -> None:
        super().__init__()
        self.conditioners = nn.ModuleDict(
            {
                name: (LUTConditioner if config.type == "lut" else TensorConditioner)(
                    config.settings, output_dim
                )
                for name, config in configs.items()
            }
        )

    def forward(self, attributes: Sequence[Attributes]) -> dict[str, torch.Tensor]:
        """Embed each conditioner's attribute for every batch item; absent names are None (padding
        for a table; a tensor condition must be given)."""
        if not attributes:
            raise ValueError("conditions: expected one mapping of attributes per batch item, got none")
        known = set(self.conditioners)
        for item in attributes:
            unknown = set(item) - known
            if unknown:
                raise ValueError(f"unknown conditions {sorted(unknown)}; this model takes {sorted(known)}")
        out = {}
        for name, conditioner in self.conditioners.items():
            values = [item.get(name) for item in attributes]
            if isinstance(conditioner, TensorConditioner) and any(v is None for v in values):
                raise ValueError(f"condition {name!r} (a tensor, e.g. a voice) must be given for every item")
            out[name] = conditioner(values)
        return out


class Fuser:
    """How the embedded conditions enter the model: summed into the input, or as the cross source."""

    def __init__(self, config: FuserConfig) -> None:
        self.config = config

    def __call__(self, embedded: Mapping[str, torch.Tensor]) -> Conditioning:
        summed = None
        for name in self.config.sum:
            summed = embedded[name] if summed is None else summed + embedded[name]
        cross = None
        if self.config.cross:
            cross = torch.cat([embedded[name] for name in self.config.cross], dim=1)
            if self.config.cross_attention_pos_emb:
                positions = torch.arange(cross.shape[1], device=cross.device)[None]
                position_emb = sinusoidal_embedding(positions, cross.shape[-1]).to(cross.dtype)
                cross = cross + self.config.cross_attention_pos_emb_scale * position_emb
        return Conditioning(summed, cross)


def dropped_attributes(attributes: Attributes) -> dict[str, ConditionValue]:
    """Every condition removed (tables absent, tensors fully masked): the null condition of
    classifier-free guidance."""
    return {
        name: value.dropped() if isinstance(value, TensorCondition) else None
        for name, value in attributes.items()
    }
