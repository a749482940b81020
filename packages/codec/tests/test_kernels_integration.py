"""The codec's modules on the kernel sets: the attention module and the quantizer, handed the Triton set
(Triton's CPU interpreter here; the default choice on CUDA) and the CPU's fast set, against the
reference (torch) set they run alone."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # Triton kernels on CPU: must precede the first import of triton

import pytest
import torch
from duplex.codec.kernels import enable_triton_interpreter, select_kernels, use_kernels
from duplex.codec.nn import RotaryEmbedding, StreamingMultiheadAttention
from duplex.codec.quantizer import ResidualVectorQuantizer

enable_triton_interpreter()  # fails clearly if triton was loaded before without the interpreter

SETS = {
    "reference": lambda: select_kernels("reference", "cpu"),
    "fast": lambda: select_kernels("fast", "cpu"),  # native C where it applies
    "triton": lambda: select_kernels("fast", "cpu", backend="triton"),
}


@torch.no_grad()
def test_attention_module_batch_and_streaming_on_each_set() -> None:
    torch.manual_seed(0)
    module = StreamingMultiheadAttention(32, 2, causal=True, context=5, rope=RotaryEmbedding()).eval()
    assert module.kernels is select_kernels("reference", "cpu")  # alone: the reference set
    x = torch.randn(2, 13, 32)
    chunks = [1, 2, 2, 1, 3, 2, 2]  # several steps per call: the ring buffer wraps mid-call
    outputs = {}
    for name, kernels in SETS.items():
        use_kernels(module, kernels())
        batch = module(x)
        steps = []
        with module.streaming(2):
            start = 0
            for size in chunks:
                steps.append(module(x[:, start : start + size]))
                start += size
        outputs[name] = (batch, torch.cat(steps, dim=1))
    for name in ("fast", "triton"):
        for got, expected in zip(outputs[name], outputs["reference"], strict=True):
            torch.testing.assert_close(got, expected, rtol=2e-5, atol=2e-5)


@torch.no_grad()
@pytest.mark.parametrize("name", ["fast", "triton"])
def test_quantizer_on_each_set(name: str) -> None:
    torch.manual_seed(1)
    quantizer = ResidualVectorQuantizer(4, dimension=16, bins=70, input_dim=24, output_dim=24)
    for scale, codebook in zip([1.0, 0.5, 0.25, 0.12], quantizer.codebooks(), strict=True):
        codebook.embedding_sum.copy_(torch.randn(70, 16) * scale)
        codebook.refresh_centroids()
    for frames in (11, 1):  # a batch (torch's search on the native set) and a streaming frame (C)
        latent = torch.randn(2, 24, frames)
        use_kernels(quantizer, SETS["reference"]())
        codes = quantizer.encode(latent, 4)
        decoded = quantizer.decode(codes)
        use_kernels(quantizer, SETS[name]())
        assert torch.equal(quantizer.encode(latent, 4), codes)  # no near-ties on these random inputs
        torch.testing.assert_close(quantizer.decode(codes), decoded, rtol=1e-5, atol=1e-6)
        # the Triton set fuses the centroid sum and the output projection: equal within rounding
