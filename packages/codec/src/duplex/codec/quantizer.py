"""Split residual vector quantizer with EMA codebooks (spec 1.9).

Codes come from two independent residual quantizers over the *same* latent: ``rvq_first``
(semantic, normally one codebook) and ``rvq_rest`` (acoustic). Each has its own 1x1 input and
output projections. The module nesting (``rvq_*.vq.layers.<i>._codebook``) is the one of the
official checkpoints, so state dicts load without renaming.

The two hot operations are the free functions :func:`nearest_codes` and :func:`lookup`, so an
accelerated kernel can replace them without touching the modules.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from duplex.codec import kernels
from duplex.codec.config import QuantizerConfig
from duplex.codec.kernels import linear_blas_order, rvq_reference_order
from duplex.codec.kernels.dispatch import KernelUnsupportedError, blas_order_wanted
from torch import nn

# Old spellings of the codebook buffers found in earlier checkpoints.
LEGACY_CODEBOOK_NAMES = {
    "inited": "_initialized",
    "cluster_size": "cluster_usage",
    "embed_avg": "embedding_sum",
    "embed_sum": "embedding_sum",
}


def augmented_centroids(centroids: torch.Tensor) -> torch.Tensor:
    """``[K, D]`` -> ``[K, D + 2]`` rows ``[e, 1, ||e||^2]``: the centroid side of cdist's matmul path."""
    return rvq_reference_order.augmented_table(centroids)


def nearest_codes(
    vectors: torch.Tensor, centroids: torch.Tensor, augmented: torch.Tensor | None = None, fast: bool = False
) -> torch.Tensor:
    """Index of the nearest centroid (Euclidean) for each row of ``vectors`` ``[N, D]`` -> ``[N]``.

    The distances are those of ``torch.cdist`` (the official codes were computed with it, and
    near-ties flip under any other formula). With more than 25 centroids cdist computes
    ``sqrt(clamp([-2x, ||x||^2, 1] @ [e, 1, ||e||^2]^T, 0))``; given the centroid half precomputed
    (:func:`augmented_centroids`) this does the same arithmetic, bit for bit, without rebuilding it
    on every call. ``fast`` computes the product with :func:`duplex.codec.kernels.linear` (the
    few-row CPU kernel in streaming), which sums in another order: rare near-tie flips.
    """
    if augmented is None or centroids.shape[0] <= 25:
        return torch.cdist(vectors[None], centroids[None], p=2)[0].argmin(dim=-1)
    norms = vectors.pow(2).sum(-1, keepdim=True)
    lhs = torch.cat([vectors.mul(-2), norms, torch.ones_like(norms)], dim=-1)
    products = kernels.linear(lhs, augmented) if fast else lhs.matmul(augmented.mT)
    return products.clamp_min_(0).sqrt_().argmin(dim=-1)


def lookup(codes: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Centroid vectors for integer ``codes`` of any shape -> ``[*codes.shape, D]``."""
    return F.embedding(codes, centroids)


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
        self.register_buffer("centroids_augmented", torch.zeros(size, dim + 2), persistent=False)
        self.refresh_centroids()
        self.register_load_state_dict_post_hook(lambda module, _: module.refresh_centroids())

    def refresh_centroids(self) -> None:
        """Recompute the centroid table; needed after the statistics change (loading, EMA update)."""
        with torch.no_grad():
            usage = self.cluster_usage.clamp(min=self.epsilon)[:, None]
            self.centroids = (self.embedding_sum / usage).to(self.embedding_sum.dtype)
            self.centroids_augmented = augmented_centroids(self.centroids)

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


class ResidualVectorQuantizer(nn.Module):
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
        self._centroid_tables: dict[str, tuple[list[torch.Tensor], torch.Tensor, list[int]]] = {}

    def codebooks(self) -> list[EuclideanCodebook]:
        return [layer._codebook for layer in self.vq.layers]

    def centroid_table(self, levels: int, augmented: bool = False) -> torch.Tensor:
        """The first ``levels`` codebooks' centroids stacked, ``[levels, K, D]`` (``augmented``: their
        cdist rows ``[levels, K, D + 2]``); kept until a codebook or the count changes."""
        name = "centroids_augmented" if augmented else "centroids"
        sources = [getattr(codebook, name) for codebook in self.codebooks()[:levels]]
        versions = [source._version for source in sources]
        cached = self._centroid_tables.get(name)
        # the cache holds the source tensors, so a new table can never reuse their addresses
        if (
            cached is None
            or cached[2] != versions
            or len(cached[0]) != len(sources)
            or any(a is not b for a, b in zip(cached[0], sources, strict=True))
        ):
            cached = self._centroid_tables[name] = (sources, torch.stack(sources), versions)
        return cached[1]

    def encode(self, latent: torch.Tensor, num_codebooks: int, fast: bool = False) -> torch.Tensor:
        """``latent`` ``[B, C, T]`` -> codes ``[B, num_codebooks, T]``; ``fast``: see nearest_codes."""
        batch, _, frames = latent.shape
        codebooks = self.codebooks()[:num_codebooks]
        # One fused search over all levels: Triton on CUDA, C on the CPU (with ``fast`` its
        # distances are not cdist's; without, cdist's own arithmetic); see duplex.codec.kernels.
        with contextlib.nullcontext() if fast else kernels.reference_matmuls():
            if fast:  # the 1x1 projection as a matmul: on the few-row kernel in streaming
                residual = kernels.linear(latent.transpose(1, 2), self.input_proj.weight[:, :, 0])
                residual = residual.reshape(batch * frames, -1)
            elif frames == 1 and self._gemv_projection_wanted(latent):
                # torch's 1x1 conv of one frame is one BLAS gemv per item: the same sums in C
                residual = linear_blas_order.gemv_rows(latent[..., 0], self.input_proj.weight[:, :, 0])
            else:
                projected = self.input_proj(latent)
                # as the reference reshapes it: a column view for one item of several frames, whose
                # norms torch sums in another order than contiguous rows
                residual = projected.transpose(1, 2).reshape(batch * frames, -1)
            codes = None
            if codebooks and kernels.active_backend("rvq_encode", residual.device) != "torch":
                codes = kernels.rvq_encode(residual, self.centroid_table(len(codebooks)))
            elif codebooks and blas_order_wanted(residual.device, needs_grad=False):
                codes = self._encode_reference_order(residual, len(codebooks))
            if codes is not None:
                return codes.view(batch, frames, -1).transpose(1, 2)
        all_codes = []
        for codebook in self.codebooks()[:num_codebooks]:
            codes = nearest_codes(residual, codebook.centroids, codebook.centroids_augmented, fast)
            residual = residual - lookup(codes, codebook.centroids)
            all_codes.append(codes)
        if not all_codes:
            return latent.new_zeros(batch, 0, frames, dtype=torch.long)
        return torch.stack(all_codes, dim=1).view(batch, frames, -1).transpose(1, 2)

    def _gemv_projection_wanted(self, latent: torch.Tensor) -> bool:
        weight = self.input_proj.weight
        return (
            latent.dtype is weight.dtype is torch.float32
            and blas_order_wanted(latent.device, needs_grad=torch.is_grad_enabled() and weight.requires_grad)
            and linear_blas_order.supports(1, weight.shape[1], weight.shape[0])
            and linear_blas_order.matches_blas(one_row=True)
        )

    def _encode_reference_order(self, residual: torch.Tensor, levels: int) -> torch.Tensor | None:
        """The torch loop's codes in one C call (:mod:`~duplex.codec.kernels.rvq_reference_order`),
        or None where it cannot run here."""
        try:
            return rvq_reference_order.rvq_encode(
                residual, self.centroid_table(levels), self.centroid_table(levels, augmented=True)
            )
        except (KernelUnsupportedError, ImportError):  # ImportError: no C compiler
            return None

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes`` ``[B, K, T]`` -> latent ``[B, C_out, T]`` (sum of centroids, then projection)."""
        codebooks = self.codebooks()[: codes.shape[1]]
        if codebooks and kernels.active_backend("rvq_decode", codes.device) != "torch":
            batch, _, frames = codes.shape
            rows = codes[:, : len(codebooks)].transpose(1, 2).reshape(batch * frames, -1)
            tables = torch.stack([codebook.centroids for codebook in codebooks])
            total = kernels.rvq_decode(rows, tables).view(batch, frames, -1)
            return self.output_proj(total.transpose(1, 2))
        total = None
        for level, codebook in enumerate(self.codebooks()[: codes.shape[1]]):
            vectors = lookup(codes[:, level], codebook.centroids)
            total = vectors if total is None else total + vectors
        if total is None:
            raise ValueError("cannot decode zero codebooks")
        return self.output_proj(total.transpose(1, 2))

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
            codebook.embedding_sum.copy_(residual[picks] + noise * residual.std(0) * jitter)
            codebook.cluster_usage.fill_(1.0)
            codebook._initialized.fill_(1.0)
            codebook.refresh_centroids()
            codes = nearest_codes(residual, codebook.centroids, codebook.centroids_augmented)
            residual = residual - lookup(codes, codebook.centroids)

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
            vectors = lookup(codes, codebook.centroids)
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

    def encode(self, latent: torch.Tensor, fast: bool = False) -> torch.Tensor:
        """``latent`` ``[B, C, T]`` -> codes ``[B, num_codebooks, T]`` (int64).

        ``fast`` computes the distances on the few-row CPU kernel (rare near-tie flips); the
        default keeps the reference's arithmetic."""
        semantic = self.config.n_q_semantic
        codes = self.rvq_first.encode(latent, semantic, fast)
        if self._num_codebooks > semantic:
            acoustic = self.rvq_rest.encode(latent, self._num_codebooks - semantic, fast)
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
