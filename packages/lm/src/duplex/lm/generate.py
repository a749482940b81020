"""LMGen: one streaming step of Moshi per 80 ms frame, over a batch of independent slots.

::

    gen = LMGen(model, temp=0.8, temp_text=0.7, top_k=250, top_k_text=25)
    with gen.streaming(batch_size=4):
        gen.set_seed(0, 1234)                       # optional: slot 0's samples follow its seed
        for user_frame in frames:                   # user_frame: [B, n_q - dep_q, 1] Mimi codes
            out = gen.step(user_frame)              # None on the first max_delay calls
            if out is not None:
                text, audio = out[:, 0], out[:, 1:] # [B, 1] text token, [B, dep_q, 1] codes for Mimi

Timing (docs/architecture.md §4.2, §4.3): the user frame given at call ``n`` is the model's input
frame ``n - 1`` (the first call's user frame is never seen), and call ``n`` returns Moshi's frame
``n - max_delay``; the streams are re-aligned (un-delayed) before being returned. While a slot's
delays fill, its row holds ``-2``.

Slots (what the serving layer builds on):

* ``gen.reset_streaming(slots)`` (bool mask ``[B]`` or index list; all when omitted) restarts the
  chosen slots: their token cache, their frame counter, the LM's KV caches and positions. Their
  seeds are kept when set with ``set_seed``; slots without one get a fresh seed from torch's
  global generator. The other slots continue untouched.
* ``gen.set_seed(slot, seed)`` fixes a slot's seed (``None``: a fresh seed drawn from torch's
  global generator, so ``torch.manual_seed`` before streaming still makes a run reproducible).
* ``gen.set_exec_mask(mask)`` freezes the slots where ``mask`` is false for the next calls: their
  state does not advance and their output row is ``-2``.

Randomness (``rng``, docs/architecture.md §3.9): by default (``"counter"``) the noise of each draw
is a hash of the slot's seed, its frame offset and the draw (text 0, codebook ``k``: ``1 + k``), see
:mod:`duplex.lm.sampling`. So a slot's samples depend only on its seed, its frames and its inputs
(a paused slot's offset does not move, so nothing needs undoing), and a step holds no
``torch.Generator``. ``rng="global"`` draws from torch's global generator in the reference's
shape and order instead (same ``torch.manual_seed``, same tokens as the reference); that mode
has no per-slot seeds and is not graph-capturable.

Graph readiness: in the steady state ``step`` reads no tensor value on the host (no ``.item()``,
no branch on a tensor), so ``torch.compile(gen.step, fullgraph=True)`` captures it whole, and on
a CUDA device the steady-state step is replayed from a CUDA graph (``cuda_graph``,
:class:`~duplex.codec.graphs.StepGraph`). It checks the user codes' dtype and shape only;
their values are checked by :meth:`LMGen.check_user_codes`, which callers with codes from outside
(files, the network) should call; codes from Mimi need no check.

``use_sampling=False`` (or a temperature of 0) is greedy decoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from duplex.codec.graphs import StepGraph
from duplex.codec.streaming import StreamingModule, StreamingState
from duplex.lm.config import GenerationConfig
from duplex.lm.model import UNGENERATED_TOKEN, LMModel
from duplex.lm.sampling import counter_keys, random_seeds, sample_token, seed_to_int64


@dataclass
class LMGenState(StreamingState):
    """``cache [B, 1 + n_q, max_delay + 2]``: a ring of recent token columns in delayed time;
    ``offsets [B]``: frames generated per slot (also the counter of the counter-based noise);
    ``seeds [B]`` (int64) and ``seeded [B]`` (bool: set by ``set_seed``, kept by a reset): the
    slots' seeds, drawn from torch's global generator where not set (``counter_rng``); ``calls``:
    steps since the last full reset."""

    initial: torch.Tensor  # [1, 1 + n_q, 1] start-of-sequence tokens
    delays: torch.Tensor  # [1 + n_q]
    width: int
    counter_rng: bool = True
    cache: torch.Tensor = field(init=False)
    offsets: torch.Tensor = field(init=False)
    seeds: torch.Tensor = field(init=False)
    seeded: torch.Tensor = field(init=False)
    calls: int = 0
    graph: StepGraph | None = None  # the steady-state step, replayed from a CUDA graph

    @property
    def num_codebooks(self) -> int:
        return self.initial.shape[1]

    def __post_init__(self) -> None:
        super().__post_init__()
        self.cache = torch.full(
            (self.batch_size, self.num_codebooks, self.width),
            UNGENERATED_TOKEN,
            dtype=torch.long,
            device=self.device,
        )
        self.offsets = torch.zeros(self.batch_size, dtype=torch.long, device=self.device)
        self.seeds = torch.zeros(self.batch_size, dtype=torch.long, device=self.device)
        self.seeded = torch.zeros(self.batch_size, dtype=torch.bool, device=self.device)
        if self.counter_rng:
            self.seeds.copy_(random_seeds(self.batch_size))

    def reset(self, slots: torch.Tensor) -> None:
        self.cache.masked_fill_(slots[:, None, None], UNGENERATED_TOKEN)
        self.offsets.masked_fill_(slots, 0)
        if self.counter_rng:  # new seeds for the restarted slots without a seed of their own
            fresh = random_seeds(self.batch_size).to(self.device)
            self.seeds.copy_(torch.where(slots & ~self.seeded, fresh, self.seeds))
        if bool(slots.all()):
            self.calls = 0


class LMGen(StreamingModule[LMGenState]):
    def __init__(
        self,
        model: LMModel,
        use_sampling: bool = True,
        temp: float = 0.8,
        temp_text: float = 0.7,
        top_k: int = 250,
        top_k_text: int = 25,
        cfg_coef: float = 1.0,
        rng: Literal["counter", "global"] = "counter",
        cuda_graph: bool | None = None,
    ) -> None:
        """``rng``: ``"counter"`` (per-slot seeds, graph-capturable) or ``"global"`` (torch's global
        generator in the reference's order); see the module docstring. ``cuda_graph``: replay the
        steady-state step from a CUDA graph (default: on a CUDA device with ``rng="counter"``)."""
        super().__init__()
        if model.training:
            raise RuntimeError("LMGen needs the model in eval mode: call model.eval() first")
        if cfg_coef != 1.0:
            raise ValueError(
                f"cfg_coef={cfg_coef}: classifier-free guidance needs a conditioned model (unsupported)"
            )
        if temp < 0 or temp_text < 0:
            raise ValueError(f"temperatures must be >= 0, got temp={temp}, temp_text={temp_text}")
        if top_k < 0 or top_k_text < 0:
            raise ValueError(f"top_k values must be >= 0, got top_k={top_k}, top_k_text={top_k_text}")
        if rng not in ("counter", "global"):
            raise ValueError(f"rng must be 'counter' or 'global', got {rng!r}")
        self.model = model
        self.use_sampling = use_sampling
        self.temp = temp
        self.temp_text = temp_text
        self.top_k = top_k
        self.top_k_text = top_k_text
        self.cfg_coef = cfg_coef
        self.rng = rng
        if cuda_graph and rng != "counter":
            raise ValueError("cuda_graph needs rng='counter' (torch's global generator is not replayable)")
        self.cuda_graph = cuda_graph
        config = model.config
        self.max_delay = config.max_delay
        self.num_user_codebooks = config.num_user_codebooks

    @classmethod
    def from_config(cls, model: LMModel, config: GenerationConfig | None = None, **overrides) -> LMGen:
        """An LMGen with a checkpoint's ``lm_gen_config`` defaults (and explicit overrides)."""
        config = model.config.lm_gen_config if config is None else config
        kwargs = config.model_dump(
            include={"use_sampling", "temp", "temp_text", "top_k", "top_k_text", "cfg_coef"}
        )
        return cls(model, **{**kwargs, **overrides})

    # -- streaming lifecycle --------------------------------------------------------------------
    def _init_streaming_state(self, batch_size: int) -> LMGenState:
        device = self.model.device
        graphed = self.cuda_graph if self.cuda_graph is not None else device.type == "cuda"
        return LMGenState(
            batch_size,
            device,
            initial=self.model.initial_tokens(1),
            delays=torch.tensor(self.model.delays, dtype=torch.long, device=device),
            width=self.max_delay + 2,
            counter_rng=self.rng == "counter",
            graph=StepGraph(self._advance) if graphed and self.rng == "counter" else None,
        )

    def _start_streaming(self, batch_size: int) -> None:
        super()._start_streaming(batch_size)
        if self.model.depformer is not None:
            self.model.depformer._start_streaming(batch_size)

    def _stop_streaming(self) -> None:
        if self.model.depformer is not None and self.model.depformer.is_streaming:
            self.model.depformer._stop_streaming()
        super()._stop_streaming()

    def set_seed(self, slot: int, seed: int | None) -> None:
        """Fix ``slot``'s seed (any int, taken modulo 2**64); its samples then depend only on the seed,
        its frames and its inputs. ``None``: a fresh seed from torch's global generator, renewed at
        each reset of the slot. Takes effect at once (call it before ``reset_streaming`` to restart a
        slot with a new seed). With ``rng="global"`` only ``None`` is accepted."""
        state = self.streaming_state
        if not 0 <= slot < state.batch_size:
            raise IndexError(f"slot {slot} out of range for a batch of {state.batch_size}")
        if not state.counter_rng:
            if seed is not None:
                raise ValueError(
                    "rng='global' draws every slot from torch's global generator: per-slot seeds need "
                    "rng='counter'"
                )
            return
        value = int(random_seeds(1)[0]) if seed is None else seed_to_int64(seed)
        state.seeds[slot] = value
        state.seeded[slot] = seed is not None

    # -- one frame ------------------------------------------------------------------------------
    def _check_user_codes(self, user_codes: torch.Tensor, batch_size: int) -> None:
        """Dtype and shape only (metadata: no host synchronisation)."""
        if user_codes.dtype.is_floating_point or user_codes.dtype == torch.bool:
            raise TypeError(f"user codes must be integer token ids, got dtype {user_codes.dtype}")
        expected = [batch_size, self.num_user_codebooks, 1]
        if list(user_codes.shape) != expected:
            raise ValueError(
                f"user codes must have shape [B={batch_size}, n_q - dep_q={self.num_user_codebooks}, 1] "
                f"(one frame of the user's codebooks), got {list(user_codes.shape)}"
            )

    def check_user_codes(self, user_codes: torch.Tensor) -> None:
        """Raise unless ``user_codes [B, n_q - dep_q, T]`` are integer ids in ``[0, card)`` (or -1).

        ``step`` does not look at the values (that would synchronise with the device on every
        frame): call this where codes come from outside, before stepping them. It reads the values
        on the host.
        """
        if user_codes.dtype.is_floating_point or user_codes.dtype == torch.bool:
            raise TypeError(f"user codes must be integer token ids, got dtype {user_codes.dtype}")
        if user_codes.dim() != 3 or user_codes.shape[1] != self.num_user_codebooks:
            raise ValueError(
                f"user codes must have shape [B, n_q - dep_q={self.num_user_codebooks}, T], "
                f"got {list(user_codes.shape)}"
            )
        if user_codes.numel():
            low, high = int(user_codes.min()), int(user_codes.max())
            card = self.model.config.card
            if low < -1 or high >= card:
                raise ValueError(
                    f"user codes must lie in [0, {card}) (or -1 for none), got values in [{low}, {high}]"
                )

    @torch.no_grad()
    def step(self, user_codes: torch.Tensor) -> torch.Tensor | None:
        """Advance every executing slot by one frame; see the module docstring for the timing."""
        state = self.streaming_state
        self._check_user_codes(user_codes, state.batch_size)
        user_codes = user_codes.to(state.cache.device)
        steady = state.calls > self.max_delay  # past the delays: the same kernels on every call
        out = state.graph(user_codes) if steady and state.graph is not None else self._advance(user_codes)
        if state.calls <= self.max_delay:  # counts up to the delay only: a constant in steady state
            state.calls += 1
        return out if state.calls > self.max_delay else None

    def _advance(self, user_codes: torch.Tensor) -> torch.Tensor:
        """The tensor work of one step: every executing slot advances by one frame; returns the
        un-delayed frame ``[B, 1 + dep_q, 1]`` (``-2`` where not ready)."""
        state = self.streaming_state
        model = self.model
        cache, width = state.cache, state.width
        executing = state.exec_mask

        # Store the user's frame at its delayed position.
        first_user = model.dep_q + 1
        user_columns = (state.offsets[:, None] + state.delays[None, first_user:]) % width  # [B, Ku]
        rows = cache[:, first_user:]
        kept = rows.gather(2, user_columns[..., None])
        new = torch.where(executing[:, None, None], user_codes, kept)
        rows.scatter_(2, user_columns[..., None], new)

        # This frame's input column; streams still inside their delay read the initial token.
        column = (state.offsets % width)[:, None, None].expand(-1, model.num_codebooks, 1)
        tokens = cache.gather(2, column)
        use_initial = state.offsets[:, None, None] <= state.delays[None, :, None]
        use_initial = use_initial | ~executing[:, None, None]
        tokens = torch.where(use_initial, state.initial, tokens)

        # One noise stream per slot and draw (text: 0, codebook k: 1 + k), keyed by the frame offset.
        keys = None
        if state.counter_rng and self.use_sampling:
            draws = torch.arange(1 + model.dep_q, dtype=torch.long, device=cache.device)
            keys = counter_keys(state.seeds[:, None], state.offsets[:, None], draws[None, :])  # [B, D]

        hidden, text_logits = model.forward_text(tokens)
        text = sample_token(
            text_logits.float(),
            self.use_sampling,
            self.temp_text,
            self.top_k_text,
            keys=None if keys is None else keys[:, 0],
        )[:, 0, 0]
        audio = self._depformer_step(text, hidden, keys) if model.depformer is not None else None

        # Write the generated frame at the new offset (in place: the state's tensors keep their storage).
        state.offsets.add_(executing.long())
        generated = text[:, None] if audio is None else torch.cat([text[:, None], audio], dim=1)
        gen_rows = cache[:, : 1 + model.dep_q]
        column = (state.offsets % width)[:, None, None].expand(-1, gen_rows.shape[1], 1)
        kept = gen_rows.gather(2, column)
        gen_rows.scatter_(2, column, torch.where(executing[:, None, None], generated[..., None], kept))

        read = (state.offsets[:, None] - self.max_delay + state.delays[None, : 1 + model.dep_q]) % width
        out = cache[:, : 1 + model.dep_q].gather(2, read[..., None])
        not_ready = (state.offsets <= self.max_delay) | ~executing
        return out.masked_fill(not_ready[:, None, None], UNGENERATED_TOKEN)

    def _depformer_step(
        self, text: torch.Tensor, hidden: torch.Tensor, keys: torch.Tensor | None
    ) -> torch.Tensor:
        """Sample Moshi's ``dep_q`` codebooks of this frame, one depformer position each."""
        model = self.model
        depformer = model.depformer
        depformer.reset_streaming()  # every frame starts a new depformer sequence
        token = text
        tokens = []
        for k in range(model.dep_q):
            x = model.depformer_input(k, token[:, None], hidden)
            out = depformer(x)
            logits = model.depformer_logits(k, out)[:, None]  # [B, 1, 1, card]
            token = sample_token(
                logits.float(),
                self.use_sampling,
                self.temp,
                self.top_k,
                keys=None if keys is None else keys[:, 1 + k],
            )
            token = token[:, 0, 0]
            tokens.append(token)
        return torch.stack(tokens, dim=1)
