"""``linear/blocked``: ``x @ weight.T + bias`` computed in blocks of output features.

Registered through the ``duplex.kernels`` entry-point group as a
:class:`duplex.codec.kernels.Kernel`; ``DUPLEX_KERNELS=blocked`` selects it.
"""

from __future__ import annotations

import torch
from duplex.codec.kernels import Kernel
from torch import Tensor

BLOCK = 256  # output features per matmul


def _widened(weight: Tensor, scale: Tensor | None, dtype: torch.dtype) -> Tensor:
    if scale is None:
        return weight.to(dtype)
    groups = scale.shape[1]
    rows, columns = weight.shape
    grouped = weight.to(torch.float32).view(rows, groups, columns // groups) * scale[:, :, None]
    return grouped.view(rows, columns).to(dtype)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
    """``F.linear`` of a float, bf16 or int8 (with ``scale [out, groups]``) weight, block by block."""
    blocks = []
    for start in range(0, weight.shape[0], BLOCK):
        block = slice(start, start + BLOCK)
        tile = _widened(weight[block], None if scale is None else scale[block], x.dtype)
        blocks.append(torch.matmul(x, tile.t()))
    out = torch.cat(blocks, dim=-1) if blocks else x.new_zeros(*x.shape[:-1], 0)
    return out if bias is None else out + bias.to(x.dtype)


KERNEL = Kernel(linear, devices=("cpu",), dtypes=(torch.float32, torch.bfloat16))
