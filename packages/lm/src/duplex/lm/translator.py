"""Streaming speech translation with Kyutai's Hibiki models (docs/architecture.md §5.4).

::

    translator = Translator.from_checkpoint("kyutai/hibiki-2b-pytorch-bf16")
    result = translator.translate(french_pcm)          # 24 kHz mono
    result.audio, result.text                          # the English speech and its text

Hibiki is Moshi's architecture run as an interpreter: the source speech is the "user" stream, the
translation is the model's own speech and text, a few seconds behind. The model is told the
quality to aim for by its ``description`` condition (``"very_good"``; with ``cfg > 1`` guidance
pushes away from ``"very_bad"``). When the source ends, one frame whose codes are all ``card``
marks the end of the input; silence follows until the model writes its end-of-text token (or a
limit is reached). As the reference's inference script does, the first source frame is fed twice
(the model never reads the input of its very first step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from duplex.codec.interfaces import AudioCodec
from duplex.codec.kernels import Numerics
from duplex.codec.kernels.weight_formats import WeightFormat
from duplex.lm.config import check_model_type
from duplex.lm.generate import LMGen
from duplex.lm.model import LMModel
from duplex.lm.tokenizer import TextTokenizer

EXTRA_SECONDS = 10.0  # after the source ends, at most this much more than its length


@dataclass
class Translation:
    audio: np.ndarray  # [samples] float32
    sample_rate: int
    text: str
    finished: bool  # the model wrote its end-of-text token (else the length limit stopped it)


class Translator:
    def __init__(
        self,
        mimi: AudioCodec,
        lm: LMModel,
        tokenizer: TextTokenizer,
        cfg: float = 1.0,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> None:
        config = lm.config
        check_model_type(config, "hibiki")
        self.mimi, self.lm, self.tokenizer = mimi, lm, tokenizer
        self.sample_rate, self.frame_size = int(mimi.sample_rate), int(mimi.frame_size)
        conditioned = lm.is_conditioned
        overrides = {} if temperature is None else {"temp": temperature, "temp_text": temperature}
        self.gen = LMGen.from_config(
            lm,
            conditions={"description": "very_good"} if conditioned else None,
            cfg_coef=cfg,
            cfg_null={"description": "very_bad"} if conditioned and cfg != 1.0 else None,
            **overrides,
        )
        self.seed = seed

    @classmethod
    def from_checkpoint(
        cls,
        source: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        numerics: Numerics = "fast",
        quantize: WeightFormat | None = None,
        **options,
    ) -> Translator:
        """Load a Hibiki checkpoint; ``quantize`` (``"bf16"``/``"int8"``) narrows the LM's matmul weights."""
        from duplex.lm.checkpoint import load_models

        mimi, lm, tokenizer, _ = load_models(source, "hibiki", device, dtype, numerics, quantize=quantize)
        return cls(mimi, lm, tokenizer, **options)

    @torch.no_grad()
    def translate(self, audio: np.ndarray | torch.Tensor) -> Translation:
        """Translate one mono 24 kHz recording."""
        pcm = torch.as_tensor(np.asarray(audio, dtype=np.float32)).to(self.lm.device)
        if pcm.dim() != 1:
            raise ValueError(f"translate takes mono audio [samples], got shape {list(pcm.shape)}")
        frames = torch.nn.functional.pad(pcm, (0, -len(pcm) % self.frame_size)).view(
            -1, 1, 1, self.frame_size
        )
        user = self.lm.config.num_user_codebooks
        silence = torch.zeros(1, 1, self.frame_size, device=self.lm.device)
        limit = len(frames) + math.ceil(EXTRA_SECONDS * self.mimi.frame_rate) + len(frames)
        out_audio, text_tokens, finished = [], [], False
        with self.mimi.streaming(1), self.gen.streaming(1):
            self.gen.set_seed(0, self.seed)
            for index in range(limit):
                if index < len(frames):
                    codes = self.mimi.encode(frames[index])[:, :user]
                elif index == len(frames):  # the end of the source
                    codes = torch.full(
                        (1, user, 1), self.lm.config.card, dtype=torch.long, device=self.lm.device
                    )
                else:
                    codes = self.mimi.encode(silence)[:, :user]
                if index == 0:
                    self.gen.step(codes)  # the first step never reads its input: feed the frame again
                tokens = self.gen.step(codes)
                if tokens is None:
                    continue
                text = int(tokens[0, 0, 0])
                if text == self.tokenizer.eos_id and index >= len(frames):  # an early end is ignored
                    finished = True
                    break
                text_tokens.append(text)
                out_audio.append(self.mimi.decode(tokens[:, 1:])[0, 0].clamp(-1, 1).cpu().numpy())
        audio_out = np.concatenate(out_audio) if out_audio else np.zeros(0, dtype=np.float32)
        return Translation(
            audio_out, self.sample_rate, self.tokenizer.tokens_text(text_tokens).strip(), finished
        )
