"""Split RVQ: cdist-identical code search, EMA codebooks, the training path, the registry entry."""

from __future__ import annotations

import pytest
import torch
from duplex.codec import CODECS, Mimi, MimiConfig
from duplex.codec.config import QuantizerConfig
from duplex.codec.quantizer import (
    EuclideanCodebook,
    SplitResidualVectorQuantizer,
    augmented_centroids,
    nearest_codes,
)


@pytest.mark.parametrize("rows", [1, 2, 3, 16, 38, 310])
@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0])
def test_nearest_codes_is_bit_identical_to_cdist(rows, scale):
    g = torch.Generator().manual_seed(rows)
    centroids = torch.randn(2048, 256, generator=g) * scale
    vectors = torch.randn(rows, 256, generator=g) * scale
    expected = torch.cdist(vectors[None], centroids[None])[0]
    assert torch.equal(nearest_codes(vectors, centroids, augmented_centroids(centroids)), expected.argmin(-1))
    assert torch.equal(nearest_codes(vectors, centroids), expected.argmin(-1))
    # fast: the few-row kernel for the products (streaming rows); the same nearest centroid up to
    # near-ties, which random data at these sizes does not have
    fast = nearest_codes(vectors, centroids, augmented_centroids(centroids), fast=True)
    assert torch.equal(fast, expected.argmin(-1))


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
def test_encode_searches_all_levels_in_one_c_call_fast_or_exact(monkeypatch) -> None:
    from duplex.codec.kernels import rvq_reference_order, use_backend
    from duplex.codec.registry import KERNELS

    calls, exact_calls = [], []
    native = KERNELS.get("rvq_encode/native")
    reference_order = rvq_reference_order.rvq_encode

    def spy(x, centroids):
        calls.append(tuple(centroids.shape))
        return native(x, centroids)

    def exact_spy(x, centroids, augmented):
        exact_calls.append(tuple(centroids.shape))
        return reference_order(x, centroids, augmented)

    monkeypatch.setitem(KERNELS._components, "rvq_encode/native", spy)
    monkeypatch.setattr(rvq_reference_order, "rvq_encode", exact_spy)
    torch.manual_seed(0)
    config = QuantizerConfig(dimension=16, n_q=6, bins=64, input_dimension=24, output_dimension=24)
    quantizer = SplitResidualVectorQuantizer(config)
    latent = torch.randn(2, 24, 3)
    quantizer.init_codebooks(torch.randn(4, 24, 50))
    quantizer.num_codebooks = 4
    exact = quantizer.encode(latent)
    assert calls == []  # the reference's cdist arithmetic ...
    assert exact_calls == [(1, 64, 16), (3, 64, 16)]  # ... in one C call per RVQ
    with use_backend("torch"):
        assert torch.equal(quantizer.encode(latent), exact)  # the torch loop's very codes
    assert torch.equal(quantizer.encode(latent, fast=True), exact)
    assert calls == [(1, 64, 16), (3, 64, 16)]  # only the levels in use are stacked

    # the stacked table follows the codebooks: new statistics give new codes
    state = quantizer.state_dict()
    for key in state:
        if key.endswith("embedding_sum"):
            state[key] = torch.randn_like(state[key])
    quantizer.load_state_dict(state)
    exact = quantizer.encode(latent)
    assert torch.equal(quantizer.encode(latent, fast=True), exact)
    with use_backend("torch"):
        assert torch.equal(quantizer.encode(latent), exact)
