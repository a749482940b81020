"""A data-driven initialisation that makes an untrained Mimi tell sounds apart (tests, demos).

Freshly initialised, a small Mimi maps every frame to the same codes and every code to the same
faint sound. :func:`calibrate_untrained` fixes both without training: each convolution is scaled
to unit output variance on a calibration signal (as LSUV does), each codebook takes its centroids
from the latents of that signal (as a k-means initialisation would), and the decoder is scaled to
a given loudness without DC offset. Randomness comes from torch's global generator (and ``seed``
for the decoder's calibration codes), so a seeded run is reproducible.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from duplex.codec.kernels.rvq_torch import quantize_level

if TYPE_CHECKING:
    from duplex.codec.mimi import Mimi


@torch.no_grad()
def calibrate_untrained(mimi: Mimi, seed: int = 0, seconds: int = 8) -> None:
    """Calibrate a random ``mimi`` in place on ``seconds`` of synthetic audio (see the module doc)."""
    audio = calibration_audio(mimi.sample_rate, seconds)
    unit_variance(mimi.encoder, lambda: mimi.encode_latent(audio))
    spread_codebooks(mimi, audio)
    audible_decoder(mimi, seed=seed)


def calibration_audio(sample_rate: int, seconds: int = 8) -> torch.Tensor:
    """A few seconds of a gliding, pulsing tone with noise ``[1, 1, T]`` (draws from torch's RNG)."""
    t = torch.arange(seconds * sample_rate) / sample_rate
    pitch = 120 + 80 * torch.sin(2 * torch.pi * 0.3 * t)
    tone = 0.3 * torch.sin(2 * torch.pi * torch.cumsum(pitch, 0) / sample_rate)
    envelope = 0.5 + 0.5 * torch.sin(2 * torch.pi * 2.5 * t).clamp(min=0)
    return (tone * envelope + 0.05 * torch.randn_like(t))[None, None]


@torch.no_grad()
def spread_codebooks(mimi: Mimi, audio: torch.Tensor) -> None:
    """Give the random Mimi codebooks that tell sounds apart.

    Fresh codebooks are all zeros, so every frame would get code 0 and every code would decode to
    the same sound. Each codebook instead takes its centroids from the (residual) latents of a
    few seconds of synthetic audio, as a k-means initialisation would.
    """
    latent = mimi.encode_latent(audio)
    for rvq in (mimi.quantizer.rvq_first, mimi.quantizer.rvq_rest):
        residual = rvq.input_proj(latent).transpose(1, 2).reshape(-1, rvq.input_proj.out_channels)
        for codebook in rvq.codebooks():
            if residual.shape[0] >= codebook.size:
                chosen = torch.randperm(residual.shape[0])[: codebook.size]
            else:  # fewer latents than bins (the official 2048-bin size): some repeat
                chosen = torch.randint(0, residual.shape[0], (codebook.size,))
            codebook.seed(residual[chosen])
            residual = residual - quantize_level(residual, codebook.centroids)[1]


def _conv_layers(module: torch.nn.Module, run) -> list[tuple[torch.nn.Module, torch.nn.Module]]:  # noqa: ANN001
    """(the module that runs it, the convolution) for each convolution ``run()`` goes through, in
    the order it runs them (duplex's conv modules run their torch conv's weights through kernels)."""
    holders = {}
    for holder in module.modules():
        inner = getattr(holder, "conv", None) or getattr(holder, "convtr", None)
        if isinstance(inner, torch.nn.Conv1d | torch.nn.ConvTranspose1d):
            holders[holder] = inner
    order: list[torch.nn.Module] = []

    def note(holder, inputs, output) -> None:  # noqa: ANN001
        if holder not in order:
            order.append(holder)

    hooks = [holder.register_forward_hook(note) for holder in holders]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return [(holder, holders[holder]) for holder in order]


@torch.no_grad()
def unit_variance(module: torch.nn.Module, run) -> None:  # noqa: ANN001
    """Scale each convolution ``run()`` goes through, in order, so that its output has unit
    variance on the calibration input, with zero biases (a data-driven init, as LSUV).

    Freshly initialised, the tiny SEANet's 2-channel layers shrink the signal at every layer, so
    that the decoder's output is its last bias (a DC offset) plus a faint fixed pattern, whatever
    the codes; scaled like this, what goes in reaches the output."""
    for holder, conv in _conv_layers(module, run):
        seen: list[torch.Tensor] = []
        hook = holder.register_forward_hook(lambda _m, _i, output, seen=seen: seen.append(output))
        if conv.bias is not None:
            conv.bias.zero_()
        run()
        hook.remove()
        conv.weight.div_(torch.cat([o.flatten() for o in seen]).std().clamp(min=1e-8))


@torch.no_grad()
def audible_decoder(mimi: Mimi, level: float = 0.1, seed: int = 0) -> None:
    """Make the random decoder turn different codes into different sound, at ``level`` RMS and
    without a DC offset (calibrated on random codes, with a generator of its own)."""
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, mimi.cardinality, (4, mimi.total_codebooks, 25), generator=generator)
    unit_variance(mimi, lambda: mimi.decode(codes))
    _, last = _conv_layers(mimi.decoder, lambda: mimi.decode(codes))[-1]
    out = mimi.decode(codes)
    last.weight.mul_(level / out.std())
    last.bias.sub_(mimi.decode(codes).mean())
