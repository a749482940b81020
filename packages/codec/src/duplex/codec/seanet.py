"""SEANet encoder and decoder: the convolutional halves of Mimi (docs/architecture.md §1.4).

Both are a flat ``nn.Sequential`` named ``model``. The parameter-free activations keep their own
slots in it, because checkpoint keys are indexed by position (``encoder.model.3.conv.conv.weight``).
"""

from __future__ import annotations

import torch
from duplex.codec.config import SeanetConfig
from duplex.codec.nn import ELU, StreamingConv1d, StreamingConvTranspose1d
from torch import nn


def _activation(config: SeanetConfig) -> nn.Module:
    if config.activation == "ELU":
        return ELU(**config.activation_params)  # torch's, with a C kernel for streaming
    return getattr(nn, config.activation)(**config.activation_params)


class SeanetResidualBlock(nn.Module):
    """``x + block(x)`` where block is act, conv (dim -> dim/compress, k), act, conv (-> dim, k=1)."""

    def __init__(self, dim: int, dilation: int, config: SeanetConfig) -> None:
        super().__init__()
        hidden = dim // config.compress
        self.block = nn.Sequential(
            _activation(config),
            StreamingConv1d(
                dim, hidden, config.residual_kernel_size, dilation=dilation, pad_mode=config.pad_mode
            ),
            _activation(config),
            StreamingConv1d(hidden, dim, 1, pad_mode=config.pad_mode),
        )
        self.shortcut: nn.Module = (
            nn.Identity() if config.true_skip else StreamingConv1d(dim, dim, 1, pad_mode=config.pad_mode)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.block(x)


def _residual_blocks(dim: int, config: SeanetConfig) -> list[nn.Module]:
    return [
        SeanetResidualBlock(dim, config.dilation_base**j, config) for j in range(config.n_residual_layers)
    ]


class SeanetEncoder(nn.Module):
    """Waveform ``[B, channels, T]`` -> latent ``[B, dimension, T / hop_length]``."""

    def __init__(self, config: SeanetConfig) -> None:
        super().__init__()
        self.config = config
        width = config.n_filters
        layers: list[nn.Module] = [
            StreamingConv1d(config.channels, width, config.kernel_size, pad_mode=config.pad_mode)
        ]
        for ratio in reversed(config.ratios):
            layers += _residual_blocks(width, config)
            layers += [
                _activation(config),
                StreamingConv1d(width, width * 2, 2 * ratio, stride=ratio, pad_mode=config.pad_mode),
            ]
            width *= 2
        layers += [
            _activation(config),
            StreamingConv1d(width, config.dimension, config.last_kernel_size, pad_mode=config.pad_mode),
        ]
        self.model = nn.Sequential(*layers)

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.model(wav)


class SeanetDecoder(nn.Module):
    """Latent ``[B, dimension, T]`` -> waveform ``[B, channels, T * hop_length]`` (no final activation)."""

    def __init__(self, config: SeanetConfig) -> None:
        super().__init__()
        self.config = config
        width = config.n_filters * 2 ** len(config.ratios)
        layers: list[nn.Module] = [
            StreamingConv1d(config.dimension, width, config.kernel_size, pad_mode=config.pad_mode)
        ]
        for ratio in config.ratios:
            layers += [
                _activation(config),
                StreamingConvTranspose1d(width, width // 2, 2 * ratio, stride=ratio),
            ]
            width //= 2
            layers += _residual_blocks(width, config)
        layers += [
            _activation(config),
            StreamingConv1d(width, config.channels, config.last_kernel_size, pad_mode=config.pad_mode),
        ]
        self.model = nn.Sequential(*layers)

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.model(latent)
