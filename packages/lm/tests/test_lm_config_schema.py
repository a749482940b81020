"""The official flat config.json is LMConfig's one adapter to the one transformer schema: every
preset round-trips through its JSON form, and derives its temporal transformer and depformer as
:class:`duplex.codec.nn.TransformerConfig` (the class Mimi's transformers use too)."""

from __future__ import annotations

import json

import pytest
from duplex.codec.config import MimiConfig
from duplex.codec.nn import TransformerConfig
from duplex.lm.config import LOADER_KEYS, LMConfig


@pytest.mark.parametrize("preset", LMConfig.preset_names())
def test_every_preset_round_trips_through_config_json_and_derives_its_transformers(preset: str) -> None:
    config = LMConfig.from_preset(preset)
    again = LMConfig.model_validate(json.loads(json.dumps(config.to_dict())))
    assert again == config
    temporal = config.temporal_transformer_config()
    assert type(temporal) is TransformerConfig
    assert (temporal.d_model, temporal.num_layers, temporal.norm) == (
        config.dim,
        config.num_layers,
        config.norm,
    )
    depformer = config.depformer_transformer_config()
    assert depformer is None if config.dep_q == 0 else type(depformer) is TransformerConfig
    assert not set(config.lm_kwargs()) & {*LOADER_KEYS, "backbone", "backbone_config", "depformer_config"}


@pytest.mark.parametrize("preset", MimiConfig.preset_names())
def test_mimi_transformers_are_the_same_schema_and_keep_the_reference_keys(preset: str) -> None:
    config = MimiConfig.from_preset(preset)
    assert isinstance(config.transformer, TransformerConfig)
    assert type(config.transformer.transformer_config()) is TransformerConfig
    saved = config.to_dict()["transformer"]
    assert not {"kv_repeat", "weights_per_step", "cross_attention"} & set(saved)  # duplex-only, unset
    assert MimiConfig(**config.to_dict()) == config
