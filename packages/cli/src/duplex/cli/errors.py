"""The CLI's one error contract, for every command.

A mistake prints one ``error: ...`` line on stderr (further lines only where a list helps, such as
the keys a checkpoint lacks), naming the thing at fault and the fix, and no traceback:

* exit 2: a usage error, the command line itself is wrong (an unknown option or preset, a missing
  option, an option value that cannot be right, such as an ``http://`` URL for the websocket);
* exit 1: a runtime error, the command line is fine but what it names is not (a missing or corrupt
  file, a dataset that fails validation, a busy port, a checkpoint that does not match its config);
* exit 130: interrupted (Ctrl-C).

``duplex --debug ...`` (or ``DUPLEX_DEBUG=1``) prints the traceback before the line. An exception
that is not a user mistake (a bug) still gets one line, which says so and asks for ``--debug``.
"""

from __future__ import annotations

import errno
import socket
import sys
import traceback
from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

import typer
from typer.core import TyperGroup

USAGE = 2
RUNTIME = 1
INTERRUPTED = 130

_state = {"debug": False}


def set_debug(debug: bool) -> None:
    _state["debug"] = debug


def usage_error(message: str, option: str | None = None) -> typer.BadParameter:
    """A usage error (exit 2) about ``option``, to ``raise``."""
    return typer.BadParameter(message, param_hint=f"'{option}'" if option else None)


class RuntimeProblem(Exception):
    """A runtime mistake (exit 1) whose message already names the thing and the fix."""


# Exceptions whose message is written for the user: the line is the message itself.
_USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, KeyError, RuntimeProblem)
# Of those, the ones that are bugs when they escape (a ValueError from deep in torch is one too, but
# cannot be told apart; these can).
_BUG_ERRORS: tuple[type[BaseException], ...] = (UnicodeError,)


def _pydantic_message(error: Exception) -> str | None:
    errors = getattr(error, "errors", None)
    title = getattr(error, "title", None)
    if not callable(errors) or title is None:
        return None
    parts = []
    for item in errors():
        where = ".".join(str(p) for p in item.get("loc", ())) or "(top level)"
        parts.append(f"{where}: {item.get('msg', '?')}")
    notes = "".join(f" ({note})" for note in getattr(error, "__notes__", ()))
    return f"invalid {title}{notes}: " + "; ".join(parts)


def describe(error: BaseException) -> tuple[str, int]:
    """The message and exit code the contract gives ``error``."""
    if isinstance(error, OSError) and error.errno == errno.EADDRINUSE:
        return f"{error.strerror or error}: another program holds the port; pass --port N", RUNTIME
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}", RUNTIME
    if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
        return error.args[0], RUNTIME
    if isinstance(error, ValueError) and (message := _pydantic_message(error)) is not None:
        return message, RUNTIME
    if isinstance(error, _USER_ERRORS) and not isinstance(error, _BUG_ERRORS) and str(error):
        return str(error), RUNTIME
    return (
        f"unexpected {type(error).__name__}: {error} (a bug in duplex, or a case it does not check: "
        "rerun with `duplex --debug ...` for the traceback, and please report it)",
        RUNTIME,
    )


def _report(message: str) -> None:
    first, *rest = message.strip().splitlines() or [""]
    typer.echo("\n".join([f"error: {first}", *rest]), err=True)


class DuplexGroup(TyperGroup):
    """The root command: runs everything under the contract above."""

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None, **extra: Any) -> Any:
        if extra.get("standalone_mode", True) is False:  # an embedding caller handles errors itself
            return super().main(args, prog_name, complete_var, **extra)
        extra.pop("standalone_mode", None)
        _state["debug"] = False
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = result if isinstance(result, int) else 0
        except typer.Abort:
            typer.echo("aborted", err=True)
            code = RUNTIME
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            code = INTERRUPTED
        except typer.TyperException as error:  # click's errors: usage (2) and the like
            code = getattr(error, "exit_code", RUNTIME)
            if type(error).__name__ == "NoArgsIsHelpError":
                typer.echo(error.format_message(), err=True)
            else:
                context = getattr(error, "ctx", None)
                hint = f" (see `{context.command_path} --help`)" if code == USAGE and context else ""
                _report(error.format_message() + hint)
        except Exception as error:
            if _state["debug"]:
                traceback.print_exc()
            message, code = describe(error)
            _report(message)
        sys.stdout.flush()
        sys.exit(code)


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another program holds, before anything slow happens (loading a model)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise usage_error(f"cannot resolve host {host!r} ({error.strerror})", "--host") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        if sys.platform != "win32":  # as the server binds: a port in TIME_WAIT is free
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise RuntimeProblem(
                    f"port {port} on {host} is already in use (another `duplex serve`?): "
                    f"pass --port with a free port, or stop the program that holds it"
                ) from None
            if error.errno in (errno.EACCES, errno.EPERM):
                raise RuntimeProblem(
                    f"no permission to listen on port {port} of {host}: pass --port 1024 or above"
                ) from None
            if error.errno == errno.EADDRNOTAVAIL:
                raise usage_error(f"{host} is not an address of this machine", "--host") from None
            raise


def port_checked(serve: Callable[..., Any]) -> Callable[..., Any]:
    """``serve`` that first checks its ``--host`` / ``--port`` (typer reads the wrapped signature)."""

    @wraps(serve)
    def checked(*args: Any, **kwargs: Any) -> Any:
        check_port_free(kwargs.get("host", "127.0.0.1"), kwargs.get("port", 8998))
        return serve(*args, **kwargs)

    return checked


def check_chat_url(url: str) -> None:
    """The server's websocket address must be ``ws://HOST:PORT/api/chat`` (or ``wss://``)."""
    parts = urlsplit(url)
    if parts.scheme in ("ws", "wss") and parts.netloc and parts.path not in ("", "/"):
        return
    scheme = "wss" if parts.scheme in ("https", "wss") else "ws"
    netloc = parts.netloc or (parts.path.split("/")[0] if not parts.scheme else "") or "127.0.0.1:8998"
    raise usage_error(
        f"the URL must be the server's websocket, ws://HOST:PORT/api/chat (or wss://), got {url!r}: "
        f"try --url {scheme}://{netloc}/api/chat",
        "--url",
    )


def url_checked(client: Callable[..., Any]) -> Callable[..., Any]:
    """``client`` that first checks its ``--url`` (typer reads the wrapped signature)."""

    @wraps(client)
    def checked(*args: Any, **kwargs: Any) -> Any:
        if "url" in kwargs:
            check_chat_url(kwargs["url"])
        return client(*args, **kwargs)

    return checked
