"""What every ``tether`` command shares: the Typer apps, the console, the daemon client
(started on demand), and the small helpers for output and errors.

The commands live by noun in the modules beside this one; each is a thin client: it
parses flags into a request, sends it over the unix socket, and renders the reply.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console

from ..api.client import Client, default_socket, default_state_dir
from ..errors import TetherError

__all__ = [
    "app", "network_app", "node_app", "lab_app", "out", "CTX", "RUN_CONTEXT",
    "print_json", "fail", "parse_options", "each", "warn_lagging",
]

app = typer.Typer(
    name="tether",
    help="Container networking for Linux: none, host, container, bridge (and overlay) modes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
network_app = typer.Typer(help="Manage networks.", no_args_is_help=True)
app.add_typer(network_app, name="network")
node_app = typer.Typer(help="The hosts of the cluster (overlay networks).", no_args_is_help=True)
app.add_typer(node_app, name="node")

lab_app = typer.Typer(
    help="A multi-host lab on this machine: hosts h1..hN in namespaces, etcd, a fabric.", no_args_is_help=True
)
app.add_typer(lab_app, name="lab")

out = Console(highlight=False, soft_wrap=True)
RUN_CONTEXT = {"allow_interspersed_args": False}


class Ctx:
    socket: str
    state_dir: str

    def client(self, autostart: bool = True) -> Client:
        client = Client(self.socket)
        if autostart and not os.environ.get("TETHER_NO_AUTOSTART"):
            client.ensure_daemon(self.state_dir)
        return client


CTX = Ctx()


@app.callback()
def _global(
    ctx: typer.Context,
    socket: str = typer.Option(None, "--socket", help="Daemon socket [env TETHER_SOCKET]."),
    state_dir: str = typer.Option(None, "--state-dir", help="State directory [env TETHER_STATE_DIR]."),
    host: str = typer.Option(
        None, "--host", envvar="TETHER_HOST", help="Run the command on this `tether lab` host (h1, h2 ...)."
    ),
) -> None:
    CTX.socket = socket or default_socket()
    CTX.state_dir = state_dir or default_state_dir()
    if host:  # re-executes in the host's netns, or returns its daemon's socket and state dir
        from ..lab import enter_host

        CTX.socket, CTX.state_dir = enter_host(host, ctx, CTX.socket, CTX.state_dir, bool(socket or state_dir))


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def fail(message: str, code: int = 1) -> NoReturn:
    sys.stderr.write(f"Error: {message}\n")
    raise typer.Exit(code)


def parse_options(options: list[str] | None) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for item in options or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"invalid option {item!r}: use -o KEY=VALUE")
        parsed[key] = value
    return parsed


def each(names: list[str], action: Any) -> None:
    """Apply ``action`` to every name, report each failure, and fail at the end (as Docker)."""
    failed = False
    for name in names:
        try:
            action(name)
            out.print(name)
        except TetherError as exc:
            sys.stderr.write(f"Error: {exc}\n")
            failed = True
    if failed:
        raise typer.Exit(1)


def warn_lagging(lagging: list[str] | None) -> None:
    if lagging:
        sys.stderr.write(
            f"Warning: not yet programmed on {', '.join(lagging)}: "
            "the endpoint may be unreachable from there for a moment\n"
        )


