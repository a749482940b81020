"""The CLI's error contract, mistake by mistake: one `error: ...` line naming the thing (and the fix),
exit 2 for usage errors and 1 for runtime errors, no traceback unless `--debug`.

Every case runs in-process (CliRunner) and fails before any model runs, so the table is fast."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from duplex.cli.app import app
from duplex.demo.checkpoints import build_tiny_checkpoint
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

runner = CliRunner()
RATE = 24_000


def _dialogue(folder: Path, seconds: float = 2.0) -> Path:
    """A one-dialogue moshi-finetune dataset (noise, two speakers), without espeak-ng."""
    audio = folder / "audio"
    audio.mkdir(parents=True)
    noise = np.random.default_rng(0).normal(0, 0.1, (int(seconds * RATE), 2)).astype(np.float32)
    soundfile.write(str(audio / "d0.wav"), noise, RATE)
    words = [["hello", [0.1, 0.5], "SPEAKER_MAIN"], ["hi", [0.8, 1.1], "SPEAKER_USER"]]
    (audio / "d0.json").write_text(json.dumps({"alignments": words}))
    (folder / "data.jsonl").write_text(json.dumps({"path": "audio/d0.wav", "duration": seconds}) + "\n")
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The good files and one broken copy of each kind the table needs."""
    root = tmp_path_factory.mktemp("mistakes")
    demo = build_tiny_checkpoint(root / "demo")
    good = _dialogue(root / "data")
    paths = {"root": root, "demo": demo, "data": good, "wav": good / "audio" / "d0.wav"}

    def copy(name: str, source: Path) -> Path:
        return Path(shutil.copytree(source, root / name))

    paths["bad_jsonl"] = copy("bad_jsonl", good)
    (paths["bad_jsonl"] / "data.jsonl").write_text('{"path": "audio/d0.wav", "duration": 2.0}\n{oops\n')
    paths["no_wav"] = copy("no_wav", good)
    (paths["no_wav"] / "audio" / "d0.wav").unlink()
    paths["mono"] = copy("mono", good)
    soundfile.write(str(paths["mono"] / "audio" / "d0.wav"), np.zeros(2 * RATE, np.float32), RATE)
    paths["late_word"] = copy("late_word", good)
    late = [["late", [5.0, 5.5], "SPEAKER_MAIN"]]
    (paths["late_word"] / "audio" / "d0.json").write_text(json.dumps({"alignments": late}))
    paths["long_index"] = copy("long_index", good)
    (paths["long_index"] / "data.jsonl").write_text('{"path": "audio/d0.wav", "duration": 900}\n')

    weights = (demo / "mimi.safetensors").read_bytes()
    paths["truncated"] = root / "truncated.safetensors"
    paths["truncated"].write_bytes(weights[: len(weights) // 2])
    paths["list_config"] = copy("list_config", demo)
    (paths["list_config"] / "mimi_config.json").write_text("[1, 2]")
    paths["bad_json"] = copy("bad_json", demo)
    paths["int8_saved"] = copy("int8_saved", demo)  # a config saved quantized (weights never read)
    saved = json.loads((demo / "config.json").read_text()) | {"low_precision": {"format": "int8"}}
    (paths["int8_saved"] / "config.json").write_text(json.dumps(saved))
    (paths["bad_json"] / "config.json").write_text('{"dim": ')
    paths["truncated_lm"] = copy("truncated_lm", demo)
    lm = (demo / "model.safetensors").read_bytes()
    (paths["truncated_lm"] / "model.safetensors").write_bytes(lm[: len(lm) // 3])
    paths["nan_lm"] = copy("nan_lm", demo)
    state = load_file(str(demo / "model.safetensors"))
    state["transformer.layers.0.gating.linear_out.weight"][0, 0] = float("nan")
    save_file(state, str(paths["nan_lm"] / "model.safetensors"), metadata={"format": "pt"})
    paths["typo_config"] = root / "typo.yaml"
    paths["typo_config"].write_text("codec:\n  seanet:\n    nfilters: 8\n")
    paths["negative_config"] = root / "negative.json"
    paths["negative_config"].write_text('{"mel_weight": -1}')
    paths["broken_yaml"] = root / "broken.yml"
    paths["broken_yaml"].write_text("codec: [1, 2\n")
    paths["list_yaml"] = root / "list.yaml"
    paths["list_yaml"].write_text("- mel_weight: 1\n")
    paths["text"] = root / "notes.wav"
    paths["text"].write_text("not audio")
    paths["codes"] = root / "not_codes.safetensors"
    save_file({"x": torch.zeros(2)}, str(paths["codes"]))
    return paths


@pytest.fixture(scope="module")
def busy_port():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def _lm(data: str) -> list[str]:
    return [
        "train",
        "lm",
        "--data",
        data,
        "--output",
        "{root}/lm_run",
        "--init",
        "preset:tiny",
        "--preset",
        "tiny",
        "--codec",
        "{demo}/mimi.safetensors",
        "--tokenizer",
        "{demo}/tokenizer.model",
    ]


CODEC_TRAIN = ["train", "codec", "--output", "{root}/codec_run", "--preset", "tiny"]
# (arguments, exit code, what the error line must say)
MISTAKES = [
    # the command itself
    (["trian"], 2, "No such command 'trian'"),
    (["--verbose", "info"], 2, "No such option: --verbose"),
    (["info", "--all"], 2, "No such option: --all"),
    # duplex codec
    (["codec", "encode", "{root}/missing.wav", "{root}/c.safetensors"], 1, "audio file not found"),
    (["codec", "encode", "{text}", "{root}/c.safetensors", "-c", "{demo}"], 1, "notes.wav as audio"),
    (["codec", "roundtrip", "{wav}", "{root}/o.wav", "-c", "{root}/nowhere.safetensors"], 1, "nowhere"),
    (
        ["codec", "roundtrip", "{wav}", "{root}/o.wav", "-c", "{truncated}"],
        1,
        "truncated.safetensors is not a complete",
    ),
    (
        ["codec", "roundtrip", "{wav}", "{root}/o.wav", "-c", "{list_config}"],
        1,
        "mimi_config.json must hold a JSON object",
    ),
    (
        ["codec", "roundtrip", "{wav}", "{root}/o.wav", "-c", "{bad_json}"],
        1,
        "bad_json/config.json is not valid JSON",
    ),
    (["codec", "decode", "{codes}", "{root}/o.wav", "-c", "{demo}"], 1, "one tensor named 'codes'"),
    (
        ["codec", "encode", "{wav}", "{root}/c.safetensors", "-k", "x"],
        2,
        "Invalid value for '--num-codebooks'",
    ),
    # duplex run: the input is checked before the (here missing) checkpoint is loaded
    (["run", "--checkpoint", "{root}/nowhere", "{root}/missing.wav"], 1, "missing.wav"),
    (
        ["run", "--checkpoint", "{truncated_lm}", "{wav}", "{root}/r.wav"],
        1,
        "model.safetensors is not a complete",
    ),
    (
        ["run", "--checkpoint", "{nan_lm}", "{wav}", "{root}/r.wav"],
        1,
        "'transformer.layers.0.gating.linear_out.weight' holds 1 NaN/Inf",
    ),
    (
        ["run", "--checkpoint", "{list_config}", "{wav}", "{root}/r.wav"],
        1,
        "mimi_config.json must hold a JSON object",
    ),
    (["run", "--dtype", "float8", "{wav}"], 2, "--dtype must be one of"),
    (["run", "--quantize", "int4", "{wav}"], 2, "'--quantize': must be one of none, bf16, int8, got 'int4'"),
    (
        ["run", "--checkpoint", "{int8_saved}", "--quantize", "bf16", "{wav}", "{root}/r.wav"],
        1,
        "is saved in int8; it cannot be loaded as bf16",
    ),
    # duplex asr: the inputs are read before the model loads
    (["asr", "{root}/missing.wav", "-c", "{demo}"], 1, "missing.wav"),
    (
        ["asr", "{wav}", "-c", "{demo}"],
        1,
        "a 'moshi' checkpoint, not speech recognition (model_type 'stt'); use `duplex run`",
    ),
    (["asr", "{wav}", "-c", "{demo}", "--format", "doc"], 2, "must be one of txt, json, srt"),
    (["asr", "{wav}", "-c", "{demo}", "--quantize", "fp8"], 2, "must be one of none, bf16, int8"),
    (["asr", "{wav}", "{wav}", "-c", "{demo}", "-o", "{text}"], 2, "with 2 inputs, give a folder"),
    # duplex tts: text and options are checked before the model loads
    (["tts", "hello", "{root}/t.wav", "-c", "{demo}"], 1, "a 'moshi' checkpoint, not text-to-speech"),
    (["tts", "{root}/none.txt", "{root}/t.wav", "-c", "{demo}"], 1, "text file {root}/none.txt does not"),
    (["tts", "hello", "{root}/t.wav", "--temperature", "-1"], 2, "Invalid value for '--temperature'"),
    (["tts", "hello", "{root}/t.wav", "--cfg", "0"], 2, "Invalid value for '--cfg'"),
    (["tts", "hello", "{root}/t.wav", "--quantize", "int4"], 2, "Invalid value for '--quantize'"),
    # duplex translate
    (["translate", "{root}/missing.wav", "-c", "{demo}"], 1, "missing.wav"),
    (
        ["translate", "{wav}", "{root}/t.wav", "-c", "{demo}"],
        1,
        "a 'moshi' checkpoint, not speech translation",
    ),
    (["translate", "{wav}", "{root}/t.wav", "--cfg", "-2"], 2, "Invalid value for '--cfg'"),
    (["translate", "{wav}", "{root}/t.wav", "--quantize", "INT8"], 2, "Invalid value for '--quantize'"),
    # duplex serve and client
    (["serve", "--port", "{busy_port}"], 1, "port {busy_port} on 127.0.0.1 is already in use"),
    (["serve", "--port", "http"], 2, "Invalid value for '--port'"),
    (["serve", "--port", "0", "--quantize", "int4"], 2, "must be one of none, bf16, int8, got 'int4'"),
    (
        ["client", "--url", "http://127.0.0.1:8998/", "--input", "{wav}"],
        2,
        "try --url ws://127.0.0.1:8998/api/chat",
    ),
    (["client", "--input", "{root}/missing.wav"], 1, "audio file not found"),
    # duplex train
    (CODEC_TRAIN + ["--data", "{root}/nowhere"], 1, "training data {root}/nowhere does not exist"),
    (CODEC_TRAIN + ["--data", "{data}", "--preset", "huge"], 2, "unknown training preset 'huge'"),
    (CODEC_TRAIN + ["--data", "{data}", "--strategy", "nope"], 2, "unknown strategy 'nope'"),
    (CODEC_TRAIN + ["--data", "{data}", "--max-steps", "0"], 2, "--max-steps"),
    (
        CODEC_TRAIN + ["--data", "{data}", "--config", "{typo_config}"],
        1,
        "invalid CodecTrainingConfig (from {typo_config}): codec.seanet.nfilters: Extra inputs",
    ),
    (
        CODEC_TRAIN + ["--data", "{data}", "--config", "{negative_config}"],
        1,
        "mel_weight: Input should be greater than or equal to 0",
    ),
    (CODEC_TRAIN + ["--data", "{data}", "--config", "{broken_yaml}"], 1, "broken.yml is not valid YAML"),
    (CODEC_TRAIN + ["--data", "{data}", "--config", "{list_yaml}"], 1, "must hold a mapping of training"),
    (CODEC_TRAIN + ["--data", "{data}", "--config", "{root}/none.json"], 1, "{root}/none.json does not"),
    (
        ["train", "lm", "--data", "{data}", "--output", "{root}/o", "--init", "preset:small"],
        2,
        "unknown LM preset 'small'",
    ),
    (
        ["train", "lm", "--data", "{data}", "--output", "{root}/o", "--init", "preset:tiny"],
        2,
        "pass --codec and --tokenizer",
    ),
    (["train", "lm", "--data", "{data}", "--init", "preset:tiny"], 2, "Missing option '--output'"),
    (_lm("{root}/nowhere"), 1, "training data {root}/nowhere does not exist"),
    (_lm("{bad_jsonl}"), 1, "bad_jsonl/data.jsonl:2: not valid JSON"),
    (_lm("{no_wav}"), 1, "no_wav/audio/d0.wav does not exist"),
    (_lm("{mono}"), 1, "expected stereo audio (model left, user right), got 1 channel"),
    (_lm("{late_word}"), 1, "word 'late' at [5.000, 5.500] s lies outside the audio (2.000 s)"),
    (_lm("{long_index}"), 1, "the index says 900 s but the audio lasts 2.000 s"),
    # duplex data
    (["data", "check", "{root}/nowhere"], 1, "dataset {root}/nowhere does not exist"),
    (["data", "check", "{bad_jsonl}"], 1, "invalid dataset: {bad_jsonl}/data.jsonl:2: not valid JSON"),
    (["data", "check", "{long_index}"], 1, "the index says 900 s"),
    (["data", "synth", "{root}/s", "--dialogues", "0"], 2, "--dialogues"),
]


@pytest.mark.parametrize(
    ("args", "code", "message"), MISTAKES, ids=lambda v: " ".join(v)[:60] if isinstance(v, list) else None
)
def test_a_mistake_prints_one_error_line(files, busy_port, args, code, message):
    names = {key: str(value) for key, value in files.items()} | {"busy_port": str(busy_port)}
    started = time.monotonic()
    result = runner.invoke(app, [arg.format(**names) for arg in args])
    elapsed = time.monotonic() - started
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert result.exit_code == code, result.output
    assert len(errors) == 1, result.output
    assert message.format(**names) in errors[0], result.output
    assert "Traceback" not in result.output
    assert elapsed < 20, f"{elapsed:.1f} s to report a mistake"


def test_at_least_25_mistakes_across_every_command_group():
    assert len(MISTAKES) >= 25
    groups = {args[0] for args, _, _ in MISTAKES}
    assert {"codec", "run", "serve", "client", "train", "data", "info"} <= groups


def test_debug_shows_the_traceback(files):
    args = ["codec", "roundtrip", str(files["wav"]), "o.wav", "-c", str(files["truncated"])]
    quiet = runner.invoke(app, args)
    loud = runner.invoke(app, ["--debug", *args])
    assert quiet.exit_code == loud.exit_code == 1
    assert "Traceback" not in quiet.output and "Traceback (most recent call last)" in loud.output
    assert "CheckpointError" in loud.output and loud.output.rstrip().splitlines()[-1].startswith("error: ")


def test_a_missing_local_checkpoint_fails_fast_offline_naming_the_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `runs/` does not exist here, so `runs/lm` could be a repo id
    started = time.monotonic()
    result = runner.invoke(app, ["run", "--checkpoint", "runs/lm"], env={"HF_HUB_OFFLINE": "1"})
    assert time.monotonic() - started < 2
    assert result.exit_code == 1, result.output
    assert f"checkpoint 'runs/lm' is not a local file or folder ({tmp_path}/runs/lm does not exist)" in (
        result.output
    )
    (tmp_path / "runs").mkdir()  # now the path is plainly local: never a hub lookup
    result = runner.invoke(app, ["run", "--checkpoint", "runs/lm"], env={"HF_HUB_OFFLINE": "1"})
    assert result.exit_code == 1 and "checkpoint not found: runs/lm" in result.output
    assert "Hugging Face" not in result.output


def test_codec_defaults_to_the_bundled_demo(files, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(files["root"] / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from duplex.demo.checkpoints import default_checkpoint

    built = default_checkpoint()
    result = runner.invoke(app, ["codec", "roundtrip", str(files["wav"]), str(tmp_path / "o.wav")])
    assert result.exit_code == 0, result.output
    decoded, rate = soundfile.read(str(tmp_path / "o.wav"), dtype="float32")
    direct = runner.invoke(
        app, ["codec", "roundtrip", str(files["wav"]), str(tmp_path / "d.wav"), "-c", str(built)]
    )
    assert direct.exit_code == 0, direct.output
    assert np.array_equal(decoded, soundfile.read(str(tmp_path / "d.wav"), dtype="float32")[0])
