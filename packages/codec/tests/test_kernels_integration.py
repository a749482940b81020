"""The codec's modules on the kernel path: the attention module and the quantizer, run with the Triton
kernels (Triton's CPU interpreter here; the default choice on CUDA) against their own torch path."""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # Triton kernels on CPU: must precede the first import of triton

import torch
from duplex.codec.kernels import enable_triton_interpreter, use_backend
from duplex.codec.nn import RotaryEmbedding, StreamingMultiheadAttention
from duplex.codec.quantizer import ResidualVectorQuantizer

enable_triton_interpreter()  # fails clearly if triton was loaded before without the interpreter


def test_attention_module_batch_and_streaming_on_the_triton_path() -> None:
    torch.manual_seed(0)
    module = StreamingMultiheadAttention(32, 2, causal=True, context=5, rope=RotaryEmbedding()).eval()
    x = torch.randn(2, 13, 32)
    chunks = [1, 2, 2, 1, 3, 2, 2]  # several steps per call: the ring buffer wraps mid-call
    outputs = {}
    with torch.no_grad():
        for backend in ("torch", "triton"):
            with use_backend(backend):
                batch = module(x)
                steps = []
                with module.streaming(2):
                    start = 0
                    for size in chunks:
                        steps.append(module(x[:, start : start + size]))
                        start += size
            outputs[backend] = (batch, torch.cat(steps, dim=1))
    for got, expected in zip(outputs["triton"], outputs["torch"], strict=True):
        torch.testing.assert_close(got, expected, rtol=2e-5, atol=2e-5)


def test_quantizer_on_the_triton_path() -> None:
    torch.manual_seed(1)
    quantizer = ResidualVectorQuantizer(4, dimension=16, bins=70, input_dim=24, output_dim=24)
    for scale, codebook in zip([1.0, 0.5, 0.25, 0.12], quantizer.codebooks(), strict=True):
        codebook.embedding_sum.copy_(torch.randn(70, 16) * scale)
        codebook.refresh_centroids()
    latent = torch.randn(2, 24, 11)
    with torch.no_grad(), use_backend("torch"):
        codes = quantizer.encode(latent, 4)
        decoded = quantizer.decode(codes)
    with torch.no_grad(), use_backend("triton"):
        assert torch.equal(quantizer.encode(latent, 4), codes)  # no near-ties on these random inputs
        assert torch.equal(quantizer.decode(codes), decoded)
