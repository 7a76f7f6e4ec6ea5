"""The ``tether`` command: a thin Typer front end over the daemon API, a module per noun.

    common.py      the apps, the console, the daemon client, output and error helpers
    run.py         run, exec
    containers.py  logs, stop, rm
    listing.py     ps, inspect, network ls, network inspect, node ls
    networks.py    network create, rm, connect, disconnect, prune
    admin.py       daemon, demo, lab
"""

from __future__ import annotations

import sys

from ..errors import TetherError
from . import admin, containers, listing, networks, run  # noqa: F401  (they register their commands)
from .common import app

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except TetherError as exc:
        sys.stderr.write(f"Error: {exc}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
