"""The Firewall's ip6 table against real nftables, with real v6 packets between namespaces.

A dual-stack world, built once per module with ``ip`` commands, every name carrying a
unique prefix (``tf6`` + 6 hex digits); every address is inside it (documentation
prefixes 2001:db8::/32 for the "public" side, ULA fd00::/8 for the containers)::

    inet 2001:db8:113::2 -- lan 2001:db8:113::1 | 2001:db8:50::2 -- host (hlan 2001:db8:50::1)
                                                                     |
      tb0 fd00:210::1  masquerade, icc        c1 ::2, c2 ::3        |
      tb1 fd00:211::1  masquerade, icc        c3 ::2                |  bridges in the
      tb2 fd00:212::1  internal, icc          c4 ::2, c4b ::3       |  host namespace
      tb3 fd00:213::1  masquerade, no icc     c5 ::2, c6 ::3        |
      tb4 fd00:214::1  routed (no masquerade) c7 ::2                |
      tb5 (IPv4 only for tether; the admin gave it fd00:215::1)  c8 ::2

Every network has a v4 subnet too (10.22N.0.0/24, as in test_firewall.py). The lan routes
fd00::/8 to the host (so "direct routing" to containers can be tried); the internet
namespace only knows its way to the lan: without masquerade a container gets no answer
from it. The host has ``net.ipv6.conf.all.forwarding=1``, DAD off (addresses usable at
once) and hairpin mode on the bridge ports, as the controller must set them.

Servers answer with the peer address they saw, so source preservation and masquerade are
checked directly. Cleanup deletes every namespace with the prefix, even on failure, and
checks none is left.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from tether.datapath import nsutil
from tether.errors import Conflict
from tether.firewall import Firewall, NetworkRules, PortRule

pytestmark = pytest.mark.e2e

NETNS_DIR = "/var/run/netns"
HOST6 = "2001:db8:50::1"
LAN6 = "2001:db8:50::2"
INET6 = "2001:db8:113::2"
HOST4 = "192.168.50.1"
QUICK = 0.5  # seconds a connection attempt that must fail is given
REFUSED = "refused"

# bridge -> (v4 prefix, v6 prefix, rules, containers)
NETWORKS = {
    "tb0": ("10.220.0", "fd00:210:", NetworkRules("tb0", "10.220.0.0/24", True, False, True, subnet6="fd00:210::/64"),
            ["c1", "c2"]),
    "tb1": ("10.221.0", "fd00:211:", NetworkRules("tb1", "10.221.0.0/24", True, False, True, subnet6="fd00:211::/64"),
            ["c3"]),
    "tb2": ("10.222.0", "fd00:212:", NetworkRules("tb2", "10.222.0.0/24", False, True, True, subnet6="fd00:212::/64"),
            ["c4", "c4b"]),
    "tb3": ("10.223.0", "fd00:213:", NetworkRules("tb3", "10.223.0.0/24", True, False, False, subnet6="fd00:213::/64"),
            ["c5", "c6"]),
    "tb4": ("10.224.0", "fd00:214:", NetworkRules("tb4", "10.224.0.0/24", False, False, True, subnet6="fd00:214::/64"),
            ["c7"]),
    # v4-only as far as tether knows: its bridge still belongs in the ip6 table's sets
    "tb5": ("10.225.0", "fd00:215:", NetworkRules("tb5", "10.225.0.0/24", True, False, True), ["c8"]),
}
ALL_NETWORKS = [rules for _, _, rules, _ in NETWORKS.values()]
ADDR4 = {name: f"{v4}.{i + 2}" for v4, _, _, names in NETWORKS.values() for i, name in enumerate(names)}
ADDR6 = {name: f"{v6}:{i + 2}" for _, v6, _, names in NETWORKS.values() for i, name in enumerate(names)}
GATEWAY6 = {name: f"{v6}:1" for _, v6, _, names in NETWORKS.values() for name in names}

PORTS = [
    PortRule("tcp", None, 8080, ADDR4["c1"], 80),  # -p 8080:80 on a dual-stack container: one per family
    PortRule("tcp", None, 8080, ADDR6["c1"], 80),
    PortRule("udp", None, 5353, ADDR6["c1"], 53),
    PortRule("tcp", "::1", 8081, ADDR6["c1"], 81),  # -p [::1]:8081:81
    PortRule("tcp", HOST6, 8082, ADDR6["c2"], 80),  # the host's lan v6 address only
    PortRule("tcp", None, 8090, ADDR6["c4"], 80),  # on the internal network
]


def sh(*cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(cmd), check=False, capture_output=True, text=True, timeout=30, input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed: {result.stderr}{result.stdout}")
    return result


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


@dataclass
class World:
    prefix: str
    servers: list[socket.socket] = field(default_factory=list)

    def ns(self, name: str) -> str:
        return self.prefix + name

    def path(self, name: str) -> str:
        return f"{NETNS_DIR}/{self.prefix}{name}"

    def in_ns(self, name: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("nsenter", f"--net={self.path(name)}", "--", *cmd, check=check)

    def nft(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The nft CLI in the host namespace: an observer independent of the code under test."""
        return self.in_ns("host", "nft", *args, check=check)

    # -- servers: answer with "<label> <peer address>" ----------------------------------

    def server(self, ns: str, kind: socket.SocketKind, family: socket.AddressFamily, port: int, label: str) -> None:
        sock = nsutil.run_in_netns(self.path(ns), lambda: socket.socket(family, kind))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
        self.servers.append(sock)
        if kind == socket.SOCK_STREAM:
            sock.listen(64)
        threading.Thread(target=_serve, args=(sock, kind, label), daemon=True).start()

    # -- clients: the answer, REFUSED, or None when nothing came back ----------------------

    def tcp(self, ns: str, addr: str, port: int, timeout: float = QUICK) -> str | None:
        def body() -> str | None:
            with socket.socket(_family(addr), socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                try:
                    sock.connect((addr, port))
                    return sock.recv(256).decode() or None
                except ConnectionRefusedError:
                    return REFUSED
                except OSError:
                    return None

        return nsutil.run_in_netns(self.path(ns), body)

    def udp(self, ns: str, addr: str, port: int, timeout: float = QUICK) -> str | None:
        def body() -> str | None:
            with socket.socket(_family(addr), socket.SOCK_DGRAM) as sock:
                sock.settimeout(timeout)
                try:
                    sock.connect((addr, port))
                    sock.send(b"ping")
                    return sock.recv(256).decode() or None
                except OSError:
                    return None

        return nsutil.run_in_netns(self.path(ns), body)

    def close(self) -> None:
        for sock in self.servers:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def _serve(sock: socket.socket, kind: socket.SocketKind, label: str) -> None:
    while True:
        try:
            if kind == socket.SOCK_STREAM:
                conn, peer = sock.accept()
                with conn:
                    conn.sendall(f"{label} {peer[0]}".encode())
            else:
                _, peer = sock.recvfrom(512)
                if peer is None:  # shut down
                    return
                sock.sendto(f"{label} {peer[0]}".encode(), peer)
        except OSError:
            return


_NO_DAD = ["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"]


def _build_uplinks(world: World) -> None:
    host, lan, inet = world.ns("host"), world.ns("lan"), world.ns("inet")
    sh("ip", "-n", host, "link", "add", "hlan", "type", "veth", "peer", "name", "eth0", "netns", lan)
    sh("ip", "-n", lan, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", inet)
    sh("ip", "-n", host, "-batch", "-", input=(
        f"addr add {HOST4}/24 dev hlan\naddr add {HOST6}/64 dev hlan nodad\nlink set hlan up\n"
        "route add default via 192.168.50.2\nroute add default via 2001:db8:50::2\n"
    ))
    sh("ip", "-n", lan, "-batch", "-", input=(
        "addr add 192.168.50.2/24 dev eth0\n"
        f"addr add {LAN6}/64 dev eth0 nodad\nlink set eth0 up\n"
        "addr add 2001:db8:113::1/64 dev eth1 nodad\nlink set eth1 up\n"
        f"route add fd00::/8 via {HOST6}\nroute add 10.0.0.0/8 via {HOST4}\n"
    ))
    sh("ip", "-n", inet, "-batch", "-", input=(
        f"addr add {INET6}/64 dev eth0 nodad\nlink set eth0 up\nroute add default via 2001:db8:113::1\n"
    ))


def _build_networks(world: World) -> list[str]:
    p, host = world.prefix, world.ns("host")
    sysctls = []
    for bridge, (v4, v6, _, containers) in NETWORKS.items():
        sh("ip", "-n", host, "-batch", "-", input=(
            f"link add {bridge} type bridge\naddr add {v4}.1/24 dev {bridge}\n"
            f"addr add {v6}:1/64 dev {bridge} nodad\nlink set {bridge} up\n"
        ))
        sysctls.append(f"net.ipv4.conf.{bridge}.route_localnet=1")
        for name in containers:
            veth = f"v{p[-4:]}{name}"
            sh("ip", "-n", host, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
               "netns", world.ns(name))
            sh("ip", "-n", host, "-batch", "-", input=(
                f"link set {veth} master {bridge} up\nlink set {veth} type bridge_slave hairpin on\n"
            ))
            sh("ip", "-n", world.ns(name), "-batch", "-", input=(
                f"addr add {ADDR4[name]}/24 dev eth0\naddr add {ADDR6[name]}/64 dev eth0 nodad\n"
                f"link set eth0 up\nroute add default via {v4}.1\nroute add default via {GATEWAY6[name]}\n"
            ))
    return sysctls


def _build(world: World) -> None:
    names = ["host", "lan", "inet", *ADDR6]
    for name in names:
        sh("ip", "netns", "add", world.ns(name))
        world.in_ns(name, "sysctl", "-q", "-w", *_NO_DAD)  # before any link exists
        sh("ip", "-n", world.ns(name), "link", "set", "lo", "up")
    _build_uplinks(world)
    sysctls = _build_networks(world)
    world.in_ns("host", "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                "net.bridge.bridge-nf-call-ip6tables=1", *sysctls)
    world.in_ns("lan", "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
    for name in ADDR6:
        world.server(name, socket.SOCK_STREAM, socket.AF_INET6, 80, name)
        world.server(name, socket.SOCK_STREAM, socket.AF_INET, 80, name)
    world.server("c1", socket.SOCK_STREAM, socket.AF_INET6, 81, "c1:81")
    world.server("c1", socket.SOCK_DGRAM, socket.AF_INET6, 53, "c1")
    world.server("inet", socket.SOCK_STREAM, socket.AF_INET6, 80, "inet")
    _settle(world)


def _settle(world: World) -> None:
    """Resolve every neighbour once before the tests (a refused connection to port 9 is
    enough): the first contact over the host's uplink takes about a second in a world just
    built (one solicitation goes unanswered), longer than the QUICK a test allows."""
    pairs = [("host", LAN6), ("lan", HOST6), ("lan", INET6), ("inet", "2001:db8:113::1")]
    pairs += [(name, GATEWAY6[name]) for name in ADDR6]
    for ns, addr in pairs:
        assert world.tcp(ns, addr, 9, timeout=5) == REFUSED, (ns, addr)


def netns_with(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    w = World(prefix=f"tf6{uuid.uuid4().hex[:6]}-")
    try:
        _build(w)
        yield w
    finally:
        w.close()
        for name in netns_with(w.prefix):
            sh("ip", "netns", "del", name, check=False)
        assert netns_with(w.prefix) == []


@pytest.fixture
def fw(world: World) -> Iterator[Firewall]:
    table = f"tether_{uuid.uuid4().hex[:6]}"
    firewall = Firewall(table, netns=world.path("host"))
    try:
        yield firewall
    finally:
        firewall.delete()
        firewall.close()
        assert table not in world.nft("list", "tables").stdout


@pytest.fixture
def synced(world: World, fw: Firewall) -> Firewall:
    fw.sync(ALL_NETWORKS, PORTS)
    return fw


def _wait_for(check: Callable[[], bool], seconds: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if check():
            return time.monotonic() - start
        time.sleep(0.02)
    assert check()
    return time.monotonic() - start


# -- the ruleset ------------------------------------------------------------------------


def test_both_tables_one_rule_count(world: World, fw: Firewall) -> None:
    assert fw.ensure() is True and fw.present()
    tables = world.nft("list", "tables").stdout
    assert f"table ip {fw.table}" in tables and f"table ip6 {fw.table}" in tables
    base = fw.rule_count()
    assert base == 35  # 18 in ip, 17 in ip6
    fw.sync(ALL_NETWORKS, [PortRule("tcp", None, 20000 + i, ADDR6["c1"], 80) for i in range(1000)])
    assert fw.rule_count() == base
    assert "tcp . 20999 : fd00:210::2 . 80" in world.nft("list", "map", "ip6", fw.table, "ports").stdout
    # the v4-only network's bridge is in the ip6 table's bridges set, its subnet nowhere in it
    listing = world.nft("list", "table", "ip6", fw.table).stdout
    assert '"tb5"' in listing and "fd00:215" not in listing
    # a flushed ip6 base chain is refilled by ensure(), its user chain is left alone
    world.nft("add", "rule", "ip6", fw.table, "user", "counter")
    world.nft("flush", "chain", "ip6", fw.table, "forward")
    assert fw.ensure() is True
    assert fw.rule_count() == base + 1
    # delete() takes both tables in one go
    fw.delete()
    assert fw.table not in world.nft("list", "tables").stdout and not fw.present()


def test_v6_conflicts_and_removals(world: World, fw: Firewall) -> None:
    fw.sync(ALL_NETWORKS, PORTS)
    other = PortRule("tcp", None, 8080, ADDR6["c2"], 80)
    with pytest.raises(Conflict):
        fw.add_ports([other])
    fw.remove_ports([other])  # not present as given: c1's mapping stays
    assert "tcp . 8080 : fd00:210::2 . 80" in world.nft("list", "map", "ip6", fw.table, "ports").stdout
    with pytest.raises(Conflict):  # overlapping v6 subnet, with a v4 one that overlaps nothing
        fw.add_network(NetworkRules("tbx", "10.99.0.0/24", True, False, True, subnet6="fd00:210::/48"))
    fw.remove_network(NetworkRules("tbx", "10.99.0.0/24", True, False, True, subnet6="fd00:210::/48"))
    assert "fd00:210::/64" in world.nft("list", "set", "ip6", fw.table, "masq_subnets").stdout
    fw.remove_ports(PORTS)
    fw.remove_ports(PORTS)
    for family in ("ip", "ip6"):
        for name in ("ports", "ports_ip"):
            assert "elements" not in world.nft("list", "map", family, fw.table, name).stdout


# -- packets ----------------------------------------------------------------------------


def test_v6_outbound_masquerade(world: World, synced: Firewall) -> None:
    assert world.tcp("c1", INET6, 80) == f"inet {HOST6}"  # NAT66 to the host's address
    assert world.tcp("c5", INET6, 80) == f"inet {HOST6}"
    assert world.tcp("c7", INET6, 80) == f"inet {ADDR6['c7']}"  # routed: keeps its address


def test_v6_published_ports_from_the_lan_keep_the_source(world: World, synced: Firewall) -> None:
    assert world.tcp("lan", HOST6, 8080) == f"c1 {LAN6}"
    assert world.udp("lan", HOST6, 5353) == f"c1 {LAN6}"
    assert world.tcp("inet", HOST6, 8080) == f"c1 {INET6}"
    assert world.tcp("lan", HOST6, 8082) == f"c2 {LAN6}"  # bound to this address
    assert world.tcp("lan", HOST4, 8080) == "c1 192.168.50.2"  # the v4 half of -p 8080:80


def test_v6_port_bound_to_one_address(world: World, synced: Firewall) -> None:
    assert world.tcp("lan", HOST6, 8081) == REFUSED  # ::1 only: not from the lan
    assert world.tcp("c3", "fd00:211::1", 8082) == REFUSED  # the lan address only
    assert world.tcp("c3", "fd00:211::1", 8080) == f"c1 {ADDR6['c3']}"  # every address


def test_v6_ports_from_the_host_itself(world: World, synced: Firewall) -> None:
    assert world.tcp("host", HOST6, 8080) == f"c1 {HOST6}"
    assert world.tcp("host", "fd00:211::1", 8080) == "c1 fd00:211::1"
    # [::1]: the kernel cannot carry it to a container (chains.py, "IPv6 and ::1"), so the
    # output chain leaves it alone: refused at once, not a hang (the map keeps the port)
    start = time.monotonic()
    assert world.tcp("host", "::1", 8081, timeout=2) == REFUSED
    assert world.tcp("host", "::1", 8080, timeout=2) == REFUSED
    assert time.monotonic() - start < 1
    assert "::1 . tcp . 8081" in world.nft("list", "map", "ip6", synced.table, "ports_ip").stdout


def test_v6_loopback_ports_through_the_relay(world: World) -> None:
    # With loopback_proxy the Firewall serves [::1] itself (loopback6.py): every v6 port on
    # ::1 or on every address, from the bridge's address (the relay is the client); the
    # listeners follow sync, add_ports and remove_ports, and go with delete().
    table = f"tether_{uuid.uuid4().hex[:6]}"
    fw = Firewall(table, netns=world.path("host"), loopback_proxy=True)
    try:
        fw.sync(ALL_NETWORKS, PORTS)
        assert world.tcp("host", "::1", 8081) == "c1:81 fd00:210::1"  # -p [::1]:8081:81
        assert world.tcp("host", "::1", 8080) == "c1 fd00:210::1"  # -p 8080:80, v6 half
        assert world.udp("host", "::1", 5353) == "c1 fd00:210::1"
        assert world.tcp("host", "::1", 8090) == "c4 fd00:212::1"  # the host reaches internal networks
        assert world.tcp("host", "::1", 8082) == REFUSED  # published on the lan address only
        assert world.tcp("lan", HOST6, 8081) == REFUSED  # [::1] stays the host's own
        fw.remove_ports([PORTS[3]])
        assert world.tcp("host", "::1", 8081) == REFUSED
        fw.add_ports([PORTS[3]])
        fw.add_ports([PORTS[3]])  # idempotent
        assert world.tcp("host", "::1", 8081) == "c1:81 fd00:210::1"
        # a port another process holds on [::1]: a Conflict naming it, and the call's
        # elements stay out of both tables (all or nothing)
        held = nsutil.run_in_netns(world.path("host"), lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM))
        try:
            held.bind(("::1", 8083))
            held.listen(1)
            dual = [PortRule("tcp", None, 8083, ADDR4["c2"], 80), PortRule("tcp", None, 8083, ADDR6["c2"], 80)]
            with pytest.raises(Conflict, match=r"tcp/8083 on \[::1\] is held by another process"):
                fw.add_ports(dual)
            for family in ("ip", "ip6"):
                assert "8083" not in world.nft("list", "map", family, table, "ports").stdout
        finally:
            held.close()
        fw.add_ports(dual)  # once it is free
        assert world.tcp("host", "::1", 8083) == "c2 fd00:210::1"
        # sync replaces the whole set of listeners
        fw.sync(ALL_NETWORKS, PORTS[:2])
        assert world.tcp("host", "::1", 8080) == "c1 fd00:210::1"
        assert world.tcp("host", "::1", 8081) == REFUSED and world.tcp("host", "::1", 8083) == REFUSED
        fw.delete()
        assert world.tcp("host", "::1", 8080) == REFUSED
    finally:
        fw.delete()
        fw.close()


def test_v6_hairpin(world: World, synced: Firewall) -> None:
    assert world.tcp("c1", HOST6, 8080) == "c1 fd00:210::1"  # its own published port
    assert world.tcp("c2", HOST6, 8080) == "c1 fd00:210::1"  # a neighbour's
    assert world.udp("c2", HOST6, 5353) == "c1 fd00:210::1"
    assert world.tcp("c3", HOST6, 8080) == f"c1 {ADDR6['c3']}"  # another network keeps its address


def test_v6_isolation_and_icc(world: World, synced: Firewall) -> None:
    assert world.tcp("c1", ADDR6["c2"], 80) == f"c2 {ADDR6['c1']}"  # icc on
    assert world.tcp("c3", ADDR6["c1"], 80) is None  # between networks
    assert world.tcp("c1", ADDR6["c3"], 80) is None
    assert world.tcp("c5", ADDR6["c6"], 80) is None  # icc off (bridged frames)
    assert world.tcp("c5", INET6, 80) == f"inet {HOST6}"
    assert world.tcp("host", ADDR6["c5"], 80) == "c5 fd00:213::1"
    # a network tether runs as v4-only is isolated for v6 all the same
    assert world.tcp("c8", ADDR6["c1"], 80) is None
    assert world.tcp("c1", ADDR6["c8"], 80) is None


def test_v6_internal_network(world: World, synced: Firewall) -> None:
    assert world.tcp("c4", INET6, 80) is None
    assert world.tcp("c4", ADDR6["c1"], 80) is None
    assert world.tcp("c1", ADDR6["c4"], 80) is None
    assert world.tcp("c4", ADDR6["c4b"], 80) == f"c4b {ADDR6['c4']}"  # icc inside
    assert world.tcp("host", ADDR6["c4"], 80) == "c4 fd00:212::1"  # the host itself
    assert world.tcp("lan", HOST6, 8090) is None  # published, but internal
    assert world.tcp("host", HOST6, 8090) == f"c4 {HOST6}"


def test_no_direct_v6_routing_into_nat_networks(world: World, synced: Firewall) -> None:
    assert world.tcp("lan", ADDR6["c1"], 80) is None
    assert world.tcp("lan", ADDR6["c7"], 80) == f"c7 {LAN6}"  # routed network


def _checksum(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _forge_udp6(world: World, ns: str, dst_mac: str, src: str, dst: str, port: int) -> None:
    """Send one hand-made UDP/IPv6 datagram out of ``ns``'s eth0, addresses as given: what a
    container with CAP_NET_RAW can do, whatever its routing table says."""
    payload = b"forged"
    length = 8 + len(payload)
    src_b, dst_b = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
    pseudo = src_b + dst_b + struct.pack("!IxxxB", length, 17)
    udp = struct.pack("!HHHH", 40000, port, length, 0) + payload
    udp = udp[:6] + struct.pack("!H", _checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    header = struct.pack("!IHBB", 6 << 28, length, 17, 64) + src_b + dst_b

    def body() -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
            sock.bind(("eth0", 0))
            src_mac = sock.getsockname()[4]
            sock.send(bytes.fromhex(dst_mac.replace(":", "")) + src_mac + b"\x86\xdd" + header + udp)

    nsutil.run_in_netns(world.path(ns), body)


def test_v6_loopback_guard(world: World, synced: Firewall) -> None:
    # A container's forged packet to [::1] never reaches the host's loopback-only services:
    # the guard drops it, and without the guard the kernel does (RFC 4291, no
    # route_localnet in v6). A forged packet to the bridge's own address does arrive (the
    # probe works).
    listener = nsutil.run_in_netns(world.path("host"), lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))
    listener.bind(("::", 9099))
    listener.settimeout(QUICK)
    bridge_mac = json.loads(world.in_ns("host", "ip", "-j", "link", "show", "tb0").stdout)[0]["address"]

    def arrives(dst: str) -> bool:
        _forge_udp6(world, "c1", bridge_mac, ADDR6["c1"], dst, 9099)
        try:
            return listener.recv(64) == b"forged"
        except OSError:
            return False

    try:
        assert arrives("fd00:210::1")
        assert not arrives("::1")
        world.nft("flush", "chain", "ip6", synced.table, "guard")
        assert not arrives("::1")
        assert synced.ensure() is True
        assert not arrives("::1")
    finally:
        listener.close()


def test_v6_user_chain(world: World, synced: Firewall) -> None:
    table = synced.table
    world.nft("add", "rule", "ip6", table, "user", "ip6", "saddr", LAN6,
              "meta", "l4proto", "tcp", "ct", "original", "proto-dst", "8080", "drop")
    assert world.tcp("lan", HOST6, 8080) is None
    assert world.tcp("lan", HOST4, 8080) == "c1 192.168.50.2"  # the ip table's user chain is its own
    synced.sync(ALL_NETWORKS, PORTS)
    assert synced.ensure() is False
    assert "drop" in world.nft("list", "chain", "ip6", table, "user").stdout
    assert world.tcp("lan", HOST6, 8080) is None
    assert world.tcp("inet", HOST6, 8080) == f"c1 {INET6}"
    world.nft("flush", "chain", "ip6", table, "user")
    assert world.tcp("lan", HOST6, 8080) == f"c1 {LAN6}"


def test_incremental_v6_changes_take_effect(world: World, fw: Firewall) -> None:
    fw.sync(ALL_NETWORKS, [])
    assert world.tcp("lan", HOST6, 8080) == REFUSED  # nothing listens on the host itself
    fw.add_ports(PORTS[:2])
    assert world.tcp("lan", HOST6, 8080) == f"c1 {LAN6}"
    assert world.tcp("lan", HOST4, 8080) == "c1 192.168.50.2"
    fw.remove_ports([PORTS[1]])
    assert world.tcp("lan", HOST6, 8080) == REFUSED
    assert world.tcp("lan", HOST4, 8080) == "c1 192.168.50.2"
    # isolation goes when tb1 is no longer a tether network, and comes back with it
    fw.remove_network(NETWORKS["tb1"][2])
    fw.remove_network(NETWORKS["tb0"][2])
    assert world.tcp("c3", ADDR6["c1"], 80) == f"c1 {ADDR6['c3']}"
    fw.add_network(NETWORKS["tb0"][2])
    fw.add_network(NETWORKS["tb1"][2])
    assert world.tcp("c3", ADDR6["c1"], 80) is None


def test_v6_healing_after_flush_ruleset(world: World, synced: Firewall) -> None:
    assert world.tcp("lan", HOST6, 8080) == f"c1 {LAN6}"
    synced.start_healer(lambda: (ALL_NETWORKS, PORTS), interval=0.2)
    try:
        time.sleep(0.3)
        damages = (["flush", "ruleset"], ["delete", "table", "ip6", synced.table],
                   ["flush", "map", "ip6", synced.table, "ports"], ["flush", "set", "ip6", synced.table, "bridges"])
        for damage in damages:
            world.nft(*damage)
            # the port answers and isolation holds (the ip6 table's bridges set) again
            healed = _wait_for(lambda: world.tcp("lan", HOST6, 8080, timeout=0.1) == f"c1 {LAN6}"
                               and world.tcp("c3", ADDR6["c1"], 80, timeout=0.1) is None, 3)
            assert healed < 1.0, (damage, healed)
            print(f"{' '.join(damage)}: v6 port and isolation back after {healed:.3f} s")
        assert world.tcp("lan", HOST4, 8080) == "c1 192.168.50.2"
        assert synced.repairs >= 4
        # a flushed ip6 base chain is caught as well
        world.nft("flush", "chain", "ip6", synced.table, "prerouting")
        _wait_for(lambda: world.tcp("lan", HOST6, 8080, timeout=0.1) == f"c1 {LAN6}", 3)
    finally:
        synced.stop_healer()
