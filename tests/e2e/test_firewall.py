"""The Firewall against real nftables, with real packets between namespaces.

A small world, built once per module with ``ip`` commands, every name carrying a unique
prefix (``tfw`` + 6 hex digits)::

    inet (203.0.113.2) -- lan (203.0.113.1 | 192.168.50.2) -- host (hlan 192.168.50.1)
                                                               |
      tb0 10.210.0.1  masquerade, icc          c1 .2, c2 .3    |
      tb1 10.211.0.1  masquerade, icc          c3 .2           |  bridges in the
      tb2 10.212.0.1  internal, icc            c4 .2, c4b .3   |  host namespace
      tb3 10.213.0.1  masquerade, no icc       c5 .2, c6 .3    |
      tb4 10.214.0.1  routed (no masquerade)   c7 .2           |

The lan routes 10.0.0.0/8 to the host (so "direct routing" to containers can be tried)
and the internet namespace only knows its way to the lan: without masquerade a container
gets no answer from it. The host has ip_forward=1, route_localnet=1 on its bridges and
hairpin mode on the bridge ports, as the controller must set them.

Every test gets its own table name and a Firewall constructed for the host namespace
(``netns=``; libnftables binds its socket there once). Servers are sockets opened inside
the namespaces from throwaway threads (``nsutil.run_in_netns``) and answer with the
peer address they saw, so source preservation and masquerade are checked directly.
Cleanup deletes every namespace with the prefix, even on failure, and checks none is left.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
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
HOST_LAN = "192.168.50.1"
LAN_ADDR = "192.168.50.2"
INET_ADDR = "203.0.113.2"
QUICK = 0.5  # seconds a connection attempt that must fail is given

# bridge, subnet prefix, flags (masquerade, internal, icc), containers
NETWORKS = {
    "tb0": ("10.210.0", NetworkRules("tb0", "10.210.0.0/24", True, False, True), ["c1", "c2"]),
    "tb1": ("10.211.0", NetworkRules("tb1", "10.211.0.0/24", True, False, True), ["c3"]),
    "tb2": ("10.212.0", NetworkRules("tb2", "10.212.0.0/24", False, True, True), ["c4", "c4b"]),
    "tb3": ("10.213.0", NetworkRules("tb3", "10.213.0.0/24", True, False, False), ["c5", "c6"]),
    "tb4": ("10.214.0", NetworkRules("tb4", "10.214.0.0/24", False, False, True), ["c7"]),
}
ALL_NETWORKS = [rules for _, rules, _ in NETWORKS.values()]

# container -> address
ADDR = {
    name: f"{base}.{i + 2}"
    for base, _, names in NETWORKS.values()
    for i, name in enumerate(names)
}

PORTS = [
    PortRule("tcp", None, 8080, ADDR["c1"], 80),  # every host address
    PortRule("udp", None, 5353, ADDR["c1"], 53),
    PortRule("tcp", "127.0.0.1", 8081, ADDR["c1"], 81),  # loopback only
    PortRule("tcp", HOST_LAN, 8082, ADDR["c2"], 80),  # the lan address only
    PortRule("tcp", None, 8090, ADDR["c4"], 80),  # on the internal network
]


def sh(*cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(cmd), check=False, capture_output=True, text=True, timeout=30, input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed: {result.stderr}{result.stdout}")
    return result


def netns_with(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


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

    # -- servers: answer with "<name> <peer address>" -----------------------------

    def tcp_server(self, ns: str, port: int, label: str) -> None:
        sock = nsutil.run_in_netns(self.path(ns), lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen(64)
        self.servers.append(sock)

        def serve() -> None:
            while True:
                try:
                    conn, peer = sock.accept()
                except OSError:
                    return
                with conn:
                    conn.sendall(f"{label} {peer[0]}".encode())

        threading.Thread(target=serve, daemon=True).start()

    def udp_server(self, ns: str, port: int, label: str) -> None:
        sock = nsutil.run_in_netns(self.path(ns), lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        sock.bind(("0.0.0.0", port))
        self.servers.append(sock)

        def serve() -> None:
            while True:
                try:
                    _, peer = sock.recvfrom(512)
                    if peer is None:  # shut down
                        return
                    sock.sendto(f"{label} {peer[0]}".encode(), peer)
                except OSError:
                    return

        threading.Thread(target=serve, daemon=True).start()

    # -- clients: the answer, or None when nothing came back ------------------------

    def tcp(self, ns: str, addr: str, port: int, timeout: float = QUICK) -> str | None:
        def body() -> str | None:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                try:
                    sock.connect((addr, port))
                    return sock.recv(256).decode() or None
                except OSError:
                    return None

        return nsutil.run_in_netns(self.path(ns), body)

    def udp(self, ns: str, addr: str, port: int, timeout: float = QUICK) -> str | None:
        def body() -> str | None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
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


def _build(world: World) -> None:
    p = world.prefix
    names = ["host", "lan", "inet", *ADDR]
    for name in names:
        sh("ip", "netns", "add", world.ns(name))
        sh("ip", "-n", world.ns(name), "link", "set", "lo", "up")
    host, lan, inet = world.ns("host"), world.ns("lan"), world.ns("inet")
    # host <-> lan <-> inet
    sh("ip", "-n", host, "link", "add", "hlan", "type", "veth", "peer", "name", "eth0", "netns", lan)
    sh("ip", "-n", lan, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", inet)
    sh("ip", "-n", host, "-batch", "-", input=(
        f"addr add {HOST_LAN}/24 dev hlan\nlink set hlan up\nroute add default via {LAN_ADDR}\n"
    ))
    sh("ip", "-n", lan, "-batch", "-", input=(
        f"addr add {LAN_ADDR}/24 dev eth0\nlink set eth0 up\naddr add 203.0.113.1/24 dev eth1\n"
        f"link set eth1 up\nroute add 10.0.0.0/8 via {HOST_LAN}\n"
    ))
    sh("ip", "-n", inet, "-batch", "-", input=(
        f"addr add {INET_ADDR}/24 dev eth0\nlink set eth0 up\nroute add default via 203.0.113.1\n"
    ))
    # bridges and containers
    sysctls = ["net.ipv4.ip_forward=1"]
    for bridge, (base, _, containers) in NETWORKS.items():
        sh("ip", "-n", host, "-batch", "-", input=(
            f"link add {bridge} type bridge\naddr add {base}.1/24 dev {bridge}\nlink set {bridge} up\n"
        ))
        sysctls.append(f"net.ipv4.conf.{bridge}.route_localnet=1")
        for name in containers:
            veth = f"v{p[-4:]}{name}"
            sh("ip", "-n", host, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
               "netns", world.ns(name))
            # hairpin on the port, as the caller must set it: br_netfilter *bridges* a
            # packet DNAT'ed back onto its own bridge, so a container reaching its own
            # published port needs the frame sent back out of the port it came in on
            sh("ip", "-n", host, "-batch", "-", input=(
                f"link set {veth} master {bridge} up\nlink set {veth} type bridge_slave hairpin on\n"
            ))
            sh("ip", "-n", world.ns(name), "-batch", "-", input=(
                f"addr add {ADDR[name]}/24 dev eth0\nlink set eth0 up\nroute add default via {base}.1\n"
            ))
    world.in_ns("host", "sysctl", "-q", "-w", *sysctls)
    world.in_ns("lan", "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    # servers
    for name in ADDR:
        world.tcp_server(name, 80, name)
    world.tcp_server("c1", 81, "c1:81")
    world.udp_server("c1", 53, "c1")
    world.tcp_server("inet", 80, "inet")


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    w = World(prefix=f"tfw{uuid.uuid4().hex[:6]}-")
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


# -- the ruleset itself -----------------------------------------------------------------


def test_ensure_is_idempotent_and_rule_count_is_constant(world: World, fw: Firewall) -> None:
    assert not fw.present()
    assert fw.ensure() is True
    assert fw.ensure() is False
    assert fw.present()
    base = fw.rule_count()
    assert base == 35  # 18 in the ip table, 17 in the ip6 table (test_firewall_v6.py)
    fw.sync(ALL_NETWORKS, [PortRule("tcp", None, 20000 + i, ADDR["c1"], 80) for i in range(1000)])
    assert fw.rule_count() == base
    listing = world.nft("list", "map", "ip", fw.table, "ports").stdout
    assert "tcp . 20999 : 10.210.0.2 . 80" in listing
    # a flushed base chain is refilled by ensure(), the user chain is left alone
    world.nft("add", "rule", "ip", fw.table, "user", "counter")
    world.nft("flush", "chain", "ip", fw.table, "forward")
    assert fw.ensure() is True
    assert fw.rule_count() == base + 1


def test_add_and_remove_are_idempotent(world: World, fw: Firewall) -> None:
    fw.sync([], [])
    net = NETWORKS["tb0"][1]
    fw.add_network(net)
    fw.add_network(net)
    fw.add_ports(PORTS[:2])
    fw.add_ports(PORTS[:2])
    assert '"tb0"' in world.nft("list", "set", "ip", fw.table, "bridges").stdout
    fw.remove_ports(PORTS[:2])
    fw.remove_ports(PORTS[:2])
    fw.remove_network(net)
    # removal ignores the flags: an element added under other flags goes too
    fw.add_network(NetworkRules("tb0", "10.210.0.0/24", True, False, True))
    fw.remove_network(NetworkRules("tb0", "10.210.0.0/24", False, True, False))
    for name in ("bridges", "masq_subnets", "icc_pairs", "internal_bridges", "bridge_subnets", "ports"):
        listing = world.nft("list", "set" if not name.startswith("ports") else "map", "ip", fw.table, name).stdout
        assert "elements" not in listing, listing


def test_clashing_port_is_a_conflict_and_removal_spares_other_targets(world: World, fw: Firewall) -> None:
    fw.sync([], [PORTS[0]])
    other = PortRule("tcp", None, 8080, ADDR["c2"], 80)
    with pytest.raises(Conflict):
        fw.add_ports([other])
    fw.remove_ports([other])  # not present as given: leaves c1's mapping alone
    assert "tcp . 8080 : 10.210.0.2 . 80" in world.nft("list", "map", "ip", fw.table, "ports").stdout
    # an overlapping subnet is a conflict too; removing it is still a no-op
    fw.add_network(NETWORKS["tb0"][1])
    with pytest.raises(Conflict):
        fw.add_network(NetworkRules("tbx", "10.210.0.0/16", True, False, True))
    fw.remove_network(NetworkRules("tbx", "10.210.0.0/16", True, False, True))
    assert "10.210.0.0/24" in world.nft("list", "set", "ip", fw.table, "masq_subnets").stdout


def test_publish_latency(fw: Firewall) -> None:
    fw.sync(ALL_NETWORKS, [])
    samples = []
    for i in range(100):
        ports = [PortRule("tcp", None, 30000 + 2 * i, ADDR["c1"], 80), PortRule("udp", None, 30001 + 2 * i, ADDR["c1"], 53)]
        start = time.perf_counter()
        fw.add_ports(ports)
        samples.append(time.perf_counter() - start)
    assert statistics.median(samples) < 0.001, samples  # target: well under 1 ms


# -- packets ----------------------------------------------------------------------------


def test_outbound_masquerade(world: World, synced: Firewall) -> None:
    assert world.tcp("c1", INET_ADDR, 80) == f"inet {HOST_LAN}"
    assert world.tcp("c5", INET_ADDR, 80) == f"inet {HOST_LAN}"
    # a routed network keeps its addresses (the inet namespace routes back via the lan)
    assert world.tcp("c7", INET_ADDR, 80) == f"inet {ADDR['c7']}"


def test_published_ports_from_the_lan_keep_the_source(world: World, synced: Firewall) -> None:
    assert world.tcp("lan", HOST_LAN, 8080) == f"c1 {LAN_ADDR}"
    assert world.udp("lan", HOST_LAN, 5353) == f"c1 {LAN_ADDR}"
    assert world.tcp("inet", HOST_LAN, 8080) == f"c1 {INET_ADDR}"
    assert world.tcp("lan", HOST_LAN, 8082) == f"c2 {LAN_ADDR}"  # bound to this address


def test_published_ports_from_the_host_itself(world: World, synced: Firewall) -> None:
    assert world.tcp("host", "127.0.0.1", 8080) == "c1 10.210.0.1"  # masqueraded to the bridge
    assert world.tcp("host", HOST_LAN, 8080) == f"c1 {HOST_LAN}"
    assert world.udp("host", "127.0.0.1", 5353) == "c1 10.210.0.1"
    assert world.tcp("host", "127.0.0.1", 8081) == "c1:81 10.210.0.1"


def test_port_bound_to_one_address(world: World, synced: Firewall) -> None:
    # 127.0.0.1 only: not from the lan, not on the host's other addresses
    assert world.tcp("lan", HOST_LAN, 8081) is None
    assert world.tcp("host", HOST_LAN, 8081) is None
    assert world.tcp("c3", "10.211.0.1", 8081) is None
    # the lan address only: not on 127.0.0.1
    assert world.tcp("host", "127.0.0.1", 8082) is None


def test_hairpin(world: World, synced: Firewall) -> None:
    assert world.tcp("c1", HOST_LAN, 8080) == "c1 10.210.0.1"  # its own published port
    assert world.tcp("c2", HOST_LAN, 8080) == "c1 10.210.0.1"  # a neighbour's
    assert world.udp("c2", HOST_LAN, 5353) == "c1 10.210.0.1"
    # another network reaches a published port through the host, keeping its address
    assert world.tcp("c3", HOST_LAN, 8080) == f"c1 {ADDR['c3']}"


def test_isolation_and_icc(world: World, synced: Firewall) -> None:
    assert world.tcp("c1", ADDR["c2"], 80) == f"c2 {ADDR['c1']}"  # icc on
    assert world.tcp("c3", ADDR["c1"], 80) is None  # between networks
    assert world.tcp("c1", ADDR["c3"], 80) is None
    assert world.tcp("c5", ADDR["c6"], 80) is None  # icc off (bridged frames)
    assert world.tcp("c5", INET_ADDR, 80) == f"inet {HOST_LAN}"
    assert world.tcp("host", ADDR["c5"], 80) == "c5 10.213.0.1"


def test_internal_network(world: World, synced: Firewall) -> None:
    assert world.tcp("c4", INET_ADDR, 80) is None
    assert world.tcp("c4", ADDR["c1"], 80) is None
    assert world.tcp("c1", ADDR["c4"], 80) is None
    assert world.tcp("c4", ADDR["c4b"], 80) == f"c4b {ADDR['c4']}"  # icc inside
    assert world.tcp("host", ADDR["c4"], 80) == "c4 10.212.0.1"  # the host itself
    assert world.tcp("lan", HOST_LAN, 8090) is None  # published, but internal
    assert world.tcp("host", "127.0.0.1", 8090) == "c4 10.212.0.1"


def test_no_direct_routing_into_nat_networks(world: World, synced: Firewall) -> None:
    assert world.tcp("lan", ADDR["c1"], 80) is None
    assert world.tcp("lan", ADDR["c7"], 80) == f"c7 {LAN_ADDR}"  # routed network


def _checksum(data: bytes) -> int:
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _forge_udp(world: World, ns: str, dst_mac: str, src: str, dst: str, port: int) -> None:
    """Send one hand-made UDP datagram out of ``ns``'s eth0, addresses as given: what a
    container with CAP_NET_RAW can do, whatever its routing table says."""
    payload = b"forged"
    udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]

    def body() -> None:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
            sock.bind(("eth0", 0))
            src_mac = sock.getsockname()[4]
            sock.send(bytes.fromhex(dst_mac.replace(":", "")) + src_mac + b"\x08\x00" + header + udp)

    nsutil.run_in_netns(world.path(ns), body)


def test_loopback_guard(world: World, synced: Firewall) -> None:
    # The bridges have route_localnet=1 (for 127.0.0.1 -> container), which would let a
    # container's forged packet to 127.0.0.1 reach the host's loopback-only services
    # (CVE-2020-8558). The guard chain drops it; without the guard it does arrive.
    listener = nsutil.run_in_netns(world.path("host"), lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    listener.bind(("127.0.0.1", 9099))
    listener.settimeout(QUICK)
    bridge_mac = json.loads(world.in_ns("host", "ip", "-j", "link", "show", "tb0").stdout)[0]["address"]

    def arrives() -> bool:
        _forge_udp(world, "c1", bridge_mac, ADDR["c1"], "127.0.0.1", 9099)
        try:
            return listener.recv(64) == b"forged"
        except OSError:
            return False

    try:
        assert not arrives()
        world.nft("flush", "chain", "ip", synced.table, "guard")
        assert arrives()  # the probe itself works
        assert synced.ensure() is True
        assert not arrives()
    finally:
        listener.close()


def test_healing_after_flush_ruleset(world: World, synced: Firewall) -> None:
    assert world.tcp("lan", HOST_LAN, 8080) == f"c1 {LAN_ADDR}"
    synced.start_healer(lambda: (ALL_NETWORKS, PORTS), interval=0.2)
    try:
        world.nft("flush", "ruleset")
        start = time.monotonic()
        answer = None
        while time.monotonic() - start < 3:
            answer = world.tcp("lan", HOST_LAN, 8080, timeout=0.1)
            if answer:
                break
        healed = time.monotonic() - start
        assert answer == f"c1 {LAN_ADDR}"
        assert healed < 1.0, healed
        _wait_for(lambda: synced.repairs >= 1, 1.0)  # counted just after the transaction the answer used
        # deleting the table is healed as well
        world.nft("delete", "table", "ip", synced.table)
        deadline = time.monotonic() + 1.0
        while not synced.present() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert synced.present()
        _wait_for(lambda: world.tcp("lan", HOST_LAN, 8080, timeout=0.1) == f"c1 {LAN_ADDR}", 1.0)
        # a flushed base chain is caught by the periodic full check (every 2 s)
        world.nft("flush", "chain", "ip", synced.table, "prerouting")
        _wait_for(lambda: world.tcp("lan", HOST_LAN, 8080, timeout=0.1) == f"c1 {LAN_ADDR}", 3.0)
    finally:
        synced.stop_healer()


def _wait_for(check: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    assert check()


def test_user_chain_survives_sync(world: World, synced: Firewall) -> None:
    table = synced.table
    world.nft("add", "rule", "ip", table, "user", "ip", "saddr", LAN_ADDR,
              "meta", "l4proto", "tcp", "ct", "original", "proto-dst", "8080", "drop")
    assert world.tcp("lan", HOST_LAN, 8080) is None
    synced.sync(ALL_NETWORKS, PORTS)
    assert synced.ensure() is False
    assert "drop" in world.nft("list", "chain", "ip", table, "user").stdout
    assert world.tcp("lan", HOST_LAN, 8080) is None
    assert world.tcp("inet", HOST_LAN, 8080) == f"c1 {INET_ADDR}"
    world.nft("flush", "chain", "ip", table, "user")
    assert world.tcp("lan", HOST_LAN, 8080) == f"c1 {LAN_ADDR}"


def test_incremental_changes_take_effect(world: World, fw: Firewall) -> None:
    fw.sync(ALL_NETWORKS, [])
    assert world.tcp("lan", HOST_LAN, 8080) is None
    fw.add_ports([PORTS[0]])
    assert world.tcp("lan", HOST_LAN, 8080) == f"c1 {LAN_ADDR}"
    fw.remove_ports([PORTS[0]])
    assert world.tcp("lan", HOST_LAN, 8080) is None
    # isolation goes when tb1 is no longer a tether network, and comes back with it
    fw.remove_network(NETWORKS["tb1"][1])
    fw.remove_network(NETWORKS["tb0"][1])
    assert world.tcp("c3", ADDR["c1"], 80) == f"c1 {ADDR['c3']}"
    fw.add_network(NETWORKS["tb0"][1])
    fw.add_network(NETWORKS["tb1"][1])
    assert world.tcp("c3", ADDR["c1"], 80) is None
