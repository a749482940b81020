"""duplex-cli: the `duplex` command line."""

__version__ = "0.1.0"
