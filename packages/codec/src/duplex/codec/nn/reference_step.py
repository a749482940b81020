"""A streaming call of Mimi's transformer with torch's arithmetic, bit for bit, mostly in C.

Inside :func:`~duplex.codec.kernels.reference_matmuls` (the reference-exact encode) the layers
that :func:`~duplex.codec.nn.eager_step.covers` run in C
(:mod:`duplex.codec.kernels.transformer_reference_order`): one call for the whole step where the
C GELU is torch's, else one call per layer with torch's GELU between them. The same bits as
:func:`~duplex.codec.nn.eager_step.eager_step`, without its ~20 torch ops per layer. It takes
the calls the C kernels reproduce: batch 1, 1-3 steps (the BLAS-order matmul's rows), float32
on the CPU, keys within one attention block. :func:`matches_eager_step` compares
whole streams with the eager step once per process before any of it is used.
"""

from __future__ import annotations

import functools

import torch
from duplex.codec.kernels import dispatch, linear_blas_order, transformer_reference_order
from duplex.codec.nn.native_step import NativeStep
from torch import Tensor, nn
from torch.nn import functional as F


def applies(transformer: nn.Module, native: NativeStep | None, x: Tensor) -> bool:
    """Whether this streaming call (every item executing, eager-step layers) can take the C parts."""
    attn = transformer.layers[0].self_attn
    batch, length, dim = x.shape
    hidden = transformer.layers[0].linear1.weight.shape[0]
    return (
        native is not None  # the caller has just revalidated it (StreamingTransformer._native_step)
        and batch == 1
        and x.dtype is torch.float32
        and all(  # every product of the layer: in_proj, out_proj, ff_in, ff_out
            linear_blas_order.supports(length, n_in, n_out)
            for n_in, n_out in ((dim, 3 * dim), (dim, dim), (dim, hidden), (hidden, dim))
        )
        and attn.streaming_state.cache.capacity <= transformer_reference_order.MAX_KEYS
        and dispatch.blas_order_wanted(x.device, torch.is_grad_enabled() and x.requires_grad)
        and linear_blas_order.matches_blas(one_row=length == 1)
        and matches_eager_step()
    )


def reference_step(transformer: nn.Module, native: NativeStep, x: Tensor, positions: Tensor) -> Tensor:
    """The layers over ``x [1, T, D]`` at ``positions [1, T]``, advancing their states (the
    transformer advances its own offsets), as :func:`~duplex.codec.nn.eager_step.eager_step` does."""
    math = transformer_reference_order.torch_math()
    batch, length, _ = x.shape
    layers = transformer.layers
    out = x.contiguous().clone()
    rotation = None
    if transformer.rope is not None:
        start = int(positions[0, 0])
        rotation = transformer.rope.rotation_rows(start, length, layers[0].self_attn.head_dim)
    cache = layers[0].self_attn.streaming_state.cache
    used = min(cache.capacity, cache.used + length)
    positions = positions.contiguous()
    hidden = torch.empty(batch, length, layers[0].linear1.weight.shape[0])
    if math.onednn_gelu:
        transformer_reference_order.step(native.specs, out, positions, rotation, used, hidden, math)
    else:  # torch's GELU between the C parts
        activated = None
        for index in range(len(layers) + 1):
            transformer_reference_order.part(
                native.specs, index, out, positions, rotation, used, activated, hidden, math
            )
            if index < len(layers):
                activated = F.gelu(hidden)
    transformer._advance_layers(length, used)
    return out


@functools.cache
def matches_eager_step() -> bool:
    """Whether the C parts give the eager step's bits here: a small Mimi-like transformer (Mimi's
    head size, rotary embedding, layer scale) streamed past its context in calls of 1-3 steps."""
    if transformer_reference_order.torch_math() is None:
        return False
    from duplex.codec.kernels import reference_matmuls
    from duplex.codec.nn.eager_step import eager_step
    from duplex.codec.nn.transformer import StreamingTransformer, TransformerConfig

    config = TransformerConfig(
        d_model=128, num_heads=2, num_layers=2, dim_feedforward=512, context=24, layer_scale=0.01
    )
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        transformer = StreamingTransformer(config).eval()
        for parameter in transformer.parameters():
            if parameter.dim() == 1:  # norms and layer scales away from their initial values
                parameter.add_(0.3 * torch.randn_like(parameter))
        inputs = [torch.randn(1, steps, 128) for steps in [2, 3, 1] * 6]
        twin = StreamingTransformer(config).eval()
        twin.load_state_dict(transformer.state_dict())
        with reference_matmuls(), transformer.streaming(1), twin.streaming(1):
            native = NativeStep.pack(transformer)
            if native is None:
                return False
            for x in inputs:
                positions = transformer._streaming_state.offset[:, None] + torch.arange(x.shape[1])
                ours = reference_step(transformer, native, x, positions)
                expected = eager_step(twin, x, positions)
                for module in (transformer, twin):
                    module._streaming_state.offset += x.shape[1]
                if not torch.equal(ours, expected):
                    return False
    return True
