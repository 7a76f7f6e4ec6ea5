"""The Store contract of tests/unit/test_store.py, run against EtcdStore on a real etcd,
plus what only etcd has: cross-process allocation, watches across an etcd restart,
compaction, leases and unreachable endpoints.

Every contract test gets a wiped etcd (a fresh data dir, ~0.2 s), because the contract
counts revisions from 0. Skipped only when etcd cannot be installed.
"""

from __future__ import annotations

import importlib.util
import inspect
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tether.errors import InvalidInput, StoreError
from tether.lab.etcd import EtcdServer, EtcdUnavailable, free_port
from tether.store import EtcdStore, WatchEvent

try:  # pytest's default import mode puts this directory on sys.path
    import test_store as contract
except ImportError:  # --import-mode=importlib
    _spec = importlib.util.spec_from_file_location("test_store", Path(__file__).with_name("test_store.py"))
    assert _spec is not None and _spec.loader is not None
    contract = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(contract)

# The contract: every test of test_store.py that takes nothing but a ``store``. Collected
# here, they run with this module's ``store`` fixture.
for _name, _test in vars(contract).items():
    if _name.startswith("test_") and callable(_test) and list(inspect.signature(_test).parameters) == ["store"]:
        globals()[_name] = _test
CONTRACT_TESTS = sorted(name for name in globals() if name in vars(contract) and name.startswith("test_"))


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    try:
        server = EtcdServer()
    except EtcdUnavailable as exc:
        pytest.skip(f"etcd is not available: {exc}")
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def store(etcd: EtcdServer) -> Iterator[EtcdStore]:
    etcd.wipe()  # also starts it again after a test that stopped it
    backend = EtcdStore([etcd.client_url])
    yield backend
    backend.close()


def test_the_contract_is_collected() -> None:
    assert len(CONTRACT_TESTS) >= 20
    assert "test_concurrent_cas_from_threads" in CONTRACT_TESTS


# -- allocation across processes -----------------------------------------------------


def _allocate_keys(url: str, worker: int, count: int, barrier: Any, results: Any) -> None:
    """Runs in a child process: win ``count`` keys of a shared numbered space by
    create-only compare-and-swap, always trying the lowest number not known taken."""
    try:
        store = EtcdStore([url])
        barrier.wait(timeout=60)  # never hang forever if a sibling died
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


def test_cas_across_processes(store: EtcdStore, etcd: EtcdServer) -> None:
    """4 processes x 50 create-only allocations: 200 unique keys, no errors."""
    # spawn, not fork: gRPC's state does not survive a fork of this (threaded) process.
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    results = ctx.Queue()
    processes = [
        ctx.Process(target=_allocate_keys, args=(etcd.client_url, worker, 50, barrier, results), daemon=True)
        for worker in range(4)
    ]
    try:
        for process in processes:
            process.start()
        outcomes = [results.get(timeout=120) for _ in processes]
        for process in processes:
            process.join(timeout=10)
            assert process.exitcode == 0
    finally:
        for process in processes:  # a failed run must not leave children behind
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
    assert [error for _, _, error in outcomes if error] == []
    keys = [key for _, won, _ in outcomes for key in won]
    assert len(keys) == 200
    assert len(set(keys)) == 200
    stored = store.list("/alloc/")
    assert len(stored) == 200
    owner_of = {key: worker for worker, won, _ in outcomes for key in won}
    assert all(owner_of[kv.key] == kv.value["owner"] for kv in stored)
    assert store.revision() == 200


# -- restarts and outages ---------------------------------------------------------------


@pytest.mark.parametrize("crash", [False, True], ids=["stopped", "killed"])
def test_watch_resumes_across_an_etcd_restart(store: EtcdStore, etcd: EtcdServer, crash: bool) -> None:
    """Events written before, and right after, a restart all arrive once, in order."""
    start = store.revision() + 1
    received: list[WatchEvent] = []
    failures: list[BaseException] = []
    got_three = threading.Event()

    def consume() -> None:
        try:
            for event in store.watch("/w/", start, timeout=20):
                received.append(event)
                if len(received) == 3:
                    got_three.set()
                if len(received) == 10:
                    return
        except BaseException as exc:  # noqa: BLE001  # reported below
            failures.append(exc)

    thread = threading.Thread(target=consume)
    thread.start()
    written = [store.put(f"/w/{n}", {"n": n}) for n in range(3)]
    assert got_three.wait(5)
    etcd.stop(crash=crash)
    time.sleep(0.5)  # the watch notices and keeps re-establishing
    etcd.start()
    writer = EtcdStore([etcd.client_url])  # writes land before the watcher is back
    written += [writer.put(f"/w/{n}", {"n": n}) for n in range(3, 9)]
    written.append(writer.put("/w/9", {"n": 9}))
    writer.close()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert failures == []
    assert [(e.type, e.key, e.value, e.revision) for e in received] == [
        ("put", f"/w/{n}", {"n": n}, written[n]) for n in range(10)
    ]


def test_reads_wait_for_a_restarting_etcd(store: EtcdStore, etcd: EtcdServer) -> None:
    store.put("/a", {"v": 1})
    etcd.stop()
    restart = threading.Timer(0.5, etcd.start)
    restart.start()
    try:
        kv = store.get("/a")  # waits for etcd instead of failing
    finally:
        restart.join()
    assert kv is not None and kv.value == {"v": 1}
    assert store.put("/b", {}) == 2


def test_stopped_etcd_is_a_one_line_store_error(store: EtcdStore, etcd: EtcdServer) -> None:
    impatient = EtcdStore([etcd.client_url], timeout=1.0)
    etcd.stop()
    try:
        for action in (lambda: impatient.get("/a"), lambda: impatient.put("/a", {})):
            began = time.monotonic()
            with pytest.raises(StoreError) as caught:
                action()
            assert time.monotonic() - began < 3.0
            message = str(caught.value)
            assert "\n" not in message
            assert etcd.client_url in message and "is etcd running" in message
    finally:
        impatient.close()
        etcd.start()


def test_a_watch_gives_up_after_a_long_outage(
    store: EtcdStore, etcd: EtcdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tether.store.etcd as etcd_module

    monkeypatch.setattr(etcd_module, "_RECONNECT_PATIENCE", 1.0)
    impatient = EtcdStore([etcd.client_url], timeout=0.5)
    events = impatient.watch("/w/", 1, timeout=None)
    store.put("/w/a", {})
    assert next(events).key == "/w/a"
    etcd.stop()
    began = time.monotonic()
    try:
        with pytest.raises(StoreError, match="is etcd running"):
            next(events)
        assert time.monotonic() - began < 6.0
    finally:
        impatient.close()
        etcd.start()


def test_a_stalled_catch_up_falls_back_to_the_prefix_watch(
    store: EtcdStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the catch-up never reaches its target revision, the watch goes on anyway."""
    import tether.store.etcd as etcd_module

    monkeypatch.setattr(etcd_module, "_CATCH_UP_STALL", 0.2)
    store.put("/w/a", {})
    real_current = store._current
    monkeypatch.setattr(store, "_current", lambda: real_current() + 5)  # never reached
    began = time.monotonic()
    events = store.watch("/w/", 1, timeout=0.5)
    assert next(events).key == "/w/a"
    store.put("/w/b", {})  # arrives through the prefix watch, after the stall
    assert [e.key for e in events] == ["/w/b"]
    assert time.monotonic() - began < 3.0


def test_unreachable_endpoint_fails_fast_with_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    began = time.monotonic()
    with pytest.raises(StoreError) as caught:
        EtcdStore([url])
    assert time.monotonic() - began < 5.0
    message = str(caught.value)
    assert "\n" not in message
    assert url in message and "is etcd running at" in message
    assert "connection refused" in message


def test_silent_endpoint_fails_fast_with_one_line() -> None:
    """A port that accepts TCP but never speaks HTTP/2 fails at the connect timeout."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        began = time.monotonic()
        with pytest.raises(StoreError) as caught:
            EtcdStore([url], timeout=30)
        assert time.monotonic() - began < 5.0
    message = str(caught.value)
    assert "\n" not in message and url in message and "is etcd running at" in message


def test_bad_endpoints_are_invalid_input() -> None:
    for endpoints in ([], ["https://127.0.0.1:2379"], ["http://127.0.0.1:notaport"], ["ftp://x"]):
        with pytest.raises(InvalidInput):
            EtcdStore(endpoints)


def test_several_endpoints_fail_over(store: EtcdStore, etcd: EtcdServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    both = EtcdStore([dead, etcd.client_url])
    assert both.put("/a", {"v": 1}) == 1
    assert both.get("/a") is not None
    both.close()


# -- compaction and leases -------------------------------------------------------------


def test_watch_from_a_compacted_revision_fails(store: EtcdStore) -> None:
    """As test_store's test of the same name, with an etcd compaction for keep_changes."""
    for n in range(12):
        store.put(f"/w/{n:02d}", {"n": n})
    store.compact(8)
    with pytest.raises(StoreError, match="too old") as caught:
        list(store.watch("/w/", 1, timeout=0))
    assert "after revision 7 only" in str(caught.value)
    assert [e.revision for e in store.watch("/w/", 8, timeout=0)] == [8, 9, 10, 11, 12]
    with pytest.raises(StoreError, match="too old"):
        list(store.watch("/w/", 7, timeout=0))
    store.compact(3)  # already compacted further: nothing to do
    assert store.list("/w/")[0].value == {"n": 0}  # compaction keeps the current values


def test_lease_expiry_produces_a_delete_event(store: EtcdStore) -> None:
    lease = store.lease_grant(2)
    written = store.put("/hosts/a", {"vtep": "192.0.2.1"}, lease=lease)
    began = time.monotonic()
    events = store.watch("/hosts/", written, timeout=10)
    assert next(events) == WatchEvent("put", "/hosts/a", {"vtep": "192.0.2.1"}, written)
    expired = next(events)
    elapsed = time.monotonic() - began
    assert (expired.type, expired.key, expired.value) == ("delete", "/hosts/a", None)
    assert expired.revision > written
    assert 1.5 < elapsed < 6.0
    assert store.get("/hosts/a") is None
    assert store.lease_keepalive(lease) == 0  # gone: the caller re-registers


def test_lease_keepalive_and_revoke(store: EtcdStore) -> None:
    lease = store.lease_grant(2)
    store.put("/hosts/b", {}, lease=lease)
    for _ in range(6):  # 3 s, past the TTL
        assert store.lease_keepalive(lease) == 2
        time.sleep(0.5)
    assert store.get("/hosts/b") is not None
    start = store.revision() + 1
    assert store.lease_revoke(lease) is True
    assert [(e.type, e.key) for e in store.watch("/hosts/", start, timeout=0)] == [("delete", "/hosts/b")]
    assert store.lease_revoke(lease) is False
    with pytest.raises(StoreError, match="lease not found"):
        store.put("/hosts/c", {}, lease=lease)
    with pytest.raises(InvalidInput):
        store.lease_grant(0)


# -- keys, prefixes, processes ---------------------------------------------------------


def test_keys_live_under_the_prefix(store: EtcdStore, etcd: EtcdServer) -> None:
    other = EtcdStore([etcd.client_url], prefix="/tether2/")
    root = EtcdStore([etcd.client_url], prefix="")
    try:
        store.put("/net/a", {"v": 1})
        other.put("/net/b", {"v": 2})
        assert [kv.key for kv in store.list("")] == ["/net/a"]
        assert [kv.key for kv in other.list("")] == ["/net/b"]
        assert [kv.key for kv in root.list("")] == ["/tether/net/a", "/tether2/net/b"]
        assert [e.key for e in store.watch("", 1, timeout=0)] == ["/net/a"]
        assert store.list("net") == []
        with pytest.raises(InvalidInput):
            store.put("net/a", {})
    finally:
        other.close()
        root.close()


def test_a_forked_child_must_open_its_own_store(store: EtcdStore) -> None:
    store.put("/a", {})
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: must refuse, without touching the parent's channel
        os.close(read)
        try:
            store.get("/a")
            os.write(write, b"no error")
        except StoreError as exc:
            os.write(write, str(exc).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    assert "across fork" in message
    assert store.get("/a") is not None


def test_importing_tether_store_does_not_load_grpc() -> None:
    code = "import sys, tether.store; assert 'grpc' not in sys.modules and 'aetcd' not in sys.modules"
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
