"""Checkpoint files: safetensors in and out, key names, strict checks, and where a source points.

duplex reads only safetensors. The in-memory state dict of every duplex module already uses the
key names of the official files (fused attention ``self_attn.in_proj_weight`` /
``self_attn.out_proj.weight``), so :func:`canonical_state_dict` only has to translate what other
writers produce: the reference's in-memory attention names, legacy codebook buffer names, and
weight-norm pairs from training checkpoints.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from duplex.codec.quantizer import LEGACY_CODEBOOK_NAMES
from safetensors import safe_open
from safetensors.torch import save_file

MIMI_FILE_NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
DEFAULT_REPO = "kyutai/moshiko-pytorch-bf16"
CONFIG_METADATA_KEY = "mimi_config"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: wrong format, wrong keys or shapes, or not found."""


# -- reading and writing ------------------------------------------------------------------------


def _file_kind(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "torch zip pickle"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{":
        (header_size,) = struct.unpack("<Q", head[:8])
        if 0 < header_size <= path.stat().st_size - 8:
            return "safetensors"
    return "unknown"


def read_safetensors(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and string metadata of a safetensors file; a pickle is refused with the reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    kind = _file_kind(path)
    if kind in ("pickle", "torch zip pickle"):
        raise CheckpointError(
            f"{path} is a {kind} (torch.save) file, not safetensors. duplex refuses pickles because "
            "loading one can run arbitrary code. If you trust it, convert it once: "
            "`safetensors.torch.save_file(torch.load(path, weights_only=True)['model'], 'mimi.safetensors')`."
        )
    if kind != "safetensors":
        raise CheckpointError(f"{path} is not a safetensors file (unrecognised header)")
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        metadata = f.metadata() or {}
        for key in f.keys():
            tensors[key] = f.get_tensor(key)
    return tensors, metadata


def write_safetensors(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


# -- key names -----------------------------------------------------------------------------------

_PER_STEP_PROJ = re.compile(r"^(?P<prefix>.*self_attn\.)(?P<kind>in|out)_projs\.(?P<index>\d+)\.weight$")
_WEIGHT_NORM_OLD = re.compile(r"^(?P<prefix>.*)\.weight_(?P<part>[gv])$")
_WEIGHT_NORM_NEW = re.compile(r"^(?P<prefix>.*)\.parametrizations\.weight\.original(?P<part>[01])$")


def _fold_weight_norm(magnitude: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """``g * v / ||v||`` with the norm over every dim but the first (torch's weight_norm, dim=0)."""
    dims = tuple(range(1, direction.dim()))
    return magnitude * direction / direction.norm(dim=dims, keepdim=True)


def canonical_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename other spellings of a Mimi state dict to the on-disk names (a new dict)."""
    out: dict[str, torch.Tensor] = {}
    per_step: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    weight_norm: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if match := _PER_STEP_PROJ.match(key):
            per_step.setdefault((match["prefix"], match["kind"]), {})[int(match["index"])] = value
            continue
        if key.endswith("self_attn.in_proj.weight"):
            out[key.removesuffix("in_proj.weight") + "in_proj_weight"] = value
            continue
        if match := _WEIGHT_NORM_OLD.match(key) or _WEIGHT_NORM_NEW.match(key):
            part = {"g": "g", "0": "g", "v": "v", "1": "v"}[match["part"]]
            weight_norm.setdefault(match["prefix"], {})[part] = value
            continue
        prefix, _, name = key.rpartition(".")
        if name in LEGACY_CODEBOOK_NAMES and prefix.endswith("_codebook"):
            key = f"{prefix}.{LEGACY_CODEBOOK_NAMES[name]}"
        out[key] = value
    for (prefix, kind), weights in per_step.items():
        stacked = torch.cat([weights[i] for i in sorted(weights)], dim=0)
        out[prefix + ("in_proj_weight" if kind == "in" else "out_proj.weight")] = stacked
    for prefix, parts in weight_norm.items():
        if set(parts) != {"g", "v"}:
            raise CheckpointError(f"incomplete weight-norm pair for {prefix}: found only {sorted(parts)}")
        out[prefix + ".weight"] = _fold_weight_norm(parts["g"], parts["v"])
    return out


def check_state_dict(
    expected: Mapping[str, torch.Size], state: Mapping[str, torch.Tensor], what: str
) -> None:
    """Raise :class:`CheckpointError` listing missing, unexpected and mis-shaped keys, if any."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k}: expected {list(expected[k])}, got {list(state[k].shape)}"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != tuple(expected[k])
    )
    if not (missing or unexpected or misshaped):
        return
    lines = [f"checkpoint does not match {what}:"]
    for title, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("wrong shapes", misshaped),
    ):
        if items:
            lines.append(f"  {title} ({len(items)}):")
            lines += [f"    {item}" for item in items[:40]]
            if len(items) > 40:
                lines.append(f"    ... and {len(items) - 40} more")
    raise CheckpointError("\n".join(lines))


# -- where a source points -----------------------------------------------------------------------


@dataclass
class ResolvedCheckpoint:
    weights: Path
    config: dict[str, Any] | None  # the nested Mimi config, when the source names one


def _hf_download(repo: str, filename: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:
        raise CheckpointError(
            f"{repo}/{filename} is a Hugging Face file, but huggingface_hub is not installed: "
            "`pip install 'duplex-codec[hub]'`, or download the file and pass its local path"
        ) from e
    try:
        return Path(hf_hub_download(repo, filename))
    except Exception as e:  # network, auth, missing entry: all end the same way for the user
        raise CheckpointError(
            f"could not get {filename!r} from the Hugging Face repo {repo!r} ({type(e).__name__}: {e}). "
            "If this machine is offline, download the file elsewhere and pass its local path."
        ) from e


def _hf_try_download(repo: str, filename: str) -> Path | None:
    """Like :func:`_hf_download`, but a file missing from the repo gives None."""
    try:
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError:
        return _hf_download(repo, filename)
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, filename))
    except EntryNotFoundError:
        return None
    except Exception:
        return _hf_download(repo, filename)


def _from_config_json(config: dict[str, Any], fetch) -> ResolvedCheckpoint:  # noqa: ANN001
    weights = fetch(config.get("mimi_name", MIMI_FILE_NAME))
    mimi_config = None
    if config.get("mimi_config_name"):
        mimi_config = json.loads(Path(fetch(config["mimi_config_name"])).read_text())
    return ResolvedCheckpoint(weights, mimi_config)


def _directory(path: Path) -> ResolvedCheckpoint:
    config_file = path / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}

    def fetch(name: str) -> Path:
        if name.startswith("hf://"):
            return resolve_checkpoint(name).weights
        candidate = path / name
        if not candidate.is_file():
            present = sorted(p.name for p in path.glob("*.safetensors")) or ["none"]
            raise CheckpointError(
                f"{candidate} not found in checkpoint directory {path} "
                f"(safetensors files there: {', '.join(present)})"
            )
        return candidate

    return _from_config_json(config, fetch)


def resolve_checkpoint(source: str | Path) -> ResolvedCheckpoint:
    """Turn a file, a checkpoint directory, ``hf://owner/repo/file`` or a repo id into local paths."""
    if isinstance(source, str) and source.startswith("hf://"):
        parts = source.removeprefix("hf://").split("/")
        if len(parts) < 3:
            raise CheckpointError(f"expected hf://owner/repo/path/to/file, got {source!r}")
        return ResolvedCheckpoint(_hf_download("/".join(parts[:2]), "/".join(parts[2:])), None)
    if isinstance(source, str) and source.startswith("file://"):
        source = source.removeprefix("file://")
    path = Path(source)
    if path.is_dir():
        return _directory(path)
    if path.is_file():
        return ResolvedCheckpoint(path, None)
    text = str(source)
    looks_like_repo = (
        text.count("/") == 1 and not text.startswith((".", "/")) and "." not in text.split("/")[0]
    )
    if looks_like_repo and not text.endswith((".safetensors", ".json")):
        config_path = _hf_try_download(text, "config.json")
        config = json.loads(config_path.read_text()) if config_path is not None else {}

        def fetch(name: str) -> Path:
            return resolve_checkpoint(name).weights if name.startswith("hf://") else _hf_download(text, name)

        return _from_config_json(config, fetch)
    raise CheckpointError(
        f"checkpoint {text!r} not found: expected a .safetensors file, a checkpoint directory, "
        "a Hugging Face repo id (e.g. kyutai/moshiko-pytorch-bf16) or hf://owner/repo/file"
    )
