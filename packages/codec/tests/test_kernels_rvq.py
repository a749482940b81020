"""Residual VQ kernels: the torch ops against the reference Mimi quantizer (bit for bit), and the
Triton kernels (run by Triton's CPU interpreter, forced with ``backend="triton"``) and the native C
encoder against the torch ops."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # Triton kernels on CPU: must precede the first import of triton

import pytest
import torch
from duplex.codec.kernels import (
    BACKEND_ENV,
    enable_triton_interpreter,
    rvq_decode,
    rvq_encode,
    rvq_native,
    rvq_torch,
    select_kernels,
)
from moshi.quantization.core_vq import ResidualVectorQuantization

enable_triton_interpreter()  # fails clearly if triton was loaded before without the interpreter


def triton(dtype: torch.dtype = torch.float32):
    """The fast set with Triton forced (interpreted on the CPU): its rvq_encode and rvq_decode."""
    return select_kernels("fast", "cpu", dtype, backend="triton")


def random_centroids(levels: int, k: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # Shrinking scales level after level, like a trained RVQ, so later levels see small residuals.
    scales = 0.6 ** torch.arange(levels, dtype=torch.float32)
    return torch.randn(levels, k, dim, generator=generator) * scales[:, None, None]


def assert_equal_up_to_near_ties(x: torch.Tensor, centroids: torch.Tensor, got: torch.Tensor) -> None:
    """``got`` equals the torch codes, except where the torch and the chosen centroid are equally near.

    For each row, compare up to the first level that differs; there, both centroids must be at
    the same distance (float64) from the residual, within float32 rounding of the distances.
    """
    expected = rvq_torch.rvq_encode(x, centroids)
    assert got.dtype == torch.long and got.shape == expected.shape
    differs = got != expected
    rows = differs.any(dim=1).nonzero().flatten().tolist()
    assert len(rows) <= max(1, x.shape[0] // 100), f"{len(rows)} of {x.shape[0]} rows have other codes"
    for row in rows:
        level = int(differs[row].nonzero()[0])
        residual = x[row].double()
        for previous in range(level):
            residual = residual - centroids[previous, expected[row, previous]].double()
        table = centroids[level].double()
        near = (residual - table[expected[row, level]]).norm()
        chosen = (residual - table[got[row, level]]).norm()
        assert abs(near - chosen) <= 1e-5 * (1 + near), f"row {row} level {level}: {chosen} vs {near}"


def test_torch_path_equals_reference_rvq_bit_for_bit() -> None:
    levels, k, dim, batch, frames = 5, 64, 32, 2, 9
    reference = ResidualVectorQuantization(num_quantizers=levels, codebook_offset=0, dim=dim, codebook_size=k)
    generator = torch.Generator().manual_seed(0)
    for layer in reference.layers:
        usage = torch.rand(k, generator=generator) * 3 + 0.1
        layer._codebook.cluster_usage.copy_(usage)
        layer._codebook.embedding_sum.copy_(torch.randn(k, dim, generator=generator) * usage[:, None])
    centroids = torch.stack([layer._codebook.embedding for layer in reference.layers])
    latent = torch.randn(batch, dim, frames, generator=generator)

    reference_codes = reference.encode(latent)  # [L, B, T]
    x = latent.transpose(1, 2).reshape(-1, dim)  # a non-contiguous [N, D] view
    codes = rvq_encode(x, centroids, numerics="reference")
    decoded = rvq_decode(codes, centroids, numerics="reference")
    assert torch.equal(codes, reference_codes.permute(1, 2, 0).reshape(-1, levels))
    assert torch.equal(decoded, reference.decode(reference_codes).transpose(1, 2).reshape(-1, dim))
    # the CPU's fast set: the C encoder (18 rows), up to near-ties; torch's decode, bit for bit
    assert_equal_up_to_near_ties(x, centroids, rvq_encode(x, centroids))
    assert torch.equal(rvq_decode(codes, centroids), decoded)


@pytest.mark.parametrize(
    ("n", "dim", "levels", "k"),
    [
        (1, 16, 1, 16),  # one row, one level, one tile
        (37, 24, 3, 70),  # nothing a multiple of a block size: masked rows, dims, centroids
        (65, 256, 4, 130),  # Mimi's codebook dim, three row tiles, a ragged last centroid tile
        (8, 8, 2, 2048),  # Mimi's codebook size: 32 centroid tiles per level
    ],
)
def test_triton_encode_matches_torch(n: int, dim: int, levels: int, k: int) -> None:
    centroids = random_centroids(levels, k, dim, seed=n)
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(1)) * 1.5
    assert_equal_up_to_near_ties(x, centroids, triton().rvq_encode(x, centroids))


@pytest.mark.parametrize(("n", "num_splits"), [(1, 2), (5, 3), (37, 4)])
def test_triton_encode_with_centroid_slices_matches_torch(n: int, num_splits: int) -> None:
    # Few rows (a streaming step): each level's centroids are searched by several programs.
    from duplex.codec.kernels import rvq_triton

    centroids = random_centroids(4, 230, 24, seed=20 + n)  # 4 tiles of 64, the last one ragged
    x = torch.randn(n, 24, generator=torch.Generator().manual_seed(21)) * 1.5
    assert_equal_up_to_near_ties(x, centroids, rvq_triton.rvq_encode(x, centroids, num_splits=num_splits))


def test_centroid_slices_only_when_rows_leave_the_gpu_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    from duplex.codec.kernels import rvq_triton

    monkeypatch.setattr(rvq_triton, "_multiprocessors", lambda device: 132)
    cuda = torch.device("cuda")
    assert rvq_triton.default_splits(row_tiles=1, centroid_tiles=32, device=cuda) == 32  # B=1 step
    assert rvq_triton.default_splits(row_tiles=4, centroid_tiles=32, device=cuda) == 32  # B=64 step
    assert rvq_triton.default_splits(row_tiles=20, centroid_tiles=32, device=cuda) == 14
    assert rvq_triton.default_splits(row_tiles=250, centroid_tiles=32, device=cuda) == 1  # training batch


def test_triton_encode_reads_strided_input() -> None:
    centroids = random_centroids(3, 50, 20, seed=3)
    latent = torch.randn(3, 20, 11, generator=torch.Generator().manual_seed(4))  # [B, D, T]
    x = latent.transpose(1, 2).reshape(-1, 20)
    strided = torch.randn(20, 66, generator=torch.Generator().manual_seed(5)).t()[::2]
    assert_equal_up_to_near_ties(x, centroids, triton().rvq_encode(x, centroids))
    assert_equal_up_to_near_ties(strided, centroids, triton().rvq_encode(strided, centroids))


def test_exact_ties_go_to_the_lowest_index_on_both_paths() -> None:
    # Integer-valued vectors make every distance exact, so duplicated centroids tie exactly.
    generator = torch.Generator().manual_seed(6)
    centroids = torch.randint(-3, 4, (2, 150, 12), generator=generator).float()
    centroids[:, 140] = centroids[:, 5]  # the duplicate sits in a later tile (tiles of 64)
    centroids[:, 70] = centroids[:, 66]  # and in the same tile
    x = torch.cat(
        [centroids[0, [5, 66, 140, 70]], torch.randint(-3, 4, (9, 12), generator=generator).float()]
    )
    expected = rvq_encode(x, centroids, numerics="reference")
    assert torch.equal(triton().rvq_encode(x, centroids), expected)
    assert expected[:4, 0].tolist() == [5, 66, 5, 66]
    from duplex.codec.kernels import rvq_triton

    # With slices of 64 centroids, 5 and 140 are found by different programs.
    assert torch.equal(rvq_triton.rvq_encode(x, centroids, num_splits=3), expected)


@pytest.mark.parametrize(
    ("n", "dim", "levels", "k", "dtype"),
    [
        (1, 16, 1, 16, torch.float32),
        (37, 24, 3, 70, torch.float32),
        (50, 256, 8, 300, torch.float32),
        (37, 24, 3, 70, torch.float16),  # the sum is rounded to the table's dtype level by level
    ],
)
def test_triton_decode_is_bit_identical(n: int, dim: int, levels: int, k: int, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(7)
    centroids = random_centroids(levels, k, dim, seed=8).to(dtype)
    codes = torch.randint(0, k, (n, levels), generator=generator)
    expected = rvq_decode(codes, centroids, numerics="reference")
    expected_first_levels = rvq_decode(codes[:, :1], centroids, numerics="reference")
    assert torch.equal(triton(dtype).rvq_decode(codes, centroids), expected)
    assert torch.equal(triton(dtype).rvq_decode(codes[:, :1], centroids[:1]), expected_first_levels)


@pytest.mark.parametrize("n", [3, 45, 1100])  # 1100 > FUSED_PROJECTION_MAX_ROWS: gather, then matmul
def test_triton_decode_with_projection(n: int) -> None:
    generator = torch.Generator().manual_seed(9)
    levels, k, dim, out_dim = 3, 40, 24, 36
    centroids = random_centroids(levels, k, dim, seed=10)
    proj = torch.randn(out_dim, dim, generator=generator) / dim**0.5
    codes = torch.randint(0, k, (n, levels), generator=generator)
    expected = rvq_decode(codes, centroids, proj, numerics="reference")
    got = triton().rvq_decode(codes, centroids, proj)
    assert got.shape == (n, out_dim)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_round_trip_codes_of_decoded_vectors() -> None:
    centroids = random_centroids(3, 90, 16, seed=11)
    codes = torch.randint(0, 90, (20, 1), generator=torch.Generator().manual_seed(12))
    for kernels in (select_kernels("reference", "cpu"), select_kernels("fast", "cpu"), triton()):
        decoded = kernels.rvq_decode(codes, centroids[:1])
        assert torch.equal(kernels.rvq_encode(decoded, centroids[:1]), codes)


def test_bad_inputs_name_the_problem() -> None:
    centroids = random_centroids(2, 10, 8, seed=13)
    with pytest.raises(ValueError, match=r"x must be \[N, D\]"):
        rvq_encode(torch.randn(2, 3, 8), centroids)
    with pytest.raises(ValueError, match="D=7"):
        rvq_encode(torch.randn(4, 7), centroids)
    with pytest.raises(TypeError, match="dtype"):
        rvq_encode(torch.randn(4, 8, dtype=torch.float64), centroids)
    with pytest.raises(ValueError, match=r"centroids must be \[L, K, D\]"):
        rvq_encode(torch.randn(4, 8), centroids[0])
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 10\)"):
        rvq_decode(torch.tensor([[0, 10]]), centroids)
    with pytest.raises(ValueError, match="only 2 codebooks"):
        rvq_decode(torch.zeros(1, 3, dtype=torch.long), centroids)
    with pytest.raises(TypeError, match="integers"):
        rvq_decode(torch.zeros(1, 2), centroids)
    with pytest.raises(ValueError, match=r"proj must be \[Dout, 8\]"):
        rvq_decode(torch.zeros(1, 2, dtype=torch.long), centroids, torch.randn(4, 5))
    with pytest.raises(ValueError, match="numerics must be 'fast' or 'reference'"):
        rvq_encode(torch.randn(4, 8), centroids, numerics="exact")


def test_triton_decode_never_reads_outside_the_table() -> None:
    # CUDA codes are not range-checked on the host (a synchronisation); the kernel skips bad ones.
    from duplex.codec.kernels import rvq_triton

    centroids = random_centroids(2, 10, 8, seed=14)
    codes = torch.tensor([[3, 10], [-1, 4]])
    expected = torch.stack([centroids[0, 3], centroids[1, 4]])
    assert torch.equal(rvq_triton.rvq_decode(codes, centroids), expected)


@pytest.mark.parametrize(
    ("n", "dim", "levels", "k"), [(1, 256, 8, 2048), (3, 256, 7, 2048), (32, 13, 3, 100), (2, 9, 1, 7)]
)
def test_native_encode_matches_torch_for_any_thread_count(n: int, dim: int, levels: int, k: int) -> None:
    from duplex.codec.kernels import rvq_native

    centroids = random_centroids(levels, k, dim, seed=n)
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(1)) * 1.5
    threads = torch.get_num_threads()
    try:
        codes = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            codes.append(rvq_native.rvq_encode(x, centroids))
    finally:
        torch.set_num_threads(threads)
    assert_equal_up_to_near_ties(x, centroids, codes[0])
    assert torch.equal(codes[0], codes[1]) and torch.equal(codes[0], codes[2])  # threads split the centroids
    assert torch.equal(rvq_encode(x, centroids), codes[0])  # the public op on the CPU's fast set


def test_native_encode_ties_go_to_the_lowest_index_across_thread_shares() -> None:
    generator = torch.Generator().manual_seed(6)
    centroids = torch.randint(-3, 4, (2, 150, 12), generator=generator).float()
    centroids[:, 140] = centroids[:, 5]  # in the second thread's share
    centroids[:, 70] = centroids[:, 66]
    others = torch.randint(-3, 4, (9, 12), generator=generator).float()
    x = torch.cat([centroids[0, [5, 66, 140, 70]], others])
    expected = rvq_encode(x, centroids, numerics="reference")
    assert torch.equal(rvq_native.rvq_encode(x, centroids), expected)
    assert expected[:4, 0].tolist() == [5, 66, 5, 66]


def test_native_encode_leaves_many_rows_and_other_dtypes_to_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    assert select_kernels("fast", "cpu").backends["rvq_encode"] == "native"  # a C compiler is installed here
    centroids = random_centroids(2, 64, 16, seed=3)
    few = torch.randn(rvq_native.MAX_ROWS, 16)
    many = torch.randn(rvq_native.MAX_ROWS + 1, 16)

    def no_c(*_args, **_kwargs):
        raise AssertionError("the C kernel ran")

    monkeypatch.setattr(rvq_native, "load", no_c)
    with pytest.raises(AssertionError, match="the C kernel ran"):
        rvq_encode(few, centroids)
    assert torch.equal(rvq_encode(many, centroids), rvq_torch.rvq_encode(many, centroids))
    double = centroids.double()
    assert torch.equal(
        rvq_native.rvq_encode(few.double(), double), rvq_torch.rvq_encode(few.double(), double)
    )


def test_the_public_ops_run_a_forced_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    centroids = random_centroids(3, 90, 16, seed=15)
    x = torch.randn(6, 16, generator=torch.Generator().manual_seed(16))
    codes = torch.randint(0, 90, (6, 3), generator=torch.Generator().manual_seed(17))
    monkeypatch.setenv(BACKEND_ENV, "triton")
    assert select_kernels("fast", "cpu").backends["rvq_encode"] == "triton"
    assert_equal_up_to_near_ties(x, centroids, rvq_encode(x, centroids))
    assert torch.equal(rvq_decode(codes, centroids), rvq_torch.rvq_decode(codes, centroids))


def test_triton_decode_gives_torchs_gradients() -> None:
    # forward only: a decode that needs gradients runs the torch op
    centroids = random_centroids(2, 12, 8, seed=18).requires_grad_()
    proj = torch.randn(5, 8, requires_grad=True)
    codes = torch.randint(0, 12, (7, 2), generator=torch.Generator().manual_seed(19))
    results = []
    for kernels in (select_kernels("reference", "cpu"), triton()):
        out = kernels.rvq_decode(codes, centroids, proj)
        results.append((out, *torch.autograd.grad(out.square().sum(), (centroids, proj))))
    for expected, got in zip(*results, strict=True):
        assert torch.equal(got, expected)


def test_the_triton_set_covers_float64() -> None:
    centroids = random_centroids(2, 6, 4, seed=20).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    kernels = triton(torch.float64)
    assert torch.equal(kernels.rvq_encode(x, centroids), rvq_torch.rvq_encode(x, centroids))
    codes = torch.randint(0, 6, (5, 2))
    assert torch.equal(kernels.rvq_decode(codes, centroids), rvq_torch.rvq_decode(codes, centroids))


@torch.no_grad()
def test_the_quantizer_decodes_through_the_fused_triton_projection(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the Triton set the centroid sum and the output projection run in one kernel (the
    quantizer's 1x1 output conv as the projection), within float rounding of the torch set."""
    from duplex.codec import Mimi, MimiConfig
    from duplex.codec.kernels import rvq_triton, select_kernels, use_kernels

    torch.manual_seed(0)
    quantizer = Mimi(MimiConfig.from_preset("tiny")).quantizer.eval()
    for codebook in quantizer.rvq_rest.codebooks() + quantizer.rvq_first.codebooks():
        codebook.seed(torch.randn(codebook.size, codebook.dim))
    codes = torch.randint(0, quantizer.cardinality, (2, quantizer.total_codebooks, 5))
    use_kernels(quantizer, select_kernels("reference", "cpu"))
    expected = quantizer.decode(codes)
    fused = []
    original = rvq_triton._decode_projected
    monkeypatch.setattr(rvq_triton, "_decode_projected", lambda *a: fused.append(1) or original(*a))
    use_kernels(quantizer, select_kernels("fast", "cpu", backend="triton"))
    got = quantizer.decode(codes)
    assert fused  # the fused kernel ran
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
