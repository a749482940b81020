"""MimiConfig: the official values, the reference's nested form, presets, custom Mimis."""

from __future__ import annotations

import json

import torch
from duplex.codec import Mimi, MimiConfig
from moshi.models import loaders
from moshi.models.loaders import get_mimi


def test_default_is_the_official_config():
    ours = MimiConfig().to_dict()
    official = loaders._mimi_config
    assert {k: ours[k] for k in ("sample_rate", "channels", "frame_rate")} == {
        k: official[k] for k in ("sample_rate", "channels", "frame_rate")
    }
    for part in ("seanet", "quantizer", "transformer"):
        for key, value in official[part].items():
            assert ours[part][key] == (list(value) if isinstance(value, tuple) else value), (part, key)
    assert MimiConfig.from_preset("mimi") == MimiConfig() == MimiConfig.from_preset("official")


def test_reference_nested_form_round_trips_through_json():
    official = json.loads(json.dumps(loaders._mimi_config))
    config = MimiConfig(**official)
    assert config == MimiConfig()
    assert MimiConfig(**json.loads(json.dumps(config.to_dict()))) == config
    assert (config.frame_size, config.encoder_frame_rate, config.resample_stride) == (1920, 25.0, 2)


@torch.no_grad()
def test_custom_mimi_with_transformer_projections_matches_reference():
    """d_model != latent dimension adds input/output projections around the transformers."""
    torch.manual_seed(0)
    config = MimiConfig.from_preset(
        "tiny",
        transformer={"d_model": 24, "num_heads": 3, "num_layers": 1, "dim_feedforward": 40,
                     "input_dimension": 16, "output_dimensions": [16]},
    )  # fmt: skip
    reference = get_mimi(None, config.to_dict()).eval()
    state = reference.state_dict()
    g = torch.Generator().manual_seed(0)
    for key in state:
        if key.endswith("embedding_sum"):
            state[key] = torch.randn(state[key].shape, generator=g)
    reference.load_state_dict(state)
    ours = Mimi(config).eval()
    ours.load_state_dict(state)
    ours.num_codebooks = reference.num_codebooks
    assert "encoder_transformer.input_proj.weight" in ours.state_dict()
    assert "decoder_transformer.output_projs.0.weight" in ours.state_dict()
    wav = 0.3 * torch.randn(2, 1, 1920 * 5, generator=g)
    codes = reference.encode(wav)
    assert torch.equal(ours.encode(wav), codes)
    torch.testing.assert_close(ours.decode(codes), reference.decode(codes))


def test_tiny_preset_is_small_and_on_the_same_frame_grid():
    mimi = Mimi(MimiConfig.from_preset("tiny"))
    assert sum(p.numel() for p in mimi.parameters()) < 50_000
    assert (mimi.sample_rate, mimi.frame_size) == (24000, 1920)
