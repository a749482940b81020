"""The token table of one stream, with Moshi's special values (docs/architecture.md §3.3).

The input value ``-1`` (the zero token) embeds to an exact zero vector; other negative values
(``-2``, "ungenerated") are clamped to 0 and looked up. Optional parts keep the official key
names: ``norm`` (LayerNorm after lookup), ``low_rank`` (a ``[N, r]`` table followed by a linear
``r -> dim``) and ``out1`` / ``out2`` (two muxed text streams, ``token = (second + 1) * N + first``).
"""

from __future__ import annotations

import torch
from duplex.codec.nn.linear import Linear
from torch import nn

ZERO_TOKEN = -1


class StreamEmbedding(nn.Embedding):
    def __init__(
        self,
        num_embeddings: int,
        dim: int,
        low_rank: int | None = None,
        norm: bool = False,
        demux_second_stream: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        table_dim = low_rank or dim
        super().__init__(num_embeddings, table_dim, device=device, dtype=dtype)
        if demux_second_stream and norm:
            raise ValueError("a demuxed embedding cannot have a norm")
        self.dim = dim
        self.norm = nn.LayerNorm(table_dim, eps=1e-5, device=device, dtype=dtype) if norm else None
        self.low_rank = (
            Linear(low_rank, dim, bias=False, device=device, dtype=dtype) if low_rank is not None else None
        )
        self.demux_second_stream = demux_second_stream
        if demux_second_stream:
            self.out1 = Linear(table_dim, dim, bias=False, device=device, dtype=dtype)
            self.out2 = Linear(table_dim, dim, bias=False, device=device, dtype=dtype)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        is_zero = (tokens == ZERO_TOKEN).unsqueeze(-1)
        tokens = tokens.clamp(min=0)
        if self.demux_second_stream:
            first = super().forward(tokens % self.num_embeddings)
            second = tokens // self.num_embeddings - 1
            second_absent = (second < 0).unsqueeze(-1)
            second_emb = self.out2(super().forward(second.clamp(min=0)))
            out = self.out1(first) + second_emb.masked_fill(second_absent, 0.0)
            return out.masked_fill(is_zero, 0.0)
        out = super().forward(tokens)
        if self.norm is not None:
            out = self.norm(out)
        out = out.masked_fill(is_zero, 0.0)
        if self.low_rank is not None:
            out = self.low_rank(out)
        return out
