"""Split residual vector quantizer with EMA codebooks (docs/architecture.md §1.6).

Codes come from two independent residual quantizers over the *same* latent: ``rvq_first``
(semantic, normally one codebook) and ``rvq_rest`` (acoustic). Each has its own 1x1 input and
output projections. The module nesting (``rvq_*.vq.layers.<i>._codebook``) is the one of the
official checkpoints, so state dicts load without renaming.

Inference runs the ``rvq_encode`` / ``rvq_decode`` ops of the selected kernel set; every other
residual loop (training, initialisation, calibration) steps through the torch kernels' one level
search, :func:`duplex.codec.kernels.rvq_torch.quantize_level`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from duplex.codec.config import QuantizerConfig
from duplex.codec.kernels import UsesKernels
from duplex.codec.kernels.dispatch import TRITON
from duplex.codec.kernels.rvq_torch import lookup, nearest_codes, quantize_level
from torch import nn

# Old spellings of the codebook buffers found in earlier checkpoints.
LEGACY_CODEBOOK_NAMES = {
    "inited": "_initialized",
    "cluster_size": "cluster_usage",
    "embed_avg": "embedding_sum",
    "embed_sum": "embedding_sum",
}


class EuclideanCodebook(nn.Module):
    """One codebook. The centroids are derived from EMA statistics, never stored themselves."""

    def __init__(self, dim: int, size: int, epsilon: float = 1e-5) -> None:
        super().__init__()
        self.dim = dim
        self.size = size
        self.epsilon = epsilon
        self.register_buffer("_initialized", torch.zeros(1))
        self.register_buffer("cluster_usage", torch.ones(size))
        self.register_buffer("embedding_sum", torch.zeros(size, dim))
        self.register_buffer("centroids", torch.zeros(size, dim), persistent=False)
        self.refresh_centroids()
        self.register_load_state_dict_post_hook(lambda module, _: module.refresh_centroids())

    @torch.no_grad()
    def seed(self, centroids: torch.Tensor, usage: torch.Tensor | None = None) -> None:
        """Start from these ``centroids [size, D]``, each as if it had been used ``usage`` times
        (default once): how every initialisation (data draws, k-means, calibration) sets a codebook."""
        usage = torch.ones(self.size, device=centroids.device) if usage is None else usage
        self.embedding_sum.copy_(centroids * usage[:, None])
        self.cluster_usage.copy_(usage)
        self._initialized.fill_(1.0)
        self.refresh_centroids()

    def refresh_centroids(self) -> None:
        """Recompute the centroid table; needed after the statistics change (loading, EMA update)."""
        with torch.no_grad():
            usage = self.cluster_usage.clamp(min=self.epsilon)[:, None]
            self.centroids = (self.embedding_sum / usage).to(self.embedding_sum.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        for old, new in LEGACY_CODEBOOK_NAMES.items():
            if prefix + old in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def ema_update(self, vectors: torch.Tensor, codes: torch.Tensor, decay: float) -> None:
        """Move the statistics towards this batch: ``vectors`` ``[N, D]`` assigned to ``codes`` ``[N]``."""
        counts = torch.bincount(codes, minlength=self.size).to(self.cluster_usage.dtype)
        sums = torch.zeros_like(self.embedding_sum).index_add_(0, codes, vectors.to(self.embedding_sum.dtype))
        self.cluster_usage.mul_(decay).add_(counts, alpha=1 - decay)
        self.embedding_sum.mul_(decay).add_(sums, alpha=1 - decay)
        self._initialized.fill_(1.0)
        self.refresh_centroids()


class _CodebookLayer(nn.Module):
    """Holds one codebook as ``_codebook``: the extra level exists only for checkpoint key names."""

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        self._codebook = EuclideanCodebook(dim, size)


class _CodebookStack(nn.Module):
    def __init__(self, num_codebooks: int, dim: int, size: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_CodebookLayer(dim, size) for _ in range(num_codebooks)])


class ResidualVectorQuantizer(nn.Module, UsesKernels):
    """Projection to the codebook space, then residual VQ over ``num_codebooks`` levels."""

    def __init__(
        self,
        num_codebooks: int,
        dimension: int,
        bins: int,
        input_dim: int,
        output_dim: int,
        decay: float = 0.99,
    ) -> None:
        super().__init__()
        self.max_codebooks = num_codebooks
        self.decay = decay
        self.input_proj = nn.Conv1d(input_dim, dimension, 1, bias=False)
        self.output_proj = nn.Conv1d(dimension, output_dim, 1, bias=False)
        self.vq = _CodebookStack(num_codebooks, dimension, bins)
        self._centroid_table: tuple[list[torch.Tensor], torch.Tensor] | None = None

    def codebooks(self) -> list[EuclideanCodebook]:
        return [layer._codebook for layer in self.vq.layers]

    def centroid_table(self, levels: int) -> torch.Tensor:
        """The first ``levels`` codebooks' centroids stacked, ``[levels, K, D]``; kept while the
        codebooks hold the same centroid tensors (a refresh, a load or a move makes new ones)."""
        sources = [codebook.centroids for codebook in self.codebooks()[:levels]]
        cached = self._centroid_table
        # the cache holds the source tensors, so a new table can never reuse their addresses
        if (
            cached is None
            or len(cached[0]) != len(sources)
            or any(a is not b for a, b in zip(cached[0], sources, strict=True))
        ):
            cached = self._centroid_table = (sources, torch.stack(sources))
        return cached[1]

    def encode(self, latent: torch.Tensor, num_codebooks: int) -> torch.Tensor:
        """``latent`` ``[B, C, T]`` -> codes ``[B, num_codebooks, T]``: the input projection, then
        every level's search in one ``rvq_encode`` op."""
        batch, _, frames = latent.shape
        if num_codebooks == 0:
            return latent.new_zeros(batch, 0, frames, dtype=torch.long)
        projected = self.kernels.conv1d(latent, self.input_proj.weight)
        # rows as the reference reshapes them (a strided view for one item): the norms inside
        # cdist are summed in the layout's order
        residual = projected.transpose(1, 2).reshape(batch * frames, -1)
        codes = self.kernels.rvq_encode(residual, self.centroid_table(num_codebooks))
        return codes.view(batch, frames, -1).transpose(1, 2)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes`` ``[B, K, T]`` -> latent ``[B, C_out, T]`` (sum of centroids, then projection)."""
        levels = codes.shape[1]
        if levels == 0:
            raise ValueError("cannot decode zero codebooks")
        batch, _, frames = codes.shape
        rows = codes.transpose(1, 2).reshape(batch * frames, levels)
        table = self.centroid_table(levels)
        if self.kernels.backends["rvq_decode"] == TRITON:  # the sum and the projection in one kernel
            projected = self.kernels.rvq_decode(rows, table, self.output_proj.weight[:, :, 0])
            return projected.view(batch, frames, -1).transpose(1, 2)
        total = self.kernels.rvq_decode(rows, table).view(batch, frames, -1)
        return self.kernels.conv1d(total.transpose(1, 2), self.output_proj.weight)

    @torch.no_grad()
    def init_codebooks(
        self, latent: torch.Tensor, generator: torch.Generator | None = None, noise: float = 0.3
    ) -> None:
        """Initialise every codebook from data: level ``l`` draws its centroids among the level-``l``
        residuals of ``latent`` ``[B, C, T]``, plus ``noise`` times their per-dimension std."""
        residual = self.input_proj(latent).transpose(1, 2).reshape(-1, self.input_proj.out_channels)
        for codebook in self.codebooks():
            picks = torch.randint(residual.shape[0], (codebook.size,), generator=generator)
            jitter = torch.randn(codebook.size, codebook.dim, generator=generator).to(residual)
            codebook.seed(residual[picks] + noise * residual.std(0) * jitter)
            residual = residual - quantize_level(residual, codebook.centroids)[1]

    def quantize_for_training(
        self, latent: torch.Tensor, num_codebooks: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training path: straight-through quantized latent ``[B, C_out, T]`` and the commitment loss.

        In training mode the codebooks also take an EMA step towards this batch.
        """
        batch, _, frames = latent.shape
        projected = self.input_proj(latent).transpose(1, 2).reshape(batch * frames, -1)
        residual = projected
        quantized = torch.zeros_like(projected)
        for codebook in self.codebooks()[:num_codebooks]:
            codes = nearest_codes(residual.detach(), codebook.centroids)
            if self.training:
                codebook.ema_update(residual.detach(), codes, decay=self.decay)
            vectors = lookup(codes, codebook.centroids)  # after the update: its new centroids
            residual = residual - vectors
            quantized = quantized + vectors
        commitment = F.mse_loss(projected, quantized.detach())
        straight_through = projected + (quantized - projected).detach()
        out = straight_through.view(batch, frames, -1).transpose(1, 2)
        return self.output_proj(out), commitment


class SplitResidualVectorQuantizer(nn.Module):
    """Semantic codebooks (``rvq_first``) and acoustic ones (``rvq_rest``) over the same latent."""

    def __init__(self, config: QuantizerConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        dims = (c.dimension, c.bins, c.input_dimension, c.output_dimension)
        self.rvq_first = ResidualVectorQuantizer(c.n_q_semantic, *dims, decay=c.decay)
        self.rvq_rest = ResidualVectorQuantizer(c.n_q - c.n_q_semantic, *dims, decay=c.decay)
        self._num_codebooks = c.n_q

    @property
    def total_codebooks(self) -> int:
        return self.config.n_q

    @property
    def cardinality(self) -> int:
        return self.config.bins

    @property
    def num_codebooks(self) -> int:
        return self._num_codebooks

    @num_codebooks.setter
    def num_codebooks(self, value: int) -> None:
        low, high = self.config.n_q_semantic, self.total_codebooks
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ValueError(f"num_codebooks must be an integer in [{low}, {high}], got {value!r}")
        self._num_codebooks = value

    def encode(self, latent: torch.Tensor) -> torch.Tensor:
        """``latent`` ``[B, C, T]`` -> codes ``[B, num_codebooks, T]`` (int64)."""
        semantic = self.config.n_q_semantic
        codes = self.rvq_first.encode(latent, semantic)
        if self._num_codebooks > semantic:
            acoustic = self.rvq_rest.encode(latent, self._num_codebooks - semantic)
            codes = torch.cat([codes, acoustic], dim=1)
        return codes

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes`` ``[B, K, T]`` -> latent ``[B, C, T]``; all ``K`` given codebooks are used."""
        semantic = self.config.n_q_semantic
        latent = self.rvq_first.decode(codes[:, :semantic])
        if codes.shape[1] > semantic:
            latent = latent + self.rvq_rest.decode(codes[:, semantic:])
        return latent

    def init_codebooks(self, latent: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Data initialisation of all codebooks from a latent batch ``[B, C, T]`` (see the RVQ's)."""
        self.rvq_first.init_codebooks(latent, generator)
        self.rvq_rest.init_codebooks(latent, generator)

    def quantize_for_training(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        semantic = self.config.n_q_semantic
        first, first_loss = self.rvq_first.quantize_for_training(latent, semantic)
        rest_count = self._num_codebooks - semantic
        if rest_count == 0:
            return first, first_loss
        rest, rest_loss = self.rvq_rest.quantize_for_training(latent, rest_count)
        loss = (first_loss * semantic + rest_loss * rest_count) / self._num_codebooks
        return first + rest, loss
