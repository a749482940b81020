"""LMGen against the reference's LMGen, and the slot behaviour the serving layer relies on."""

from __future__ import annotations

import pytest
import torch
from duplex.lm.config import LMConfig
from duplex.lm.generate import LMGen
from duplex.lm.model import LMModel
from duplex.lm.sampling import counter_exponential, counter_keys, sample_from_probs, sample_token
from moshi.models.lm import LMGen as ReferenceGen
from moshi.models.lm import LMModel as ReferenceLM
from moshi.utils.compile import no_compile
from torch.utils._python_dispatch import TorchDispatchMode


@pytest.fixture(autouse=True)
def _reference_in_eager_mode():
    with no_compile():
        yield


# Greedy decoding over a large vocabulary of a random model meets near-ties (top-2 logits closer
# than float32 rounding) now and then, which makes token-exact comparisons flaky whichever
# implementation is right. So these tests use small vocabularies: "tiny" is the official
# structure (RMSNorm f32, RoPE, SiLU-GLU, per-step depformer, delays, user streams) with a
# context of 10 steps, so 50 steps also go through the KV ring buffer several times.


def twin_models(config: LMConfig, seed: int = 0, numerics: str = "reference") -> tuple[LMModel, ReferenceLM]:
    torch.manual_seed(seed)
    ours = LMModel(config, numerics=numerics).eval()
    reference = ReferenceLM(**config.lm_kwargs(), device="meta").eval()
    reference.load_state_dict(ours.state_dict(), strict=True, assign=True)
    return ours, reference


def user_frames(config: LMConfig, steps: int, batch: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.card, (steps, batch, config.num_user_codebooks, 1), generator=gen)


def run(gen, frames: torch.Tensor) -> list[torch.Tensor | None]:
    with gen.streaming(frames.shape[1]):
        return [gen.step(frame) for frame in frames]


@pytest.mark.parametrize("numerics", ["reference", "fast"])
@pytest.mark.parametrize("preset", ["tiny", "reference-test"])
@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_tokens_match_reference(preset: str, batch: int, numerics: str):
    """Streaming logits feed an argmax: with reference numerics the very same tokens; the fast
    kernels' rounding leaves these small vocabularies' argmax alone too."""
    config = LMConfig.from_preset(preset)
    ours, reference = twin_models(config, numerics=numerics)
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
    """``rng="global"`` keeps the reference's random stream: same ``torch.manual_seed``, same tokens."""
    config = LMConfig.from_preset("tiny")
    ours, reference = twin_models(config)
    frames = user_frames(config, 20, 2)
    torch.manual_seed(42)
    out = run(LMGen(ours, temp=0.8, temp_text=0.7, top_k=25, top_k_text=10, rng="global"), frames)
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
        with pytest.raises(TypeError, match="integer"):
            gen.step(torch.zeros(2, 3, 1))
    # Values are checked apart from the step (which never reads them on the host).
    with pytest.raises(ValueError, match=r"\[0, 40\)"):
        gen.check_user_codes(torch.full((2, 3, 1), 40, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[-2, 0\]"):
        gen.check_user_codes(torch.tensor([[[0], [-2], [0]]]))
    with pytest.raises(ValueError, match=r"n_q - dep_q=3"):
        gen.check_user_codes(torch.zeros(1, 8, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        gen.check_user_codes(torch.zeros(2, 3, 1))
    gen.check_user_codes(torch.tensor([[[0], [-1], [39]]]))
    with pytest.raises(RuntimeError, match="eval"):
        LMGen(LMModel(config).train())
    with pytest.raises(ValueError, match="text token ids"):
        model(torch.full((1, 7, 4), 61))
    with pytest.raises(ValueError, match=r"\[B, 7, T\]"):
        model(torch.zeros(1, 5, 4, dtype=torch.long))


# -- counter-based noise ------------------------------------------------------------------------


def test_counter_exponential_is_exp1_distributed():
    keys = counter_keys(torch.arange(10), torch.zeros(10, dtype=torch.long), 0)
    noise = counter_exponential(keys, (10, 10_000))
    assert noise.shape == (10, 10_000) and noise.dtype == torch.float32
    assert (noise > 0).all() and torch.isfinite(noise).all()
    values = noise.flatten().double().sort().values
    n = len(values)
    assert abs(values.mean() - 1) < 0.015 and abs(values.var() - 1) < 0.03
    cdf = 1 - torch.exp(-values)
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    ks = torch.maximum(ranks / n - cdf, cdf - (ranks - 1) / n).max()
    assert ks < 1.63 / n**0.5  # Kolmogorov-Smirnov at the 1% level


def test_counter_noise_is_deterministic_and_per_slot():
    rng_state = torch.get_rng_state()
    seeds = torch.tensor([5, 6, 5, 5, -(2**63)])
    counters = torch.tensor([0, 0, 1, 0, 0])
    draws = torch.tensor([0, 0, 0, 1, 0])
    noise = counter_exponential(counter_keys(seeds, counters, draws), (5, 4096))
    again = counter_exponential(counter_keys(seeds.clone(), counters.clone(), draws.clone()), (5, 4096))
    assert torch.equal(noise, again)  # a pure function of (seed, counter, draw, index)
    # Seed, counter and draw each give unrelated noise.
    correlation = torch.corrcoef(noise)
    assert (correlation - torch.eye(5)).abs().max() < 0.06
    assert not torch.isclose(noise[:, None], noise[None]).all(-1).fill_diagonal_(False).any()
    # A row is the same alone as in a batch, and element i is the same whatever the shape.
    alone = counter_exponential(counter_keys(seeds[3:4], counters[3:4], draws[3:4]), (1, 100))
    assert torch.equal(alone[0], noise[3, :100])
    picked = counter_exponential(counter_keys(seeds, counters, draws), torch.tensor([[7, 4095]]))
    assert torch.equal(picked, noise[:, [7, 4095]])
    # No generator was used: torch's global one is untouched.
    assert torch.equal(torch.get_rng_state(), rng_state)


def test_counter_noise_samples_the_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    draws = 50_000
    keys = counter_keys(torch.full((draws,), 3), torch.arange(draws))
    counts = torch.bincount(sample_from_probs(probs.expand(draws, 4), keys), minlength=4)
    assert torch.allclose(counts / draws, probs, atol=0.01)


def test_sample_token_with_counter_noise():
    logits = torch.randn(4, 1, 1, 300, generator=torch.Generator().manual_seed(0))
    keys = counter_keys(torch.arange(4), torch.tensor([0, 1, 2, 3]), 2)
    rng_state = torch.get_rng_state()
    full = sample_token(logits, True, 0.8, keys=keys)
    assert full.shape == (4, 1, 1)
    # The noise belongs to the token: keeping every token with top-k changes nothing.
    assert torch.equal(sample_token(logits, True, 0.8, top_k=300, keys=keys), full)
    assert torch.equal(sample_token(logits, True, 0.8, top_p=1.0, keys=keys), full)
    assert torch.equal(torch.get_rng_state(), rng_state)
    # Each row depends only on its own key and logits.
    batched = sample_token(logits, True, 0.8, top_k=20, keys=keys)
    assert torch.equal(sample_token(logits[2:3], True, 0.8, top_k=20, keys=keys[2:3]), batched[2:3])
    # Greedy ignores the keys.
    assert torch.equal(sample_token(logits, False, keys=keys), logits.argmax(-1))


@pytest.mark.parametrize(("top_k", "top_p"), [(0, 0.0), (25, 0.0), (0, 0.9)])
def test_sample_token_with_counter_noise_compiles_to_the_same_tokens(top_k: int, top_p: float):
    logits = torch.randn(3, 2, 1, 500, generator=torch.Generator().manual_seed(1))
    keys = counter_keys(torch.tensor([1, 2, 3]), torch.tensor([10, 10, 11]), 4)
    compiled = torch.compile(sample_token, fullgraph=True, backend="eager")
    eager = sample_token(logits, True, 0.8, top_k, top_p, keys=keys)
    assert torch.equal(compiled(logits, True, 0.8, top_k, top_p, keys=keys), eager)


def test_unseeded_slots_follow_torch_manual_seed():
    config = LMConfig.from_preset("tiny")
    model = LMModel(config).eval()
    frames = user_frames(config, 8, 1).expand(-1, 3, -1, -1)  # the same input in every slot

    def sampled(global_seed: int) -> torch.Tensor:
        torch.manual_seed(global_seed)
        outs = run(LMGen(model, top_k=10, top_k_text=5), frames)
        return torch.cat([o for o in outs if o is not None], dim=-1)

    first = sampled(3)
    assert torch.equal(sampled(3), first)
    assert not torch.equal(sampled(4), first)
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])


def test_global_rng_mode_has_no_per_slot_seeds():
    model = LMModel(LMConfig.from_preset("tiny")).eval()
    gen = LMGen(model, rng="global")
    with gen.streaming(2):
        gen.set_seed(0, None)
        with pytest.raises(ValueError, match="rng='counter'"):
            gen.set_seed(0, 1)
        with pytest.raises(IndexError):
            gen.set_seed(2, None)
    with pytest.raises(ValueError, match="rng"):
        LMGen(model, rng="philox")


class _HostReads(TorchDispatchMode):
    """Records the ops that read a tensor's value on the host (a device sync on an accelerator)."""

    SYNCING = {"_local_scalar_dense", "nonzero", "equal", "allclose", "is_nonzero", "item"}

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name.split("::")[-1] in self.SYNCING:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("use_sampling", [True, False])
def test_step_reads_no_tensor_value_on_the_host(use_sampling: bool):
    """Steady state, model included: no ``.item()``, no branch on a tensor, no ``nonzero``."""
    config = LMConfig.from_preset("tiny")
    model = LMModel(config).eval()
    frames = user_frames(config, config.max_delay + 6, 3)
    gen = LMGen(model, use_sampling=use_sampling, top_k=10, top_k_text=5)
    with gen.streaming(3):
        gen.set_seed(1, 9)
        for frame in frames[: config.max_delay + 2]:
            gen.step(frame)
        gen.set_exec_mask(torch.tensor([True, False, True]))
        gen.step(frames[config.max_delay + 2])  # a new mask is read once (cached while it stays)
        reads = _HostReads()
        with reads:
            outs = [gen.step(frame) for frame in frames[config.max_delay + 3 :]]
    assert all(out is not None for out in outs)
    assert reads.seen == []


@pytest.mark.parametrize("use_sampling", [False, True], ids=["greedy", "sampling"])
def test_step_compiles_to_one_graph_with_the_eager_tokens(use_sampling: bool):
    """``torch.compile(gen.step, fullgraph=True)`` captures the whole steady-state step (model,
    depformer, sampling with counter-based noise) and gives the eager tokens. The reference set:
    the CPU's C kernels are opaque to dynamo."""
    config = LMConfig.from_preset("tiny")
    torch.manual_seed(0)
    model = LMModel(config, numerics="reference").eval()
    frames = user_frames(config, 30, 2)
    warm = config.max_delay + 12  # past the delays and the context of 10 steps
    outs = {}
    for mode in ("eager", "compiled"):
        gen = LMGen(model, use_sampling=use_sampling, top_k=10, top_k_text=5)
        with gen.streaming(2):
            gen.set_seed(0, 5)
            gen.set_seed(1, 6)
            tokens = [gen.step(frame) for frame in frames[:warm]]
            step = (
                gen.step if mode == "eager" else torch.compile(gen.step, fullgraph=True, backend="aot_eager")
            )
            tokens += [step(frame) for frame in frames[warm:]]
        outs[mode] = torch.cat(tokens[warm:], dim=-1)
    assert torch.equal(outs["compiled"], outs["eager"])


@pytest.mark.parametrize("use_sampling", [False, True], ids=["greedy", "sampling"])
def test_steady_state_step_replays_from_its_recording_with_the_eager_tokens(monkeypatch, use_sampling):
    """``cuda_graph=True`` records the steady-state step once (a GPU records a CUDA graph; here a
    recorder that re-runs the step on the recorded buffers) and replays it: same tokens, with
    resets, execution masks and seeds changed between replays."""
    from duplex.codec import graphs

    recorded = []
    monkeypatch.setattr(
        graphs, "record_cuda_graph", lambda step, inputs: recorded.append(1) or (lambda: step(*inputs))
    )
    config = LMConfig.from_preset("tiny")
    torch.manual_seed(0)
    model = LMModel(config).eval()
    frames = user_frames(config, config.max_delay + 14, 3)
    outs = {}
    for graphed in (False, True):
        gen = LMGen(model, use_sampling=use_sampling, top_k=10, top_k_text=5, cuda_graph=graphed)
        tokens = []
        with gen.streaming(3):
            for slot in range(3):
                gen.set_seed(slot, 10 + slot)
            for t, frame in enumerate(frames):
                if t == config.max_delay + 6:
                    gen.set_exec_mask(torch.tensor([True, False, True]))
                if t == config.max_delay + 8:
                    gen.set_exec_mask(torch.tensor([True, True, True]))
                    gen.set_seed(0, 99)
                    gen.reset_streaming([0])
                tokens.append(gen.step(frame))
        outs[graphed] = tokens
    assert len(recorded) == 1
    assert [o is None for o in outs[True]] == [o is None for o in outs[False]]
    assert all(a is None or torch.equal(a, b) for a, b in zip(outs[True], outs[False], strict=True))
