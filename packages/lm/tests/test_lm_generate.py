"""LMGen against the reference's LMGen, and the slot behaviour the serving layer relies on."""

from __future__ import annotations

import pytest
import torch
from duplex.lm.config import LMConfig
from duplex.lm.generate import LMGen
from duplex.lm.model import LMModel
from moshi.models.lm import LMGen as ReferenceGen
from moshi.models.lm import LMModel as ReferenceLM
from moshi.utils.compile import no_compile


@pytest.fixture(autouse=True)
def _reference_in_eager_mode():
    with no_compile():
        yield


# Greedy decoding over a large vocabulary of a random model meets near-ties (top-2 logits closer
# than float32 rounding) now and then, which makes token-exact comparisons flaky whichever
# implementation is right. So these tests use small vocabularies: "tiny" is the official
# structure (RMSNorm f32, RoPE, SiLU-GLU, per-step depformer, delays, user streams) with a
# context of 10 steps, so 50 steps also go through the KV ring buffer several times.


def twin_models(config: LMConfig, seed: int = 0) -> tuple[LMModel, ReferenceLM]:
    torch.manual_seed(seed)
    ours = LMModel(config).eval()
    reference = ReferenceLM(**config.lm_kwargs(), device="meta").eval()
    reference.load_state_dict(ours.state_dict(), strict=True, assign=True)
    return ours, reference


def user_frames(config: LMConfig, steps: int, batch: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.card, (steps, batch, config.num_user_codebooks, 1), generator=gen)


def run(gen, frames: torch.Tensor) -> list[torch.Tensor | None]:
    with gen.streaming(frames.shape[1]):
        return [gen.step(frame) for frame in frames]


@pytest.mark.parametrize("preset", ["tiny", "reference-test"])
@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_tokens_match_reference(preset: str, batch: int):
    config = LMConfig.from_preset(preset)
    ours, reference = twin_models(config)
    frames = user_frames(config, 50 + config.max_delay, batch)
    out = run(LMGen(ours, use_sampling=False), frames)
    ref = run(ReferenceGen(reference, use_sampling=False), frames)
    assert [o is None for o in out] == [r is None for r in ref]
    assert sum(o is not None for o in out) == 50
    for o, r in zip(out, ref, strict=True):
        if o is not None:
            assert o.shape == (batch, 1 + config.dep_q, 1)
            assert torch.equal(o, r)


def test_sampled_tokens_match_reference_with_the_same_global_seed():
    config = LMConfig.from_preset("tiny")
    ours, reference = twin_models(config)
    frames = user_frames(config, 20, 2)
    torch.manual_seed(42)
    out = run(LMGen(ours, temp=0.8, temp_text=0.7, top_k=25, top_k_text=10), frames)
    torch.manual_seed(42)
    ref = run(ReferenceGen(reference, temp=0.8, temp_text=0.7, top_k=25, top_k_text=10), frames)
    assert all((o is None and r is None) or torch.equal(o, r) for o, r in zip(out, ref, strict=True))


def test_reset_slot_restarts_one_conversation_while_others_continue():
    config = LMConfig.from_preset("tiny")
    model = LMModel(config).eval()
    frames = user_frames(config, 30, 3)
    fresh = user_frames(config, 15, 3, seed=7)

    def sampled(reset_at: int | None) -> list[torch.Tensor | None]:
        gen = LMGen(model, top_k=10, top_k_text=5)
        outs = []
        with gen.streaming(3):
            for slot in range(3):
                gen.set_seed(slot, 100 + slot)
            for t in range(30):
                frame = frames[t].clone()
                if reset_at is not None and t == reset_at:
                    gen.set_seed(1, 7)
                    gen.reset_streaming([1])
                if reset_at is not None and t >= reset_at:
                    frame[1] = fresh[t - reset_at, 1]
                outs.append(gen.step(frame))
        return outs

    uninterrupted, restarted = sampled(None), sampled(reset_at=15)
    # Slots 0 and 2 never notice slot 1's restart.
    for a, b in zip(uninterrupted[1:], restarted[1:], strict=True):
        assert torch.equal(a[[0, 2]], b[[0, 2]])
    # Restarted slot 1 behaves like a new conversation seeded with 7.
    gen = LMGen(model, top_k=10, top_k_text=5)
    with gen.streaming(3):
        gen.set_seed(1, 7)
        alone = [gen.step(fresh[t]) for t in range(15)]
    assert (restarted[15][1] == -2).all()  # its delays fill again
    for t in range(1, 15):
        assert torch.equal(restarted[15 + t][1], alone[t][1])


def test_seeded_slot_is_reproducible_and_independent_of_the_batch():
    config = LMConfig.from_preset("tiny")
    model = LMModel(config).eval()
    frames = user_frames(config, 10, 2)

    def slot0(other_seed: int) -> torch.Tensor:
        gen = LMGen(model, top_k=10, top_k_text=5)
        with gen.streaming(2):
            gen.set_seed(0, 5)
            gen.set_seed(1, other_seed)
            outs = [gen.step(frame) for frame in frames]
        return torch.cat([out[0] for out in outs if out is not None], dim=-1)

    assert torch.equal(slot0(1), slot0(2))


def test_exec_mask_freezes_a_slot():
    config = LMConfig.from_preset("tiny")
    model = LMModel(config).eval()
    frames = user_frames(config, 12, 2)
    gen = LMGen(model, use_sampling=False)
    with gen.streaming(2):
        outs = []
        for t, frame in enumerate(frames):
            gen.set_exec_mask(torch.tensor([True, t not in (4, 5)]))
            outs.append(gen.step(frame))
    assert (outs[4][1] == -2).all() and (outs[5][1] == -2).all()
    # Slot 1 skipped two frames: from then on it matches a run that never saw them.
    kept = torch.cat([frames[:4], frames[6:]])
    reference = run(LMGen(model, use_sampling=False), kept[:, 1:])
    for t in range(6, 12):
        assert torch.equal(outs[t][1], reference[t - 2][0])


def test_exec_mask_freezes_a_seeded_slot_random_generator():
    config = LMConfig.from_preset("tiny")
    model = LMModel(config).eval()
    frames = user_frames(config, 12, 2)
    gen = LMGen(model, top_k=10, top_k_text=5)
    with gen.streaming(2):
        gen.set_seed(1, 7)
        outs = []
        for t, frame in enumerate(frames):
            gen.set_exec_mask(torch.tensor([True, t not in (4, 5)]))
            outs.append(gen.step(frame))
    # Sampling too: the paused frames drew nothing from slot 1's generator.
    kept = torch.cat([frames[:4], frames[6:]])[:, 1:]
    alone = LMGen(model, top_k=10, top_k_text=5)
    with alone.streaming(1):
        alone.set_seed(0, 7)
        reference = [alone.step(frame) for frame in kept]
    for t in range(6, 12):
        assert torch.equal(outs[t][1], reference[t - 2][0])


def test_bfloat16_generation_runs():
    config = LMConfig.from_preset("tiny")
    model = LMModel(config).eval().to(torch.bfloat16)
    frames = user_frames(config, 5, 2)
    outs = run(LMGen(model), frames)
    assert outs[0] is None and outs[-1].shape == (2, 1 + config.dep_q, 1)
    assert ((outs[-1][:, 1:] >= 0) & (outs[-1][:, 1:] < config.card)).all()


def test_text_only_model_without_depformer():
    config = LMConfig.from_preset("tiny", n_q=4, dep_q=0, delays=[0, 0, 0, 0, 0])
    model = LMModel(config).eval()
    outs = run(LMGen(model, use_sampling=False), user_frames(config, 4, 2))
    assert outs[0].shape == (2, 1, 1)


def test_long_conversation_keeps_constant_memory():
    """Far past the context (a ring-buffer KV cache), the state never grows. (The benchmark's
    ``--long 20000`` shows the process memory flat over 20 000 steps.)"""
    config = LMConfig.from_preset(
        "tiny", num_layers=1, dep_q=1, n_q=2, delays=[0, 0, 1], depformer_num_layers=1
    )
    model = LMModel(config).eval()
    gen = LMGen(model, top_k=5, top_k_text=5)
    frame = torch.zeros(1, 1, 1, dtype=torch.long)

    def state_bytes() -> int:
        total = 0
        for module in [gen, *model.modules()]:
            state = getattr(module, "_streaming_state", None)
            for value in vars(state).values() if state is not None else []:
                tensors = [value] if isinstance(value, torch.Tensor) else []
                tensors += (
                    [v for v in vars(value).values() if isinstance(v, torch.Tensor)]
                    if hasattr(value, "__dict__")
                    else []
                )
                total += sum(t.numel() * t.element_size() for t in tensors)
        return total

    with gen.streaming(1):
        for _ in range(3 * config.context):
            gen.step(frame)
        size = state_bytes()
        for _ in range(1000):
            out = gen.step(frame)
        assert state_bytes() == size
        assert gen.streaming_state.offsets.item() == 3 * config.context + 1000
    assert ((out[:, 1:] >= 0) & (out[:, 1:] < config.card)).all()


def test_bad_inputs_fail_clearly():
    config = LMConfig.from_preset("tiny")
    model = LMModel(config).eval()
    gen = LMGen(model)
    with pytest.raises(RuntimeError, match="not streaming"):
        gen.step(torch.zeros(1, 3, 1, dtype=torch.long))
    with gen.streaming(2):
        with pytest.raises(ValueError, match=r"n_q - dep_q=3"):
            gen.step(torch.zeros(2, 8, 1, dtype=torch.long))
        with pytest.raises(ValueError, match=r"\[0, 40\)"):
            gen.step(torch.full((2, 3, 1), 40, dtype=torch.long))
        with pytest.raises(TypeError, match="integer"):
            gen.step(torch.zeros(2, 3, 1))
    with pytest.raises(RuntimeError, match="eval"):
        LMGen(LMModel(config).train())
    with pytest.raises(ValueError, match="text token ids"):
        model(torch.full((1, 7, 4), 61))
    with pytest.raises(ValueError, match=r"\[B, 7, T\]"):
        model(torch.zeros(1, 5, 4, dtype=torch.long))
