"""The pipelines a checkpoint is served and run with, by its ``model_type`` (entry-point group
``duplex.pipelines``): each entry is a class implementing :class:`duplex.codec.interfaces.Pipeline`
with ``from_checkpoint(source, device=, dtype=, quantize=, numerics=, **options)``."""

from duplex.codec.registry import Registry, add_registry

PIPELINES: Registry = add_registry(Registry("pipeline", "duplex.pipelines"))
