"""Multistream sequences: the text stream on the 12.5 Hz frame grid, the audio streams, delays.

The LM sees ``1 + 2K`` parallel streams per frame (docs/architecture.md §3.1): the model's text (inner
monologue), the model's K audio codebooks, then the user's K audio codebooks. Text tokens of a
word are placed from the frame where the word starts; frames without text hold PAD, and the frame
just before a word's first token holds EPAD (end of padding) when it was padding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from duplex.lm.data.format import MAIN_SPEAKER, Word

FRAME_RATE = 12.5
TEXT_PAD = 3
TEXT_EPAD = 0
ZERO_TOKEN = -1  # embeds to zero and is masked out of the loss


def text_stream(
    words: Sequence[Word],
    tokenize: Callable[[str], list[int]],
    num_frames: int,
    frame_rate: float = FRAME_RATE,
    pad_id: int = TEXT_PAD,
    epad_id: int = TEXT_EPAD,
    speaker: str = MAIN_SPEAKER,
) -> torch.Tensor:
    """The text stream ``[num_frames]`` of ``speaker``'s words.

    A word's tokens go to consecutive frames from ``floor(start * frame_rate)``, or right after
    the previous word's tokens if those still run; tokens past the end are dropped.
    """
    stream = torch.full((num_frames,), pad_id, dtype=torch.long)
    cursor = 0
    for word in sorted((w for w in words if w.speaker == speaker), key=lambda w: w.start):
        tokens = tokenize(word.text)
        position = max(int(word.start * frame_rate), cursor)
        if position >= num_frames or not tokens:
            continue
        if position > 0 and stream[position - 1] == pad_id:
            stream[position - 1] = epad_id
        tokens = tokens[: num_frames - position]
        stream[position : position + len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        cursor = position + len(tokens)
    return stream


def multistream(text: torch.Tensor, model_audio: torch.Tensor, user_audio: torch.Tensor) -> torch.Tensor:
    """Stack text ``[T]``, model audio ``[K, T]`` and user audio ``[K, T]`` into ``[1 + 2K, T]``."""
    if model_audio.shape != user_audio.shape:
        raise ValueError(
            f"model and user audio codes must have the same shape, got {list(model_audio.shape)} "
            f"and {list(user_audio.shape)}"
        )
    if text.shape[-1] != model_audio.shape[-1]:
        raise ValueError(f"text has {text.shape[-1]} frames but audio has {model_audio.shape[-1]}")
    return torch.cat([text[None].long(), model_audio.long(), user_audio.long()], dim=0)


def delay_streams(codes: torch.Tensor, delays: Sequence[int], initial: Sequence[int]) -> torch.Tensor:
    """Shift stream ``k`` of ``codes [..., S, T]`` right by ``delays[k]``, filling with ``initial[k]``.

    This is the layout the temporal transformer reads (docs/architecture.md §3.6);
    :func:`undelay_streams` inverts it.
    """
    if codes.shape[-2] != len(delays) or len(delays) != len(initial):
        raise ValueError(
            f"{codes.shape[-2]} streams but {len(delays)} delays and {len(initial)} initial tokens"
        )
    out = codes.clone()
    for k, (delay, token) in enumerate(zip(delays, initial, strict=True)):
        if delay:
            out[..., k, delay:] = codes[..., k, :-delay]
            out[..., k, :delay] = token
    return out


def undelay_streams(codes: torch.Tensor, delays: Sequence[int], fill: int = ZERO_TOKEN) -> torch.Tensor:
    """Shift stream ``k`` left by ``delays[k]``; the last ``delays[k]`` steps become ``fill``."""
    out = codes.clone()
    for k, delay in enumerate(delays):
        if delay:
            out[..., k, :-delay] = codes[..., k, delay:]
            out[..., k, -delay:] = fill
    return out
