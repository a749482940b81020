"""`duplex data speech`: writes what codec training reads, held-out clips as its validation data, and
bad input fails in one line."""

from __future__ import annotations

import json

import pytest
import torch
from duplex.cli.app import app
from duplex.codec.training.data import AudioSegments
from typer.testing import CliRunner

torch.set_num_threads(1)
runner = CliRunner()
SEGMENT = 1920 * 4  # 0.32 s


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    root = tmp_path_factory.mktemp("speech")
    for split, clips in (("train", 4), ("heldout", 2)):
        args = ["data", "speech", str(root / split), "--clips", str(clips), "--seconds", "0.5", "--seed", "3"]
        result = runner.invoke(app, [*args, "--split", split])
        assert result.exit_code == 0, result.output
        assert f"wrote {clips} {split} clips" in result.output and "clips/s" in result.output
    return root


def test_codec_training_reads_the_clips(speech):
    segments = AudioSegments.from_folder(speech / "train", 24000, SEGMENT)
    batch = next(iter(torch.utils.data.DataLoader(segments, batch_size=4)))
    assert batch.shape == (4, 1, SEGMENT) and torch.isfinite(batch).all()
    assert (batch.abs().amax(dim=-1) > 0).all()
    records = [json.loads(line) for line in (speech / "train" / "data.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["text"] and r["voice"] for r in records)
    manifest = json.loads((speech / "heldout" / "speech.json").read_text())
    assert manifest["split"] == "heldout" and manifest["seed"] == 3


def test_codec_training_validates_on_the_heldout_folder(speech, tmp_path):
    from duplex.codec.training.config import CodecTrainingConfig
    from duplex.codec.training.run import train_codec, validation_subset
    from lightning.pytorch.callbacks import Callback

    seen = []

    class Spy(Callback):
        def on_fit_start(self, trainer, module):
            seen.append(trainer.datamodule.validation)

    config = CodecTrainingConfig.from_preset("tiny", batch_size=2, segment_seconds=0.32, adversarial=False)
    train_codec(
        speech / "train", tmp_path, config, max_steps=1, accelerator="cpu", progress_bar=False,
        callbacks=[Spy()], validation_data=speech / "heldout",
    )  # fmt: skip
    heldout = AudioSegments.from_folder(speech / "heldout", 24000, config.segment_samples)
    expected = validation_subset(heldout, config.validation_segments)
    assert len(seen[0]) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(seen[0], expected, strict=True))


def test_train_codec_passes_validation_data_and_checks_it(speech, tmp_path, monkeypatch):
    from duplex.codec.training import run

    used = {}
    monkeypatch.setattr(run, "train_codec", lambda data, output, config, **options: used.update(options))
    base = ["train", "codec", "--data", str(speech / "train"), "--output", str(tmp_path), "--preset", "tiny"]
    result = runner.invoke(app, [*base, "--validation-data", str(speech / "heldout")])
    assert result.exit_code == 0, result.output
    assert used["validation_data"] == speech / "heldout"
    result = runner.invoke(app, [*base, "--validation-data", str(tmp_path / "missing")])
    assert result.exit_code == 1
    assert "validation data" in result.output and "pass --validation-data" in result.output


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--split", "test"], 2, "unknown split 'test': choose one of train, heldout"),
        (["--text", "{tmp}/missing.txt"], 1, "does not exist: pass --text a UTF-8 text file"),
        (["--text", "{tmp}/code.txt"], 1, "no usable sentence in"),
        (["--seconds", "0"], 2, "--seconds"),
    ],
)
def test_bad_input_fails_in_one_line(tmp_path, args, code, message):
    (tmp_path / "code.txt").write_text("x = f(1)\n")
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    result = runner.invoke(app, ["data", "speech", str(tmp_path / "out"), "--clips", "1", *args])
    assert result.exit_code == code, result.output
    assert message in result.output and result.output.count("error:") == 1
    assert not (tmp_path / "out" / "data.jsonl").exists()


def test_an_output_that_is_a_file_fails_in_one_line(tmp_path):
    (tmp_path / "out").write_text("")
    result = runner.invoke(app, ["data", "speech", str(tmp_path / "out"), "--clips", "1"])
    assert result.exit_code == 1 and "is a file: pass a folder" in result.output


def test_conversations_are_written_as_a_dataset_the_lm_reads(tmp_path):
    from duplex.lm.data import load_dataset

    result = runner.invoke(app, ["data", "conversations", str(tmp_path / "train"), "-n", "2", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "wrote 2 train conversations" in result.output and "32 scripted questions" in result.output
    assert len(load_dataset(tmp_path / "train")) == 2 and (tmp_path / "train" / "tokenizer.model").is_file()
    bad = runner.invoke(app, ["data", "conversations", str(tmp_path / "x"), "--split", "test"])
    assert bad.exit_code == 2 and "unknown split 'test'" in bad.output and bad.output.count("error:") == 1
