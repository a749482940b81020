"""The batched engine against the reference server's single-conversation loop (docs/architecture.md §4.5)."""

import numpy as np
import pytest
import torch
from duplex.stream.engine import DuplexEngine
from duplex.stream.slots import SamplingParams
from stream_helpers import FRAME, make_pipeline


def reference_server_reply(info, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """What moshi's own server sends for these frames: its per-connection loop, greedy."""
    from moshi.models import LMGen

    mimi = info.get_mimi(device="cpu")
    lm_gen = LMGen(info.get_moshi(device="cpu", dtype=torch.float32), use_sampling=False)
    pcm, tokens_out = [], []
    with torch.no_grad(), mimi.streaming(1), lm_gen.streaming(1):
        for index, frame in enumerate(frames):
            codes = mimi.encode(torch.from_numpy(frame)[None, None])
            if index == 0:
                mimi.reset_streaming()
            tokens = lm_gen.step(codes)
            if tokens is not None:
                pcm.append(mimi.decode(tokens[:, 1:])[0, 0].numpy())
                tokens_out.append(tokens[0, :, 0].numpy())
    return np.concatenate(pcm), np.stack(tokens_out)


def as_frames(pcm: np.ndarray) -> np.ndarray:
    usable = len(pcm) // FRAME * FRAME
    return pcm[:usable].reshape(-1, FRAME)


def run_busy(engine: DuplexEngine, frames: np.ndarray, params: SamplingParams, seed: int = 0, gaps=()):
    """Run one conversation while neighbours join, talk, pause and leave around it."""
    rng = np.random.default_rng(seed)
    neighbours = [engine.join(SamplingParams(seed=11)) for _ in range(engine.max_conversations - 1)]
    for _ in range(2):  # the neighbours are mid-conversation when ours joins
        for other in neighbours:
            engine.push(other, 0.1 * rng.standard_normal(FRAME).astype(np.float32))
        engine.step()
    ours = engine.join(params)
    replies, sent, step = [], 0, 0
    while sent < len(frames):
        for i, other in enumerate(neighbours):
            if (step + i) % 3:  # neighbours skip steps now and then (late audio)
                engine.push(other, 0.1 * rng.standard_normal(FRAME).astype(np.float32))
        if step == 4 and neighbours:  # one leaves, a newcomer takes its slot
            engine.leave(neighbours[0])
            neighbours[0] = engine.join(SamplingParams(seed=12))
        if step not in gaps:
            engine.push(ours, frames[sent])
            sent += 1
        replies += [r for r in engine.step() if r.conversation is ours]
        step += 1
    return replies


def test_a_conversation_in_a_busy_batch_matches_the_reference_server(demo_checkpoint, speech, reference_info):
    frames = as_frames(speech)
    ref_pcm, ref_tokens = reference_server_reply(reference_info(demo_checkpoint), frames)
    engine = DuplexEngine(make_pipeline(demo_checkpoint, use_sampling=False), max_conversations=3)
    replies = run_busy(engine, frames, SamplingParams(), gaps=(3, 7, 8))
    ours = np.concatenate([r.pcm for r in replies])
    assert len(replies) == len(frames) - 1 == len(ref_tokens)
    assert [r.frame_index for r in replies] == list(range(1, len(frames)))
    np.testing.assert_array_equal(np.stack([r.tokens for r in replies]), ref_tokens)  # text + audio codes
    np.testing.assert_allclose(ours, ref_pcm, atol=1e-6, rtol=0)
    assert len(np.unique(ref_tokens[:, 1])) > 3  # the model reacts: not one code over and over
    tokenizer = engine.pipeline.tokenizer
    assert [r.text for r in replies] == [tokenizer.token_text(t) or None for t in ref_tokens[:, 0]]


def test_a_sampled_conversation_depends_only_on_its_own_audio_and_seed(demo_checkpoint, speech):
    frames = as_frames(speech)[:20]
    pipeline = make_pipeline(demo_checkpoint, use_sampling=True, temp=1.0, temp_text=1.0)
    params = SamplingParams(seed=2024)

    alone = DuplexEngine(pipeline, max_conversations=3)
    conv = alone.join(params)
    solo = []
    for frame in frames:
        alone.push(conv, frame)
        solo += alone.step()
    alone.close()

    engine = DuplexEngine(pipeline, max_conversations=3)
    busy = run_busy(engine, frames, params, seed=5, gaps=(2, 5))
    engine.close()
    np.testing.assert_array_equal(np.stack([r.tokens for r in busy]), np.stack([r.tokens for r in solo]))
    np.testing.assert_allclose(
        np.concatenate([r.pcm for r in busy]), np.concatenate([r.pcm for r in solo]), atol=1e-6, rtol=0
    )
    assert [r.text for r in busy] == [r.text for r in solo]

    other_seed = DuplexEngine(pipeline, max_conversations=3)
    conv = other_seed.join(SamplingParams(seed=7))
    different = []
    for frame in frames:
        other_seed.push(conv, frame)
        different += other_seed.step()
    assert (np.stack([r.tokens for r in different]) != np.stack([r.tokens for r in solo])).mean() > 0.5


def test_the_engine_reports_step_times_and_rejects_bad_frames(demo_checkpoint):
    pipeline = make_pipeline(demo_checkpoint, use_sampling=False)
    engine = DuplexEngine(pipeline, max_conversations=2)
    assert engine.step() == []  # nothing to do: no step, no time recorded
    conv = engine.join()
    engine.push(conv, np.zeros(3 * FRAME, np.float32))
    for _ in range(3):
        engine.step()
    assert engine.steps == 3 and len(engine.step_times) == 3 and engine.step_seconds.count == 3
    with pytest.raises(ValueError, match=r"expected pcm \[2, 1920\]"):
        pipeline.step(np.zeros((3, FRAME), np.float32), np.ones(3, bool))
