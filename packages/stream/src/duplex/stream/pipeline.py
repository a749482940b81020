"""What the engine steps: a batched frame pipeline (user audio frame in, reply frame out).

:class:`FramePipeline` is the interface; :class:`MoshiPipeline` composes Mimi and the LM:
encode the user frame, step the LM, decode the reply frame, look up the text piece.

Per-slot facts the pipeline keeps (all rows live in one Mimi and one LM streaming context of
batch N):

* Idle rows (no conversation, or no frame this step) are switched off with the streaming exec
  mask, so their state does not move; they are fed zeros that nothing reads.
* Joining resets the row of Mimi and of the LM (with the conversation's own seed).
* The first frame of a row is encoded, stepped (the LM never looks at the user codes of its
  first call) and then Mimi's row is reset, so the second frame is encoded as a stream start,
  with the codec's left padding applied again. This is what the reference server does; with it,
  a conversation's reply matches the reference frame for frame (tests check this).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from duplex.stream.slots import SamplingParams

# Text ids the server never prints: 0 (also the "end of padding" id) and 3 (padding).
SILENT_TEXT_IDS = frozenset({0, 3})


@dataclass
class StepOutput:
    """One step's output for every row: ``pcm`` [N, frame_size], ``has_reply`` [N] and the text."""

    pcm: np.ndarray
    has_reply: np.ndarray
    text: list[str | None]


class FramePipeline(Protocol):
    sample_rate: int
    frame_rate: float
    frame_size: int

    def start(self, batch_size: int) -> None:
        """Enter streaming with ``batch_size`` rows."""

    def stop(self) -> None:
        """Leave streaming."""

    def reset(self, row: int, params: SamplingParams) -> None:
        """Restart one row for a new conversation."""

    def step(self, pcm: np.ndarray, active: np.ndarray) -> StepOutput:
        """One 80 ms step: ``pcm`` [N, frame_size] user audio, ``active`` [N] rows to advance."""


def text_piece(tokenizer, token: int) -> str | None:
    """The text the official server sends for a text token: the piece with "▁" as a space."""
    if token in SILENT_TEXT_IDS or token < 0:
        return None
    return tokenizer.id_to_piece(int(token)).replace("\u2581", " ")


class MoshiPipeline:
    """Mimi + LMGen, batched over rows."""

    def __init__(self, mimi, lm_gen, tokenizer, device: torch.device | str = "cpu") -> None:
        self.mimi = mimi
        self.lm_gen = lm_gen
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.sample_rate = int(mimi.sample_rate)
        self.frame_rate = float(mimi.frame_rate)
        self.frame_size = int(mimi.frame_size)
        self._first_frame: np.ndarray | None = None
        self._batch_size = 0

    @classmethod
    def from_checkpoint(
        cls,
        source=None,
        device: torch.device | str = "cpu",
        use_sampling: bool = True,
        **lm_gen_overrides,
    ) -> MoshiPipeline:
        """Load a checkpoint (anything ``load_checkpoint`` accepts; None = the tiny demo one)."""
        from duplex.lm import LMGen, load_checkpoint

        if source is None:
            from duplex.stream.demo import default_checkpoint

            source = default_checkpoint()
        bundle = load_checkpoint(source, device=device)
        gen_kwargs = {**bundle.lm_gen_config, **lm_gen_overrides}
        gen_kwargs.setdefault("use_sampling", use_sampling)
        lm_gen = LMGen(bundle.lm.eval(), **gen_kwargs)
        return cls(bundle.mimi.eval(), lm_gen, bundle.tokenizer, device=device)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, batch_size: int) -> None:
        self.mimi.streaming_forever(batch_size)
        self.lm_gen.streaming_forever(batch_size)
        self._batch_size = batch_size
        self._first_frame = np.zeros(batch_size, dtype=bool)

    def stop(self) -> None:
        self.mimi._stop_streaming()
        self.lm_gen._stop_streaming()
        self._batch_size = 0

    def reset(self, row: int, params: SamplingParams) -> None:
        mask = self._row_mask([row])
        self.mimi.reset_streaming(mask)
        self.lm_gen.reset_streaming(mask, seed=params.seed)
        assert self._first_frame is not None
        self._first_frame[row] = True

    def _row_mask(self, rows) -> torch.Tensor:
        mask = torch.zeros(self._batch_size, dtype=torch.bool, device=self.device)
        mask[list(rows)] = True
        return mask

    # -- one step -------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, pcm: np.ndarray, active: np.ndarray) -> StepOutput:
        n = self._batch_size
        if pcm.shape != (n, self.frame_size) or active.shape != (n,):
            raise ValueError(f"expected pcm [{n}, {self.frame_size}] and active [{n}]")
        assert self._first_frame is not None
        exec_mask = torch.as_tensor(active, device=self.device)
        wav = torch.as_tensor(pcm, dtype=torch.float32, device=self.device)[:, None]

        self.mimi.set_exec_mask(exec_mask)
        codes = self.mimi.encode(wav)
        starting = active & self._first_frame
        if starting.any():
            self.mimi.reset_streaming(torch.as_tensor(starting, device=self.device))
            self._first_frame &= ~starting

        self.lm_gen.set_exec_mask(exec_mask)
        tokens = self.lm_gen.step(codes)
        out_pcm = np.zeros((n, self.frame_size), dtype=np.float32)
        text: list[str | None] = [None] * n
        if tokens is None:
            return StepOutput(out_pcm, np.zeros(n, dtype=bool), text)

        has_reply = exec_mask & (tokens[:, 1:, 0] >= 0).all(dim=1)
        if has_reply.any():
            audio = tokens[:, 1:].clamp_min(0)
            self.mimi.set_exec_mask(has_reply)
            decoded = self.mimi.decode(audio)
            out_pcm = decoded[:, 0].float().cpu().numpy()
        self.mimi.set_exec_mask(torch.ones(n, dtype=torch.bool, device=self.device))
        self.lm_gen.set_exec_mask(torch.ones(n, dtype=torch.bool, device=self.device))
        has_reply_np = has_reply.cpu().numpy()
        text_ids = tokens[:, 0, 0].tolist()
        for row in range(n):
            if has_reply_np[row]:
                text[row] = text_piece(self.tokenizer, text_ids[row])
        out_pcm[~has_reply_np] = 0.0
        return StepOutput(out_pcm, has_reply_np, text)
