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

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from duplex.codec.checkpoint import (
    CheckpointError,
    canonical_state_dict,
    check_state_dict,
    read_safetensors,
    write_safetensors,
)
from duplex.lm.config import LMConfig
from duplex.lm.tokenizer import TextTokenizer

if TYPE_CHECKING:
    from duplex.codec.mimi import Mimi
    from duplex.lm.model import LMModel

__all__ = ["CheckpointBundle", "CheckpointError", "load_checkpoint", "load_lm", "save_lm"]


def _hub_file(repo: str, filename: str, optional: bool = False) -> Path | None:
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError as error:
        raise CheckpointError(
            f"{repo}/{filename} is on the Hugging Face hub, but huggingface_hub is not installed "
            "(`pip install huggingface_hub`), or download the checkpoint and pass its directory"
        ) from error
    try:
        return Path(hf_hub_download(repo, filename))
    except EntryNotFoundError:
        if optional:
            return None
        raise CheckpointError(f"the Hugging Face repo {repo!r} has no file {filename!r}") from None
    except Exception as error:  # network, auth, unknown repo: the user's remedy is the same
        raise CheckpointError(
            f"could not get {filename!r} from the Hugging Face repo {repo!r} "
            f"({type(error).__name__}: {error}); offline, download the checkpoint elsewhere and pass "
            "its directory"
        ) from error


def _looks_like_repo_id(text: str) -> bool:
    owner, _, name = text.partition("/")
    return bool(owner and name) and "/" not in name and not text.startswith((".", "/", "~"))


class _Location:
    """Resolves the file names of a checkpoint against a local directory or a hub repo."""

    def __init__(self, directory: Path | None = None, repo: str | None = None) -> None:
        self.directory = directory
        self.repo = repo

    def __str__(self) -> str:
        return str(self.directory) if self.directory is not None else f"hf://{self.repo}"

    def file(self, name: str, optional: bool = False) -> Path | None:
        if name.startswith("hf://"):
            parts = name.removeprefix("hf://").split("/")
            if len(parts) < 3:
                raise CheckpointError(f"expected hf://owner/repo/path/to/file, got {name!r}")
            return _hub_file("/".join(parts[:2]), "/".join(parts[2:]), optional)
        if name.startswith("file://"):
            path = Path(name.removeprefix("file://"))
            if not path.is_file() and not optional:
                raise CheckpointError(f"checkpoint file not found: {path}")
            return path if path.is_file() else None
        if self.repo is not None:
            return _hub_file(self.repo, name, optional)
        assert self.directory is not None
        path = self.directory / name
        if path.is_file():
            return path
        if optional:
            return None
        present = ", ".join(sorted(p.name for p in self.directory.iterdir())) or "nothing"
        raise CheckpointError(
            f"{name!r} not found in checkpoint directory {self.directory} (it holds: {present})"
        )

    def config(self) -> LMConfig:
        path = self.file("config.json", optional=True)
        if path is None:
            warnings.warn(
                f"{self} has no config.json; assuming the official Moshi 7B configuration", stacklevel=3
            )
            return LMConfig.from_preset("moshi-7b")
        return LMConfig.from_json(path)


def _locate(source: str | Path) -> _Location:
    if isinstance(source, str) and source.startswith("file://"):
        source = source.removeprefix("file://")
    path = Path(source).expanduser()
    if path.is_dir():
        return _Location(directory=path)
    text = str(source)
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass its directory, or the file with a config")
    if _looks_like_repo_id(text):
        return _Location(repo=text)
    raise CheckpointError(
        f"checkpoint {text!r} not found: expected a checkpoint directory, a weights file with a config, "
        "or a Hugging Face repo id such as kyutai/moshiko-pytorch-bf16"
    )


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
    ) -> LMModel:
        """The LM in eval mode; floating weights are cast to ``dtype`` (default: as stored)."""
        return _build_lm(self.config, self.lm_weights, self.lora_weights, device, dtype, fuse_lora)

    def text_tokenizer(self) -> TextTokenizer:
        if self.tokenizer is None:
            raise CheckpointError(f"{self.source} has no text tokenizer {self.config.tokenizer_name!r}")
        return TextTokenizer.from_file(
            self.tokenizer,
            pad_id=self.config.existing_text_padding_id,
            epad_id=self.config.existing_text_end_padding_id,
        )

    def mimi(self, device: torch.device | str | None = None) -> Mimi:
        """The checkpoint's Mimi, running ``config.mimi_num_codebooks`` codebooks."""
        from duplex.codec.config import MimiConfig
        from duplex.codec.mimi import Mimi

        if self.mimi_weights is None:
            raise CheckpointError(f"{self.source} has no Mimi weights {self.config.mimi_name!r}")
        config = MimiConfig(**self.mimi_config) if self.mimi_config is not None else None
        return Mimi.from_pretrained(
            self.mimi_weights, num_codebooks=self.config.mimi_num_codebooks, device=device, config=config
        )


def load_checkpoint(source: str | Path, config: LMConfig | str | Path | None = None) -> CheckpointBundle:
    """Resolve a checkpoint directory or Hugging Face repo id (downloading what a repo names).

    ``config`` (an LMConfig or a JSON path) replaces the checkpoint's own ``config.json``."""
    location = _locate(source)
    config = _as_config(config) if config is not None else location.config()
    local = location.directory is not None
    lm_weights = location.file(config.moshi_name)
    assert lm_weights is not None
    mimi_config = None
    if config.mimi_config_name is not None:
        mimi_config_path = location.file(config.mimi_config_name, optional=local)
        if mimi_config_path is not None:
            mimi_config = json.loads(mimi_config_path.read_text())
    return CheckpointBundle(
        config=config,
        lm_weights=lm_weights,
        mimi_weights=location.file(config.mimi_name, optional=local),
        mimi_config=mimi_config,
        tokenizer=location.file(config.tokenizer_name, optional=local),
        lora_weights=location.file(config.lora_name) if config.lora_name else None,
        source=str(location),
    )


def _as_config(config: LMConfig | str | Path) -> LMConfig:
    return config if isinstance(config, LMConfig) else LMConfig.from_json(config)


def load_lm(
    source: str | Path,
    config: LMConfig | str | Path | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    fuse_lora: bool = True,
) -> LMModel:
    """An :class:`LMModel` from a checkpoint directory, a repo id, or a weights file plus ``config``."""
    path = Path(str(source).removeprefix("file://")).expanduser()
    if path.is_file():
        if config is None:
            raise CheckpointError(
                f"{path} is a weights file: pass its config (an LMConfig or config.json path)"
            )
        config = _as_config(config)
        return _build_lm(config, path, None, device, dtype, fuse_lora)
    location = _locate(source)
    config = _as_config(config) if config is not None else location.config()
    weights = location.file(config.moshi_name)
    lora = location.file(config.lora_name) if config.lora_name else None
    assert weights is not None
    return _build_lm(config, weights, lora, device, dtype, fuse_lora)


def load_lm_state_dict(
    model: LMModel, state: dict[str, torch.Tensor], dtype: torch.dtype | None = None
) -> None:
    """Strictly load ``state`` (official or reference names) into ``model``, replacing its tensors.

    Raises :class:`CheckpointError` listing every missing, unexpected and mis-shaped key."""
    state = canonical_state_dict(state)
    expected = {key: value.shape for key, value in model.state_dict().items()}
    check_state_dict(expected, state, f"the LM configuration ({_describe(model.config)})")
    # A copy, cast to ``dtype`` where given: tensors read from a file may map the file's memory.
    state = {
        k: v.to(dtype=dtype if dtype and v.is_floating_point() else v.dtype, copy=True)
        for k, v in state.items()
    }
    model.load_state_dict(state, strict=True, assign=True)


def _describe(config: LMConfig) -> str:
    return (
        f"dim={config.dim}, num_layers={config.num_layers}, n_q={config.n_q}, dep_q={config.dep_q}, "
        f"card={config.card}, text_card={config.text_card}, depformer_dim={config.depformer_dim}"
    )


def _build_lm(
    config: LMConfig,
    weights: Path,
    lora_weights: Path | None,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
    fuse_lora: bool,
) -> LMModel:
    from duplex.lm.lora import apply_lora, load_lora
    from duplex.lm.lora import fuse_lora as fuse
    from duplex.lm.model import LMModel

    if lora_weights is not None and not config.lora:
        raise CheckpointError(f"{weights}: lora_name is set but the config has lora=false")
    state, _ = read_safetensors(weights, device=device or "cpu")
    with torch.device("meta"):
        model = LMModel(config)
    load_lm_state_dict(model, state, dtype)
    if config.model_type == "hibiki":
        # Hibiki sometimes samples EOS too early; embedding EOS like PAD makes it harmless.
        with torch.no_grad():
            model.text_emb.weight[2] = model.text_emb.weight[3]
    if config.lora:
        apply_lora(model, config.lora_rank, config.lora_scaling, freeze_base=False)
        if lora_weights is not None:
            load_lora(model, lora_weights)
            if fuse_lora:
                fuse(model)
    model.to(device=device)
    return model.eval()


def save_lm(model: LMModel, directory: str | Path) -> Path:
    """Write ``config.json`` and the weights (official names) into ``directory``; returns it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_json(directory / "config.json")
    write_safetensors(directory / model.config.moshi_name, model.state_dict(), {"format": "pt"})
    return directory
