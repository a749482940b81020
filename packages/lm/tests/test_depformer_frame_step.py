"""Depformer.frame_step (LMGen's path) against streaming the module itself, position by position."""

from __future__ import annotations

import pytest
import torch
from duplex.codec.kernels.dispatch import native_usable
from duplex.lm.config import LMConfig
from duplex.lm.model import LMModel

VARIANTS = {
    "per-step weights": {},
    "schedule": {"depformer_weights_per_step_schedule": [0, 1, 1]},
    "grouped kv heads": {"depformer_kv_repeat": 2},
    "layer scale": {"depformer_layer_scale": 0.1},
}


@torch.no_grad()
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_frame_step_equals_the_streaming_module_over_several_frames(variant: str) -> None:
    config = LMConfig.from_preset("tiny").model_copy(update=VARIANTS[variant])
    torch.manual_seed(0)
    depformer = LMModel(config).eval().depformer
    assert depformer.supports_frame_step
    frames = torch.randn(3, config.dep_q, 2, 1, config.depformer_dim)  # 3 frames, batch 2
    with depformer.streaming(2):
        for frame in frames:
            depformer.reset_streaming()
            expected = [depformer(x) for x in frame]
            got = [depformer.frame_step(x, position) for position, x in enumerate(frame)]
            for a, b in zip(got, expected, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    if native_usable():  # frame_step ran as the native transformer step (C), the module did not
        assert all(step is not None for step in depformer._frame_native)


def test_frame_step_refuses_what_it_cannot_do() -> None:
    config = LMConfig.from_preset("tiny")
    depformer = LMModel(config).eval().depformer
    with torch.no_grad(), pytest.raises(ValueError, match="outside the frame"):
        depformer.frame_step(torch.zeros(1, 1, config.depformer_dim), config.dep_q)
    rope = LMModel(config.model_copy(update={"depformer_pos_emb": "rope"})).depformer
    assert not rope.supports_frame_step
    with pytest.raises(RuntimeError, match="no positional embedding"):
        rope.frame_step(torch.zeros(1, 1, config.depformer_dim), 0)
