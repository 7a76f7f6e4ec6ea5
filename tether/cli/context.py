"""What a ``tether`` command knows before it runs, and writes without Typer: which daemon
it talks to (``CTX``: socket and state dir, set from the global options) and the plain
output helpers the commands share.

It imports neither Typer, Click nor Rich (nor ``json`` until JSON is printed): the hot
verbs (``fast.py``) run on it alone; ``common.py`` re-exports it for the Typer side.
"""

from __future__ import annotations

import os
import sys

from ..api.client import Client

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["CTX", "Ctx", "print_json", "warn_lagging"]


class Ctx:
    socket: str
    state_dir: str

    def client(self, autostart: bool = True, at_first_request: bool = False) -> Client:
        """The daemon's client; with ``autostart`` (unless $TETHER_NO_AUTOSTART) a daemon
        is started if none answers: now, or ``at_first_request`` if that finds none (no
        ``/ping`` first: for a verb that only sends requests)."""
        if not autostart or os.environ.get("TETHER_NO_AUTOSTART"):
            return Client(self.socket)
        if at_first_request:
            return Client(self.socket, start_daemon_in=self.state_dir)
        client = Client(self.socket)
        client.ensure_daemon(self.state_dir)
        return client


CTX = Ctx()


def print_json(data: Any) -> None:
    # json.dumps(data, indent=2, sort_keys=True) without importing json (and re): wirejson
    from .. import wirejson

    sys.stdout.write(wirejson.dumps_indented(data) + "\n")


def warn_lagging(lagging: list[str] | None) -> None:
    if lagging:
        sys.stderr.write(
            f"Warning: not yet programmed on {', '.join(lagging)}: "
            "the endpoint may be unreachable from there for a moment\n"
        )
