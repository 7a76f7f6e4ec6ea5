"""Faults that used to lose data or wreck other containers: parallel first calls with no
daemon, a second daemon in one network namespace, a lost or corrupt store, a daemon
killed between starting a container and recording it, unusable paths, and small bad
inputs. Each is reproduced as a user would meet it, with a real daemon and real packets."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import NETNS_DIR, Host, processes_mentioning, sh

pytestmark = pytest.mark.e2e


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    lines = [x for x in r.stderr.splitlines() if x.strip() and " INFO " not in x and " WARNING " not in x]
    assert r.returncode != 0 and len(lines) == 1, r.stderr + r.stdout
    assert "Traceback" not in r.stderr + r.stdout
    return lines[0]


def autostart_env(host: Host) -> dict[str, str]:
    """A CLI that starts the daemon itself, with this host's namespace prefix."""
    return {"TETHER_NO_AUTOSTART": "", "TETHER_NETNS_PREFIX": host.prefix}


def stop_autostarted(host: Host) -> None:
    """Kill the daemon a CLI started (the fixture only knows the daemons it started)."""
    from tether.api.client import Client
    from tether.errors import TetherError

    try:
        pid = Client(host.socket).get("/ping")["pid"]
    except TetherError:
        return
    os.kill(int(pid), signal.SIGKILL)


def test_parallel_first_runs_start_exactly_one_daemon(bare_host: Host) -> None:
    host = bare_host
    host.start_daemon()
    net = f"{host.prefix}n"
    host.tether("network", "create", "--subnet", "10.231.0.0/24", net)
    host.kill_daemon(signal.SIGTERM)
    try:
        with ThreadPoolExecutor(10) as pool:
            results = list(pool.map(
                lambda i: host.tether("run", "-d", "--name", f"r{i}", "--net", net, "--", "sleep", "600",
                                      check=False, env=autostart_env(host)),
                range(10),
            ))
        failed = [r.stderr for r in results if r.returncode != 0]
        assert failed == [], failed
        daemons = [p for p in processes_mentioning(host.state_dir) if "tether.cli daemon" in p]
        assert len(daemons) == 1, daemons
        ps = host.json("ps", "--format", "json")
        assert sorted(c["name"] for c in ps) == sorted(f"r{i}" for i in range(10))
        addresses = [c["networks"][net]["address"] for c in ps]
        assert len(set(addresses)) == 10
        assert sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(host.prefix)) == sorted(
            f"{host.prefix}r{i}" for i in range(10))
        for c in ps:  # every one reaches its gateway
            host.in_container(c["name"], "ping", "-c1", "-W2", "10.231.0.1")
    finally:
        for i in range(10):
            host.tether("rm", "-f", f"r{i}", check=False)
        stop_autostarted(host)


def test_a_second_daemon_in_the_same_namespace_is_refused(host: Host, tmp_path: Path) -> None:
    net = f"{host.prefix}n"
    host.tether("network", "create", "--subnet", "10.232.0.0/24", net)
    host.tether("run", "-d", "--name", "a", "--net", net, "-p", "18080:8000", "--",
                sys.executable, "-m", "http.server", "8000")
    before = host.snapshot()
    r = sh(*host.enter(), sys.executable, "-m", "tether.cli", "daemon", "--state-dir", str(tmp_path / "s2"),
           "--socket", str(tmp_path / "s2.sock"), "--netns-prefix", host.prefix, check=False, timeout=60)
    line = one_line_error(r)
    assert "already runs in this network namespace" in line and str(host.daemon.pid) in line  # type: ignore[union-attr]
    assert host.snapshot() == before
    # the first daemon's published port still answers
    deadline = time.monotonic() + 10
    while True:
        got = host.in_host("python3", "-c", "import urllib.request as u; print(u.urlopen('http://127.0.0.1:18080', timeout=2).status)",
                           check=False)
        if got.stdout.strip() == "200" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got.stdout.strip() == "200", got.stderr


def test_an_empty_store_is_refused_and_deletes_nothing(host: Host) -> None:
    net = f"{host.prefix}n"
    host.tether("network", "create", "--subnet", "10.233.0.0/24", net)
    host.tether("run", "-d", "--name", "a", "--net", net, "--", "sleep", "600")
    veth = host.inspect("a")["networks"][net]["host_ifname"]
    host.kill_daemon()
    db = Path(host.state_dir) / "tether.db"
    saved = {p: p.read_bytes() for p in db.parent.glob("tether.db*")}
    for p in saved:
        p.unlink()
    db.write_bytes(b"")
    started = time.monotonic()
    r = host.tether("network", "ls", check=False, env=autostart_env(host))
    line = one_line_error(r)
    assert time.monotonic() - started < 10
    assert "is empty" in line and "--discard-unknown" in line
    assert veth in host.in_host("ip", "-o", "link").stdout  # nothing of the running container was deleted
    host.in_container("a", "ping", "-c1", "-W2", "10.233.0.1")
    for p, data in saved.items():  # the operator restores the store: everything is back
        p.write_bytes(data)
    host.start_daemon()
    assert host.inspect("a")["state"] == "running"
    host.in_container("a", "ping", "-c1", "-W2", "10.233.0.1")


def test_a_corrupt_record_is_named_at_once(host: Host) -> None:
    net = f"{host.prefix}n"
    host.tether("network", "create", "--subnet", "10.234.0.0/24", net)
    host.kill_daemon()
    with sqlite3.connect(os.path.join(host.state_dir, "tether.db")) as db:
        db.execute("UPDATE kv SET value = '{broken' WHERE key = ?", (f"/networks/{net}",))
    started = time.monotonic()
    r = host.tether("network", "ls", check=False, env=autostart_env(host))
    line = one_line_error(r)
    assert time.monotonic() - started < 10, "the CLI must not wait out its timeout"
    assert f"/networks/{net}" in line and "corrupt" in line


def test_a_container_started_but_not_recorded_is_adopted_not_forgotten(host: Host) -> None:
    """The daemon was SIGKILLed after the shim started the process and before the record
    said so: the record says 'created' with no pid while the process runs."""
    net = f"{host.prefix}n"
    host.tether("network", "create", "--subnet", "10.235.0.0/24", net)
    host.tether("run", "-d", "--name", "a", "--net", net, "--ip", "10.235.0.7", "--", "sleep", "600")
    pid = host.inspect("a")["pid"]
    host.kill_daemon()
    with sqlite3.connect(os.path.join(host.state_dir, "tether.db")) as db:
        import json

        (raw,) = db.execute("SELECT value FROM kv WHERE key = '/containers/a'").fetchone()
        record = dict(json.loads(raw), state="created", pid=0, start_time=0)
        db.execute("UPDATE kv SET value = ? WHERE key = '/containers/a'", (json.dumps(record),))
    host.start_daemon()
    a = host.inspect("a")
    assert a["state"] == "running" and a["pid"] == pid
    veth = a["networks"][net]["host_ifname"]
    host.tether("rm", "-f", "a")
    assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().rpartition(")")[2][:3]
    assert veth not in host.in_host("ip", "-o", "link").stdout
    assert f"{host.prefix}a" not in os.listdir(NETNS_DIR)
    # the address is free again, and only the new container holds it
    host.tether("run", "-d", "--name", "b", "--net", net, "--ip", "10.235.0.7", "--", "sleep", "600")
    holders = [n for n in os.listdir(NETNS_DIR) if n.startswith(host.prefix)
               and "10.235.0.7/" in sh("ip", "-n", n, "-o", "addr", check=False).stdout]
    assert holders == [f"{host.prefix}b"]


def test_unusable_paths_are_one_line_refusals(bare_host: Host, tmp_path: Path) -> None:
    host = bare_host
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    r = sh(*host.enter(), sys.executable, "-m", "tether.cli", "--socket", str(tmp_path / "s.sock"),
           "--state-dir", str(not_a_dir / "state"), "network", "ls", check=False, timeout=60,
           env={**os.environ, "TETHER_NO_AUTOSTART": ""})
    assert "state" in one_line_error(r)


def test_small_bad_inputs_are_one_line_refusals(host: Host) -> None:
    before = host.snapshot()
    for args, needle in [
        (("network", "create", "-o", "mtu=100", f"{host.prefix}m"), "mtu"),
        (("network", "create", "--internal", "-o", "masquerade=true", f"{host.prefix}m"), "contradict"),
        (("stop", "-t", "abc", "x"), "-t"),
        (("network", "create", ""), "network name"),
    ]:
        line = one_line_error(host.tether(*args, check=False))
        assert needle in line, line
        assert "missing 'name'" not in line
    assert host.snapshot() == before


def test_a_namespace_whose_record_is_lost_is_removed_but_others_are_not(host: Host) -> None:
    net = f"{host.prefix}n"
    host.tether("network", "create", "--subnet", "10.236.0.0/24", net)
    host.tether("run", "-d", "--name", "a", "--net", net, "--", "sleep", "600")
    host.tether("run", "-d", "--name", "b", "--net", net, "--", "sleep", "600")
    pid = host.inspect("a")["pid"]
    stranger = f"{host.prefix}stranger"  # another runtime's namespace, with our prefix
    sh("ip", "netns", "add", stranger)
    host.kill_daemon()
    os.kill(pid, signal.SIGKILL)
    with sqlite3.connect(os.path.join(host.state_dir, "tether.db")) as db:  # a's record is lost
        db.execute("DELETE FROM kv WHERE key = '/containers/a'")
    host.start_daemon()
    names = os.listdir(NETNS_DIR)
    assert f"{host.prefix}a" not in names and stranger in names and f"{host.prefix}b" in names
    host.in_container("b", "ping", "-c1", "-W2", "10.236.0.1")
    assert [c["name"] for c in host.json("ps", "-a", "--format", "json")] == ["b"]
