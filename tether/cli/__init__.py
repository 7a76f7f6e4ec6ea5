"""The ``tether`` command: a thin front end over the daemon API, a module per noun.

    common.py      the Typer apps, the console, output and error helpers
    context.py     the daemon a command talks to (``CTX``) and plain output, without Typer
    fast.py        the hot verbs' command lines, parsed without Typer (the fast path)
    verbs.py       the hot verbs' bodies, shared by both paths
    output.py      how records print: tables, --format json and templates
    full.py        the whole Typer command tree and its error handling
    run.py         run, exec
    containers.py  logs, stop, rm
    listing.py     ps, inspect, network ls, network inspect, node ls
    networks.py    network create, rm, connect, disconnect, prune
    admin.py       daemon, demo, lab, version, info
    events.py      events
    graph.py       graph
    trace.py       trace

Importing this package is cheap: Typer and the command modules load when the full CLI
runs, or when ``app`` or ``cli_command`` is first asked for (``from tether.cli import app``).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["app", "main"]

# what `from tether.cli import NAME` finds in the full CLI (imported on first use)
_FULL = ("app", "cli_command", "click_errors", "usage_error_text")


def main(args: list[str] | None = None) -> None:
    """Run one command line and exit with its status: 0, a command's own code, 1 for an
    error the daemon or the system reported, 2 for a usage error; each error in one line
    (a usage error adds a second, pointing at the command's help).

    A hot verb runs on the fast path (``fast.py``) unless ``TETHER_FULL_CLI`` is set;
    everything else, and anything the fast path does not fully understand, goes to the
    Typer CLI (``full.py``)."""
    argv = sys.argv[1:] if args is None else list(args)
    if not os.environ.get("TETHER_FULL_CLI"):
        from .fast import run_fast

        code = run_fast(argv)
        if code is not None:
            sys.exit(code)
    from .full import run_full

    sys.exit(run_full(argv))


def __getattr__(name: str) -> Any:
    if name in _FULL:
        from . import full

        return getattr(full, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
