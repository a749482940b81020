"""Conditioned LMs (TTS, Hibiki) and the STT models' extra heads against moshi 0.2.13."""

from __future__ import annotations

import pytest
import torch
from duplex.lm.conditioners import TensorCondition
from duplex.lm.config import LMConfig
from duplex.lm.generate import LMGen
from duplex.lm.model import LMModel
from moshi.conditioners import ConditionAttributes
from moshi.conditioners import TensorCondition as ReferenceTensorCondition
from moshi.models.lm import LMGen as ReferenceGen
from moshi.models.loaders import get_moshi_lm
from moshi.utils.compile import no_compile


@pytest.fixture(autouse=True)
def _reference_in_eager_mode():
    with no_compile():
        yield


def twins(preset: str, seed: int = 0, numerics: str = "reference", **overrides):
    config = LMConfig.from_preset(preset, **overrides)
    torch.manual_seed(seed)
    ours = LMModel(config, numerics=numerics).eval()
    reference = get_moshi_lm(None, lm_kwargs=config.lm_kwargs(), device="cpu", dtype=torch.float32)
    reference.load_state_dict(ours.state_dict(), strict=True)
    return config, ours, reference.eval()


def voice(config: LMConfig, length: int, seed: int) -> TensorCondition:
    dim = config.conditioners["speaker_wavs"].settings.dim
    tensor = torch.randn(length, dim, generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(length, dtype=torch.bool)
    mask[length // 2 :] = seed % 2 == 0  # odd seeds: the second half is an absent speaker
    return TensorCondition(tensor, mask)


def reference_attributes(items: list[dict]) -> list[ConditionAttributes]:
    out = []
    for item in items:
        text = {k: v for k, v in item.items() if not isinstance(v, TensorCondition)}
        tensor = {
            k: ReferenceTensorCondition(v.tensor[None], v.mask[None])
            for k, v in item.items()
            if isinstance(v, TensorCondition)
        }
        out.append(ConditionAttributes(text=text, tensor=tensor))
    return out


def tts_items(config: LMConfig) -> list[dict]:
    return [
        {"control": "ok", "cfg": "2.0", "speaker_wavs": voice(config, 10, 0)},
        {"control": "ok", "cfg": None, "speaker_wavs": voice(config, 10, 1)},
    ]


def test_conditioned_training_forward_matches_reference():
    """Summed tables, the cross-attention voice (with sinusoidal positions and a masked half),
    the demuxed text stream and low-rank depformer embeddings: the reference's logits."""
    config, ours, reference = twins("tiny-tts")
    items = tts_items(config)
    codes = torch.randint(
        0, config.card, (2, config.num_codebooks, 12), generator=torch.Generator().manual_seed(3)
    )
    codes[:, 0] = torch.randint(0, config.text_card, (2, 12))
    out = ours(codes, ours.conditioning(items))
    conditions = reference.condition_provider.prepare_and_provide(reference_attributes(items))
    ref = reference(codes, conditions)
    torch.testing.assert_close(out.text_logits, ref.text_logits, rtol=1e-5, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-5, atol=1e-5, equal_nan=True)


def run_ours(gen: LMGen, frames: torch.Tensor, heads: bool = False) -> list:
    with gen.streaming(frames.shape[1]):
        return [gen.step_with_extra_heads(f) if heads else gen.step(f) for f in frames]


def run_reference(gen: ReferenceGen, frames: torch.Tensor, heads: bool = False) -> list:
    with gen.streaming(frames.shape[1]):
        return [gen.step_with_extra_heads(f) if heads else gen.step(f) for f in frames]


def assert_same_frames(ours: list, reference: list, expected: int) -> None:
    assert [o is None for o in ours] == [r is None for r in reference]
    assert sum(o is not None for o in ours) == expected
    for o, r in zip(ours, reference, strict=True):
        if o is not None:
            assert torch.equal(o, r)


@pytest.mark.parametrize("numerics", ["reference", "fast"])
def test_tts_structure_generates_the_reference_tokens_per_slot_conditions(numerics: str):
    config, ours, reference = twins("tiny-tts", numerics=numerics)
    items = tts_items(config)
    frames = torch.zeros(40, 2, 0, 1, dtype=torch.long)  # TTS: no user stream
    out = run_ours(LMGen(ours, use_sampling=False, conditions=items), frames)
    conditions = reference.condition_provider.prepare_and_provide(reference_attributes(items))
    ref = run_reference(ReferenceGen(reference, use_sampling=False, condition_tensors=conditions), frames)
    assert_same_frames(out, ref, 40 - config.max_delay)


def hibiki_frames(config: LMConfig, steps: int, batch: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    return torch.randint(0, config.card, (steps, batch, config.num_user_codebooks, 1), generator=gen)


def test_hibiki_structure_with_real_cfg_matches_reference():
    """Batch-doubling guidance: the conditioned rows say "very_good", the null rows "very_bad"."""
    config, ours, reference = twins("tiny-hibiki")
    frames = hibiki_frames(config, 30, 2)
    good, bad = {"description": "very_good"}, {"description": "very_bad"}
    gen = LMGen(ours, use_sampling=False, cfg_coef=3.0, conditions=good, cfg_null=bad)
    out = run_ours(gen, frames)
    conditions = reference.condition_provider.prepare_and_provide(
        reference_attributes([good, good, bad, bad])
    )
    ref_gen = ReferenceGen(reference, use_sampling=False, cfg_coef=3.0, condition_tensors=conditions)
    ref = run_reference(ref_gen, frames)
    assert_same_frames(out, ref, 30 - config.max_delay)


def test_swapping_a_slots_conditions_leaves_its_neighbour_alone():
    config, ours, _ = twins("tiny-hibiki")
    frames = hibiki_frames(config, 20, 2)
    alone = run_ours(LMGen(ours, use_sampling=False, conditions={"description": "good"}), frames[:, :1])
    gen = LMGen(ours, use_sampling=False, conditions={"description": "good"})
    with gen.streaming(2):
        gen.set_conditions(1, {"description": "bad"})
        together = [gen.step(f) for f in frames]
        with pytest.raises(ValueError, match="not a possible value"):
            gen.set_conditions(1, {"description": "great"})
    for a, t in zip(alone, together, strict=True):
        assert (a is None and t is None) or torch.equal(a[0], t[0])
    assert any(t is not None and not torch.equal(t[0], t[1]) for t in together)


def test_conditioned_model_needs_its_conditions():
    _, ours, _ = twins("tiny-hibiki")
    with pytest.raises(ValueError, match="conditioned: pass conditions"):
        LMGen(ours)
    with pytest.raises(ValueError, match="unknown conditions"):
        with LMGen(ours, conditions={"speaker": "x"}).streaming(1):
            pass
    _, plain, _ = twins("tiny")
    with pytest.raises(ValueError, match="no conditioners"):
        LMGen(plain, cfg_coef=2.0)


@pytest.mark.parametrize("batch", [1, 3])
def test_stt_structure_tokens_and_extra_heads_match_reference(batch: int):
    """No depformer, every codebook from the user, four pause heads: 50 greedy text tokens
    identical, head probabilities within 1e-5."""
    config, ours, reference = twins("tiny-stt", numerics="fast")
    frames = hibiki_frames(config, 50, batch)
    out = run_ours(LMGen.from_config(ours), frames, heads=True)
    ref = run_reference(ReferenceGen(reference, use_sampling=False), frames, heads=True)
    for (tokens, probs), (ref_tokens, ref_heads) in zip(out, ref, strict=True):
        assert tokens.shape == (batch, 1, 1)
        assert torch.equal(tokens, ref_tokens)
        ref_probs = torch.stack(ref_heads, dim=1)[:, :, 0]
        torch.testing.assert_close(probs, ref_probs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("numerics", ["reference", "fast"])
def test_hibiki_zero_attention_matches_reference(numerics: str):
    """Grouped-query attention (``kv_repeat``) with non-interleaved rotary embeddings
    (``rope_concat``), as Hibiki-Zero uses them: the reference's logits and greedy tokens."""
    config, ours, reference = twins(
        "tiny", numerics=numerics, positional_embedding="rope_concat", kv_repeat=2
    )
    codes = torch.randint(
        0, config.card, (2, config.num_codebooks, 16), generator=torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(
        ours(codes).text_logits, reference(codes).text_logits, rtol=1e-4, atol=1e-4, equal_nan=True
    )
    frames = hibiki_frames(config, 30, 2)
    out = run_ours(LMGen(ours, use_sampling=False), frames)
    ref = run_reference(ReferenceGen(reference, use_sampling=False), frames)
    assert_same_frames(out, ref, 30 - config.max_delay)
