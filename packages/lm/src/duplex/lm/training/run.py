"""``train_lm``: a whole LM training run (init, data, trainer, resume, export)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from duplex.codec.codecs import DEFAULT_CODEC, declared_codec, load_codec
from duplex.codec.interfaces import AudioCodec
from duplex.codec.training.run import StepDataModule, validation_subset
from duplex.codec.training.trainer import KEEP_CHECKPOINTS, build_trainer, last_checkpoint
from duplex.lm.checkpoint import CheckpointError, load_checkpoint
from duplex.lm.config import LMConfig
from duplex.lm.data import MultistreamDataset, TokenCache
from duplex.lm.lora import apply_lora, lora_state_dict
from duplex.lm.model import LMModel
from duplex.lm.tokenizer import TextTokenizer
from duplex.lm.training.config import LMTrainingConfig
from duplex.lm.training.module import LMTrainingModule
from lightning.pytorch.callbacks import Callback

PRESET_PREFIX = "preset:"


@dataclass
class Initialisation:
    model: LMModel
    codec: AudioCodec
    codec_name: str  # its name in duplex.codec.registry.CODECS
    codec_path: Path
    tokenizer: TextTokenizer
    tokenizer_path: Path
    weights_path: Path | None  # the initial LM weights file, None for a random init


def initialise(
    init: str, codec: str | Path | None = None, tokenizer: str | Path | None = None
) -> Initialisation:
    """The LM, codec and tokenizer to start from.

    ``init`` is a checkpoint (directory or Hugging Face repo, see :func:`load_checkpoint`) or
    ``preset:NAME``, a randomly initialised :class:`LMConfig` preset whose vocabulary sizes are set
    from ``codec`` and ``tokenizer`` (both required then). Given ``codec`` / ``tokenizer`` replace
    the checkpoint's own; a given ``codec`` directory declares its codec in its ``config.json``
    (``codec``, default ``mimi``).
    """
    if init.startswith(PRESET_PREFIX):
        name = init.removeprefix(PRESET_PREFIX)
        if name not in LMConfig.preset_names():
            LMConfig.from_preset(name)  # the unknown name is the mistake to report, not a missing --codec
        if codec is None or tokenizer is None:
            raise ValueError(
                f"--init {init} starts from random weights, so it needs the codec and the tokenizer to "
                "train with: pass --codec and --tokenizer (codec weights, a SentencePiece model)"
            )
        codec_name = declared_codec(codec)
        audio_codec = load_codec(codec, codec_name)
        text = TextTokenizer.from_file(tokenizer)
        overrides = {"text_card": text.vocab_size, "card": audio_codec.cardinality}
        if codec_name != DEFAULT_CODEC:
            overrides["codec"] = codec_name
        config = LMConfig.from_preset(init.removeprefix(PRESET_PREFIX), **overrides)
        torch.manual_seed(0)
        return Initialisation(
            LMModel(config), audio_codec, codec_name, Path(codec), text, Path(tokenizer), None
        )
    bundle = load_checkpoint(init)
    model = bundle.lm(dtype=torch.float32)
    codec_path = Path(codec) if codec is not None else bundle.mimi_weights
    tokenizer_path = Path(tokenizer) if tokenizer is not None else bundle.tokenizer
    if codec_path is None or tokenizer_path is None:
        raise CheckpointError(f"{init} lacks its codec or tokenizer file: pass --codec / --tokenizer")
    codec_name = declared_codec(codec) if codec is not None else bundle.config.codec
    codec_config = bundle.mimi_config if codec is None else None
    audio_codec = load_codec(codec_path, codec_name, config=codec_config)
    text = TextTokenizer.from_file(
        tokenizer_path,
        pad_id=model.config.existing_text_padding_id,
        epad_id=model.config.existing_text_end_padding_id,
    )
    return Initialisation(model, audio_codec, codec_name, codec_path, text, tokenizer_path, bundle.lm_weights)


def check_compatible(model: LMModel, codec: AudioCodec, tokenizer: TextTokenizer) -> None:
    c = model.config
    if c.n_q != 2 * c.dep_q:
        raise ValueError(
            f"training needs the model's and the user's streams: n_q ({c.n_q}) must be 2 * dep_q ({c.dep_q})"
        )
    if codec.total_codebooks < c.dep_q:
        raise ValueError(
            f"the codec has {codec.total_codebooks} codebooks, the LM needs {c.dep_q} per speaker"
        )
    if codec.cardinality > c.card:
        raise ValueError(f"codec codes go up to {codec.cardinality - 1} but the LM's card is {c.card}")
    if tokenizer.vocab_size > c.text_card:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} pieces but the LM's text_card is {c.text_card}"
        )


def export_checkpoint(module: LMTrainingModule, init: Initialisation, directory: Path) -> Path:
    """A checkpoint directory ``load_checkpoint`` / ``LMModel.from_pretrained`` read: config.json,
    the LM weights (plus ``lora.safetensors`` for a LoRA run), the codec and the tokenizer."""
    from duplex.codec.checkpoint import write_safetensors

    directory.mkdir(parents=True, exist_ok=True)
    model = module.model
    config = model.config.model_copy(
        update={
            "moshi_name": "model.safetensors",
            "mimi_name": "mimi.safetensors",
            "mimi_config_name": "mimi_config.json",
            "tokenizer_name": "tokenizer.model",
            **(
                {}
                if init.codec_name == DEFAULT_CODEC
                else {"codec": init.codec_name, "mimi_config_name": None}
            ),
        }
    )
    if module.lora:
        lora = {k: v.float().cpu().contiguous() for k, v in lora_state_dict(model).items()}
        write_safetensors(directory / "lora.safetensors", lora, {"format": "pt"})
        base = init.weights_path
        if base is None:
            raise ValueError("a LoRA run needs initial weights to refer to")
        shutil.copyfile(base, directory / "model.safetensors")
        config = config.model_copy(
            update={
                "lora": True,
                "lora_name": "lora.safetensors",
                "lora_rank": module.config.lora_rank,
                "lora_scaling": module.config.lora_scaling,
            }
        )
        config.save_json(directory / "config.json")
    else:
        model.config = config
        model.save_pretrained(directory)
    # The codec as it was loaded (with its checkpoint's mimi_config.json, which a weights file
    # written by the reference does not carry), at all its codebooks; its file carries its config.
    codec = load_codec(
        init.codec_path, init.codec_name, num_codebooks=init.codec.total_codebooks, config=init.codec.config
    )
    codec.save_pretrained(directory / "mimi.safetensors")
    if init.codec_name == DEFAULT_CODEC:  # the official layout's mimi_config.json
        (directory / "mimi_config.json").write_text(json.dumps(codec.config.to_dict(), indent=2))
    shutil.copyfile(init.tokenizer_path, directory / "tokenizer.model")
    return directory


def train_lm(
    data: str | Path,
    output: str | Path,
    init: str,
    config: LMTrainingConfig,
    max_steps: int,
    lora: bool = False,
    codec: str | Path | None = None,
    tokenizer: str | Path | None = None,
    checkpoint_every: int = 50,
    strategy: str = "auto",
    devices: int | str = 1,
    accelerator: str = "auto",
    precision: str | None = None,
    callbacks: Sequence[Callback] = (),
    progress_bar: bool = True,
    keep_checkpoints: int = KEEP_CHECKPOINTS,
) -> LMTrainingModule:
    """Train (or resume, when ``output`` holds a checkpoint) and export ``output/checkpoint``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    L.seed_everything(config.seed, workers=True, verbose=False)
    start = initialise(init, codec, tokenizer)
    model = start.model.float().train()
    check_compatible(model, start.codec, start.tokenizer)
    start.codec.num_codebooks = model.config.dep_q
    cache = TokenCache(output / "token_cache", start.codec)
    dataset = MultistreamDataset.from_folder(
        data,
        cache,
        start.tokenizer.encode,
        model.config.dep_q,
        config.segment_frames,
        hop_frames=config.segment_hop_frames,
        pack=config.pack_dialogues,
        user_text=config.user_text_weight > 0,
    )
    if lora:
        torch.manual_seed(config.seed)
        apply_lora(model, config.lora_rank, config.lora_scaling, freeze_base=True)
    module = LMTrainingModule(model, config, lora=lora)
    datamodule = StepDataModule(
        dataset,
        validation_subset(dataset, config.validation_segments),
        config.batch_size,
        checkpoint_every,
        config.seed,
    )
    trainer = build_trainer(
        output,
        max_steps=max_steps,
        checkpoint_every=checkpoint_every,
        strategy=strategy,
        devices=devices,
        accelerator=accelerator,
        precision=precision,
        callbacks=callbacks,
        progress_bar=progress_bar,
        keep_checkpoints=keep_checkpoints,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=last_checkpoint(output))
    if trainer.is_global_zero:
        export_checkpoint(module, start, output / "checkpoint")
        if lora:
            shutil.copyfile(output / "checkpoint" / "lora.safetensors", output / "lora.safetensors")
    return module
