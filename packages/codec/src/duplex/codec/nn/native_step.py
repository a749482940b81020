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
from dataclasses import dataclass

import torch
from duplex.codec import kernels
from duplex.codec.kernels import linear_native, transformer_native
from duplex.codec.kernels.dispatch import NATIVE
from duplex.codec.nn.feedforward import ActivationGating
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


def _layer(layer: nn.Module, spec: transformer_native.LayerSpec, keep: list[Tensor]) -> None:
    """Fill ``spec`` with ``layer``'s weights and streaming cache; ``keep`` collects the tensors."""
    attn = layer.self_attn
    state = attn.streaming_state
    if attn.mult != 1:
        raise Unsupported("per-step weights")
    (kind, eps, w1, b1), (kind2, eps2, w2, b2) = _norm(layer.norm1), _norm(layer.norm2)
    if kind != kind2 or eps != eps2:
        raise Unsupported("different norms in one layer")
    if layer.gating is None:
        feedforward = transformer_native.FEEDFORWARD_GELU
        ff_in, ff_out = _plain_weight(layer.linear1), _plain_weight(layer.linear2)
    elif isinstance(layer.gating, ActivationGating) and layer.gating.activation_name == "silu":
        feedforward = transformer_native.FEEDFORWARD_SILU_GATED
        ff_in, ff_out = _plain_weight(layer.gating.linear_in), _plain_weight(layer.gating.linear_out)
    else:
        raise Unsupported(f"feed-forward {type(layer.gating).__name__}")
    if parametrize.is_parametrized(attn):
        raise Unsupported("parametrized weights (LoRA)")
    scales = [getattr(ls, "scale", None) for ls in (layer.layer_scale_1, layer.layer_scale_2)]
    cache = state.cache
    tensors = {
        "norm1_weight": w1, "norm1_bias": b1, "norm2_weight": w2, "norm2_bias": b2,
        "in_proj": attn.in_proj_weight.detach(), "out_proj": _plain_weight(attn.out_proj),
        "ff_in": ff_in, "ff_out": ff_out,
        "scale1": None if scales[0] is None else scales[0].detach(),
        "scale2": None if scales[1] is None else scales[1].detach(),
        "keys": cache.keys, "values": cache.values, "slot_positions": cache.positions,
        "offsets": state.offset,
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
    spec.capacity = cache.capacity


@dataclass
class NativeStep:
    specs: ctypes.Array
    tensors: list[Tensor]  # what the specs point into: kept alive, and checked for moves
    addresses: list[int]

    @classmethod
    def pack(cls, transformer: nn.Module) -> NativeStep | None:
        """The C description of ``transformer``'s layers while it streams; None when unsupported."""
        if kernels.choose_backend("linear", "cpu") != NATIVE:
            return None
        layers = list(transformer.layers)
        specs = (transformer_native.LayerSpec * len(layers))()
        tensors: list[Tensor] = []
        try:
            transformer_native.load()
            for layer, spec in zip(layers, specs, strict=True):
                _layer(layer, spec, tensors)
        except Unsupported:
            return None
        except ImportError:  # no compiler: the module path, which warns through the dispatcher
            return None
        return cls(specs, tensors, [t.data_ptr() for t in tensors])

    def valid(self) -> bool:
        """False once a weight was replaced (``.to()``, ``param.data = ...``): pack again."""
        return all(t.data_ptr() == a for t, a in zip(self.tensors, self.addresses, strict=True))

    def runs(self, x: Tensor, exec_all: bool) -> bool:
        """Whether this call can take the C step."""
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or any(t.requires_grad for t in self.tensors)
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
