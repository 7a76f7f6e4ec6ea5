"""The ``tether`` command: a thin Typer front end over the daemon API, a module per noun.

    common.py      the apps, the console, the daemon client, output and error helpers
    networks.py    network create/ls/inspect/rm/connect/disconnect/prune, node ls
    containers.py  run, ps, inspect, exec, logs, stop, rm
    admin.py       daemon, demo, lab
"""

from __future__ import annotations

import sys

from ..errors import TetherError
from . import admin, containers, networks  # noqa: F401  (they register their commands)
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
