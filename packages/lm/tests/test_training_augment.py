import pytest
import torch
from duplex.lm.data import ZERO_TOKEN
from duplex.lm.training.augment import corrupt_user_audio

DEP_Q, CARD = 4, 64


def _codes(batch: int = 64, length: int = 50) -> torch.Tensor:
    codes = torch.randint(0, CARD, (batch, 1 + 2 * DEP_Q, length))
    codes[:, 1 + DEP_Q :, :3] = ZERO_TOKEN  # the user silent (zero token) at the start
    return codes


def test_only_the_users_acoustic_codebooks_are_dropped_whole():
    codes = _codes()
    before = codes.clone()
    out = corrupt_user_audio(codes, DEP_Q, CARD, codebook_dropout=0.5, code_noise=0.0)
    assert torch.equal(codes, before)  # the batch itself is left alone
    assert torch.equal(out[:, : 2 + DEP_Q], codes[:, : 2 + DEP_Q])  # text, model audio, user semantic
    acoustic, original = out[:, 2 + DEP_Q :, 3:], codes[:, 2 + DEP_Q :, 3:]
    dropped = (acoustic == ZERO_TOKEN).all(-1)
    kept = (acoustic == original).all(-1)
    assert torch.all(dropped ^ kept)  # each codebook of each window: all dropped or untouched
    assert dropped.float().mean().item() == pytest.approx(0.5, abs=0.1)


def test_noise_replaces_a_share_of_user_codes_and_keeps_zero_tokens():
    codes = _codes()
    out = corrupt_user_audio(codes, DEP_Q, CARD, codebook_dropout=0.0, code_noise=0.2)
    user, original = out[:, 1 + DEP_Q :], codes[:, 1 + DEP_Q :]
    assert torch.all(user[..., :3] == ZERO_TOKEN)
    changed = (user[..., 3:] != original[..., 3:]).float().mean().item()
    assert changed == pytest.approx(0.2 * (1 - 1 / CARD), abs=0.02)
    assert user.min() >= ZERO_TOKEN and user.max() < CARD
    assert torch.equal(out[:, : 1 + DEP_Q], codes[:, : 1 + DEP_Q])


def test_no_corruption_is_the_batch_itself():
    codes = _codes()
    assert corrupt_user_audio(codes, DEP_Q, CARD, 0.0, 0.0) is codes


def test_training_steps_see_the_corrupted_user_audio_and_score_the_model_streams():
    """With every acoustic user codebook dropped, a training step's loss is the loss of the batch
    whose acoustic user codebooks are zero tokens, against the same (uncorrupted) targets."""
    from duplex.lm.config import LMConfig
    from duplex.lm.model import LMModel
    from duplex.lm.training.config import LMTrainingConfig
    from duplex.lm.training.loss import model_loss
    from duplex.lm.training.module import LMTrainingModule

    torch.manual_seed(0)
    model = LMModel(LMConfig.from_preset("tiny"))
    c = model.config
    config = LMTrainingConfig.from_preset("tiny").model_copy(update={"user_codebook_dropout": 1.0})
    module = LMTrainingModule(model, config)
    module.log = module.log_dict = lambda *args, **kwargs: None
    codes = torch.randint(0, c.card, (2, 1 + c.n_q, 12))
    codes[:, 0] = torch.randint(0, c.text_card, (2, 12))
    silenced = codes.clone()
    silenced[:, 2 + c.dep_q :] = ZERO_TOKEN
    expected = model_loss(model, silenced, config)[1].total
    assert module.training_step(codes, 0).item() == pytest.approx(expected.item(), rel=1e-6)
    assert model_loss(model, codes, config)[1].total.item() != pytest.approx(expected.item(), rel=1e-3)
