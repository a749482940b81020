"""Ring-buffer KV cache of streaming attention (docs/architecture.md §2.3).

Position ``p`` of a batch item is stored in slot ``p % capacity``; a call writes its new keys
and values *before* attending, so with several steps per call and a full ring, the first
queries of the call lose their oldest in-window keys. That is the reference's behaviour, kept
on purpose (it decides Mimi's streaming output past 10 s).
"""

from __future__ import annotations

import torch


class RingKVCache:
    def __init__(
        self,
        batch_size: int,
        num_heads: int,
        capacity: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"KV cache capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.keys = torch.zeros(batch_size, num_heads, capacity, head_dim, dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)
        # absolute position held by each slot; -1 = never written (masked out)
        self.positions = torch.full((batch_size, capacity), -1, dtype=torch.long, device=device)
        self._batch_index = torch.arange(batch_size, device=device)[:, None]

    def reset(self, slots: torch.Tensor) -> None:
        self.positions.masked_fill_(slots[:, None], -1)

    def write(
        self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, exec_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Store ``keys/values [B, H, T, Dh]`` at ``positions [B, T]`` for the items of ``exec_mask``.

        Returns the whole cache, as the reference attends over it: keys, values ``[B, H, S, Dh]``
        and the absolute position of every slot ``[B, S]`` (-1 where empty); ``S`` is the capacity,
        so every call has the same shapes.
        """
        length = keys.shape[2]
        if length > self.capacity:
            raise ValueError(
                f"a streaming call of {length} steps exceeds the KV cache capacity {self.capacity}"
            )
        slots = positions % self.capacity
        new_keys, new_values = keys.transpose(1, 2), values.transpose(1, 2)  # [B, T, H, Dh]
        index = (self._batch_index, slice(None), slots)
        # frozen items write back what their slots held (no branch on the mask: graph-ready)
        keep = ~exec_mask
        new_keys = torch.where(keep[:, None, None, None], self.keys[index], new_keys)
        new_values = torch.where(keep[:, None, None, None], self.values[index], new_values)
        positions = torch.where(keep[:, None], self.positions[self._batch_index, slots], positions)
        self.keys[index] = new_keys
        self.values[index] = new_values
        self.positions[self._batch_index, slots] = positions
        return self.keys, self.values, self.positions
