"""LMConfig: the fields of an official Moshi ``config.json``, validated, with named presets.

An official ``config.json`` validates as is: the model fields (the keyword arguments of the
reference ``LMModel`` and of its transformers) and the loader keys (``moshi_name``,
``mimi_name``, ``tokenizer_name``, ``lm_gen_config``, ...). An unknown key or a bad value fails
with an error naming the field.

How the flat keys become two transformers (docs/architecture.md §3.2): plain keys (``num_layers``,
``gating``, ``max_period``, ...) configure the temporal transformer; the depth transformer inherits them,
except that every ``depformer_X`` key that is present overrides ``X``. The depformer always has
no context, uses ``depformer_pos_emb`` (default "sin") as positional embedding, and has one
weight set per generated codebook when ``depformer_weights_per_step`` is set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Self

from duplex.codec.kernels.weight_formats import WeightFormat
from duplex.codec.nn.schema import Gating, NormKind, PositionalKind
from duplex.codec.presets import PresetConfig
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MOSHI_NAME = "model.safetensors"
MIMI_NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
TEXT_TOKENIZER_NAME = "tokenizer_spm_32k_3.model"


# What each kind of checkpoint is for, and the command that runs it.
MODEL_TASKS = {
    "moshi": ("spoken dialogue", "duplex run"),
    "stt": ("speech recognition", "duplex asr"),
    "tts": ("text-to-speech", "duplex tts"),
    "hibiki": ("speech translation", "duplex translate"),
}


def check_model_type(config: LMConfig, wanted: str, source: object = None) -> None:
    """Raise a clear error unless ``config`` is a ``wanted`` model (naming the command that fits)."""
    if config.model_type == wanted:
        return
    task, _ = MODEL_TASKS[wanted]
    _, command = MODEL_TASKS[config.model_type]
    name = "this" if source is None else str(source)
    raise ValueError(
        f"{name} is a {config.model_type!r} checkpoint, not {task} (model_type {wanted!r}); "
        f"use `{command}` for it"
    )


LOADER_KEYS = (
    "codec",
    "moshi_name",
    "mimi_name",
    "mimi_config_name",
    "tokenizer_name",
    "lora_name",
    "model_type",
    "lm_gen_config",
    "tts_config",
    "stt_config",
    "model_id",
)


class GenerationConfig(BaseModel):
    """``lm_gen_config``: defaults for :class:`duplex.lm.generate.LMGen` stored with a checkpoint."""

    model_config = ConfigDict(extra="forbid")

    use_sampling: bool = True
    temp: float = Field(0.8, ge=0.0)
    temp_text: float = Field(0.7, ge=0.0)
    top_k: int = Field(250, ge=0)
    top_k_text: int = Field(25, ge=0)
    cfg_coef: float = 1.0
    check: bool = False
    support_out_of_sync: bool = False
    cfg_is_masked_until: list[int] | None = None
    cfg_is_no_text: bool = False
    # The published TTS config carries it, but it is no LMGen argument: the reference ignores it.
    text_temp: float | None = None


class LowPrecisionConfig(BaseModel):
    """How a model's matmul weights are stored (docs/nn-api.md): ``format`` "bf16", or
    "int8" (weight-only, one scale per output channel or per ``group_size`` input columns). The
    weights whose qualified names start with one of ``keep`` stay in the model's dtype."""

    model_config = ConfigDict(extra="forbid")

    format: WeightFormat
    group_size: int | None = Field(None, ge=8)
    keep: list[str] = Field(default_factory=list)

    def keeps(self, name: str) -> bool:
        return name.startswith(tuple(self.keep))


class _ConditionerBase(BaseModel):
    """The keyword arguments every conditioner of the official configs accepts."""

    model_config = ConfigDict(extra="forbid")

    dim: int = Field(ge=1)
    force_linear: bool = True
    pad_empty: bool = True
    output_bias: Literal[False] = False
    learn_padding: bool = True


class LUTConditionerConfig(_ConditionerBase):
    """A table of learnt vectors, one per value of ``possible_values`` (docs/architecture.md §5.5)."""

    n_bins: int = Field(ge=1)
    tokenizer: Literal["noop"] = "noop"
    possible_values: list[str] | None = None
    init_scale: float = 1.0

    @model_validator(mode="after")
    def _enough_bins(self) -> Self:
        if self.possible_values is not None and len(self.possible_values) > self.n_bins:
            raise ValueError(
                f"possible_values has {len(self.possible_values)} entries but n_bins is {self.n_bins}"
            )
        return self


class TensorConditionerConfig(_ConditionerBase):
    """A given tensor ``[T, dim]`` projected to the model's width (the TTS voice)."""


class ConditionerConfig(BaseModel):
    """One entry of ``conditioners``: ``{"type": "lut", "lut": {...}}`` or ``{"type": "tensor", ...}``."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["lut", "tensor"]
    lut: LUTConditionerConfig | None = None
    tensor: TensorConditionerConfig | None = None

    @model_validator(mode="after")
    def _has_its_settings(self) -> Self:
        if getattr(self, self.type) is None:
            raise ValueError(f'a conditioner of type "{self.type}" needs its "{self.type}" settings')
        return self

    @property
    def settings(self) -> LUTConditionerConfig | TensorConditionerConfig:
        return getattr(self, self.type)


class FuserConfig(BaseModel):
    """``fuser``: which conditions are summed into every step's input and which are the
    cross-attention source (docs/architecture.md §5.5)."""

    model_config = ConfigDict(extra="forbid")

    sum: list[str] = Field(default_factory=list)
    cross: list[str] = Field(default_factory=list)
    prepend: list[str] = Field(default_factory=list)
    cross_attention_pos_emb: bool = False
    cross_attention_pos_emb_scale: float = 1.0

    @model_validator(mode="after")
    def _supported(self) -> Self:
        if self.prepend:
            raise ValueError("fuser.prepend: prepended conditions are not supported (nor by the reference)")
        return self


class LMConfig(PresetConfig):
    """Everything needed to build an :class:`~duplex.lm.model.LMModel` and find its companions."""

    # -- streams and vocabularies ---------------------------------------------------------------
    delays: list[int] = Field(default_factory=lambda: [0])
    n_q: int = Field(8, ge=0, description="audio streams read by the model (Moshi's + the user's)")
    dep_q: int = Field(8, ge=0, description="audio streams generated by the depformer (Moshi's own)")
    card: int = Field(1024, ge=1)
    text_card: int = Field(32000, ge=1)
    text_card_out: int | None = Field(None, ge=1)
    demux_second_text_stream: bool = False
    existing_text_padding_id: int = 3
    existing_text_end_padding_id: int = 0

    # -- temporal transformer -------------------------------------------------------------------
    backbone: str = "helium"
    # the backbone plugin's own hyperparameters, validated by its ``config_class``
    backbone_config: dict[str, Any] | None = None
    dim: int = Field(128, ge=1)
    num_heads: int = Field(8, ge=1)
    num_layers: int = Field(8, ge=0)
    hidden_scale: float = Field(4, gt=0)
    norm: NormKind = "layer_norm"
    causal: bool = True
    context: int | None = Field(None, ge=1)
    max_period: float = Field(10_000, gt=0)
    gating: Gating = "none"
    layer_scale: float | None = None
    positional_embedding: PositionalKind = "sin"
    kv_repeat: int = Field(1, ge=1)
    weights_per_step: int = Field(0, ge=0)
    weights_per_step_schedule: list[int] | None = None
    cross_attention: bool = False
    norm_emb: bool = False
    bias_proj: bool = False
    extra_heads_num_heads: int = Field(0, ge=0)
    extra_heads_dim: int = Field(6, ge=1)
    quantize: bool = False
    gradient_checkpointing: bool = False

    # -- depth transformer (unset ``depformer_X`` inherit ``X``) ---------------------------------
    depformer: str = "depformer"
    depformer_config: dict[str, Any] | None = None
    depformer_dim: int = Field(256, ge=1)
    depformer_dim_feedforward: int | list[int] | None = None
    depformer_num_heads: int | None = Field(None, ge=1)
    depformer_num_layers: int | None = Field(None, ge=0)
    depformer_gating: Gating | None = None
    depformer_layer_scale: float | None = None
    depformer_max_period: float | None = Field(None, gt=0)
    depformer_kv_repeat: int | None = Field(None, ge=1)
    depformer_multi_linear: bool = False
    depformer_weights_per_step: bool = False
    depformer_weights_per_step_schedule: list[int] | None = None
    depformer_low_rank_embeddings: int | None = Field(None, ge=1)
    depformer_pos_emb: PositionalKind = "sin"
    depformer_norm: NormKind | None = None
    # Accepted because official files carry them; the reference ignores both.
    depformer_context: int | None = None
    depformer_causal: bool | None = None

    # -- conditioning and LoRA ------------------------------------------------------------------
    conditioners: dict[str, ConditionerConfig] | None = None
    fuser: FuserConfig | None = None
    lora: bool = False
    lora_rank: int = Field(128, ge=1)
    lora_scaling: float = 2.0

    # -- duplex: low-precision storage of the weights (LMModel.quantize) ------------------------
    low_precision: LowPrecisionConfig | None = None

    # -- loader keys (where the checkpoint's files are, how to run it) --------------------------
    codec: str = Field(
        "mimi", min_length=1, description="the registered codec (duplex.codecs) of the mimi_name weights"
    )
    moshi_name: str = MOSHI_NAME
    mimi_name: str = MIMI_NAME
    mimi_config_name: str | None = None
    tokenizer_name: str = TEXT_TOKENIZER_NAME
    lora_name: str | None = None
    model_type: Literal["moshi", "hibiki", "stt", "tts"] = "moshi"
    lm_gen_config: GenerationConfig = Field(default_factory=GenerationConfig)
    tts_config: dict[str, Any] = Field(default_factory=dict)
    stt_config: dict[str, Any] = Field(default_factory=dict)
    model_id: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "demux_second_stream" in data:
            data = dict(data)
            if "demux_second_text_stream" in data:
                raise ValueError("give only one of demux_second_stream / demux_second_text_stream")
            data["demux_second_text_stream"] = data.pop("demux_second_stream")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if len(self.delays) != self.n_q + 1:
            raise ValueError(
                f"delays: expected {self.n_q + 1} entries (text + n_q={self.n_q} audio streams), "
                f"got {len(self.delays)}"
            )
        if any(d < 0 for d in self.delays):
            raise ValueError(f"delays must be >= 0, got {self.delays}")
        if self.dep_q > self.n_q:
            raise ValueError(f"dep_q ({self.dep_q}) cannot exceed n_q ({self.n_q})")
        if self.dim % self.num_heads:
            raise ValueError(f"dim ({self.dim}) must be a multiple of num_heads ({self.num_heads})")
        if self.num_heads % self.kv_repeat:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of kv_repeat ({self.kv_repeat})"
            )
        if self.quantize:
            raise ValueError(
                "quantize: bitsandbytes int8 checkpoints are not supported; load the bf16 weights "
                "(with --quantize int8 to store them in int8)"
            )
        if self.gradient_checkpointing:
            raise ValueError("gradient_checkpointing: not supported by the duplex backbones yet")
        self._check_conditioning()
        if self.gating == "none" and self.weights_per_step:
            raise ValueError("weights_per_step needs a gated feed-forward (gating != 'none')")
        if self.dep_q > 0:
            if self.depformer_num_heads is None:
                raise ValueError("depformer_num_heads is required when dep_q > 0")
            if self.depformer_dim % self.depformer_num_heads:
                raise ValueError(
                    f"depformer_dim ({self.depformer_dim}) must be a multiple of "
                    f"depformer_num_heads ({self.depformer_num_heads})"
                )
            schedule = self.depformer_weights_per_step_schedule
            if schedule is not None:
                if len(schedule) != self.dep_q:
                    raise ValueError(
                        f"depformer_weights_per_step_schedule: expected {self.dep_q} entries (dep_q), "
                        f"got {len(schedule)}"
                    )
                if min(schedule) < 0:
                    raise ValueError(f"depformer_weights_per_step_schedule must be >= 0, got {schedule}")
            if isinstance(self.depformer_dim_feedforward, list):
                raise ValueError("depformer_dim_feedforward: per-step lists of sizes are not supported")
            if self._depformer("gating") == "none" and self.depformer_weights_per_step:
                raise ValueError("depformer_weights_per_step needs a gated feed-forward (depformer_gating)")
        return self

    def _check_conditioning(self) -> None:
        conditioners = self.conditioners or {}
        fuser = self.fuser
        if fuser is None:
            if conditioners:
                raise ValueError("conditioners need a fuser saying how each condition enters the model")
            if self.cross_attention:
                raise ValueError("cross_attention needs a fuser with a cross condition")
            return
        for method in ("sum", "cross"):
            for name in getattr(fuser, method):
                if name not in conditioners:
                    raise ValueError(f"fuser.{method} names {name!r}, which is not in conditioners")
        if bool(fuser.cross) != self.cross_attention:
            raise ValueError(
                "cross_attention and fuser.cross must go together (the cross conditions are what the "
                "cross-attention layers attend to)"
            )
        if self.cross_attention and self.kv_repeat != 1:
            raise ValueError("cross_attention needs kv_repeat=1")

    # -- derived quantities ---------------------------------------------------------------------
    @property
    def num_codebooks(self) -> int:
        """Streams in a frame: text + ``n_q`` audio."""
        return self.n_q + 1

    @property
    def num_user_codebooks(self) -> int:
        """Audio streams the caller supplies at each generation step (the user's codebooks)."""
        return self.n_q - self.dep_q

    @property
    def max_delay(self) -> int:
        return max(self.delays)

    @property
    def text_out_card(self) -> int:
        return self.text_card if self.text_card_out is None else self.text_card_out

    @property
    def num_depformer_inputs(self) -> int:
        """Number of ``depformer_in`` projections."""
        if not self.depformer_multi_linear:
            return 1
        if self.depformer_weights_per_step_schedule:
            return max(self.depformer_weights_per_step_schedule) + 1
        return self.dep_q

    @property
    def mimi_num_codebooks(self) -> int:
        """How many Mimi codebooks the checkpoint's codec runs with."""
        n = max(self.dep_q, self.n_q - self.dep_q)
        if self.tts_config.get("multistream"):
            n //= 2
        return n

    def depformer_step_weights(self, step: int) -> int:
        """Index of the depformer weight set (and ``depformer_in``) used for codebook ``step``."""
        if self.depformer_weights_per_step_schedule is not None:
            return self.depformer_weights_per_step_schedule[step]
        return step

    def _depformer(self, name: str) -> Any:
        key = f"depformer_{name}"
        if key in self.model_fields_set:
            value = getattr(self, key)
            if value is not None or name == "layer_scale":
                return value
        return getattr(self, name)

    def temporal_transformer_config(self) -> Any:
        """The :class:`duplex.codec.nn.TransformerConfig` of the temporal (Helium) transformer."""
        from duplex.codec.nn import TransformerConfig

        return TransformerConfig(
            d_model=self.dim,
            num_heads=self.num_heads,
            num_layers=self.num_layers,
            dim_feedforward=int(self.hidden_scale * self.dim),
            causal=self.causal,
            context=self.context,
            max_period=self.max_period,
            gating=self.gating,
            norm=self.norm,
            positional_embedding=self.positional_embedding,
            layer_scale=self.layer_scale,
            weights_per_step=self.weights_per_step,
            weights_per_step_schedule=self.weights_per_step_schedule,
            kv_repeat=self.kv_repeat,
            cross_attention=self.cross_attention,
        )

    def depformer_transformer_config(self) -> Any:
        """The depth transformer's :class:`~duplex.codec.nn.TransformerConfig` (None without one)."""
        from duplex.codec.nn import TransformerConfig

        if self.dep_q == 0:
            return None
        dim_feedforward = self.depformer_dim_feedforward
        if dim_feedforward is None:
            dim_feedforward = int(self.hidden_scale * self.depformer_dim)
        return TransformerConfig(
            d_model=self.depformer_dim,
            num_heads=self.depformer_num_heads,
            num_layers=self._depformer("num_layers"),
            dim_feedforward=dim_feedforward,
            causal=self.causal,
            context=None,
            max_period=self._depformer("max_period"),
            gating=self._depformer("gating"),
            norm=self.norm,
            positional_embedding=self.depformer_pos_emb,
            layer_scale=self._depformer("layer_scale"),
            weights_per_step=self.dep_q if self.depformer_weights_per_step else 0,
            weights_per_step_schedule=self.depformer_weights_per_step_schedule,
            kv_repeat=self._depformer("kv_repeat"),
        )

    def build_backbone(self, which: Literal["backbone", "depformer"]) -> Any:
        """The registered temporal backbone (or depformer) of this config, built from its
        :class:`~duplex.codec.nn.TransformerConfig` and, when the class declares a ``config_class``,
        its ``backbone_config`` (``depformer_config``) validated by that class."""
        from duplex.lm.registry import BACKBONES, DEPFORMERS

        registry = BACKBONES if which == "backbone" else DEPFORMERS
        name = getattr(self, which)
        component = registry.get(name)
        transformer = (
            self.temporal_transformer_config() if which == "backbone" else self.depformer_transformer_config()
        )
        options_class = getattr(component, "config_class", None)
        given = getattr(self, f"{which}_config")
        if options_class is None:
            if given:
                raise ValueError(
                    f"{which}_config: the {which} {name!r} takes no options; remove {sorted(given)}"
                )
            return component(transformer)
        try:
            options = options_class.model_validate(given or {})
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            raise ValueError(f"{which}_config of {which} {name!r}: {problems}") from None
        return component(transformer, options)

    # -- files ----------------------------------------------------------------------------------
    @classmethod
    def from_json(cls, path: str | Path) -> Self:
        """Validate an official ``config.json`` (or one written by :meth:`save_json`)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            error.add_note(f"in {path}")  # the CLI's error line names the file
            raise

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` form: the keys that were given (unset ``depformer_X`` keys inherit)."""
        return self.model_dump(mode="json", exclude_unset=True)

    def lm_kwargs(self) -> dict[str, Any]:
        """The model part of ``config.json`` (loader keys and duplex-only keys removed): the keyword
        arguments the official loader passes to its LM class."""
        data = self.to_dict()
        duplex_only = (
            "backbone",
            "backbone_config",
            "depformer",
            "depformer_config",
            "depformer_causal",
            "lora",
            "lora_rank",
            "lora_scaling",
            "low_precision",
        )
        for key in (*LOADER_KEYS, *duplex_only):
            data.pop(key, None)
        return data

    def save_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _moshi_7b() -> dict[str, Any]:
    return {
        "dim": 4096,
        "text_card": 32000,
        "existing_text_padding_id": 3,
        "n_q": 16,
        "dep_q": 8,
        "card": 2048,
        "num_heads": 32,
        "num_layers": 32,
        "hidden_scale": 4.125,
        "causal": True,
        "layer_scale": None,
        "context": 3000,
        "max_period": 10000,
        "gating": "silu",
        "norm": "rms_norm_f32",
        "positional_embedding": "rope",
        "depformer_dim": 1024,
        "depformer_dim_feedforward": int(4.125 * 1024),
        "depformer_num_heads": 16,
        "depformer_num_layers": 6,
        "depformer_layer_scale": None,
        "depformer_multi_linear": True,
        "depformer_context": 8,
        "depformer_max_period": 10000,
        "depformer_gating": "silu",
        "depformer_pos_emb": "none",
        "depformer_weights_per_step": True,
        "delays": [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
    }


LMConfig.preset("moshi-7b")(_moshi_7b)


@LMConfig.preset("demo")
def _demo() -> dict[str, Any]:
    """The bundled demo's structure: the official one at about 10 M parameters, for the small codec
    (8 of its 1024-bin codebooks per speaker); trains on a CPU in under an hour."""
    return {
        **_moshi_7b(),
        "dim": 256,
        "text_card": 200,
        "card": 1024,
        "num_heads": 4,
        "num_layers": 4,
        "context": 250,
        "depformer_dim": 128,
        "depformer_dim_feedforward": int(4.125 * 128),
        "depformer_num_heads": 4,
        "depformer_num_layers": 2,
        # The first codebook (semantic) gets its own depformer weights, the acoustic ones share one set.
        "depformer_weights_per_step_schedule": [0, 1, 1, 1, 1, 1, 1, 1],
        # It answers from a fixed script: its most likely answer is the one it chose, and greedy
        # decoding is what its scores measure (docs/architecture.md §8.3).
        "lm_gen_config": {"use_sampling": False},
    }


@LMConfig.preset("moshi-341m")
def _moshi_341m() -> dict[str, Any]:
    """The official structure scaled down (the speed benchmark's model)."""
    return {
        **_moshi_7b(),
        "dim": 1024,
        "num_heads": 16,
        "num_layers": 8,
        "depformer_dim": 512,
        "depformer_dim_feedforward": int(4.125 * 512),
        "depformer_num_heads": 8,
        "depformer_num_layers": 4,
    }


@LMConfig.preset("tiny")
def _tiny() -> dict[str, Any]:
    """The official structure (RMSNorm, SiLU-GLU, RoPE, per-step depformer, delays) at toy size."""
    return {
        **_moshi_7b(),
        "dim": 32,
        "text_card": 60,
        "card": 40,
        "n_q": 6,
        "dep_q": 3,
        "num_heads": 4,
        "num_layers": 2,
        "context": 10,
        "depformer_dim": 16,
        "depformer_dim_feedforward": int(4.125 * 16),
        "depformer_num_heads": 2,
        "depformer_num_layers": 2,
        "delays": [0, 0, 1, 1, 0, 1, 1],
    }


@LMConfig.preset("reference-test")
def _reference_test() -> dict[str, Any]:
    """The reference's own LM test configuration (docs/architecture.md §3.8), matching the shipped
    test weights."""
    return {
        "delays": [0, 1, 2, 4],
        "n_q": 3,
        "dep_q": 3,
        "card": 32,
        "text_card": 48,
        "dim": 16,
        "num_layers": 2,
        "num_heads": 1,
        "hidden_scale": 1,
        "depformer_dim": 16,
        "depformer_multi_linear": True,
        "depformer_weights_per_step": True,
        "depformer_weights_per_step_schedule": [0, 1, 1],
        "depformer_low_rank_embeddings": 8,
        "depformer_num_heads": 1,
        "depformer_gating": "silu",
        "context": 4,
    }


def _stt_1b() -> dict[str, Any]:
    """Kyutai's streaming speech recognition model stt-1b-en_fr (docs/architecture.md §5.2): the
    text stream lags the audio by 0.5 s; every audio codebook is input, no depformer."""
    return {
        "model_type": "stt",
        "card": 2048,
        "n_q": 32,
        "dep_q": 0,
        "delays": [0] * 33,
        "dim": 2048,
        "num_layers": 16,
        "num_heads": 16,
        "hidden_scale": 4.125,
        "context": 750,
        "max_period": 100_000,
        "norm": "rms_norm_f32",
        "positional_embedding": "rope",
        "gating": "silu",
        "causal": True,
        "text_card": 8000,
        "existing_text_padding_id": 3,
        "extra_heads_num_heads": 4,
        "extra_heads_dim": 6,
        "conditioners": {},
        "lm_gen_config": {"temp": 0.0, "temp_text": 0.0, "top_k": 250, "top_k_text": 50},
        "stt_config": {"audio_delay_seconds": 0.5, "audio_silence_prefix_seconds": 0.0},
        "mimi_name": "mimi-pytorch-e351c8d8@125.safetensors",
        "tokenizer_name": "tokenizer_en_fr_audio_8000.model",
    }


LMConfig.preset("stt-1b")(_stt_1b)


@LMConfig.preset("tiny-stt")
def _tiny_stt() -> dict[str, Any]:
    """The stt-1b structure at toy size (tests); 8 audio codebooks."""
    return {
        **_stt_1b(),
        "card": 32,  # the tiny Mimi's bins
        "n_q": 8,
        "delays": [0] * 9,
        "dim": 32,
        "num_layers": 2,
        "num_heads": 4,
        "context": 20,
        "text_card": 64,
        "stt_config": {"audio_delay_seconds": 0.32, "audio_silence_prefix_seconds": 0.16},
    }


def _tts_1_6b() -> dict[str, Any]:
    """Kyutai's text-to-speech model tts-1.6b-en_fr (docs/architecture.md §5.3): the audio lags the
    text by 1.28 s; voices by cross-attention, guidance strength by a distilled ``cfg`` table."""
    return {
        "model_type": "tts",
        "card": 2048,
        "n_q": 32,
        "dep_q": 32,
        "delays": [0, 0] + [2] * 31,
        "dim": 2048,
        "num_layers": 16,
        "num_heads": 16,
        "hidden_scale": 4.125,
        "context": 500,
        "max_period": 10_000,
        "norm": "rms_norm_f32",
        "positional_embedding": "rope",
        "gating": "silu",
        "causal": True,
        "text_card": 8000,
        "existing_text_padding_id": 3,
        "demux_second_stream": True,
        "cross_attention": True,
        "depformer_dim": 1024,
        "depformer_num_heads": 16,
        "depformer_num_layers": 4,
        "depformer_dim_feedforward": 3072,
        "depformer_multi_linear": True,
        "depformer_pos_emb": "none",
        "depformer_weights_per_step": True,
        "depformer_weights_per_step_schedule": list(range(8)) + [8] * 8 + [9] * 8 + [10] * 8,
        "depformer_low_rank_embeddings": 128,
        "conditioners": {
            "speaker_wavs": {"type": "tensor", "tensor": {"dim": 512}},
            "cfg": {
                "type": "lut",
                "lut": {
                    "n_bins": 7,
                    "dim": 16,
                    "tokenizer": "noop",
                    "possible_values": ["1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0"],
                },
            },
            "control": {
                "type": "lut",
                "lut": {"n_bins": 1, "dim": 2048, "tokenizer": "noop", "possible_values": ["ok"]},
            },
        },
        "fuser": {
            "cross_attention_pos_emb": True,
            "cross_attention_pos_emb_scale": 1,
            "sum": ["control", "cfg"],
            "prepend": [],
            "cross": ["speaker_wavs"],
        },
        "tts_config": {"audio_delay": 1.28, "second_stream_ahead": 2},
        "lm_gen_config": {"temp": 0.6, "text_temp": 0.6},
        "model_id": {"sig": "1e68beda", "epoch": 240},
        "moshi_name": "dsm_tts_1e68beda@240.safetensors",
        "tokenizer_name": "tokenizer_spm_8k_en_fr_audio.model",
    }


LMConfig.preset("tts-1.6b")(_tts_1_6b)


@LMConfig.preset("tiny-tts")
def _tiny_tts() -> dict[str, Any]:
    """The tts-1.6b structure at toy size (tests): cross-attention to a voice, the demuxed second
    text stream, low-rank depformer embeddings, the weight schedule and the cfg table."""
    config = _tts_1_6b()
    config["conditioners"]["speaker_wavs"]["tensor"]["dim"] = 12
    config["conditioners"]["control"]["lut"]["dim"] = 8
    return {
        **config,
        "card": 32,  # the tiny Mimi's bins
        "n_q": 6,
        "dep_q": 6,
        "delays": [0, 0] + [2] * 5,
        "dim": 32,
        "num_layers": 2,
        "num_heads": 4,
        "context": 30,
        "text_card": 64,
        "depformer_dim": 16,
        "depformer_num_heads": 2,
        "depformer_num_layers": 2,
        "depformer_dim_feedforward": 48,
        "depformer_weights_per_step_schedule": [0, 1, 2, 3, 3, 4],
        "depformer_low_rank_embeddings": 8,
        "tts_config": {"audio_delay": 0.32, "second_stream_ahead": 2},
    }


@LMConfig.preset("tiny-hibiki")
def _tiny_hibiki() -> dict[str, Any]:
    """Hibiki's structure (speech translation, docs/architecture.md §5.4) at toy size: a summed
    ``description`` table, Moshi's two audio streams with acoustic delays."""
    return {
        **_moshi_7b(),
        "model_type": "hibiki",
        "dim": 32,
        "text_card": 64,
        "card": 32,  # the tiny Mimi's bins
        "n_q": 8,
        "dep_q": 4,
        "num_heads": 4,
        "num_layers": 2,
        "context": 20,
        "depformer_dim": 16,
        "depformer_dim_feedforward": 48,
        "depformer_num_heads": 2,
        "depformer_num_layers": 2,
        "depformer_low_rank_embeddings": 8,
        "delays": [0, 0, 2, 2, 2, 0, 2, 2, 2],
        "conditioners": {
            "description": {
                "type": "lut",
                "lut": {
                    "n_bins": 31,
                    "dim": 16,
                    "tokenizer": "noop",
                    "possible_values": ["very_bad", "bad", "neutral", "good", "very_good"],
                },
            }
        },
        "fuser": {
            "cross_attention_pos_emb": False,
            "cross_attention_pos_emb_scale": 1,
            "sum": ["description"],
            "prepend": [],
            "cross": [],
        },
        "lm_gen_config": {"temp": 0.8, "temp_text": 0.8, "top_k": 250, "top_k_text": 50},
    }
