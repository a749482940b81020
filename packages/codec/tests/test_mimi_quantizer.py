"""Split RVQ: cdist-identical code search, EMA codebooks, the training path, the registry entry."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from duplex.codec import CODECS, Mimi, MimiConfig
from duplex.codec.config import QuantizerConfig
from duplex.codec.kernels import rvq_native, select_kernels, use_kernels
from duplex.codec.kernels.rvq_torch import nearest_codes
from duplex.codec.quantizer import EuclideanCodebook, SplitResidualVectorQuantizer


@pytest.mark.parametrize("rows", [1, 2, 3, 16, 38, 310])
@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0])
def test_nearest_codes_is_bit_identical_to_cdist(rows, scale):
    g = torch.Generator().manual_seed(rows)
    centroids = torch.randn(2048, 256, generator=g) * scale
    vectors = torch.randn(rows, 256, generator=g) * scale
    expected = torch.cdist(vectors[None], centroids[None])[0].argmin(-1)
    assert torch.equal(nearest_codes(vectors, centroids), expected)
    assert torch.equal(
        select_kernels("reference", "cpu").rvq_encode(vectors, centroids[None])[:, 0], expected
    )
    # fast: the C search for streaming rows (torch's above MAX_ROWS); the same nearest centroid up
    # to near-ties, which random data at these sizes does not have
    fast = select_kernels("fast", "cpu").rvq_encode(vectors, centroids[None])[:, 0]
    assert torch.equal(fast, expected)


def test_ema_update_moves_statistics_and_centroids():
    codebook = EuclideanCodebook(dim=4, size=3)
    vectors = torch.tensor([[1.0, 0, 0, 0], [3.0, 0, 0, 0], [0, 2.0, 0, 0]])
    codes = torch.tensor([0, 0, 2])
    codebook.ema_update(vectors, codes, decay=0.5)
    torch.testing.assert_close(codebook.cluster_usage, torch.tensor([1.5, 0.5, 1.0]))
    torch.testing.assert_close(codebook.embedding_sum[0], torch.tensor([2.0, 0, 0, 0]))
    torch.testing.assert_close(codebook.centroids[0], torch.tensor([2.0 / 1.5, 0, 0, 0]))
    torch.testing.assert_close(codebook.centroids[2], torch.tensor([0, 1.0, 0, 0]))
    assert codebook._initialized.item() == 1.0


def test_training_path_is_straight_through_and_matches_inference_codes():
    torch.manual_seed(0)
    config = QuantizerConfig(dimension=8, n_q=4, bins=16, input_dimension=12, output_dimension=12)
    quantizer = SplitResidualVectorQuantizer(config).eval()
    for rvq in (quantizer.rvq_first, quantizer.rvq_rest):
        for codebook in rvq.codebooks():
            codebook.embedding_sum.normal_()
            codebook.refresh_centroids()
    latent = torch.randn(2, 12, 5, requires_grad=True)
    quantized, loss = quantizer.quantize_for_training(latent)
    with torch.no_grad():
        torch.testing.assert_close(quantized, quantizer.decode(quantizer.encode(latent)))
    (quantized.sum() + loss).backward()
    assert latent.grad is not None and latent.grad.abs().sum() > 0
    before = quantizer.rvq_rest.codebooks()[0].cluster_usage.clone()
    quantizer.train()
    quantizer.quantize_for_training(latent.detach())
    assert not torch.equal(quantizer.rvq_rest.codebooks()[0].cluster_usage, before)


def test_mimi_is_registered_as_a_codec():
    assert "mimi" in CODECS
    assert CODECS.get("mimi") is Mimi
    assert isinstance(CODECS.get("mimi")(MimiConfig.from_preset("tiny")), Mimi)


@torch.no_grad()
def test_encode_searches_all_levels_in_one_call_with_either_set(monkeypatch) -> None:
    reference = select_kernels("reference", "cpu")
    fast = select_kernels("fast", "cpu")
    assert fast.backends["rvq_encode"] == "native"  # a C compiler is installed here
    calls, c_runs = [], []

    def spy(x, centroids):
        calls.append(tuple(centroids.shape))
        return fast.rvq_encode(x, centroids)

    load = rvq_native.load
    monkeypatch.setattr(rvq_native, "load", lambda: c_runs.append(1) or load())
    spied = dataclasses.replace(fast, rvq_encode=spy)
    torch.manual_seed(0)
    config = QuantizerConfig(dimension=16, n_q=6, bins=64, input_dimension=24, output_dimension=24)
    quantizer = SplitResidualVectorQuantizer(config)
    latent = torch.randn(2, 24, 3)
    quantizer.init_codebooks(torch.randn(4, 24, 50))
    quantizer.num_codebooks = 4

    def torch_loop() -> torch.Tensor:
        """The reference's search: a 1x1 conv, then cdist and argmin level after level."""
        codes = []
        for rvq, levels in ((quantizer.rvq_first, 1), (quantizer.rvq_rest, 3)):
            residual = (
                torch.nn.functional.conv1d(latent, rvq.input_proj.weight).transpose(1, 2).reshape(6, -1)
            )
            for codebook in rvq.codebooks()[:levels]:
                level_codes = nearest_codes(residual, codebook.centroids)
                residual = residual - codebook.centroids[level_codes]
                codes.append(level_codes.view(2, 3))
        return torch.stack(codes, dim=1)

    exact = quantizer.encode(latent)  # alone: the reference set
    assert quantizer.rvq_first.kernels is reference and c_runs == []
    assert torch.equal(exact, torch_loop())  # the torch loop's very codes
    use_kernels(quantizer, spied)
    assert torch.equal(quantizer.encode(latent), exact)
    assert calls == [(1, 64, 16), (3, 64, 16)]  # one op call per RVQ; only the levels in use are stacked
    assert len(c_runs) == 2  # each in C

    # the stacked table follows the codebooks: new statistics give new codes
    state = quantizer.state_dict()
    for key in state:
        if key.endswith("embedding_sum"):
            state[key] = torch.randn_like(state[key])
    quantizer.load_state_dict(state)
    fresh = quantizer.encode(latent)
    assert not torch.equal(fresh, exact)
    use_kernels(quantizer, reference)
    assert torch.equal(quantizer.encode(latent), fresh)
    assert torch.equal(fresh, torch_loop())
