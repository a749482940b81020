"""duplex-demo: the bundled demo checkpoint, the tiny random one, and the recipes of their data."""

__version__ = "0.1.0"
