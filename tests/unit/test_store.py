"""The Store contract, run against every backend: SqliteStore and the MemoryStore fake."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tether.errors import StoreError
from tether.store import KeyValue, SqliteStore, Store, WatchEvent
from tether.testing import MemoryStore


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    backend: Store = SqliteStore(str(tmp_path / "state.db")) if request.param == "sqlite" else MemoryStore()
    yield backend
    backend.close()


def make_store(kind: str, tmp_path: Path, **options: Any) -> Store:
    if kind == "sqlite":
        return SqliteStore(str(tmp_path / "state.db"), **options)
    return MemoryStore(**options)


# -- get / put / delete / list ----------------------------------------------------------


def test_get_missing_is_none(store: Store) -> None:
    assert store.get("/nothing") is None
    assert store.revision() == 0


def test_put_then_get_round_trips_json(store: Store) -> None:
    revision = store.put("/a", {"n": 1, "list": (1, 2), "nested": {"x": None}})
    kv = store.get("/a")
    assert kv == KeyValue("/a", {"n": 1, "list": [1, 2], "nested": {"x": None}}, revision)


def test_values_are_copies(store: Store) -> None:
    value = {"owner": "a"}
    store.put("/k", value)
    value["owner"] = "changed"
    got = store.get("/k")
    assert got is not None and got.value == {"owner": "a"}
    got.value["owner"] = "changed again"
    again = store.get("/k")
    assert again is not None and again.value == {"owner": "a"}


def test_non_json_values_are_refused(store: Store) -> None:
    with pytest.raises(TypeError):
        store.put("/k", {"x": object()})
    with pytest.raises(TypeError):
        store.put("/k", ["not", "a", "dict"])  # type: ignore[arg-type]
    assert store.get("/k") is None
    assert store.revision() == 0


def test_put_overwrites_and_bumps_mod_revision(store: Store) -> None:
    first = store.put("/a", {"v": 1})
    second = store.put("/a", {"v": 2})
    assert second == first + 1
    assert store.get("/a") == KeyValue("/a", {"v": 2}, second)


def test_delete_is_idempotent(store: Store) -> None:
    store.put("/a", {})
    assert store.delete("/a") is True
    assert store.get("/a") is None
    revision = store.revision()
    assert store.delete("/a") is False
    assert store.revision() == revision  # deleting nothing changes nothing


def test_list_prefix_sorted_by_key(store: Store) -> None:
    for key in ["/net/b", "/net/a", "/netx/c", "/ne", "/net/a/deeper", "/other"]:
        store.put(key, {"key": key})
    assert [kv.key for kv in store.list("/net/")] == ["/net/a", "/net/a/deeper", "/net/b"]
    assert [kv.key for kv in store.list("/net")] == ["/net/a", "/net/a/deeper", "/net/b", "/netx/c"]
    assert [kv.key for kv in store.list("")] == sorted(
        ["/net/b", "/net/a", "/netx/c", "/ne", "/net/a/deeper", "/other"]
    )
    assert store.list("/missing/") == []
    assert all(kv.value == {"key": kv.key} for kv in store.list(""))


def test_list_prefix_with_unusual_characters(store: Store) -> None:
    keys = ["/p/%", "/p/_", "/p/\u00e9", "/p/\U0001f600", "/q"]
    for key in keys:
        store.put(key, {})
    assert [kv.key for kv in store.list("/p/")] == sorted(keys[:-1])
    assert [kv.key for kv in store.list("/p/\u00e9")] == ["/p/\u00e9"]


# -- compare_and_swap --------------------------------------------------------------------


def test_cas_zero_creates_only_when_absent(store: Store) -> None:
    assert store.compare_and_swap("/lease", 0, {"owner": "a"}) is True
    assert store.compare_and_swap("/lease", 0, {"owner": "b"}) is False
    kv = store.get("/lease")
    assert kv is not None and kv.value == {"owner": "a"}


def test_cas_refuses_stale_revision(store: Store) -> None:
    store.put("/k", {"v": 1})
    seen = store.get("/k")
    assert seen is not None
    store.put("/k", {"v": 2})
    assert store.compare_and_swap("/k", seen.mod_revision, {"v": 3}) is False
    current = store.get("/k")
    assert current is not None and current.value == {"v": 2}
    assert store.compare_and_swap("/k", current.mod_revision, {"v": 3}) is True
    final = store.get("/k")
    assert final is not None and final.value == {"v": 3}
    assert final.mod_revision == store.revision()


def test_cas_refuses_nonzero_revision_on_absent_key(store: Store) -> None:
    assert store.compare_and_swap("/absent", 5, {"v": 1}) is False
    assert store.get("/absent") is None


def test_cas_delete_with_none(store: Store) -> None:
    store.put("/k", {"v": 1})
    kv = store.get("/k")
    assert kv is not None
    assert store.compare_and_swap("/k", kv.mod_revision + 1, None) is False
    assert store.get("/k") is not None
    assert store.compare_and_swap("/k", kv.mod_revision, None) is True
    assert store.get("/k") is None
    revision = store.revision()
    # Expected absent and absent: the condition holds, nothing to write.
    assert store.compare_and_swap("/k", 0, None) is True
    assert store.revision() == revision


def test_failed_cas_does_not_bump_revision(store: Store) -> None:
    store.put("/k", {})
    revision = store.revision()
    assert store.compare_and_swap("/k", 0, {"v": 1}) is False
    assert store.revision() == revision


# -- revisions ---------------------------------------------------------------------------


def test_revision_is_global_and_monotonic(store: Store) -> None:
    seen = [store.revision()]
    seen.append(store.put("/a", {}))
    store.compare_and_swap("/b", 0, {})
    seen.append(store.revision())
    store.delete("/a")
    seen.append(store.revision())
    seen.append(store.put("/a", {}))
    assert seen == [0, 1, 2, 3, 4]
    a, b = store.get("/a"), store.get("/b")
    assert a is not None and b is not None
    assert (a.mod_revision, b.mod_revision) == (4, 2)


def test_concurrent_cas_from_threads(store: Store) -> None:
    """8 threads race for the same 200 keys: each key is won exactly once."""
    won: list[list[int]] = [[] for _ in range(8)]
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(index: int) -> None:
        try:
            start.wait()
            for n in range(200):
                if store.compare_and_swap(f"/race/{n:03d}", 0, {"owner": index}):
                    won[index].append(n)
        except BaseException as exc:  # noqa: BLE001  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    all_won = sorted(n for numbers in won for n in numbers)
    assert all_won == list(range(200))
    for kv in store.list("/race/"):
        assert int(kv.key.rsplit("/", 1)[1]) in won[kv.value["owner"]]
    assert store.revision() == 200


# -- watch -------------------------------------------------------------------------------


def test_watch_replays_from_start_revision_in_order(store: Store) -> None:
    store.put("/w/a", {"v": 1})
    start = store.put("/w/b", {"v": 2})
    store.put("/other", {"v": 0})
    store.delete("/w/a")
    store.put("/w/b", {"v": 3})
    events = list(store.watch("/w/", start, timeout=0.2))
    assert events == [
        WatchEvent("put", "/w/b", {"v": 2}, start),
        WatchEvent("delete", "/w/a", None, start + 2),
        WatchEvent("put", "/w/b", {"v": 3}, start + 3),
    ]


def test_watch_from_zero_means_from_the_beginning(store: Store) -> None:
    store.put("/w/a", {})
    assert [e.revision for e in store.watch("/w/", 0, timeout=0.05)] == [1]


def test_watch_times_out_without_events(store: Store) -> None:
    store.put("/w/old", {})
    began = time.monotonic()
    events = list(store.watch("/w/", store.revision() + 1, timeout=0.3))
    elapsed = time.monotonic() - began
    assert events == []
    assert 0.25 <= elapsed < 3.0


def test_watch_timeout_zero_drains_and_returns(store: Store) -> None:
    store.put("/w/a", {})
    store.put("/w/b", {})
    began = time.monotonic()
    assert [e.key for e in store.watch("/w/", 1, timeout=0)] == ["/w/a", "/w/b"]
    assert time.monotonic() - began < 1.0


def test_watch_blocks_until_a_write(store: Store) -> None:
    start = store.revision() + 1
    received: list[WatchEvent] = []
    ready = threading.Event()

    def consume() -> None:
        ready.set()
        for event in store.watch("/w/", start, timeout=5):
            received.append(event)
            if len(received) == 2:
                return

    thread = threading.Thread(target=consume)
    thread.start()
    ready.wait()
    time.sleep(0.1)
    store.put("/x/ignored", {})
    began = time.monotonic()
    store.put("/w/one", {"n": 1})
    store.delete("/w/one")
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert time.monotonic() - began < 1.0
    assert [(e.type, e.key, e.value) for e in received] == [
        ("put", "/w/one", {"n": 1}),
        ("delete", "/w/one", None),
    ]
    assert received[0].revision < received[1].revision


def test_watch_timeout_counts_from_the_last_event(store: Store) -> None:
    """The timeout is a quiet period, not a total: a steady trickle keeps the watch open."""
    start = store.revision() + 1

    def trickle() -> None:
        for n in range(5):
            time.sleep(0.15)
            store.put(f"/w/{n}", {})

    writer = threading.Thread(target=trickle)
    writer.start()
    events = list(store.watch("/w/", start, timeout=0.5))
    writer.join()
    assert [e.key for e in events] == [f"/w/{n}" for n in range(5)]


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_watch_from_a_compacted_revision_fails(kind: str, tmp_path: Path) -> None:
    store = make_store(kind, tmp_path, keep_changes=5)
    for n in range(12):
        store.put(f"/w/{n:02d}", {"n": n})
    with pytest.raises(StoreError, match="too old"):
        list(store.watch("/w/", 1, timeout=0))
    # The last five revisions are still there.
    assert [e.revision for e in store.watch("/w/", 8, timeout=0)] == [8, 9, 10, 11, 12]
    store.close()


def test_sqlite_changelog_is_trimmed(tmp_path: Path) -> None:
    import sqlite3

    store = SqliteStore(str(tmp_path / "state.db"), keep_changes=50)
    for n in range(300):
        store.put("/k", {"n": n})
    with sqlite3.connect(str(tmp_path / "state.db")) as db:
        rows = db.execute("SELECT COUNT(*), MIN(revision) FROM changelog").fetchone()
    assert rows == (50, 251)
    store.close()


# -- SQLite specifics --------------------------------------------------------------------


def test_sqlite_persists_across_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "sub" / "state.db")  # the directory is created
    first = SqliteStore(path)
    first.put("/a", {"v": 1})
    first.put("/b", {"v": 2})
    first.close()
    second = SqliteStore(path)
    assert second.revision() == 2
    assert [kv.key for kv in second.list("/")] == ["/a", "/b"]
    assert second.put("/c", {}) == 3
    second.close()


def test_sqlite_uses_wal(tmp_path: Path) -> None:
    import sqlite3

    SqliteStore(str(tmp_path / "state.db")).close()
    with sqlite3.connect(str(tmp_path / "state.db")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_watch_sees_writes_of_another_store_object(tmp_path: Path) -> None:
    """Writes from another connection (as from another process) are found by polling."""
    watcher = SqliteStore(str(tmp_path / "state.db"))
    writer = SqliteStore(str(tmp_path / "state.db"))
    start = watcher.revision() + 1
    timer = threading.Timer(0.2, lambda: writer.put("/w/x", {"from": "writer"}))
    timer.start()
    events = []
    for event in watcher.watch("/w/", start, timeout=3):
        events.append(event)
        break
    timer.join()
    assert events == [WatchEvent("put", "/w/x", {"from": "writer"}, start)]
    watcher.close()
    writer.close()


def test_sqlite_refuses_memory_path() -> None:
    from tether.errors import InvalidInput

    with pytest.raises(InvalidInput, match="MemoryStore"):
        SqliteStore(":memory:")


def test_sqlite_closed_store_raises(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "state.db"))
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get("/a")


def test_sqlite_reports_a_corrupt_file_as_store_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="state.db"):
        SqliteStore(str(path))


def test_sqlite_writes_take_the_write_lock_up_front(tmp_path: Path) -> None:
    """A deferred BEGIN that upgrades to a writer fails under concurrency (PLATFORM.md)."""
    store = SqliteStore(str(tmp_path / "state.db"))
    statements: list[str] = []
    store._connection().set_trace_callback(statements.append)
    store.put("/a", {})
    store.compare_and_swap("/b", 0, {})
    store.delete("/a")
    begins = [s for s in statements if s.upper().startswith("BEGIN")]
    assert begins == ["BEGIN IMMEDIATE"] * 3
    store.close()


def _hold_write_lock(path: str, seconds: float) -> threading.Thread:
    import sqlite3

    locked = threading.Event()

    def hold() -> None:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        locked.set()
        time.sleep(seconds)
        db.execute("COMMIT")
        db.close()

    thread = threading.Thread(target=hold)
    thread.start()
    locked.wait()
    return thread


def test_sqlite_retries_while_another_writer_holds_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tether.store.sqlite as sqlite_module

    monkeypatch.setattr(sqlite_module, "_BUSY_TIMEOUT", 0.02)  # SQLite's own wait gives up fast
    path = str(tmp_path / "state.db")
    store = SqliteStore(path)
    holder = _hold_write_lock(path, 0.4)
    began = time.monotonic()
    assert store.compare_and_swap("/k", 0, {"v": 1}) is True
    assert time.monotonic() - began >= 0.3
    holder.join()
    store.close()


def test_sqlite_gives_up_on_a_lock_held_too_long(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tether.store.sqlite as sqlite_module

    monkeypatch.setattr(sqlite_module, "_BUSY_TIMEOUT", 0.02)
    monkeypatch.setattr(sqlite_module, "_LOCK_PATIENCE", 0.2)
    path = str(tmp_path / "state.db")
    store = SqliteStore(path)
    holder = _hold_write_lock(path, 1.0)
    with pytest.raises(StoreError, match="stayed locked"):
        store.put("/k", {})
    holder.join()
    assert store.get("/k") is None
    store.close()


def _allocate_keys(path: str, worker: int, count: int, barrier: Any, results: Any) -> None:
    """Runs in a child process: win ``count`` keys from a shared numbered space by
    compare-and-swap, always trying the lowest number not yet known to be taken."""
    try:
        store = SqliteStore(path)
        barrier.wait()
        won: list[str] = []
        n = 0
        while len(won) < count:
            key = f"/alloc/{n:05d}"
            if store.compare_and_swap(key, 0, {"owner": worker}):
                won.append(key)
            n += 1
        store.close()
        results.put((worker, won, None))
    except BaseException as exc:  # noqa: BLE001  # reported to the parent
        results.put((worker, [], repr(exc)))


def test_sqlite_cas_across_processes(tmp_path: Path) -> None:
    """4 processes x 250 compare-and-swap allocations: 1000 unique keys, no errors."""
    path = str(tmp_path / "state.db")
    SqliteStore(path).close()
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(4)
    results = ctx.Queue()
    processes = [
        ctx.Process(target=_allocate_keys, args=(path, worker, 250, barrier, results)) for worker in range(4)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=10)
        assert process.exitcode == 0
    errors = [error for _, _, error in outcomes if error]
    assert errors == []
    keys = [key for _, won, _ in outcomes for key in won]
    assert len(keys) == 1000
    assert len(set(keys)) == 1000
    store = SqliteStore(path)
    stored = store.list("/alloc/")
    assert len(stored) == 1000
    owner_of = {key: worker for worker, won, _ in outcomes for key in won}
    assert all(owner_of[kv.key] == kv.value["owner"] for kv in stored)
    assert store.revision() == 1000
    store.close()
