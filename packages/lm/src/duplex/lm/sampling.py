"""Token sampling: temperature, top-k / top-p, greedy; random noise from a counter-based hash or
from torch's global generator.

The draw itself is the exponential race (docs/architecture.md §3.9): with ``E ~ Exp(1)`` i.i.d.,
``argmax(p / E)`` is a sample of the (unnormalised) distribution ``p``. The noise ``E`` comes from
one of two places:

* counter-based (``keys`` given): ``E`` is a pure function of a per-row 64-bit stream key and the
  vocabulary index, computed with integer tensor ops (:func:`counter_exponential`). No
  ``torch.Generator``, no generator state, no host synchronisation: a row's samples depend only on
  its key, which :func:`counter_keys` derives from ``(seed, counter, draw)``. This is what makes
  a sampling step capturable by ``torch.compile(fullgraph=True)`` and CUDA graphs.
* torch's global generator (``keys=None``): one ``exponential_`` call in the same shape and order
  as the reference, so the same ``torch.manual_seed`` gives the reference's tokens. Not capturable.

Nothing here branches on tensor values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

_MASK64 = (1 << 64) - 1


def _int64(value: int) -> int:
    """The signed int64 with the bits of ``value`` modulo 2**64."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GAMMA = _int64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio, SplitMix64's increment
_MIX1 = _int64(0xBF58476D1CE4E5B9)
_MIX2 = _int64(0x94D049BB133111EB)
_UNIFORM_BITS = 23  # (bits + 0.5) / 2**23 is exact in float32 and lies strictly inside (0, 1)


def _shr(x: torch.Tensor, shift: int) -> torch.Tensor:
    """Logical right shift of int64 bits (``>>`` on a negative int64 is arithmetic)."""
    return (x >> shift) & ((1 << (64 - shift)) - 1)


def _mix64(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser: a bijection of 64-bit words (int64 multiplies wrap modulo 2**64)."""
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def seed_to_int64(seed: int) -> int:
    """A Python int seed as the int64 a seed tensor stores (its bits modulo 2**64)."""
    return _int64(int(seed))


def random_seeds(count: int) -> torch.Tensor:
    """``count`` int64 seeds drawn (on the CPU) from torch's global generator."""
    return torch.randint(-(2**63), 2**63 - 1, (count,), dtype=torch.int64)


def counter_keys(seeds: torch.Tensor, counters: torch.Tensor, draws: torch.Tensor | int = 0) -> torch.Tensor:
    """The 64-bit stream key (int64) of each ``(seed, counter, draw)``, broadcast together.

    Distinct triples give unrelated keys (each input goes through a bijective mixer), so one
    seed gives one stream of noise per step (``counter``) and per draw within a step (``draw``).
    """
    seeds = torch.as_tensor(seeds, dtype=torch.int64)
    counters = torch.as_tensor(counters, dtype=torch.int64, device=seeds.device)
    draws = torch.as_tensor(draws, dtype=torch.int64, device=seeds.device)
    key = _mix64(seeds + _GAMMA)
    key = _mix64(key ^ counters)
    return _mix64(key + (draws + 1) * _GAMMA)


def counter_exponential(keys: torch.Tensor, index: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Exp(1) noise (float32) as a pure function of the stream keys and the element indices.

    ``keys`` is ``[B]`` (one stream per batch row, from :func:`counter_keys`). ``index`` is an
    integer tensor ``[B or 1, ...]`` of element indices within a row (e.g. vocabulary ids), or a
    shape ``(B, ...)``, meaning each element's flat position within its row. The result has the
    broadcast shape ``[B, ...]``; element ``i`` of stream ``k`` is the same whatever the other rows,
    the shape or the device (the value of element ``i`` is SplitMix64's output number ``i + 1``
    from state ``k``: 23 high bits ``b``, ``u = (b + 0.5) / 2**23``, ``E = -log(u)``; ``E`` lies in
    ``[6e-8, 16.6]``).
    """
    if not isinstance(index, torch.Tensor):
        shape = tuple(index)
        row = math.prod(shape[1:])
        index = torch.arange(row, dtype=torch.int64, device=keys.device).view(1, *shape[1:])
    index = index.to(torch.int64)
    keys = keys.reshape(keys.shape[0], *([1] * (index.dim() - 1)))
    bits = _shr(_mix64(keys + (index + 1) * _GAMMA), 64 - _UNIFORM_BITS)
    uniform = (bits.to(torch.float32) + 0.5) * (2.0**-_UNIFORM_BITS)
    return -torch.log(uniform)


def sample_from_probs(
    probs: torch.Tensor, keys: torch.Tensor | None = None, index: torch.Tensor | None = None
) -> torch.Tensor:
    """One draw per row of ``probs [B, ..., N]`` (weights, not necessarily normalised) -> ``[B, ...]``.

    ``keys`` None: the noise comes from torch's global generator. Otherwise ``keys [B]`` are counter
    stream keys and ``index`` (default: each element's flat position in its row) names each
    element's noise.
    """
    if keys is None:
        noise = torch.empty_like(probs).exponential_(1)
    else:
        noise = counter_exponential(keys, probs.shape if index is None else index)
    return (probs / noise).argmax(dim=-1)


def _element_index(logits_shape: torch.Size, ids: torch.Tensor) -> torch.Tensor:
    """Flat position within a row of ``logits [B, ..., V]`` of the token ``ids [B, ..., k]``."""
    middle = tuple(logits_shape[1:-1])
    if math.prod(middle) == 1:
        return ids
    offsets = torch.arange(math.prod(middle), dtype=torch.int64, device=ids.device)
    return ids + offsets.view(1, *middle, 1) * logits_shape[-1]


def sample_token(
    logits: torch.Tensor,
    use_sampling: bool = False,
    temp: float = 1.0,
    top_k: int = 0,
    top_p: float = 0.0,
    keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample from ``logits [B, ..., N]``, returning ids ``[B, ...]``; greedy unless sampling with temp > 0.

    ``keys`` (int64 ``[B]``, see :func:`counter_keys`) selects counter-based noise: the token drawn
    for a row then depends only on its key and its logits, and the noise of a token is the same
    whether or not top-k / top-p keep it. Without keys, noise comes from torch's global generator in
    the reference's shape and order. No host synchronisation either way.
    """
    if not (use_sampling and temp > 0.0):
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temp, dim=-1)
    if top_p > 0.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = sorted_probs * (before <= top_p).to(sorted_probs.dtype)
        sorted_probs = sorted_probs / sorted_probs.sum(dim=-1, keepdim=True)
        index = None if keys is None else _element_index(logits.shape, order)
        choice = sample_from_probs(sorted_probs, keys, index)
        return order.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
    if top_k > 0:
        top_probs, top_ids = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        index = None if keys is None else _element_index(logits.shape, top_ids)
        choice = sample_from_probs(top_probs, keys, index)
        return top_ids.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
    return sample_from_probs(probs, keys)
