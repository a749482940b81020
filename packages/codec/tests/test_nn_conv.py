"""StreamingConv1d / StreamingConvTranspose1d against the reference (moshi) modules."""

from __future__ import annotations

import pytest
import torch
from duplex.codec.nn import StreamingConv1d, StreamingConvTranspose1d
from moshi.modules import conv as ref_conv


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions: one thread avoids spinning on a shared CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def run_chunks(module: torch.nn.Module, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    outs, start = [], 0
    while start < x.shape[-1]:
        for size in sizes:
            if start >= x.shape[-1]:
                break
            outs.append(module(x[..., start : start + size]))
            start += size
    return torch.cat(outs, dim=-1)


CONV_CASES = [
    # kernel, stride, dilation, groups, pad_mode, bias
    (7, 1, 1, 1, "constant", True),
    (3, 1, 3, 1, "constant", True),
    (1, 1, 1, 1, "constant", False),
    (8, 4, 1, 1, "constant", True),
    (4, 2, 1, 1, "replicate", False),
    (5, 2, 1, 2, "replicate", True),
    (3, 3, 1, 1, "constant", True),
]


def make_conv_pair(kernel: int, stride: int, dilation: int, groups: int, pad_mode: str, bias: bool):
    ref = ref_conv.StreamingConv1d(
        4, 6, kernel, stride, dilation=dilation, groups=groups, bias=bias, causal=True, pad_mode=pad_mode
    )
    ours = StreamingConv1d(
        4, 6, kernel, stride, dilation=dilation, groups=groups, bias=bias, pad_mode=pad_mode
    )
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_matches_reference_batch_and_streaming(case):
    torch.manual_seed(0)
    kernel, stride, dilation, groups, pad_mode, bias = case
    ref, ours = make_conv_pair(*case)
    x = torch.randn(3, 4, 24 * stride)
    expected = ref(x)
    assert rel_l2(ours(x), expected) <= 1e-6
    for sizes in ([stride], [2 * stride, stride], [3 * stride], [5 * stride, 3 * stride, stride]):
        with ours.streaming(3):
            our_stream = run_chunks(ours, x, sizes)
        assert rel_l2(our_stream, expected) <= 1e-6
        # the reference refuses replicate-mode chunks shorter than the padding; ours accepts them
        if pad_mode == "constant" or min(sizes) >= ours.left_context:
            with ref.streaming(3):
                ref_stream = run_chunks(ref, x, sizes)
            assert rel_l2(our_stream, ref_stream) <= 1e-6


def test_conv_state_dict_keys():
    conv = StreamingConv1d(2, 3, 4, bias=True)
    assert set(conv.state_dict()) == {"conv.conv.weight", "conv.conv.bias"}
    convtr = StreamingConvTranspose1d(2, 3, 4, 2)
    assert set(convtr.state_dict()) == {"convtr.convtr.weight", "convtr.convtr.bias"}


def test_replicate_first_flag_is_per_item_and_reset_per_slot():
    torch.manual_seed(1)
    ours = StreamingConv1d(4, 6, 4, 2, pad_mode="replicate")
    x = torch.randn(2, 4, 16)
    full = ours(x)
    with ours.streaming(2):
        head = ours(x[..., :8])
        ours.reset_streaming(torch.tensor([False, True]))
        tail = ours(x[..., 8:])
    # slot 0 went on, slot 1 restarted on its second half as a fresh stream
    assert rel_l2(torch.cat([head[:1], tail[:1]], -1), full[:1]) <= 1e-6
    assert rel_l2(tail[1:], ours(x[1:, :, 8:])) <= 1e-6


def test_conv_exec_mask_freezes_state():
    torch.manual_seed(2)
    ours = StreamingConv1d(4, 6, 5, 1, pad_mode="replicate")
    x = torch.randn(2, 4, 12)
    skipped = torch.randn(2, 4, 4)
    with ours.streaming(2):
        a = ours(x[..., :6])
        ours.set_exec_mask(torch.tensor([True, False]))
        ours(skipped)
        ours.set_exec_mask(torch.tensor([True, True]))
        b = ours(x[..., 6:])
    with ours.streaming(2):
        ours(x[..., :6])
        ours(skipped)
        b_all = ours(x[..., 6:])
    full = ours(x)
    assert rel_l2(torch.cat([a[1:], b[1:]], -1), full[1:]) <= 1e-6
    assert rel_l2(b[:1], b_all[:1]) <= 1e-6


def test_conv_rejects_bad_input():
    conv = StreamingConv1d(4, 6, 4, 2)
    with pytest.raises(ValueError, match="multiple of the stride 2"):
        conv(torch.randn(1, 4, 5))
    with pytest.raises(ValueError, match="4 input channels"):
        conv(torch.randn(1, 3, 4))
    with pytest.raises(ValueError, match="pad_mode"):
        StreamingConv1d(4, 6, 4, pad_mode="reflect")  # type: ignore[arg-type]


CONVTR_CASES = [
    # kernel, stride, groups, bias
    (4, 2, 1, True),
    (16, 8, 1, True),
    (4, 2, 4, False),
    (3, 3, 1, True),
    (5, 1, 1, True),
]


@pytest.mark.parametrize("case", CONVTR_CASES)
def test_convtr_matches_reference_batch_and_streaming(case):
    torch.manual_seed(3)
    kernel, stride, groups, bias = case
    ref = ref_conv.StreamingConvTranspose1d(4, 8, kernel, stride, groups=groups, bias=bias, causal=True)
    ours = StreamingConvTranspose1d(4, 8, kernel, stride, groups=groups, bias=bias)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(3, 4, 20)
    expected = ref(x)
    assert expected.shape[-1] == 20 * stride
    assert rel_l2(ours(x), expected) <= 1e-6
    for sizes in ([1], [2, 1], [7, 3, 1]):
        with ref.streaming(3):
            ref_stream = run_chunks(ref, x, sizes)
        with ours.streaming(3):
            our_stream = run_chunks(ours, x, sizes)
        assert rel_l2(our_stream, ref_stream) <= 1e-6
        assert rel_l2(our_stream, expected) <= 1e-6


def test_convtr_reset_and_exec_mask():
    torch.manual_seed(4)
    ours = StreamingConvTranspose1d(4, 8, 6, 2)
    x = torch.randn(2, 4, 10)
    skipped = torch.randn(2, 4, 3)
    full = ours(x)
    with ours.streaming(2):
        a = ours(x[..., :4])
        ours.set_exec_mask(torch.tensor([False, True]))
        ours(skipped)
        ours.set_exec_mask(torch.tensor([True, True]))
        ours.reset_streaming([1])
        b = ours(x[..., 4:])
    assert rel_l2(torch.cat([a[:1], b[:1]], -1), full[:1]) <= 1e-6
    assert rel_l2(b[1:], ours(x[1:, :, 4:])) <= 1e-6


def _with_kernels(numerics: str, *modules: torch.nn.Module) -> None:
    from duplex.codec.kernels import select_kernels, use_kernels

    for module in modules:
        use_kernels(module, select_kernels(numerics, "cpu"))


@torch.no_grad()
@pytest.mark.parametrize(("kernel", "stride", "dilation"), [(7, 1, 1), (3, 1, 2), (16, 8, 1), (4, 2, 1)])
def test_streaming_steps_on_the_fast_kernels_give_torchs_numbers(kernel, stride, dilation) -> None:
    torch.manual_seed(kernel)
    conv = StreamingConv1d(24, 40, kernel, stride=stride, dilation=dilation)
    convtr = StreamingConvTranspose1d(40, 24, 2 * stride, stride=stride)
    x = torch.randn(2, 24, 12 * stride)
    outputs = {}
    for numerics in ("fast", "reference"):
        _with_kernels(numerics, conv, convtr)
        with conv.streaming(2), convtr.streaming(2):
            steps = [x[..., i : i + 2 * stride] for i in range(0, x.shape[-1], 2 * stride)]
            outputs[numerics] = torch.cat([convtr(conv(step)) for step in steps], -1)
    torch.testing.assert_close(outputs["fast"], outputs["reference"], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_reference_kernels_run_torchs_own_conv() -> None:
    """The reference set: torch's conv for every call, whatever its shape (the reference's bits)."""
    torch.manual_seed(0)
    conv = StreamingConv1d(512, 1024, 16, stride=8)  # Mimi's last encoder conv
    x = torch.randn(1, 512, 16 * 4)
    _with_kernels("reference", conv)
    with conv.streaming(1):
        got = torch.cat([conv(x[..., i : i + 16]) for i in range(0, x.shape[-1], 16)], -1)
    inner = conv.conv.conv
    padded = torch.cat([torch.zeros(1, 512, 8), x], -1)
    expected = torch.cat(
        [
            torch.nn.functional.conv1d(padded[..., i : i + 24], inner.weight, inner.bias, 8)
            for i in range(0, 64, 16)
        ],
        -1,
    )
    assert torch.equal(got, expected)


@torch.no_grad()
@pytest.mark.parametrize(
    ("batch", "c_in", "c_out", "kernel", "stride", "dilation", "frames", "bias"),
    [
        (1, 64, 32, 3, 1, 1, 193, True),  # SEANet's residual conv
        (2, 16, 48, 8, 4, 1, 37, True),  # a down-sampling conv, two items
        (1, 1, 64, 7, 1, 1, 50, True),  # the first conv: one input channel
        (1, 8, 16, 3, 2, 3, 11, False),  # stride and dilation, no bias
    ],
)
def test_direct_conv_kernel_matches_float64_for_any_thread_count(
    batch, c_in, c_out, kernel, stride, dilation, frames, bias
) -> None:
    from duplex.codec.kernels import conv_native

    torch.manual_seed(c_out)
    weight = torch.randn(c_out, c_in, kernel) / (c_in * kernel) ** 0.5
    b = torch.randn(c_out) if bias else None
    x = torch.randn(batch, c_in, (frames - 1) * stride + dilation * (kernel - 1) + 1)
    expected = torch.nn.functional.conv1d(
        x.double(), weight.double(), None if b is None else b.double(), stride=stride, dilation=dilation
    )
    panels = conv_native.pack(weight)
    outputs = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        outputs.append(conv_native.direct_conv1d(x, panels, b, kernel, stride, dilation))
    torch.set_num_threads(1)
    assert outputs[0].shape == expected.shape
    torch.testing.assert_close(outputs[0].double(), expected, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(outputs[0], other) for other in outputs[1:])  # tiles split, sums do not


@torch.no_grad()
def test_long_streaming_chunks_take_the_direct_conv_kernel_with_weights_packed_once(monkeypatch) -> None:
    from duplex.codec.kernels import conv_native

    calls, packs = [], []
    direct, pack = conv_native.direct_conv1d, conv_native.pack
    monkeypatch.setattr(conv_native, "direct_conv1d", lambda *args: calls.append(1) or direct(*args))
    monkeypatch.setattr(conv_native, "pack", lambda weight: packs.append(1) or pack(weight))
    torch.manual_seed(0)
    conv = StreamingConv1d(24, 32, 3, dilation=2)  # 32 output channels: the kernel's tiles
    x = torch.randn(2, 24, 120)
    outputs = {}
    for numerics in ("fast", "reference"):
        _with_kernels(numerics, conv)
        with conv.streaming(2):
            outputs[numerics] = torch.cat([conv(x[..., i : i + 40]) for i in range(0, 120, 40)], -1)
    assert len(calls) == 3 and len(packs) == 1  # packed when the session's first call needs it
    torch.testing.assert_close(outputs["fast"], outputs["reference"], rtol=1e-5, atol=1e-5)
    assert not conv_native.supports(torch.zeros(40, 24, 3))  # other widths keep torch's conv


@torch.no_grad()
def test_a_new_streaming_session_sees_weights_changed_in_place() -> None:
    """Derived weights live in the streaming state: a load_state_dict between sessions is used."""
    torch.manual_seed(0)
    conv = StreamingConv1d(24, 32, 3)
    _with_kernels("fast", conv)
    x = torch.randn(1, 24, 60)
    with conv.streaming(1):
        conv(x)
    conv.load_state_dict({k: torch.randn_like(v) for k, v in conv.state_dict().items()})
    with conv.streaming(1):
        got = conv(x)
    _with_kernels("reference", conv)
    with conv.streaming(1):
        expected = conv(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
