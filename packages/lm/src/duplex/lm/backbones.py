"""Temporal backbones, registered by name in :data:`duplex.lm.registry.BACKBONES`.

A backbone implements :class:`duplex.codec.interfaces.Backbone`: a streaming module built from a
:class:`duplex.codec.nn.TransformerConfig` that maps ``x [B, T, dim]`` to ``[B, T, dim]``
causally; in streaming it keeps its own per-slot state (``reset_streaming(slots)``,
``set_exec_mask``). A backbone for cross-attention models (TTS) also takes
``forward(x, cross_source=...)`` and ``set_cross_source(source, slots)``. ``LMConfig.backbone``
picks one by name; a plugin package adds its own through the ``duplex.backbones`` entry-point
group, with its own hyperparameters in a pydantic ``config_class`` (``LMConfig.backbone_config``).
"""

from __future__ import annotations

from duplex.codec.nn import StreamingTransformer, TransformerConfig


class Helium(StreamingTransformer):
    """Moshi's temporal transformer: pre-norm layers (RMSNorm f32, RoPE attention with a KV ring
    buffer of ``context`` steps, SiLU-gated FFN), no final norm (the LM applies ``out_norm``)."""

    config_class = None  # every hyperparameter is in the LMConfig fields

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
