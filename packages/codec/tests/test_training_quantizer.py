"""The training path of the split RVQ against the reference's training-mode quantizer."""

from __future__ import annotations

import pytest
import torch
from duplex.codec.config import QuantizerConfig
from duplex.codec.quantizer import SplitResidualVectorQuantizer
from duplex.codec.training.quantizer import CodebookTrainingConfig, SplitQuantizerTrainer, kmeans

torch.set_num_threads(1)

SIZES = dict(dimension=8, n_q=4, bins=16, input_dimension=12, output_dimension=12)


def _pair():
    from moshi.quantization.vq import SplitResidualVectorQuantizer as Reference

    torch.manual_seed(0)
    reference = Reference(**SIZES)
    ours = SplitResidualVectorQuantizer(QuantizerConfig(**SIZES))
    ours.load_state_dict(reference.state_dict())
    return reference.train(), ours


@pytest.mark.parametrize("steps", [7])
def test_training_steps_match_the_reference(steps):
    """k-means init (one level per step), EMA updates, dead-code replacement, commitment loss."""
    reference, ours = _pair()
    trainer = SplitQuantizerTrainer(ours, CodebookTrainingConfig(), quantizer_dropout=False)
    data = torch.Generator().manual_seed(1)
    for step in range(steps):
        latent = torch.randn(3, 12, 10, generator=data) * (1 + step)
        latent_ref = latent.clone().requires_grad_(True)
        latent_ours = latent.clone().requires_grad_(True)
        torch.manual_seed(100 + step)  # both draw their random rows from the global generator
        expected = reference(latent_ref, frame_rate=12)
        torch.manual_seed(100 + step)
        result = trainer(latent_ours, training=True, generator=None)
        assert torch.equal(result.codes, expected.codes), f"step {step}"
        torch.testing.assert_close(result.quantized, expected.x, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(result.commitment, expected.penalty, rtol=1e-5, atol=1e-6)
        for ref_cb, cb in zip(
            [layer._codebook for rvq in (reference.rvq_first, reference.rvq_rest) for layer in rvq.vq.layers],
            [c for rvq in (ours.rvq_first, ours.rvq_rest) for c in rvq.codebooks()],
            strict=True,
        ):
            assert torch.equal(cb._initialized, ref_cb._initialized)
            torch.testing.assert_close(cb.cluster_usage, ref_cb.cluster_usage, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(cb.embedding_sum, ref_cb.embedding_sum, rtol=1e-5, atol=1e-5)
        # Straight-through: the same gradient reaches the latent.
        weights = torch.randn_like(expected.x)
        (expected.x * weights).sum().backward()
        (result.quantized * weights).sum().backward()
        torch.testing.assert_close(latent_ours.grad, latent_ref.grad, rtol=1e-5, atol=1e-6)
    assert all(c._initialized.item() == 1 for c in ours.rvq_rest.codebooks())


def test_dead_codes_are_replaced_by_batch_vectors():
    _, ours = _pair()
    trainer = SplitQuantizerTrainer(
        ours, CodebookTrainingConfig(check_unused_every=1), quantizer_dropout=False
    )
    latent = torch.randn(2, 12, 20)
    for _ in range(4):  # initialise every level
        trainer(latent, generator=torch.Generator().manual_seed(0))
    codebook = ours.rvq_first.codebooks()[0]
    codebook.cluster_usage[:4] = 0.0  # four codes never used
    total = codebook.cluster_usage.sum()
    result = trainer(latent, generator=torch.Generator().manual_seed(1), step=None)
    assert result.metrics["dead_codes_0"].item() == pytest.approx(4 / 16)
    rows = ours.rvq_first.input_proj(latent).transpose(1, 2).reshape(-1, 8)
    replaced = codebook.embedding_sum[:4] / codebook.cluster_usage[:4, None]
    # Each replaced centroid is a batch vector (moved a little by this step's EMA).
    distance = torch.cdist(replaced, rows).min(dim=1).values
    assert (distance < 0.1 * rows.norm(dim=1).mean()).all()
    assert codebook.cluster_usage[:4].min() > 0.5 * total / 16


def test_quantizer_dropout_and_determinism():
    _, ours = _pair()
    trainer = SplitQuantizerTrainer(ours, quantizer_dropout=True)
    latent = torch.randn(2, 12, 5)
    counts = {trainer(latent, generator=torch.Generator().manual_seed(s)).codes.shape[1] for s in range(30)}
    assert counts == {2, 3, 4}  # 1 semantic + 1..3 acoustic levels
    assert trainer(latent, training=False).codes.shape[1] == 4  # no dropout outside training


def test_kmeans_finds_separated_clusters():
    centers = torch.tensor([[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0]])
    rows = (centers[:, None] + 0.1 * torch.randn(3, 50, 2)).reshape(-1, 2)
    means, counts = kmeans(rows, 3, generator=torch.Generator().manual_seed(0))
    order = torch.cdist(centers, means).argmin(dim=1)
    torch.testing.assert_close(means[order], centers, atol=0.1, rtol=0)
    assert counts.tolist() == [50.0, 50.0, 50.0]


DDP_SCRIPT = """
import sys
import torch
import torch.distributed as dist
from duplex.codec.config import QuantizerConfig
from duplex.codec.quantizer import SplitResidualVectorQuantizer
from duplex.codec.training.quantizer import SplitQuantizerTrainer

rank, path = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method=f"file://{path}/rendezvous", rank=rank, world_size=2)
torch.manual_seed(0)  # same initial weights on both ranks
config = QuantizerConfig(dimension=8, n_q=3, bins=16, input_dimension=12, output_dimension=12)
quantizer = SplitResidualVectorQuantizer(config)
trainer = SplitQuantizerTrainer(quantizer, quantizer_dropout=False)
data = torch.Generator().manual_seed(100 + rank)  # different data on each rank
for step in range(6):
    trainer(torch.randn(2, 12, 10, generator=data), generator=torch.Generator().manual_seed(step), step=step)
torch.save({k: v for k, v in quantizer.state_dict().items()}, f"{path}/rank{rank}.pt")
dist.destroy_process_group()
"""


def test_codebooks_stay_identical_across_data_parallel_ranks(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "ddp_quantizer.py"
    script.write_text(DDP_SCRIPT)
    ranks = [
        subprocess.Popen(
            [sys.executable, str(script), str(r), str(tmp_path)], stderr=subprocess.PIPE, text=True
        )
        for r in (0, 1)
    ]
    for process in ranks:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key
    assert all(states[0][k].item() == 1 for k in states[0] if k.endswith("_initialized"))


def test_a_quantization_rate_decodes_the_other_items_from_their_unquantized_latent():
    """Mimi's 50% quantization: a drawn share of the items passes the projected latent through
    (both RVQs' input and output projections, no codebook), the rest the quantized one; the
    codebooks learn from all of them, and evaluation always quantizes."""
    torch.manual_seed(0)
    ours = SplitResidualVectorQuantizer(QuantizerConfig(**SIZES))
    full = SplitQuantizerTrainer(ours, CodebookTrainingConfig(), quantizer_dropout=False)
    latent = torch.randn(16, 12, 10, generator=torch.Generator().manual_seed(1))
    for _ in range(SIZES["n_q"]):  # k-means initialises one level per step
        full(latent, training=True, generator=torch.Generator().manual_seed(2))
    latent = torch.randn(16, 12, 10, generator=torch.Generator().manual_seed(4))  # new data
    quantized = full(latent, training=False).quantized
    continuous = sum(rvq.output_proj(rvq.input_proj(latent)) for rvq in (ours.rvq_first, ours.rvq_rest))
    half = SplitQuantizerTrainer(
        ours, CodebookTrainingConfig(), quantizer_dropout=False, quantization_rate=0.5
    )
    usage = ours.rvq_first.codebooks()[0].cluster_usage.clone()
    result = half(latent, training=True, generator=torch.Generator().manual_seed(3))
    chosen = torch.rand(16, generator=torch.Generator().manual_seed(3)) < 0.5
    assert 0 < int(chosen.sum()) < 16
    torch.testing.assert_close(result.quantized[chosen], quantized[chosen], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result.quantized[~chosen], continuous[~chosen], rtol=1e-5, atol=1e-5)
    assert not torch.equal(ours.rvq_first.codebooks()[0].cluster_usage, usage)  # learnt from all items
    assert torch.equal(half(latent, training=False).quantized, full(latent, training=False).quantized)
