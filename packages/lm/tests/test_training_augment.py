import pytest
import torch
from duplex.lm.training.augment import ZERO_TOKEN, corrupt_user_audio

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
