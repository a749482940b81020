"""Reading and writing the LM's weights: strict loading into a model, LoRA, ``config.json``.

This module sits below :mod:`duplex.lm.model` (which imports it for ``LMModel.from_pretrained`` and
``save_pretrained``), so it never imports the model: the class to build is passed in. Sources are
resolved by :func:`duplex.codec.checkpoint.locate_checkpoint`, the resolver Mimi uses too.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from duplex.codec.checkpoint import (
    CheckpointError,
    CheckpointSource,
    canonical_state_dict,
    check_state_dict,
    locate_checkpoint,
    read_safetensors,
    write_safetensors,
)
from duplex.codec.kernels.weight_formats import SCALE_SUFFIX, quantize_int8
from duplex.lm.config import LMConfig, LowPrecisionConfig
from duplex.lm.lora import apply_lora, fuse_lora, load_lora
from torch import nn

__all__ = [
    "as_lm_config",
    "build_lm",
    "check_finite",
    "checkpoint_lm_config",
    "load_lm_state_dict",
    "load_lm_weights",
    "narrowing",
    "save_lm",
    "with_low_precision",
]

Model = TypeVar("Model", bound=nn.Module)


def as_lm_config(config: LMConfig | str | Path) -> LMConfig:
    """``config`` itself, or the :class:`LMConfig` in the JSON file it names."""
    return config if isinstance(config, LMConfig) else LMConfig.from_json(config)


def checkpoint_lm_config(location: CheckpointSource) -> LMConfig:
    """The ``config.json`` of a checkpoint directory or repo; without one (the first Moshi repos),
    the official Moshi 7B configuration, with a warning."""
    path = location.file("config.json", optional=True)
    if path is None:
        warnings.warn(
            f"{location} has no config.json; assuming the official Moshi 7B configuration", stacklevel=3
        )
        return LMConfig.from_preset("moshi-7b")
    return LMConfig.from_json(path)


def _describe(config: LMConfig) -> str:
    return (
        f"dim={config.dim}, num_layers={config.num_layers}, n_q={config.n_q}, dep_q={config.dep_q}, "
        f"card={config.card}, text_card={config.text_card}, depformer_dim={config.depformer_dim}"
    )


def _all_finite(tensor: torch.Tensor, chunk: int = 1 << 20) -> bool:
    """``tensor.isfinite().all()``, a chunk at a time (the whole mask of a large tensor would cost
    a fraction of its size again while loading)."""
    flat = tensor.reshape(-1)
    return all(bool(flat[i : i + chunk].isfinite().all()) for i in range(0, flat.numel(), chunk))


def check_finite(state: dict[str, torch.Tensor], source: str | Path = "the state dict") -> None:
    """Refuse floating tensors holding NaN or Inf (a corrupt file or a diverged training run would
    otherwise load and generate garbage), naming the first such tensor."""
    bad = [key for key, value in state.items() if value.is_floating_point() and not _all_finite(value)]
    if bad:
        first = state[bad[0]]
        count = int((~first.isfinite()).sum())
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise CheckpointError(
            f"{source}: tensor {bad[0]!r} holds {count} NaN/Inf values of {first.numel()}{more}; the "
            "weights are corrupt or come from a diverged training run: use an earlier checkpoint"
        )


def narrowing(model: nn.Module, dtype: torch.dtype | None = None) -> Callable[[str, torch.Tensor], dict]:
    """``(key, tensor) -> tensors to load``: a float weight that ``model`` stores in low precision
    becomes its bf16 or int8 form (docs/nn-api.md), any other floating tensor is cast to
    ``dtype`` (where given); tensors already in the wanted form are taken as they are."""
    stored = {key: value.dtype for key, value in model.state_dict().items()}
    settings = model.config.low_precision
    group_size = settings.group_size if settings is not None else None

    def narrow(key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        wanted = stored.get(key)
        if not tensor.is_floating_point() or wanted is None:
            return {key: tensor}
        if wanted is torch.int8:
            values, scale = quantize_int8(tensor, group_size)
            return {key: values, key + SCALE_SUFFIX: scale}
        if wanted is torch.bfloat16 or key.endswith(SCALE_SUFFIX):
            return {key: tensor.to(wanted)}
        return {key: tensor.to(dtype) if dtype is not None else tensor}

    return narrow


def _check_low_precision(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """A quantized file loads only into a model configured for it (its own ``config.json``)."""
    stored = model.state_dict()
    quantized = [
        key for key, value in state.items() if key.endswith(SCALE_SUFFIX) or value.dtype is torch.int8
    ]
    if quantized and model.config.low_precision is None:
        raise CheckpointError(
            f"{source} holds int8-quantized weights (e.g. {quantized[0]!r}) but the configuration has no "
            "low_precision entry: load it with the config.json saved beside it"
        )
    for key in quantized:
        if key in stored and not key.endswith(SCALE_SUFFIX) and stored[key].dtype is not torch.int8:
            raise CheckpointError(
                f"{source}: {key!r} is int8 but the configuration stores it as {stored[key].dtype}: "
                "load the file with the config.json saved beside it"
            )


def load_lm_state_dict(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    dtype: torch.dtype | None = None,
    source: str | Path = "the state dict",
) -> None:
    """Strictly load ``state`` (official or reference names) into the LM ``model``, replacing its tensors.

    Floating tensors are cast to ``dtype`` where given (tensors already in it are taken as they
    are: no second copy); a model configured for low precision gets its weights narrowed.
    Raises :class:`CheckpointError` listing every missing, unexpected and mis-shaped key, naming a
    tensor that holds NaN or Inf, or a quantized file loaded into a float configuration
    (``source`` names the file in the message)."""
    _check_low_precision(model, state, source)
    narrow = narrowing(model, dtype)
    state = {
        key: value
        for raw_key, raw_value in canonical_state_dict(state).items()
        for key, value in narrow(raw_key, raw_value).items()
    }
    expected = {key: value.shape for key, value in model.state_dict().items()}
    check_state_dict(expected, state, f"the LM configuration ({_describe(model.config)})")
    check_finite(state, source)
    model.load_state_dict(state, strict=True, assign=True)


def with_low_precision(
    config: LMConfig, quantize: str | LowPrecisionConfig | None, source: object
) -> LMConfig:
    """``config`` set to store its weights as ``quantize`` asks ("bf16", "int8" or a full
    :class:`LowPrecisionConfig`); a checkpoint saved quantized loads as it is, in that format only."""
    if quantize is None:
        return config
    wanted = quantize if isinstance(quantize, LowPrecisionConfig) else LowPrecisionConfig(format=quantize)
    saved = config.low_precision
    if saved is not None:
        if saved.format != wanted.format:
            raise CheckpointError(
                f"{source} is saved in {saved.format}; it cannot be loaded as {wanted.format}: "
                f"quantize the float checkpoint instead (or leave --quantize out)"
            )
        return config
    if config.lora:
        raise CheckpointError(f"{source} is a LoRA checkpoint: fuse and save it before quantizing it")
    return config.model_copy(update={"low_precision": wanted})


def build_lm(
    cls: type[Model],
    config: LMConfig,
    weights: Path,
    lora_weights: Path | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    fuse: bool = True,
    numerics: str = "fast",
    quantize: str | LowPrecisionConfig | None = None,
) -> Model:
    """``cls(config, numerics=numerics)`` with the weights file loaded strictly (and LoRA applied),
    in eval mode.

    Floating weights are cast to ``dtype`` (default: as stored, except float16 on a CPU, which runs
    in float32); with ``fuse`` the LoRA weights are folded into the base weights. ``quantize``
    ("bf16" or "int8") stores the matmul weights in low precision as they are read (docs/nn-api.md)."""
    if lora_weights is not None and not config.lora:
        raise CheckpointError(f"{weights}: lora_name is set but the config has lora=false")
    config = with_low_precision(config, quantize, weights)
    with torch.device("meta"):
        model = cls(config, numerics=numerics)
    # narrowed as read: a float file quantized at load never has all its float tensors in memory
    state, _ = read_safetensors(weights, device=device or "cpu", transform=narrowing(model, dtype))
    load_lm_state_dict(model, state, dtype, source=weights)
    on_cpu = torch.device(device or "cpu").type == "cpu"
    if dtype is None and on_cpu and config.low_precision is None:
        if any(p.dtype is torch.float16 for p in model.parameters()):
            model.float()  # CPUs have no fast float16 arithmetic: a float16 file runs widened
    if config.model_type == "hibiki":
        # Hibiki sometimes samples EOS too early; embedding EOS like PAD makes it harmless.
        with torch.no_grad():
            model.text_emb.weight[2] = model.text_emb.weight[3]
    if config.lora:
        apply_lora(model, config.lora_rank, config.lora_scaling, freeze_base=False)
        if lora_weights is not None:
            load_lora(model, lora_weights)
            if fuse:
                fuse_lora(model)
    model.to(device=device)
    return model.eval()


def load_lm_weights(
    cls: type[Model],
    source: str | Path,
    config: LMConfig | str | Path | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    fuse: bool = True,
    numerics: str = "fast",
    quantize: str | LowPrecisionConfig | None = None,
) -> Model:
    """An LM of class ``cls`` from a checkpoint directory, a repo id, or a weights file with ``config``.

    ``config`` (an LMConfig or a JSON path) replaces the checkpoint's own ``config.json``."""
    location = locate_checkpoint(source)
    if location.is_file:
        assert location.path is not None
        if config is None:
            raise CheckpointError(
                f"{location.path} is a weights file: pass its config (an LMConfig or config.json path)"
            )
        return build_lm(
            cls, as_lm_config(config), location.path, None, device, dtype, fuse, numerics, quantize
        )
    config = as_lm_config(config) if config is not None else checkpoint_lm_config(location)
    weights = location.file(config.moshi_name)
    lora = location.file(config.lora_name) if config.lora_name else None
    assert weights is not None
    return build_lm(cls, config, weights, lora, device, dtype, fuse, numerics, quantize)


def save_lm(model: nn.Module, directory: str | Path) -> Path:
    """Write ``config.json`` and the weights (official names) of the LM ``model`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_json(directory / "config.json")
    write_safetensors(directory / model.config.moshi_name, model.state_dict(), {"format": "pt"})
    return directory
