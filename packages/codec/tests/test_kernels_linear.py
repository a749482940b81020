"""The few-row linear kernel compiled for this CPU: its numbers, where the fast set runs it and where
torch's op, its build cache, and the C kernels in a Mimi by numerics policy."""

from __future__ import annotations

import platform

import pytest
import torch
import torch.nn.functional as F
from duplex.codec.kernels import (
    BACKEND_ENV,
    KernelBackendError,
    dispatch,
    linear,
    linear_native,
    native_build,
    select_kernels,
    use_kernels,
)
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
    got = linear_native.linear(x, weight, bias)
    expected = reference(x, weight, bias)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=2e-4)
    assert (got - expected).abs().max() <= (F.linear(x, weight, bias) - expected).abs().max() * 4 + 1e-4


def test_a_row_gets_the_same_bits_alone_or_in_any_batch() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(9, 512, generator=generator)
    weight = torch.randn(300, 512, generator=generator)
    batch = linear_native.linear(x, weight)
    for row in range(9):
        assert torch.equal(linear_native.linear(x[row : row + 1], weight), batch[row : row + 1])
    assert torch.equal(linear_native.linear(x[3:7], weight), batch[3:7])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert torch.equal(linear_native.linear(x, weight), batch)  # the thread count changes no sum
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(linear(x, weight), batch)  # the public op on the CPU's fast set: this kernel


def test_strided_and_batched_inputs() -> None:
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(64, 48, generator=generator)
    wide = torch.randn(2, 3, 96, generator=generator)
    repeated = wide[:1, :1, :48].expand(2, 3, 48)  # rows 0 bytes apart: read, never written
    for x in (wide[..., :48], wide[..., ::2], wide.transpose(0, 1)[..., 48:], repeated):
        got = linear_native.linear(x, weight)
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


def test_the_fast_cpu_set_runs_the_kernel_for_few_float32_rows_and_torch_for_the_rest(monkeypatch) -> None:
    assert select_kernels("fast", "cpu").backends["linear"] == "native"  # a C compiler is installed here
    assert select_kernels("fast", "cpu", torch.bfloat16).backends["linear"] == "native"
    assert select_kernels("fast", "cpu", torch.float16).backends["linear"] == "torch"
    assert select_kernels("fast", "cuda").backends["linear"] == "triton"  # narrow weights; float: cuBLAS
    assert select_kernels("reference", "cpu").backends["linear"] == "torch"
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(32, 16, generator=generator)
    few = torch.randn(2, 16, generator=generator)
    expected_few = linear(few, weight)

    def no_c(*_args, **_kwargs):
        raise AssertionError("the C kernel ran")

    monkeypatch.setattr(linear_native, "load", no_c)
    with pytest.raises(AssertionError, match="the C kernel ran"):
        linear(few, weight)  # few float32 rows: C
    # the rest is torch's op, bit for bit: many rows (BLAS), other dtypes, gradients, the reference
    many = torch.randn(linear_native.MAX_ROWS + 1, 16, generator=generator)
    assert torch.equal(linear(many, weight), F.linear(many, weight))
    assert torch.equal(linear(few.double(), weight.double()), F.linear(few.double(), weight.double()))
    assert torch.equal(linear(few, weight, numerics="reference"), F.linear(few, weight))
    trained = weight.clone().requires_grad_()
    out = linear(few, trained)
    assert out.grad_fn is not None and torch.equal(out, F.linear(few, weight))
    torch.testing.assert_close(expected_few, F.linear(few, weight), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("numerics", ["reference", "fast"])
def test_training_goes_through_torch_with_gradients(numerics: str) -> None:
    layer = Linear(16, 8)
    use_kernels(layer, select_kernels(numerics, "cpu"))
    x = torch.randn(2, 16, requires_grad=True)
    out = layer(x)
    assert torch.equal(out, F.linear(x, layer.weight, layer.bias))  # torch's op when a gradient is needed
    out.square().sum().backward()
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


def test_without_a_compiler_the_fast_set_is_torch(monkeypatch) -> None:
    def missing() -> str:
        raise native_build.NativeBuildError("no C compiler found (set $CC, or install gcc or clang)")

    monkeypatch.setattr(native_build, "find_compiler", missing)
    dispatch.native_usable.cache_clear()
    dispatch._select.cache_clear()
    try:
        assert not dispatch.native_usable()
        assert set(select_kernels("fast", "cpu").backends.values()) == {"torch"}
        with pytest.raises(KernelBackendError, match="'native' kernels cannot run"):
            select_kernels("fast", "cpu", backend="native")
        x, weight = torch.randn(2, 16), torch.randn(8, 16)
        assert torch.equal(linear(x, weight), F.linear(x, weight))
    finally:
        monkeypatch.undo()
        dispatch.native_usable.cache_clear()
        dispatch._select.cache_clear()
    assert select_kernels("fast", "cpu").backends["linear"] == "native"
    monkeypatch.setenv("CC", "Does-not-exist")
    with pytest.raises(native_build.NativeBuildError, match="Does-not-exist"):
        native_build.find_compiler()


@pytest.fixture
def c_calls(monkeypatch) -> list[str]:
    """The C kernels that ran (their ``load`` is called on every call)."""
    from duplex.codec.kernels import conv_native, elu_native, rvq_native, transformer_native

    calls: list[str] = []
    for module in (linear_native, conv_native, elu_native, rvq_native, transformer_native):

        def spy(*args, _load=module.load, _name=module.__name__.rsplit(".", 1)[1], **kwargs):
            calls.append(_name)
            return _load(*args, **kwargs)

        monkeypatch.setattr(module, "load", spy)
    return calls


@torch.no_grad()
def test_mimi_runs_the_c_kernels_only_with_fast_numerics(c_calls, monkeypatch) -> None:
    from duplex.codec import Mimi, MimiConfig

    torch.manual_seed(0)
    mimi = Mimi(MimiConfig.from_preset("tiny"), numerics="reference").eval()
    wav = 0.1 * torch.randn(1, 1, 4 * mimi.frame_size)

    def stream() -> tuple[torch.Tensor, torch.Tensor]:
        with mimi.streaming(1):
            latent = torch.cat([mimi.encode_latent(chunk) for chunk in wav.split(mimi.frame_size, -1)], -1)
            audio = mimi.decode(mimi.quantizer.encode(latent[..., -1:]))
        return latent, audio

    reference, reference_audio = stream()
    assert c_calls == []  # the reference's torch ops only
    mimi.numerics = "fast"
    fast, fast_audio = stream()
    assert {"linear_native", "conv_native", "elu_native", "rvq_native"} <= set(c_calls)
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_audio, reference_audio, rtol=1e-4, atol=1e-5)
    # the fast set forced to torch is the reference's arithmetic, bit for bit
    monkeypatch.setenv(BACKEND_ENV, "torch")
    c_calls.clear()
    forced, forced_audio = stream()
    assert c_calls == []
    assert torch.equal(forced, reference) and torch.equal(forced_audio, reference_audio)


def test_an_unwritable_cache_is_a_build_error_that_names_the_setting(tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv(native_build.CACHE_ENV, str(blocker))
    with pytest.raises(native_build.NativeBuildError, match="DUPLEX_CACHE_DIR"):
        native_build.build(linear_native.SOURCE)
