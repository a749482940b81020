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
    import duplex.lm  # noqa: F401  (registers the LM's registries)
    import torch
    from duplex.codec.registry import ALL_REGISTRIES

    for distribution in PACKAGES:
        typer.echo(f"{distribution:14s} {_version(distribution)}")
    triton = "importable" if importlib.util.find_spec("triton") is not None else "not importable"
    typer.echo(f"{'triton':14s} {triton}")
    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    typer.echo(f"{'device':14s} {device}")
    from duplex.codec import kernels

    backends = ", ".join(f"{op}={kernels.active_backend(op)}" for op in kernels.OPS)
    typer.echo(f"{'kernels':14s} {backends}")
    typer.echo("registered components:")
    for registry in ALL_REGISTRIES:
        names = ", ".join(registry.names()) or "(none)"
        typer.echo(f"  {registry.kind + 's':22s} [{registry.group}] {names}")
