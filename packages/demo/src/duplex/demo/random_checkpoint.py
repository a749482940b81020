"""A checkpoint in the official layout with random weights, for tests, benchmarks and examples.

::

    write_random_checkpoint("ckpt/stt", "tiny-stt")      # config.json, model.safetensors,
                                                         # mimi.safetensors, mimi_config.json,
                                                         # tokenizer.model (+ voices/ for TTS)

It loads like a downloaded one (``load_checkpoint``, the CLI's ``--checkpoint``, the reference's
loaders), so every command can be exercised without the official weights. A model with a voice
conditioner also gets voice files in the official format, ``voices/<name>.<sig>@<epoch>.safetensors``
holding ``speaker_wavs [1, dim, frames]``. A random STT model is made to mark words: its
end-of-padding row of the text head copies the row of the token it predicts most, so its text
stream has word boundaries and pieces between them (words for the read-out to find).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from duplex.codec import MimiConfig
from duplex.codec.calibration import calibrate_untrained, calibration_audio
from duplex.codec.codecs import DEFAULT_CODEC, codec_class
from duplex.codec.interfaces import AudioCodec
from duplex.lm.config import LMConfig
from duplex.lm.data.text_tokenizer import train_tokenizer
from duplex.lm.model import LMModel
from duplex.lm.voices import voice_file_name
from safetensors.torch import save_file

# Sentences the tokenizer learns its pieces from.
CORPUS = (
    "hello there how are you doing today",
    "i would like to talk about the weather",
    "it is a fine day to go outside for a walk",
    "what did you have for breakfast this morning",
    "the quick brown fox jumps over the lazy dog",
    "can you hear me well enough on this line",
)
VOICE_NAMES = ("alice", "bob")
VOICE_FRAMES = 25  # 2 s of Mimi latent (the official voices hold 10 s)


def write_random_checkpoint(
    directory: str | Path, preset: str | LMConfig, seed: int = 0, mimi_preset: str = "tiny"
) -> Path:
    """Write a random checkpoint of ``preset`` (an LMConfig preset name or config) and a Mimi of
    ``mimi_preset`` to ``directory``; the same seed writes the same files. Returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = LMConfig.from_preset(preset) if isinstance(preset, str) else preset
    mimi_config = MimiConfig.from_preset(mimi_preset)
    if config.mimi_num_codebooks > mimi_config.quantizer.n_q:
        raise ValueError(
            f"the LM reads {config.mimi_num_codebooks} codebooks, Mimi {mimi_preset!r} has "
            f"{mimi_config.quantizer.n_q}"
        )
    if config.card > mimi_config.quantizer.bins:
        raise ValueError(
            f"the LM's audio tokens go up to card={config.card}, Mimi {mimi_preset!r} has "
            f"{mimi_config.quantizer.bins} bins: give a preset with card <= {mimi_config.quantizer.bins}"
        )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        mimi = codec_class(DEFAULT_CODEC)(mimi_config, numerics="reference")
        calibrate_untrained(mimi, seed=seed)  # so that different sounds get different codes
        lm = LMModel(config)
        if config.model_type == "stt":
            _speak_in_words(lm, mimi)
        voices = _random_voices(config)
    finally:
        torch.random.set_rng_state(generator_state)

    mimi.save_pretrained(directory / "mimi.safetensors")
    (directory / "mimi_config.json").write_text(json.dumps(mimi_config.to_dict(), indent=2) + "\n")
    weights = {k: v.detach().float().contiguous() for k, v in lm.state_dict().items()}
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    train_tokenizer(
        CORPUS * 4,
        directory / "tokenizer.model",
        config.text_card,
        model_type="bpe",
        normalization="identity",
        num_threads=1,
    )
    fields = config.to_dict() | {
        "moshi_name": "model.safetensors",
        "mimi_name": "mimi.safetensors",
        "mimi_config_name": "mimi_config.json",
        "tokenizer_name": "tokenizer.model",
    }
    if voices:
        fields["model_id"] = {"sig": "random", "epoch": seed}
        config = LMConfig.model_validate(fields)
        for name, tensor in voices.items():
            path = directory / "voices" / voice_file_name(name, config)
            path.parent.mkdir(exist_ok=True)
            save_file({"speaker_wavs": tensor}, str(path))
    (directory / "config.json").write_text(json.dumps(fields, indent=2) + "\n")
    return directory


@torch.no_grad()
def _speak_in_words(lm: LMModel, mimi: AudioCodec) -> None:
    from duplex.lm.generate import LMGen

    audio = calibration_audio(mimi.sample_rate, seconds=4)
    codes = mimi.encode(audio)[:, : lm.config.num_user_codebooks]
    gen = LMGen(lm.eval(), use_sampling=False)
    with gen.streaming(1):
        tokens = [int(gen.step(codes[:, :, t : t + 1])[0, 0, 0]) for t in range(codes.shape[-1])]
    counts = torch.bincount(torch.tensor(tokens), minlength=lm.config.text_card)
    counts[: lm.config.existing_text_padding_id + 1] = 0  # the special tokens
    most = int(counts.argmax())
    lm.text_linear.weight[lm.config.existing_text_end_padding_id] = lm.text_linear.weight[most] * 1.001


def _random_voices(config: LMConfig) -> dict[str, torch.Tensor]:
    conditioner = (config.conditioners or {}).get("speaker_wavs")
    if conditioner is None:
        return {}
    dim = conditioner.settings.dim
    return {name: torch.randn(1, dim, VOICE_FRAMES) for name in VOICE_NAMES}
