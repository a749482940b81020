"""LMModel.quantize: bf16 and int8 matmul weights, their quality against float32, the saved layout,
quantizing as a checkpoint is read, and the mistakes a user can make."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from duplex.codec.checkpoint import CheckpointError
from duplex.codec.kernels.weight_formats import QuantizationError
from duplex.lm.checkpoint import load_checkpoint, load_lm
from duplex.lm.config import LMConfig
from duplex.lm.generate import LMGen
from duplex.lm.model import LMModel
from safetensors import safe_open

# The official structure at a size whose widths a group of 16 divides (gated hidden 176, and 64 in
# the depformer).
CONFIG = LMConfig.from_preset(
    "tiny", dim=64, num_heads=4, hidden_scale=4.125, depformer_dim=32, depformer_dim_feedforward=96
)


@pytest.fixture(scope="module")
def float_model() -> LMModel:
    torch.manual_seed(0)
    return LMModel(CONFIG).eval()


def copy_of(model: LMModel) -> LMModel:
    copy = LMModel(model.config).eval()
    copy.load_state_dict(model.state_dict())
    return copy


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    valid = expected.isfinite()
    return float((got - expected)[valid].norm() / expected[valid].norm())


def greedy_tokens(model: LMModel, frames: torch.Tensor) -> torch.Tensor:
    gen = LMGen(model, use_sampling=False)
    out = []
    with gen.streaming(frames.shape[1]), torch.no_grad():
        for frame in frames:
            tokens = gen.step(frame)
            if tokens is not None:
                out.append(tokens)
    return torch.cat(out, dim=-1)


@pytest.mark.parametrize(
    ("fmt", "group", "limit"), [("bf16", None, 1e-2), ("int8", None, 3e-2), ("int8", 16, 3e-2)]
)
def test_logits_stay_close_to_float32_and_the_fast_step_equals_the_reference(
    float_model, fmt, group, limit
) -> None:
    codes = torch.randint(
        0, CONFIG.card, (2, CONFIG.num_codebooks, 10), generator=torch.Generator().manual_seed(1)
    )
    model = copy_of(float_model).quantize(fmt, group)
    with torch.no_grad():
        expected, got = float_model(codes), model(codes)
    assert relative_error(got.logits, expected.logits) <= limit
    assert relative_error(got.text_logits, expected.text_logits) <= limit
    assert 0 < relative_error(got.text_logits, expected.text_logits)  # the weights did change
    # the C step reading narrow weights against torch widening them (the reference set)
    frames = torch.randint(
        0, CONFIG.card, (12, 2, CONFIG.num_user_codebooks, 1), generator=torch.Generator().manual_seed(2)
    )
    reference = copy_of(float_model).quantize(fmt, group)
    reference.numerics = "reference"
    assert torch.equal(greedy_tokens(model, frames), greedy_tokens(reference, frames))


def test_a_quantized_checkpoint_saves_the_narrow_layout_and_loads_without_floats(float_model, tmp_path):
    model = copy_of(float_model).quantize("int8", keep=["text_linear"])
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["low_precision"] == {"format": "int8", "group_size": None, "keep": ["text_linear"]}
    with safe_open(tmp_path / "model.safetensors", "pt") as saved:
        dtypes = {key: saved.get_slice(key).get_dtype() for key in saved.keys()}
    assert dtypes["transformer.layers.0.self_attn.in_proj_weight"] == "I8"
    assert dtypes["transformer.layers.0.self_attn.in_proj_weight_scale"] == "F32"
    assert dtypes["transformer.layers.0.gating.linear_in.weight"] == "I8"
    assert dtypes["text_linear.weight"] == "F32" and "text_linear.weight_scale" not in dtypes  # kept
    assert dtypes["text_emb.weight"] == "F32"  # embeddings keep the model's dtype
    loaded = load_lm(tmp_path)
    assert loaded.config.low_precision == model.config.low_precision
    codes = torch.randint(0, CONFIG.card, (1, CONFIG.num_codebooks, 6))
    with torch.no_grad():
        assert torch.equal(loaded(codes).logits.nan_to_num(), model(codes).logits.nan_to_num())


@pytest.mark.parametrize("fmt", ["bf16", "int8"])
def test_quantizing_as_the_file_is_read_equals_quantizing_the_loaded_model(float_model, tmp_path, fmt):
    float_model.save_pretrained(tmp_path)
    at_load = load_checkpoint(tmp_path).lm(quantize=fmt)
    after = load_lm(tmp_path).quantize(fmt)
    for key, value in after.state_dict().items():
        assert torch.equal(at_load.state_dict()[key], value), key
    # float32 activations: the KV caches too, whatever the weights are stored in
    with LMGen(at_load).streaming(1):
        assert at_load.transformer.layers[0].self_attn.streaming_state.cache.keys.dtype is torch.float32


def test_mistakes_get_a_clear_error(float_model, tmp_path) -> None:
    model = copy_of(float_model).quantize("int8")
    with pytest.raises(QuantizationError, match="already stored in int8: load its float checkpoint"):
        model.quantize("bf16")
    with pytest.raises(QuantizationError, match="group_size 48 does not fit"):
        copy_of(float_model).quantize("int8", group_size=48)
    with pytest.raises(ValueError, match="format"):
        copy_of(float_model).quantize("int4")  # type: ignore[arg-type]
    with LMGen(copy_of(float_model)).streaming(1) as gen:
        with pytest.raises(RuntimeError, match="while streaming"):
            gen.model.quantize("int8")

    model.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="saved in int8; it cannot be loaded as bf16"):
        load_checkpoint(tmp_path).lm(quantize="bf16")
    assert load_checkpoint(tmp_path).lm(quantize="int8").config.low_precision.format == "int8"
    # the quantized file with a float config (its config.json replaced)
    float_model.config.save_json(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="holds int8-quantized weights .* no low_precision entry"):
        load_lm(tmp_path)


_LOAD_PEAK = """
import resource, sys, torch
from duplex.lm.checkpoint import load_checkpoint
from duplex.lm.config import LMConfig
from duplex.lm.model import LMModel
with torch.device("meta"):  # what building any model costs once (imports, registries), not the weights
    LMModel(LMConfig.from_json(sys.argv[1] + "/config.json"))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model = load_checkpoint(sys.argv[1]).lm(quantize="int8")
kept = sum(t.numel() * t.element_size() for t in model.state_dict().values())
print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_quantizing_at_load_never_holds_the_float_weights(tmp_path) -> None:
    """Loading a bf16 checkpoint into int8 grows the resident memory by about what the model
    keeps (int8 matmul weights, bf16 embeddings), never by the file's size: each tensor is
    narrowed as it is read, a block at a time."""
    config = LMConfig.from_preset("moshi-341m", num_layers=4)
    LMModel(config).to(torch.bfloat16).save_pretrained(tmp_path)
    size = (tmp_path / "model.safetensors").stat().st_size
    out = subprocess.run(
        [sys.executable, "-c", _LOAD_PEAK, str(tmp_path)], capture_output=True, text=True, check=True
    )
    kept, growth = map(int, out.stdout.split())
    assert kept < 0.75 * size
    assert growth <= 1.1 * kept + 16e6, f"peak grew {growth / 1e6:.0f} MB for {kept / 1e6:.0f} MB kept"


def test_a_quantized_model_cast_to_bfloat16_streams_in_bfloat16(float_model) -> None:
    model = copy_of(float_model).quantize("int8").to(torch.bfloat16)
    gen = LMGen(model, use_sampling=False)
    with gen.streaming(1), torch.no_grad():
        assert model.transformer.layers[0].self_attn.streaming_state.cache.keys.dtype is torch.bfloat16
        for _ in range(3):
            gen.step(torch.zeros(1, CONFIG.num_user_codebooks, 1, dtype=torch.long))
