"""LMModel: Moshi's language model over one text stream and ``n_q`` audio streams.

Per frame the temporal transformer (a registered backbone, Helium by default) reads the sum of
the embeddings of all streams and predicts the text token; the depth transformer then predicts
Moshi's ``dep_q`` audio codebooks one after the other (docs/architecture.md §3.4, §3.5). Parameters
carry the official on-disk names, so ``model.state_dict()`` and a checkpoint's safetensors match key
for key.

``model(codes [B, 1 + n_q, T])`` is the training (teacher-forcing) forward. ``codes`` are in
un-delayed time; the returned logits are aligned with them (docs/architecture.md §3.6)::

    out = model(codes)
    out.logits       [B, dep_q, T, card]       predicts codes[:, 1:1 + dep_q]
    out.mask         [B, dep_q, T]             false where a delay leaves no context, or code == -1
    out.text_logits  [B, 1, T, text_card_out]  predicts codes[:, :1]
    out.text_mask    [B, 1, T]
    out.hidden       [B, T, dim]               the temporal state of each (delayed) step

Generation goes through :class:`duplex.lm.generate.LMGen`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from duplex.codec.kernels import Numerics, NumericsPolicy
from duplex.codec.kernels.weight_formats import QuantizationError, WeightFormat
from duplex.codec.nn import Linear, make_norm
from duplex.codec.nn.low_precision import quantize_weights, set_activation_dtype
from duplex.codec.streaming import StreamingModule, StreamingState
from duplex.lm.conditioners import Attributes, Conditioning, ConditionProvider, Fuser
from duplex.lm.config import LMConfig, LowPrecisionConfig
from duplex.lm.depformer import Depformer
from duplex.lm.embedding import ZERO_TOKEN, StreamEmbedding
from duplex.lm.weights import load_lm_weights, save_lm
from torch import nn

UNGENERATED_TOKEN = -2


@dataclass
class LMOutput:
    logits: torch.Tensor
    mask: torch.Tensor
    text_logits: torch.Tensor
    text_mask: torch.Tensor
    hidden: torch.Tensor


def delay_codes(codes: torch.Tensor, delays: list[int], fill: torch.Tensor) -> torch.Tensor:
    """Shift stream ``k`` of ``codes [B, K, T]`` right by ``delays[k]``, filling with ``fill [B, K, 1]``."""
    length = codes.shape[-1]
    streams = []
    for k, delay in enumerate(delays):
        head = fill[:, k].expand(-1, min(delay, length))
        streams.append(torch.cat([head, codes[:, k, : max(length - delay, 0)]], dim=-1))
    return torch.stack(streams, dim=1)


def undelay_logits(logits: torch.Tensor, delays: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift stream ``k`` of ``logits [B, K, T, N]`` left by ``delays[k]``; the uncovered tail is NaN.

    Returns the shifted logits and the mask ``[B, K, T]`` of positions that have a prediction.
    """
    batch, _, length, _ = logits.shape
    mask = torch.ones(batch, len(delays), length, dtype=torch.bool, device=logits.device)
    if not any(delays):
        return logits, mask
    streams = []
    for k, delay in enumerate(delays):
        delay = min(delay, length)
        tail = logits.new_full((batch, delay, logits.shape[-1]), float("nan"))
        streams.append(torch.cat([logits[:, k, delay:], tail], dim=1))
        mask[:, k, length - delay :] = False
    return torch.stack(streams, dim=1), mask


@torch.no_grad()
def _truncated_normal_init(module: nn.Module) -> None:
    """Weights ~ N(0, 1/fan_in) cut at +-3 std (by inverse CDF, much faster than torch's sampler)."""
    if not isinstance(module, nn.Embedding | nn.Linear):
        return
    fan_in = module.embedding_dim if isinstance(module, nn.Embedding) else module.in_features
    std = 1 / math.sqrt(fan_in)
    edge = math.erf(3 / math.sqrt(2))  # the CDF mass within 3 std, mapped to [-1, 1]
    weight = module.weight
    work = (
        weight
        if weight.dtype in (torch.float32, torch.float64)
        else torch.empty_like(weight, dtype=torch.float32)
    )
    work.uniform_(-edge, edge).erfinv_().mul_(std * math.sqrt(2)).clamp_(-3 * std, 3 * std)
    if work is not weight:
        weight.copy_(work)
    if getattr(module, "bias", None) is not None:
        module.bias.zero_()


class LMModel(StreamingModule[StreamingState], NumericsPolicy):
    """The Moshi LM. ``config`` is an :class:`LMConfig`; weights are random until loaded.

    ``numerics``: ``"reference"`` runs the reference's torch ops in its order (its logits, bit for
    bit); ``"fast"`` (the default) the fastest registered kernels for the device (on the CPU the
    whole streaming step of each transformer in one C call), within float rounding of it.
    """

    def __init__(self, config: LMConfig, numerics: Numerics = "fast") -> None:
        super().__init__()
        self.numerics = numerics
        self.config = config
        dim = config.dim
        self.emb = nn.ModuleList(
            [StreamEmbedding(config.card + 1, dim, norm=config.norm_emb) for _ in range(config.n_q)]
        )
        self.text_emb = StreamEmbedding(
            config.text_card + 1,
            dim,
            norm=config.norm_emb,
            demux_second_stream=config.demux_second_text_stream,
        )
        self.transformer = config.build_backbone("backbone")
        self.out_norm = make_norm(config.norm, dim)
        self.text_linear = Linear(dim, config.text_out_card, bias=config.bias_proj)

        depformer_config = config.depformer_transformer_config()
        self.depformer: Depformer | None = None
        dep_dim = config.depformer_dim
        # Present even without a depformer (dep_q = 0, the STT models): the official files hold it.
        self.depformer_in = nn.ModuleList(
            [Linear(dim, dep_dim, bias=False) for _ in range(config.num_depformer_inputs)]
        )
        if depformer_config is not None:
            low_rank = config.depformer_low_rank_embeddings
            self.depformer_emb = nn.ModuleList(
                [
                    StreamEmbedding(config.card + 1, dep_dim, low_rank=low_rank, norm=config.norm_emb)
                    for _ in range(config.dep_q - 1)
                ]
            )
            self.depformer_text_emb = StreamEmbedding(
                config.text_card + 1,
                dep_dim,
                low_rank=low_rank,
                norm=config.norm_emb,
                demux_second_stream=config.demux_second_text_stream,
            )
            self.depformer = config.build_backbone("depformer")
            self.depformer_norms = nn.ModuleList(
                [
                    nn.Identity()
                    if config.depformer_norm is None
                    else make_norm(config.depformer_norm, dep_dim)
                    for _ in range(config.dep_q)
                ]
            )
            self.linears = nn.ModuleList(
                [Linear(dep_dim, config.card, bias=config.bias_proj) for _ in range(config.dep_q)]
            )
        self.extra_heads = nn.ModuleList(
            [Linear(dim, config.extra_heads_dim, bias=False) for _ in range(config.extra_heads_num_heads)]
        )
        self.condition_provider: ConditionProvider | None = None
        self.fuser: Fuser | None = None
        if config.fuser is not None:
            self.condition_provider = ConditionProvider(config.conditioners or {}, dim)
            self.fuser = Fuser(config.fuser)
        self.init_weights()
        if config.low_precision is not None:  # a quantized checkpoint: its layout, to load into
            self._store_weights(config.low_precision)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        config: LMConfig | str | Path | None = None,
        fuse_lora: bool = True,
        numerics: Numerics = "fast",
        quantize: WeightFormat | LowPrecisionConfig | None = None,
    ) -> LMModel:
        """Load a checkpoint: a directory (``config.json`` + the weights it names), a weights file
        with ``config``, or a Hugging Face repo id (resolved by
        :func:`duplex.codec.checkpoint.locate_checkpoint`). See :mod:`duplex.lm.checkpoint`.
        ``numerics``: see the class docstring; ``quantize``: see :meth:`quantize` (done as the
        weights are read, so the float model is never whole in memory)."""
        return load_lm_weights(cls, source, config, device, dtype, fuse_lora, numerics, quantize=quantize)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` in the official layout."""
        save_lm(self, directory)

    def quantize(
        self, format: WeightFormat, group_size: int | None = None, keep: Sequence[str] = ()
    ) -> LMModel:
        """Store the matmul weights in ``format`` (in place; returns the model) (docs/nn-api.md).

        ``"bf16"`` keeps them in bfloat16; ``"int8"`` quantizes them weight-only, with one float32
        scale per output channel, or per ``group_size`` input columns. Embeddings, norms and the
        activations keep the model's dtype; weights whose qualified names start with one of
        ``keep`` (e.g. ``"text_linear"``, ``"linears"``) too. :meth:`save_pretrained` then writes the
        quantized layout, which loads without the float weights."""
        if self.is_streaming:
            raise RuntimeError("cannot quantize while streaming; leave the streaming block first")
        if self.config.low_precision is not None:
            raise QuantizationError(
                f"the model is already stored in {self.config.low_precision.format}: load its float "
                "checkpoint to quantize it again"
            )
        settings = LowPrecisionConfig(format=format, group_size=group_size, keep=list(keep))
        self._store_weights(settings)
        self.config = self.config.model_copy(update={"low_precision": settings})
        return self

    def _store_weights(self, settings: LowPrecisionConfig) -> None:
        quantize_weights(self, settings.format, settings.group_size, keep=settings.keeps)

    def init_weights(self) -> None:
        """Truncated normal (std ``1/sqrt(fan_in)``, cut at 3 std) for embeddings, text head,
        temporal layers and audio heads, as the official models were trained; the rest keeps
        torch's default initialisation."""
        if next(self.parameters()).device.type == "meta":
            return
        for module in [*self.emb, self.text_emb, self.text_linear]:
            _truncated_normal_init(module)
        self.transformer.apply(_truncated_normal_init)
        if self.depformer is not None:
            for module in [*self.depformer_emb, self.depformer_text_emb, *self.linears]:
                _truncated_normal_init(module)

    def _init_streaming_state(self, batch_size: int) -> StreamingState:
        self.select_kernels()
        if self.config.low_precision is not None:  # before the layers size their KV caches
            set_activation_dtype(self, self.dtype)
        return StreamingState(batch_size, self.device)

    # -- properties -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.text_emb.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.text_emb.weight.dtype

    @property
    def num_codebooks(self) -> int:
        return self.config.num_codebooks

    @property
    def dep_q(self) -> int:
        return self.config.dep_q

    @property
    def delays(self) -> list[int]:
        return list(self.config.delays)

    def initial_tokens(self, batch_size: int = 1) -> torch.Tensor:
        """The start-of-sequence column ``[B, 1 + n_q, 1]``: ``text_card`` for text, ``card`` for audio."""
        tokens = torch.full((batch_size, self.num_codebooks, 1), self.config.card, dtype=torch.long)
        tokens[:, 0] = self.config.text_card
        return tokens.to(self.device)

    def check_tokens(self, tokens: torch.Tensor, what: str = "codes") -> None:
        """Fail with a clear message when ``tokens [B, 1 + n_q, T]`` holds ids outside the tables."""
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise TypeError(f"{what} must be integer token ids, got dtype {tokens.dtype}")
        if tokens.dim() != 3 or tokens.shape[1] != self.num_codebooks:
            raise ValueError(
                f"{what} must have shape [B, {self.num_codebooks}, T] (text + n_q={self.config.n_q} audio "
                f"streams), got {list(tokens.shape)}"
            )
        for stream, name, top in (
            (slice(0, 1), "text", self.config.text_card),
            (slice(1, None), "audio", self.config.card),
        ):
            part = tokens[:, stream]
            if part.numel() == 0:
                continue
            low, high = int(part.min()), int(part.max())
            if low < UNGENERATED_TOKEN or high > top:
                raise ValueError(
                    f"{what}: {name} token ids must lie in [{UNGENERATED_TOKEN}, {top}] "
                    f"(-1 = zero token, {top} = initial token), got values in [{low}, {high}]"
                )

    # -- conditioning ---------------------------------------------------------------------------
    @property
    def is_conditioned(self) -> bool:
        return self.fuser is not None

    def conditioning(self, attributes: Sequence[Attributes]) -> Conditioning:
        """The fused conditions of a batch, one mapping of attributes per item (docs/architecture.md
        §5.5); in the model's dtype."""
        if self.condition_provider is None or self.fuser is None:
            raise ValueError("this model takes no conditions (its config has no fuser)")
        fused = self.fuser(self.condition_provider(attributes))
        return Conditioning(
            None if fused.sum is None else fused.sum.to(self.dtype),
            None if fused.cross is None else fused.cross.to(self.dtype),
        )

    def extra_head_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden [B, S, dim]`` (after ``out_norm``) -> the extra heads' class probabilities
        ``[B, S, heads, extra_heads_dim]`` (the STT models' pause prediction, docs/architecture.md §5.2)."""
        if not len(self.extra_heads):
            return hidden.new_zeros(*hidden.shape[:2], 0, self.config.extra_heads_dim)
        return torch.stack([torch.softmax(head(hidden), dim=-1) for head in self.extra_heads], dim=2)

    # -- forward passes -------------------------------------------------------------------------
    def embed(self, sequence: torch.Tensor) -> torch.Tensor:
        """Sum of the stream embeddings of ``sequence [B, 1 + n_q, S]`` -> ``[B, S, dim]``.

        Audio streams are added in order, then text (the order matters for bf16 rounding)."""
        total = None
        for k, table in enumerate(self.emb):
            emb = table(sequence[:, k + 1])
            total = emb if total is None else total + emb
        text = self.text_emb(sequence[:, 0])
        return text if total is None else total + text

    def forward_text(
        self,
        sequence: torch.Tensor,
        condition_sum: torch.Tensor | None = None,
        cross_source: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Temporal pass over (delayed) ``sequence [B, 1 + n_q, S]``; ``condition_sum [B, 1, dim]`` is
        added to every step's input, ``cross_source [B, S', dim]`` is what cross-attention attends to
        (in streaming it is set once, see ``StreamingTransformer.set_cross_source``).

        Returns the normalised hidden state ``[B, S, dim]`` (the depformer's input) and the text
        logits ``[B, 1, S, text_card_out]``."""
        if not self.is_streaming:
            self.select_kernels()
        x = self.embed(sequence)
        if condition_sum is not None:
            x = x + condition_sum.to(x.dtype)
        hidden = self.out_norm(
            self.transformer(x) if cross_source is None else self.transformer(x, cross_source=cross_source)
        )
        return hidden, self.text_linear(hidden)[:, None]

    def depformer_input(self, step: int, token: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Input of depformer position ``step``: projection of ``hidden [B, S, dim]`` plus the
        embedding of ``token [B, S]`` (text for step 0, audio codebook ``step - 1`` otherwise)."""
        index = self.config.depformer_step_weights(step) if self.config.depformer_multi_linear else 0
        projected = self.depformer_in[index](hidden)
        table = self.depformer_text_emb if step == 0 else self.depformer_emb[step - 1]
        return projected + table(token)

    def depformer_logits(self, step: int, out: torch.Tensor) -> torch.Tensor:
        return self.linears[step](self.depformer_norms[step](out))

    def forward_depformer_training(self, sequence: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Teacher-forced depformer over every frame: ``sequence [B, 1 + n_q, T]`` holds the tokens
        of each frame, ``hidden [B, T, dim]`` the temporal state. Returns ``[B, dep_q, T, card]``."""
        assert self.depformer is not None
        batch, _, length = sequence.shape
        inputs = torch.stack(
            [self.depformer_input(k, sequence[:, k], hidden) for k in range(self.dep_q)], dim=2
        )  # [B, T, dep_q, D]
        out = self.depformer(inputs.reshape(batch * length, self.dep_q, -1))
        logits = [self.depformer_logits(k, out[:, k]).view(batch, length, -1) for k in range(self.dep_q)]
        return torch.stack(logits, dim=1)

    def forward(self, codes: torch.Tensor, conditioning: Conditioning | None = None) -> LMOutput:
        """Teacher forcing over ``codes [B, 1 + n_q, T]``; a conditioned model needs ``conditioning``
        (from :meth:`conditioning`)."""
        if self.is_conditioned and conditioning is None:
            raise ValueError("this model is conditioned: pass conditioning=model.conditioning(attributes)")
        if conditioning is None:
            conditioning = Conditioning(None, None)
        self.check_tokens(codes)
        self.select_kernels()
        batch, _, length = codes.shape
        initial = self.initial_tokens(batch)
        delayed = torch.cat([initial, delay_codes(codes, self.delays, initial)], dim=2)
        hidden, text_logits = self.forward_text(delayed[:, :, :-1], conditioning.sum, conditioning.cross)
        audio_delays = self.delays[1 : 1 + self.dep_q]
        if self.depformer is not None:
            logits = self.forward_depformer_training(delayed[:, :, 1:], hidden)
        else:
            logits = hidden.new_zeros(batch, 0, length, self.config.card)
        logits, mask = undelay_logits(logits, audio_delays)
        mask &= codes[:, 1 : 1 + self.dep_q] != ZERO_TOKEN
        text_logits, text_mask = undelay_logits(text_logits, self.delays[:1])
        text_mask &= codes[:, :1] != ZERO_TOKEN
        return LMOutput(logits, mask, text_logits, text_mask, hidden)
