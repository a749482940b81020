"""The oneDNN-order convolution (kernels/conv_onednn_order.c): torch's bits where torch runs the
conv on oneDNN, and the streaming conv's choice of kernel per shape (nn/conv.py)."""

from __future__ import annotations

import pytest
import torch
from duplex.codec import kernels
from duplex.codec.kernels import conv_onednn_order
from duplex.codec.nn import StreamingConv1d
from torch.nn import functional as F

# Mimi's SEANet encoder convolutions that torch runs on oneDNN in streaming, one frame per call
# (C_in, C_out, kernel, stride, input frames)
ONEDNN_SHAPES = [
    (64, 32, 3, 1, 1922),  # residual convs
    (128, 64, 3, 1, 482),
    (256, 128, 3, 1, 98),
    (32, 64, 1, 1, 1920),  # their 1x1 convs (oneDNN's 1x1 kernel)
    (64, 128, 1, 1, 480),
    (64, 128, 8, 4, 1924),  # down-sampling convs
    (128, 256, 10, 5, 485),
    (256, 512, 12, 6, 102),
]


@pytest.fixture(autouse=True)
def _two_threads():
    """torch picks oneDNN for some of these shapes only with more than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("c_in", "c_out", "kernel", "stride", "frames"), ONEDNN_SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_the_kernel_gives_torchs_onednn_bits(c_in, c_out, kernel, stride, frames, bias) -> None:
    generator = torch.Generator().manual_seed(c_in + kernel)
    weight = torch.randn(c_out, c_in, kernel, generator=generator) / (c_in * kernel) ** 0.5
    b = torch.randn(c_out, generator=generator) if bias else None
    x = torch.randn(1, c_in, frames, generator=generator)
    expected = F.conv1d(x, weight, b, stride=stride)
    one_by_one = kernel == 1 and stride == 1
    got = conv_onednn_order.conv1d(x, conv_onednn_order.pack(weight), b, kernel, stride, 1, one_by_one)
    assert torch.equal(got, expected)
    if one_by_one:  # the two orders differ: each shape needs its own
        taps_order = conv_onednn_order.conv1d(x, conv_onednn_order.pack(weight), b, 1, 1, 1, False)
        assert not torch.equal(taps_order, expected)


def test_pack_and_bad_input() -> None:
    weight = torch.randn(32, 20, 3)
    panels = conv_onednn_order.pack(weight)
    assert panels.shape == (2, 2, 3, 16, 16)  # input channels padded to 2 blocks of 16
    assert torch.equal(panels[1, 0, 2, 5, 7], weight[16 + 7, 5, 2]) and panels[0, 1, 0, 4:].abs().sum() == 0
    with pytest.raises(kernels.KernelUnsupportedError, match="C_out % 16"):
        conv_onednn_order.pack(torch.randn(30, 4, 3))
    with pytest.raises(ValueError, match="do not fit"):
        conv_onednn_order.conv1d(torch.randn(1, 40, 9), panels, None, 3)
    with pytest.raises(ValueError, match="shorter"):
        conv_onednn_order.conv1d(torch.randn(1, 20, 2), panels, None, 3)


@torch.no_grad()
def test_streaming_convs_choose_their_kernel_on_random_data_not_the_first_input() -> None:
    """In reference_matmuls each streaming conv checks the C kernels against torch's conv once per
    shape (and thread count) on random data: a silent first chunk, which every order reproduces,
    must not pick a kernel torch does not follow. Outputs stay torch's, bit for bit."""
    torch.manual_seed(0)
    convs = [
        StreamingConv1d(64, 128, 8, stride=4),  # oneDNN in torch: the oneDNN-order kernel
        StreamingConv1d(512, 256, 3),  # few rows (thnn in torch): none of the kernels
        StreamingConv1d(512, 1024, 16, stride=8),  # few rows, large weight: the sequential kernel
    ]
    inputs = [torch.randn(1, 64, 1920 * 3), torch.randn(1, 512, 16 * 3), torch.randn(1, 512, 16 * 3)]
    for conv, x, expected_route in zip(convs, inputs, ["onednn", None, "sequential"], strict=True):
        chunk = x.shape[-1] // 3
        chunks = [torch.zeros_like(x[..., :chunk]), *x[..., chunk:].split(chunk, dim=-1)]  # silence first
        with kernels.use_backend("torch"), conv.streaming(1):
            expected = [conv(c) for c in chunks]
        with kernels.reference_matmuls(), conv.streaming(1):
            got = [conv(c) for c in chunks]
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
        assert list(conv.conv._exact_route.values()) == [expected_route]
