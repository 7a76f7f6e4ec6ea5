"""Dual-stack overlay networks end to end, with real packets, in a two-host `tether lab`.

``network create -d overlay --ipv6 --subnet V4 --subnet V6 ov6`` on h1: each host holds a v4
and a v6 address of its own on the network's bridge (its containers' gateways, one interface
per container), and every host programs a permanent neighbour entry per *address* of every
remote endpoint on the network's VXLAN device (v4 for ARP, v6 for NDP proxying, one MAC and
one FDB entry for both). ``run`` returns only once the other host has programmed both, so the
first ``ping -6`` gets its answer.

Traffic safety: every packet goes between namespaces this module made (the lab's hosts and
the containers in them), to addresses of the lab's own ULA subnet ``fd00:231::/64`` or the
v4 one; nothing is sent anywhere else. The lab helpers and the teardown checks are those of
``test_overlay.py``; this module builds its own lab (two hosts) and takes it down again.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import processes_mentioning, sh
from probes import TCP_ASK, TCP_WHO6
from test_overlay import PORT, Lab, Pinged, lab_netns, link_names, wait_for, wait_listening

from tether import lab as tlab
from tether.lab import lab_down, lab_up

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root"),
]

GRACE = 6.0
SUBNET = "10.231.0.0/16"
SUBNET6 = "fd00:231::/64"
NET = "ov6"


# ---------------------------------------------------------------------- helpers
def ping6_ctr(lab: Lab, i: int, name: str, address: str) -> Pinged:
    """One ``ping -6 -c1 -W1``: the first packet must be answered, no retry."""
    return Pinged(lab.in_ctr(i, name, "ping", "-6", "-c1", "-W1", address, check=False))


def ping6_host(lab: Lab, i: int, address: str) -> Pinged:
    return Pinged(lab.in_host(i, "ping", "-6", "-c1", "-W1", address, check=False))


def address6(lab: Lab, i: int, name: str) -> str:
    """A container's v6 address on the dual-stack network (without prefix length)."""
    value = lab.json(i, "inspect", name)[0]["networks"][NET]["address6"]
    assert value, f"{name} has no IPv6 address on {NET}"
    return str(value).split("/")[0]


def host_addr6(lab: Lab, net: str, i: int) -> str:
    """Host i's own v6 address on overlay ``net`` (its containers' v6 gateway)."""
    value = lab.inspect_net(1, net)["hosts"][lab.name(i)]["address6"]
    assert value, f"h{i} has no IPv6 address on {net}"
    return str(value)


def bridge_addrs6(lab: Lab, i: int, net: str) -> list[str]:
    """The global IPv6 addresses on host i's bridge of ``net`` (link-local left out)."""
    vni = lab.inspect_net(i, net)["options"]["vni"]
    out = sh("ip", "-n", lab.host(i).netns, "-6", "-o", "addr", "show", "dev", f"tov-{vni}", "scope", "global").stdout
    return sorted(line.split()[3] for line in out.splitlines() if line.strip())


def peer_drift6(lab: Lab, i: int, net: str) -> dict[str, list[str]]:
    """How host i's permanent IPv6 neighbour entries on the network's VXLAN device differ from
    the v6 addresses of the remote endpoints (containers and hosts) the cluster records."""
    record = lab.inspect_net(i, net)
    me = lab.name(i)
    want = {str(e["address6"]).split("/")[0] for e in record["containers"].values() if e["node"] != me}
    want |= {h["address6"] for node, h in record["hosts"].items() if node != me}
    out = sh("ip", "-n", lab.host(i).netns, "-6", "neigh", "show", "dev", f"tvx-{record['options']['vni']}").stdout
    have = {line.split()[0] for line in out.splitlines() if "PERMANENT" in line}
    drift = {"stale": sorted(have - want), "missing": sorted(want - have)}
    return {k: v for k, v in drift.items() if v}


# ---------------------------------------------------------------------- the lab
@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    prefix = "tt" + uuid.uuid4().hex[:6]
    base = tempfile.mkdtemp(prefix=f"tether-ov6-{prefix}-")
    root, state_root = os.path.join(base, "run"), os.path.join(base, "state")
    the_lab: Lab | None = None
    try:
        info = lab_up(2, grace=GRACE, root=root, state_root=state_root, name_prefix=prefix)
        the_lab = Lab(info, root, state_root)
        yield the_lab
    finally:
        inside = tlab.pids_in_namespaces(lab_netns(prefix))
        errors = lab_down(root, state_root=state_root, name_prefix=prefix)
        for proc in the_lab.procs if the_lab else []:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                errors.append(f"helper {proc.pid} did not exit")
        shutil.rmtree(base, ignore_errors=True)
        left = lab_netns(prefix) + processes_mentioning(root, state_root, f"{prefix}h", f"{prefix}-")
        left += [f"pid {pid} (was in the lab)" for pid in sorted(inside) if tlab.process_alive(pid)]
        assert not errors and not left, f"the lab left things behind: {errors} {left}"


@pytest.fixture(scope="module")
def ov6(lab: Lab) -> subprocess.CompletedProcess[str]:
    """`network create -d overlay --ipv6 --subnet V4 --subnet V6 ov6`, on h1."""
    return lab.tether(1, "network", "create", "-d", "overlay", "--ipv6", "--subnet", SUBNET, "--subnet", SUBNET6, NET,
                      check=False)


@pytest.fixture(scope="module")
def pair(lab: Lab, ov6: subprocess.CompletedProcess[str]) -> dict[int, tuple[str, str]]:
    """d1 on h1, d2 on h2: dual-stack TCP servers on ov6; host index -> (v4, v6) address."""
    assert ov6.returncode == 0, ov6.stderr
    out = {}
    for i in (1, 2):
        r = lab.run(i, f"d{i}", NET, "python3", "-c", TCP_WHO6, str(PORT))
        assert r.stderr.strip() == "", r.stderr
        wait_listening(lab.ctr_ns(i, f"d{i}"), PORT)
        out[i] = (lab.address(i, f"d{i}", NET), address6(lab, i, f"d{i}"))
    return out


# ---------------------------------------------------------------------- 1. create: both families everywhere
def test_dual_stack_overlay_is_listed_on_both_hosts_each_with_its_own_v6_address(
    lab: Lab, ov6: subprocess.CompletedProcess[str]
) -> None:
    assert ov6.returncode == 0 and "Traceback" not in ov6.stderr, ov6.stderr
    own6 = {}
    for i in (1, 2):
        record = lab.inspect_net(i, NET)
        assert record["subnet"] == SUBNET and record["subnet6"] == SUBNET6, record
        own6[i] = host_addr6(lab, NET, i)
        assert ipaddress.IPv6Address(own6[i]) in ipaddress.ip_network(SUBNET6)
        assert own6[i] != record["gateway6"]  # each host is a gateway; the network's stays reserved
        # exactly one global v6 address on this host's bridge: its own
        wait_for(f"h{i}'s bridge holds its v6 address", lambda i=i: bridge_addrs6(lab, i, NET) == [f"{own6[i]}/64"],
                 timeout=5)
    assert own6[1] != own6[2]


# ---------------------------------------------------------------------- 2. first packet, both ways
def test_containers_on_different_hosts_ping6_each_other_right_after_run(lab: Lab, ov6: Any) -> None:
    """Each round starts a container on one host and, the moment `run` returns, pings it
    once over v6 (and v4) from a container on the other host, and back: no retry.

    Every other round the pinging host's daemon is frozen (SIGSTOP) for 0.8 s while the
    container starts, as a lagging host would be: only the barrier (which must cover the
    v6 entry as well as the v4 one) then stands between `run` returning and a lost ping."""
    assert ov6.returncode == 0, ov6.stderr
    failures: list[str] = []
    started: dict[int, list[str]] = {1: [], 2: []}
    frozen: set[int] = set()

    def thaw(pid: int) -> None:
        os.kill(pid, signal.SIGCONT)
        frozen.discard(pid)

    try:
        for i in (1, 2):
            lab.run(i, f"w{i}", NET)
            started[i].append(f"w{i}")
        for n in range(12):
            target, source = n % 2 + 1, 2 - n % 2
            name = f"fp6-{n}"
            timer = None
            if n % 4 >= 2:
                pid = lab.host(source).daemon_pid
                assert pid and tlab.is_daemon_of(pid, lab.host(source))
                os.kill(pid, signal.SIGSTOP)
                frozen.add(pid)
                timer = threading.Timer(0.8, thaw, (pid,))
                timer.start()
            r = lab.run(target, name, NET)
            started[target].append(name)
            if timer:
                timer.join()
            if r.stderr.strip():
                failures.append(f"#{n} run on h{target}: {r.stderr.strip()}")
            ours = address6(lab, target, name)
            if not (p := ping6_ctr(lab, source, f"w{source}", ours)):
                failures.append(f"#{n}: w{source} (h{source}) -> {name} {ours} (h{target}): {p!r}")
            back = address6(lab, source, f"w{source}")
            if not (p := ping6_ctr(lab, target, name, back)):
                failures.append(f"#{n}: {name} (h{target}) -> w{source} {back} (h{source}): {p!r}")
            v4 = lab.address(target, name, NET)
            if not (p := lab.ping_ctr(source, f"w{source}", v4, wait="1")):
                failures.append(f"#{n} v4: w{source} -> {name} {v4}: {p!r}")
    finally:
        for pid in list(frozen):
            thaw(pid)
        for i, names in started.items():
            if names:
                lab.tether(i, "rm", "-f", *names, check=False)
    assert failures == [], "\n".join(failures)
    for i in (1, 2):  # every removal withdrawn: no stale v6 entry, none missing
        wait_for(f"h{i}'s v6 peers match the cluster", lambda i=i: not peer_drift6(lab, i, NET), timeout=5)


def test_tcp_over_v6_and_v4_between_hosts_sees_the_container(lab: Lab, pair: dict[int, tuple[str, str]]) -> None:
    failures = []
    for src, dst in ((1, 2), (2, 1)):
        for family, index in (("v6", 1), ("v4", 0)):
            seen = lab.tcp_ctr(src, f"d{src}", pair[dst][index])
            if seen != pair[src][index]:  # no NAT inside the overlay, either family
                failures.append(f"tcp {family} d{src} -> d{dst}: the server saw {seen!r}, not {pair[src][index]}")
    assert failures == [], "\n".join(failures)


# ---------------------------------------------------------------------- 3. one interface, the host as v6 gateway
def test_container_has_one_interface_and_its_host_is_its_v6_gateway(lab: Lab, pair: dict[int, tuple[str, str]]) -> None:
    failures = []
    for i in (1, 2):
        c = f"d{i}"
        assert link_names(lab.in_ctr(i, c, "ip", "-o", "link").stdout) == ["eth0", "lo"]
        own6 = host_addr6(lab, NET, i)
        routes6 = lab.in_ctr(i, c, "ip", "-6", "route").stdout
        assert f"default via {own6} dev eth0" in routes6, routes6
        addrs = lab.in_ctr(i, c, "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global").stdout
        assert f"{pair[i][1]}/64" in addrs and "tentative" not in addrs, addrs
        for j in (1, 2):  # its own host's v6 address and the other host's
            target = host_addr6(lab, NET, j)
            if not (p := ping6_ctr(lab, i, c, target)):
                failures.append(f"{c} (h{i}) -> h{j}'s v6 overlay address {target}: {p!r}")
            if not (p := lab.ping_ctr(i, c, lab.host_addr(NET, j), wait="1")):
                failures.append(f"{c} (h{i}) -> h{j}'s v4 overlay address: {p!r}")
    assert failures == [], "\n".join(failures)


def test_every_host_reaches_every_container_over_v6(lab: Lab, pair: dict[int, tuple[str, str]]) -> None:
    failures = []
    for i in (1, 2):
        for j in (1, 2):
            if not (p := ping6_host(lab, i, pair[j][1])):
                failures.append(f"h{i} -> d{j} ({pair[j][1]}): {p!r}")
        seen = lab.in_host(i, "python3", "-c", TCP_ASK, pair[2 if i == 1 else 1][1], str(PORT), check=False)
        if seen.stdout.strip() != host_addr6(lab, NET, i):  # the host speaks from its own v6 overlay address
            failures.append(f"h{i} -> tcp over v6: the server saw {seen.stdout.strip()!r}")
    assert failures == [], "\n".join(failures)


# ---------------------------------------------------------------------- 4. kernel matches records
def test_v6_neighbour_entries_are_exactly_the_remote_endpoints(lab: Lab, pair: dict[int, tuple[str, str]]) -> None:
    for i in (1, 2):
        assert not peer_drift6(lab, i, NET), f"h{i}: {peer_drift6(lab, i, NET)}"
        other = 2 if i == 1 else 1
        vni = lab.inspect_net(i, NET)["options"]["vni"]
        neigh = sh("ip", "-n", lab.host(i).netns, "neigh", "show", "dev", f"tvx-{vni}").stdout
        mac = {line.split()[0]: line.split()[2] for line in neigh.splitlines() if "PERMANENT" in line}
        v4, v6 = pair[other]
        assert mac[v4] == mac[v6], neigh  # one MAC for both addresses of an endpoint


# ---------------------------------------------------------------------- 5. restart converges
def test_daemon_down_while_the_cluster_changes_converges_v6_on_restart(
    lab: Lab, pair: dict[int, tuple[str, str]]
) -> None:
    """While h2's daemon is dead h1 removes a container and starts another; the restarted
    daemon withdraws the removed one's v6 entry, programs the new one's, loses nothing."""
    victim = 2
    lab.run(1, "gone6", NET)
    gone = address6(lab, 1, "gone6")
    wait_for("h2 has gone6's v6 entry", lambda: not peer_drift6(lab, victim, NET), timeout=5)
    try:
        lab.kill_daemon(victim)
        killed = time.monotonic()
        lab.tether(1, "rm", "-f", "gone6")
        lab.run(1, "new6", NET)
        new = address6(lab, 1, "new6")
        assert time.monotonic() - killed < GRACE - 1, "too slow: h2 would be reclaimed"
        # the data plane never depended on the daemon: d2 still reaches d1 over v6
        assert ping6_ctr(lab, victim, "d2", pair[1][1])
        lab.restart_daemon(victim)
        wait_for("h2 up again", lambda: lab.node_up(1, victim) is True, timeout=5)
        wait_for("h2 reaches new6 over v6", lambda: ping6_ctr(lab, victim, "d2", new), timeout=5)
        wait_for("h2's v6 peers match the cluster", lambda: not peer_drift6(lab, victim, NET), timeout=5)
        out = sh("ip", "-n", lab.host(victim).netns, "-6", "neigh", "show", gone).stdout
        assert "PERMANENT" not in out, f"the removed container's v6 entry lingers on h2: {out}"
        assert ping6_ctr(lab, 1, "d1", pair[2][1]) and ping6_ctr(lab, victim, "d2", pair[1][1])
        assert bridge_addrs6(lab, victim, NET) == [f"{host_addr6(lab, NET, victim)}/64"]
    finally:
        for name in ("gone6", "new6"):
            lab.tether(1, "rm", "-f", name, check=False)


# ---------------------------------------------------------------------- 6. removal leaves nothing
def test_removing_the_network_removes_every_v6_address_and_entry(lab: Lab, pair: dict[int, tuple[str, str]]) -> None:
    vni = lab.inspect_net(1, NET)["options"]["vni"]
    lab.tether(1, "rm", "-f", "d1")
    lab.tether(2, "rm", "-f", "d2")
    lab.tether(2, "network", "rm", NET)
    for i in (1, 2):
        wait_for(f"ov6 gone from h{i}", lambda i=i: f"tov-{vni}" not in lab.links(i), timeout=5)
        addrs = sh("ip", "-n", lab.host(i).netns, "-6", "-o", "addr").stdout
        assert "fd00:231:" not in addrs, addrs
        routes = sh("ip", "-n", lab.host(i).netns, "-6", "route").stdout
        assert "fd00:231:" not in routes, routes
