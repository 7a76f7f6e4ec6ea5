"""`tether trace` end to end: one test per failure class, each breaking exactly that one
thing on a fresh host (its own namespace and daemon) and checking that trace names the
broken hop, why, and the fix, with the right exit status. The overlay classes (a deleted
FDB or neighbour entry, a host that is down) run in a 3-host lab at the end.

Probes only ever go between the test's own namespaces."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Host, sh
from probes import TCP_WHO

from tether import lab as tlab
from tether.lab import LabInfo, lab_down, lab_up

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root"),
]

PORT = 7000


def serve(host: Host, name: str, *args: str) -> None:
    """A container serving TCP_WHO on PORT (``args``: more ``run`` flags), once it listens."""
    host.tether("run", "-d", "--name", name, *args, "--", "python3", "-c", TCP_WHO, str(PORT))
    wait_listening(host.prefix + name, PORT)


def wait_listening(netns: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not sh("ip", "netns", "exec", netns, "ss", "-Hltn", f"sport = :{port}", check=False).stdout.strip():
        assert time.monotonic() < deadline, f"nothing listens on {port} in {netns}"
        time.sleep(0.05)


def sleeper(host: Host, name: str, *args: str) -> None:
    host.tether("run", "-d", "--name", name, *args, "--", "sleep", "600")


def trace(host: Host, *args: str) -> tuple[int, dict[str, Any]]:
    """``tether trace ARGS --format json``: (exit status, reply)."""
    r = host.tether("trace", *args, "--format", "json", check=False)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else {"stderr": r.stderr})


def broken(reply: dict[str, Any], hop: str, *needles: str) -> dict[str, Any]:
    """The verdict names ``hop`` and every needle (in its reason or its fix)."""
    verdict = reply["verdict"]
    assert not reply["reachable"] and verdict["hop"] == hop, json.dumps(reply, indent=1)
    said = f"{verdict['why']} | {verdict['fix']}"
    for needle in needles:
        assert needle in said, said
    return verdict


def step(reply: dict[str, Any], hop: str) -> dict[str, Any]:
    return next(s for s in reply["steps"] if s["hop"] == hop)


# ---------------------------------------------------------------------- one host
def test_reachable_on_one_network_with_a_listening_port(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.231.0.0/24", "appnet")
    serve(host, "db", "--net", "appnet")
    sleeper(host, "web", "--net", "appnet")
    code, reply = trace(host, "web", f"db:{PORT}")
    assert code == 0 and reply["reachable"], json.dumps(reply, indent=1)
    hops = [s["hop"] for s in reply["steps"]]
    assert hops[:5] == ["source", "interface", "route", "neighbour", "bridge port"], hops
    assert step(reply, "firewall")["how"] == "probe", json.dumps(reply, indent=1)
    assert step(reply, "listening")["status"] == "ok"
    # the text form: a marked line per hop and the verdict; the same by NAME.NETWORK and by IP
    text = host.tether("trace", "web", f"db.appnet:{PORT}/tcp").stdout
    assert "✓ firewall" in text and text.strip().endswith(f"reachable: web -> db.appnet:{PORT}/tcp"), text
    address = host.inspect("db")["networks"]["appnet"]["address"]
    assert trace(host, "web", address)[0] == 0


def test_bad_input_is_exit_2(host: Host) -> None:
    sleeper(host, "web")
    for dst in ("nosuch", "web:http", "web:99999", "web:80/sctp"):
        r = host.tether("trace", "web", dst, check=False)
        assert r.returncode == 2 and r.stderr.startswith("Error: "), (dst, r.stderr)
    assert host.tether("trace", "nosuch", "web", check=False).returncode == 2


def test_different_networks(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.232.0.0/24", "front")
    host.tether("network", "create", "--subnet", "10.233.0.0/24", "back")
    serve(host, "db", "--net", "back")
    sleeper(host, "web", "--net", "front")
    code, reply = trace(host, "web", f"db:{PORT}")
    assert code == 1
    broken(reply, "firewall", "different networks", "tether network connect back web")
    host.tether("network", "connect", "back", "web")  # the fix works
    assert trace(host, "web", f"db:{PORT}")[0] == 0


def test_internal_network_has_no_way_out(host: Host) -> None:
    host.tether("network", "create", "--internal", "--subnet", "10.234.0.0/24", "sealed")
    host.tether("network", "create", "--subnet", "10.235.0.0/24", "open")
    serve(host, "web", "--net", "open", "-p", f"8080:{PORT}")
    sleeper(host, "inner", "--net", "sealed")
    code, reply = trace(host, "inner", "203.0.113.7")  # outside: checked, never probed
    assert code == 1
    broken(reply, "route", "sealed is --internal", "tether network connect bridge inner")
    assert step(reply, "firewall")["how"] == "model" and step(reply, "firewall")["status"] == "fail"
    code, reply = trace(host, "inner", "host:8080")  # the host's published port
    assert code == 1
    broken(reply, "firewall", "--internal")


def test_icc_false(host: Host) -> None:
    host.tether("network", "create", "-o", "icc=false", "--subnet", "10.236.0.0/24", "quiet")
    serve(host, "db", "--net", "quiet")
    sleeper(host, "web", "--net", "quiet")
    code, reply = trace(host, "web", f"db:{PORT}")
    assert code == 1
    verdict = broken(reply, "firewall", "icc=false", "tether network connect")
    assert "probe" in verdict["why"] or step(reply, "firewall")["how"] == "probe"


def test_drop_in_the_user_chain(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.237.0.0/24", "appnet")
    serve(host, "db", "--net", "appnet")
    sleeper(host, "web", "--net", "appnet")
    address = host.inspect("db")["networks"]["appnet"]["address"]
    host.in_host("nft", "add", "rule", "ip", "tether", "user", "ip", "daddr", address, "tcp", "dport", str(PORT),
                 "drop")
    code, reply = trace(host, "web", f"db:{PORT}")
    assert code == 1
    verdict = broken(reply, "firewall", "user", "drop", "nft delete rule ip tether user handle")
    sh(*host.enter(), "sh", "-c", verdict["fix"])  # the fix works
    assert trace(host, "web", f"db:{PORT}")[0] == 0


def test_stopped_container(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.238.0.0/24", "appnet")
    serve(host, "db", "--net", "appnet")
    sleeper(host, "web", "--net", "appnet")
    host.tether("stop", "-t", "0", "db")
    code, reply = trace(host, "web", f"db:{PORT}")
    assert code == 1
    broken(reply, "destination", "db is exited", "tether start db")
    host.tether("stop", "-t", "0", "web")
    broken(trace(host, "web", "db")[1], "source", "web is exited", "tether start web")


def test_port_nobody_listens_on(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.239.0.0/24", "appnet")
    serve(host, "db", "--net", "appnet")
    sleeper(host, "web", "--net", "appnet")
    code, reply = trace(host, "web", "db:7001")
    assert code == 1
    broken(reply, "listening", "nothing in db listens on 7001/tcp")
    assert step(reply, "firewall")["status"] == "ok"


def test_port_not_published(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.240.0.0/24", "appnet")
    serve(host, "db", "--net", "appnet", "-p", f"8081:{PORT}")
    sleeper(host, "web", "--net", "appnet")
    assert trace(host, "web", "host:8081")[0] == 0  # published: through the host to db
    code, reply = trace(host, "web", "host:8082")
    assert code == 1
    broken(reply, "published port", "not published", "tether run -p 8082:")


# ---------------------------------------------------------------------- a lab (overlay)
@pytest.fixture(scope="module")
def lab() -> Iterator[LabInfo]:
    prefix = "tt" + uuid.uuid4().hex[:6]
    base = tempfile.mkdtemp(prefix=f"tether-trace-{prefix}-")
    root, state_root = os.path.join(base, "run"), os.path.join(base, "state")
    try:
        yield lab_up(3, grace=30.0, root=root, state_root=state_root, name_prefix=prefix)
    finally:
        lab_down(root, state_root=state_root, name_prefix=prefix)
        shutil.rmtree(base, ignore_errors=True)


def lab_tether(info: LabInfo, i: int, *args: str) -> subprocess.CompletedProcess[str]:
    host = info.hosts[i - 1]
    return subprocess.run(host.tether_argv(*args), capture_output=True, text=True, env=host.cli_env(), timeout=60)


def lab_trace(info: LabInfo, i: int, *args: str) -> tuple[int, dict[str, Any]]:
    r = lab_tether(info, i, "trace", *args, "--format", "json")
    assert "Traceback" not in r.stderr and r.stdout.strip(), r.stderr
    return r.returncode, json.loads(r.stdout)


@pytest.fixture(scope="module")
def pair(lab: LabInfo) -> LabInfo:
    """o1 on h1 and o2 on h2 (serving TCP_WHO) on the overlay ``tov``."""
    assert lab_tether(lab, 1, "network", "create", "-d", "overlay", "--subnet", "10.241.0.0/16", "tov").returncode == 0
    for i in (1, 2):
        r = lab_tether(lab, i, "run", "-d", "--name", f"o{i}", "--net", "tov", "--", "python3", "-c", TCP_WHO, str(PORT))
        assert r.returncode == 0, r.stderr
        wait_listening(lab.hosts[i - 1].container_netns_prefix + f"o{i}", PORT)
    return lab


def test_overlay_reachable_then_a_deleted_entry_is_named_and_repaired(pair: LabInfo) -> None:
    code, reply = lab_trace(pair, 1, "o1", f"o2:{PORT}")
    assert code == 0, json.dumps(reply, indent=1)
    assert {"overlay entries", "remote host", "reverse entries"} <= {s["hop"] for s in reply["steps"]}
    o2 = lab_tether(pair, 1, "network", "inspect", "tov")
    address = json.loads(o2.stdout)[0]["containers"]["o2"]["address"].split("/")[0] if o2.stdout.startswith("[") else (
        json.loads(o2.stdout)["containers"]["o2"]["address"].split("/")[0])
    vxlan = step(reply, "overlay entries")["detail"].split()[0]
    h1 = pair.hosts[0]
    sh(*h1.enter(), "ip", "neigh", "del", address, "dev", vxlan)
    code, reply = lab_trace(pair, 1, "o1", f"o2:{PORT}")
    restored = [s for s in reply["steps"] if s["hop"] == "overlay entries" and "restored" in s["detail"]]
    if code == 1:  # before the agent's peer check (every 2 s): trace says it will restore it
        broken(reply, "overlay entries", f"neighbour entry {address}", "overlay agent", "restores it")
    else:  # the check was quicker than trace: trace says it did
        assert restored, json.dumps(reply, indent=1)
    deadline = time.monotonic() + 5
    while True:
        code, reply = lab_trace(pair, 1, "o1", f"o2:{PORT}")
        if code == 0:
            break
        assert time.monotonic() < deadline, json.dumps(reply, indent=1)
        time.sleep(0.5)
    assert any("restored the entries" in s["detail"] for s in reply["steps"]), json.dumps(reply, indent=1)


def test_overlay_host_down(pair: LabInfo) -> None:
    h2 = pair.hosts[1]
    assert h2.daemon_pid and tlab.is_daemon_of(h2.daemon_pid, h2)
    os.kill(h2.daemon_pid, 9)
    deadline = time.monotonic() + 10
    while True:
        code, reply = lab_trace(pair, 1, "o1", f"o2:{PORT}")
        if code == 1 and reply["verdict"]["hop"] == "remote host":
            break
        assert time.monotonic() < deadline, json.dumps(reply, indent=1)
        time.sleep(0.5)
    broken(reply, "remote host", f"{h2.name} is down", "start tether's daemon")
