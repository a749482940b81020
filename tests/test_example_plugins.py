"""The example plugins of examples/plugins/, installed as outside packages (the dev dependency group)
and used the way a user would: through duplex's own commands.

* duplex-windowed-backbone: a backbone with its own config fields, trained with `duplex train lm`,
  saved, loaded back and served by `duplex serve`.
* duplex-frame-dct: a codec, used by `duplex codec roundtrip --codec` and by `duplex train lm`.
* duplex-blocked-linear (a kernel): tests/test_kernel_conformance.py.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import pytest
import torch
from duplex.cli.app import app
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "packages" / "stream" / "tests"))
from stream_helpers import start_duplex_serve  # noqa: E402  (duplex serve started as a user does)

runner = CliRunner()
BACKBONE = {"backbone": "windowed-gqa", "backbone_config": {"window": 5, "kv_heads": 1}}


@pytest.fixture(scope="module")
def dialogues(tmp_path_factory) -> Path:
    """Two espeak-ng dialogues in the moshi-finetune layout, with their tokenizer."""
    data = tmp_path_factory.mktemp("dialogues") / "data"
    result = runner.invoke(app, ["data", "synth", str(data), "--dialogues", "2", "--tokenizer-vocab", "64"])
    assert result.exit_code == 0, result.output
    return data


@pytest.fixture(scope="module")
def windowed_checkpoint(tmp_path_factory):
    """A random checkpoint in the official layout whose LM uses the plugin backbone."""
    from duplex.demo.checkpoints import tiny_lm_config
    from duplex.demo.random_checkpoint import write_random_checkpoint
    from duplex.lm.config import LMConfig

    root = tmp_path_factory.mktemp("plugins")
    config = LMConfig.model_validate({**tiny_lm_config(), **BACKBONE})
    return write_random_checkpoint(root / "init", config, seed=0)


def test_the_backbone_options_are_validated_by_the_plugin(windowed_checkpoint):
    from duplex.demo.checkpoints import tiny_lm_config
    from duplex.lm.config import LMConfig
    from duplex.lm.model import LMModel

    for bad, message in (({"window": 0}, "window"), ({"stride": 2}, "stride")):
        config = LMConfig.model_validate({**tiny_lm_config(), **BACKBONE, "backbone_config": bad})
        with pytest.raises(ValueError, match=f"backbone_config of backbone 'windowed-gqa': .*{message}"):
            LMModel(config)
    with pytest.raises(ValueError, match="the backbone 'helium' takes no options"):
        LMModel(LMConfig.model_validate({**tiny_lm_config(), "backbone_config": {"window": 5}}))


def test_the_plugin_backbone_trains_saves_loads_and_serves(windowed_checkpoint, dialogues, tmp_path):
    from duplex.lm.checkpoint import load_checkpoint

    data = dialogues
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        ["train", "lm", "--data", str(data), "--init", str(windowed_checkpoint), "--output", str(run),
         "--preset", "tiny", "--max-steps", "2", "--checkpoint-every", "2", "--batch-size", "2",
         "--segment-frames", "16", "--accelerator", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    exported = run / "checkpoint"
    saved = json.loads((exported / "config.json").read_text())
    assert {key: saved[key] for key in BACKBONE} == BACKBONE
    initial = load_checkpoint(windowed_checkpoint).lm()
    trained = load_checkpoint(exported).lm()
    assert type(trained.transformer).__name__ == "WindowedGQA"
    assert type(trained.transformer).__module__ == "duplex_windowed_backbone"
    attention = trained.transformer.layers[0].self_attn
    assert attention.context == 5 and attention.kv_repeat == trained.config.num_heads
    moved = [k for k, v in trained.state_dict().items() if not torch.equal(v, initial.state_dict()[k])]
    assert any(k.startswith("transformer.layers.") for k in moved)  # the plugin's weights trained

    server, port = start_duplex_serve(exported, tmp_path / "serve.log", "--max-conversations", "1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as response:
            assert response.status == 200
        pcm = tmp_path / "in.wav"
        from duplex.codec.audio import save_audio

        save_audio(pcm, 0.1 * torch.randn(1, 24_000), 24_000)
        result = runner.invoke(
            app, ["client", "--url", f"ws://127.0.0.1:{port}/api/chat", "--input", str(pcm),
                  "--output", str(tmp_path / "reply.wav"), "--no-realtime"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert (tmp_path / "reply.wav").stat().st_size > 0
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_plugin_codec_round_trips_from_the_cli_and_trains_the_lm(dialogues, tmp_path):
    from duplex.codec.audio import load_audio, save_audio
    from duplex.codec.codecs import load_codec
    from duplex.lm.checkpoint import load_checkpoint
    from duplex_frame_dct import FrameDCTCodec, FrameDCTConfig

    speech = [load_audio(path) for path in sorted(dialogues.rglob("*.wav"))]  # [1, T] each
    torch.manual_seed(0)
    codec = FrameDCTCodec(FrameDCTConfig(levels=4, bins=32, coefficients=64)).fit(speech[0][None])
    codec.save_pretrained(tmp_path / "codec")
    assert json.loads((tmp_path / "codec" / "config.json").read_text())["codec"] == "frame-dct"

    # duplex codec, told by the checkpoint's config.json (and by --codec) which codec to build
    source = tmp_path / "in.wav"
    save_audio(source, speech[0][:, 24_000 : 6 * 24_000 + 700], 24_000)  # part of what it was fit on
    for extra in ([], ["--codec", "frame-dct"]):
        out = tmp_path / "out.wav"
        result = runner.invoke(
            app,
            [
                "codec",
                "roundtrip",
                *extra,
                "--checkpoint",
                str(tmp_path / "codec"),
                "-k",
                "4",
                str(source),
                str(out),
            ],
        )
        assert result.exit_code == 0, result.output
        loaded = load_codec(tmp_path / "codec")
        assert isinstance(loaded, FrameDCTCodec)
        wav = load_audio(source)[None]
        expected = loaded.decode(loaded.encode(wav))[..., : wav.shape[-1]]
        got = load_audio(out)[None]
        assert got.shape == expected.shape
        assert (got - expected).abs().max() < 2e-4  # 16-bit wav rounding; streamed as batch
        error = ((got - wav) ** 2).mean() / (wav**2).mean()
        assert error < 0.95  # it carries some of the signal (a coarse, low-passed copy; silence: 1.0)
    result = runner.invoke(
        app, ["codec", "roundtrip", "--codec", "nope", str(source), str(tmp_path / "x.wav")]
    )
    assert result.exit_code == 2 and "unknown codec 'nope'" in result.output

    # duplex train lm with that codec: the exported checkpoint names it and loads it back
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        ["train", "lm", "--data", str(dialogues), "--init", "preset:tiny", "--codec", str(tmp_path / "codec"),
         "--tokenizer", str(dialogues / "tokenizer.model"), "--output", str(run), "--preset", "tiny",
         "--max-steps", "2", "--checkpoint-every", "2", "--batch-size", "2", "--segment-frames", "16",
         "--accelerator", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    bundle = load_checkpoint(run / "checkpoint")
    assert bundle.config.codec == "frame-dct" and bundle.config.card == 32
    exported = bundle.codec()
    assert isinstance(exported, FrameDCTCodec)
    assert torch.equal(exported.codebooks, codec.codebooks)
