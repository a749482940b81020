"""The ``native`` transformer_step op: a streaming step of all a transformer's layers in one C call
(``transformer_native.c``) on the CPU: float32 within the step (a bfloat16 model's activations are
widened on the way in, its KV cache stays bfloat16), weights float32, bfloat16 or int8.

:class:`LayerSpec` is the C struct ``duplex_layer``: weights, KV ring cache and shapes of one
layer, as raw pointers into tensors the caller keeps alive. :func:`step` runs the layers over
``x [B, T, D]`` in place. The matmuls are those of ``linear_native.c``, linked into the same
library. :func:`transformer_step` packs a streaming ``StreamingTransformer``'s layers into specs
once per streaming session (and per weight set, for per-step weights) and runs the step where it applies:
every batch item executing, at most ``linear_native.MAX_ROWS`` rows, no gradient. Elsewhere, and
for layers it does not cover (LoRA parametrizations, biases, gatings other than SiLU), the
transformer runs its layers one by one.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from duplex.codec.kernels import linear_native, native_build
from duplex.codec.kernels.dispatch import warn_declined
from torch import Tensor, nn
from torch.nn.utils import parametrize

SOURCES = (Path(__file__).with_name("transformer_native.c"), Path(__file__).with_name("linear_native.c"))

NORM_LAYER, NORM_RMS = 0, 1
FEEDFORWARD_GELU, FEEDFORWARD_SILU_GATED = 0, 1

_address = ctypes.c_void_p


class LayerSpec(ctypes.Structure):
    _fields_ = [
        ("dim", ctypes.c_int64),
        ("heads", ctypes.c_int64),
        ("kv_heads", ctypes.c_int64),
        ("head_dim", ctypes.c_int64),
        ("hidden", ctypes.c_int64),
        ("context", ctypes.c_int64),
        ("norm", ctypes.c_int64),
        ("feedforward", ctypes.c_int64),
        ("norm_eps", ctypes.c_float),
        ("_pad", ctypes.c_float),
        ("norm1_weight", _address),
        ("norm1_bias", _address),
        ("norm2_weight", _address),
        ("norm2_bias", _address),
        ("in_proj", linear_native.WeightSpec),
        ("out_proj", linear_native.WeightSpec),
        ("ff_in", linear_native.WeightSpec),
        ("ff_out", linear_native.WeightSpec),
        ("scale1", _address),
        ("scale2", _address),
        ("keys", _address),
        ("values", _address),
        ("slot_positions", _address),
        ("offsets", _address),
        ("capacity", ctypes.c_int64),
        ("cache_kind", ctypes.c_int64),
    ]


@functools.cache
def load() -> ctypes._CFuncPtr:
    signature = [
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int,
    ]  # fmt: skip
    return native_build.function(SOURCES, "duplex_transformer_step", signature, restype=ctypes.c_int)


def pointer(tensor: Tensor | None) -> int | None:
    """The address of a contiguous float32/int64 CPU tensor (None stays None)."""
    if tensor is None:
        return None
    if tensor.device.type != "cpu" or not tensor.is_contiguous():
        raise ValueError("the native transformer step takes contiguous CPU tensors")
    return tensor.data_ptr()


def step(
    specs: ctypes.Array,
    x: Tensor,
    positions: Tensor,
    rope_cos: Tensor | None,
    rope_sin: Tensor | None,
    used: int,
) -> None:
    """Run the layers of ``specs`` over ``x [B, T, D]`` (contiguous float32, updated in place).

    ``positions [B, T]`` int64 are the new steps' absolute positions, ``rope_cos``/``rope_sin``
    ``[B, T, Dh / 2]`` the rotary tables at those positions (None: no rotary embedding), ``used``
    the cache slots to scan.
    """
    batch, length, _ = x.shape
    status = load()(
        ctypes.addressof(specs), len(specs), x.data_ptr(), batch, length, positions.data_ptr(),
        pointer(rope_cos), pointer(rope_sin), used, torch.get_num_threads(),
    )  # fmt: skip
    if status != 0:
        raise MemoryError("the native transformer step could not allocate its scratch memory")


class Unsupported(Exception):
    """The layers use something the C step does not implement."""


Weight = tuple[Tensor, Tensor | None]  # a matmul weight as stored, and its int8 scales


def _plain_weight(module: nn.Module) -> Weight:
    if parametrize.is_parametrized(module):
        raise Unsupported("parametrized weights (LoRA)")
    if getattr(module, "bias", None) is not None:
        raise Unsupported("linear biases")
    return module.weight.detach(), module.weight_scale


def _norm(norm: nn.Module) -> tuple[int, float, Tensor, Tensor | None]:
    if isinstance(norm, nn.LayerNorm) and norm.weight is not None and norm.bias is not None:
        return NORM_LAYER, norm.eps, norm.weight.detach(), norm.bias.detach()
    alpha = getattr(norm, "alpha", None)  # RMSNorm
    if isinstance(alpha, Tensor):
        return NORM_RMS, norm.eps, alpha.detach().view(-1), None
    raise Unsupported(f"norm {type(norm).__name__}")


def _feedforward(layer: nn.Module, weight_set: int) -> tuple[int, Weight, Weight]:
    gating = layer.gating
    if gating is None:
        return FEEDFORWARD_GELU, _plain_weight(layer.linear1), _plain_weight(layer.linear2)
    if isinstance(gating, nn.ModuleList):  # per-step gating
        gating = gating[weight_set]
    if getattr(gating, "activation_name", None) != "silu":
        raise Unsupported(f"feed-forward {type(gating).__name__}")
    return FEEDFORWARD_SILU_GATED, _plain_weight(gating.linear_in), _plain_weight(gating.linear_out)


def _fill(spec: LayerSpec, layer: nn.Module, weight_set: int, keep: list[Tensor]) -> None:
    """``spec`` <- ``layer``'s weights (set ``weight_set``) and its attention's ring cache."""
    attn = layer.self_attn
    if layer.cross_attention is not None:
        raise Unsupported("cross-attention")
    if attn.rope is not None and not attn.rope.interleave:
        raise Unsupported("non-interleaved rotary embedding")
    (kind, eps, w1, b1), (kind2, eps2, w2, b2) = _norm(layer.norm1), _norm(layer.norm2)
    if kind != kind2 or eps != eps2:
        raise Unsupported("different norms in one layer")
    feedforward, ff_in, ff_out = _feedforward(layer, weight_set)
    if parametrize.is_parametrized(attn):
        raise Unsupported("parametrized weights (LoRA)")
    _plain_weight(attn.out_proj)
    state = attn.streaming_state
    matmuls = {
        "in_proj": attn.in_proj(weight_set), "out_proj": attn.out_proj_weight(weight_set),
        "ff_in": ff_in, "ff_out": ff_out,
    }  # fmt: skip
    for name, (weight, scale) in matmuls.items():
        weight = weight.detach()
        if not (linear_native.covers_weight(weight, scale) and weight.is_contiguous()):
            raise Unsupported(f"{name}: {weight.dtype} on {weight.device}")
        if scale is not None and not scale.is_contiguous():
            raise Unsupported(f"{name}: non-contiguous scales")
        setattr(spec, name, linear_native.weight_spec(weight, scale))
        keep += [weight] if scale is None else [weight, scale]
    scales = [getattr(ls, "scale", None) for ls in (layer.layer_scale_1, layer.layer_scale_2)]
    small = {  # the C step reads these in float32: a bf16 model's are widened once per session
        "norm1_weight": w1, "norm1_bias": b1, "norm2_weight": w2, "norm2_bias": b2,
        "scale1": None if scales[0] is None else scales[0].detach(),
        "scale2": None if scales[1] is None else scales[1].detach(),
    }  # fmt: skip
    cache = state.cache
    if cache.keys.dtype not in (torch.float32, torch.bfloat16):
        raise Unsupported(f"a {cache.keys.dtype} KV cache")
    tensors = {
        **{name: None if t is None else t.to(torch.float32).contiguous() for name, t in small.items()},
        "keys": cache.keys,
        "values": cache.values,
        "slot_positions": cache.positions,
        "offsets": state.offset,
    }
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if tensor.device.type != "cpu" or not tensor.is_contiguous():
            raise Unsupported(f"{name}: {tensor.dtype} on {tensor.device}")
        setattr(spec, name, tensor.data_ptr())
        keep.append(tensor)
    spec.dim, spec.heads, spec.kv_heads = attn.embed_dim, attn.num_heads, attn.num_kv_heads
    spec.head_dim, spec.hidden = attn.head_dim, ff_out[0].shape[1]
    spec.context = attn.context or 0
    spec.norm, spec.norm_eps, spec.feedforward = kind, eps, feedforward
    spec.capacity = cache.capacity
    spec.cache_kind = linear_native.WEIGHT_KINDS[cache.keys.dtype]


def pack(transformer: nn.Module, weight_set: int) -> tuple[ctypes.Array, list[Tensor]] | Unsupported:
    """The specs of a streaming transformer's layers with weight set ``weight_set``, and the
    tensors they point into (kept alive with them); what is not covered, when the layers are not."""
    layers = list(transformer.layers)
    specs = (LayerSpec * len(layers))()
    keep: list[Tensor] = []
    try:
        for layer, spec in zip(layers, specs, strict=True):
            _fill(spec, layer, weight_set, keep)
    except Unsupported as unsupported:
        return unsupported
    return specs, keep


def transformer_step(transformer: nn.Module, x: Tensor, positions: Tensor) -> Tensor:
    """The transformer's layers over ``x [B, T, D]`` at ``positions [B, T]`` in streaming."""
    state = transformer.streaming_state
    length = x.shape[1]
    first = transformer.layers[0].self_attn
    attn_state = first.streaming_state
    if (
        torch.compiler.is_compiling()  # the C step reads the layers through pointers: run them as ops
        or x.dtype not in linear_native.ACTIVATIONS
        or x.shape[0] * length > linear_native.MAX_ROWS
        or length > attn_state.cache.capacity
        or (torch.is_grad_enabled() and (x.requires_grad or first.in_proj_weight.requires_grad))
        or not state.all_active()
    ):
        return transformer.run_layers(x, positions)
    weight_set = first.weight_set(attn_state.step) if first.mult > 1 else 0
    if first.mult > 1 and first.weight_set(attn_state.step + length - 1) != weight_set:
        return transformer.run_layers(x, positions)
    key = ("transformer_native", weight_set)
    if key not in state.packed:
        state.packed[key] = pack(transformer, weight_set)
        if isinstance(state.packed[key], Unsupported):
            warn_declined("transformer_step", "native", str(state.packed[key]))
    packed = state.packed[key]
    if isinstance(packed, Unsupported):
        return transformer.run_layers(x, positions)
    rope_cos = rope_sin = None
    if transformer.rope is not None:
        angles = positions.to(torch.float32)[..., None] * transformer.rope.frequencies(
            first.head_dim, x.device
        )
        rope_cos, rope_sin = torch.cos(angles), torch.sin(angles)
    out = x.to(torch.float32, copy=True).contiguous()  # bf16 activations: float32 within the step
    # every slot is scanned: a never-written one holds position -1 and costs a comparison
    step(packed[0], out, positions.contiguous(), rope_cos, rope_sin, attn_state.cache.capacity)
    transformer.advance_layers(length)
    return out.to(x.dtype)
