"""Text-to-speech: scripts, the state machine and the Synthesizer against moshi 0.2.13's TTSModel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from duplex.demo.random_checkpoint import VOICE_NAMES, write_random_checkpoint
from duplex.lm.synthesizer import Synthesizer
from duplex.lm.tts_script import parse_turns
from moshi.models.tts import TTSModel
from moshi.utils.compile import no_compile

TWO_SPEAKERS = ['Hello there. <break time="0.5s"/> How (are) you?', "I’m fine: thank you."]


@pytest.fixture(scope="module")
def tts_checkpoint(tmp_path_factory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("tts"), "tiny-tts", seed=5)


@pytest.fixture(scope="module")
def reference(tts_checkpoint, reference_info) -> TTSModel:
    info = reference_info(tts_checkpoint)
    return TTSModel.from_checkpoint_info(info, device="cpu", dtype=torch.float32, n_q=6, temp=0.0)


@pytest.fixture(scope="module")
def synth(tts_checkpoint) -> Synthesizer:
    return Synthesizer.from_checkpoint(tts_checkpoint, numerics="reference")


def voice_path(checkpoint: Path, name: str) -> Path:
    return next((checkpoint / "voices").glob(f"{name}.*.safetensors"))


def test_turn_tags():
    assert parse_turns("Hello there.") == ["Hello there."]
    assert parse_turns("[S1] Hi. [S2] Hello! [S2] Yes. [S1] Bye.") == ["Hi.", "Hello! Yes.", "Bye."]
    assert parse_turns("[S2] You start.") == ["", "You start."]


@pytest.mark.parametrize("script", [["Hello there, how are you doing today?"], TWO_SPEAKERS])
def test_script_entries_match_the_reference(synth, reference, script):
    ours = synth.entries(script)
    theirs = reference.prepare_script(script, padding_between=1)
    assert [(e.tokens, e.text, e.padding) for e in ours] == [(e.tokens, e.text, e.padding) for e in theirs]


def test_greedy_generation_matches_the_reference(synth, reference, tts_checkpoint):
    """A batch of two scripts (one with two speakers and a break), cross-attention voices, the
    demuxed lookahead stream, low-rank depformer embeddings, its weight schedule and the cfg table:
    at temperature 0 the reference's frames, end steps and transcripts, step for step."""
    scripts = [["Hello there, how are you doing today?"], TWO_SPEAKERS]
    voices = [["alice"], ["alice", "bob"]]
    entries = [synth.entries(s) for s in scripts]
    conditions = [synth.conditions(v, cfg=2.0) for v in voices]
    ours = synth.run(entries, conditions, cfg=2.0, temperature=0.0)

    attributes = [
        reference.make_condition_attributes([voice_path(tts_checkpoint, n) for n in names], cfg_coef=2.0)
        for names in voices
    ]
    with no_compile():
        theirs = reference.generate(
            [reference.prepare_script(s, padding_between=1) for s in scripts], attributes
        )
    assert ours.end_steps == theirs.end_steps and all(e is not None for e in ours.end_steps)
    assert ours.transcripts == theirs.all_transcripts
    assert len(ours.frames) == len(theirs.frames) > 40
    for a, b in zip(ours.frames, theirs.frames, strict=True):
        assert torch.equal(a, b)

    speeches = synth.render(ours)
    for speech, end, transcript in zip(speeches, ours.end_steps, ours.transcripts, strict=True):
        assert len(speech.audio) == end * 1920 and np.abs(speech.audio).max() <= 1
        assert [w.text for w in speech.words] == [w for w, _ in transcript]
        assert all(a.start <= b.start for a, b in zip(speech.words, speech.words[1:], strict=False))


@pytest.mark.parametrize("steps_between_words", [0, 3])
def test_streamed_text_speaks_the_same_as_whole_text(synth, steps_between_words):
    """Text given word by word speaks as the whole text; a step asked for before the words it
    reads ahead have come waits for them instead of padding, so stepping between words changes
    nothing."""
    text = "Hello there, how are you doing today?"
    whole = synth.generate([text], [["alice"]], temperature=0.0)[0]
    pieces, held = [], 0

    def step(stream) -> None:  # noqa: ANN001
        nonlocal held
        before = stream.batch.offsets[0]
        pcm = stream.step()
        held += stream.batch.offsets[0] == before
        if pcm is not None:
            pieces.append(pcm)

    with synth.stream(["alice"], temperature=0.0) as stream:
        for word in text.split():
            stream.add_text(word)
            for _ in range(steps_between_words):
                step(stream)
        stream.close()
        while not stream.finished:
            step(stream)
    assert (held > 0) == (steps_between_words > 0)
    assert [w.text for w in stream.words] == [w.text for w in whole.words]
    np.testing.assert_allclose(np.concatenate(pieces), whole.audio, atol=1e-6)


def test_bad_inputs_fail_clearly(synth, tts_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="unknown voice 'carol'.*known voices: alice, bob"):
        synth.conditions(["carol"], cfg=2.0)
    with pytest.raises(ValueError, match="trained for the strengths 1.0, 1.5"):
        synth.conditions(["alice"], cfg=2.2)
    with pytest.raises(ValueError, match="no words"):
        synth.entries('<break time="1s"/>')
    bad = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file

    save_file({"speaker_wavs": torch.zeros(1, 5, 3)}, str(bad))
    with pytest.raises(ValueError, match=r"this model takes \[1, 12, frames\]"):
        synth.conditions([bad], cfg=2.0)
    with pytest.raises(ValueError, match="temperature"):
        synth.generate(["Hi."], [["alice"]], temperature=-1)
    assert set(VOICE_NAMES) == {"alice", "bob"}


def test_real_guidance_matches_the_reference(tmp_path, reference_info):
    """A TTS model without distilled guidance (no ``cfg`` table): guidance by batch doubling, the
    null rows without voice, control and text, as the reference's TTSModel runs it."""
    from duplex.lm.config import LMConfig

    data = LMConfig.from_preset("tiny-tts").to_dict()
    del data["conditioners"]["cfg"]
    data["fuser"]["sum"] = ["control"]
    checkpoint = write_random_checkpoint(tmp_path / "tts", LMConfig.model_validate(data), seed=6)
    info = reference_info(checkpoint)
    reference = TTSModel.from_checkpoint_info(
        info, device="cpu", dtype=torch.float32, n_q=6, temp=0.0, cfg_coef=3.0
    )
    synth = Synthesizer.from_checkpoint(checkpoint, numerics="reference")
    script = ["Hello there, how are you?"]
    ours = synth.run([synth.entries(script)], [synth.conditions(["bob"], cfg=3.0)], cfg=3.0, temperature=0.0)
    attributes = [reference.make_condition_attributes([voice_path(checkpoint, "bob")])]
    with no_compile():
        theirs = reference.generate([reference.prepare_script(script, padding_between=1)], attributes)
    assert ours.transcripts == theirs.all_transcripts and ours.end_steps == theirs.end_steps
    assert len(ours.frames) == len(theirs.frames) > 20
    assert all(torch.equal(a, b) for a, b in zip(ours.frames, theirs.frames, strict=True))
