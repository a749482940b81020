"""`duplex info`: package versions, torch, triton, device and registered components."""

from __future__ import annotations

import importlib.util
from importlib.metadata import PackageNotFoundError, version

import typer

PACKAGES = ("duplex-codec", "duplex-lm", "duplex-stream", "duplex-cli", "torch")


def _version(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def info() -> None:
    import duplex.codec.kernels  # noqa: F401  (the registries of each package, listed below)
    import duplex.lm  # noqa: F401
    import duplex.stream.defaults  # noqa: F401
    import duplex.stream.registry  # noqa: F401
    import torch
    from duplex.codec.registry import ALL_REGISTRIES

    for distribution in PACKAGES:
        typer.echo(f"{distribution:14s} {_version(distribution)}")
    triton = "importable" if importlib.util.find_spec("triton") is not None else "not importable"
    typer.echo(f"{'triton':14s} {triton}")
    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    typer.echo(f"{'device':14s} {device}")
    from duplex.codec import kernels

    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    for numerics in kernels.NUMERICS:  # what a float32 model selects on this device
        typer.echo(f"{'kernels ' + numerics:14s} {kernels.select_kernels(numerics, device_type).describe()}")
    typer.echo("registered components:")
    for registry in ALL_REGISTRIES:
        names = ", ".join(registry.names()) or "(none)"
        typer.echo(f"  {registry.kind + 's':22s} [{registry.group}] {names}")
