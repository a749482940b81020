"""Speech translation (Hibiki) against moshi 0.2.13 run the way its inference script runs it."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from duplex.codec.audio import load_audio
from duplex.demo.random_checkpoint import write_random_checkpoint
from duplex.lm.tokenizer import TextTokenizer
from duplex.lm.translator import EXTRA_SECONDS, Translator
from moshi.conditioners import ConditionAttributes
from moshi.models import LMGen
from moshi.utils.compile import no_compile


@pytest.fixture(scope="module")
def hibiki(tmp_path_factory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("hibiki"), "tiny-hibiki", seed=2)


def reference_run(info, pcm: np.ndarray, cfg: float, steps: int) -> tuple[list[int], np.ndarray]:  # noqa: ANN001
    """The reference's Mimi and LMGen, fed as its inference script feeds Hibiki: the first frame
    twice, then the source, one end-of-source frame of ``card`` codes, then silence."""
    mimi = info.get_mimi(device="cpu")
    lm = info.get_moshi(device="cpu", dtype=torch.float32)
    descriptions = ["very_good"] + (["very_bad"] if cfg != 1.0 else [])
    conditions = lm.condition_provider.prepare_and_provide(
        [ConditionAttributes(text={"description": d}, tensor={}) for d in descriptions]
    )
    gen = LMGen(lm, use_sampling=False, cfg_coef=cfg, condition_tensors=conditions)
    frames = torch.from_numpy(pcm).view(-1, 1, 1, 1920)
    text, audio = [], []
    with torch.no_grad(), no_compile(), mimi.streaming(1), gen.streaming(1):
        for index in range(steps):
            if index < len(frames):
                codes = mimi.encode(frames[index])
            elif index == len(frames):
                codes = torch.full((1, mimi.num_codebooks, 1), mimi.cardinality, dtype=torch.long)
            else:
                codes = mimi.encode(torch.zeros(1, 1, 1920))
            if index == 0:
                gen.step(codes)
            tokens = gen.step(codes)
            if tokens is not None:
                text.append(int(tokens[0, 0, 0]))
                audio.append(mimi.decode(tokens[:, 1:])[0, 0].clamp(-1, 1).numpy())
    return text, np.concatenate(audio)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_translation_matches_the_reference(hibiki, tmp_path, cfg, reference_info):
    path = tmp_path / "source.wav"
    subprocess.run(["espeak-ng", "-v", "fr", "-w", str(path), "Bonjour, comment allez-vous ?"], check=True)
    pcm = load_audio(path, 24_000)[0].numpy()
    pcm = pcm[: len(pcm) // 1920 * 1920]
    translator = Translator.from_checkpoint(hibiki, numerics="reference", cfg=cfg, temperature=0.0)
    ours = translator.translate(pcm)
    frames = len(pcm) // 1920
    steps = 2 * frames + math.ceil(EXTRA_SECONDS * 12.5)  # the translator's limit
    tokens, audio = reference_run(reference_info(hibiki), pcm, cfg, steps)
    tokenizer = TextTokenizer.from_file(hibiki / "tokenizer.model")
    if ours.finished:  # it stopped at the end-of-text token, after the source had ended
        end = next(i for i, t in enumerate(tokens) if t == tokenizer.eos_id and i + 2 >= frames)
        tokens, audio = tokens[:end], audio[: end * 1920]
    assert ours.text == tokenizer.tokens_text(tokens).strip()
    assert len(ours.audio) == len(audio) > 0
    np.testing.assert_allclose(ours.audio, audio, atol=1e-5)


def test_other_models_are_refused(tmp_path):
    checkpoint = write_random_checkpoint(tmp_path / "stt", "tiny-stt")
    with pytest.raises(ValueError, match="'stt' checkpoint, not speech translation.*duplex asr"):
        Translator.from_checkpoint(checkpoint)
