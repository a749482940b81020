"""The depth transformer ("depformer"): inside one frame, predicts Moshi's codebooks in order.

Position ``k`` of its short sequence predicts audio codebook ``k``; with per-step weights,
position ``k`` uses weight set ``schedule[k]`` (or ``k``). Its inputs and output heads
(``depformer_in``, ``depformer_emb``, ``depformer_text_emb``, ``linears``) live on the LM under
their official names; this module is the transformer body, keys ``depformer.layers.*``.

In generation it streams over the codebooks of one frame and restarts at every frame, so it is
detached from the LM's streaming: :class:`~duplex.lm.generate.LMGen` drives it directly, through
:meth:`Depformer.frame_step` where the configuration allows it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from duplex.codec import kernels
from duplex.codec.nn import StreamingTransformer, TransformerConfig
from duplex.codec.nn.native_step import LayerCache, NativeStep


class Depformer(StreamingTransformer):
    streaming_detached = True

    def __init__(self, config: TransformerConfig) -> None:
        if config.context is not None:
            raise ValueError("the depformer attends within one frame and has no context")
        super().__init__(config)
        self._frame_cache: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._frame_slots = torch.zeros(0, dtype=torch.long)  # [B, steps]: slot k holds position k
        self._frame_positions: list[torch.Tensor] = []  # [B, 1] filled with k, per position k
        self._frame_native: list[NativeStep | None] = []  # the C step of each position, packed lazily
        self._frame_packed: list[bool] = []

    @property
    def supports_frame_step(self) -> bool:
        """Whether :meth:`frame_step` applies: causal, per-step positions, no positional embedding."""
        config = self.config
        return config.causal and config.positional_embedding == "none" and config.weights_per_step > 0

    def frame_step(self, x: torch.Tensor, position: int) -> torch.Tensor:
        """Position ``position`` of this frame for ``x [B, 1, D]`` (inference only).

        The same computation as streaming the module one position per call after a reset, with
        less bookkeeping: within a frame every position sees all earlier ones, so keys and values
        go to plain per-layer buffers (position 0 starts a new frame), no ring, mask or offsets.
        """
        if not self.supports_frame_step:
            raise RuntimeError(
                "frame_step needs a causal depformer with per-step weights and no positional embedding"
            )
        steps = self.config.weights_per_step
        if not 0 <= position < steps:
            raise ValueError(f"position {position} is outside the frame's {steps} depformer steps")
        batch = x.shape[0]
        if position == 0:
            self._prepare_frame(batch, steps, x.device)
        native = self._native_frame_step(x, position)
        if native is not None:
            return native(x, self._frame_positions[position], None, None, used=position + 1)
        for layer, (keys, values) in zip(self.layers, self._frame_cache, strict=True):
            attn = layer.self_attn
            index = self._weight_set(attn, position)
            heads, kv_heads, head_dim = attn.num_heads, attn.num_kv_heads, attn.head_dim
            projected = kernels.linear(layer.norm1(x), attn.in_proj(index))  # [B, 1, P]
            q = projected[..., : heads * head_dim].view(batch, heads, 1, head_dim)
            k = projected[..., heads * head_dim : (heads + kv_heads) * head_dim]
            v = projected[..., (heads + kv_heads) * head_dim :]
            keys[:, :, position] = k.view(batch, kv_heads, head_dim)
            values[:, :, position] = v.view(batch, kv_heads, head_dim)
            out = F.scaled_dot_product_attention(
                q, keys[:, :, : position + 1], values[:, :, : position + 1], enable_gqa=kv_heads != heads
            )
            update = kernels.linear(out.view(batch, 1, heads * head_dim), attn.out_proj_weight(index))
            x = x.to(update.dtype) + layer.layer_scale_1(update)
            update = layer._feedforward(layer.norm2(x), position)
            x = x.to(update.dtype) + layer.layer_scale_2(update)
        return x

    @staticmethod
    def _weight_set(attn: torch.nn.Module, position: int) -> int:
        return 0 if attn.mult == 1 else attn.schedule[position] if attn.schedule else position

    def _native_frame_step(self, x: torch.Tensor, position: int) -> NativeStep | None:
        """The C step for ``position`` when this call can take it (CPU float32 inference)."""
        native = self._frame_native[position]
        if not self._frame_packed[position] or (native is not None and not native.valid()):
            caches = [LayerCache(keys, values, self._frame_slots) for keys, values in self._frame_cache]
            sets = [self._weight_set(layer.self_attn, position) for layer in self.layers]
            native = self._frame_native[position] = NativeStep.pack(self, caches, sets)
            self._frame_packed[position] = True
        return native if native is not None and native.runs(x, True) else None

    def _prepare_frame(self, batch: int, steps: int, device: torch.device) -> None:
        """Key/value buffers ``[B, H_kv, steps, D_h]`` per layer, reused while their shape fits."""
        attn = self.layers[0].self_attn
        shape = (batch, attn.num_kv_heads, steps, attn.head_dim)
        dtype = attn.in_proj_weight.dtype
        first = self._frame_cache[0][0] if self._frame_cache else None
        if first is None or first.shape != shape or first.dtype != dtype or first.device != device:
            zeros = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(2 * len(self.layers))]
            self._frame_cache = list(zip(zeros[::2], zeros[1::2], strict=True))
            self._frame_slots = torch.arange(steps, device=device).repeat(batch, 1)
            self._frame_positions = [torch.full((batch, 1), k, device=device) for k in range(steps)]
            self._frame_native, self._frame_packed = [None] * steps, [False] * steps
