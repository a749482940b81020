"""LM training runs: full and LoRA fine-tuning, export, bf16 mixed precision."""

from __future__ import annotations

import math

import pytest
import torch
from duplex.codec import Mimi, MimiConfig
from duplex.codec.training.trainer import read_metrics
from duplex.lm.checkpoint import load_checkpoint
from duplex.lm.config import LMConfig
from duplex.lm.data.synth import synthesize_dataset
from duplex.lm.lora import apply_lora, load_lora
from duplex.lm.model import LMModel
from duplex.lm.training.config import LMTrainingConfig
from duplex.lm.training.run import train_lm

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two synthetic dialogues, their tokenizer, a random tiny Mimi and a tiny LM checkpoint."""
    root = tmp_path_factory.mktemp("lm")
    synthesize_dataset(root / "data", 2, seed=2, tokenizer_vocab_size=64)
    torch.manual_seed(0)
    codec = Mimi(MimiConfig.from_preset("tiny"))
    codec.save_pretrained(root / "mimi.safetensors")
    return root


def _config(**overrides) -> LMTrainingConfig:
    return LMTrainingConfig.from_preset(
        "tiny", segment_frames=16, batch_size=4, validation_segments=4, **overrides
    )


def _rows(output):
    return read_metrics(output)


def _run(setup, output, init, steps, config=None, **kwargs):
    return train_lm(
        setup / "data",
        output,
        init,
        config or _config(),
        max_steps=steps,
        codec=setup / "mimi.safetensors",
        tokenizer=setup / "data" / "tokenizer.model",
        checkpoint_every=steps // 2 if steps > 1 else 1,
        progress_bar=False,
        accelerator="cpu",
        **kwargs,
    )


def test_full_training_learns_and_exports(setup, tmp_path):
    module = _run(setup, tmp_path, "preset:tiny", 10)
    rows = _rows(tmp_path)
    train = [r for r in rows if "train/loss" in r]
    val = [r for r in rows if "val/loss" in r]
    assert len(train) == 10 and len(val) == 2
    assert train[-1]["train/loss"] < train[0]["train/loss"]
    assert val[-1]["val/loss"] < val[0]["val/loss"]
    for key in (
        "text_accuracy",
        "audio_accuracy",
        "text_perplexity",
        "audio_perplexity",
        "semantic_accuracy",
    ):
        assert math.isfinite(val[-1][f"val/{key}"])
    # The exported checkpoint is a regular one: LMModel.from_pretrained and load_checkpoint read it.
    exported = LMModel.from_pretrained(tmp_path / "checkpoint")
    trained = module.model.eval()
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(exported.state_dict()[key], value)
    bundle = load_checkpoint(tmp_path / "checkpoint")
    assert bundle.mimi().config == MimiConfig.from_preset("tiny")
    assert bundle.text_tokenizer().vocab_size == exported.config.text_card
    # The codec ran once per file; the cache served the rest.
    assert len(list((tmp_path / "token_cache").glob("*.safetensors"))) == 2


def test_lora_fine_tuning(setup, tmp_path):
    base_dir = tmp_path / "base"
    _run(setup, base_dir, "preset:tiny", 2)
    base = LMModel.from_pretrained(base_dir / "checkpoint")
    module = _run(setup, tmp_path / "lora", str(base_dir / "checkpoint"), 6, lora=True)
    lora_file = tmp_path / "lora" / "lora.safetensors"
    assert lora_file.is_file()
    trained = module.model.eval()
    trainable = {n for n, p in trained.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    codes = torch.randint(0, 32, (1, 7, 12))
    codes[:, 0] = torch.randint(0, 64, (1, 12))
    with torch.no_grad():
        expected = trained(codes)
        # LoRA weights alone, loaded onto the base model, give the trained model back.
        fresh = LMModel.from_pretrained(base_dir / "checkpoint")
        apply_lora(fresh, module.config.lora_rank, module.config.lora_scaling)
        load_lora(fresh, lora_file)
        got = fresh.eval()(codes)
        torch.testing.assert_close(got.logits, expected.logits, rtol=1e-4, atol=1e-5, equal_nan=True)
        assert not torch.allclose(base(codes).text_logits, expected.text_logits)
        # The exported checkpoint names its LoRA file; loading fuses it.
        fused = load_checkpoint(tmp_path / "lora" / "checkpoint").lm()
        torch.testing.assert_close(fused(codes).text_logits, expected.text_logits, rtol=1e-4, atol=1e-5)


def test_the_user_transcript_trains_beside_and_stays_out_of_the_checkpoint(setup, tmp_path):
    config = _config(user_text_weight=1.0, user_text_delay_frames=2)
    module = _run(setup, tmp_path, "preset:tiny", 2, config=config)
    rows = _rows(tmp_path)
    train = [r["train/user_text_loss"] for r in rows if "train/loss" in r]
    val = [r["val/user_text_loss"] for r in rows if "val/loss" in r]
    assert len(train) == 2 and len(val) == 2 and all(map(math.isfinite, train + val))
    assert module.user_text_head is not None
    exported = LMModel.from_pretrained(tmp_path / "checkpoint").state_dict()
    assert exported.keys() == LMModel(module.model.config).state_dict().keys()


def test_bf16_mixed_precision(setup, tmp_path):
    _run(setup, tmp_path, "preset:tiny", 2, precision="bf16-mixed")
    train = [r for r in _rows(tmp_path) if "train/loss" in r]
    assert len(train) == 2 and all(math.isfinite(r["train/loss"]) for r in train)


def test_incompatible_init_is_rejected(setup, tmp_path):
    with pytest.raises(ValueError, match="pass --codec and --tokenizer"):
        train_lm(setup / "data", tmp_path, "preset:tiny", _config(), max_steps=1)
    with pytest.raises(KeyError, match="unknown LMConfig preset"):
        _run(setup, tmp_path, "preset:nope", 2)
    assert LMConfig.from_preset("tiny").n_q == 2 * LMConfig.from_preset("tiny").dep_q
