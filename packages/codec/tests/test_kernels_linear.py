"""The few-row linear kernel compiled for this CPU: its numbers, its fallbacks, its build cache."""

from __future__ import annotations

import platform

import pytest
import torch
import torch.nn.functional as F
from duplex.codec.kernels import dispatch, linear, linear_native, native_build, use_backend
from duplex.codec.kernels.dispatch import KernelUnsupportedError
from duplex.codec.nn import Linear


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x.double(), weight.double(), None if bias is None else bias.double()).float()


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 7, 16, 32])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_float64_for_every_row_count_and_odd_sizes(rows: int, with_bias: bool) -> None:
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 1029, generator=generator)  # K not a multiple of 8: the scalar tail runs
    weight = torch.randn(517, 1029, generator=generator)  # N not a multiple of the row block
    bias = torch.randn(517, generator=generator) if with_bias else None
    with use_backend("native"):
        got = linear(x, weight, bias)
    expected = reference(x, weight, bias)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=2e-4)
    assert (got - expected).abs().max() <= (F.linear(x, weight, bias) - expected).abs().max() * 4 + 1e-4


def test_a_row_gets_the_same_bits_alone_or_in_any_batch() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(9, 512, generator=generator)
    weight = torch.randn(300, 512, generator=generator)
    with use_backend("native"):
        batch = linear(x, weight)
        for row in range(9):
            assert torch.equal(linear(x[row : row + 1], weight), batch[row : row + 1])
        assert torch.equal(linear(x[3:7], weight), batch[3:7])
        torch.set_num_threads(1)
        try:
            assert torch.equal(linear(x, weight), batch)  # the thread count changes no sum
        finally:
            torch.set_num_threads(2)


def test_strided_and_batched_inputs() -> None:
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(64, 48, generator=generator)
    wide = torch.randn(2, 3, 96, generator=generator)
    repeated = wide[:1, :1, :48].expand(2, 3, 48)  # rows 0 bytes apart: read, never written
    for x in (wide[..., :48], wide[..., ::2], wide.transpose(0, 1)[..., 48:], repeated):
        with use_backend("native"):
            got = linear(x, weight)
        assert got.shape == (*x.shape[:-1], 64)
        torch.testing.assert_close(got, reference(x, weight, None), rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the x86-64 baseline build")
def test_the_portable_build_without_avx_gives_the_same_numbers(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(native_build.CACHE_ENV, str(tmp_path))
    baseline = linear_native.load(("-march=x86-64",))
    generator = torch.Generator().manual_seed(2)
    x, weight = torch.randn(3, 200, generator=generator), torch.randn(33, 200, generator=generator)
    got = linear_native.linear(x, weight, function=baseline)
    torch.testing.assert_close(got, reference(x, weight, None), rtol=1e-5, atol=1e-4)


def test_auto_uses_native_for_few_rows_on_cpu_and_torch_for_the_rest() -> None:
    assert dispatch.choose_backend("linear", "cpu") == "native"
    assert dispatch.choose_backend("linear", "cpu", needs_grad=True) == "torch"
    assert dispatch.choose_backend("linear", "cuda") == "torch"  # cuBLAS is fine there
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(32, 16, generator=generator)
    many = torch.randn(linear_native.MAX_ROWS + 1, 16, generator=generator)
    assert torch.equal(linear(many, weight), F.linear(many, weight))  # declined: BLAS
    with use_backend("native"), pytest.raises(KernelUnsupportedError, match="rows"):
        linear(many, weight)  # a forced backend says why it cannot
    with use_backend("native"), pytest.raises(KernelUnsupportedError, match="float32"):
        linear(many[:2].double(), weight.double())


def test_training_goes_through_torch_with_gradients() -> None:
    layer = Linear(16, 8)
    x = torch.randn(2, 16, requires_grad=True)
    layer(x).square().sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_bad_shapes_are_named() -> None:
    with pytest.raises(ValueError, match="in_features=16"):
        linear(torch.randn(2, 15), torch.randn(8, 16))
    with pytest.raises(ValueError, match="bias must be"):
        linear(torch.randn(2, 16), torch.randn(8, 16), torch.randn(7))
    with pytest.raises(ValueError, match="weight must be"):
        linear(torch.randn(2, 16), torch.randn(16))


def test_the_build_is_cached_per_source_and_flags(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(native_build.CACHE_ENV, str(tmp_path))
    native_build.build(linear_native.SOURCE)
    (built,) = (tmp_path / "kernels").glob("linear_native-*.so")
    stamp = built.stat().st_mtime_ns
    native_build.build(linear_native.SOURCE)  # loaded, not compiled again
    assert built.stat().st_mtime_ns == stamp
    assert list((tmp_path / "kernels").glob("*.so")) == [built]  # no stray scratch files
    edited = tmp_path / "linear_native.c"
    edited.write_text(linear_native.SOURCE.read_text() + "\n/* edited */\n")
    for shipped in linear_native.SOURCE.parent.glob("*.h"):
        (tmp_path / shipped.name).write_text(shipped.read_text())
    header = tmp_path / "duplex_vec8.h"
    native_build.build(edited)
    assert len(list((tmp_path / "kernels").glob("*.so"))) == 2
    header.write_text(header.read_text() + "\n/* edited */\n")  # a header edit rebuilds too
    native_build.build(edited)
    assert len(list((tmp_path / "kernels").glob("*.so"))) == 3


def test_without_a_compiler_auto_warns_once_and_uses_torch(monkeypatch) -> None:
    def broken(*_args, **_kwargs):
        raise native_build.NativeBuildError("no C compiler found (set $CC, or install gcc or clang)")

    monkeypatch.setattr(linear_native, "load", broken)
    monkeypatch.setattr(dispatch, "_broken", set())
    x, weight = torch.randn(2, 16), torch.randn(8, 16)
    with pytest.warns(UserWarning, match="native kernels unavailable .*no C compiler"):
        got = linear(x, weight)
    assert torch.equal(got, F.linear(x, weight))
    assert dispatch.choose_backend("linear", "cpu") == "torch"  # no second try
    monkeypatch.setenv("CC", "Does-not-exist")
    with pytest.raises(native_build.NativeBuildError, match="Does-not-exist"):
        native_build.find_compiler()


@torch.no_grad()
def test_mimi_encodes_with_blas_by_default_and_decodes_with_the_native_kernel(monkeypatch) -> None:
    from duplex.codec import Mimi, MimiConfig
    from duplex.codec.registry import KERNELS

    calls: list[str] = []
    native = KERNELS.get("linear/native")

    def spy(*args, **kwargs):
        calls.append("native")
        return native(*args, **kwargs)

    monkeypatch.setitem(KERNELS._components, "linear/native", spy)
    torch.manual_seed(0)
    mimi = Mimi(MimiConfig.from_preset("tiny")).eval()
    wav = 0.1 * torch.randn(1, 1, 4 * mimi.frame_size)
    with mimi.streaming(1):
        exact = torch.cat(
            [
                mimi.encode_latent(wav[..., i : i + mimi.frame_size])
                for i in range(0, 4 * mimi.frame_size, mimi.frame_size)
            ],
            -1,
        )
        assert calls == []  # the codes are the reference's: BLAS matmuls only
        mimi.decode(mimi.quantizer.encode(exact[..., -1:]))
        assert calls  # the decoder streams through the native kernel
    mimi.reference_codes = False
    calls.clear()
    with mimi.streaming(1):
        fast = torch.cat(
            [
                mimi.encode_latent(wav[..., i : i + mimi.frame_size])
                for i in range(0, 4 * mimi.frame_size, mimi.frame_size)
            ],
            -1,
        )
    assert calls
    torch.testing.assert_close(fast, exact, rtol=1e-5, atol=1e-5)


def test_an_unwritable_cache_is_a_build_error_that_names_the_setting(tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv(native_build.CACHE_ENV, str(blocker))
    with pytest.raises(native_build.NativeBuildError, match="DUPLEX_CACHE_DIR"):
        native_build.build(linear_native.SOURCE)


def test_the_blas_order_kernel_gives_torchs_bits_or_declines() -> None:
    """Either torch's matmul sums 1-3 rows in the kernel's order here (MKL's gemv for one row, its
    small-row sgemm for 2-3) and the kernel gives its bits, or it declines and callers keep torch's."""
    from duplex.codec.kernels import linear_blas_order

    g = torch.Generator().manual_seed(3)
    shapes = ((2, 1536, 512), (3, 512, 2048), (2, 72, 36), (1, 512, 2048), (1, 2048, 258), (1, 8, 5))
    for rows, out_features, in_features in shapes:
        x = torch.randn(1, rows, in_features, generator=g)
        weight = torch.randn(out_features, in_features, generator=g) * 0.05
        bias = torch.randn(out_features, generator=g)
        for b in (None, bias):
            if linear_blas_order.matches_blas(one_row=rows == 1):
                assert torch.equal(linear_blas_order.linear(x, weight, b), F.linear(x, weight, b))
            else:
                with pytest.raises(KernelUnsupportedError):
                    linear_blas_order.linear(x, weight, b)
    if linear_blas_order.matches_blas(one_row=True):  # one row per item, as a one-frame convolution sums
        x, weight = torch.randn(3, 40, generator=g), torch.randn(16, 40, generator=g)
        expected = torch.cat([F.linear(row, weight) for row in x.split(1)])
        assert torch.equal(linear_blas_order.gemv_rows(x, weight), expected)
    with pytest.raises(KernelUnsupportedError, match="1-3 rows"):
        linear_blas_order.linear(torch.randn(4, 8), torch.randn(8, 8))
    # BLAS sums the remainders of other sizes differently
    for rows, in_features, out_features in ((2, 6, 8), (2, 8, 6), (1, 8, 6)):
        with pytest.raises(KernelUnsupportedError, match="multiples of 4"):
            linear_blas_order.linear(torch.randn(rows, in_features), torch.randn(out_features, in_features))


def test_the_sequential_kernel_sums_term_by_term_from_the_bias() -> None:
    from duplex.codec.kernels import linear_blas_order

    g = torch.Generator().manual_seed(4)
    for rows, out_features, in_features in ((1, 16, 9), (2, 37, 50), (5, 40, 33)):
        x = torch.randn(rows, in_features, generator=g)
        weight = torch.randn(out_features, in_features, generator=g)
        bias = torch.randn(out_features, generator=g)
        expected = bias.expand(rows, -1).clone()
        for k in range(in_features):  # one rounded product and one rounded sum per term, in order
            expected = expected + x[:, k : k + 1] * weight[:, k]
        panels = linear_blas_order.sequential_panels(weight)
        got = linear_blas_order.matmul_sequential(x, panels, bias, out_features)
        assert torch.equal(got, expected)
        no_bias = linear_blas_order.matmul_sequential(x, panels, None, out_features)
        torch.testing.assert_close(no_bias, expected - bias, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_reference_exact_encode_gives_torchs_latent_bit_for_bit() -> None:
    """Inside reference_matmuls the C kernels only run where they give torch's very bits."""
    from duplex.codec import Mimi, MimiConfig

    torch.manual_seed(0)
    mimi = Mimi(MimiConfig.from_preset("tiny")).eval()
    wav = 0.1 * torch.randn(1, 1, 6 * mimi.frame_size)

    def latent() -> torch.Tensor:
        with mimi.streaming(1):
            chunks = wav.split(mimi.frame_size, dim=-1)
            return torch.cat([mimi.encode_latent(chunk) for chunk in chunks], -1)

    exact = latent()
    with use_backend("torch"):
        assert torch.equal(exact, latent())
