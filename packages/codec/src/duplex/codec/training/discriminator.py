"""Multi-scale STFT discriminator: 2-D conv stacks over complex spectrograms at several windows."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class STFTDiscriminator(nn.Module):
    """One scale: real and imaginary STFT parts as two channels, then dilated 2-D convolutions."""

    def __init__(self, n_fft: int, channels: int = 32, dilations: Sequence[int] = (1, 2, 4)) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = n_fft // 4
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        layers = [weight_norm(nn.Conv2d(2, channels, (3, 9), padding=(1, 4)))]
        for dilation in dilations:
            layers.append(
                weight_norm(
                    nn.Conv2d(
                        channels,
                        channels,
                        (3, 9),
                        stride=(1, 2),
                        dilation=(dilation, 1),
                        padding=(dilation, 4),
                    )
                )
            )
        layers.append(weight_norm(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1))))
        self.layers = nn.ModuleList(layers)
        self.output = weight_norm(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))
        self.activation = nn.LeakyReLU(0.2)

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        spec = torch.stft(
            wav.reshape(-1, wav.shape[-1]).float(),
            self.n_fft,
            self.hop_length,
            window=self.window,
            return_complex=True,
        )
        x = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # [B, 2, frames, freq]
        features = []
        for layer in self.layers:
            x = self.activation(layer(x))
            features.append(x)
        return self.output(x), features


class MultiScaleSTFTDiscriminator(nn.Module):
    def __init__(self, n_ffts: Sequence[int] = (2048, 1024, 512, 256, 128), channels: int = 32) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(STFTDiscriminator(n, channels) for n in n_ffts)

    def forward(self, wav: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        """Logits of every scale and the activations of every layer, for feature matching."""
        logits, features = [], []
        for discriminator in self.discriminators:
            logit, feature = discriminator(wav)
            logits.append(logit)
            features.append(feature)
        return logits, features
