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

Conditioned models (TTS, Hibiki; docs/architecture.md §5.5) take ``conditions``: one mapping of
attributes for every slot, or one list with a mapping per slot; ``set_conditions(slot, ...)``
swaps a slot's own (a voice, a description) at once. ``cfg_coef != 1`` is classifier-free
guidance by batch doubling: the model runs each slot twice, with its conditions and with
``cfg_null`` (default: every condition dropped), and the logits become
``null + cfg_coef * (cond - null)``; ``cfg_is_no_text`` hides the text stream from the null half
and takes the text logits from the conditioned half alone (docs/architecture.md §5.6).

Extra heads (the STT models' pause prediction): :meth:`LMGen.step_with_extra_heads` also returns
their probabilities. Host hooks (the TTS state machine, docs/architecture.md §5.3): ``on_text``
maps the sampled text tokens ``[B]`` to the ones fed back, before the depformer sees them;
``on_audio`` maps the generated audio tokens ``[B, dep_q]`` before they are stored; a step's
``depformer_tokens [B, dep_q, 1]`` replace the depformer altogether. A step with hooks is not
recorded in a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from duplex.codec.graphs import StepGraph
from duplex.codec.streaming import StreamingModule, StreamingState, select_slots
from duplex.lm.conditioners import Attributes, dropped_attributes
from duplex.lm.config import GenerationConfig
from duplex.lm.embedding import ZERO_TOKEN
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
    condition_sum: torch.Tensor | None = None  # [halves * B, 1, dim]: summed conditions, per model row

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
        conditions: Attributes | Sequence[Attributes] | None = None,
        cfg_null: Attributes | None = None,
        cfg_is_no_text: bool = False,
        on_text: Callable[[torch.Tensor], torch.Tensor] | None = None,
        on_audio: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """``rng``: ``"counter"`` (per-slot seeds, graph-capturable) or ``"global"`` (torch's global
        generator in the reference's order); see the module docstring. ``cuda_graph``: replay the
        steady-state step from a CUDA graph (default: on a CUDA device with ``rng="counter"`` and
        no hooks). ``conditions``, ``cfg_*``, ``on_text``, ``on_audio``: see the module docstring."""
        super().__init__()
        if model.training:
            raise RuntimeError("LMGen needs the model in eval mode: call model.eval() first")
        if cfg_coef <= 0:
            raise ValueError(f"cfg_coef must be > 0, got {cfg_coef}")
        if cfg_coef != 1.0 and not model.is_conditioned:
            raise ValueError(
                f"cfg_coef={cfg_coef}: classifier-free guidance needs a conditioned model; this one has "
                "no conditioners"
            )
        if model.is_conditioned and conditions is None:
            names = sorted(model.condition_provider.conditioners)
            raise ValueError(f"this model is conditioned: pass conditions= (attributes among {names})")
        if not model.is_conditioned and conditions:
            raise ValueError("conditions= given, but this model takes no conditions")
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
        if cuda_graph and (on_text is not None or on_audio is not None):
            raise ValueError("cuda_graph cannot replay a step with host hooks (on_text, on_audio)")
        self.cuda_graph = cuda_graph
        self.halves = 2 if cfg_coef != 1.0 else 1  # model rows per slot
        self.cfg_null = cfg_null
        self.cfg_is_no_text = cfg_is_no_text
        self.on_text = on_text
        self.on_audio = on_audio
        self._conditions = conditions
        self._slot_attributes: list[Attributes] = []
        # The model streams with ``halves`` rows per slot, so LMGen drives its streaming itself.
        model.streaming_detached = True
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
        graphed = graphed and self.on_text is None and self.on_audio is None
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
        rows = batch_size * self.halves
        try:
            self.model._start_streaming(rows)
            if self.model.depformer is not None:
                self.model.depformer._start_streaming(rows)
            if self.model.is_conditioned:
                self._slot_attributes = self._attributes_per_slot(self._conditions, batch_size)
                self._apply_conditions(torch.ones(batch_size, dtype=torch.bool))
        except BaseException:
            self._stop_streaming()
            raise

    def _stop_streaming(self) -> None:
        for module in (self.model.depformer, self.model):
            if module is not None and module.is_streaming:
                module._stop_streaming()
        super()._stop_streaming()

    def reset_streaming(self, slots: torch.Tensor | None = None) -> None:
        super().reset_streaming(slots)
        mask = select_slots(slots, self.streaming_state.batch_size, self.streaming_state.device)
        self.model.reset_streaming(mask.repeat(self.halves))

    def set_exec_mask(self, exec_mask: torch.Tensor) -> None:
        super().set_exec_mask(exec_mask)
        mask = self.streaming_state.exec_mask.repeat(self.halves)
        self.model.set_exec_mask(mask)
        if self.model.depformer is not None:
            self.model.depformer.set_exec_mask(mask)

    # -- conditions -----------------------------------------------------------------------------
    @staticmethod
    def _attributes_per_slot(
        conditions: Attributes | Sequence[Attributes], batch_size: int
    ) -> list[Attributes]:
        if isinstance(conditions, dict) or not isinstance(conditions, Sequence):
            return [conditions] * batch_size
        if len(conditions) != batch_size:
            raise ValueError(f"conditions: got {len(conditions)} mappings for a batch of {batch_size} slots")
        return list(conditions)

    def set_conditions(self, slot: int, attributes: Attributes) -> None:
        """Give ``slot`` its own conditions (a voice, a description); they take effect at its next
        step and stay across resets until replaced."""
        state = self.streaming_state
        if not self.model.is_conditioned:
            raise ValueError("this model takes no conditions")
        if not 0 <= slot < state.batch_size:
            raise IndexError(f"slot {slot} out of range for a batch of {state.batch_size}")
        self._slot_attributes[slot] = attributes
        chosen = torch.zeros(state.batch_size, dtype=torch.bool)
        chosen[slot] = True
        self._apply_conditions(chosen)

    @torch.no_grad()
    def _apply_conditions(self, chosen: torch.Tensor) -> None:
        """Fuse the conditions of every slot (the conditioned rows, then the null rows with CFG) and
        write those of the ``chosen`` slots into the state, in place."""
        state = self.streaming_state
        attributes = list(self._slot_attributes)
        if self.halves == 2:
            attributes += [
                self.cfg_null if self.cfg_null is not None else dropped_attributes(a) for a in attributes
            ]
        conditioning = self.model.conditioning(attributes)
        rows = chosen.to(state.device).repeat(self.halves)
        if conditioning.sum is not None:
            if state.condition_sum is None:
                state.condition_sum = conditioning.sum.clone()
            else:
                state.condition_sum.copy_(
                    torch.where(rows[:, None, None], conditioning.sum, state.condition_sum)
                )
        if conditioning.cross is not None:
            self.model.transformer.set_cross_source(conditioning.cross, rows)

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
    def step(
        self, user_codes: torch.Tensor, depformer_tokens: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """Advance every executing slot by one frame; see the module docstring for the timing.
        ``depformer_tokens [B, dep_q, 1]``: this frame's audio tokens, instead of running the
        depformer."""
        out = self.step_with_extra_heads(user_codes, depformer_tokens)
        return None if out is None else out[0]

    @torch.no_grad()
    def step_with_extra_heads(
        self, user_codes: torch.Tensor, depformer_tokens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """:meth:`step`, and the extra heads' probabilities of this step ``[B, heads, extra_heads_dim]``
        (computed from the frame the model just read, so with the step's own timing)."""
        state = self.streaming_state
        self._check_user_codes(user_codes, state.batch_size)
        user_codes = user_codes.to(state.cache.device)
        if depformer_tokens is not None:
            expected = [state.batch_size, self.model.dep_q, 1]
            if list(depformer_tokens.shape) != expected:
                raise ValueError(
                    f"depformer_tokens must have shape {expected}, got {list(depformer_tokens.shape)}"
                )
            depformer_tokens = depformer_tokens.to(state.cache.device)
        steady = state.calls > self.max_delay  # past the delays: the same kernels on every call
        if steady and state.graph is not None and depformer_tokens is None:
            out = state.graph(user_codes)
        else:
            out = self._advance(user_codes, depformer_tokens)
        if state.calls <= self.max_delay:  # counts up to the delay only: a constant in steady state
            state.calls += 1
        return out if state.calls > self.max_delay else None

    def _advance(
        self, user_codes: torch.Tensor, depformer_tokens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The tensor work of one step: every executing slot advances by one frame; returns the
        un-delayed frame ``[B, 1 + dep_q, 1]`` (``-2`` where not ready) and the extra heads'
        probabilities ``[B, heads, extra_heads_dim]``."""
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

        model_tokens = tokens
        if self.halves == 2:
            null_tokens = tokens
            if self.cfg_is_no_text:  # the null half sees no text once past the initial token
                text_in = torch.where(use_initial[:, :1], tokens[:, :1], ZERO_TOKEN)
                null_tokens = torch.cat([text_in, tokens[:, 1:]], dim=1)
            model_tokens = torch.cat([tokens, null_tokens], dim=0)
        hidden, text_logits = model.forward_text(model_tokens, state.condition_sum)
        if self.halves == 2:
            cond, null = text_logits.chunk(2)
            text_logits = cond if self.cfg_is_no_text else null + (cond - null) * self.cfg_coef
        text = sample_token(
            text_logits.float(),
            self.use_sampling,
            self.temp_text,
            self.top_k_text,
            keys=None if keys is None else keys[:, 0],
        )[:, 0, 0]
        if self.on_text is not None:
            text = self.on_text(text)
        audio = None
        if depformer_tokens is not None:
            audio = depformer_tokens[:, :, 0]
        elif model.depformer is not None:
            audio = self._depformer_step(text, hidden, keys)
        if audio is not None and self.on_audio is not None:
            audio = self.on_audio(audio)
        extra = model.extra_head_probs(hidden[: state.batch_size])[:, 0]

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
        return out.masked_fill(not_ready[:, None, None], UNGENERATED_TOKEN), extra

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
            token_in = token if self.halves == 1 else token.repeat(self.halves)
            x = model.depformer_input(k, token_in[:, None], hidden)
            out = depformer(x)
            logits = model.depformer_logits(k, out)[:, None]  # [B, 1, 1, card]
            if self.halves == 2:
                cond, null = logits.chunk(2)
                logits = null + (cond - null) * self.cfg_coef
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
