"""What shows state: ``ps``, ``inspect``, ``network ls``, ``network inspect``, ``node ls``:
the Typer commands. How records print is ``output.py``; the bodies of the hot verbs are
``verbs.py``, shared with the fast path (``fast.py``). ``--filter`` is Docker's (``filters.py``).
"""

from __future__ import annotations

import typer

from . import verbs
from .common import CTX, app, network_app, node_app
from .filters import CONTAINER_FILTERS, NETWORK_FILTERS
from .output import Output, node_rows

__all__: list[str] = []

FORMAT_HELP = "table, json, 'table TEMPLATE' or a Go template such as '{{.name}}' (keys as in json)."
FILTER_HELP = "Filter KEY=VALUE ({}); repeatable."


@app.command()
def ps(
    all_: bool = typer.Option(False, "-a", "--all", help="Show exited containers too."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Only the IDs."),
    no_trunc: bool = typer.Option(False, "--no-trunc", help="Do not shorten IDs and commands."),
    filter_: list[str] = typer.Option(
        None, "-f", "--filter", help=FILTER_HELP.format(", ".join(CONTAINER_FILTERS))
    ),
    fmt: str = typer.Option("table", "--format", help=FORMAT_HELP),
) -> None:
    """List containers."""
    verbs.list_containers(all_, quiet, no_trunc, filter_, fmt)


@app.command()
def inspect(
    names: list[str],
    fmt: str = typer.Option("json", "-f", "--format", help="json or a Go template such as '{{.name}}'."),
) -> None:
    """Show containers as JSON (networks, addresses, MACs, netns path, pid)."""
    verbs.inspect_containers(names, fmt)


@network_app.command("ls")
def network_ls(
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Only the IDs."),
    no_trunc: bool = typer.Option(False, "--no-trunc", help="Do not shorten IDs."),
    filter_: list[str] = typer.Option(None, "-f", "--filter", help=FILTER_HELP.format(", ".join(NETWORK_FILTERS))),
    fmt: str = typer.Option("table", "--format", help=FORMAT_HELP),
) -> None:
    """List networks."""
    verbs.list_networks(quiet, no_trunc, filter_, fmt)


@network_app.command("inspect")
def network_inspect(
    names: list[str],
    fmt: str = typer.Option("json", "-f", "--format", help="json or a Go template such as '{{.subnet}}'."),
) -> None:
    """Show networks as JSON."""
    verbs.inspect_networks(names, fmt)


@node_app.command("ls")
def node_ls(fmt: str = typer.Option("table", "--format", help=FORMAT_HELP)) -> None:
    """List the hosts of the cluster and whether each is up."""
    output = Output(fmt, node_rows)
    output.emit(CTX.client().get("/nodes"))
