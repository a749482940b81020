"""The interfaces components meet through: what a plugin implements (docs/plugins.md).

* :class:`AudioCodec` (and :class:`CodecClass`, what :data:`~duplex.codec.registry.CODECS` holds):
  a streaming audio codec, audio ``[B, C, T]`` <-> codes ``[B, K, frames]``.
* :class:`Backbone` (and :class:`BackboneClass`, what ``duplex.lm.registry.BACKBONES`` and
  ``DEPFORMERS`` hold): a causal stack ``[B, T, D] -> [B, T, D]`` with per-slot streaming state.
* :class:`Pipeline` (what ``duplex.stream.registry.PIPELINES`` builds, by ``model_type``): the
  batched frame step the engine runs, user audio in, reply audio and text out.
* One typed signature per kernel op (:data:`OP_SIGNATURES`): what an implementation registered in
  :data:`~duplex.codec.registry.KERNELS` as ``"<op>/<backend>"`` is called with. A function whose
  parameters do not match is refused when it registers (:func:`check_op_signature`).

Everything here is a ``typing.Protocol``: a component conforms by having the members, not by
inheriting from anything of ours.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
from torch import Tensor


# -- codecs ---------------------------------------------------------------------------------------
@runtime_checkable
class AudioCodec(Protocol):
    """A streaming codec: ``sample_rate`` audio in frames of ``frame_size`` samples, each frame
    ``num_codebooks`` codes in ``[0, cardinality)``.

    Batch: ``encode(wav [B, channels, T]) -> codes [B, num_codebooks, T // frame_size]`` and
    ``decode(codes) -> wav [B, channels, frames * frame_size]``. Inside ``with codec.streaming(B):``
    both take any chunking and keep their state per row: ``reset_streaming(slots)`` restarts rows
    and ``set_exec_mask(mask)`` freezes the rows that are off; the output never depends on chunking.
    """

    sample_rate: int
    frame_rate: float
    frame_size: int
    channels: int
    cardinality: int
    total_codebooks: int
    num_codebooks: int
    numerics: str

    def encode(self, wav: Tensor) -> Tensor: ...

    def decode(self, codes: Tensor) -> Tensor: ...

    def check_audio(self, wav: Tensor) -> None:
        """Raise a one-line ``ValueError`` unless ``wav`` is audio this codec encodes."""

    def check_codes(self, codes: Tensor) -> None:
        """Raise a one-line ``ValueError`` unless ``codes`` are codes this codec decodes."""

    def streaming(self, batch_size: int = 1) -> AbstractContextManager[Any]: ...

    def reset_streaming(self, slots: Tensor | None = None) -> None: ...

    def set_exec_mask(self, exec_mask: Tensor) -> None: ...

    def save_pretrained(self, path: str | Path) -> Path: ...


class CodecClass(Protocol):
    """What :data:`~duplex.codec.registry.CODECS` holds: a codec class with a loader.

    ``config`` is the codec's own configuration (its pydantic model, or that model's dict as saved
    beside the weights); ``None`` means the one stored with the weights, else the default."""

    def from_pretrained(
        self,
        source: str | Path,
        num_codebooks: int = ...,
        device: Any = None,
        dtype: Any = None,
        config: Any = None,
        numerics: str = "fast",
    ) -> AudioCodec: ...


# -- backbones ------------------------------------------------------------------------------------
@runtime_checkable
class Backbone(Protocol):
    """A causal stack over ``x [B, T, dim]`` (the temporal transformer or the depformer).

    ``forward(x, cross_source=None)``; in streaming (``with backbone.streaming(B):``) it keeps its
    own state per row: ``reset_streaming(slots)``, ``set_exec_mask(mask)``. A backbone for
    cross-attention models (TTS) also has ``set_cross_source(source, slots)``."""

    def __call__(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor: ...

    def streaming(self, batch_size: int = 1) -> AbstractContextManager[Any]: ...

    def reset_streaming(self, slots: Tensor | None = None) -> None: ...

    def set_exec_mask(self, exec_mask: Tensor) -> None: ...


class BackboneClass(Protocol):
    """What the backbone registries hold: ``cls(transformer_config, options)``.

    ``config_class`` is the plugin's own pydantic model of its extra hyperparameters
    (``LMConfig.backbone_config`` / ``depformer_config`` are validated by it; None: it takes none).
    ``transformer_config`` is the :class:`~duplex.codec.nn.TransformerConfig` the LM derives from
    its fields; ``options`` the validated ``config_class`` instance (or None)."""

    config_class: ClassVar[type | None]

    def __call__(self, transformer_config: Any, options: Any = None) -> Backbone: ...


# -- pipelines ------------------------------------------------------------------------------------
@dataclass
class StepOutput:
    """One step's output for every row: ``pcm`` [N, frame_size], ``has_reply`` [N], the text
    pieces and, when the pipeline has them, the generated tokens ``[N, 1 + dep_q]`` (text first)
    and per-row extras (the STT models' pause probabilities ``[N, heads]``)."""

    pcm: np.ndarray
    has_reply: np.ndarray
    text: list[str | None]
    tokens: np.ndarray | None = None
    extra: np.ndarray | None = None


class RowParams(Protocol):
    """What a new row (conversation) brings: its own seed (None: drawn)."""

    seed: int | None


@runtime_checkable
class Pipeline(Protocol):
    """What the engine steps: rows of independent streams, one 80 ms frame per step.

    ``kind`` is the endpoint it is served at: ``"chat"`` (``/api/chat``), ``"asr"`` or ``"tts"``."""

    kind: str
    sample_rate: int
    frame_rate: float
    frame_size: int

    def start(self, batch_size: int) -> None: ...

    def stop(self) -> None: ...

    def reset(self, row: int, params: RowParams) -> None: ...

    def step(self, pcm: np.ndarray, active: np.ndarray) -> StepOutput: ...


# -- kernel ops -----------------------------------------------------------------------------------
class LinearOp(Protocol):
    """``x @ weight.T + bias``; ``weight`` may be bf16, or int8 with ``scale [out, groups]``."""

    def __call__(
        self, x: Tensor, weight: Tensor, bias: Tensor | None = None, scale: Tensor | None = None
    ) -> Tensor: ...


class Conv1dOp(Protocol):
    """An unpadded ``conv1d``; ``packed`` is a per-weight dict for an implementation's derived weights."""

    def __call__(
        self,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None = None,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        packed: dict | None = None,
    ) -> Tensor: ...


class ConvTranspose1dOp(Protocol):
    """An unpadded ``conv_transpose1d`` (``packed``: as for :class:`Conv1dOp`)."""

    def __call__(
        self,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None = None,
        stride: int = 1,
        groups: int = 1,
        packed: dict | None = None,
    ) -> Tensor: ...


class EluOp(Protocol):
    def __call__(self, x: Tensor, alpha: float = 1.0) -> Tensor: ...


class RvqEncodeOp(Protocol):
    """Codes ``[N, L]`` (int64) of ``x [N, D]`` against ``centroids [L, K, D]``, level by level on
    the residual, ties to the lowest index."""

    def __call__(self, x: Tensor, centroids: Tensor) -> Tensor: ...


class RvqDecodeOp(Protocol):
    """The sum over levels of the chosen centroids ``[N, D]``, then ``@ proj.T`` when given."""

    def __call__(self, codes: Tensor, centroids: Tensor, proj: Tensor | None = None) -> Tensor: ...


class AttentionOp(Protocol):
    """Scaled dot-product attention of ``q [B, H, Tq, Dh]`` over ``k, v [B, Hkv, Tk, Dh]``: key
    slot j is visible to query i when ``0 <= q_pos[i] - k_pos[j] < context`` (``context`` None:
    no window) and ``k_pos[j] >= 0``; ``q_pos`` None: every query sees every key. ``shared``: a
    dict the layers of one transformer call share (e.g. a mask computed once)."""

    def __call__(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        q_pos: Tensor | None,
        k_pos: Tensor | None,
        context: int | None,
        scale: float | None = None,
        shared: dict | None = None,
    ) -> Tensor: ...


class TransformerStepOp(Protocol):
    """A streaming step of all of a transformer's layers over ``x [B, T, D]`` at ``positions [B, T]``
    (the transformer module, in streaming, is passed in; it may run its own layers)."""

    def __call__(self, transformer: Any, x: Tensor, positions: Tensor) -> Tensor: ...


OP_SIGNATURES: dict[str, type] = {
    "linear": LinearOp,
    "conv1d": Conv1dOp,
    "conv_transpose1d": ConvTranspose1dOp,
    "elu": EluOp,
    "rvq_encode": RvqEncodeOp,
    "rvq_decode": RvqDecodeOp,
    "attention": AttentionOp,
    "transformer_step": TransformerStepOp,
}


def op_parameters(op: str) -> list[inspect.Parameter]:
    """The parameters an implementation of ``op`` is called with, in order (``self`` left out)."""
    return list(inspect.signature(OP_SIGNATURES[op].__call__).parameters.values())[1:]


def describe_parameters(parameters: list[inspect.Parameter]) -> str:
    return "(" + ", ".join(p.name for p in parameters) + ")"


def check_op_signature(op: str, function: Callable[..., Any], name: str) -> None:
    """Refuse ``function`` as an implementation of ``op`` unless it can be called as the op is.

    Each declared parameter must be accepted at its position under its name (or by ``*args`` /
    ``**kwargs``); a parameter the op does not declare must have a default. Raises a one-line
    ``TypeError`` naming both signatures."""
    if op not in OP_SIGNATURES:
        raise ValueError(f"kernel {name!r}: unknown op {op!r}; ops: {', '.join(OP_SIGNATURES)}")
    wanted = op_parameters(op)
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # a builtin without a signature: trust it
        return
    given = list(signature.parameters.values())
    positional = [p for p in given if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var_positional = any(p.kind is p.VAR_POSITIONAL for p in given)
    var_keyword = any(p.kind is p.VAR_KEYWORD for p in given)
    problem = None
    for index, parameter in enumerate(wanted):
        if index < len(positional):
            if positional[index].name != parameter.name and not (var_keyword or var_positional):
                problem = f"parameter {index + 1} is {positional[index].name!r}, not {parameter.name!r}"
                break
        elif not var_positional:
            problem = f"it lacks {parameter.name!r}"
            break
    if problem is None:
        extra = [p for p in positional[len(wanted) :] if p.default is p.empty]
        extra += [p for p in given if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
        if extra:
            problem = f"its extra parameter {extra[0].name!r} has no default"
    if problem is not None:
        raise TypeError(
            f"kernel {name!r} takes {describe_parameters(given)} but the {op} op calls it as "
            f"{describe_parameters(wanted)}: {problem}; give it the op's signature (duplex.codec.interfaces)"
        )
