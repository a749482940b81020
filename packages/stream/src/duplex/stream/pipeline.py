"""What the engine steps: a batched frame pipeline (user audio frame in, reply frame out).

The interface is :class:`duplex.codec.interfaces.Pipeline`; :class:`MoshiPipeline` composes the
codec and the LM: encode the user frame, step the LM, decode the reply frame, look up the text piece.

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

from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from duplex.codec.interfaces import StepOutput
from duplex.codec.kernels import Numerics
from duplex.codec.kernels.weight_formats import WeightFormat
from duplex.codec.streaming import module_device
from duplex.stream.slots import SamplingParams


class MoshiPipeline:
    """Mimi + LMGen + the text tokenizer, batched over rows."""

    kind = "chat"

    def __init__(self, mimi, lm_gen, tokenizer) -> None:
        self.mimi = mimi
        self.lm_gen = lm_gen
        self.tokenizer = tokenizer
        self.device = module_device(lm_gen.model)
        self.sample_rate = int(mimi.sample_rate)
        self.frame_rate = float(mimi.frame_rate)
        self.frame_size = int(mimi.frame_size)
        self.user_codebooks = int(lm_gen.num_user_codebooks)
        if mimi.num_codebooks < self.user_codebooks:
            raise ValueError(
                f"the LM reads {self.user_codebooks} user codebooks but Mimi makes {mimi.num_codebooks}"
            )
        self._contexts: ExitStack | None = None
        self._first_frame = np.zeros(0, dtype=bool)
        self._masks: dict[int, torch.Tensor] = {}
        self._batch_size = 0

    @classmethod
    def from_checkpoint(
        cls,
        source: str | Path | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        quantize: WeightFormat | None = None,
        numerics: Numerics = "fast",
        **sampling,
    ) -> MoshiPipeline:
        """Load anything ``duplex.lm.checkpoint.load_checkpoint`` accepts (None: the tiny demo).

        ``dtype`` casts the LM (default: as stored; Mimi stays float32). ``quantize`` (``"bf16"`` or
        ``"int8"``) stores the LM's matmul weights in low precision. ``sampling`` overrides the
        checkpoint's ``lm_gen_config`` (``use_sampling``, ``temp``, ``temp_text``, ``top_k``,
        ``top_k_text``). ``numerics``: "fast" or "reference" (the reference's tokens, bit for bit).
        """
        from duplex.lm.checkpoint import load_checkpoint
        from duplex.lm.config import check_model_type
        from duplex.lm.generate import LMGen

        if source is None:
            from duplex.stream.defaults import default_checkpoint

            source = default_checkpoint()
        bundle = load_checkpoint(source)
        check_model_type(bundle.config, "moshi", source)
        lm = bundle.lm(device=device, dtype=dtype, quantize=quantize, numerics=numerics)
        lm_gen = LMGen.from_config(lm, **sampling)
        return cls(bundle.codec(device=device, numerics=numerics), lm_gen, bundle.text_tokenizer())

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, batch_size: int) -> None:
        if self._contexts is not None:
            raise RuntimeError("the pipeline is already streaming; stop() it first")
        contexts = ExitStack()
        contexts.enter_context(self.mimi.streaming(batch_size))
        contexts.enter_context(self.lm_gen.streaming(batch_size))
        self._contexts = contexts
        self._batch_size = batch_size
        self._first_frame = np.zeros(batch_size, dtype=bool)
        self._masks: dict[int, torch.Tensor] = {}

    def stop(self) -> None:
        if self._contexts is not None:
            self._contexts.close()
            self._contexts = None

    def reset(self, row: int, params: SamplingParams) -> None:
        mask = self._mask(np.arange(self._batch_size) == row)
        self.mimi.reset_streaming(mask)
        self.lm_gen.set_seed(row, params.seed)
        self.lm_gen.reset_streaming(mask)
        self._first_frame[row] = True

    def _set_mask(self, module, mask: torch.Tensor) -> None:
        # Walking the module tree costs more than a tiny model's step: only do it on a change.
        current = self._masks.get(id(module))
        if current is None or not torch.equal(current, mask):
            module.set_exec_mask(mask)
            self._masks[id(module)] = mask

    def _mask(self, rows: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(rows, dtype=torch.bool, device=self.device)

    # -- one step -------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, pcm: np.ndarray, active: np.ndarray) -> StepOutput:
        n = self._batch_size
        if pcm.shape != (n, self.frame_size) or active.shape != (n,):
            raise ValueError(
                f"expected pcm [{n}, {self.frame_size}] and active [{n}], "
                f"got {list(pcm.shape)} and {list(active.shape)}"
            )
        executing = self._mask(active)
        wav = torch.as_tensor(pcm, dtype=torch.float32, device=self.device)[:, None]

        self._set_mask(self.mimi, executing)
        codes = self.mimi.encode(wav)[:, : self.user_codebooks]
        starting = active & self._first_frame
        if starting.any():
            self.mimi.reset_streaming(self._mask(starting))
            self._first_frame &= ~starting

        self._set_mask(self.lm_gen, executing)
        tokens = self.lm_gen.step(codes)
        out_pcm = np.zeros((n, self.frame_size), dtype=np.float32)
        text: list[str | None] = [None] * n
        if tokens is None:
            return StepOutput(out_pcm, np.zeros(n, dtype=bool), text)

        replying = executing & (tokens[:, 1:, 0] >= 0).all(dim=1)
        has_reply = replying.cpu().numpy()
        if has_reply.any():
            self._set_mask(self.mimi, replying)
            decoded = self.mimi.decode(tokens[:, 1:].clamp_min(0))
            out_pcm = decoded[:, 0].float().cpu().numpy()
            out_pcm[~has_reply] = 0.0
        for row, token in enumerate(tokens[:, 0, 0].tolist()):
            if has_reply[row]:
                text[row] = self.tokenizer.token_text(token) or None
        return StepOutput(out_pcm, has_reply, text, tokens[:, :, 0].cpu().numpy())
