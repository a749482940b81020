"""A streaming transformer step with torch's own arithmetic, in C (``transformer_reference_order.c``).

The reference-exact encode needs Mimi's encoder transformer to the last bit. Its torch ops cost
far more in dispatch than in arithmetic at two rows per step; the C file does the same arithmetic:
torch's LayerNorm moments, the BLAS-order matmuls, the rotary complex product, the CPU
flash attention (torch's own ``sgemm_`` for its two products, exp_u20, the lane sums) and the
GELU of oneDNN's AVX-512 kernel, to which torch hands it on such CPUs. Where that GELU is not
torch's, the step runs as one C part per layer with torch's GELU between the parts.

What cannot be read off torch is found here by trial (:func:`torch_math`): the vector widths of
its LayerNorm and complex-mul kernels (8 floats on AVX-512 CPUs too: ATen runs them on its AVX2
kernels) and of its flash attention (16 with AVX-512), and whether its GELU is oneDNN's AVX-512
one. Each op is checked against torch once per process, and
:func:`duplex.codec.nn.reference_step.matches_eager_step` checks whole streams; where anything
differs, the step is not used and the caller keeps torch's ops.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
from duplex.codec.kernels import native_build
from duplex.codec.kernels.rvq_reference_order import torch_function
from torch import Tensor
from torch.nn import functional as F

SOURCES = (
    Path(__file__).with_name("transformer_reference_order.c"),
    Path(__file__).with_name("linear_blas_order.c"),
)
MAX_KEYS = 512  # torch's flash attention splits longer key ranges into blocks (not followed here)

_c = ctypes
_PART = [
    _c.c_void_p, _c.c_int64, _c.c_int64, _c.c_void_p, _c.c_int64, _c.c_int64, _c.c_void_p, _c.c_void_p,
    _c.c_int64, _c.c_void_p, _c.c_void_p, _c.c_void_p, _c.c_int,
]  # fmt: skip
_NORM = [_c.c_void_p, _c.c_int64, _c.c_int64, _c.c_void_p, _c.c_void_p, _c.c_float, _c.c_void_p, _c.c_int]
_ATTENTION = [
    _c.c_void_p, _c.c_int64, _c.c_void_p, _c.c_void_p, _c.c_int64, _c.c_void_p, _c.c_int64, _c.c_int64,
    _c.c_int64, _c.c_int64, _c.c_void_p, _c.c_void_p, _c.c_int, _c.c_int,
]  # fmt: skip
_STEP = [
    _c.c_void_p, _c.c_int64, _c.c_void_p, _c.c_int64, _c.c_int64, _c.c_void_p, _c.c_void_p, _c.c_int64,
    _c.c_void_p, _c.c_void_p, _c.c_int,
]  # fmt: skip
_ROTATE = [_c.c_void_p, _c.c_void_p, _c.c_int64, _c.c_int64, _c.c_int64, _c.c_void_p, _c.c_int64]
_SIGNATURES = {
    "duplex_transformer_reference_step": _STEP,
    "duplex_gelu_reference_order": [_c.c_void_p, _c.c_int64],
    "duplex_rotate_reference_order": _ROTATE,
    "duplex_transformer_reference_part": _PART,
    "duplex_layer_norm_reference_order": _NORM,
    "duplex_attention_reference_order": _ATTENTION,
}


class TorchMath(ctypes.Structure):
    """The C struct ``torch_math``: torch's BLAS and its kernels' vector widths here."""

    _fields_ = [
        ("sgemm", _c.c_void_p),
        ("norm_lanes", _c.c_int64),
        ("attention_lanes", _c.c_int64),
        ("complex_pairs", _c.c_int64),
        ("onednn_gelu", _c.c_int64),
    ]


@functools.cache
def load(name: str) -> ctypes._CFuncPtr:
    return native_build.function(SOURCES, name, _SIGNATURES[name], restype=ctypes.c_int)


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float, lanes: int) -> Tensor:
    """``F.layer_norm`` over the last dim of contiguous float32 rows, in C."""
    y = torch.empty_like(x)
    n = x.shape[-1]
    load("duplex_layer_norm_reference_order")(
        x.data_ptr(), x.numel() // n, n, weight.data_ptr(), bias.data_ptr(), eps, y.data_ptr(), lanes
    )
    return y


def attention(qk: Tensor, keys: Tensor, values: Tensor, allowed: Tensor, lanes: int) -> Tensor:
    """``scaled_dot_product_attention`` of the queries in ``qk [T, 2H, Dh]`` (rotated Q then K heads,
    contiguous) over the first ``S`` slots of a ring cache ``keys/values [H, capacity, Dh]``,
    ``allowed [T, S]`` bool, in C; ``[T, H * Dh]``."""
    length, two_heads, head_dim = qk.shape
    heads, capacity, _ = keys.shape
    used = allowed.shape[1]
    out = torch.empty(length, heads * head_dim)
    mask = allowed.to(torch.uint8).contiguous()
    status = load("duplex_attention_reference_order")(
        qk.data_ptr(), two_heads * head_dim, keys.data_ptr(), values.data_ptr(), capacity * head_dim,
        mask.data_ptr(), length, used, heads, head_dim, out.data_ptr(), torch_function("sgemm_"), lanes,
        torch.get_num_threads(),
    )  # fmt: skip
    if status != 0:
        raise MemoryError("the reference-order attention could not allocate its scratch memory")
    return out


def rotate(x: Tensor, rotation: Tensor, vector_pairs: int) -> Tensor:
    """``x [T, H, Dh]`` (contiguous) times ``rotation [T, Dh / 2, 2]`` (cos, sin) pair by pair, in C."""
    length, heads, head_dim = x.shape
    out = torch.empty_like(x)
    load("duplex_rotate_reference_order")(
        x.data_ptr(), out.data_ptr(), length, heads, head_dim, rotation.data_ptr(), vector_pairs
    )
    return out


def gelu(x: Tensor) -> Tensor:
    """oneDNN's AVX-512 exact GELU (torch's on such CPUs) of contiguous float32 values, in C."""
    y = x.clone()
    load("duplex_gelu_reference_order")(y.data_ptr(), y.numel())
    return y


def _gelu_matches() -> bool:
    generator = torch.Generator().manual_seed(3)
    x = torch.cat(
        [torch.randn(8192, generator=generator) * scale for scale in (0.01, 1, 3, 10)]
        + [torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-40, 5.0, -5.0, 5.5, -5.5, 30.0, -30.0, 1e30, -1e30])]
    )
    return torch.equal(gelu(x), F.gelu(x))


def _torch_attention(qk: Tensor, keys: Tensor, values: Tensor, allowed: Tensor) -> Tensor:
    heads = keys.shape[0]
    used = allowed.shape[1]
    bias = torch.zeros(allowed.shape).masked_fill_(~allowed, float("-inf"))[None, None]
    q = qk[None, :, :heads].transpose(1, 2)
    out = F.scaled_dot_product_attention(q, keys[None, :, :used], values[None, :, :used], attn_mask=bias)
    return out.transpose(1, 2).flatten(2)[0]


def _norm_matches(lanes: int) -> bool:
    generator = torch.Generator().manual_seed(0)
    for n in (512, 2048, 100, 37, 7, 5123):
        x = torch.randn(6, n, generator=generator) * torch.rand(6, 1, generator=generator) * 10
        x += torch.randn(6, 1, generator=generator) * 5
        weight, bias = torch.randn(n, generator=generator), torch.randn(n, generator=generator)
        if not torch.equal(
            layer_norm(x, weight, bias, 1e-5, lanes), F.layer_norm(x, (n,), weight, bias, 1e-5)
        ):
            return False
    return True


def _attention_matches(lanes: int) -> bool:
    """On Mimi's head shape (and a small one): every residue of the key count mod 16 (the
    vector tails) several times over, full rings, 1-3 queries."""
    generator = torch.Generator().manual_seed(1)
    capacity = 250
    shapes = ((8, 64, [*range(2, 70), 127, 128, 129, 249, 250]), (2, 8, (5, 24, 250)))
    for heads, head_dim, counts in shapes:
        keys = torch.randn(heads, capacity, head_dim, generator=generator) * 2
        values = torch.randn(heads, capacity, head_dim, generator=generator)
        queries = torch.randn(3, 2 * heads, head_dim, generator=generator) * 2
        for used in counts:
            for length in (2, 3, 1):
                if length > used:
                    continue
                qk = queries[:length]
                delta = torch.arange(used - length, used)[:, None] - torch.arange(used)[None]
                allowed = (delta >= 0) & (delta < 240)
                got = attention(qk, keys, values, allowed, lanes)
                if not torch.equal(got, _torch_attention(qk, keys, values, allowed)):
                    return False
    return True


def _rotation_matches(vector_pairs: int) -> bool:
    from duplex.codec.nn.rope import RotaryEmbedding

    generator = torch.Generator().manual_seed(2)
    rope = RotaryEmbedding()
    for head_dim in (8, 16, 24, 40, 64, 72):
        x = torch.randn(1, 3, 4, head_dim, generator=generator) * 3
        rotation = rope.rotation(torch.tensor([[5, 6, 1000]]), head_dim)
        pairs = torch.view_as_real(rotation)[0, :, 0].contiguous()
        if not torch.equal(rotate(x[0], pairs, vector_pairs), rope.rotate(x, rotation)[0]):
            return False
    return True


@functools.cache
def torch_math() -> TorchMath | None:
    """Torch's BLAS and its kernels' vector widths, each checked by trial; None where the C ops
    cannot follow torch here (no compiler, no exported BLAS, or no width that gives torch's bits)."""
    sgemm = torch_function("sgemm_")
    if sgemm is None:
        return None
    try:
        norm_lanes = next((lanes for lanes in (8, 16) if _norm_matches(lanes)), None)
        attention_lanes = next((lanes for lanes in (16, 8) if _attention_matches(lanes)), None)
        complex_pairs = next((pairs for pairs in (8, 16, 4) if _rotation_matches(pairs)), None)
        onednn_gelu = _gelu_matches()
    except ImportError:  # the kernel does not build here
        return None
    if norm_lanes is None or attention_lanes is None or complex_pairs is None:
        return None
    return TorchMath(sgemm, norm_lanes, attention_lanes, complex_pairs, onednn_gelu)


def step(
    specs: ctypes.Array,
    x: Tensor,
    positions: Tensor,
    rotation: Tensor | None,
    used: int,
    hidden: Tensor,
    math: TorchMath,
) -> None:
    """A whole step over ``x [B, T, D]`` (contiguous, updated in place) in one call, GELU included:
    only where ``math.onednn_gelu``. ``hidden`` is scratch ``[B, T, hidden]``."""
    batch, length, _ = x.shape
    status = load("duplex_transformer_reference_step")(
        ctypes.addressof(specs), len(specs), x.data_ptr(), batch, length, positions.data_ptr(),
        None if rotation is None else rotation.data_ptr(), used, hidden.data_ptr(), ctypes.byref(math),
        torch.get_num_threads(),
    )  # fmt: skip
    if status != 0:
        raise MemoryError("the reference-order transformer step could not allocate its scratch memory")


def part(
    specs: ctypes.Array,
    index: int,
    x: Tensor,
    positions: Tensor,
    rotation: Tensor | None,
    used: int,
    activated: Tensor | None,
    hidden: Tensor,
    math: TorchMath,
) -> None:
    """Part ``index`` (0..layers) of a step over ``x [B, T, D]`` (contiguous, updated in place): the
    end of layer ``index - 1`` from ``activated`` (torch's GELU of its hidden rows), then layer
    ``index``'s attention half, writing its hidden rows ``[B, T, hidden]`` into ``hidden``.
    ``rotation``: ``[B, T, Dh / 2, 2]`` (cos, sin) or None."""
    batch, length, _ = x.shape
    status = load("duplex_transformer_reference_part")(
        ctypes.addressof(specs), len(specs), index, x.data_ptr(), batch, length, positions.data_ptr(),
        None if rotation is None else rotation.data_ptr(), used,
        None if activated is None else activated.data_ptr(), hidden.data_ptr(), ctypes.byref(math),
        torch.get_num_threads(),
    )  # fmt: skip
    if status != 0:
        raise MemoryError("the reference-order transformer step could not allocate its scratch memory")
