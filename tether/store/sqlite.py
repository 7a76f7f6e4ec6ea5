"""SqliteStore: the embedded, single-host Store backend, one SQLite file shared by every
tether process on the host (daemon, CLI fallbacks, CNI plugin invocations).

Design note. Three tables: ``kv`` (key, JSON value, mod_revision), ``meta`` (the one
global revision counter) and ``changelog`` (one row per revision, which feeds ``watch``).
Every write runs in its own ``BEGIN IMMEDIATE`` transaction: it bumps the counter, changes
``kv`` and appends to ``changelog`` atomically. IMMEDIATE takes the write lock up front;
a deferred ``BEGIN`` that later upgrades to a writer fails with "database is locked"
under concurrency and ``busy_timeout`` does not rescue it (measured: 759 of 1000
allocations failed). Even IMMEDIATE can report the lock as busy, so every operation is
retried with a short, jittered backoff before it is reported as a StoreError.

WAL mode lets readers run beside the one writer. ``synchronous=NORMAL`` keeps the file
consistent after a crash; on power loss only the last commits may roll back, and the
containers they describe are gone after a power loss as well.

Connections: one per thread (``threading.local``), so reads in different threads never
wait on a Python lock; a connection opened before ``fork`` is never used (or closed) in
the child. ``watch`` polls the changelog, and is woken at once by writes made through the
same SqliteStore object. The changelog keeps the last ``keep_changes`` revisions; a
watch that starts before them raises StoreError, as a compacted etcd watch does, and
the caller resyncs from a fresh ``list``.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ..errors import InvalidInput, StoreError
from .base import KeyValue, Store, WatchEvent, encode_value

__all__ = ["SqliteStore"]

T = TypeVar("T")

DEFAULT_KEEP_CHANGES = 10_000
_LOCK_PATIENCE = 15.0  # seconds of "database is locked" before giving up
_BUSY_TIMEOUT = 2.0  # SQLite's own busy handler, per attempt
_POLL_MIN = 0.002  # watch poll interval: starts short, backs off while idle
_POLL_MAX = 0.05

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    mod_revision INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changelog (
    revision INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT
);
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0);
"""

# Connections inherited through fork belong to the parent: the child must neither use
# nor close them (closing could checkpoint or unlink the parent's WAL), so they are
# parked here for the life of the child.
_INHERITED: list[sqlite3.Connection] = []


class _Connection:
    """A connection and the process that opened it (weak-referenceable, unlike sqlite3's)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.pid = os.getpid()


def _prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (None: no
    bound). SQLite compares TEXT as UTF-8 bytes, which orders like code points."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if code == 0xD800:  # surrogates cannot be encoded; skip past them
            code = 0xE000
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


def _prefix_clause(prefix: str) -> tuple[str, tuple[str, ...]]:
    end = _prefix_end(prefix)
    if end is None:
        return "key >= ?", (prefix,)
    return "key >= ? AND key < ?", (prefix, end)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class SqliteStore(Store):
    """A Store in one SQLite file. Safe from many threads and several processes at once."""

    def __init__(self, path: str, *, keep_changes: int = DEFAULT_KEEP_CHANGES) -> None:
        if not path or path == ":memory:" or path.startswith("file:"):
            raise InvalidInput(
                f"SqliteStore needs a file path, not {path!r}: use tether.testing.MemoryStore "
                "for an in-process store"
            )
        if keep_changes < 1:
            raise InvalidInput(f"keep_changes must be at least 1, not {keep_changes}")
        self.path = path
        self.keep_changes = keep_changes
        self._local = threading.local()
        self._connections: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._connections_lock = threading.Lock()
        self._closed = False
        # Wakes watchers in this process as soon as a write through this object commits;
        # writes from other processes or objects are seen by polling.
        self._wake = threading.Condition()
        self._writes = 0
        parent = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the directory of state store {path}: {exc}") from exc
        self._retrying(self._create_schema, write=False, transaction=False)

    # -- connections and transactions -------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"state store {self.path} is closed")
        holder: _Connection | None = getattr(self._local, "connection", None)
        if holder is not None and holder.pid == os.getpid():
            return holder.db
        if holder is not None:
            _INHERITED.append(holder.db)
        db = sqlite3.connect(
            self.path,
            timeout=_BUSY_TIMEOUT,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,  # only so close() may close it from another thread
        )
        holder = _Connection(db)
        self._local.connection = holder
        with self._connections_lock:
            self._connections.add(holder)
        try:
            db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error:
            self._local.connection = None
            db.close()
            raise
        return db

    def _create_schema(self, db: sqlite3.Connection) -> None:
        # journal_mode cannot change inside a transaction; it is persistent in the file.
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise

    def _retrying(
        self,
        action: Callable[[sqlite3.Connection], T],
        *,
        write: bool,
        transaction: bool = True,
    ) -> T:
        """Run ``action`` in a transaction (IMMEDIATE for writes), retrying while the
        database is locked by another connection; map sqlite3 errors to StoreError."""
        deadline = time.monotonic() + _LOCK_PATIENCE
        delay = 0.001
        while True:
            try:
                db = self._connection()
                if not transaction:
                    return action(db)
                db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    result = action(db)
                    db.execute("COMMIT")
                except BaseException:
                    _rollback(db)
                    raise
                return result
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise StoreError(f"state store {self.path} failed: {exc}") from exc
                if time.monotonic() >= deadline:
                    raise StoreError(
                        f"state store {self.path} stayed locked for {_LOCK_PATIENCE:.0f} s: "
                        f"another process may hang holding it (see `fuser {self.path}`)"
                    ) from exc
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 0.05)
            except sqlite3.Error as exc:
                raise StoreError(f"state store {self.path} failed: {exc}") from exc

    def _write(self, action: Callable[[sqlite3.Connection], T]) -> T:
        result = self._retrying(action, write=True)
        with self._wake:
            self._writes += 1
            self._wake.notify_all()
        return result

    def _record(self, db: sqlite3.Connection, type_: str, key: str, value: str | None) -> int:
        """Bump the revision and append the change; call inside a write transaction."""
        revision: int = db.execute(
            "UPDATE meta SET value = value + 1 WHERE name = 'revision' RETURNING value"
        ).fetchone()[0]
        db.execute(
            "INSERT INTO changelog (revision, type, key, value) VALUES (?, ?, ?, ?)",
            (revision, type_, key, value),
        )
        if revision > self.keep_changes:
            db.execute("DELETE FROM changelog WHERE revision <= ?", (revision - self.keep_changes,))
        return revision

    def _set(self, db: sqlite3.Connection, key: str, encoded: str) -> int:
        revision = self._record(db, "put", key, encoded)
        db.execute(
            "INSERT INTO kv (key, value, mod_revision) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
            "mod_revision = excluded.mod_revision",
            (key, encoded, revision),
        )
        return revision

    def _remove(self, db: sqlite3.Connection, key: str) -> int:
        revision = self._record(db, "delete", key, None)
        db.execute("DELETE FROM kv WHERE key = ?", (key,))
        return revision

    def _decode(self, key: str, raw: str) -> dict[str, Any]:
        """A record's JSON; a corrupt one is refused naming its key, never a traceback."""
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise StoreError(
                f"state store {self.path} has a corrupt record at {key!r}: restore the file from a backup, "
                f"or delete that record (sqlite3 {self.path} \"DELETE FROM kv WHERE key='{key}'\") and restart"
            )
        return value

    # -- the Store interface ------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        def read(db: sqlite3.Connection) -> KeyValue | None:
            row = db.execute("SELECT value, mod_revision FROM kv WHERE key = ?", (key,)).fetchone()
            return None if row is None else KeyValue(key, self._decode(key, row[0]), row[1])

        return self._retrying(read, write=False, transaction=False)

    def put(self, key: str, value: dict[str, Any]) -> int:
        encoded = encode_value(key, value)
        return self._write(lambda db: self._set(db, key, encoded))

    def compare_and_swap(self, key: str, expected_revision: int, value: dict[str, Any] | None) -> bool:
        encoded = None if value is None else encode_value(key, value)

        def swap(db: sqlite3.Connection) -> bool:
            row = db.execute("SELECT mod_revision FROM kv WHERE key = ?", (key,)).fetchone()
            current = 0 if row is None else row[0]
            if current != expected_revision:
                return False
            if encoded is not None:
                self._set(db, key, encoded)
            elif row is not None:
                self._remove(db, key)
            # Deleting an absent key that was expected absent succeeds without a revision.
            return True

        return self._write(swap)

    def delete(self, key: str) -> bool:
        def remove(db: sqlite3.Connection) -> bool:
            row = db.execute("SELECT 1 FROM kv WHERE key = ?", (key,)).fetchone()
            if row is None:
                return False
            self._remove(db, key)
            return True

        return self._write(remove)

    def list(self, prefix: str) -> list[KeyValue]:
        clause, params = _prefix_clause(prefix)

        def read(db: sqlite3.Connection) -> list[KeyValue]:
            rows = db.execute(
                f"SELECT key, value, mod_revision FROM kv WHERE {clause} ORDER BY key", params
            ).fetchall()
            return [KeyValue(k, self._decode(k, v), r) for k, v, r in rows]

        return self._retrying(read, write=False, transaction=False)

    def revision(self) -> int:
        def read(db: sqlite3.Connection) -> int:
            return int(db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0])

        return self._retrying(read, write=False, transaction=False)

    def watch(self, prefix: str, start_revision: int, timeout: float | None = None) -> Iterator[WatchEvent]:
        clause, params = _prefix_clause(prefix)
        query = (
            f"SELECT revision, type, key, value FROM changelog "
            f"WHERE revision >= ? AND revision <= ? AND {clause} ORDER BY revision"
        )

        def poll(db: sqlite3.Connection, cursor: int) -> tuple[list[WatchEvent], int]:
            # One read transaction: the counter, the oldest kept change and the rows
            # come from the same snapshot.
            current = int(db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0])
            oldest = db.execute("SELECT MIN(revision) FROM changelog").fetchone()[0]
            compacted = current if oldest is None else oldest - 1
            if cursor <= compacted:
                raise StoreError(
                    f"watch from revision {cursor} is too old: the state store keeps changes "
                    f"after revision {compacted} only; list the keys again and watch from there"
                )
            rows = db.execute(query, (cursor, current, *params)).fetchall()
            events = [WatchEvent(t, k, None if v is None else self._decode(k, v), r) for r, t, k, v in rows]
            return events, max(cursor, current + 1)

        cursor = max(start_revision, 1)
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = _POLL_MIN
        while True:
            with self._wake:
                seen_writes = self._writes
            events, cursor = self._retrying(lambda db: poll(db, cursor), write=False)  # noqa: B023
            if events:
                yield from events
                if timeout is not None:
                    deadline = time.monotonic() + timeout
                interval = _POLL_MIN
                continue
            wait = interval
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                wait = min(wait, remaining)
            with self._wake:
                self._wake.wait_for(lambda: self._writes != seen_writes, timeout=wait)  # noqa: B023
            interval = min(interval * 2, _POLL_MAX)

    def close(self) -> None:
        self._closed = True
        with self._connections_lock:
            holders = list(self._connections)
            self._connections.clear()
        for holder in holders:
            if holder.pid == os.getpid():
                holder.db.close()

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"


def _rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the original error is the one worth reporting
