"""A torch dataset of fixed-length multistream segments built from a moshi-finetune dataset."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from duplex.lm.data.format import USER_SPEAKER, Dialogue
from duplex.lm.data.interleave import FRAME_RATE, TEXT_EPAD, TEXT_PAD, ZERO_TOKEN, multistream, text_stream
from duplex.lm.data.token_cache import TokenCache
from duplex.lm.registry import DATA_SOURCES
from torch.utils.data import Dataset


def dialogue_sequence(
    dialogue: Dialogue,
    cache: TokenCache,
    tokenize: Callable[[str], list[int]],
    num_codebooks: int,
    frame_rate: float = FRAME_RATE,
    pad_id: int = TEXT_PAD,
    epad_id: int = TEXT_EPAD,
    user_text: bool = False,
) -> torch.Tensor:
    """The full multistream sequence ``[1 + 2K, F]`` of one dialogue; with ``user_text``, the
    user's words as a text stream follow as one more row (``[2 + 2K, F]``): a training target
    (``duplex.lm.training.user_text``), never an LM input."""
    codes = cache.codes(dialogue.entry.audio_path)  # [2, K_codec, F]
    if codes.shape[1] < num_codebooks:
        raise ValueError(
            f"the codec gives {codes.shape[1]} codebooks but the LM needs {num_codebooks} per speaker"
        )
    codes = codes[:, :num_codebooks]
    text = text_stream(dialogue.words, tokenize, codes.shape[-1], frame_rate, pad_id, epad_id)
    sequence = multistream(text, codes[0], codes[1])
    if not user_text:
        return sequence
    heard = text_stream(
        dialogue.words, tokenize, codes.shape[-1], frame_rate, pad_id, epad_id, speaker=USER_SPEAKER
    )
    return torch.cat([sequence, heard[None]], dim=0)


class MultistreamDataset(Dataset):
    """Windows of ``segment_frames`` frames cut from the dialogues, one every ``hop_frames``
    (default: ``segment_frames``, windows end to end).

    By default each dialogue is cut on its own and its last window is completed with the zero
    token (-1), which the LM embeds to zero and leaves out of the loss. With ``pack``, dialogues
    are laid end to end first, so windows hold no filler: for dialogues shorter than a window
    (scripted exchanges) this roughly halves the compute per frame learnt from. A hop below the
    window length makes every stretch of a dialogue shorter than ``segment_frames - hop_frames``
    whole in some window, wherever the cuts fall.
    """

    def __init__(
        self,
        sequences: Sequence[torch.Tensor],
        segment_frames: int,
        hop_frames: int | None = None,
        pack: bool = False,
    ) -> None:
        hop_frames = segment_frames if hop_frames is None else hop_frames
        if segment_frames < 1:
            raise ValueError(f"segment_frames must be >= 1, got {segment_frames}")
        if not 1 <= hop_frames <= segment_frames:
            raise ValueError(
                f"hop_frames must be between 1 and segment_frames ({segment_frames}), got {hop_frames}"
            )
        self.segment_frames = segment_frames
        if pack and sequences:
            sequences = [torch.cat(list(sequences), dim=-1)]
        self.segments: list[torch.Tensor] = []
        for sequence in sequences:
            length = sequence.shape[-1]
            last_start = max(length - segment_frames, 0)
            starts = list(range(0, last_start + 1, hop_frames))
            if starts[-1] < last_start:
                starts.append(starts[-1] + hop_frames)  # the tail, completed with the zero token
            for start in starts:
                segment = sequence[:, start : start + segment_frames]
                if segment.shape[-1] < segment_frames:
                    fill = torch.full(
                        (segment.shape[0], segment_frames - segment.shape[-1]),
                        ZERO_TOKEN,
                        dtype=segment.dtype,
                    )
                    segment = torch.cat([segment, fill], dim=-1)
                self.segments.append(segment)

    @classmethod
    def from_folder(
        cls,
        data: str | Path,
        cache: TokenCache,
        tokenize: Callable[[str], list[int]],
        num_codebooks: int,
        segment_frames: int,
        source: str = "moshi-finetune",
        hop_frames: int | None = None,
        pack: bool = False,
        user_text: bool = False,
    ) -> MultistreamDataset:
        """Read ``data`` with the data source registered as ``source`` (entry-point group
        ``duplex.data_sources``: a callable ``(path) -> list[Dialogue]``); ``user_text`` adds the
        user's text stream as a last row (see :func:`dialogue_sequence`)."""
        dialogues = DATA_SOURCES.get(source)(data)
        sequences = [
            dialogue_sequence(d, cache, tokenize, num_codebooks, user_text=user_text) for d in dialogues
        ]
        return cls(sequences, segment_frames, hop_frames, pack)

    def __len__(self) -> int:
        return len(self.segments)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.segments[index]
