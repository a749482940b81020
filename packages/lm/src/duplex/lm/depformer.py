"""The depth transformer ("depformer"): inside one frame, predicts Moshi's codebooks in order.

Position ``k`` of its short sequence predicts audio codebook ``k``; with per-step weights,
position ``k`` uses weight set ``schedule[k]`` (or ``k``). Its inputs and output heads
(``depformer_in``, ``depformer_emb``, ``depformer_text_emb``, ``linears``) live on the LM under
their official names; this module is the transformer body, keys ``depformer.layers.*``, made of
the same layers as every other transformer of duplex.

In generation it streams over the codebooks of one frame and restarts at every frame, so it is
detached from the LM's streaming: :class:`~duplex.lm.generate.LMGen` drives it directly.
"""

from __future__ import annotations

from duplex.codec.nn import StreamingTransformer, TransformerConfig


class Depformer(StreamingTransformer):
    """The default of :data:`duplex.lm.registry.DEPFORMERS` (``LMConfig.depformer``)."""

    config_class = None
    streaming_detached = True  # a replacement must restart per frame too (LMGen drives it)

    def __init__(self, config: TransformerConfig) -> None:
        if config.context is not None:
            raise ValueError("the depformer attends within one frame and has no context")
        super().__init__(config)
