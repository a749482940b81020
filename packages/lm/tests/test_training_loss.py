"""The multistream loss and the LM metrics, against the reference's test outputs and torchmetrics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from duplex.lm.config import LMConfig
from duplex.lm.model import LMModel
from duplex.lm.training.loss import multistream_loss
from duplex.lm.training.metrics import MaskedPerplexity, MaskedTokenAccuracy
from safetensors.torch import load_file

ASSETS = Path(__file__).parent / "assets"  # the reference's own test files (docs/architecture.md §3.8)


def _naive_loss(logits, mask, text_logits, text_mask, codes, semantic_weight, padding_weight, pad_id):
    """Position by position, straight from the definition."""
    text_num = text_den = audio_num = audio_den = 0.0
    batch, dep_q, length, _ = logits.shape
    for b in range(batch):
        for t in range(length):
            if text_mask[b, 0, t]:
                target = int(codes[b, 0, t])
                w = padding_weight if target == pad_id else 1.0
                text_num += w * -torch.log_softmax(text_logits[b, 0, t].double(), -1)[target].item()
                text_den += w
            for k in range(dep_q):
                if mask[b, k, t]:
                    w = semantic_weight if k == 0 else 1.0
                    target = int(codes[b, 1 + k, t])
                    audio_num += w * -torch.log_softmax(logits[b, k, t].double(), -1)[target].item()
                    audio_den += w
    return text_num / text_den + audio_num / audio_den


@pytest.fixture(scope="module")
def reference():
    codes = load_file(str(ASSETS / "test_lm_codes.safetensors"))["codes"]
    out = load_file(str(ASSETS / "test_lm_out.safetensors"))
    return codes, out


def test_loss_of_the_reference_outputs(reference):
    codes, out = reference
    assert (codes[:, 0] == 3).any()  # the text stream holds the padding id: its weight is exercised
    loss = multistream_loss(
        out["logits"], out["mask"], out["text_logits"], out["text_mask"], codes, semantic_weight=100.0
    )
    expected = _naive_loss(
        out["logits"], out["mask"], out["text_logits"], out["text_mask"], codes, 100.0, 0.5, 3
    )
    assert loss.total.item() == pytest.approx(expected, rel=1e-5)
    assert torch.isfinite(loss.per_codebook).all()


def test_our_model_gives_the_reference_loss(reference):
    codes, out = reference
    model = LMModel(LMConfig.from_preset("reference-test"))
    from duplex.lm.checkpoint import load_lm_state_dict

    load_lm_state_dict(model, load_file(str(ASSETS / "test_lm_model.safetensors")))
    ours = model(codes)
    kwargs = dict(semantic_weight=100.0, text_padding_weight=0.5)
    ours_loss = multistream_loss(ours.logits, ours.mask, ours.text_logits, ours.text_mask, codes, **kwargs)
    ref_loss = multistream_loss(
        out["logits"], out["mask"], out["text_logits"], out["text_mask"], codes, **kwargs
    )
    torch.testing.assert_close(ours_loss.total, ref_loss.total, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_loss.per_codebook, ref_loss.per_codebook, rtol=1e-5, atol=1e-6)
    # Gradients flow to every parameter the loss depends on.
    ours_loss.total.backward()
    assert model.text_linear.weight.grad is not None and model.linears[0].weight.grad is not None


def test_masked_positions_do_not_count():
    logits = torch.randn(2, 2, 5, 7)
    text_logits = torch.randn(2, 1, 5, 9)
    codes = torch.randint(0, 7, (2, 3, 5))
    mask = torch.ones(2, 2, 5, dtype=torch.bool)
    mask[:, 1, -1] = False
    text_mask = torch.ones(2, 1, 5, dtype=torch.bool)
    base = multistream_loss(logits, mask, text_logits, text_mask, codes).total
    noisy = logits.clone()
    noisy[:, 1, -1] = float("nan")  # the model leaves NaN where a delay gives no prediction
    assert multistream_loss(noisy, mask, text_logits, text_mask, codes).total.item() == pytest.approx(
        base.item()
    )


def test_accuracy_and_perplexity_match_torchmetrics():
    from torchmetrics.classification import MulticlassAccuracy
    from torchmetrics.text import Perplexity

    torch.manual_seed(0)
    logits = torch.randn(3, 2, 6, 11)
    targets = torch.randint(0, 11, (3, 2, 6))
    logits[0, 0, 1, targets[0, 0, 1]] += 10  # one sure hit
    mask = torch.rand(3, 2, 6) > 0.3
    accuracy, perplexity = MaskedTokenAccuracy(), MaskedPerplexity()
    accuracy.update(logits, targets, mask)
    perplexity.update(logits, targets, mask)
    ignored = torch.where(mask, targets, -100)
    expected_accuracy = MulticlassAccuracy(num_classes=11, average="micro", ignore_index=-100)(
        logits.reshape(-1, 11), ignored.reshape(-1)
    )
    expected_perplexity = Perplexity(ignore_index=-100)(logits.reshape(1, -1, 11), ignored.reshape(1, -1))
    torch.testing.assert_close(accuracy.compute(), expected_accuracy)
    torch.testing.assert_close(perplexity.compute(), expected_perplexity, rtol=1e-5, atol=1e-5)
