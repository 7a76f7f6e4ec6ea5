"""The Store interface: the narrow key/value contract every backend keeps.

Modelled on etcd v3 so the etcd backend is a thin mapping: keys are '/'-separated
strings, values are JSON-able dicts, every change bumps one global revision, and a
key carries the revision that last modified it (``mod_revision``). ``compare_and_swap``
is the only primitive needed for safe concurrent allocation (IPAM, VNIs): it writes
only if the key's mod_revision is still what the caller saw (0 = must not exist).
"""

from __future__ import annotations

import abc
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Store", "KeyValue", "WatchEvent", "encode_value"]


def encode_value(key: str, value: dict[str, Any]) -> str:
    """``value`` as the compact JSON text every backend stores for ``key``.

    One encoding for all backends, so each returns the same copies and conversions
    (tuples come back as lists). TypeError if ``value`` is not a dict; json's TypeError or
    ValueError if it is not JSON-able.
    """
    if not isinstance(value, dict):
        raise TypeError(f"store value for {key} must be a dict, not {type(value).__name__}")
    return json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: dict[str, Any]
    mod_revision: int


@dataclass(frozen=True)
class WatchEvent:
    type: str  # "put" | "delete"
    key: str
    value: dict[str, Any] | None
    revision: int


class Store(abc.ABC):
    """A revisioned key/value store. Safe to share between threads and processes."""

    @abc.abstractmethod
    def get(self, key: str) -> KeyValue | None:
        """The value at ``key``, or None."""

    @abc.abstractmethod
    def put(self, key: str, value: dict[str, Any]) -> int:
        """Write unconditionally; returns the new revision."""

    @abc.abstractmethod
    def compare_and_swap(self, key: str, expected_revision: int, value: dict[str, Any] | None) -> bool:
        """Write ``value`` (or delete, when None) only if the key's mod_revision equals
        ``expected_revision`` (0 means the key must not exist). True when written."""

    @abc.abstractmethod
    def delete(self, key: str) -> bool:
        """Delete ``key``; True if it existed. Idempotent."""

    @abc.abstractmethod
    def list(self, prefix: str) -> list[KeyValue]:
        """Every key starting with ``prefix``, sorted by key."""

    @abc.abstractmethod
    def revision(self) -> int:
        """The store's current revision."""

    @abc.abstractmethod
    def watch(self, prefix: str, start_revision: int, timeout: float | None = None) -> Iterator[WatchEvent]:
        """Events on keys under ``prefix`` with revision >= ``start_revision``, in order.
        Blocks for new events; stops after ``timeout`` seconds without one (None: never)."""

    def close(self) -> None:
        """Release connections."""
