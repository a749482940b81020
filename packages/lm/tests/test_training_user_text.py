"""The training-only user transcript: its targets, its loss and that checkpoints never hold it."""

from __future__ import annotations

import pytest
import torch
from duplex.lm.config import LMConfig
from duplex.lm.data import ZERO_TOKEN
from duplex.lm.data.format import MAIN_SPEAKER, USER_SPEAKER, Word
from duplex.lm.data.interleave import TEXT_PAD, text_stream
from duplex.lm.model import LMModel
from duplex.lm.training.config import LMTrainingConfig
from duplex.lm.training.loss import model_loss, text_cross_entropy
from duplex.lm.training.module import LMTrainingModule
from duplex.lm.training.user_text import UserTextHead


def _tokenize(word: str) -> list[int]:
    return [4 + (ord(c) % 20) for c in word]


def test_the_user_text_row_is_the_users_words_alone():
    words = [
        Word("hi", 0.0, 0.3, USER_SPEAKER),
        Word("hello", 0.8, 1.2, MAIN_SPEAKER),
        Word("bye", 1.6, 1.9, USER_SPEAKER),
    ]
    heard = text_stream(words, _tokenize, 30, speaker=USER_SPEAKER)
    spoken = text_stream(words, _tokenize, 30)
    assert heard[:2].tolist() == _tokenize("hi") and heard[20:23].tolist() == _tokenize("bye")
    assert spoken[10:15].tolist() == _tokenize("hello") and torch.all(heard[10:15] == TEXT_PAD)


def test_the_head_predicts_the_user_token_delay_frames_back():
    head = UserTextHead(dim=8, text_card=30, delay_frames=3)
    hidden = torch.randn(2, 10, 8)
    user_text = torch.arange(20).view(2, 10)
    logits, targets = head(hidden, user_text)
    assert logits.shape == (2, 7, 30)
    torch.testing.assert_close(logits, head.linear(hidden[:, 3:]))
    assert torch.equal(targets, user_text[:, :7])  # the state at step t answers for frame t - 3
    with pytest.raises(ValueError, match="user_text_delay_frames"):
        head(hidden[:, :3], user_text[:, :3])


def test_zero_tokens_and_padding_weigh_as_in_the_text_loss():
    head = UserTextHead(dim=8, text_card=30, delay_frames=0)
    hidden = torch.randn(1, 6, 8)
    user_text = torch.tensor([[5, TEXT_PAD, TEXT_PAD, 7, ZERO_TOKEN, ZERO_TOKEN]])
    logits = head.linear(hidden)
    ce = torch.nn.functional.cross_entropy(logits[0, :4], user_text[0, :4], reduction="none")
    weights = torch.tensor([1.0, 0.5, 0.5, 1.0])
    expected = (ce * weights).sum() / weights.sum()
    got = head.loss(hidden, user_text, padding_id=TEXT_PAD, padding_weight=0.5)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(
        got, text_cross_entropy(logits, user_text, user_text != ZERO_TOKEN, TEXT_PAD, 0.5)
    )


def test_a_training_step_adds_the_weighted_user_text_loss():
    torch.manual_seed(0)
    model = LMModel(LMConfig.from_preset("tiny"))
    c = model.config
    config = LMTrainingConfig.from_preset("tiny").model_copy(
        update={"user_text_weight": 0.7, "user_text_delay_frames": 2}
    )
    module = LMTrainingModule(model, config)
    logged = {}
    module.log_dict = lambda values, **kwargs: logged.update(values)
    module.log = lambda *args, **kwargs: None
    batch = torch.randint(0, c.card, (2, 2 + c.n_q, 12))
    batch[:, 0] = torch.randint(0, c.text_card, (2, 12))
    batch[:, -1] = torch.randint(0, c.text_card, (2, 12))
    output, loss = model_loss(model, batch[:, :-1], config)
    heard = module.user_text_head.loss(output.hidden, batch[:, -1], c.existing_text_padding_id, 0.5)
    total = module.training_step(batch, 0)
    assert total.item() == pytest.approx((loss.total + 0.7 * heard).item(), rel=1e-6)
    assert logged["train/user_text_loss"].item() == pytest.approx(heard.item(), rel=1e-6)
    # The head trains the temporal transformer: its loss alone reaches the backbone's weights.
    model.zero_grad()
    heard.backward()
    backbone = [p.grad for n, p in model.named_parameters() if n.startswith("transformer.")]
    assert any(g is not None and g.abs().sum() > 0 for g in backbone)
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("depformer"))
