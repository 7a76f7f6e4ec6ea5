"""State stores: the Store interface and its backends (SQLite embedded; etcd multi-host)."""

from __future__ import annotations

from .base import KeyValue, Store, WatchEvent
from .sqlite import SqliteStore

__all__ = ["KeyValue", "SqliteStore", "Store", "WatchEvent"]
