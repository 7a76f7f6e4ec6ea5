"""State stores: the Store interface and its backends (SQLite embedded; etcd multi-host).

``EtcdStore`` is imported on first use (``tether.store.EtcdStore``), so that importing
this package, which every CLI call and CNI invocation does, never loads gRPC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import KeyValue, Store, WatchEvent
from .sqlite import SqliteStore

if TYPE_CHECKING:
    from .etcd import EtcdStore

__all__ = ["EtcdStore", "KeyValue", "SqliteStore", "Store", "WatchEvent"]


def __getattr__(name: str) -> Any:
    if name == "EtcdStore":
        from .etcd import EtcdStore

        return EtcdStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
