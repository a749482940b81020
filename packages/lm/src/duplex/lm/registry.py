"""Registries owned by the LM package (temporal backbones, depformers, data sources).

A backbone or depformer class implements :class:`duplex.codec.interfaces.BackboneClass`."""

from duplex.codec.registry import Registry, add_registry

BACKBONES: Registry = add_registry(Registry("backbone", "duplex.backbones"))
DEPFORMERS: Registry = add_registry(Registry("depformer", "duplex.depformers"))
DATA_SOURCES: Registry = add_registry(Registry("data source", "duplex.data_sources"))
