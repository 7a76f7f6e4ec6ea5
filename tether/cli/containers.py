"""A container's lifecycle after ``run``: ``logs``, ``stop``, ``rm`` (and the shim's ``reap``)."""

from __future__ import annotations

import sys

import typer

from ..api.client import Client, q
from ..errors import TetherError
from ..validate import parse_seconds
from .common import CTX, app, each

__all__: list[str] = []


@app.command()
def logs(name: str) -> None:
    """Print the output of a detached container."""
    sys.stdout.write(CTX.client().get(f"/containers/{q(name)}/logs")["log"])


@app.command()
def stop(
    names: list[str], time_: str = typer.Option("10", "-t", "--time", help="Seconds to wait before SIGKILL.")
) -> None:
    """Stop running containers (SIGTERM, then SIGKILL)."""
    timeout = parse_seconds("-t", time_)
    client = CTX.client()
    each(names, lambda n: client.post(f"/containers/{q(n)}/stop", {"timeout": timeout}))


@app.command()
def rm(names: list[str], force: bool = typer.Option(False, "-f", "--force", help="Kill it if running.")) -> None:
    """Remove containers."""
    client = CTX.client()
    each(names, lambda n: client.delete(f"/containers/{q(n)}" + ("?force=1" if force else "")))


@app.command(hidden=True)
def reap(container_id: str) -> None:
    """Called by a detached --rm container's shim when it exits."""
    try:
        Client(CTX.socket).post(f"/containers/reap/{q(container_id)}")
    except TetherError:
        pass  # the daemon's reaper or its next start will do it


