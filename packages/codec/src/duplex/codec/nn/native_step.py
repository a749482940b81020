"""A :class:`~duplex.codec.nn.transformer.StreamingTransformer` streaming step in one C call.

On the CPU, in float32 inference, a streaming call of a few rows (batch x new steps, at most the
few-row kernel's 32) runs all layers in :mod:`duplex.codec.kernels.transformer_native`: the same
computation as the module path (differences of float rounding, ~1e-6 relative), without the
dispatch cost of ~30 torch ops per layer. :meth:`NativeStep.pack` describes the layers once per
streaming session; the step falls back to the module path for anything it does not cover
(per-step weights, LoRA parametrizations, gatings other than SiLU, a partial execution mask,
gradients) and whenever the backend is not ``native`` (``DUPLEX_KERNELS=torch``,
:func:`~duplex.codec.kernels.reference_matmuls`).
"""

from __future__ import annotations

import ctypes
import operator
from dataclasses import dataclass

import torch
from duplex.codec import kernels
from duplex.codec.kernels import linear_native, transformer_native
from duplex.codec.kernels.dispatch import NATIVE
from duplex.codec.nn.feedforward import ActivationGating, PerStepGating
from duplex.codec.nn.norms import RMSNorm
from torch import Tensor, nn
from torch.nn.utils import parametrize


class Unsupported(Exception):
    """The layers use something the C step does not implement."""


def _plain_weight(module: nn.Module, name: str = "weight") -> Tensor:
    if parametrize.is_parametrized(module):
        raise Unsupported("parametrized weights (LoRA)")
    if getattr(module, "bias", None) is not None:
        raise Unsupported("linear biases")
    return getattr(module, name).detach()


def _norm(norm: nn.Module) -> tuple[int, float, Tensor, Tensor | None]:
    if isinstance(norm, nn.LayerNorm) and norm.weight is not None and norm.bias is not None:
        return transformer_native.NORM_LAYER, norm.eps, norm.weight.detach(), norm.bias.detach()
    if isinstance(norm, RMSNorm):
        return transformer_native.NORM_RMS, norm.eps, norm.alpha.detach().view(-1), None
    raise Unsupported(f"norm {type(norm).__name__}")


@dataclass
class LayerCache:
    """Where a layer's keys and values go: ``[B, H_kv, capacity, Dh]`` each, the position held by
    each slot ``[B, capacity]`` (int64, -1 when empty) and optionally per-item step counters ``[B]``
    that the step advances."""

    keys: Tensor
    values: Tensor
    slot_positions: Tensor
    offsets: Tensor | None = None

    @classmethod
    def of(cls, attention: nn.Module) -> LayerCache:
        """The ring cache of a streaming attention."""
        state = attention.streaming_state
        return cls(state.cache.keys, state.cache.values, state.cache.positions, state.offset)


def _layer(
    layer: nn.Module,
    spec: transformer_native.LayerSpec,
    keep: list[Tensor],
    cache: LayerCache,
    weight_set: int,
) -> None:
    """Fill ``spec`` with ``layer``'s weights (set ``weight_set`` of per-step weights) and ``cache``;
    ``keep`` collects the tensors it points into."""
    attn = layer.self_attn
    (kind, eps, w1, b1), (kind2, eps2, w2, b2) = _norm(layer.norm1), _norm(layer.norm2)
    if kind != kind2 or eps != eps2:
        raise Unsupported("different norms in one layer")
    gating = layer.gating
    if isinstance(gating, PerStepGating):
        gating = gating[weight_set]
    if gating is None:
        feedforward = transformer_native.FEEDFORWARD_GELU
        ff_in, ff_out = _plain_weight(layer.linear1), _plain_weight(layer.linear2)
    elif isinstance(gating, ActivationGating) and gating.activation_name == "silu":
        feedforward = transformer_native.FEEDFORWARD_SILU_GATED
        ff_in, ff_out = _plain_weight(gating.linear_in), _plain_weight(gating.linear_out)
    else:
        raise Unsupported(f"feed-forward {type(gating).__name__}")
    if parametrize.is_parametrized(attn):
        raise Unsupported("parametrized weights (LoRA)")
    _plain_weight(attn.out_proj)
    scales = [getattr(ls, "scale", None) for ls in (layer.layer_scale_1, layer.layer_scale_2)]
    tensors = {
        "norm1_weight": w1, "norm1_bias": b1, "norm2_weight": w2, "norm2_bias": b2,
        "in_proj": attn.in_proj(weight_set).detach(), "out_proj": attn.out_proj_weight(weight_set).detach(),
        "ff_in": ff_in, "ff_out": ff_out,
        "scale1": None if scales[0] is None else scales[0].detach(),
        "scale2": None if scales[1] is None else scales[1].detach(),
        "keys": cache.keys, "values": cache.values, "slot_positions": cache.slot_positions,
        "offsets": cache.offsets,
    }  # fmt: skip
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        expected = torch.int64 if name in ("slot_positions", "offsets") else torch.float32
        if tensor.dtype != expected or tensor.device.type != "cpu" or not tensor.is_contiguous():
            raise Unsupported(f"{name}: {tensor.dtype} on {tensor.device}")
        setattr(spec, name, tensor.data_ptr())
        keep.append(tensor)
    spec.dim, spec.heads, spec.kv_heads = attn.embed_dim, attn.num_heads, attn.num_kv_heads
    spec.head_dim, spec.hidden = attn.head_dim, ff_out.shape[1]
    spec.context = attn.context or 0
    spec.norm, spec.norm_eps, spec.feedforward = kind, eps, feedforward
    spec.capacity = cache.keys.shape[2]


@dataclass
class NativeStep:
    specs: ctypes.Array
    tensors: list[Tensor]  # what the specs point into, kept alive
    parameters: list[nn.Parameter]
    addresses: list[int]  # of the parameters' data when packed

    @classmethod
    def pack(
        cls,
        transformer: nn.Module,
        caches: list[LayerCache] | None = None,
        weight_sets: list[int] | None = None,
    ) -> NativeStep | None:
        """The C description of ``transformer``'s layers; None when unsupported.

        ``caches``: one per layer, by default the layers' streaming ring caches. ``weight_sets``:
        the per-step weight set of each layer (default 0; without per-step weights, only 0).
        """
        layers = list(transformer.layers)
        caches = caches if caches is not None else [LayerCache.of(layer.self_attn) for layer in layers]
        weight_sets = weight_sets if weight_sets is not None else [0] * len(layers)
        specs = (transformer_native.LayerSpec * len(layers))()
        tensors: list[Tensor] = []
        try:
            transformer_native.load()
            for layer, spec, cache, weight_set in zip(layers, specs, caches, weight_sets, strict=True):
                _layer(layer, spec, tensors, cache, weight_set)
        except Unsupported:
            return None
        except ImportError:  # no compiler: the module path, which warns through the dispatcher
            return None
        parameters = list(transformer.parameters())
        return cls(specs, tensors, parameters, [p.data_ptr() for p in parameters])

    def valid(self) -> bool:
        """False once a weight was replaced (``.to()``, ``param.data = ...``): pack again."""
        # map with C-level callables: this runs on every streaming call
        return all(map(operator.eq, map(Tensor.data_ptr, self.parameters), self.addresses))

    def runs(self, x: Tensor, exec_all: bool) -> bool:
        """Whether this call can take the C step."""
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in self.parameters)
        )
        return (
            exec_all
            and not needs_grad
            and x.dtype is torch.float32
            and x.device.type == "cpu"
            and x.shape[0] * x.shape[1] <= linear_native.MAX_ROWS
            and kernels.choose_backend("linear", x.device) == NATIVE
        )

    def __call__(
        self, x: Tensor, positions: Tensor, rope_cos: Tensor | None, rope_sin: Tensor | None, used: int
    ) -> Tensor:
        out = x.contiguous().clone()
        transformer_native.step(self.specs, out, positions.contiguous(), rope_cos, rope_sin, used)
        return out
