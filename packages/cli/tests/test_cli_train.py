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
    result = runner.invoke(app, [*args, "--keep-checkpoints", "1"])
    assert result.exit_code == 0, result.output
    # --max-steps counts generator steps (Lightning counts both optimizers): 2 steps, named so;
    # only the newest step checkpoint is kept
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt", "step-2.ckpt"]
    assert sorted({int(r["train/step"]) for r in read_metrics(tmp_path) if "train/step" in r}) == [0, 1]
    codec = Mimi.from_pretrained(tmp_path / "mimi.safetensors")
    assert codec.config == MimiConfig.from_preset("tiny")


def test_train_codec_takes_model_size_and_loss_weights_from_a_config_file(dataset, tmp_path):
    config = tmp_path / "codec.yaml"
    config.write_text(
        "codec:\n  seanet:\n    n_filters: 4\n"  # one field of the preset's codec; the rest stays
        "waveform_weight: 0\nmel_weight: 2.5\nadversarial: false\nbatch_size: 4\nseed: 3\n"
    )
    args = ["train", "codec", "--data", str(dataset / "data"), "--output", str(tmp_path / "run")]
    args += ["--preset", "tiny", "--config", str(config), "--max-steps", "1", "--batch-size", "2"]
    result = runner.invoke(app, [*args, "--segment-seconds", "0.16", "--accelerator", "cpu"])
    assert result.exit_code == 0, result.output
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    used = saved["hyper_parameters"]["config"]
    assert used["codec"]["seanet"]["n_filters"] == 4 and used["codec"]["seanet"]["dimension"] == 16
    assert (used["mel_weight"], used["waveform_weight"], used["adversarial"]) == (2.5, 0.0, False)
    assert used["seed"] == 3 and used["batch_size"] == 2  # the command line wins over the file
    assert not any(k.startswith("discriminator.") for k in saved["state_dict"])
    assert Mimi.from_pretrained(tmp_path / "run" / "mimi.safetensors").config.seanet.n_filters == 4


def test_train_codec_sets_the_adversarial_schedule(tmp_path, monkeypatch):
    """--adversarial/--no-adversarial and --adversarial-start-step, and a config file's
    adversarial_start_step, reach the training config."""
    from duplex.codec.training import run

    used = []
    monkeypatch.setattr(run, "train_codec", lambda data, output, config, **_: used.append(config))
    config = tmp_path / "codec.yaml"
    base = ["train", "codec", "--data", str(tmp_path), "--output", str(tmp_path / "run"), "--max-steps", "1"]

    def schedule(*args: str):  # noqa: ANN202
        result = runner.invoke(app, [*base, "--accelerator", "cpu", *args])
        assert result.exit_code == 0, result.output
        return used[-1].adversarial, used[-1].adversarial_start_step

    # small has no discriminator: the start step switches it on
    assert schedule("--preset", "small") == (False, 0)
    assert schedule("--preset", "small", "--adversarial-start-step", "500") == (True, 500)
    assert schedule("--preset", "small", "--adversarial") == (True, 0)
    assert schedule("--preset", "tiny", "--no-adversarial") == (False, 0)
    config.write_text("adversarial: true\nadversarial_start_step: 300\n")
    from_file = ("--preset", "small", "--config", str(config))
    assert schedule(*from_file) == (True, 300)
    assert schedule(*from_file, "--adversarial-start-step", "7") == (True, 7)  # the flag wins
    assert schedule("--preset", "tiny", "--config", str(config), "--no-adversarial") == (False, 0)

    result = runner.invoke(app, [*base, "--no-adversarial", "--adversarial-start-step", "5"])
    assert result.exit_code == 2 and "drop --no-adversarial" in result.output
    config.write_text("adversarial_start_step: 300\n")  # small's adversarial: false stays
    result = runner.invoke(app, [*base, "--preset", "small", "--config", str(config), "--accelerator", "cpu"])
    assert result.exit_code == 1
    assert "adversarial_start_step is 300 but adversarial is false" in result.output


def test_train_codec_overfit_reaches_the_run_and_refuses_validation_data(tmp_path, monkeypatch):
    from duplex.codec.training import run

    used = []
    monkeypatch.setattr(run, "train_codec", lambda data, output, config, **kw: used.append(kw))
    base = ["train", "codec", "--data", str(tmp_path), "--output", str(tmp_path / "run"), "--max-steps", "1"]
    result = runner.invoke(app, [*base, "--preset", "tiny", "--accelerator", "cpu", "--overfit", "8"])
    assert result.exit_code == 0, result.output
    assert used[-1]["overfit_segments"] == 8 and used[-1]["validation_data"] is None
    result = runner.invoke(app, [*base, "--overfit", "8", "--validation-data", str(tmp_path)])
    assert result.exit_code == 2 and "leave out --validation-data" in result.output
    assert len(used) == 1


def test_small_codec_preset_is_about_4m_parameters():
    from duplex.codec.training.config import CodecTrainingConfig

    config = CodecTrainingConfig.from_preset("small")
    assert config.codec == MimiConfig.from_preset("small")
    seanet, q = config.codec.seanet, config.codec.quantizer
    assert (seanet.n_filters, seanet.dimension, q.n_q, q.bins) == (16, 256, 16, 1024)
    assert config.codec.transformer.num_layers == 2
    parameters = sum(p.numel() for p in Mimi(config.codec).parameters())
    assert 3e6 < parameters < 4.5e6, parameters


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
    assert result.exit_code == 2
    assert "unknown strategy 'nope'" in result.output


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


class Peek(Callback):
    """Keeps the training bar's position and total as the run ends."""

    def on_train_end(self, trainer, module):  # noqa: ANN001
        bar = trainer.progress_bar_callback.train_progress_bar
        self.bar = (bar.n, bar.total)


def test_codec_steps_are_generator_steps_in_names_bar_and_report(dataset, tmp_path, caplog):
    import logging

    from duplex.codec.training.config import CodecTrainingConfig
    from duplex.codec.training.run import train_codec

    config = CodecTrainingConfig.from_preset(
        "tiny", segment_seconds=0.16, batch_size=2, validation_segments=2
    )
    peek = Peek()
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        train_codec(dataset / "data", tmp_path, config, max_steps=3, checkpoint_every=1, accelerator="cpu",
                    callbacks=[peek], keep_checkpoints=2)  # fmt: skip
    assert peek.bar == (3, 3)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "last.ckpt",
        "step-2.ckpt",
        "step-3.ckpt",
    ]
    assert "`max_steps=3` reached" in caplog.text and "max_steps=6" not in caplog.text


def test_a_corrupt_last_checkpoint_falls_back_to_the_newest_good_one(tmp_path):
    import zipfile

    from duplex.codec.training.trainer import last_checkpoint

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    assert last_checkpoint(tmp_path) is None
    for step in (2, 4, 6):
        with zipfile.ZipFile(folder / f"step-{step}.ckpt", "w") as archive:
            archive.writestr("data.pkl", b"x" * 1000)
    (folder / "last.ckpt").write_bytes((folder / "step-6.ckpt").read_bytes())
    assert last_checkpoint(tmp_path) == folder / "last.ckpt"
    (folder / "last.ckpt").write_bytes((folder / "step-6.ckpt").read_bytes()[:500])  # a crash mid-write
    (folder / "step-6.ckpt").write_bytes(b"")
    with pytest.warns(UserWarning, match="last.ckpt is corrupt .*resuming from step-4.ckpt"):
        assert last_checkpoint(tmp_path) == folder / "step-4.ckpt"


def test_max_steps_defaults_to_a_cpu_size_for_tiny_and_full_size_on_a_cpu_warns(capsys):
    from duplex.cli.train import _max_steps

    assert _max_steps("codec", "tiny", None, "cpu") == 150
    assert _max_steps("lm", "tiny", None, "cpu") == 300
    assert capsys.readouterr().err == ""
    assert _max_steps("codec", "mimi", None, "cpu") == 1000
    assert _max_steps("lm", "moshi", 7, "cpu") == 7
    warned = capsys.readouterr().err
    assert "full-size 'mimi' preset on a CPU" in warned and "full-size 'moshi' preset on a CPU" in warned


def test_lm_init_from_an_official_layout_folder_exports(dataset, tmp_path):
    """A checkpoint folder whose Mimi file carries no config (as the reference writes them): the
    codec must be reloaded with the folder's mimi_config.json at export."""
    from duplex.codec.checkpoint import read_safetensors
    from duplex.demo.checkpoints import build_tiny_checkpoint
    from duplex.lm.training.config import LMTrainingConfig
    from duplex.lm.training.run import train_lm
    from safetensors.torch import save_file

    official = build_tiny_checkpoint(tmp_path / "official")
    tensors, _ = read_safetensors(official / "mimi.safetensors")
    save_file(tensors, str(official / "mimi.safetensors"))  # no duplex metadata
    config = LMTrainingConfig.from_preset("tiny", segment_frames=16, batch_size=2, validation_segments=2)
    train_lm(dataset / "data", tmp_path / "run", str(official), config, max_steps=1, checkpoint_every=1,
             accelerator="cpu", progress_bar=False)  # fmt: skip
    exported = tmp_path / "run" / "checkpoint"
    assert Mimi.from_pretrained(exported).config == MimiConfig.from_preset("tiny")
