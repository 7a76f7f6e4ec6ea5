"""The one error tree of tether; every user-facing message is written here.

    TetherError                 any failure tether reports (exit 1, one line, no traceback)
    ├── InvalidInput            the request is malformed: bad CIDR, bad name, bad flag  (HTTP 400)
    ├── NotFound                an unknown network or container                         (HTTP 404)
    ├── Conflict                a taken name, an overlapping subnet, an address in use,
    │                           a network still in use                                  (HTTP 409)
    ├── Exhausted               no free address left in a subnet or pool                (HTTP 507)
    ├── DaemonUnavailable       the CLI could not reach or start a daemon               (exit 1)
    └── SystemFailure           the kernel or the store refused an operation            (HTTP 500)
        ├── DatapathError       netlink (pyroute2) failed
        ├── StoreError          the state store failed
        └── RuntimeFailure      a container process could not be started or signalled

Lower-layer exceptions (NetlinkError, OSError, sqlite3.Error) are mapped once, where
they cross into tether (``raise DatapathError(...) from exc``); front ends map this tree
to HTTP status codes (daemon) and to one stderr line plus exit status (CLI).
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
    kind = "TetherError"

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
