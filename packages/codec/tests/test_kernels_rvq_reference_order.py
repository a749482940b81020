"""The reference-order RVQ (one C call, cdist's own arithmetic) against the quantizer's torch loop."""

from __future__ import annotations

import platform

import pytest
import torch
from duplex.codec.kernels import rvq_reference_order
from duplex.codec.kernels.dispatch import KernelUnsupportedError
from duplex.codec.quantizer import augmented_centroids, lookup, nearest_codes


def torch_loop(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    residual, codes = x, []
    for table in centroids:
        codes.append(nearest_codes(residual, table, augmented_centroids(table)))
        residual = residual - lookup(codes[-1], table)
    return torch.stack(codes, dim=1)


def data_initialised_tables(levels: int, size: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and centroids drawn near those rows, level after level, as Mimi's codebooks are:
    plenty of near-ties between neighbouring centroids."""
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(4096, dim, generator=g)
    tables, residual = [], data
    for _ in range(levels):
        picks = torch.randint(data.shape[0], (size,), generator=g)
        table = residual[picks] + 0.3 * residual.std(0) * torch.randn(size, dim, generator=g)
        tables.append(table)
        residual = residual - lookup(nearest_codes(residual, table, augmented_centroids(table)), table)
    return data, torch.stack(tables)


def test_it_runs_here_on_torchs_x86_wheels() -> None:
    """On x86 torch links MKL and exports what the kernel calls: the check must pass, or the exact
    encode would silently stay on the slow path."""
    if platform.machine() not in ("x86_64", "AMD64") or not torch.backends.mkl.is_available():
        pytest.skip("torch's CPU BLAS here is not MKL")
    assert rvq_reference_order.vector_lanes() is not None
    assert rvq_reference_order.matches_torch()


@pytest.mark.parametrize("dim", [1, 7, 8, 64, 100, 256, 260, 1100, 4099])
def test_squared_norms_are_torchs_for_any_length(dim: int) -> None:
    lanes = rvq_reference_order.vector_lanes()
    if lanes is None:
        pytest.skip("no vector width reproduces torch's sums here")
    x = torch.randn(5, dim, generator=torch.Generator().manual_seed(dim)) * 3
    assert torch.equal(rvq_reference_order._sums_of_squares(x, lanes), x.pow(2).sum(-1))


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 16, 310])
@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0])
def test_codes_equal_the_torch_loop_bit_for_bit(rows: int, scale: float) -> None:
    data, centroids = data_initialised_tables(8, 2048, 256, seed=rows)
    x, centroids = data[:rows] * scale, centroids * scale
    augmented = rvq_reference_order.augmented_table(centroids)
    if not rvq_reference_order.matches_torch():
        with pytest.raises(KernelUnsupportedError):
            rvq_reference_order.rvq_encode(x, centroids, augmented)
        return
    before = x.clone()
    codes = rvq_reference_order.rvq_encode(x, centroids, augmented)
    assert torch.equal(codes, torch_loop(x, centroids))
    assert torch.equal(x, before)  # the input is not the residual it updates


def test_it_declines_what_it_does_not_reproduce() -> None:
    x = torch.randn(2, 16)
    small = torch.randn(2, 25, 16)  # cdist computes <= 25 centroids directly, not by matmul
    with pytest.raises(KernelUnsupportedError, match="26 centroids"):
        rvq_reference_order.rvq_encode(x, small, rvq_reference_order.augmented_table(small))
    table = torch.randn(2, 64, 16)
    augmented = rvq_reference_order.augmented_table(table)
    with pytest.raises(KernelUnsupportedError):
        rvq_reference_order.rvq_encode(x.double(), table.double(), augmented.double())
    with pytest.raises(KernelUnsupportedError):
        rvq_reference_order.rvq_encode(x, table, augmented[:, :, :-1])
    # torch sums the norms of rows that are not contiguous in other orders (a batch-1 latent
    # [1, D, T] -> [T, D] is such a view)
    with pytest.raises(KernelUnsupportedError, match="contiguous"):
        rvq_reference_order.rvq_encode(torch.randn(16, 3).T, table, augmented)
