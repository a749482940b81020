"""Registries owned by the LM package (temporal backbones, data sources)."""

from duplex.codec.registry import Registry, add_registry

BACKBONES: Registry = add_registry(Registry("backbone", "duplex.backbones"))
DATA_SOURCES: Registry = add_registry(Registry("data source", "duplex.data_sources"))
