"""MemoryStore: an in-process Store with the same semantics as SqliteStore, for tests.

Design note. Values are kept as JSON text, exactly as SqliteStore keeps them, so a test
sees the same copies and the same conversions (tuples come back as lists, a value that
is not JSON fails on write). One lock guards everything; a Condition on it wakes
watchers. The changelog keeps the last ``keep_changes`` revisions and a watch that
starts before them raises StoreError, as SqliteStore does.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from itertools import islice
from typing import Any

from ..errors import InvalidInput, StoreError
from ..store.base import KeyValue, Store, WatchEvent, encode_value

__all__ = ["MemoryStore"]

DEFAULT_KEEP_CHANGES = 10_000

_Events = list[WatchEvent]  # an alias: inside MemoryStore, `list` is the method


class MemoryStore(Store):
    """A thread-safe Store in a dict. Not shared between processes."""

    def __init__(self, *, keep_changes: int = DEFAULT_KEEP_CHANGES) -> None:
        if keep_changes < 1:
            raise InvalidInput(f"keep_changes must be at least 1, not {keep_changes}")
        self.keep_changes = keep_changes
        self._changed = threading.Condition()
        self._data: dict[str, tuple[str, int]] = {}  # key -> (JSON, mod_revision)
        self._revision = 0
        # (revision, type, key, JSON or None); revisions are consecutive.
        self._log: deque[tuple[int, str, str, str | None]] = deque(maxlen=keep_changes)

    def _record(self, type_: str, key: str, encoded: str | None) -> int:
        """Bump the revision and apply the change; call with the lock held."""
        self._revision += 1
        if encoded is None:
            del self._data[key]
        else:
            self._data[key] = (encoded, self._revision)
        self._log.append((self._revision, type_, key, encoded))
        self._changed.notify_all()
        return self._revision

    def get(self, key: str) -> KeyValue | None:
        with self._changed:
            entry = self._data.get(key)
        return None if entry is None else KeyValue(key, json.loads(entry[0]), entry[1])

    def put(self, key: str, value: dict[str, Any]) -> int:
        encoded = encode_value(key, value)
        with self._changed:
            return self._record("put", key, encoded)

    def compare_and_swap(self, key: str, expected_revision: int, value: dict[str, Any] | None) -> bool:
        encoded = None if value is None else encode_value(key, value)
        with self._changed:
            entry = self._data.get(key)
            current = 0 if entry is None else entry[1]
            if current != expected_revision:
                return False
            if encoded is not None:
                self._record("put", key, encoded)
            elif entry is not None:
                self._record("delete", key, None)
            # Deleting an absent key that was expected absent succeeds without a revision.
            return True

    def delete(self, key: str) -> bool:
        with self._changed:
            if key not in self._data:
                return False
            self._record("delete", key, None)
            return True

    def list(self, prefix: str) -> list[KeyValue]:
        with self._changed:
            items = [(k, v, r) for k, (v, r) in self._data.items() if k.startswith(prefix)]
        return [KeyValue(k, json.loads(v), r) for k, v, r in sorted(items)]

    def revision(self) -> int:
        with self._changed:
            return self._revision

    def _poll(self, prefix: str, cursor: int) -> tuple[_Events, int]:
        """Events at or after ``cursor``; call with the lock held."""
        compacted = self._log[0][0] - 1 if self._log else self._revision
        if cursor <= compacted:
            raise StoreError(
                f"watch from revision {cursor} is too old: the state store keeps changes "
                f"after revision {compacted} only; list the keys again and watch from there"
            )
        events: _Events = []
        if self._log and cursor <= self._revision:
            start = cursor - self._log[0][0]
            for revision, type_, key, encoded in islice(self._log, start, None):
                if key.startswith(prefix):
                    value = None if encoded is None else json.loads(encoded)
                    events.append(WatchEvent(type_, key, value, revision))
        return events, max(cursor, self._revision + 1)

    def watch(self, prefix: str, start_revision: int, timeout: float | None = None) -> Iterator[WatchEvent]:
        cursor = max(start_revision, 1)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._changed:
                events, cursor = self._poll(prefix, cursor)
                if not events:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return
                    seen = self._revision
                    self._changed.wait_for(lambda: self._revision != seen, timeout=remaining)  # noqa: B023
                    continue
            yield from events  # outside the lock: the consumer may write to the store
            if timeout is not None:
                deadline = time.monotonic() + timeout

    def __repr__(self) -> str:
        return f"MemoryStore(revision={self._revision}, keys={len(self._data)})"
