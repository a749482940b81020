"""A streaming call of a plain pre-norm transformer (Mimi's) as one flat run of torch ops.

The module path takes each layer through some ten ``nn.Module`` calls and the attention's
general branches (per-step weights, grouped heads, execution masks). For the layers this covers
(LayerNorm, the exact-GELU MLP, one weight set, RoPE or no positions, as many key/value heads as
heads, optional layer scale) it runs the very same torch ops in the same order, so the same bits
(tested), in about two thirds of the time. It serves the streaming calls that the C step
(:mod:`duplex.codec.nn.native_step`) does not take, above all the reference-exact encode
(:func:`~duplex.codec.kernels.reference_matmuls`), where the C step's sums would differ from
the reference's.
"""

from __future__ import annotations

from duplex.codec import kernels
from torch import Tensor, nn
from torch.nn import functional as F


def covers(transformer: nn.Module) -> bool:
    """Whether every layer of ``transformer`` is of the plain kind this path runs."""
    for layer in transformer.layers:
        attn = layer.self_attn
        plain_norms = all(
            type(norm) is nn.LayerNorm and norm.weight is not None for norm in (layer.norm1, layer.norm2)
        )
        if not (
            plain_norms
            and layer.gating is None
            and attn.mult == 1
            and attn.kv_repeat == 1
            and attn.causal
            and attn.rope is transformer.rope
        ):
            return False
    return True


def _norm(norm: nn.LayerNorm, x: Tensor) -> Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _scaled(layer_scale: nn.Module, update: Tensor) -> Tensor:
    scale = getattr(layer_scale, "scale", None)
    return update if scale is None else scale * update


def eager_step(transformer: nn.Module, x: Tensor, positions: Tensor) -> Tensor:
    """The layers of a streaming :class:`~duplex.codec.nn.transformer.StreamingTransformer` over
    ``x [B, T, D]`` at ``positions [B, T]``, every batch item executing; advances the layers'
    states as the module path does (the transformer advances its own offsets)."""
    length = x.shape[1]
    first = transformer.layers[0].self_attn
    heads, head_dim = first.num_heads, first.head_dim
    rotation = None if transformer.rope is None else transformer.rope.rotation(positions, head_dim)
    bias = None  # every layer's cache is written alike: one mask for all
    for layer in transformer.layers:
        attn = layer.self_attn
        state = attn.streaming_state
        projected = kernels.linear(_norm(layer.norm1, x), attn.in_proj_weight)
        qk = projected[..., : 2 * heads * head_dim].unflatten(-1, (2 * heads, head_dim))
        v = projected[..., 2 * heads * head_dim :].unflatten(-1, (heads, head_dim))
        if rotation is not None:
            qk = transformer.rope.rotate(qk, rotation)
        q, k = qk[:, :, :heads].transpose(1, 2), qk[:, :, heads:].transpose(1, 2)
        keys, values, key_positions = state.cache.write(k, v.transpose(1, 2), positions, state.exec_mask)
        if bias is None:
            bias = attn._attention_bias(positions, key_positions, True, q.dtype)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias)
        update = kernels.linear(out.transpose(1, 2).flatten(2), attn.out_proj.weight)
        x = x.to(update.dtype) + _scaled(layer.layer_scale_1, update)
        hidden = F.gelu(kernels.linear(_norm(layer.norm2, x), layer.linear1.weight, layer.linear1.bias))
        update = kernels.linear(hidden, layer.linear2.weight, layer.linear2.bias)
        x = x.to(update.dtype) + _scaled(layer.layer_scale_2, update)
        state.offset.add_(state.exec_mask, alpha=length)
        state.step += length
        layer.streaming_state.step += length
    return x
