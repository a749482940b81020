"""Mimi: the streaming neural audio codec (24 kHz mono <-> 12.5 Hz split-RVQ codes).

Facts: docs/architecture.md §1 (streaming: §1.8).

Encode: SEANet encoder (25 Hz latent) -> encoder transformer -> learnt stride-2 down-sampling
(12.5 Hz) -> split RVQ. Decode runs the mirror path. Module names and nesting are those of the
official checkpoint, so ``state_dict()`` is the official file's key set.

Streaming (``with mimi.streaming(batch_size):``):

* ``encode`` takes chunks of any length, buffers the incomplete tail frame and returns the codes of
  the frames completed so far; ``decode`` takes any number of code frames and returns
  ``frame_size`` samples per frame. Latency is one frame (80 ms).
* The transformers always receive one frame (2 steps at 25 Hz) per call, however the audio is
  chunked. Their key/value caches hold exactly ``context`` (250) steps and are written before
  attending, as in the reference, so past 10 s a step whose call also carries a newer step no
  longer sees its oldest in-window key. Streaming output is therefore independent of chunking and
  equals the reference fed one frame per call; it differs slightly from batch (non-streaming)
  output after the first 10 s, exactly as the reference's does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from duplex.codec.checkpoint import (
    CONFIG_METADATA_KEY,
    canonical_state_dict,
    check_state_dict,
    read_safetensors,
    resolve_checkpoint,
    write_safetensors,
)
from duplex.codec.config import MimiConfig, MimiTransformerConfig
from duplex.codec.graphs import StepGraph
from duplex.codec.kernels import Numerics, NumericsPolicy
from duplex.codec.nn import (
    Linear,
    StreamingConv1d,
    StreamingConvTranspose1d,
    StreamingTransformer,
)
from duplex.codec.quantizer import SplitResidualVectorQuantizer
from duplex.codec.seanet import SeanetDecoder, SeanetEncoder
from duplex.codec.streaming import StreamingModule, StreamingState, module_device
from torch import nn

SAVED_FILE_NAME = "mimi.safetensors"


class ProjectedTransformer(nn.Module):
    """A streaming transformer in conv layout ``[B, C, T]``, with projections when ``d_model != C``."""

    def __init__(self, config: MimiTransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = StreamingTransformer(config.transformer_config())
        d_model, dim = config.d_model, config.input_dimension
        self.input_proj = Linear(dim, d_model, bias=False) if dim != d_model else None
        self.output_projs = nn.ModuleList(
            [
                nn.Identity() if out == d_model else Linear(d_model, out, bias=False)
                for out in config.output_dimensions
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.conv_layout:
            x = x.transpose(1, 2)
        if self.input_proj is not None:
            x = self.input_proj(x)
        y = self.output_projs[0](self.transformer(x))
        return y.transpose(1, 2) if self.config.conv_layout else y


class ConvDownsample(nn.Module):
    """Learnt down-sampling by ``stride``: a full causal conv, kernel ``2 * stride``, replicate padding."""

    def __init__(self, dim: int, stride: int) -> None:
        super().__init__()
        self.conv = StreamingConv1d(dim, dim, 2 * stride, stride=stride, bias=False, pad_mode="replicate")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ConvTransposeUpsample(nn.Module):
    """Learnt up-sampling by ``stride``: a *depthwise* transposed conv (kept as trained,
    docs/architecture.md §1.5)."""

    def __init__(self, dim: int, stride: int) -> None:
        super().__init__()
        self.convtr = StreamingConvTranspose1d(dim, dim, 2 * stride, stride=stride, groups=dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convtr(x)


@dataclass
class MimiState(StreamingState):
    pending: torch.Tensor  # [B, channels, n < frame_size]: audio waiting for its frame to complete
    # one-frame encode and decode replayed from CUDA graphs (on a CUDA device, see cuda_graph)
    encode_graph: StepGraph | None = None
    decode_graph: StepGraph | None = None

    def reset(self, slots: torch.Tensor) -> None:
        if bool(slots.all()):
            self.pending = self.pending[..., :0]
        elif self.pending.shape[-1] > 0:
            raise RuntimeError(
                f"cannot restart some batch items while {self.pending.shape[-1]} samples of a partial "
                "frame are buffered for all of them; feed whole frames when using per-slot resets"
            )


class Mimi(StreamingModule[MimiState], NumericsPolicy):
    """The Mimi codec. ``Mimi(config)`` has fresh weights; see :meth:`from_pretrained`.

    ``numerics``: ``"reference"`` runs the reference's torch ops in its order (its codes, bit for
    bit, on any machine; streaming encodes one frame at a time, as the reference streams);
    ``"fast"`` (the default) runs the fastest registered kernels for the device, whose sums
    differ by float rounding (a near-tie in the RVQ may then pick the other code).

    ``cuda_graph``: in streaming, replay the encode of one whole frame and the decode of one frame
    from CUDA graphs (:class:`~duplex.codec.graphs.StepGraph`); default: on a CUDA device.
    """

    def __init__(
        self, config: MimiConfig | None = None, numerics: Numerics = "fast", cuda_graph: bool | None = None
    ) -> None:
        super().__init__()
        self.numerics = numerics
        self.cuda_graph = cuda_graph
        self.config = config = config if config is not None else MimiConfig()
        dim = config.seanet.dimension
        self.encoder = SeanetEncoder(config.seanet)
        self.decoder = SeanetDecoder(config.seanet)
        self.encoder_transformer = ProjectedTransformer(config.transformer)
        self.decoder_transformer = ProjectedTransformer(config.transformer)
        self.quantizer = SplitResidualVectorQuantizer(config.quantizer)
        stride = config.resample_stride
        self.downsample = ConvDownsample(dim, stride) if stride > 1 else None
        self.upsample = ConvTransposeUpsample(dim, stride) if stride > 1 else None

    # -- facts -----------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    @property
    def frame_size(self) -> int:
        return self.config.frame_size

    @property
    def channels(self) -> int:
        return self.config.channels

    @property
    def cardinality(self) -> int:
        return self.quantizer.cardinality

    @property
    def total_codebooks(self) -> int:
        return self.quantizer.total_codebooks

    @property
    def num_codebooks(self) -> int:
        """Codebooks produced by :meth:`encode` (1..total_codebooks); :meth:`decode` uses all it gets."""
        return self.quantizer.num_codebooks

    @num_codebooks.setter
    def num_codebooks(self, value: int) -> None:
        self.quantizer.num_codebooks = value

    def set_num_codebooks(self, value: int) -> None:
        self.num_codebooks = value

    # -- streaming -------------------------------------------------------------------------------
    def _init_streaming_state(self, batch_size: int) -> MimiState:
        self.select_kernels()
        device = module_device(self)
        dtype = self.quantizer.rvq_first.input_proj.weight.dtype
        pending = torch.zeros(batch_size, self.channels, 0, device=device, dtype=dtype)
        state = MimiState(batch_size=batch_size, device=device, pending=pending)
        if self.cuda_graph if self.cuda_graph is not None else device.type == "cuda":
            state.encode_graph, state.decode_graph = StepGraph(self._encode), StepGraph(self._decode)
        return state

    def _run_transformer(self, transformer: ProjectedTransformer, x: torch.Tensor) -> torch.Tensor:
        """Batch: one call. Streaming: one call per frame (``resample_stride`` steps), see module doc."""
        steps = self.config.resample_stride
        if not self.is_streaming or x.shape[-1] <= steps:
            return transformer(x)
        return torch.cat([transformer(part) for part in x.split(steps, dim=-1)], dim=-1)

    # -- input checks ----------------------------------------------------------------------------
    def _param_dtype(self) -> torch.dtype:
        return self.quantizer.rvq_first.input_proj.weight.dtype

    def _check_batch(self, batch: int, what: str) -> None:
        state = self._streaming_state
        if state is not None and batch != state.batch_size:
            raise ValueError(
                f"{what} has batch size {batch}, but streaming was started with {state.batch_size}"
            )

    def _checked_audio(self, wav: torch.Tensor) -> torch.Tensor:
        if not isinstance(wav, torch.Tensor):
            raise TypeError(
                f"encode expects a torch.Tensor [B, {self.channels}, T], got {type(wav).__name__}"
            )
        if not wav.is_floating_point():
            raise TypeError(
                f"encode expects float audio in [-1, 1], got {wav.dtype}"
                + (" (int16 PCM: divide by 32768)" if wav.dtype == torch.int16 else "")
            )
        if wav.dim() != 3 or wav.shape[1] != self.channels:
            raise ValueError(
                f"encode expects audio of shape [B, {self.channels}, T], got {list(wav.shape)}"
                + (" (add the batch and channel dims: wav[None, None])" if wav.dim() == 1 else "")
                + (" (add a channel dim: wav[:, None])" if wav.dim() == 2 else "")
            )
        if not self.is_streaming:  # a streaming step reads no value back (see check_audio)
            self.check_audio(wav)
        self._check_batch(wav.shape[0], "audio")
        return wav.to(self._param_dtype())

    def check_audio(self, wav: torch.Tensor) -> None:
        """Fail with a clear message when ``wav`` holds NaN or Inf samples. Batch calls check this
        themselves; a streaming step does not (it would read the values back from the device)."""
        if not bool(torch.isfinite(wav).all()):
            raise ValueError("encode: the audio contains NaN or Inf samples")

    def check_codes(self, codes: torch.Tensor) -> None:
        """Fail with a clear message when ``codes`` hold values outside ``0..cardinality - 1``.
        Batch calls check this themselves; a streaming step does not (see :meth:`check_audio`)."""
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.cardinality):
            raise ValueError(
                f"codes out of range: found values in [{int(codes.min())}, {int(codes.max())}], "
                f"valid codes are 0..{self.cardinality - 1}"
            )

    def _checked_codes(self, codes: torch.Tensor) -> torch.Tensor:
        if not isinstance(codes, torch.Tensor):
            raise TypeError(f"decode expects a torch.Tensor of codes [B, K, F], got {type(codes).__name__}")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise TypeError(f"decode expects integer codes, got {codes.dtype}")
        if codes.dim() != 3:
            raise ValueError(f"decode expects codes of shape [B, K, F], got {list(codes.shape)}")
        k = codes.shape[1]
        if not 1 <= k <= self.total_codebooks:
            raise ValueError(f"decode got {k} codebooks; this Mimi has 1..{self.total_codebooks}")
        if not self.is_streaming:
            self.check_codes(codes)
        self._check_batch(codes.shape[0], "codes")
        return codes.long()

    # -- encode / decode -------------------------------------------------------------------------
    def encode_latent(self, wav: torch.Tensor) -> torch.Tensor:
        """Audio ``[B, 1, T]`` -> un-quantized latent ``[B, D, F]`` (same input rules as encode)."""
        wav = self._checked_audio(wav)
        state = self._streaming_state
        if state is None:
            self.select_kernels()
        frame = self.frame_size
        if state is None:
            if wav.shape[-1] == 0:
                raise ValueError("encode got empty audio (T = 0)")
            wav = F.pad(wav, (0, -wav.shape[-1] % frame))
        else:
            if state.pending.shape[-1] and not bool(state.exec_mask.all()):
                raise RuntimeError("an execution mask cannot be combined with a buffered partial frame")
            wav = torch.cat([state.pending, wav], dim=-1)
            complete = wav.shape[-1] // frame * frame
            state.pending = wav[..., complete:]
            wav = wav[..., :complete]
            if complete == 0:
                return wav.new_zeros(wav.shape[0], self.config.seanet.dimension, 0)
            if self.numerics == "reference" and complete > frame:
                # as the reference streams: torch sums a convolution by the shape it is given
                return torch.cat([self._encode_frames(part) for part in wav.split(frame, dim=-1)], dim=-1)
        return self._encode_frames(wav)

    def _encode_frames(self, wav: torch.Tensor) -> torch.Tensor:
        latent = self._run_transformer(self.encoder_transformer, self.encoder(wav))
        return self.downsample(latent) if self.downsample is not None else latent

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """Audio ``[B, 1, T]`` float at 24 kHz -> codes ``[B, num_codebooks, F]`` (int64).

        Batch mode zero-pads to whole frames (``F = ceil(T / frame_size)``); streaming returns the
        frames completed by this chunk.
        """
        state = self._streaming_state
        graph = None if state is None else state.encode_graph
        if graph is not None and wav.shape[-1] == self.frame_size and state.pending.shape[-1] == 0:
            return graph(self._checked_audio(wav))  # one whole frame: the steady-state step
        return self._encode(wav)

    def _encode(self, wav: torch.Tensor) -> torch.Tensor:
        latent = self.encode_latent(wav)
        if latent.shape[-1] == 0:
            return torch.zeros(latent.shape[0], self.num_codebooks, 0, dtype=torch.long, device=latent.device)
        if self.is_streaming and self.numerics == "reference" and latent.shape[-1] > 1:
            # BLAS rounds a product differently for different row counts, and a rounding can flip a
            # near-tie: one frame per search keeps streaming codes independent of the chunking
            # (those of one frame per call, as the reference streams).
            frames = latent.split(1, dim=-1)
            return torch.cat([self.quantizer.encode(frame) for frame in frames], dim=-1)
        return self.quantizer.encode(latent)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, K, F]`` (any ``K`` up to the total) -> audio ``[B, 1, F * frame_size]``."""
        state = self._streaming_state
        if state is not None and state.decode_graph is not None and codes.shape[-1:] == (1,):
            return state.decode_graph(self._checked_codes(codes))  # one frame: the steady-state step
        return self._decode(codes)

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        codes = self._checked_codes(codes)
        if not self.is_streaming:
            self.select_kernels()
        if codes.shape[-1] == 0:
            if not self.is_streaming:
                raise ValueError("decode got zero frames (F = 0)")
            return torch.zeros(
                codes.shape[0], self.channels, 0, dtype=self._param_dtype(), device=codes.device
            )
        latent = self.quantizer.decode(codes)
        if self.upsample is not None:
            latent = self.upsample(latent)
        return self.decoder(self._run_transformer(self.decoder_transformer, latent))

    # -- weights ---------------------------------------------------------------------------------
    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False):  # noqa: ANN201
        """Load official on-disk names, the reference's in-memory names, or legacy codebook names.

        With ``strict`` (the default) a mismatch raises :class:`~duplex.codec.checkpoint.CheckpointError`
        listing every missing, unexpected and mis-shaped key.
        """
        state = canonical_state_dict(state_dict)
        if strict:
            expected = {k: v.shape for k, v in self.state_dict().items()}
            check_state_dict(expected, state, f"Mimi({self._describe()})")
        return super().load_state_dict(state, strict=strict, assign=assign)

    def _describe(self) -> str:
        c = self.config
        return (
            f"dimension={c.seanet.dimension}, n_q={c.quantizer.n_q}, bins={c.quantizer.bins}, "
            f"layers={c.transformer.num_layers}"
        )

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        num_codebooks: int = 8,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        config: MimiConfig | dict[str, Any] | None = None,
        numerics: Numerics = "fast",
    ) -> Mimi:
        """Load a Mimi from a ``.safetensors`` file, a checkpoint directory, ``hf://owner/repo/file``
        or a Hugging Face repo id (``kyutai/moshiko-pytorch-bf16``).

        The configuration is, in order: ``config``; the directory's ``mimi_config_name`` JSON; the
        one stored in the file by :meth:`save_pretrained`; the official one. ``config`` may be
        the dict of ``mimi_config.json``. ``numerics``: see the class docstring.
        """
        resolved = resolve_checkpoint(source)
        tensors, metadata = read_safetensors(resolved.weights)
        if isinstance(config, dict):
            config = MimiConfig(**config)
        if config is None:
            if resolved.config is not None:
                config = MimiConfig(**resolved.config)
            elif CONFIG_METADATA_KEY in metadata:
                config = MimiConfig(**json.loads(metadata[CONFIG_METADATA_KEY]))
            else:
                config = MimiConfig()
        model = cls(config, numerics=numerics)
        model.load_state_dict(tensors)
        model.num_codebooks = num_codebooks
        model.to(device=device, dtype=dtype)
        return model.eval()

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the weights as one safetensors file in the official layout; returns its path.

        ``path`` ending in ``.safetensors`` is the file itself; any other path is a directory that gets
        ``mimi.safetensors`` plus a ``config.json`` naming it (and ``mimi_config.json``), the official
        checkpoint-directory layout. The file also carries the config in its metadata.
        """
        path = Path(path)
        metadata = {CONFIG_METADATA_KEY: json.dumps(self.config.to_dict()), "format": "pt"}
        state = {k: v.float() if v.is_floating_point() else v for k, v in self.state_dict().items()}
        if path.suffix == ".safetensors":
            return write_safetensors(path, state, metadata)
        path.mkdir(parents=True, exist_ok=True)
        (path / "mimi_config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        (path / "config.json").write_text(
            json.dumps({"mimi_name": SAVED_FILE_NAME, "mimi_config_name": "mimi_config.json"}, indent=2)
        )
        return write_safetensors(path / SAVED_FILE_NAME, state, metadata)
