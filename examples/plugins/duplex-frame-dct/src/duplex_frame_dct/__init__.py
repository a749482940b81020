"""``frame-dct``: a streaming codec of non-overlapping DCT frames and a residual VQ.

It implements :class:`duplex.codec.interfaces.AudioCodec` and is registered in duplex's
``duplex.codecs`` entry-point group.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from duplex.codec.kernels import rvq_decode, rvq_encode
from duplex.codec.streaming import StreamingModule, StreamingState
from pydantic import BaseModel, ConfigDict, Field
from safetensors import safe_open
from safetensors.torch import save_file

NAME = "frame-dct"
WEIGHTS = "frame_dct.safetensors"
CONFIG_KEY = "frame_dct_config"


class FrameDCTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sample_rate: int = 24_000
    frame_size: int = Field(1920, ge=8)
    coefficients: int = Field(256, ge=1, description="DCT coefficients kept per frame (the lowest)")
    levels: int = Field(8, ge=1, description="residual VQ codebooks")
    bins: int = Field(256, ge=2, description="codes per codebook")


def dct_basis(size: int, kept: int) -> torch.Tensor:
    """The first ``kept`` rows of the orthonormal DCT-II of ``size`` points, ``[kept, size]``."""
    n = torch.arange(size, dtype=torch.float64)
    k = torch.arange(kept, dtype=torch.float64)[:, None]
    basis = torch.cos(math.pi / size * (n + 0.5) * k) * math.sqrt(2.0 / size)
    basis[0] /= math.sqrt(2.0)
    return basis.float()


@dataclass
class FrameDCTState(StreamingState):
    pending: torch.Tensor | None = None  # [B, 1, n < frame_size]: samples of an incomplete frame

    def reset(self, slots: torch.Tensor) -> None:
        if self.pending is not None:
            self.pending[slots] = 0.0


class FrameDCTCodec(StreamingModule[FrameDCTState]):
    """Audio ``[B, 1, T]`` <-> codes ``[B, num_codebooks, frames]``, ``sample_rate / frame_size`` frames/s."""

    def __init__(self, config: FrameDCTConfig | None = None, numerics: str = "fast") -> None:
        super().__init__()
        self.config = config or FrameDCTConfig()
        self.numerics = numerics
        c = self.config
        self.register_buffer("basis", dct_basis(c.frame_size, c.coefficients), persistent=False)
        self.register_buffer("codebooks", torch.zeros(c.levels, c.bins, c.coefficients))
        self.num_codebooks = c.levels

    # -- facts ------------------------------------------------------------------------------------
    sample_rate = property(lambda self: self.config.sample_rate)
    frame_size = property(lambda self: self.config.frame_size)
    frame_rate = property(lambda self: self.config.sample_rate / self.config.frame_size)
    channels = property(lambda self: 1)
    cardinality = property(lambda self: self.config.bins)
    total_codebooks = property(lambda self: self.config.levels)

    # -- learning the codebooks -------------------------------------------------------------------
    @torch.no_grad()
    def fit(self, audio: torch.Tensor, iterations: int = 20, seed: int = 0) -> FrameDCTCodec:
        """k-means codebooks, level by level on the residual, from ``audio [N, 1, T]``."""
        generator = torch.Generator().manual_seed(seed)
        residual = self._coefficients(self._frames(audio))
        for level in range(self.config.levels):
            picks = torch.randint(residual.shape[0], (self.config.bins,), generator=generator)
            means = residual[picks].clone()
            for _ in range(iterations):
                nearest = torch.cdist(residual, means).argmin(dim=1)
                counts = torch.bincount(nearest, minlength=self.config.bins)[:, None]
                sums = torch.zeros_like(means).index_add_(0, nearest, residual)
                means = torch.where(counts > 0, sums / counts.clamp(min=1), means)
            self.codebooks[level] = means
            residual = residual - means[torch.cdist(residual, means).argmin(dim=1)]
        return self

    # -- encode / decode --------------------------------------------------------------------------
    def check_audio(self, wav: torch.Tensor) -> None:
        if wav.dim() != 3 or wav.shape[1] != 1 or not wav.is_floating_point():
            raise ValueError(f"audio must be float [B, 1, T], got {wav.dtype} {list(wav.shape)}")

    def check_codes(self, codes: torch.Tensor) -> None:
        if codes.dim() != 3 or codes.dtype.is_floating_point or not 0 < codes.shape[1] <= self.config.levels:
            raise ValueError(
                f"codes must be integer [B, 1..{self.config.levels}, frames], got {list(codes.shape)}"
            )
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.config.bins):
            raise ValueError(
                f"codes must lie in [0, {self.config.bins}), got {int(codes.min())}..{int(codes.max())}"
            )

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """Batch: every frame, the last one zero-padded. Streaming: the frames completed so far."""
        self.check_audio(wav)
        if self._streaming_state is not None:
            wav = self._take_whole_frames(wav)
        else:
            wav = torch.nn.functional.pad(wav, (0, -wav.shape[-1] % self.frame_size))
        batch, frames = wav.shape[0], wav.shape[-1] // self.frame_size
        rows = self._coefficients(self._frames(wav))
        codes = rvq_encode(rows, self.codebooks[: self.num_codebooks], numerics=self.numerics)
        return codes.view(batch, frames, -1).transpose(1, 2)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        batch, levels, frames = codes.shape
        rows = codes.transpose(1, 2).reshape(batch * frames, levels)
        coefficients = rvq_decode(rows, self.codebooks[:levels], numerics=self.numerics)
        return (coefficients @ self.basis).view(batch, 1, frames * self.frame_size)

    def _frames(self, wav: torch.Tensor) -> torch.Tensor:
        usable = wav.shape[-1] - wav.shape[-1] % self.frame_size
        return wav[..., :usable].reshape(-1, self.frame_size)

    def _coefficients(self, frames: torch.Tensor) -> torch.Tensor:
        return frames @ self.basis.t()

    # -- streaming --------------------------------------------------------------------------------
    def _init_streaming_state(self, batch_size: int) -> FrameDCTState:
        return FrameDCTState(batch_size, self.basis.device)

    def _take_whole_frames(self, wav: torch.Tensor) -> torch.Tensor:
        state = self.streaming_state
        if state.pending is not None:
            wav = torch.cat([state.pending, wav], dim=-1)
        usable = wav.shape[-1] - wav.shape[-1] % self.frame_size
        state.pending = wav[..., usable:].clone()
        return wav[..., :usable]

    # -- files ------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> Path:
        """A ``.safetensors`` file (the config in its metadata), or a directory whose ``config.json``
        names this codec (``{"codec": "frame-dct", ...}``)."""
        path = Path(path)
        if path.suffix != ".safetensors":
            path.mkdir(parents=True, exist_ok=True)
            (path / "config.json").write_text(json.dumps({"codec": NAME, "mimi_name": WEIGHTS}, indent=2))
            path = path / WEIGHTS
        metadata = {CONFIG_KEY: self.config.model_dump_json(), "format": "pt"}
        save_file({"codebooks": self.codebooks.detach().float().contiguous().cpu()}, str(path), metadata)
        return path

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        num_codebooks: int | None = None,
        device: Any = None,
        dtype: Any = None,
        config: Any = None,
        numerics: str = "fast",
    ) -> FrameDCTCodec:
        path = Path(source)
        if path.is_dir():
            names = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
            path = path / names.get("mimi_name", WEIGHTS)
        if not path.is_file():
            raise FileNotFoundError(
                f"{source}: no frame-dct weights; pass the directory save_pretrained wrote"
            )
        with safe_open(str(path), "pt") as file:
            stored = file.metadata() or {}
            codebooks = file.get_tensor("codebooks")
        if config is None:
            config = FrameDCTConfig.model_validate_json(stored[CONFIG_KEY])
        elif isinstance(config, dict):
            config = FrameDCTConfig.model_validate(config)
        codec = cls(config, numerics=numerics)
        codec.codebooks.copy_(codebooks)
        codec.num_codebooks = config.levels if num_codebooks is None else min(num_codebooks, config.levels)
        return codec.to(device=device, dtype=dtype).eval()
