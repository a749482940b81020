"""`duplex data` and `duplex train`: the commands, checkpoints, and resuming after a crash."""

from __future__ import annotations

import shutil

import pytest
import torch
from duplex.cli.app import app
from duplex.codec import Mimi, MimiConfig
from duplex.codec.training.trainer import read_metrics
from lightning.pytorch.callbacks import Callback
from typer.testing import CliRunner

torch.set_num_threads(1)
runner = CliRunner()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    result = runner.invoke(
        app, ["data", "synth", str(root / "data"), "--dialogues", "2", "--tokenizer-vocab", "64"]
    )
    assert result.exit_code == 0, result.output
    assert "wrote 2 dialogues" in result.output
    torch.manual_seed(0)
    Mimi(MimiConfig.from_preset("tiny")).save_pretrained(root / "mimi.safetensors")
    return root


def test_data_check(dataset, tmp_path):
    result = runner.invoke(app, ["data", "check", str(dataset / "data")])
    assert result.exit_code == 0 and result.output.startswith("ok: 2 files")
    broken = tmp_path / "broken"
    shutil.copytree(dataset / "data", broken)
    (broken / "audio" / "dialogue_00001.json").write_text("{")
    result = runner.invoke(app, ["data", "check", str(broken)])
    assert result.exit_code == 1
    assert "dialogue_00001.json: not valid JSON" in result.output


def test_train_codec_command(dataset, tmp_path):
    args = ["train", "codec", "--data", str(dataset / "data"), "--output", str(tmp_path), "--max-steps", "2"]
    args += [
        "--preset",
        "tiny",
        "--checkpoint-every",
        "1",
        "--batch-size",
        "2",
        "--segment-seconds",
        "0.16",
        "--accelerator",
        "cpu",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    codec = Mimi.from_pretrained(tmp_path / "mimi.safetensors")
    assert codec.config == MimiConfig.from_preset("tiny")


def test_train_lm_command_with_bad_strategy(dataset, tmp_path):
    args = [
        "train",
        "lm",
        "--data",
        str(dataset / "data"),
        "--init",
        "preset:tiny",
        "--output",
        str(tmp_path),
    ]
    args += [
        "--codec",
        str(dataset / "mimi.safetensors"),
        "--tokenizer",
        str(dataset / "data" / "tokenizer.model"),
    ]
    result = runner.invoke(app, [*args, "--strategy", "nope", "--preset", "tiny", "--max-steps", "1"])
    assert result.exit_code != 0
    assert "unknown strategy 'nope'" in str(result.exception)


class CrashAt(Callback):
    """Simulates a crash (power loss, pre-emption) right after training step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index):  # noqa: ANN001
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def _train_lm(dataset, output, callbacks=()):
    from duplex.lm.training.config import LMTrainingConfig
    from duplex.lm.training.run import train_lm

    config = LMTrainingConfig.from_preset("tiny", segment_frames=16, batch_size=2, validation_segments=2)
    return train_lm(
        dataset / "data",
        output,
        "preset:tiny",
        config,
        max_steps=6,
        checkpoint_every=2,
        codec=dataset / "mimi.safetensors",
        tokenizer=dataset / "data" / "tokenizer.model",
        accelerator="cpu",
        progress_bar=False,
        callbacks=callbacks,
    )


def test_interrupted_lm_run_resumes_to_the_same_result(dataset, tmp_path):
    straight = _train_lm(dataset, tmp_path / "straight").model.state_dict()
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train_lm(dataset, tmp_path / "crashed", [CrashAt(5)])
    assert not (tmp_path / "crashed" / "checkpoint").exists()  # the crash came before the export
    resumed = _train_lm(dataset, tmp_path / "crashed").model.state_dict()  # the same command again
    for key, value in straight.items():
        assert torch.equal(resumed[key], value), key
    # Every step is in the logs: the first session's up to the crash, the resumed one's from 4 on.
    steps = sorted({int(r["train/step"]) for r in read_metrics(tmp_path / "crashed") if "train/step" in r})
    assert steps == list(range(6))


def test_interrupted_codec_run_resumes_to_the_same_result(dataset, tmp_path):
    """The adversarial codec run: two optimizers, EMA codebooks, random quantizer dropout."""
    from duplex.codec.training.config import CodecTrainingConfig
    from duplex.codec.training.run import train_codec

    config = CodecTrainingConfig.from_preset(
        "tiny", segment_seconds=0.16, batch_size=2, validation_segments=2
    )

    def run(output, callbacks=()):
        module = train_codec(
            dataset / "data",
            output,
            config,
            max_steps=4,
            checkpoint_every=2,
            accelerator="cpu",
            progress_bar=False,
            callbacks=callbacks,
        )
        return {k: v.clone() for k, v in module.state_dict().items()}

    straight = run(tmp_path / "straight")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "crashed", [CrashAt(6)])  # Lightning counts two optimizer steps per batch
    resumed = run(tmp_path / "crashed")
    for key, value in straight.items():
        assert torch.equal(resumed[key], value), key
