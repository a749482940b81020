"""Checkpoints of the LM: what a directory or Hugging Face repo holds, and strict loading.

A checkpoint is a directory or a Hugging Face repo (``kyutai/moshiko-pytorch-bf16``) with a
``config.json`` (:class:`~duplex.lm.config.LMConfig`) naming its files: the LM weights
(``moshi_name``), Mimi (``mimi_name``, ``mimi_config_name``), the text tokenizer
(``tokenizer_name``) and optional LoRA weights (``lora_name``). A name may also be
``hf://owner/repo/path`` (a file of another repo) or ``file://path``. Without a ``config.json``
(the first Moshi repos) the official 7B configuration is assumed.

::

    bundle = load_checkpoint("kyutai/moshiko-pytorch-bf16")
    lm = bundle.lm(dtype=torch.bfloat16)      # strict: every key present, none unknown, right shapes
    mimi = bundle.mimi()
    tokenizer = bundle.text_tokenizer()

Weights use the official key names (fused ``self_attn.in_proj_weight``, per-step matrices of the
depformer stacked along dim 0); the reference's in-memory names (``in_projs.{i}.weight``) load too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from duplex.codec.checkpoint import CheckpointError, locate_checkpoint, read_mimi_config
from duplex.codec.kernels import Numerics
from duplex.codec.kernels.weight_formats import WeightFormat
from duplex.lm.config import LMConfig, LowPrecisionConfig, check_model_type
from duplex.lm.model import LMModel
from duplex.lm.tokenizer import TextTokenizer
from duplex.lm.weights import as_lm_config, build_lm, checkpoint_lm_config, load_lm_state_dict, save_lm

if TYPE_CHECKING:
    from duplex.codec.interfaces import AudioCodec

__all__ = [
    "CheckpointBundle",
    "CheckpointError",
    "load_checkpoint",
    "load_lm",
    "load_models",
    "load_lm_state_dict",
    "save_lm",
]


@dataclass
class CheckpointBundle:
    """Everything a checkpoint names, as local paths (None where a local directory lacks a file)."""

    config: LMConfig
    lm_weights: Path
    mimi_weights: Path | None
    mimi_config: dict[str, Any] | None
    tokenizer: Path | None
    lora_weights: Path | None
    source: str

    def lm(
        self,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        fuse_lora: bool = True,
        numerics: Numerics = "fast",
        quantize: WeightFormat | LowPrecisionConfig | None = None,
    ) -> LMModel:
        """The LM in eval mode; floating weights are cast to ``dtype`` (default: as stored, float16
        widened to float32 on a CPU);
        ``numerics``: ``"fast"`` or ``"reference"`` (see :class:`~duplex.lm.model.LMModel`);
        ``quantize``: "bf16" or "int8" matmul weights, narrowed as they are read.
        A Hibiki model's text embedding of ``</s>`` is PAD's, as the reference loads it
        (docs/architecture.md §5.4)."""
        return build_lm(
            LMModel,
            self.config,
            self.lm_weights,
            self.lora_weights,
            device,
            dtype,
            fuse_lora,
            numerics,
            quantize,
        )

    def text_tokenizer(self) -> TextTokenizer:
        if self.tokenizer is None:
            raise CheckpointError(f"{self.source} has no text tokenizer {self.config.tokenizer_name!r}")
        return TextTokenizer.from_file(
            self.tokenizer,
            pad_id=self.config.existing_text_padding_id,
            epad_id=self.config.existing_text_end_padding_id,
        )

    def codec(self, device: torch.device | str | None = None, numerics: Numerics = "fast") -> AudioCodec:
        """The checkpoint's codec (``config.codec`` in :data:`~duplex.codec.registry.CODECS`,
        Mimi by default), running ``config.mimi_num_codebooks`` codebooks; ``numerics``:
        ``"fast"`` or ``"reference"`` (see :class:`~duplex.codec.mimi.Mimi`)."""
        from duplex.codec.codecs import load_codec

        if self.mimi_weights is None:
            raise CheckpointError(f"{self.source} has no codec (Mimi) weights {self.config.mimi_name!r}")
        return load_codec(
            self.mimi_weights,
            self.config.codec,
            num_codebooks=self.config.mimi_num_codebooks,
            device=device,
            config=self.mimi_config,
            numerics=numerics,
        )

    mimi = codec  # the official layout's name for the codec


def load_checkpoint(source: str | Path, config: LMConfig | str | Path | None = None) -> CheckpointBundle:
    """Resolve a checkpoint directory or Hugging Face repo id (downloading what a repo names).

    Sources are resolved by :func:`~duplex.codec.checkpoint.locate_checkpoint`, as Mimi's are: a
    path that does not exist is an error naming it, never a hub lookup. ``config`` (an LMConfig or
    a JSON path) replaces the checkpoint's own ``config.json``."""
    location = locate_checkpoint(source)
    if location.is_file:
        raise CheckpointError(
            f"{location.path} is a file; pass its checkpoint directory, or load the weights file with "
            "load_lm(path, config=...)"
        )
    config = as_lm_config(config) if config is not None else checkpoint_lm_config(location)
    local = location.is_local
    lm_weights = location.file(config.moshi_name)
    assert lm_weights is not None
    mimi_config = None
    if config.mimi_config_name is not None:
        mimi_config_path = location.file(config.mimi_config_name, optional=local)
        if mimi_config_path is not None:
            mimi_config = read_mimi_config(mimi_config_path)
    return CheckpointBundle(
        config=config,
        lm_weights=lm_weights,
        mimi_weights=location.file(config.mimi_name, optional=local),
        mimi_config=mimi_config,
        tokenizer=location.file(config.tokenizer_name, optional=local),
        lora_weights=location.file(config.lora_name) if config.lora_name else None,
        source=str(location),
    )


def load_models(
    source: str | Path,
    model_type: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    numerics: Numerics = "fast",
    quantize: WeightFormat | None = None,
) -> tuple[AudioCodec, LMModel, TextTokenizer, CheckpointBundle]:
    """The codec, the LM and the tokenizer of a checkpoint that must be a ``model_type`` model (checked
    before any weight is read: the error names the command that fits). ``quantize`` stores the
    LM's matmul weights in "bf16" or "int8"; Mimi stays as stored."""
    bundle = load_checkpoint(source)
    check_model_type(bundle.config, model_type, source)
    lm = bundle.lm(device=device, dtype=dtype, numerics=numerics, quantize=quantize)
    return bundle.codec(device=device, numerics=numerics), lm, bundle.text_tokenizer(), bundle


def load_lm(
    source: str | Path,
    config: LMConfig | str | Path | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    fuse_lora: bool = True,
) -> LMModel:
    """An :class:`LMModel` from a checkpoint directory, a repo id, or a weights file plus ``config``."""
    return LMModel.from_pretrained(source, device=device, dtype=dtype, config=config, fuse_lora=fuse_lora)
