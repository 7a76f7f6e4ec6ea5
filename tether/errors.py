"""The one error tree of tether, and how each error leaves a front end.

    TetherError                 any failure tether reports: one line, no traceback      (HTTP 500)
    ├── InvalidInput            the request is malformed: bad CIDR, bad name, bad flag  (HTTP 400)
    ├── NotFound                an unknown network or container                         (HTTP 404)
    ├── Conflict                a taken name, an overlapping subnet, an address in use,
    │                           a network still in use                                  (HTTP 409)
    ├── Exhausted               no free address left in a subnet or pool                (HTTP 507)
    ├── DaemonUnavailable       the client could not reach or start a daemon, or could
    │                           not read its reply (raised client-side)                 (HTTP 503)
    └── SystemFailure           the kernel or the store refused an operation            (HTTP 500)
        ├── DatapathError       netlink (pyroute2) failed
        ├── StoreError          the state store failed
        └── RuntimeFailure      a container process could not be started or signalled

This module owns the tree and its mapping to HTTP status (``http_status``, which the
daemon's API sends with ``to_wire()``: ``{"error": message, "kind": class name}``) and,
through the CLI, to exit codes. The CLI prints ``Error: <message>`` on stderr and exits 1
for every error in the tree, DaemonUnavailable included. The CNI plugin maps the tree
onto CNI error codes itself (DaemonUnavailable: 11, "try again later").

Messages are written where the error is raised, not here: one line saying what is wrong
and how to fix it. Lower-layer exceptions (NetlinkError, OSError, sqlite3.Error) are
mapped once, where they cross into tether (``raise DatapathError(...) from exc``).
"""

from __future__ import annotations

__all__ = [
    "TetherError",
    "InvalidInput",
    "NotFound",
    "Conflict",
    "Exhausted",
    "DaemonUnavailable",
    "SystemFailure",
    "DatapathError",
    "StoreError",
    "RuntimeFailure",
    "error_from_wire",
]


class TetherError(Exception):
    """Base of every error tether raises on purpose. ``str(e)`` is the one-line message."""

    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_wire(self) -> dict[str, str]:
        return {"error": self.message, "kind": type(self).__name__}


class InvalidInput(TetherError):
    http_status = 400


class NotFound(TetherError):
    http_status = 404


class Conflict(TetherError):
    http_status = 409


class Exhausted(TetherError):
    http_status = 507


class DaemonUnavailable(TetherError):
    """The client found no daemon, could not start one, or could not read its reply.

    Raised by the client, so the CLI reports it like any error (exit 1); a daemon never
    raises it itself, but would send it as HTTP 503 (Service Unavailable).
    """

    http_status = 503


class SystemFailure(TetherError):
    http_status = 500


class DatapathError(SystemFailure):
    pass


class StoreError(SystemFailure):
    pass


class RuntimeFailure(SystemFailure):
    pass


_KINDS: dict[str, type[TetherError]] = {
    cls.__name__: cls
    for cls in (
        TetherError,
        InvalidInput,
        NotFound,
        Conflict,
        Exhausted,
        DaemonUnavailable,
        SystemFailure,
        DatapathError,
        StoreError,
        RuntimeFailure,
    )
}


def error_from_wire(body: dict[str, str]) -> TetherError:
    """Rebuild the error a daemon sent (``to_wire``) on the client side."""
    cls = _KINDS.get(body.get("kind", ""), TetherError)
    return cls(body.get("error", "unknown error"))
