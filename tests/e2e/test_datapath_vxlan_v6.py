"""IPv6 on the overlay, against the real kernel: permanent AF_INET6 neighbour entries on the
VXLAN device, whose proxy answers neighbour solicitations (NDP) from them as it answers ARP
for IPv4, so no solicitation ever crosses hosts and the first packet is answered.

The world, built from namespaces the test owns (all named with a unique ``tv6`` prefix)::

    h1 (10.99.0.1) --- up0 veth up0 --- h2 (10.99.0.2)

Each host runs its own Datapath (constructed in a thread inside its namespace, as in
tests/e2e/test_datapath.py) and has one dual-stack overlay network: a bridge holding the
host's overlay addresses (10.220.0.N/16 and fd42::N/64) plus a VXLAN device (VNI 42) on
the IPv4 underlay, and one container (10.220.N.2, fd42::N:2) attached with ``attach_veth``.
A packet socket on h1's underlay sees every frame between the hosts. Only ULA and private
addresses inside these namespaces are ever addressed. Cleanup deletes every namespace with
the prefix, even when a test fails, and checks that nothing is left.
"""

from __future__ import annotations

import json
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import pytest
from conftest import netns_with

from tether.datapath import Datapath, NetlinkDatapath, nsutil

pytestmark = pytest.mark.e2e

NETNS_DIR = "/var/run/netns"
VNI = 42
MTU = 1350  # the underlay's 1400 less VXLAN's 50
ETH_P_ALL = 0x0003
NS, NA, ECHO_REQUEST, ECHO_REPLY = 135, 136, 128, 129  # ICMPv6 types


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=30)


class Tunnelled(NamedTuple):
    """An IPv6 packet seen inside a VXLAN packet on the underlay."""

    outer_dst: str
    inner_src: str
    inner_dst: str
    icmp6_type: int  # -1 unless ICMPv6


def tunnelled_v6(frame: bytes) -> Tunnelled | None:
    if frame[12:14] != b"\x08\x00" or frame[14 + 9] != 17:  # IPv4, UDP
        return None
    ip = frame[14:]
    udp = ip[(ip[0] & 0x0F) * 4 :]
    if int.from_bytes(udp[2:4], "big") != 4789:
        return None
    inner = udp[16:]
    if inner[12:14] != b"\x86\xdd":
        return None
    ip6 = inner[14:]
    icmp6 = ip6[40] if ip6[6] == 58 else -1
    return Tunnelled(socket.inet_ntoa(ip[16:20]), socket.inet_ntop(socket.AF_INET6, ip6[8:24]),
                     socket.inet_ntop(socket.AF_INET6, ip6[24:40]), icmp6)  # fmt: skip


class Wire:
    """Every tunnelled IPv6 packet through h1's underlay interface."""

    def __init__(self, netns: str) -> None:
        def open_socket() -> socket.socket:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            sock.bind(("up0", 0))
            sock.setblocking(False)
            return sock

        self._sock = nsutil.run_in_netns(f"{NETNS_DIR}/{netns}", open_socket)

    def drain(self) -> list[Tunnelled]:
        seen = []
        while True:
            try:
                frame = self._sock.recv(65535)
            except BlockingIOError:
                return seen
            packet = tunnelled_v6(frame)
            if packet is not None:
                seen.append(packet)

    def close(self) -> None:
        self._sock.close()


@dataclass
class Host:
    n: int
    netns: str
    dp: Datapath
    prefix: str

    vtep = property(lambda self: f"10.99.0.{self.n}")
    bridge = property(lambda self: f"{self.prefix}b")
    vxlan = property(lambda self: f"{self.prefix}x")
    address = property(lambda self: f"10.220.0.{self.n}")
    address6 = property(lambda self: f"fd42::{self.n}")
    bridge_mac = property(lambda self: f"02:aa:00:00:00:{self.n:02x}")
    container = property(lambda self: f"{self.prefix}c{self.n}")
    container_ip = property(lambda self: f"10.220.{self.n}.2")
    container_ip6 = property(lambda self: f"fd42::{self.n}:2")
    container_mac = property(lambda self: f"02:42:00:00:{self.n:02x}:02")

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("nsenter", f"--net={NETNS_DIR}/{self.netns}", "--", *cmd, check=check)

    def overlay_up(self) -> None:
        mark = f"{self.prefix}-mark"
        self.dp.ensure_bridge(self.bridge, f"{self.address}/16", MTU, mark, gateway_cidr6=f"{self.address6}/64")
        self.dp.set_bridge_mac(self.bridge, self.bridge_mac)
        self.dp.ensure_vxlan(self.vxlan, VNI, self.vtep, self.bridge, MTU, mark)
        self.dp.create_netns(self.container)
        self.dp.attach_veth(
            netns=self.container, host_ifname=f"{self.prefix}v", ifname="eth0", bridge=self.bridge,
            mac=self.container_mac, cidr=f"{self.container_ip}/16", gateway=self.address,
            cidr6=f"{self.container_ip6}/64", gateway6=self.address6, mtu=MTU, mark=mark,
        )  # fmt: skip

    def program(self, other: Host) -> None:
        """Everything ``other`` holds on the overlay, both families: its own addresses and its container's."""
        for ip, mac in ((other.address, other.bridge_mac), (other.address6, other.bridge_mac),
                        (other.container_ip, other.container_mac), (other.container_ip6, other.container_mac)):
            self.dp.add_peer(self.vxlan, ip, mac, other.vtep)
        self.dp.add_flood(self.vxlan, other.vtep)  # fmt: skip


@pytest.fixture
def hosts() -> Iterator[tuple[Host, Host, Wire]]:
    prefix = f"tv6{uuid.uuid4().hex[:4]}"
    made: list[Host] = []
    wire: Wire | None = None
    try:
        for n in (1, 2):
            sh("ip", "netns", "add", f"{prefix}h{n}")
            sh("ip", "-n", f"{prefix}h{n}", "link", "set", "lo", "up")
        sh("ip", "link", "add", "up0", "netns", f"{prefix}h1", "mtu", "1400", "type", "veth",
           "peer", "name", "up0", "netns", f"{prefix}h2", "mtu", "1400")  # fmt: skip
        for n in (1, 2):
            sh("ip", "-n", f"{prefix}h{n}", "addr", "add", f"10.99.0.{n}/24", "dev", "up0")
            sh("ip", "-n", f"{prefix}h{n}", "link", "set", "up0", "up")
            dp = nsutil.run_in_netns(f"{NETNS_DIR}/{prefix}h{n}", NetlinkDatapath)
            made.append(Host(n=n, netns=f"{prefix}h{n}", dp=dp, prefix=prefix))
        wire = Wire(f"{prefix}h1")
        yield made[0], made[1], wire
    finally:
        if wire is not None:
            wire.close()
        for host in made:
            host.dp.close()
        for name in netns_with(prefix):
            sh("ip", "netns", "del", name, check=False)
    assert netns_with(prefix) == [], "namespaces left behind"


def ping6(netns: str, ip: str) -> bool:
    return sh("ip", "netns", "exec", netns, "ping", "-6", "-c1", "-W1", ip, check=False).returncode == 0


def test_ipv6_crosses_hosts_with_ndp_answered_by_the_proxy(hosts: tuple[Host, Host, Wire]) -> None:
    h1, h2, wire = hosts
    for host in (h1, h2):
        host.overlay_up()
    h1.program(h2)
    h2.program(h1)
    wire.drain()

    # the very first packet, right after programming: nothing learnt, nothing tentative
    assert ping6(h1.container, h2.container_ip6)
    seen = wire.drain()
    echoes = sorted((p.outer_dst, p.inner_src, p.inner_dst) for p in seen if p.icmp6_type in (ECHO_REQUEST, ECHO_REPLY))
    assert echoes == [(h1.vtep, h2.container_ip6, h1.container_ip6), (h2.vtep, h1.container_ip6, h2.container_ip6)]
    assert [p for p in seen if p.icmp6_type in (NS, NA)] == []  # answered on each side by the proxy
    neigh = sh("ip", "netns", "exec", h1.container, "ip", "-6", "neigh", "show", h2.container_ip6).stdout
    assert h2.container_mac in neigh

    # a container reaches the remote host's own v6 address, and a host the remote container
    assert ping6(h1.container, h2.address6)
    assert h2.run("ping", "-6", "-c1", "-W1", h1.container_ip6, check=False).returncode == 0
    assert ping6(h1.container, h1.address6)  # and its own gateway, of course
    assert sh("ip", "netns", "exec", h1.container, "ping", "-c1", "-W1", h2.container_ip).returncode == 0
    assert [p for p in wire.drain() if p.icmp6_type in (NS, NA)] == []

    # a solicitation for an address nobody programmed is dropped at the device, not tunnelled
    assert not ping6(h1.container, "fd42::9:9")
    assert [p for p in wire.drain() if p.icmp6_type in (NS, NA)] == []

    # what the Datapath reports: both families, sorted
    assert h1.dp.list_peers(h1.vxlan) == sorted([
        (h2.address, h2.bridge_mac, h2.vtep), (h2.address6, h2.bridge_mac, h2.vtep),
        (h2.container_ip, h2.container_mac, h2.vtep), (h2.container_ip6, h2.container_mac, h2.vtep),
    ])  # fmt: skip
    entries = json.loads(h1.run("ip", "-j", "-6", "neigh", "show", "dev", h1.vxlan).stdout)
    assert sorted((e["dst"], e["lladdr"], "PERMANENT" in e["state"]) for e in entries) == [
        (h2.address6, h2.bridge_mac, True), (h2.container_ip6, h2.container_mac, True),
    ]  # fmt: skip


def test_ipv6_peers_are_idempotent_and_removed(hosts: tuple[Host, Host, Wire]) -> None:
    h1, h2, _ = hosts
    for host in (h1, h2):
        host.overlay_up()
    h1.program(h2)
    h1.program(h2)  # again: nothing changes, nothing fails
    h2.program(h1)
    assert ping6(h1.container, h2.container_ip6)
    peer6 = (h2.container_ip6, h2.container_mac, h2.vtep)
    h1.dp.add_peer(h1.vxlan, "fd42:0::2:2", h2.container_mac.upper(), h2.vtep)  # the same, spelt otherwise
    assert len(h1.dp.list_peers(h1.vxlan)) == 4

    h1.dp.remove_peer(h1.vxlan, *peer6)
    h1.dp.remove_peer(h1.vxlan, *peer6)  # idempotent
    # the container's MAC has one FDB entry for both families: it went with the v6 peer
    assert peer6 not in h1.dp.list_peers(h1.vxlan)
    assert (h2.container_ip, h2.container_mac, h2.vtep) not in h1.dp.list_peers(h1.vxlan)
    neigh = h1.run("ip", "-6", "neigh", "show", "dev", h1.vxlan).stdout
    assert h2.container_ip6 not in neigh and h2.address6 in neigh
    h1.dp.remove_peer(h1.vxlan, h2.container_ip, h2.container_mac, h2.vtep)  # the v4 half: gone already, success
    assert sorted(h1.dp.list_peers(h1.vxlan)) == sorted(
        [(h2.address, h2.bridge_mac, h2.vtep), (h2.address6, h2.bridge_mac, h2.vtep)]
    )
