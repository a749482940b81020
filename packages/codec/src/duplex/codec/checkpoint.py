"""Checkpoint files: safetensors in and out, key names, strict checks, and where a source points.

:func:`locate_checkpoint` is the one resolver of checkpoint sources (Mimi's and the LM's): a local
file or directory, ``file://path``, ``hf://owner/repo/file`` or a Hugging Face repo id, with one
rule for telling a path from a repo id (:func:`looks_like_path`).

duplex reads only safetensors. The in-memory state dict of every duplex module already uses the
key names of the official files (fused attention ``self_attn.in_proj_weight`` /
``self_attn.out_proj.weight``), so :func:`canonical_state_dict` only has to translate what other
writers produce: the reference's in-memory attention names, legacy codebook buffer names, and
weight-norm pairs from training checkpoints.
"""

from __future__ import annotations

import json
import os
import re
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from duplex.codec.quantizer import LEGACY_CODEBOOK_NAMES
from safetensors import SafetensorError
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


TensorTransform = Callable[[str, torch.Tensor], Mapping[str, torch.Tensor]]


def read_safetensors(
    path: str | Path, device: str | torch.device = "cpu", transform: TensorTransform | None = None
) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and string metadata of a safetensors file; a pickle is refused with the reason.

    ``transform(key, tensor)`` gives what to keep of each tensor as it is read (e.g. an int8 copy
    and its scales), so the file's own tensors are never all in memory at once."""
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
    try:
        tensors, metadata = _read_tensors(path, transform)
    except (SafetensorError, ValueError, OSError) as error:
        raise CheckpointError(
            f"{path} is not a complete safetensors file ({error}): it is probably truncated (an "
            "interrupted download or copy); fetch or copy it again"
        ) from error
    if str(device) != "cpu":
        tensors = {key: value.to(device) for key, value in tensors.items()}
    return tensors, metadata


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


def _read_tensors(
    path: Path, transform: TensorTransform | None = None
) -> tuple[dict[str, torch.Tensor], dict]:
    """Read every tensor into memory of its own with plain file reads (no memory map): the resident
    memory is the weights once, whatever reads them next (a memory-mapped file's pages would count
    on top of any copy, and a map ties the tensors to a file that may change)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        (header_size,) = struct.unpack("<Q", handle.read(8))
        if header_size > size - 8:
            raise ValueError(f"the header claims {header_size} bytes, the file holds {size - 8}")
        header = json.loads(handle.read(header_size))
        metadata = header.pop("__metadata__", None) or {}
        start = 8 + header_size
        tensors = {}
        for key, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            begin, end = info["data_offsets"]
            dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
            if dtype is None:
                raise ValueError(f"tensor {key!r} has the unsupported dtype {info['dtype']}")
            if start + end > size:
                raise ValueError(f"tensor {key!r} ends at byte {start + end}, the file has {size}")
            raw = torch.empty(end - begin, dtype=torch.uint8)
            handle.seek(start + begin)
            if handle.readinto(raw.numpy()) != end - begin:
                raise ValueError(f"tensor {key!r} could not be read whole")
            tensor = raw.view(dtype).reshape(info["shape"])
            tensors.update(transform(key, tensor) if transform is not None else {key: tensor})
    return tensors, metadata


def read_json_object(path: str | Path, what: str = "configuration") -> dict[str, Any]:
    """The JSON object in ``path``; a parse error or another JSON value is a :class:`CheckpointError`
    naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}): "
            "fix the file or replace it"
        ) from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not a text file: a {what} must be a JSON object") from None
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{path} must hold a JSON object {{...}} (a {what}), not a JSON {type(data).__name__}"
        )
    return data


def read_mimi_config(path: str | Path) -> dict[str, Any]:
    """A Mimi config file (the reference's nested form), checked against :class:`MimiConfig`
    here so that a mistake names the file."""
    from duplex.codec.config import MimiConfig
    from pydantic import ValidationError

    data = read_json_object(path, "Mimi config")
    try:
        MimiConfig.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item['loc']) or '(top level)'}: {item['msg']}"
            for item in error.errors()
        )
        raise CheckpointError(f"{path} is not a valid Mimi config: {problems}") from None
    return data


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

HUB_PROBE_TIMEOUT_S = 1.5
"""How long :func:`hub_download` waits to learn whether the hub answers at all before it gives up
on the network (and looks in the local Hugging Face cache only)."""

PATH_SUFFIXES = frozenset(
    {".safetensors", ".json", ".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".model", ".yaml", ".yml"}
)
"""File suffixes that make a source a path, never a Hugging Face repo id."""

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_HUB_REACHABLE: set[str] = set()  # endpoints that answered once in this process


def looks_like_path(text: str) -> bool:
    """Whether ``text`` names a local path, so that it must never be looked up on the hub.

    It does when it starts with ``.``, ``/`` or ``~``, ends in a file suffix (:data:`PATH_SUFFIXES`),
    holds a backslash or more than one ``/``, or when its first component is a local directory
    (``runs/lm`` where ``runs/`` exists). Anything else of the form ``owner/name`` is a repo id."""
    first = text.split("/")[0]
    return (
        text.startswith((".", "/", "~"))
        or Path(text).suffix.lower() in PATH_SUFFIXES
        or "\\" in text
        or text.count("/") > 1
        or (bool(first) and Path(first).is_dir())
    )


def _hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """One request to the hub's endpoint, no retries, at most ``timeout`` seconds in all (name
    resolution included): ``hf_hub_download`` itself retries a dead network for about half a minute."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    endpoint = constants.ENDPOINT
    if endpoint in _HUB_REACHABLE:
        return True
    answers: list[bool] = []

    def probe() -> None:
        try:
            get_session().head(endpoint, timeout=timeout, allow_redirects=False)
            answers.append(True)
        except Exception:  # any failure to get an answer: unreachable
            answers.append(False)

    thread = threading.Thread(target=probe, name="duplex-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if answers and answers[0]:
        _HUB_REACHABLE.add(endpoint)
        return True
    return False


def hub_download(repo: str, filename: str, optional: bool = False) -> Path | None:
    """``filename`` of the Hugging Face repo ``repo`` as a local path (downloaded into, or read from,
    the Hugging Face cache); None for a file the repo lacks when ``optional``.

    Offline (``HF_HUB_OFFLINE`` set, or the hub not answering within :data:`HUB_PROBE_TIMEOUT_S`)
    only the local cache is used, so that a machine without network fails in about a second with
    a :class:`CheckpointError`, rather than after the hub client's retries."""
    try:
        import huggingface_hub
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError as error:
        raise CheckpointError(
            f"{repo}/{filename} is a Hugging Face file, but huggingface_hub is not installed: "
            "`pip install 'duplex-codec[hub]'`, or download the file and pass its local path"
        ) from error
    offline = _hub_offline()
    if offline or not _hub_reachable():
        cached = huggingface_hub.try_to_load_from_cache(repo, filename)
        if isinstance(cached, str):
            return Path(cached)
        if cached is not None:  # the cache knows the repo lacks the file
            if optional:
                return None
            raise CheckpointError(f"the Hugging Face repo {repo!r} has no file {filename!r}")
        why = "HF_HUB_OFFLINE is set" if offline else f"{huggingface_hub.constants.ENDPOINT} does not answer"
        raise CheckpointError(
            f"could not get {filename!r} from the Hugging Face repo {repo!r}: {why} and the file is not "
            "in the local cache; offline, download the file elsewhere and pass its local path"
        )
    try:
        return Path(huggingface_hub.hf_hub_download(repo, filename))
    except EntryNotFoundError:
        if optional:
            return None
        raise CheckpointError(f"the Hugging Face repo {repo!r} has no file {filename!r}") from None
    except Exception as error:  # network, auth, unknown repo: the remedy is the same
        raise CheckpointError(
            f"could not get {filename!r} from the Hugging Face repo {repo!r} ({type(error).__name__}: "
            f"{error}); offline, download the file elsewhere and pass its local path"
        ) from error


def _hf_url(url: str) -> tuple[str, str]:
    """``hf://owner/repo/path/to/file`` -> (``owner/repo``, ``path/to/file``)."""
    parts = url.removeprefix("hf://").split("/")
    if len(parts) < 3 or not all(parts):
        raise CheckpointError(f"expected hf://owner/repo/path/to/file, got {url!r}")
    return "/".join(parts[:2]), "/".join(parts[2:])


@dataclass(frozen=True)
class CheckpointSource:
    """Where a checkpoint is: a local file or directory (``path``) or a Hugging Face repo (``repo``).

    Made by :func:`locate_checkpoint`; :meth:`file` turns the names a checkpoint's ``config.json``
    gives into local paths. Mimi and the LM resolve their sources with it alike."""

    path: Path | None = None
    repo: str | None = None
    # A bare ``owner/name`` that is no local path: named as both when the hub fails.
    typed: str | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return str(self.path) if self.path is not None else f"hf://{self.repo}"

    @property
    def is_file(self) -> bool:
        """A single local file (a weights file), which names no other files."""
        return self.path is not None and self.path.is_file()

    @property
    def is_local(self) -> bool:
        return self.path is not None

    def file(self, name: str, optional: bool = False) -> Path | None:
        """The file ``name`` of this checkpoint as a local path; None when ``optional`` and absent.

        ``name`` is relative to the directory or repo, or ``hf://owner/repo/path`` (a file of any
        repo) or ``file://path`` (a local file). A missing file is a :class:`CheckpointError`."""
        if name.startswith("hf://"):
            return hub_download(*_hf_url(name), optional=optional)
        if name.startswith("file://"):
            path = Path(name.removeprefix("file://")).expanduser()
            if path.is_file():
                return path
            if optional:
                return None
            raise CheckpointError(f"checkpoint file not found: {path}")
        if self.repo is not None:
            try:
                return hub_download(self.repo, name, optional=optional)
            except CheckpointError as error:
                if self.typed is None:
                    raise
                raise CheckpointError(
                    f"checkpoint {self.typed!r} is not a local file or folder ({Path(self.typed).absolute()} "
                    f"does not exist), and as a Hugging Face repo id: {error}"
                ) from error
        assert self.path is not None
        if self.is_file:
            raise CheckpointError(f"{self.path} is a single file; it names no {name!r}")
        path = self.path / name
        if path.is_file():
            return path
        if optional:
            return None
        present = ", ".join(sorted(p.name for p in self.path.iterdir())) or "nothing"
        raise CheckpointError(f"{name} not found in checkpoint directory {self.path} (it holds: {present})")


def locate_checkpoint(source: str | Path) -> CheckpointSource:
    """Where ``source`` points: a local file or directory, or a Hugging Face repo.

    ``source`` is a path (a ``.safetensors`` file or a checkpoint directory, optionally as
    ``file://path``), ``hf://owner/repo/path/to/file`` (downloaded), ``hf://owner/repo`` or a repo
    id ``owner/name``. One rule decides: an existing local path always wins; a source that
    :func:`looks_like_path` but does not exist is a :class:`CheckpointError` naming it, and is
    never looked up on the hub; only a plain ``owner/name`` is a repo id."""
    if isinstance(source, str) and source.startswith("hf://"):
        rest = source.removeprefix("hf://").rstrip("/")
        if _REPO_ID.match(rest):
            return CheckpointSource(repo=rest)
        path = hub_download(*_hf_url(source))
        assert path is not None
        return CheckpointSource(path=path)
    text = str(source).removeprefix("file://") if isinstance(source, str) else str(source)
    path = Path(text).expanduser()
    if path.exists():
        return CheckpointSource(path=path)
    if isinstance(source, str) and _REPO_ID.match(source) and not looks_like_path(source):
        return CheckpointSource(repo=source, typed=source)
    raise CheckpointError(f"checkpoint not found: {text} (no such file or directory)")


@dataclass
class ResolvedCheckpoint:
    weights: Path
    config: dict[str, Any] | None  # the nested Mimi config, when the source names one


def resolve_checkpoint(source: str | Path) -> ResolvedCheckpoint:
    """Mimi's weights and configuration in ``source`` (anything :func:`locate_checkpoint` takes).

    A directory or repo names them in its ``config.json`` (``mimi_name``, default the official file
    name, and ``mimi_config_name``); without a ``config.json`` the official file name is used."""
    location = locate_checkpoint(source)
    if location.is_file:
        assert location.path is not None
        return ResolvedCheckpoint(location.path, None)
    config_file = location.file("config.json", optional=True)
    config = read_json_object(config_file, "checkpoint config") if config_file is not None else {}
    weights = location.file(config.get("mimi_name", MIMI_FILE_NAME))
    assert weights is not None
    mimi_config = None
    if config.get("mimi_config_name"):
        mimi_config_file = location.file(config["mimi_config_name"])
        assert mimi_config_file is not None
        mimi_config = read_mimi_config(mimi_config_file)
    return ResolvedCheckpoint(weights, mimi_config)
