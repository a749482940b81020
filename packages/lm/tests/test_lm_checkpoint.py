"""config.json handling, checkpoint bundles and sources, strict loading and backbone registration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from duplex.codec import checkpoint as codec_checkpoint
from duplex.codec.checkpoint import CheckpointError
from duplex.codec.nn import TransformerConfig
from duplex.codec.streaming import StreamingModule, StreamingState
from duplex.lm import checkpoint
from duplex.lm.checkpoint import load_checkpoint, load_lm
from duplex.lm.config import LMConfig
from duplex.lm.generate import LMGen
from duplex.lm.model import LMModel
from duplex.lm.registry import BACKBONES
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

ASSETS = Path(__file__).parent / "assets"

# configs/moshi_7b_202409.json of the reference repository, verbatim.
MOSHI_7B_JSON = """{
    "dim": 4096, "text_card": 32000, "existing_text_padding_id": 3, "n_q": 16, "dep_q": 8,
    "card": 2048, "num_heads": 32, "num_layers": 32, "hidden_scale": 4.125, "causal": true,
    "layer_scale": null, "context": 3000, "max_period": 10000, "gating": "silu",
    "norm": "rms_norm_f32", "positional_embedding": "rope", "depformer_dim": 1024,
    "depformer_dim_feedforward": 4224, "depformer_num_heads": 16, "depformer_num_layers": 6,
    "depformer_causal": true, "depformer_layer_scale": null, "depformer_multi_linear": true,
    "depformer_context": 8, "depformer_max_period": 10000, "depformer_gating": "silu",
    "depformer_pos_emb": "none", "depformer_weights_per_step": true,
    "delays": [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1]
}"""

# The STT overlay of the reference repository (configs/stt_2.6b_en.json), with model fields.
STT_JSON = {
    "lm_gen_config": {"temp": 0.0, "temp_text": 0.0, "top_k": 250, "top_k_text": 50},
    "stt_config": {"audio_delay_seconds": 2.5, "audio_silence_prefix_seconds": 1.0},
    "model_type": "stt",
    "mimi_name": "mimi-pytorch-e351c8d8@125.safetensors",
    "tokenizer_name": "tokenizer_en_audio_4000.model",
    "delays": [0] * 33,
    "fuser": None,
    "dim": 64,
    "text_card": 4000,
    "n_q": 32,
    "dep_q": 0,
    "card": 2048,
    "num_heads": 4,
    "num_layers": 2,
    "hidden_scale": 4.125,
    "context": 375,
    "gating": "silu",
    "norm": "rms_norm_f32",
    "positional_embedding": "rope",
    "extra_heads_num_heads": 4,
    "extra_heads_dim": 6,
}


def test_official_config_json_validates_as_is(tmp_path: Path):
    (tmp_path / "config.json").write_text(MOSHI_7B_JSON)
    config = LMConfig.from_json(tmp_path / "config.json")
    assert config.lm_kwargs() | {"depformer_causal": True} == json.loads(MOSHI_7B_JSON)
    assert config.num_user_codebooks == 8 and config.mimi_num_codebooks == 8
    assert config.moshi_name == "model.safetensors"
    dep = config.depformer_transformer_config()
    assert (dep.context, dep.weights_per_step, dep.positional_embedding, dep.num_layers) == (
        None,
        8,
        "none",
        6,
    )
    assert config.temporal_transformer_config().dim_feedforward == 16896


def test_stt_config_without_depformer():
    config = LMConfig.model_validate(STT_JSON)
    assert config.depformer_transformer_config() is None
    assert config.num_user_codebooks == 32 and config.mimi_num_codebooks == 32
    assert config.lm_gen_config.temp == 0.0 and config.lm_gen_config.top_k_text == 50
    model = LMModel(config).eval()
    assert model.depformer is None and len(model.extra_heads) == 4
    gen = LMGen.from_config(model)
    assert not gen.use_sampling or gen.temp == 0.0
    with gen.streaming(1):
        outs = [gen.step(torch.zeros(1, 32, 1, dtype=torch.long)) for _ in range(3)]
    assert outs[0].shape == (1, 1, 1)  # no delays: no frame to wait for


def test_dev_2b_config_validates_with_its_description_table():
    data = {
        **json.loads(MOSHI_7B_JSON),
        "dim": 2560,
        "text_card": 48000,
        "n_q": 32,
        "dep_q": 16,
        "num_heads": 20,
        "num_layers": 24,
        "max_period": 100000,
        "depformer_context": 16,
        "delays": [0, 0] + [2] * 15 + [0] + [2] * 15,
        "conditioners": {"description": {"type": "lut", "lut": {"n_bins": 31, "dim": 16}}},
        "fuser": {"sum": ["description"]},
    }
    config = LMConfig.model_validate(data)
    assert config.mimi_num_codebooks == 16
    assert config.conditioners["description"].settings.n_bins == 31
    assert config.to_dict()["fuser"] == {"sum": ["description"]}  # written back as given
    for change, message in (
        ({"fuser": {"sum": ["speaker"]}}, "not in conditioners"),
        ({"fuser": {"sum": ["description"], "prepend": ["description"]}}, "prepend"),
        ({"fuser": None}, "need a fuser"),
        ({"cross_attention": True}, "cross_attention and fuser.cross"),
        ({"conditioners": {"description": {"type": "lut", "tensor": {"dim": 4}}}}, "needs its"),
    ):
        with pytest.raises(ValidationError, match=message):
            LMConfig.model_validate({**data, **change})


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"dimm": 12}, "dimm"),
        ({"norm": "batch_norm"}, "norm"),
        ({"delays": [0, 1]}, "delays"),
        ({"depformer_weights_per_step_schedule": [0, 1]}, "depformer_weights_per_step_schedule"),
        ({"num_heads": 5}, "num_heads"),
        ({"lm_gen_config": {"temperature": 1.0}}, "temperature"),
        ({"quantize": True}, "quantize"),
        ({"gradient_checkpointing": True}, "gradient_checkpointing"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, change: dict, field: str):
    data = {**json.loads(MOSHI_7B_JSON), **change}
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValidationError, match=field):
        LMConfig.from_json(tmp_path / "config.json")


def test_save_and_load_round_trip(tmp_path: Path):
    torch.manual_seed(0)
    model = LMModel(LMConfig.from_preset("tiny")).eval()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["n_q"] == 6
    loaded = LMModel.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    bf16 = LMModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and not bf16.training
    # A weights file with its config, too.
    from_file = load_lm(tmp_path / "model.safetensors", config=tmp_path / "config.json")
    assert torch.equal(from_file.text_linear.weight, model.text_linear.weight)


def test_float16_weights_run_in_float32_on_a_cpu_unless_asked(tmp_path: Path):
    """CPUs have no fast float16 arithmetic: a float16 file (the bundled demo's) loads widened."""
    torch.manual_seed(0)
    LMModel(LMConfig.from_preset("tiny")).half().save_pretrained(tmp_path)
    stored = load_file(tmp_path / "model.safetensors")
    assert stored["text_linear.weight"].dtype == torch.float16
    loaded = LMModel.from_pretrained(tmp_path, device="cpu")
    assert loaded.dtype == torch.float32
    assert torch.equal(loaded.text_linear.weight, stored["text_linear.weight"].float())
    assert LMModel.from_pretrained(tmp_path, dtype=torch.float16).dtype == torch.float16  # asked for


def test_reference_weights_in_official_and_in_memory_names(tmp_path: Path):
    """The reference's test weights are stored fused; the per-step spelling loads too."""
    state = load_file(ASSETS / "test_lm_model.safetensors")
    config = LMConfig.from_preset("reference-test")
    config.save_json(tmp_path / "config.json")
    save_file(state, tmp_path / "model.safetensors")
    fused = LMModel.from_pretrained(tmp_path)
    split = dict(state)
    for key in [k for k in state if k.endswith("self_attn.in_proj_weight")]:
        mult = 2 if key.startswith("depformer") else 1
        for i, part in enumerate(split.pop(key).chunk(mult)):
            split[key.replace("in_proj_weight", f"in_projs.{i}.weight")] = part.contiguous()
    save_file(split, tmp_path / "model.safetensors")
    per_step = LMModel.from_pretrained(tmp_path)
    assert torch.equal(
        fused.depformer.layers[0].self_attn.in_proj_weight,
        per_step.depformer.layers[0].self_attn.in_proj_weight,
    )


def test_mismatched_weights_list_every_problem(tmp_path: Path):
    model = LMModel(LMConfig.from_preset("tiny"))
    state = model.state_dict()
    del state["text_linear.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["out_norm.alpha"] = torch.ones(1, 1, 7)
    model.config.save_json(tmp_path / "config.json")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as error:
        LMModel.from_pretrained(tmp_path)
    message = str(error.value)
    assert "missing keys (1)" in message and "text_linear.weight" in message
    assert "unexpected keys (1)" in message and "extra.weight" in message
    assert "out_norm.alpha: expected [1, 1, 32], got [1, 1, 7]" in message
    # The same weights against a config of another size.
    save_file(LMModel(LMConfig.from_preset("tiny")).state_dict(), tmp_path / "model.safetensors")
    LMConfig.from_preset("tiny", dim=64).save_json(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="wrong shapes"):
        LMModel.from_pretrained(tmp_path)


def test_bundle_names_tokenizer_mimi_and_lora(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from duplex.lm.lora import apply_lora, lora_state_dict

    config = LMConfig.from_preset("tiny", lora=True, lora_rank=2, lora_name="lora.safetensors")
    torch.manual_seed(0)
    model = LMModel(config).eval()
    model.save_pretrained(tmp_path)
    base = LMConfig.from_preset("tiny")
    adapted = apply_lora(load_lm(tmp_path / "model.safetensors", config=base), rank=2)
    for update in lora_state_dict(adapted).values():
        update.normal_()
    save_file(lora_state_dict(adapted), tmp_path / "lora.safetensors")
    (tmp_path / "tokenizer_spm_32k_3.model").write_bytes(b"not read here")
    bundle = load_checkpoint(tmp_path)
    assert bundle.lora_weights == tmp_path / "lora.safetensors"
    assert bundle.tokenizer == tmp_path / "tokenizer_spm_32k_3.model"
    assert bundle.mimi_weights is None
    with pytest.raises(CheckpointError, match="Mimi"):
        bundle.mimi()
    fused = bundle.lm()
    codes = torch.randint(0, 40, (1, 7, 6))
    with torch.no_grad():
        assert torch.allclose(fused(codes).text_logits, adapted(codes).text_logits, atol=1e-5)

    # A Hugging Face repo id resolves through the codec's hub download.
    calls = []

    def fake_download(repo: str, filename: str, optional: bool = False) -> Path:
        calls.append((repo, filename))
        return tmp_path / filename

    monkeypatch.setattr(codec_checkpoint, "hub_download", fake_download)
    (tmp_path / config.mimi_name).write_bytes(b"")
    hub = load_checkpoint("someone/some-moshi")
    assert hub.lm_weights == tmp_path / "model.safetensors" and hub.source == "hf://someone/some-moshi"
    assert ("someone/some-moshi", "config.json") in calls and (
        "someone/some-moshi",
        config.mimi_name,
    ) in calls
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="is a file; pass its checkpoint directory"):
        load_checkpoint(tmp_path / "model.safetensors")


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch):
    """Any hub access fails the test."""

    def called(*args, **kwargs):
        pytest.fail(f"the hub was asked for {args} {kwargs}")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", called)
    monkeypatch.setattr(codec_checkpoint, "hub_download", called)


def test_a_missing_local_path_is_an_error_and_never_a_hub_lookup(tmp_path, monkeypatch, no_hub):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # so runs/lm is a path, though shaped like owner/name
    message = "checkpoint not found: runs/lm (no such file or directory)"
    for load in (load_checkpoint, load_lm, LMModel.from_pretrained):
        with pytest.raises(CheckpointError) as error:
            load("runs/lm")
        assert str(error.value) == message
    with pytest.raises(CheckpointError, match="checkpoint not found: ./lm "):
        load_checkpoint("./lm")


def test_the_lm_and_mimi_share_one_resolver(tmp_path, monkeypatch):
    from duplex.codec.mimi import Mimi
    from duplex.lm import weights

    assert checkpoint.locate_checkpoint is codec_checkpoint.locate_checkpoint
    assert weights.locate_checkpoint is codec_checkpoint.locate_checkpoint
    assert not hasattr(checkpoint, "_locate") and not hasattr(checkpoint, "_hub_file")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    errors = []
    for load in (load_checkpoint, LMModel.from_pretrained, Mimi.from_pretrained):
        with pytest.raises(CheckpointError) as error:
            load("runs/lm")
        errors.append(str(error.value))
    assert len(set(errors)) == 1
    calls = []

    def fake_download(repo: str, filename: str, optional: bool = False) -> Path:
        calls.append((repo, filename, optional))
        raise CheckpointError("offline")

    monkeypatch.setattr(codec_checkpoint, "hub_download", fake_download)
    for load in (load_checkpoint, LMModel.from_pretrained, Mimi.from_pretrained):
        with pytest.raises(CheckpointError, match="offline"):
            load("someone/some-moshi")
    assert calls == [("someone/some-moshi", "config.json", True)] * 3


class MixerBackbone(StreamingModule[StreamingState]):
    """A stand-in backbone: a position-wise MLP (causal, stateless)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.mix = torch.nn.Sequential(
            torch.nn.Linear(config.d_model, config.d_model),
            torch.nn.GELU(),
            torch.nn.Linear(config.d_model, config.d_model),
        )

    def _init_streaming_state(self, batch_size: int) -> StreamingState:
        return StreamingState(batch_size, self.mix[0].weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(x)


def test_backbones_are_registered_by_name():
    from duplex.lm.backbones import Helium

    assert BACKBONES.get("helium") is Helium
    assert isinstance(LMModel(LMConfig.from_preset("tiny")).transformer, Helium)
    BACKBONES.register("test-mixer", MixerBackbone)
    config = LMConfig.from_preset("tiny", backbone="test-mixer")
    model = LMModel(config).eval()
    assert isinstance(model.transformer, MixerBackbone)
    codes = torch.randint(0, 40, (2, 7, 5))
    with torch.no_grad():
        batch = model(codes)
    assert batch.logits.shape == (2, 3, 5, 40)
    with LMGen(model, use_sampling=False).streaming(2) as gen:
        assert gen.step(torch.zeros(2, 3, 1, dtype=torch.long)) is None
        assert gen.step(torch.zeros(2, 3, 1, dtype=torch.long)).shape == (2, 4, 1)
    with pytest.raises(KeyError, match="unknown backbone 'nope'"):
        LMModel(LMConfig.from_preset("tiny", backbone="nope"))


def test_numerics_reaches_the_models_through_every_loader(tmp_path):
    """``numerics`` is taken by LMModel, from_pretrained, load_checkpoint(...).lm() and .mimi()."""
    from duplex.codec import Mimi, MimiConfig
    from duplex.lm import LMModel, load_checkpoint
    from duplex.lm.config import LMConfig

    model = LMModel(LMConfig.from_preset("tiny"))
    assert model.numerics == "fast"
    model.save_pretrained(tmp_path)
    Mimi(MimiConfig.from_preset("tiny")).save_pretrained(tmp_path / "mimi.safetensors")
    config = json.loads((tmp_path / "config.json").read_text())
    config["mimi_name"] = "mimi.safetensors"
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert LMModel.from_pretrained(tmp_path, numerics="reference").numerics == "reference"
    bundle = load_checkpoint(tmp_path)
    assert bundle.lm(numerics="reference").numerics == "reference"
    assert bundle.lm().numerics == "fast"
    assert bundle.mimi(numerics="reference").numerics == "reference"
    with pytest.raises(ValueError, match="'fast' or 'reference'"):
        LMModel(LMConfig.from_preset("tiny"), numerics="exact")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_weights_holding_nan_or_inf_are_refused_naming_the_tensor(tmp_path: Path, bad: float):
    torch.manual_seed(0)
    LMModel(LMConfig.from_preset("tiny")).save_pretrained(tmp_path)
    weights = tmp_path / LMConfig.from_preset("tiny").moshi_name
    state = load_file(str(weights))
    name = sorted(k for k, v in state.items() if v.is_floating_point())[-1]
    state[name].view(-1)[:3] = bad
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=rf"{weights}: tensor '{name}' holds 3 NaN/Inf values"):
        LMModel.from_pretrained(tmp_path)


_LOAD_PEAK = """
import resource, sys, torch
from duplex.lm.checkpoint import load_lm
from duplex.lm.config import LMConfig
from duplex.lm.model import LMModel
with torch.device("meta"):  # what building any model costs once (imports, registries), not the weights
    LMModel(LMConfig.from_json(sys.argv[1] + "/config.json"))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model = load_lm(sys.argv[1])
assert model.dtype == torch.bfloat16
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_bf16_weights_load_without_a_second_copy(tmp_path):
    """Peak resident memory while loading a bf16 checkpoint stays within 1.15x its weight bytes:
    the file is read once into the tensors the model keeps (no memory map on top, no float32
    copy, no full-size masks)."""
    import subprocess
    import sys

    config = LMConfig.from_preset("moshi-341m", num_layers=2)
    LMModel(config).to(torch.bfloat16).save_pretrained(tmp_path)
    size = (tmp_path / "model.safetensors").stat().st_size
    out = subprocess.run(
        [sys.executable, "-c", _LOAD_PEAK, str(tmp_path)], capture_output=True, text=True, check=True
    )
    growth = int(out.stdout.strip().splitlines()[-1])
    assert size > 200e6 and growth <= 1.15 * size, f"peak grew {growth / size:.2f}x the weights"
