"""Compiling the C kernels for this CPU on first use, and loading them with ctypes.

A kernel's C file ships with the package. The first call compiles it with the system's C compiler
(``$CC``, else ``cc``, ``gcc`` or ``clang``), tuned for the host CPU (``-march=native``) and with
OpenMP when the compiler has it, into ``$DUPLEX_CACHE_DIR/kernels`` (default
``~/.cache/duplex/kernels``). The file name hashes the source (and the headers beside it), the
flags, the compiler and the CPU's feature flags, so an edit, another compiler or another CPU
sharing the cache gets its own build. Later processes load the cached library without
compiling. Without a working compiler the build raises :class:`NativeBuildError` (an
``ImportError``), and the dispatcher falls back to torch in ``auto`` mode.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

CACHE_ENV = "DUPLEX_CACHE_DIR"
_lock = threading.Lock()


class NativeBuildError(ImportError):
    """A C kernel could not be compiled or loaded here."""


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root) / "kernels"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "duplex" / "kernels"


def find_compiler() -> str:
    requested = os.environ.get("CC")
    if requested:
        if shutil.which(requested):
            return requested
        raise NativeBuildError(f"$CC={requested!r} is not an executable on PATH")
    for candidate in ("cc", "gcc", "clang"):
        if shutil.which(candidate):
            return candidate
    raise NativeBuildError("no C compiler found (set $CC, or install gcc or clang)")


def tuning_flags() -> list[str]:
    """Flags that tune the code for the CPU it runs on."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return ["-march=native"]
    if machine in ("aarch64", "arm64"):
        return ["-mcpu=native"]
    return []


@functools.cache
def _compiler_identity(compiler: str) -> str:
    try:
        result = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        raise NativeBuildError(f"the C compiler {compiler!r} does not run: {error}") from error
    return result.stdout.splitlines()[0] if result.stdout else compiler


@functools.cache
def _cpu_identity() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _compile(compiler: str, sources: Sequence[Path], target: Path, flags: Sequence[str]) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        command = [compiler, *flags, *map(str, sources), "-o", str(built), "-lm"]
        name = sources[0].name
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as error:
            raise NativeBuildError(f"compiling {name} failed to run: {error}") from error
        if result.returncode != 0:
            raise NativeBuildError(
                f"compiling {name} failed ({' '.join(command)}):\n{result.stderr.strip()[-2000:]}"
            )
        os.replace(built, target)  # atomic: a concurrent process sees the old file or the whole new one


def build(sources: Path | Sequence[Path], extra_flags: Sequence[str] | None = None) -> ctypes.CDLL:
    """Compile ``sources`` into one library (once per sources, flags, compiler and CPU) and load it.

    ``extra_flags`` replace the CPU tuning flags (e.g. ``["-march=x86-64"]`` for a build that only
    uses the baseline instruction set).
    """
    compiler = find_compiler()
    tuning = list(extra_flags) if extra_flags is not None else tuning_flags()
    # an undeclared function (a missing header) must fail the build, not the library's loading
    base = ["-O3", "-fPIC", "-shared", "-Werror=implicit-function-declaration", *tuning]
    sources = [sources] if isinstance(sources, Path) else list(sources)
    headers = sorted({header for source in sources for header in source.parent.glob("*.h")})
    code = b"\0".join(path.read_bytes() for path in [*sources, *headers])
    with _lock:
        for flags in ([*base, "-fopenmp"], base):  # without OpenMP the kernels run on one thread
            identity = [" ".join(flags), _compiler_identity(compiler), _cpu_identity()]
            key = hashlib.sha256(b"\0".join([code, *(part.encode() for part in identity)])).hexdigest()[:16]
            target = cache_dir() / f"{sources[0].stem}-{key}.so"
            if not target.exists():
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _compile(compiler, sources, target, flags)
                except OSError as error:  # e.g. a read-only home directory
                    raise NativeBuildError(
                        f"cannot write the kernel cache {target.parent} ({error}); set ${CACHE_ENV}"
                    ) from error
                except NativeBuildError:
                    if "-fopenmp" in flags:
                        continue
                    raise
            try:
                return ctypes.CDLL(str(target))
            except OSError as error:
                raise NativeBuildError(f"loading {target} failed: {error}") from error
    raise AssertionError("unreachable")


def function(
    sources: Path | Sequence[Path],
    name: str,
    argtypes: Sequence[type],
    restype: type | None = None,
    extra_flags: Sequence[str] | None = None,
) -> ctypes._CFuncPtr:
    """The C function ``name`` of the library built from ``sources``, with its ctypes signature."""
    found = getattr(build(sources, extra_flags), name)
    found.argtypes = list(argtypes)
    found.restype = restype
    return found
