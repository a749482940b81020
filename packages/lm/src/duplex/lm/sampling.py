"""Token sampling: temperature, top-k / top-p, greedy; optionally one random generator per slot.

The draw itself is the exponential race (spec 5.1): with ``E ~ Exp(1)`` i.i.d., ``argmax(p / E)``
is a sample of the (unnormalised) distribution ``p``. Without per-slot generators the noise is
drawn in one call from torch's global generator, in the same shape and order as the reference
(so the same ``torch.manual_seed`` gives the same tokens); with :class:`SlotGenerators` each
batch row draws from its own generator, so a conversation's samples depend only on its seed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch


def _exponential_like(
    probs: torch.Tensor, generators: Sequence[torch.Generator | None] | None
) -> torch.Tensor:
    if generators is None:
        return torch.empty_like(probs).exponential_(1)
    if len(generators) != probs.shape[0]:
        raise ValueError(f"got {len(generators)} generators for a batch of {probs.shape[0]}")
    rows = zip(probs, generators, strict=True)
    return torch.stack([torch.empty_like(row).exponential_(1, generator=gen) for row, gen in rows])


def sample_from_probs(
    probs: torch.Tensor, generators: Sequence[torch.Generator | None] | None = None
) -> torch.Tensor:
    """One draw per row of ``probs [..., N]`` (weights, not necessarily normalised) -> ``[...]``."""
    noise = _exponential_like(probs, generators)
    return (probs / noise).argmax(dim=-1)


def sample_token(
    logits: torch.Tensor,
    use_sampling: bool = False,
    temp: float = 1.0,
    top_k: int = 0,
    top_p: float = 0.0,
    generators: Sequence[torch.Generator | None] | None = None,
) -> torch.Tensor:
    """Sample from ``logits [B, ..., N]``, returning ids ``[B, ...]``; greedy unless sampling with temp > 0.

    ``generators``, when given, holds one generator (or None for torch's global one) per batch row.
    """
    if not (use_sampling and temp > 0.0):
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temp, dim=-1)
    if top_p > 0.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = sorted_probs * (before <= top_p).to(sorted_probs.dtype)
        sorted_probs = sorted_probs / sorted_probs.sum(dim=-1, keepdim=True)
        choice = sample_from_probs(sorted_probs, generators)
        return order.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
    if top_k > 0:
        top_probs, top_ids = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        choice = sample_from_probs(top_probs, generators)
        return top_ids.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
    return sample_from_probs(probs, generators)


class SlotGenerators:
    """One random generator per batch slot, each restartable from its seed.

    A slot without a seed draws from torch's global generator. ``reset(mask)`` restarts the
    generators of the chosen slots from their seeds, which makes a restarted conversation
    reproducible whatever the other slots do.
    """

    def __init__(self, batch_size: int, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.seeds: list[int | None] = [None] * batch_size
        self._generators: list[torch.Generator | None] = [None] * batch_size

    @property
    def batch_size(self) -> int:
        return len(self.seeds)

    def _slot(self, slot: int) -> int:
        if not 0 <= slot < self.batch_size:
            raise IndexError(f"slot {slot} out of range for a batch of {self.batch_size}")
        return slot

    def set_seed(self, slot: int, seed: int | None) -> None:
        """Give ``slot`` its own generator started from ``seed`` (None: torch's global generator)."""
        slot = self._slot(slot)
        self.seeds[slot] = seed
        if seed is None:
            self._generators[slot] = None
        else:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(int(seed))
            self._generators[slot] = generator

    def reset(self, mask: torch.Tensor) -> None:
        """Restart the generators of the slots where ``mask`` (bool ``[B]``) is true."""
        for slot in torch.nonzero(mask.cpu()).flatten().tolist():
            self.set_seed(slot, self.seeds[slot])

    @contextmanager
    def frozen(self, mask: torch.Tensor) -> Iterator[None]:
        """Inside the block, draws made for the slots where ``mask`` is true are undone on exit.

        A paused slot is still sampled with the batch; putting its generator back keeps a
        conversation's samples a function of its own frames and seed only.
        """
        slots = torch.nonzero(mask.cpu()).flatten().tolist()
        saved = [(g, g.get_state()) for g in (self._generators[s] for s in slots) if g is not None]
        try:
            yield
        finally:
            for generator, state in saved:
                generator.set_state(state)

    def generators(self) -> list[torch.Generator | None] | None:
        """Per-row generators for :func:`sample_token`, or None when no slot has a seed."""
        if all(g is None for g in self._generators):
            return None
        return list(self._generators)
