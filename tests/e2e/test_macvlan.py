"""macvlan networks with real packets: containers as machines of their own on a LAN.

Each test's host (conftest.Host: a namespace running its own daemon) gets one or more
"LANs": a veth pair whose host end is the macvlan parent and whose other end sits in a
LAN namespace the test owns, holding the LAN's router (documentation prefixes only):

    host [tmvp<i>] ===== [tmvl<i>] LAN namespace: router 192.0.2.1/24, 2001:db8:21::1/64

The LAN namespaces are named after the host's namespace (``tt<tag>hlan<i>``), not with the
daemon's prefix, so no sweep of the daemon's ever counts them; the host fixture deletes
them (and the parent with the host namespace) even when a test fails. Nothing outside
these namespaces is ever addressed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import Host, sh
from probes import RESOLVE, RESOLVE6, TCP_WHO6, ask, until

pytestmark = pytest.mark.e2e

SUBNET, ROUTER = "192.0.2.0/24", "192.0.2.1"
SUBNET6, ROUTER6 = "2001:db8:21::/64", "2001:db8:21::1"
RANGE = "192.0.2.64/26"


@dataclass
class Lan:
    """A LAN behind one parent interface of the host."""

    host: Host
    ns: str
    parent: str  # the host's end: the macvlan parent
    port: str  # the LAN's end, holding the router's addresses
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.ns, *cmd, check=check)

    def mac_seen(self, address: str) -> str:
        """The MAC the router has learnt for ``address`` (empty if none)."""
        out = sh("ip", "-n", self.ns, "neigh", "show", address, "dev", self.port).stdout.split()
        return out[out.index("lladdr") + 1] if "lladdr" in out else ""

    def serve_who(self, port: int) -> None:
        """A TCP server on both families that answers with the client's address."""
        self.servers.append(subprocess.Popen(["ip", "netns", "exec", self.ns, sys.executable, "-c", TCP_WHO6, str(port)],
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait()


def make_lan(host: Host, index: int = 0) -> Lan:
    lan = Lan(host, f"{host.name}lan{index}", f"tmvp{index}", f"tmvl{index}")
    host.extra_netns.append(lan.ns)  # deleted with the host, even on failure
    sh("ip", "netns", "add", lan.ns)
    sh("ip", "-n", lan.ns, "link", "set", "lo", "up")
    sh("ip", "link", "add", lan.parent, "netns", host.name, "type", "veth", "peer", "name", lan.port, "netns", lan.ns)
    sh("ip", "-n", lan.ns, "addr", "add", f"{ROUTER}/24", "dev", lan.port)
    sh("ip", "-n", lan.ns, "-6", "addr", "add", f"{ROUTER6}/64", "dev", lan.port, "nodad")
    sh("ip", "-n", lan.ns, "link", "set", lan.port, "up")
    sh("ip", "-n", host.name, "link", "set", lan.parent, "up")
    return lan


@pytest.fixture
def lan(host: Host) -> Iterator[Lan]:
    made = make_lan(host)
    try:
        yield made
    finally:
        made.stop()


def ping(host: Host, name: str, address: str, *extra: str) -> bool:
    """One ping from container ``name`` (inside its namespace, as root)."""
    six = ["-6"] if ":" in address else []
    return host.in_container(name, "ping", *six, "-c1", "-W2", *extra, address, check=False).returncode == 0


def host_ping(host: Host, address: str) -> bool:
    six = ["-6"] if ":" in address else []
    return host.in_host("ping", *six, "-c1", "-W2", address, check=False).returncode == 0


def in_ctr(host: Host, name: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    return lambda *c, **k: host.in_container(name, *c, **k)


def links(host: Host) -> list[str]:
    """The host namespace's link names (without the @peer)."""
    out = host.in_host("ip", "-o", "link").stdout.splitlines()
    return sorted(line.split(":")[1].strip().split("@")[0] for line in out)


def macvlan_create(host: Host, name: str, *extra: str, parent: str | None = "tmvp0", ipv6: bool = False) -> dict[str, Any]:
    args = ["network", "create", "-d", "macvlan", "--subnet", SUBNET, "--gateway", ROUTER]
    if parent:
        args += ["-o", f"parent={parent}"]
    if ipv6:
        args += ["--ipv6", "--subnet", SUBNET6, "--gateway", ROUTER6]
    host.tether(*args, *extra, name)
    return dict(host.json("network", "inspect", name)[0])


def run(host: Host, name: str, net: str, *extra: str) -> dict[str, Any]:
    host.tether("run", "-d", "--name", name, "--net", net, *extra, "--", "sleep", "600")
    return dict(host.inspect(name)["networks"][net])


def resolve(host: Host, name: str, what: str) -> str:
    return host.tether("exec", name, "--", "python3", "-c", RESOLVE, what, check=False).stdout.strip()


# ---------------------------------------------------------------------------- bridge mode
def test_bridge_mode_containers_are_machines_on_the_lan(host: Host, lan: Lan) -> None:
    net = macvlan_create(host, "mv", "--ip-range", RANGE, "--aux-address", "r2=192.0.2.64", ipv6=True)
    assert (net["driver"], net["parent"], net["macvlan_mode"]) == ("macvlan", "tmvp0", "bridge")
    assert net["aux_addresses"] == {"r2": "192.0.2.64"} and net["ip_range"] == RANGE
    assert (net["gateway"], net["gateway6"]) == (ROUTER, ROUTER6)
    # IPAM skips the aux address (the first of --ip-range), and asking for it is refused
    before = host.snapshot()
    r = host.tether("run", "-d", "--name", "taken", "--net", "mv", "--ip", "192.0.2.64", "--", "sleep", "600", check=False)
    assert r.returncode != 0 and "reserved" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert host.snapshot() == before
    a, b = run(host, "a", "mv"), run(host, "b", "mv")
    assert (a["address"], b["address"]) == ("192.0.2.65", "192.0.2.66")  # from --ip-range, past r2
    assert a["address6"].startswith("2001:db8:21::") and a["prefixlen6"] == 64
    # the first packets right after run: to each other and to the router, both families
    for src, dst in (("a", b["address"]), ("b", a["address"]), ("a", b["address6"]), ("a", ROUTER), ("b", ROUTER),
                     ("b", ROUTER6)):
        assert ping(host, src, dst), (src, dst)
    # a macvlan child in bridge mode, with the container's own MAC; defaults via the router
    link = host.in_container("a", "ip", "-d", "-o", "link", "show", "eth0").stdout
    assert "macvlan mode bridge" in link and a["mac"] in link
    addrs = host.in_container("a", "ip", "-o", "addr", "show", "dev", "eth0").stdout
    assert f"{a['address']}/24" in addrs and f"{a['address6']}/64" in addrs and "tentative" not in addrs
    assert f"default via {ROUTER} dev eth0" in host.in_container("a", "ip", "route", "show", "default").stdout
    assert f"default via {ROUTER6} dev eth0" in host.in_container("a", "ip", "-6", "route", "show", "default").stdout
    # the router sees the container itself: its MAC, its addresses (no NAT), over TCP too
    assert lan.mac_seen(a["address"]) == a["mac"] and lan.mac_seen(b["address"]) == b["mac"]
    lan.serve_who(8021)
    assert until(lambda: ask(in_ctr(host, "a"), ROUTER, 8021)) == a["address"]
    assert ask(in_ctr(host, "a"), ROUTER6, 8021) == a["address6"]
    # ... and the LAN reaches the containers at their own addresses
    assert lan.run("ping", "-c1", "-W2", b["address"], check=False).returncode == 0
    assert lan.run("ping", "-6", "-c1", "-W2", b["address6"], check=False).returncode == 0
    # no port mapping, no bridge, no veth on the host: the parent is the only link besides lo
    assert links(host) == ["lo", "tmvp0"]
    # the documented trap without host_access: the host, even with an address on the LAN,
    # cannot reach its own macvlan children (the kernel keeps a parent and its children apart)
    host.in_host("ip", "addr", "add", "192.0.2.250/24", "dev", "tmvp0")
    assert lan.run("ping", "-c1", "-W2", "192.0.2.250", check=False).returncode == 0  # the LAN can
    assert not host_ping(host, a["address"])
    # ps, inspect, network inspect and ls show it like any network
    assert a["address"] in host.tether("ps").stdout
    attached = host.json("network", "inspect", "mv")[0]["containers"]
    assert attached["a"]["address"] == f"{a['address']}/24" and attached["a"]["mac"] == a["mac"]
    assert attached["b"]["address6"] == f"{b['address6']}/64"
    listed = {n["name"]: n for n in host.json("network", "ls", "--format", "json")}
    assert listed["mv"]["driver"] == "macvlan" and listed["mv"]["containers"] == 2
    # removal leaves nothing: no link, the parent untouched, the network can go
    host.tether("rm", "-f", "a", "b")
    host.tether("network", "rm", "mv")
    assert links(host) == ["lo", "tmvp0"] and "UP" in host.in_host("ip", "-o", "link", "show", "tmvp0").stdout


# ---------------------------------------------------------------------------- other modes
def test_private_mode_isolates_the_containers_from_each_other(host: Host, lan: Lan) -> None:
    macvlan_create(host, "priv", "-o", "macvlan_mode=private", ipv6=True)
    a, b = run(host, "a", "priv"), run(host, "b", "priv")
    assert "macvlan mode private" in host.in_container("a", "ip", "-d", "-o", "link", "show", "eth0").stdout
    for name in ("a", "b"):
        assert ping(host, name, ROUTER) and ping(host, name, ROUTER6)
    assert not ping(host, "a", b["address"]) and not ping(host, "b", a["address"])
    assert not ping(host, "a", b["address6"])
    assert host.json("network", "inspect", "priv")[0]["macvlan_mode"] == "private"


def test_vepa_mode_and_the_same_subnet_on_another_parent(host: Host, lan: Lan) -> None:
    # a second LAN with the same addresses behind another parent: allowed, it is another LAN
    other = make_lan(host, 1)
    macvlan_create(host, "one", parent="tmvp0")
    macvlan_create(host, "vepa", "-o", "macvlan_mode=vepa", "-o", "mtu=1400", parent="tmvp1")
    a, v = run(host, "a", "one"), run(host, "v", "vepa")
    link = host.in_container("v", "ip", "-d", "-o", "link", "show", "eth0").stdout
    assert "macvlan mode vepa" in link and "mtu 1400" in link
    assert "mtu 1500" in host.in_container("a", "ip", "-o", "link", "show", "eth0").stdout  # the parent's
    assert ping(host, "v", ROUTER) and ping(host, "a", ROUTER)
    # each container is on its own LAN: each router learnt only its own container
    assert other.mac_seen(v["address"]) == v["mac"] and lan.mac_seen(a["address"]) == a["mac"]
    assert lan.mac_seen(v["address"]) in ("", a["mac"]) and other.mac_seen(a["address"]) in ("", v["mac"])


def test_passthru_takes_one_container(host: Host, lan: Lan) -> None:
    macvlan_create(host, "pt", "-o", "macvlan_mode=passthru")
    run(host, "solo", "pt")
    assert "macvlan mode passthru" in host.in_container("solo", "ip", "-d", "-o", "link", "show", "eth0").stdout
    assert ping(host, "solo", ROUTER)
    host.tether("network", "create", "--subnet", "10.121.0.0/24", "br")
    run(host, "other", "br")
    before = host.snapshot()
    for args in (["run", "-d", "--name", "second", "--net", "pt", "--", "sleep", "600"],
                 ["network", "connect", "pt", "other"]):
        r = host.tether(*args, check=False)
        assert r.returncode != 0 and "passthru" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert host.snapshot() == before
    assert ping(host, "solo", ROUTER)  # the first one is untouched
    # once it leaves, the next one may have the parent
    host.tether("rm", "-f", "solo")
    host.tether("network", "connect", "pt", "other")
    assert ping(host, "other", ROUTER)


def test_a_parent_gone_while_the_daemon_was_down(host: Host, lan: Lan) -> None:
    make_lan(host, 1)
    macvlan_create(host, "gone", parent="tmvp1")
    macvlan_create(host, "stays", parent="tmvp0")
    run(host, "c", "gone")
    run(host, "d", "stays")
    host.kill_daemon(signal.SIGKILL)
    host.in_host("ip", "link", "del", "tmvp1")  # takes c's macvlan child with it
    host.start_daemon()  # reconcile says so, and goes on
    assert ping(host, "d", ROUTER)  # the other network is untouched
    before = host.snapshot()
    r = host.tether("run", "--rm", "--net", "gone", "--", "true", check=False)
    assert r.returncode != 0 and "tmvp1" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert host.snapshot() == before
    # what is left can be removed
    host.tether("rm", "-f", "c")
    host.tether("network", "rm", "gone")
    assert [n["name"] for n in host.json("network", "ls", "--format", "json") if n["name"] != "bridge"] == ["stays"]


# ---------------------------------------------------------------------------- no way out
@pytest.mark.parametrize("how", [[], ["--internal"]], ids=["no-parent", "internal"])
def test_without_a_parent_containers_reach_only_each_other(host: Host, lan: Lan, how: list[str]) -> None:
    # the same subnet as the LAN behind tmvp0, whose router must stay out of reach
    net = macvlan_create(host, "closed", *how, parent=None, ipv6=True)
    assert net["parent"] is None
    stub = [name for name in links(host) if name not in ("lo", "tmvp0")]
    assert len(stub) == 2, stub  # tether's own stub parent: a veth pair leading nowhere
    a, b = run(host, "a", "closed"), run(host, "b", "closed")
    assert ping(host, "a", b["address"]) and ping(host, "b", a["address"]) and ping(host, "a", b["address6"])
    for name in ("a", "b"):
        assert host.in_container(name, "ip", "route", "show", "default").stdout.strip() == ""
        assert host.in_container(name, "ip", "-6", "route", "show", "default").stdout.strip() == ""
    assert not ping(host, "a", ROUTER) and not ping(host, "a", ROUTER6)
    assert lan.mac_seen(a["address"]) == ""
    # the stub goes with the network
    host.tether("rm", "-f", "a", "b")
    host.tether("network", "rm", "closed")
    assert links(host) == ["lo", "tmvp0"]


# ---------------------------------------------------------------------------- host access
def _shim_routes(host: Host, shim: str) -> list[str]:
    out = host.in_host("ip", "route", "show", "dev", shim).stdout + host.in_host("ip", "-6", "route", "show", "dev", shim).stdout
    return sorted(line.split()[0] for line in out.splitlines() if "proto kernel" not in line)


def test_host_access_both_ways_and_its_lifecycle(host: Host, lan: Lan) -> None:
    # the host is on the LAN itself (it routes the subnet through the parent already)
    host.in_host("ip", "addr", "add", "192.0.2.250/24", "dev", "tmvp0")
    host.in_host("ip", "-6", "addr", "add", "2001:db8:21::250/64", "dev", "tmvp0", "nodad")
    net = macvlan_create(host, "ha", "--ip-range", RANGE, "-o", "host_access=true", ipv6=True)
    opts, shim = net["options"], net["host_interface"]
    # picked: the highest free addresses outside --ip-range
    assert (opts["host_access"], opts["host_address"]) == ("true", "192.0.2.254")
    assert opts["host_address6"] == "2001:db8:21:0:ffff:ffff:ffff:ffff"
    assert shim in links(host)
    shim_addrs = host.in_host("ip", "-o", "addr", "show", "dev", shim).stdout
    assert "192.0.2.254/32" in shim_addrs and f"{opts['host_address6']}/128" in shim_addrs
    a, b = run(host, "a", "ha"), run(host, "b", "ha")
    assert _shim_routes(host, shim) == sorted([a["address"], b["address"], a["address6"], b["address6"]])
    # host <-> container, both families, both ways; the container sees the host's shim address
    for address in (a["address"], a["address6"], b["address"], b["address6"]):
        assert host_ping(host, address), address
    assert ping(host, "a", opts["host_address"]) and ping(host, "a", opts["host_address6"])
    host.tether("run", "-d", "--name", "srv", "--net", "ha", "--", "python3", "-c", TCP_WHO6, "8000")
    srv = host.inspect("srv")["networks"]["ha"]
    assert until(lambda: ask(host.in_host, srv["address"], 8000)) == opts["host_address"]
    assert ask(host.in_host, srv["address6"], 8000) == opts["host_address6"]
    # the host's own LAN address stays the host's: the LAN still reaches it, and the router too
    assert lan.run("ping", "-c1", "-W2", "192.0.2.250", check=False).returncode == 0
    assert ping(host, "a", ROUTER) and ping(host, "b", ROUTER6)
    # a container leaving takes its routes
    host.tether("rm", "-f", "srv")
    assert srv["address"] not in _shim_routes(host, shim)

    # restored by reconcile: the shim deleted by hand, then a restart; then the same with SIGKILL
    for sig in (signal.SIGTERM, signal.SIGKILL):
        host.kill_daemon(sig)
        host.in_host("ip", "link", "del", shim)
        assert not host_ping(host, a["address"])
        host.start_daemon()
        assert shim in links(host)
        assert _shim_routes(host, shim) == sorted([a["address"], b["address"], a["address6"], b["address6"]])
        assert host_ping(host, a["address"]) and host_ping(host, b["address6"]), sig
        assert host_ping(host, b["address"]) and ping(host, "b", opts["host_address"]), sig
        assert host_ping(host, a["address6"]) and ping(host, "a", opts["host_address6"]), sig

    # removed with the network: no shim, no route left
    host.tether("rm", "-f", "a", "b")
    host.tether("network", "rm", "ha")
    assert links(host) == ["lo", "tmvp0"]
    assert "192.0.2.254" not in host.in_host("ip", "route", "show", "table", "all").stdout

    # chosen addresses
    net = macvlan_create(host, "ha2", "--ip-range", RANGE, "-o", "host_access=true", "-o", "host_address=192.0.2.10",
                         "-o", "host_address6=2001:db8:21::10", ipv6=True)
    assert (net["options"]["host_address"], net["options"]["host_address6"]) == ("192.0.2.10", "2001:db8:21::10")
    c = run(host, "c", "ha2")
    assert host_ping(host, c["address"]) and host_ping(host, c["address6"])
    assert ping(host, "c", "192.0.2.10") and ping(host, "c", "2001:db8:21::10")
    # the host's address is never handed out
    r = host.tether("network", "connect", "--ip", "192.0.2.10", "ha2", "c", check=False)
    assert r.returncode != 0


def _link_mac(host: Host, ifname: str) -> str:
    out = host.in_host("ip", "-o", "link", "show", ifname).stdout.split()
    return out[out.index("link/ether") + 1]


def test_a_restored_shim_keeps_its_mac(host: Host, lan: Lan) -> None:
    net = macvlan_create(host, "ha", "-o", "host_access=true")
    shim = net["host_interface"]
    c = run(host, "c", "ha")
    assert ping(host, "c", net["options"]["host_address"])
    mac = _link_mac(host, shim)
    host.kill_daemon(signal.SIGKILL)
    host.in_host("ip", "link", "del", shim)
    host.start_daemon()
    assert _link_mac(host, shim) == mac
    # the container, whose cache still holds that MAC, reaches the host at once
    assert ping(host, "c", net["options"]["host_address"]) and host_ping(host, c["address"])


# ---------------------------------------------------------------------------- like any network
def test_connect_disconnect_addresses_mac_names_and_prune(host: Host, lan: Lan) -> None:
    assert "--mac-address" in host.tether("run", "--help").stdout
    macvlan_create(host, "mv", ipv6=True)
    host.tether("network", "create", "--subnet", "10.121.0.0/24", "br")
    x = run(host, "x", "br")
    mac = "02:42:c0:00:02:46"
    y = run(host, "y", "mv", "--ip", "192.0.2.70", "--ip6", "2001:db8:21::70", "--mac-address", mac,
            "--network-alias", "yalias")
    assert (y["address"], y["address6"], y["mac"]) == ("192.0.2.70", "2001:db8:21::70", mac)
    assert mac in host.in_container("y", "ip", "-o", "link", "show", "eth0").stdout
    assert ping(host, "y", ROUTER) and lan.mac_seen("192.0.2.70") == mac

    # a running bridge-network container gains a macvlan interface; its default stays on eth0
    host.tether("network", "connect", "--ip", "192.0.2.80", "--alias", "xalias", "mv", "x")
    xm = host.inspect("x")["networks"]["mv"]
    assert (xm["ifname"], xm["address"]) == ("eth1", "192.0.2.80")
    assert "macvlan" in host.in_container("x", "ip", "-d", "-o", "link", "show", "eth1").stdout
    assert ping(host, "x", ROUTER) and ping(host, "x", "192.0.2.70") and ping(host, "x", y["address6"])
    assert lan.mac_seen("192.0.2.80") == xm["mac"]
    assert f"via {x['gateway']} dev eth0" in host.in_container("x", "ip", "route", "show", "default").stdout
    # names and aliases through the embedded resolver, on the macvlan network
    assert resolve(host, "x", "y") == "192.0.2.70" and resolve(host, "x", "yalias") == "192.0.2.70"
    assert resolve(host, "y", "x") == "192.0.2.80" and resolve(host, "y", "xalias") == "192.0.2.80"
    v6 = host.tether("exec", "x", "--", "python3", "-c", RESOLVE6, "y").stdout.split()
    assert v6 == ["2001:db8:21::70"]
    getent = host.tether("exec", "y", "--", "getent", "hosts", "xalias").stdout.split()
    assert getent[0] in ("192.0.2.80", xm["address6"])

    # disconnect: the interface and the names go, the address is free again
    host.tether("network", "disconnect", "mv", "x")
    assert "eth1" not in host.in_container("x", "ip", "-o", "link").stdout
    assert "x" not in host.json("network", "inspect", "mv")[0]["containers"]
    assert resolve(host, "y", "xalias").startswith("FAIL")
    assert lan.run("ping", "-c1", "-W1", "192.0.2.80", check=False).returncode != 0
    host.tether("network", "connect", "--ip", "192.0.2.80", "mv", "x")
    assert ping(host, "x", ROUTER)
    host.tether("network", "disconnect", "mv", "x")

    # prune removes the unused macvlan networks, with their stub and shim; keeps the used one
    base = set(links(host))
    macvlan_create(host, "unused-stub", parent=None)
    host.tether("network", "create", "-d", "macvlan", "-o", "parent=tmvp0", "--subnet", "198.51.100.0/24",
                "-o", "host_access=true", "unused-shim")
    made = set(links(host)) - base
    assert len(made) == 3 and sum(name.startswith("tms") for name in made) == 2, made  # the stub's pair, the shim
    host.tether("rm", "-f", "x")
    pruned = host.tether("network", "prune", "-f").stdout
    assert "unused-stub" in pruned and "unused-shim" in pruned and "br" in pruned
    assert sorted(n["name"] for n in host.json("network", "ls", "--format", "json") if n["name"] != "bridge") == ["mv"]
    assert links(host) == ["lo", "tmvp0"]
    assert ping(host, "y", ROUTER)


# ---------------------------------------------------------------------------- restart and SIGKILL
def test_containers_keep_working_across_daemon_restart_and_sigkill(host: Host, lan: Lan) -> None:
    host.in_host("ip", "addr", "add", "192.0.2.250/24", "dev", "tmvp0")
    macvlan_create(host, "mv", "-o", "host_access=true", ipv6=True)
    run(host, "a", "mv")
    b = run(host, "b", "mv")
    before = host.snapshot()
    routes = host.in_host("ip", "route").stdout
    for sig in (signal.SIGKILL, signal.SIGTERM):
        # ping floods across the daemon's death and restart: container to container, and
        # host to container through the shim; no packet may be lost
        floods = [
            subprocess.Popen(["ip", "netns", "exec", host.prefix + "a", "ping", "-q", "-i", "0.01", "-c", "300",
                              b["address"]], stdout=subprocess.PIPE, text=True),
            subprocess.Popen([*host.enter(), "ping", "-q", "-i", "0.01", "-c", "300", b["address"]],
                             stdout=subprocess.PIPE, text=True),
        ]
        time.sleep(0.3)
        host.kill_daemon(sig)
        assert ping(host, "a", ROUTER) and ping(host, "a", b["address6"])
        host.start_daemon()
        for flood in floods:
            out, _ = flood.communicate(timeout=60)
            assert " 0% packet loss" in out, (sig, out)
        after = host.snapshot()
        assert after == before, sig
        assert host.in_host("ip", "route").stdout == routes
        assert [c["state"] for c in after["containers"]] == ["running", "running"]
        assert ping(host, "b", ROUTER6) and host_ping(host, b["address6"])
    # a macvlan child deleted by hand while no daemon runs is made again at the next start
    host.kill_daemon(signal.SIGKILL)
    host.in_container("b", "ip", "link", "del", "eth0")
    assert not ping(host, "a", b["address"])
    host.start_daemon()
    assert ping(host, "a", b["address"]) and ping(host, "b", ROUTER) and ping(host, "b", ROUTER6)
    assert host_ping(host, b["address"]) and lan.mac_seen(b["address"]) == b["mac"]
    assert "macvlan mode bridge" in host.in_container("b", "ip", "-d", "-o", "link", "show", "eth0").stdout
    assert f"default via {ROUTER} dev eth0" in host.in_container("b", "ip", "route", "show", "default").stdout
    assert host.snapshot() == before


def _consistent(host: Host, lan: Lan, shim: str) -> None:
    """Whatever a kill left, after reconcile: every container the daemon lists runs and is
    on the LAN, with its host route; nothing else is left in the kernel or the leases."""
    containers = host.json("ps", "-a", "--format", "json")
    running = [c["name"] for c in containers]
    assert all(c["state"] == "running" for c in containers), containers
    addresses = []
    for name in running:
        ep = host.inspect(name)["networks"]["mv"]
        addresses.append(ep["address"])
        assert f"{ep['address']}/24" in host.in_container(name, "ip", "-o", "addr", "show", "eth0").stdout
        assert ping(host, name, ROUTER), name
        assert host_ping(host, ep["address"]), name
    assert links(host) == sorted(["lo", "tmvp0", shim])
    assert _shim_routes(host, shim) == sorted(addresses)
    attached = host.json("network", "inspect", "mv")[0]["containers"]
    assert sorted(attached) == sorted(running)
    netns = sorted(n for n in host.snapshot()["netns"])
    assert netns == sorted(host.prefix + n for n in running), netns


def test_sigkill_during_runs_leaves_nothing_reconcile_does_not_fix(host: Host, lan: Lan) -> None:
    net = macvlan_create(host, "mv", "-o", "host_access=true")
    shim = net["host_interface"]
    run(host, "keep", "mv")
    for i, delay in enumerate((0.05, 0.15, 0.3, 0.5)):  # kills at different points of a run
        client = subprocess.Popen(
            [*host.enter(), sys.executable, "-m", "tether.cli", "--socket", host.socket, "--state-dir", host.state_dir,
             "run", "-d", "--name", f"k{i}", "--net", "mv", "--", "sleep", "600"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "TETHER_NO_AUTOSTART": "1"},
        )
        time.sleep(delay)
        host.kill_daemon(signal.SIGKILL)
        client.wait(timeout=60)
        host.start_daemon()
        _consistent(host, lan, shim)
    # the store and kernel agree: everything can be removed, leaving only what was there
    for c in host.json("ps", "-a", "--format", "json"):
        host.tether("rm", "-f", c["name"])
    host.tether("network", "rm", "mv")
    assert links(host) == ["lo", "tmvp0"] and host.snapshot()["netns"] == []


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "args,message",
    [
        (["network", "create", "-d", "macvlan", "-o", "parent=nosuch0", "--subnet", "198.51.100.0/24", "x"],
         "no such interface on this host: use one of"),
        (["network", "create", "-d", "macvlan", "-o", "parent=tmvp0", "--subnet", "192.0.2.128/25", "x"],
         "overlaps network 'base'"),
        (["network", "create", "-d", "macvlan", "-o", "parent=tmvp0", "--subnet", "198.51.100.0/24",
          "--gateway", "203.0.113.1", "x"], "outside the subnet"),
        (["network", "create", "-d", "macvlan", "-o", "parent=tmvp1", "--subnet", SUBNET, "--ip-range", RANGE,
          "-o", "host_access=true", "-o", "host_address=192.0.2.70", "x"], "inside --ip-range"),
        (["network", "create", "-d", "macvlan", "-o", "parent=tmvp1", "--subnet", SUBNET,
          "-o", "macvlan_mode=bridged", "x"], "unknown -o macvlan_mode"),
        (["network", "create", "-d", "macvlan", "-o", "parent=tmvp1", "--subnet", SUBNET, "--internal", "x"],
         "contradict"),
        (["network", "create", "-d", "macvlan", "-o", "parent=tmvp1", "--subnet", SUBNET,
          "-o", "macvlan_mode=private", "-o", "host_access=true", "x"], "needs macvlan_mode=bridge"),
        (["network", "create", "-d", "macvlan", "-o", "parent=tmvp1", "--subnet", SUBNET,
          "-o", "host_address=192.0.2.9", "x"], "needs -o host_access=true"),
        (["network", "create", "-d", "macvlan", "-o", "parent=tmvp1", "--subnet", SUBNET, "-o", "flavour=x", "x"],
         "flavour"),
        (["network", "create", "-d", "macvlan", "-o", "macvlan_mode=passthru", "--subnet", SUBNET, "x"],
         "passthru needs -o parent"),
        (["network", "create", "-d", "macvlan", "-o", "parent=tmvp1", "--subnet", SUBNET, "-o", "mtu=9000", "x"],
         "is more than parent tmvp1 carries (1500)"),
        (["run", "--net", "base", "--ip", "203.0.113.5", "--", "true"], "outside network"),
        (["run", "--net", "base", "--ip", "192.0.2.64", "--", "true"], "reserved"),
        (["run", "--net", "base", "-p", "8080:80", "--", "true"], "drop -p"),
        (["network", "connect", "--ip", "198.51.100.9", "base", "c"], "outside network"),
    ],
    ids=["parent-missing", "overlap-same-parent", "gateway-outside", "host-address-in-range", "mode-unknown",
         "internal-with-parent", "host-access-private", "host-address-alone", "option-unknown", "passthru-no-parent", "mtu-above-parent",
         "ip-outside", "ip-aux", "publish", "connect-ip-outside"],
)
def test_bad_input_is_one_line_and_changes_nothing(host: Host, lan: Lan, args: list[str], message: str) -> None:
    make_lan(host, 1)
    macvlan_create(host, "base", "--ip-range", RANGE, "--aux-address", "r2=192.0.2.64")
    host.tether("network", "create", "--subnet", "10.121.0.0/24", "br")
    run(host, "c", "br")
    before = host.snapshot()
    r = host.tether(*args, check=False)
    assert r.returncode != 0
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    if "parent=nosuch0" in args:
        assert "tmvp0" in r.stderr and "tmvp1" in r.stderr
    assert host.snapshot() == before
    assert host.in_host("ip", "-o", "link", "show", "type", "macvlan").stdout == ""  # no child left on the host

