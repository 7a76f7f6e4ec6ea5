"""The overlay verbs of the Datapath against the real kernel: VXLAN devices, peers, floods,
and packets that really cross a (simulated) wire between (simulated) hosts.

The world, built from namespaces the test owns (all named with a unique ``tvx`` prefix)::

    h1 (10.99.0.1) --\\
    h2 (10.99.0.2) ---+-- fabric: one bridge, the "switch" of the underlay
    h3 (10.99.0.3) --/

Each host's underlay veth has MTU 1400, like this machine's eth0. Each host runs its own
Datapath, constructed in a short-lived thread that has ``setns``-ed into the host's
namespace (as tests/e2e/test_datapath.py does). On each host an overlay network is a
bridge holding the host's overlay address (10.220.0.N/16) plus a VXLAN device; containers
(10.220.N.M) are attached to the bridge with the existing ``attach_veth``.

A raw packet socket in the fabric namespace sees every frame the hosts put on the wire,
and decodes the VXLAN ones: that is how the tests check that ARP never crosses hosts, that
a unicast goes to one VTEP only, and what size the outer packets have (no tcpdump here).

Cleanup deletes every namespace with the prefix (devices, FDB and neighbour entries go
with them), even when a test fails, and checks that nothing is left.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import statistics
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pytest
from conftest import assert_nothing_left, remove_prefixed

from tether.datapath import Datapath, NetlinkDatapath, nsutil
from tether.errors import DatapathError

pytestmark = pytest.mark.e2e

NETNS_DIR = "/var/run/netns"
UNDERLAY_MTU = 1400
VNI = 42
OVERLAY = "10.220"  # 10.220.0.N is host N's own address, 10.220.N.M its containers


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd), capture_output=True, text=True, check=check, timeout=30
    )


# ---------------------------------------------------------------------- the wire


class Encap(NamedTuple):
    """One VXLAN packet seen on the fabric, decoded."""

    outer_src: str
    outer_dst: str
    outer_len: int  # IPv4 total length of the outer packet
    fragment: bool  # MF set or a fragment offset
    vni: int
    inner: str  # "arp", "ipv4" or the ethertype in hex
    inner_src: str  # inner IPv4 source ('' unless inner == "ipv4")
    inner_dst: str
    icmp_type: int  # -1 unless ICMP


ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def decode(frame: bytes) -> Encap | None:
    if len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[9] != 17:  # UDP
        return None
    flags_frag = int.from_bytes(ip[6:8], "big")
    udp = ip[ihl:]
    if int.from_bytes(udp[2:4], "big") != 4789:
        return None
    vni = int.from_bytes(udp[12:15], "big")
    inner = udp[16:]
    ethertype = inner[12:14]
    kind, src, dst, icmp = ethertype.hex(), "", "", -1
    if ethertype == b"\x08\x06":
        kind = "arp"
    elif ethertype == b"\x08\x00":
        kind = "ipv4"
        iip = inner[14:]
        src, dst = socket.inet_ntoa(iip[12:16]), socket.inet_ntoa(iip[16:20])
        if iip[9] == 1:
            icmp = iip[(iip[0] & 0x0F) * 4]
    return Encap(
        outer_src=socket.inet_ntoa(ip[12:16]),
        outer_dst=socket.inet_ntoa(ip[16:20]),
        outer_len=int.from_bytes(ip[2:4], "big"),
        fragment=bool(flags_frag & 0x3FFF),
        vni=vni,
        inner=kind,
        inner_src=src,
        inner_dst=dst,
        icmp_type=icmp,
    )


class Wire:
    """Every VXLAN packet the hosts send into the fabric, once each (as it enters)."""

    def __init__(self, fabric_ns: str, ports: set[str]) -> None:
        def open_socket() -> socket.socket:
            sock = socket.socket(
                socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)
            )
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.setblocking(False)
            return sock

        # The socket stays in the fabric namespace; this thread never moves.
        self._sock = nsutil.run_in_netns(f"{NETNS_DIR}/{fabric_ns}", open_socket)
        self._ports = ports

    def drain(self) -> list[Encap]:
        seen: list[Encap] = []
        while True:
            try:
                frame, (ifname, _proto, pkttype, *_rest) = self._sock.recvfrom(65535)
            except BlockingIOError:
                return seen
            # each frame enters the fabric on exactly one port (and leaves on others)
            if ifname in self._ports and pkttype != PACKET_OUTGOING:
                encap = decode(frame)
                if encap is not None:
                    seen.append(encap)

    def close(self) -> None:
        self._sock.close()


# ---------------------------------------------------------------------- the world


@dataclass
class Container:
    netns: str
    ip: str
    mac: str
    host: Host
    vni: int


@dataclass
class Host:
    n: int  # 1, 2, 3
    netns: str
    dp: Datapath
    prefix: str
    containers: list[Container] = field(default_factory=list)

    @property
    def vtep(self) -> str:
        return f"10.99.0.{self.n}"

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # nsenter --net keeps our mount namespace (ip netns exec would make a private one)
        return sh("nsenter", f"--net={NETNS_DIR}/{self.netns}", "--", *cmd, check=check)

    def link(self, ifname: str) -> dict[str, Any]:
        out = self.run("ip", "-j", "-d", "link", "show", "dev", ifname).stdout
        return dict(json.loads(out)[0])

    def links(self) -> set[str]:
        return {x["ifname"] for x in json.loads(self.run("ip", "-j", "link").stdout)}

    # one overlay network = (bridge, vxlan) per VNI; names fit IFNAMSIZ (15)
    def bridge(self, vni: int = VNI) -> str:
        return f"{self.prefix}b{vni}"

    def vxlan(self, vni: int = VNI) -> str:
        return f"{self.prefix}x{vni}"

    def address(self, subnet: str = OVERLAY) -> str:
        return f"{subnet}.0.{self.n}"

    def bridge_mac(self, vni: int = VNI) -> str:
        return f"02:aa:00:{vni >> 8:02x}:{vni & 0xFF:02x}:{self.n:02x}"

    def overlay_up(self, vni: int = VNI, subnet: str = OVERLAY) -> None:
        mtu = self.dp.underlay_mtu(self.vtep) - 50
        mark = f"{self.prefix}-mark"
        self.dp.ensure_bridge(self.bridge(vni), f"{self.address(subnet)}/16", mtu, mark)
        self.dp.set_bridge_mac(self.bridge(vni), self.bridge_mac(vni))
        self.dp.ensure_vxlan(
            self.vxlan(vni), vni, self.vtep, self.bridge(vni), mtu, mark
        )

    def fdb(self, vni: int = VNI) -> list[str]:
        """`bridge fdb show dev VXLAN` lines: its own entries and the bridge's for it."""
        out = self.run("bridge", "fdb", "show", "dev", self.vxlan(vni)).stdout
        return sorted(line.strip() for line in out.splitlines() if line.strip())

    def neigh(self, vni: int = VNI) -> list[str]:
        out = self.run("ip", "-4", "neigh", "show", "dev", self.vxlan(vni)).stdout
        return sorted(line.strip() for line in out.splitlines() if line.strip())


@dataclass
class Cluster:
    prefix: str
    fabric: str
    hosts: list[Host]
    wire: Wire

    def container(
        self, host: Host, m: int, vni: int = VNI, subnet: str = OVERLAY
    ) -> Container:
        netns = f"{self.prefix}c{host.n}v{vni}m{m}"
        ip = f"{subnet}.{host.n}.{m}"
        octets = [int(x) for x in ip.split(".")]
        mac = "02:42:" + ":".join(f"{x:02x}" for x in octets)
        host.dp.create_netns(netns)
        host.dp.attach_veth(
            netns=netns,
            host_ifname=f"{self.prefix}v{host.n}{vni}{m}"[:15],
            ifname="eth0",
            bridge=host.bridge(vni),
            mac=mac,
            cidr=f"{ip}/16",
            gateway=host.address(subnet),
            mtu=host.dp.underlay_mtu(host.vtep) - 50,
            mark=f"{self.prefix}-mark",
        )
        c = Container(netns=netns, ip=ip, mac=mac, host=host, vni=vni)
        host.containers.append(c)
        return c

    def program(self, vni: int = VNI, subnet: str = OVERLAY) -> None:
        """Full mesh: every host learns every other host's address and containers."""
        for a in self.hosts:
            for b in self.hosts:
                if a is b:
                    continue
                vx = a.vxlan(vni)
                a.dp.add_peer(vx, b.address(subnet), b.bridge_mac(vni), b.vtep)
                for c in b.containers:
                    if c.vni == vni:
                        a.dp.add_peer(vx, c.ip, c.mac, b.vtep)
                a.dp.add_flood(vx, b.vtep)


def in_ns(
    netns: str, *cmd: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", netns, *cmd, check=check)


def ping(netns: str, ip: str, *extra: str) -> bool:
    return in_ns(netns, "ping", "-c1", "-W1", *extra, ip, check=False).returncode == 0


def host_ping(host: Host, ip: str) -> bool:
    return host.run("ping", "-c1", "-W1", ip, check=False).returncode == 0


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    prefix = f"tvx{uuid.uuid4().hex[:4]}"
    fabric = f"{prefix}f"
    hosts: list[Host] = []
    wire: Wire | None = None
    try:
        sh("ip", "netns", "add", fabric)
        sh("ip", "-n", fabric, "link", "set", "lo", "up")
        sh("ip", "-n", fabric, "link", "add", "fab", "type", "bridge")
        sh("ip", "-n", fabric, "link", "set", "fab", "up")
        for n in (1, 2, 3):
            netns = f"{prefix}h{n}"
            sh("ip", "netns", "add", netns)
            sh("ip", "-n", netns, "link", "set", "lo", "up")
            sh(
                "ip", "link", "add", "up0", "netns", netns, "mtu", str(UNDERLAY_MTU),
                "type", "veth", "peer", "name", f"p{n}", "netns", fabric,
                "mtu", str(UNDERLAY_MTU),
            )  # fmt: skip
            sh("ip", "-n", fabric, "link", "set", f"p{n}", "master", "fab", "up")
            sh("ip", "-n", netns, "addr", "add", f"10.99.0.{n}/24", "dev", "up0")
            sh("ip", "-n", netns, "link", "set", "up0", "up")
            dp = nsutil.run_in_netns(f"{NETNS_DIR}/{netns}", NetlinkDatapath)
            hosts.append(Host(n=n, netns=netns, dp=dp, prefix=prefix))
        wire = Wire(fabric, {"p1", "p2", "p3"})
        yield Cluster(prefix=prefix, fabric=fabric, hosts=hosts, wire=wire)
    finally:
        if wire is not None:
            wire.close()
        for host in hosts:
            host.dp.close()
        remove_prefixed(prefix)
    assert_nothing_left(prefix)


@pytest.fixture
def meshed(cluster: Cluster) -> Cluster:
    """One overlay (VNI 42) on all three hosts, one container on h1 and h2, full mesh."""
    for host in cluster.hosts:
        host.overlay_up()
    h1, h2, _ = cluster.hosts
    cluster.container(h1, 2)
    cluster.container(h2, 2)
    cluster.program()
    return cluster


# ---------------------------------------------------------------------- devices


def test_vxlan_device_is_made_as_asked_and_idempotent(cluster: Cluster) -> None:
    h1 = cluster.hosts[0]
    assert h1.dp.underlay_mtu("10.99.0.1") == UNDERLAY_MTU
    h1.overlay_up()
    h1.overlay_up()  # again: nothing changes, nothing fails

    vx = h1.link(h1.vxlan())
    data = vx["linkinfo"]["info_data"]
    assert vx["linkinfo"]["info_kind"] == "vxlan"
    assert (data["id"], data["local"], data["port"]) == (VNI, "10.99.0.1", 4789)
    assert data["link"] == "up0"  # the underlay: the interface holding local_ip
    assert data["learning"] is False and data["proxy"] is True
    assert data["ttl"] == 0  # "auto": the route's hop limit
    assert vx["mtu"] == UNDERLAY_MTU - 50
    assert vx["master"] == h1.bridge()
    assert "UP" in vx["flags"]
    assert vx["ifalias"] == f"{cluster.prefix}-mark"
    # the bridge port keeps the bridge's defaults, on purpose (see tether/datapath/vxlan.py)
    port = vx["linkinfo"]["info_slave_data"]
    assert port["learning"] is True and port["flood"] is True
    assert port["neigh_suppress"] is False

    bridge = h1.link(h1.bridge())
    assert bridge["address"] == h1.bridge_mac()
    assert bridge["mtu"] == UNDERLAY_MTU - 50
    assert [h1.vxlan()] == [
        name for name, kind in h1.dp.links_with_mark(f"{cluster.prefix}-mark")
        if kind == "vxlan"
    ]  # fmt: skip

    # Drift is repaired: learning switched on, MTU lowered, unenslaved, down.
    h1.run("ip", "link", "set", h1.vxlan(), "nomaster", "down", "mtu", "1300")
    h1.run("ip", "link", "set", h1.vxlan(), "type", "vxlan", "learning")
    h1.overlay_up()
    vx = h1.link(h1.vxlan())
    assert vx["linkinfo"]["info_data"]["learning"] is False
    assert (vx["mtu"], vx["master"]) == (1350, h1.bridge())
    assert "UP" in vx["flags"]

    h1.dp.delete_vxlan(h1.vxlan())
    assert h1.vxlan() not in h1.links()
    h1.dp.delete_vxlan(h1.vxlan())  # idempotent


def test_ensure_vxlan_refuses_conflicts_and_leaves_nothing(cluster: Cluster) -> None:
    h1 = cluster.hosts[0]
    h1.overlay_up()
    dp, br, mark = h1.dp, h1.bridge(), "m"
    before = h1.links()
    other = f"{cluster.prefix}y"
    cases: list[tuple[str, dict[str, Any]]] = [
        # the existing device with another identity
        ("exists with VNI 42", {"name": h1.vxlan(), "vni": 43}),
        ("exists with VNI 42", {"name": h1.vxlan(), "local_ip": "10.99.0.9"}),
        ("exists with VNI 42", {"name": h1.vxlan(), "port": 8472}),
        # the same VNI twice in one namespace (fine in two: see the tests below)
        ("already has VNI 42", {"name": other}),
        # the MTU the kernel would silently cap
        ("more than the underlay up0 allows \\(1350\\)", {"name": other, "mtu": 1351}),
        ("no interface here holds 10.99.0.9", {"name": other, "local_ip": "10.99.0.9"}),
        ("bridge .* does not exist", {"name": other, "bridge": "nobr"}),
        ("it is a bridge", {"name": br}),
        ("invalid VNI", {"name": other, "vni": 1 << 24}),
        ("invalid VTEP address", {"name": other, "local_ip": "fd00::1"}),
    ]
    for message, overrides in cases:
        args: dict[str, Any] = {
            "name": other, "vni": VNI, "local_ip": h1.vtep, "bridge": br,
            "mtu": 1350, "mark": mark,
        }  # fmt: skip
        args.update(overrides)
        with pytest.raises(DatapathError, match=message) as info:
            dp.ensure_vxlan(**args)
        assert "\n" not in str(info.value)
        assert h1.links() == before
    assert h1.link(h1.vxlan())["linkinfo"]["info_data"]["id"] == VNI


def test_set_bridge_mac_and_addresses(cluster: Cluster) -> None:
    h1 = cluster.hosts[0]
    h1.overlay_up()
    dp, br = h1.dp, h1.bridge()
    dp.set_bridge_mac(br, "02:AB:CD:00:00:01")
    dp.set_bridge_mac(br, "02:ab:cd:00:00:01")  # idempotent, case-blind
    assert h1.link(br)["address"] == "02:ab:cd:00:00:01"
    with pytest.raises(DatapathError, match="not a unicast"):
        dp.set_bridge_mac(br, "01:00:5e:00:00:01")
    with pytest.raises(DatapathError, match="it is a vxlan"):
        dp.set_bridge_mac(h1.vxlan(), "02:ab:cd:00:00:02")
    with pytest.raises(DatapathError, match="does not exist"):
        dp.set_bridge_mac("nobr", "02:ab:cd:00:00:02")

    def addrs() -> list[str]:
        out = h1.run("ip", "-j", "-4", "addr", "show", "dev", br).stdout
        return sorted(
            f"{a['local']}/{a['prefixlen']}" for a in json.loads(out)[0]["addr_info"]
        )

    dp.add_address(br, "10.221.0.1/16")
    dp.add_address(br, "10.221.0.1/16")
    assert addrs() == ["10.220.0.1/16", "10.221.0.1/16"]
    dp.remove_address(br, "10.221.0.1/16")
    dp.remove_address(br, "10.221.0.1/16")
    dp.remove_address("nolink", "10.221.0.1/16")  # gone with its link: success
    assert addrs() == ["10.220.0.1/16"]
    with pytest.raises(DatapathError, match="does not exist"):
        dp.add_address("nolink", "10.221.0.1/16")
    with pytest.raises(DatapathError, match="invalid address"):
        dp.add_address(br, "10.221.0.300/16")


# ---------------------------------------------------------------------- packets


def test_containers_and_hosts_talk_across_hosts_without_arp_on_the_wire(
    meshed: Cluster,
) -> None:
    h1, h2, h3 = meshed.hosts
    c1, c2 = h1.containers[0], h2.containers[0]
    wire = meshed.wire
    wire.drain()

    # The very first packet, right after programming: no warm-up, no flood to learn from.
    assert ping(c1.netns, c2.ip)
    seen = wire.drain()
    icmp = [p for p in seen if p.inner == "ipv4" and p.icmp_type in (0, 8)]
    assert (
        sorted((p.outer_src, p.outer_dst, p.vni, p.inner_src, p.inner_dst) for p in icmp)
        == [
            ("10.99.0.1", "10.99.0.2", VNI, c1.ip, c2.ip),  # echo request, unicast
            ("10.99.0.2", "10.99.0.1", VNI, c2.ip, c1.ip),  # echo reply
        ]
    )  # fmt: skip
    # ARP was answered on each side by the VXLAN device's proxy, from the table we wrote
    assert [p for p in seen if p.inner == "arp"] == []
    neigh = in_ns(c1.netns, "ip", "-4", "neigh", "show", c2.ip).stdout
    assert c2.mac in neigh

    # a container reaches a remote host's own overlay address, and a host a remote container
    assert ping(c1.netns, h2.address())
    assert host_ping(h2, c1.ip)
    assert host_ping(h3, c2.ip)  # h3 has no container: it is a peer all the same
    assert ping(c2.netns, h3.address())
    assert ping(c1.netns, h1.address())  # and the local gateway, of course
    assert [p for p in wire.drain() if p.inner == "arp"] == []

    # ARP for an address nobody programmed is dropped at the device, not flooded
    in_ns(c1.netns, "ping", "-c1", "-W1", f"{OVERLAY}.9.9", check=False)
    assert [p for p in wire.drain() if p.inner == "arp"] == []

    # what the Datapath reports
    assert h1.dp.list_peers(h1.vxlan()) == sorted(
        [
            (h2.address(), h2.bridge_mac(), h2.vtep),
            (h3.address(), h3.bridge_mac(), h3.vtep),
            (c2.ip, c2.mac, h2.vtep),
        ]
    )
    assert h1.dp.list_floods(h1.vxlan()) == [h2.vtep, h3.vtep]
    assert h3.dp.list_peers(h3.vxlan()) == sorted(
        [
            (h1.address(), h1.bridge_mac(), h1.vtep),
            (h2.address(), h2.bridge_mac(), h2.vtep),
            (c1.ip, c1.mac, h1.vtep),
            (c2.ip, c2.mac, h2.vtep),
        ]
    )


def test_broadcast_goes_to_every_flood_vtep(meshed: Cluster) -> None:
    h1, h2, h3 = meshed.hosts
    c1 = h1.containers[0]
    meshed.wire.drain()
    # a broadcast ping: the bridge floods it to the VXLAN port, which copies it per VTEP
    in_ns(c1.netns, "ping", "-b", "-c1", "-W1", f"{OVERLAY}.255.255", check=False)
    sent = {
        p.outer_dst
        for p in meshed.wire.drain()
        if p.outer_src == h1.vtep and p.inner_dst == f"{OVERLAY}.255.255"
    }
    assert sent == {h2.vtep, h3.vtep}

    h1.dp.remove_flood(h1.vxlan(), h3.vtep)
    in_ns(c1.netns, "ping", "-b", "-c1", "-W1", f"{OVERLAY}.255.255", check=False)
    sent = {
        p.outer_dst
        for p in meshed.wire.drain()
        if p.outer_src == h1.vtep and p.inner_dst == f"{OVERLAY}.255.255"
    }
    assert sent == {h2.vtep}


def test_mtu_is_underlay_minus_50_and_full_size_packets_pass_unfragmented(
    meshed: Cluster,
) -> None:
    h1, h2, _ = meshed.hosts
    c1, c2 = h1.containers[0], h2.containers[0]
    mtu = h1.dp.underlay_mtu(h1.vtep) - 50
    assert mtu == 1350
    eth0 = json.loads(in_ns(c1.netns, "ip", "-j", "link", "show", "eth0").stdout)[0]
    assert eth0["mtu"] == mtu
    meshed.wire.drain()
    # 1322 bytes of payload + 8 ICMP + 20 IP = 1350, the largest that fits, DF set
    assert ping(c1.netns, c2.ip, "-M", "do", "-s", str(mtu - 28))
    big = [p for p in meshed.wire.drain() if p.icmp_type == 8]
    assert [(p.outer_len, p.fragment) for p in big] == [(UNDERLAY_MTU, False)]
    # one byte more does not fit the container's interface
    assert not ping(c1.netns, c2.ip, "-M", "do", "-s", str(mtu - 27))


def test_same_vni_on_every_host_and_two_vnis_isolated_on_one(
    meshed: Cluster,
) -> None:
    """VNI 42 runs on all three hosts (one namespace each). VNI 43 reuses the very same
    subnet on h1 and h2; frames of one VNI never reach the other's bridge."""
    h1, h2, _ = meshed.hosts
    c1, c2 = h1.containers[0], h2.containers[0]
    for host in (h1, h2):
        host.overlay_up(vni=43)
    d1 = meshed.container(h1, 3, vni=43)
    d2 = meshed.container(h2, 3, vni=43)
    for a, b in ((h1, h2), (h2, h1)):
        vx = a.vxlan(43)
        a.dp.add_peer(vx, b.address(), b.bridge_mac(43), b.vtep)
        a.dp.add_flood(vx, b.vtep)
    h1.dp.add_peer(h1.vxlan(43), d2.ip, d2.mac, h2.vtep)
    h2.dp.add_peer(h2.vxlan(43), d1.ip, d1.mac, h1.vtep)

    meshed.wire.drain()
    assert ping(d1.netns, d2.ip)
    assert ping(c1.netns, c2.ip)
    vnis = {(p.inner_src, p.vni) for p in meshed.wire.drain() if p.icmp_type == 8}
    assert vnis == {(d1.ip, 43), (c1.ip, VNI)}

    # Misprogram VNI 42 on h1 so that it sends to d2 (a VNI 43 endpoint on h2): the frames
    # do reach h2, tagged 42, and h2 hands them to its VNI 42 bridge only, where d2 is not.
    h1.dp.add_peer(h1.vxlan(), d2.ip, d2.mac, h2.vtep)
    h2.dp.add_peer(h2.vxlan(), c1.ip, c1.mac, h1.vtep)
    assert not ping(c1.netns, d2.ip)
    requests = [p for p in meshed.wire.drain() if p.icmp_type == 8]
    assert [(p.outer_dst, p.vni, p.inner_dst) for p in requests] == [
        (h2.vtep, VNI, d2.ip)
    ]
    # and the isolated pair still works
    assert ping(d1.netns, d2.ip)


def test_remove_peer(meshed: Cluster) -> None:
    h1, h2, h3 = meshed.hosts
    c1, c2 = h1.containers[0], h2.containers[0]
    vx = h1.vxlan()
    assert ping(c1.netns, c2.ip)

    h1.dp.remove_peer(vx, c2.ip, c2.mac, h2.vtep)
    h1.dp.remove_peer(vx, c2.ip, c2.mac, h2.vtep)  # idempotent
    assert (c2.ip, c2.mac, h2.vtep) not in h1.dp.list_peers(vx)
    # (the bridge's own, learned "master" entry for the MAC may stay: it only says "port
    # vx", and the device has no entry for the MAC any more)
    assert not any(c2.mac in line and "self" in line for line in h1.fdb())
    assert not any(line.startswith(c2.ip + " ") for line in h1.neigh())

    # Pitfall, pinned down: c1 still has c2's MAC cached, and an unknown unicast goes to
    # every flood VTEP, so it still gets through (as a flood) until c1's entry expires.
    meshed.wire.drain()
    assert ping(c1.netns, c2.ip)
    flooded = {p.outer_dst for p in meshed.wire.drain() if p.icmp_type == 8}
    assert flooded == {h2.vtep, h3.vtep}

    # Without the cache, c2 cannot even be resolved any more: the proxy has no entry and
    # drops the ARP request instead of tunnelling it.
    in_ns(c1.netns, "ip", "neigh", "flush", "dev", "eth0")
    meshed.wire.drain()
    assert not ping(c1.netns, c2.ip)
    assert [
        p for p in meshed.wire.drain() if p.inner_dst == c2.ip or p.inner == "arp"
    ] == []

    # programmed again: reachable from the first packet. (c1's failed resolution is
    # flushed first: while it is still INCOMPLETE, c1 only re-asks once a second.)
    h1.dp.add_peer(vx, c2.ip, c2.mac, h2.vtep)
    in_ns(c1.netns, "ip", "neigh", "flush", "dev", "eth0")
    assert ping(c1.netns, c2.ip)

    # everything removed on a missing device is success too
    h1.dp.remove_peer("novx", c2.ip, c2.mac, h2.vtep)
    h1.dp.remove_flood("novx", h2.vtep)


def test_a_peer_moves_to_another_vtep(meshed: Cluster) -> None:
    """c2 leaves h2 and comes back on h3 with the same address and MAC (a reschedule).
    The new location is programmed before the old one is withdrawn, as can happen."""
    h1, h2, h3 = meshed.hosts
    c1, c2 = h1.containers[0], h2.containers[0]
    vx = h1.vxlan()
    assert ping(c1.netns, c2.ip)
    # h3's bridge now has c2's MAC learned on its VXLAN port
    assert host_ping(h3, c2.ip)
    assert f"{c2.mac} master {h3.bridge()}" in h3.fdb()

    h2.dp.delete_netns(c2.netns)
    # The new host drops its remote entry first: a host must never hold a peer entry for
    # one of its own endpoints (its proxy would answer for it, its bridge would learn the
    # MAC on the VXLAN port, and local frames would be tunnelled to the old VTEP). This
    # also drops the learned bridge entry, which would swallow frames to a silent
    # container (frames are not sent back out of the port they came in on).
    h3.dp.remove_peer(h3.vxlan(), c2.ip, c2.mac, h2.vtep)
    assert not [line for line in h3.fdb() if c2.mac in line]
    moved = f"{meshed.prefix}moved"
    h3.dp.create_netns(moved)
    # no IPv6: the container stays silent until it answers, so nothing relearns its MAC
    in_ns(moved, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
    in_ns(moved, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
    h3.dp.attach_veth(
        netns=moved, host_ifname=f"{meshed.prefix}mv", ifname="eth0",
        bridge=h3.bridge(), mac=c2.mac, cidr=f"{c2.ip}/16", gateway=h3.address(),
        mtu=1350, mark="m",
    )  # fmt: skip
    h1.dp.add_peer(vx, c2.ip, c2.mac, h3.vtep)  # replace: moves the MAC in place
    h1.dp.remove_peer(vx, c2.ip, c2.mac, h2.vtep)  # late withdrawal: must not undo it
    assert (c2.ip, c2.mac, h3.vtep) in h1.dp.list_peers(vx)
    assert [x for x in h1.dp.list_peers(vx) if x[1] == c2.mac] == [
        (c2.ip, c2.mac, h3.vtep)
    ]
    meshed.wire.drain()
    assert ping(c1.netns, c2.ip)
    requests = [p for p in meshed.wire.drain() if p.icmp_type == 8]
    assert [p.outer_dst for p in requests] == [h3.vtep]
    assert host_ping(h3, c2.ip)  # and locally on its new host


# ---------------------------------------------------------------------- entries


def test_every_add_and_remove_is_idempotent(cluster: Cluster) -> None:
    h1, h2, h3 = cluster.hosts
    h1.overlay_up()
    dp, vx = h1.dp, h1.vxlan()
    ip, mac = "10.220.2.7", "02:42:0a:dc:02:07"
    for _ in range(2):
        dp.add_peer(vx, ip, mac.upper(), h2.vtep)
        dp.add_flood(vx, h2.vtep)
        dp.add_flood(vx, h3.vtep)
    assert dp.list_peers(vx) == [(ip, mac, h2.vtep)]
    assert dp.list_floods(vx) == [h2.vtep, h3.vtep]
    # exactly what `bridge` and `ip` show: static "self permanent" entries, and nothing
    # slipped into the bridge's own FDB (where "replace" without NTF_SELF would land)
    assert [line for line in h1.fdb() if "master" not in line] == sorted(
        [
            f"{mac} dst {h2.vtep} self permanent",
            f"00:00:00:00:00:00 dst {h2.vtep} self permanent",
            f"00:00:00:00:00:00 dst {h3.vtep} self permanent",
        ]
    )
    bridge_fdb = h1.run("bridge", "fdb", "show", "br", h1.bridge()).stdout
    assert not [x for x in bridge_fdb.splitlines() if mac in x and "master" in x]
    assert h1.neigh() == [f"{ip} lladdr {mac} PERMANENT"]

    for _ in range(2):
        dp.remove_peer(vx, ip, mac, h2.vtep)
        dp.remove_flood(vx, h2.vtep)
        dp.remove_flood(vx, h3.vtep)
    assert dp.list_peers(vx) == [] and dp.list_floods(vx) == []
    assert [line for line in h1.fdb() if "master" not in line] == []
    assert h1.neigh() == []

    # remove_peer leaves an entry that points elsewhere, and a neighbour that moved on
    dp.add_peer(vx, ip, mac, h3.vtep)
    dp.remove_peer(vx, ip, mac, h2.vtep)
    assert dp.list_peers(vx) == [(ip, mac, h3.vtep)]
    dp.add_peer(vx, ip, "02:42:0a:dc:02:08", h3.vtep)  # the address now has another MAC
    # the old MAC's FDB entry goes, the neighbour entry (now the new MAC's) stays
    dp.remove_peer(vx, ip, mac, h3.vtep)
    assert dp.list_peers(vx) == [(ip, "02:42:0a:dc:02:08", h3.vtep)]
    assert not any(mac in line and "self" in line for line in h1.fdb())


def test_add_peer_is_all_or_nothing(cluster: Cluster) -> None:
    h1, h2, _ = cluster.hosts
    h1.overlay_up()
    dp, vx = h1.dp, h1.vxlan()
    ip, mac = "10.220.2.7", "02:42:0a:dc:02:07"

    def state() -> tuple[list[str], list[str], str]:
        return h1.fdb(), h1.neigh(), h1.run("bridge", "fdb", "show").stdout

    empty = state()
    cases: list[tuple[str, tuple[str, str, str, str]]] = [
        # refused before anything is written
        ("novx does not exist", ("novx", ip, mac, h2.vtep)),
        ("not vxlan", (h1.bridge(), ip, mac, h2.vtep)),
        ("invalid MAC", (vx, ip, "nonsense", h2.vtep)),
        ("not a unicast", (vx, ip, "ff:ff:ff:ff:ff:ff", h2.vtep)),
        ("not a unicast", (vx, ip, "00:00:00:00:00:00", h2.vtep)),
        ("invalid peer address", (vx, "10.220.2.300", mac, h2.vtep)),
        ("invalid VTEP", (vx, ip, mac, "0.0.0.0")),
        ("invalid VTEP", (vx, ip, mac, "239.1.1.1")),
        # the neighbour entry is written, then the kernel refuses the FDB entry (an IPv6
        # VTEP on an IPv4 device): the neighbour entry must go again
        ("Address family not supported", (vx, ip, mac, "fd00::2")),
    ]
    for message, args in cases:
        with pytest.raises(DatapathError, match=message) as info:
            dp.add_peer(*args)
        assert "\n" not in str(info.value)
        assert state() == empty

    # a failed re-programming puts the previous neighbour entry back as it was
    dp.add_peer(vx, ip, mac, h2.vtep)
    before = state()
    with pytest.raises(DatapathError, match="Address family"):
        dp.add_peer(vx, ip, "02:42:0a:dc:02:09", "fd00::2")
    assert state() == before
    assert dp.list_peers(vx) == [(ip, mac, h2.vtep)]

    with pytest.raises(DatapathError, match="does not exist"):
        dp.add_flood("novx", h2.vtep)
    with pytest.raises(DatapathError, match="does not exist"):
        dp.list_peers("novx")
    with pytest.raises(DatapathError, match="does not exist"):
        dp.list_floods("novx")


# ---------------------------------------------------------------------- cost


def test_add_peer_cost(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    """Not an assertion on speed: prints the medians for the record."""
    h1, h2, h3 = cluster.hosts
    h1.overlay_up()
    dp, vx = h1.dp, h1.vxlan()
    count = 1000
    net = ipaddress.IPv4Network("10.230.0.0/16")
    peers = []
    for i, addr in enumerate(net.hosts()):
        if i == count:
            break
        mac = "02:42:" + ":".join(f"{b:02x}" for b in addr.packed)
        peers.append((str(addr), mac, h2.vtep if i % 2 else h3.vtep))

    add = []
    for peer in peers:
        start = time.perf_counter()
        dp.add_peer(vx, *peer)
        add.append(time.perf_counter() - start)
    start = time.perf_counter()
    listed = dp.list_peers(vx)
    list_cost = time.perf_counter() - start
    assert len(listed) == count
    readd = []
    for peer in peers[-10:]:
        start = time.perf_counter()
        dp.add_peer(vx, *peer)  # already there: the idempotent path
        readd.append(time.perf_counter() - start)
    remove = []
    for peer in peers:
        start = time.perf_counter()
        dp.remove_peer(vx, *peer)
        remove.append(time.perf_counter() - start)
    assert dp.list_peers(vx) == []

    def ms(xs: list[float]) -> str:
        return f"{statistics.median(xs) * 1000:.2f} ms"

    with capsys.disabled():
        print(
            f"\n[vxlan peer cost] add_peer median: first 10 {ms(add[:10])}, "
            f"all {count} {ms(add)}, last 10 (at {count}) {ms(add[-10:])}; "
            f"re-add at {count} {ms(readd)}; remove_peer median {ms(remove)}; "
            f"list_peers of {count} {list_cost * 1000:.1f} ms"
        )
