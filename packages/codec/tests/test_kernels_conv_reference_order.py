"""The reference-order convolution (kernels/conv_reference_order.c): torch's bits in the orders of
oneDNN's kernels and of torch's im2col + BLAS path, and the streaming conv's choice of kernel per
shape (nn/conv.py)."""

from __future__ import annotations

import pytest
import torch
from duplex.codec import kernels
from duplex.codec.kernels import conv_reference_order
from duplex.codec.nn import StreamingConv1d
from torch.nn import functional as F

BLAS_BLOCKS = conv_reference_order.BLAS_BLOCKS
# The orders were found on torch's AVX-512 kernels (oneDNN's avx512_core convolutions); elsewhere
# oneDNN blocks channels otherwise, and the streaming conv keeps torch's conv (checked per shape).
AVX512 = torch.backends.cpu.get_cpu_capability() == "AVX512"

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


# ... and those it runs as im2col + BLAS (too short for oneDNN), with their chain lengths
BLAS_SHAPES = [
    (128, 256, 1, 1, 96),  # 128 unfolded indices: one chain
    (256, 512, 1, 1, 16),  # 256: two of 128
    (512, 256, 3, 1, 18),  # 1536: chains of 192
]


@pytest.mark.skipif(not AVX512, reason="the orders are those of torch's AVX-512 kernels")
@pytest.mark.parametrize(("c_in", "c_out", "kernel", "stride", "frames"), ONEDNN_SHAPES + BLAS_SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_the_kernel_gives_torchs_bits_in_its_backends_order(c_in, c_out, kernel, stride, frames, bias):
    generator = torch.Generator().manual_seed(c_in + kernel)
    weight = torch.randn(c_out, c_in, kernel, generator=generator) / (c_in * kernel) ** 0.5
    b = torch.randn(c_out, generator=generator) if bias else None
    x = torch.randn(1, c_in, frames, generator=generator)
    expected = F.conv1d(x, weight, b, stride=stride)
    if (c_in, c_out, kernel, stride, frames) in BLAS_SHAPES:
        order, panels = conv_reference_order.BLAS_BLOCKS, conv_reference_order.pack_blas(weight)
    else:
        order = conv_reference_order.ONEDNN_1X1 if kernel == 1 else conv_reference_order.ONEDNN_TAPS
        panels = conv_reference_order.pack(weight)
    assert torch.equal(conv_reference_order.conv1d(x, panels, b, kernel, stride, 1, order), expected)


def test_blas_chain_lengths() -> None:
    assert [conv_reference_order.blas_blocks(n) for n in (100, 192, 200, 256, 383, 384, 385, 1536)] == [
        100, 192, 100, 128, 191, 192, 192, 192,
    ]  # fmt: skip


def test_pack_and_bad_input() -> None:
    weight = torch.randn(32, 20, 3)
    panels = conv_reference_order.pack(weight)
    assert panels.shape == (2, 2, 3, 16, 16)  # input channels padded to 2 blocks of 16
    assert torch.equal(panels[1, 0, 2, 5, 7], weight[16 + 7, 5, 2]) and panels[0, 1, 0, 4:].abs().sum() == 0
    flat = conv_reference_order.pack_blas(weight)
    assert flat.shape == (2, 60, 16) and torch.equal(flat[1, 5 * 3 + 2, 7], weight[16 + 7, 5, 2])
    with pytest.raises(kernels.KernelUnsupportedError, match="C_out % 16"):
        conv_reference_order.pack(torch.randn(30, 4, 3))
    with pytest.raises(ValueError, match="do not fit"):
        conv_reference_order.conv1d(torch.randn(1, 40, 9), panels, None, 3)
    with pytest.raises(ValueError, match="do not fit"):
        conv_reference_order.conv1d(torch.randn(1, 21, 9), flat, None, 3, order=BLAS_BLOCKS)
    with pytest.raises(ValueError, match="shorter"):
        conv_reference_order.conv1d(torch.randn(1, 20, 2), panels, None, 3)


@torch.no_grad()
def test_streaming_convs_choose_their_kernel_on_random_data_not_the_first_input() -> None:
    """In reference_matmuls each streaming conv checks the C kernels against torch's conv once per
    shape (and thread count) on random data: a silent first chunk, which every order reproduces,
    must not pick a kernel torch does not follow. Outputs stay torch's, bit for bit."""
    torch.manual_seed(0)
    convs = [
        StreamingConv1d(64, 128, 8, stride=4),  # oneDNN in torch: its order
        StreamingConv1d(512, 256, 3),  # few rows: torch's im2col + BLAS, its order
        StreamingConv1d(512, 1024, 16, stride=8),  # two output rows: the sequential kernel
        StreamingConv1d(512, 512, 4, stride=2),  # one output row: BLAS's gemv
        StreamingConv1d(40, 24, 3),  # C_out not a multiple of 16: torch's conv itself
    ]
    inputs = [torch.randn(1, 64, 1920 * 3), torch.randn(1, 512, 16 * 3), torch.randn(1, 512, 16 * 3)]
    inputs += [torch.randn(1, 512, 2 * 3), torch.randn(1, 40, 50 * 3)]
    routes = ["onednn", "blas-blocks", "sequential", "gemv", None]
    for conv, x, expected_route in zip(convs, inputs, routes, strict=True):
        chunk = x.shape[-1] // 3
        chunks = [torch.zeros_like(x[..., :chunk]), *x[..., chunk:].split(chunk, dim=-1)]  # silence first
        with kernels.use_backend("torch"), conv.streaming(1):
            expected = [conv(c) for c in chunks]
        with kernels.reference_matmuls(), conv.streaming(1):
            got = [conv(c) for c in chunks]
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
        routes = list(conv.conv._exact_route.values())
        assert routes == [expected_route] if AVX512 else len(routes) == 1
