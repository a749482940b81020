"""``windowed-gqa``: Helium's layers with sliding-window, grouped-query attention."""

from __future__ import annotations

from duplex.codec.nn import StreamingTransformer, TransformerConfig
from pydantic import BaseModel, ConfigDict, Field


class WindowedOptions(BaseModel):
    """The plugin's own hyperparameters (``LMConfig.backbone_config``)."""

    model_config = ConfigDict(extra="forbid")

    window: int = Field(64, ge=1, description="steps each query attends to (its own included)")
    kv_heads: int = Field(1, ge=1, description="key/value heads shared by the query heads")


class WindowedGQA(StreamingTransformer):
    """A :class:`duplex.codec.interfaces.Backbone`: the LM's transformer config with the attention
    window set to ``window`` and ``num_heads / kv_heads`` query heads per key/value head."""

    config_class = WindowedOptions

    def __init__(self, config: TransformerConfig, options: WindowedOptions) -> None:
        if config.num_heads % options.kv_heads:
            raise ValueError(
                f"backbone_config.kv_heads={options.kv_heads} must divide num_heads={config.num_heads}"
            )
        super().__init__(
            config.model_copy(
                update={"context": options.window, "kv_repeat": config.num_heads // options.kv_heads}
            )
        )
        self.options = options
