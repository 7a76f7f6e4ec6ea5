"""A container's lifecycle after ``run``: ``logs``, ``start``, ``stop``, ``restart``, ``rm``
(and the shim's ``reap``). Each takes names, full IDs or unique ID prefixes, as Docker's."""

from __future__ import annotations

import sys
import time

import typer

from ..api.client import Client, q
from ..errors import TetherError
from ..validate import parse_seconds
from .common import CTX, app, each, warn_lagging

__all__: list[str] = []


@app.command()
def logs(
    name: str,
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new output until the container exits."),
    tail: str = typer.Option("all", "-n", "--tail", metavar="N", help="Only the last N lines (default: all)."),
    timestamps: bool = typer.Option(False, "-t", "--timestamps", help="Put the time each line came before it."),
) -> None:
    """Print the output of a detached container."""
    if tail != "all" and not (tail.isascii() and tail.isdigit()):
        raise typer.BadParameter(f"{tail!r}: give a number of lines or all", param_hint="--tail")
    client = CTX.client()
    query = f"/containers/{q(name)}/logs?timestamps={int(timestamps)}"
    reply = client.get(query + ("" if tail == "all" else f"&tail={int(tail)}"))
    while True:
        sys.stdout.write(reply["log"])
        sys.stdout.flush()
        if not reply["more"] and not (follow and reply["running"]):
            return
        if not reply["more"]:
            time.sleep(_FOLLOW_POLL)
        reply = client.get(f"{query}&since={reply['offset']}")


_FOLLOW_POLL = 0.1  # seconds between two reads of a followed log


@app.command()
def start(names: list[str]) -> None:
    """Start exited containers again: their networks, addresses (--ip), ports and names come back."""
    client = CTX.client()
    each(names, lambda n: warn_lagging(client.post(f"/containers/{q(n)}/start").get("lagging")))


@app.command()
def restart(
    names: list[str], time_: str = typer.Option("10", "-t", "--time", help="Seconds to wait before SIGKILL.")
) -> None:
    """Stop (SIGTERM, then SIGKILL) and start containers again; exited ones are only started."""
    timeout = parse_seconds("-t", time_)
    client = CTX.client()
    each(names, lambda n: warn_lagging(client.post(f"/containers/{q(n)}/restart", {"timeout": timeout}).get("lagging")))


@app.command()
def stop(
    names: list[str], time_: str = typer.Option("10", "-t", "--time", help="Seconds to wait before SIGKILL.")
) -> None:
    """Stop running containers (SIGTERM, then SIGKILL); their addresses and ports are free until `start`."""
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


