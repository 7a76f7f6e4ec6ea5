"""The macvlan verbs of the Datapath against the real kernel, with real pings.

The world, built from namespaces the test owns (all named with a unique ``tmv`` prefix)::

    containers c1, c2 (192.0.2.10, .11)    macvlan children of "up"
    host (the Datapath's)  up ======== lan0  LAN: the router, 192.0.2.1 and 2001:db8::1
                           a veth pair, the parent end in the host

Documentation prefixes only (192.0.2.0/24, 2001:db8::/64), and packets only to addresses in
these namespaces. The Datapath is constructed in a thread that has ``setns``-ed into the host
namespace (as tests/e2e/test_datapath.py does). The tests check the kernel's state with
``ip``, independently of the code under test. Cleanup deletes every namespace with the
prefix (the parent, shims and stubs go with the host, children with their namespace), even
when a test fails, and checks that nothing is left.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import assert_nothing_left, remove_prefixed

from tether.datapath import Datapath, NetlinkDatapath, nsutil
from tether.errors import DatapathError

pytestmark = pytest.mark.e2e

NETNS_DIR = "/var/run/netns"
ROUTER, ROUTER6 = "192.0.2.1", "2001:db8::1"
SHIM, SHIM6 = "192.0.2.250", "2001:db8::250"
PASSTHRU_BUSY = "already has a passthru macvlan or children: passthru takes the whole interface"


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=30)


def wait_for_carrier(netns: str, ifname: str) -> None:
    """Until the kernel has seen the carrier of ``ifname`` and finished its IPv6 addresses: the
    carrier is reported through linkwatch, up to a second late, and until then the router's
    address stays tentative and its first answers are lost."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not sh("ip", "-n", netns, "-6", "addr", "show", "dev", ifname, "tentative").stdout:
            return
        time.sleep(0.02)
    raise AssertionError(f"{ifname} in {netns} still has tentative addresses")


@dataclass
class Lan:
    prefix: str
    host: str  # the netns the Datapath is bound to; holds the parent
    router: str  # the LAN's netns
    parent: str
    dp: Datapath

    @property
    def mark(self) -> str:
        return f"tether:{self.prefix}"  # as a daemon's DriverContext.mark looks

    def ns(self, suffix: str) -> str:
        return f"{self.prefix}{suffix}"

    def in_host(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # nsenter --net keeps our mount namespace (ip netns exec would make a private one)
        return sh("nsenter", f"--net={NETNS_DIR}/{self.host}", "--", *cmd, check=check)

    def in_ns(self, netns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", netns, *cmd, check=check)

    def host_links(self) -> dict[str, Any]:
        return {link["ifname"]: link for link in json.loads(self.in_host("ip", "-j", "-d", "link").stdout)}

    def ns_links(self, netns: str) -> dict[str, Any]:
        return {link["ifname"]: link for link in json.loads(self.in_ns(netns, "ip", "-j", "-d", "link").stdout)}

    def ns_link_ids(self, netns: str) -> dict[str, tuple[Any, ...]]:
        """Each link's identity (index, MAC, MTU, kind): what a failed attach must not change.
        (Not its operstate, which the kernel settles in its own time after a link comes up.)"""
        return {
            name: (link["ifindex"], link.get("address"), link.get("mtu"), link.get("linkinfo", {}).get("info_kind"))
            for name, link in self.ns_links(netns).items()
        }

    def container(self, suffix: str, n: int, *, mode: str = "bridge", parent: str | None = None,
                  **overrides: Any) -> str:  # fmt: skip
        """A new namespace with eth0, a macvlan child: 192.0.2.{n}/24, 2001:db8::{n}/64."""
        netns = self.ns(suffix)
        self.dp.create_netns(netns)
        spec: dict[str, Any] = dict(
            netns=netns, ifname="eth0", parent=parent or self.parent, mode=mode, mac=f"02:00:c0:00:02:{n:02x}",
            cidr=f"192.0.2.{n}/24", gateway=ROUTER, mtu=1500, cidr6=f"2001:db8::{n}/64", gateway6=ROUTER6,
        )  # fmt: skip
        spec.update(overrides)
        assert self.dp.attach_macvlan(**spec) is bool(spec["gateway"] or spec["gateway6"])
        return netns

    def pings(self, netns: str | None, address: str) -> bool:
        cmd = ("ping", "-6" if ":" in address else "-4", "-c1", "-W1", address)
        result = self.in_host(*cmd, check=False) if netns is None else self.in_ns(netns, *cmd, check=False)
        return result.returncode == 0


@pytest.fixture
def lan() -> Iterator[Lan]:
    prefix = f"tmv{uuid.uuid4().hex[:4]}"
    host, router, parent = f"{prefix}h", f"{prefix}lan", f"{prefix}up"
    dp: Datapath | None = None
    try:
        for ns in (host, router):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", host, "link", "add", parent, "type", "veth", "peer", "name", "lan0", "netns", router)
        sh("ip", "-n", host, "link", "set", parent, "up")
        sh("ip", "-n", router, "addr", "add", f"{ROUTER}/24", "dev", "lan0")
        sh("ip", "-n", router, "addr", "add", f"{ROUTER6}/64", "dev", "lan0", "nodad")
        sh("ip", "-n", router, "link", "set", "lan0", "up")
        wait_for_carrier(router, "lan0")
        dp = nsutil.run_in_netns(f"{NETNS_DIR}/{host}", NetlinkDatapath)
        yield Lan(prefix=prefix, host=host, router=router, parent=parent, dp=dp)
    finally:
        if dp is not None:
            dp.close()
        remove_prefixed(prefix)
    assert_nothing_left(prefix)


# ---------------------------------------------------------------------- modes


def test_bridge_children_reach_each_other_and_the_router(lan: Lan) -> None:
    c1, c2 = lan.container("c1", 10), lan.container("c2", 11)
    eth0 = lan.ns_links(c1)["eth0"]
    assert eth0["linkinfo"]["info_kind"] == "macvlan" and eth0["linkinfo"]["info_data"]["mode"] == "bridge"
    assert (eth0["address"], eth0["mtu"], "UP" in eth0["flags"]) == ("02:00:c0:00:02:0a", 1500, True)
    assert lan.dp.container_interfaces(c1)[1]["addresses6"] == ["2001:db8::10/64"]
    assert {r["dst"]: r["gateway"] for r in lan.dp.container_routes(c1, 6)}["default"] == ROUTER6
    for address in ("192.0.2.11", "2001:db8::11", ROUTER, ROUTER6):
        assert lan.pings(c1, address), address
    assert lan.pings(c2, "2001:db8::10") and lan.pings(c2, ROUTER)
    assert lan.dp.macvlan_children(lan.parent) == []  # the children live in their namespaces


def test_private_children_reach_the_router_but_not_each_other(lan: Lan) -> None:
    c1, c2 = lan.container("c1", 10, mode="private"), lan.container("c2", 11, mode="private")
    assert lan.pings(c1, ROUTER) and lan.pings(c1, ROUTER6) and lan.pings(c2, ROUTER)
    assert not lan.pings(c1, "192.0.2.11")


def test_a_vepa_child_reaches_the_router(lan: Lan) -> None:
    c1 = lan.container("c1", 10, mode="vepa")
    assert lan.ns_links(c1)["eth0"]["linkinfo"]["info_data"]["mode"] == "vepa"
    assert lan.pings(c1, ROUTER) and lan.pings(c1, ROUTER6)


def test_passthru_takes_the_whole_parent(lan: Lan) -> None:
    c1 = lan.container("c1", 10, mode="passthru")
    eth0 = lan.ns_links(c1)["eth0"]
    assert eth0["address"] == lan.host_links()[lan.parent]["address"]  # the parent's MAC, not the one asked
    assert lan.pings(c1, ROUTER) and lan.pings(c1, ROUTER6)
    for mode in ("passthru", "bridge"):
        with pytest.raises(DatapathError, match=f"parent {lan.parent} {PASSTHRU_BUSY}"):
            lan.container(mode, 11, mode=mode)
        assert list(lan.ns_links(lan.ns(mode))) == ["lo"]
        with pytest.raises(DatapathError, match=PASSTHRU_BUSY):
            lan.dp.create_macvlan(ifname=lan.ns("m"), parent=lan.parent, mode=mode, mac="02:00:00:00:00:09",
                                  mtu=1500, mark=lan.mark)  # fmt: skip


def test_passthru_is_refused_beside_other_children(lan: Lan) -> None:
    lan.dp.create_macvlan(ifname=lan.ns("m"), parent=lan.parent, mode="bridge", mac="02:00:00:00:00:09",
                          mtu=1500, mark=lan.mark)  # fmt: skip
    with pytest.raises(DatapathError, match=PASSTHRU_BUSY):
        lan.container("c1", 10, mode="passthru")
    assert list(lan.ns_links(lan.ns("c1"))) == ["lo"]


# ---------------------------------------------------------------------- the host's way in


def test_the_parent_alone_cannot_reach_its_children(lan: Lan) -> None:
    c1 = lan.container("c1", 10)
    lan.in_host("ip", "addr", "add", "192.0.2.2/24", "dev", lan.parent)
    assert lan.pings(None, ROUTER)  # the parent's address works on the LAN...
    assert not lan.pings(None, "192.0.2.10")  # ...but the kernel keeps parent and children apart
    assert not lan.pings(c1, "192.0.2.2")


def test_host_and_container_reach_each_other_through_the_shim(lan: Lan) -> None:
    c1, shim = lan.container("c1", 10), lan.ns("sh")
    lan.dp.ensure_macvlan_shim(ifname=shim, parent=lan.parent, mode="private", address=None, address6=None,
                               mark="old")  # fmt: skip
    assert lan.host_links()[shim]["linkinfo"]["info_data"]["mode"] == "private"
    lan.dp.ensure_macvlan_shim(ifname=shim, parent=lan.parent, mode="bridge", address=SHIM, address6=SHIM6,
                               mark=lan.mark)  # fmt: skip
    for address in ("192.0.2.10", "2001:db8::10"):
        lan.dp.add_host_route(shim, address)
        lan.dp.add_host_route(shim, address)  # replace: idempotent
    assert lan.dp.host_routes(shim) == ["192.0.2.10", "2001:db8::10"]
    assert lan.in_host("ip", "-4", "route", "show", "192.0.2.10/32").stdout.split() == [
        "192.0.2.10", "dev", shim, "proto", "static", "scope", "link"
    ]  # fmt: skip
    for address in ("192.0.2.10", "2001:db8::10"):
        assert lan.pings(None, address), address
    for address in (SHIM, SHIM6):
        assert lan.pings(c1, address), address
    assert lan.dp.macvlan_children(lan.parent) == [(shim, "bridge")]

    # a reconcile finds it down and without an address: fixed, nothing doubled
    lan.in_host("ip", "addr", "del", f"{SHIM}/32", "dev", shim)
    lan.in_host("ip", "link", "set", shim, "down")
    for _ in range(2):
        lan.dp.ensure_macvlan_shim(ifname=shim, parent=lan.parent, mode="bridge", address=SHIM, address6=SHIM6,
                                   mark=lan.mark)  # fmt: skip
    link = lan.host_links()[shim]
    assert "UP" in link["flags"] and link["ifalias"] == lan.mark
    addrs = json.loads(lan.in_host("ip", "-j", "addr", "show", "dev", shim, "scope", "global").stdout)[0]
    assert sorted(f"{a['local']}/{a['prefixlen']}" for a in addrs["addr_info"] if a) == [f"{SHIM}/32", f"{SHIM6}/128"]
    lan.dp.add_host_route(shim, "192.0.2.10")  # the link went down, which took its routes
    assert lan.pings(None, "192.0.2.10")

    for address in ("192.0.2.10", "2001:db8::10", "192.0.2.77"):
        lan.dp.remove_host_route(shim, address)
        lan.dp.remove_host_route(shim, address)
    assert lan.dp.host_routes(shim) == []
    lan.dp.remove_host_route(lan.ns("gone"), "192.0.2.10")
    assert lan.dp.host_routes(lan.ns("gone")) == []
    with pytest.raises(DatapathError, match="does not exist"):
        lan.dp.add_host_route(lan.ns("gone"), "192.0.2.10")


def test_a_shim_name_taken_by_another_link_is_refused(lan: Lan) -> None:
    for taken in (lan.parent, "lo"):
        with pytest.raises(DatapathError, match=f"{taken} exists and is not a macvlan on {lan.parent}"):
            lan.dp.ensure_macvlan_shim(ifname=taken, parent=lan.parent, mode="bridge", address=SHIM,
                                       address6=None, mark=lan.mark)  # fmt: skip
    other = lan.ns("o")
    lan.in_host("ip", "link", "add", other, "type", "veth", "peer", "name", lan.ns("op"))
    lan.dp.ensure_macvlan_shim(ifname=lan.ns("sh"), parent=other, mode="bridge", address=None, address6=None,
                               mark=lan.mark)  # fmt: skip
    with pytest.raises(DatapathError, match="is not a macvlan on"):
        lan.dp.ensure_macvlan_shim(ifname=lan.ns("sh"), parent=lan.parent, mode="bridge", address=SHIM,
                                   address6=None, mark=lan.mark)  # fmt: skip
    with pytest.raises(DatapathError, match="parent interface .* does not exist"):
        lan.dp.ensure_macvlan_shim(ifname=lan.ns("s2"), parent=lan.ns("gone"), mode="bridge", address=SHIM,
                                   address6=None, mark=lan.mark)  # fmt: skip
    assert lan.ns("s2") not in lan.host_links()


# ---------------------------------------------------------------------- LAN stubs


def test_children_of_a_lan_stub_reach_each_other_and_not_the_host(lan: Lan) -> None:
    stub = lan.ns("st")
    lan.dp.ensure_lan_stub(name=stub, mark=lan.mark)
    lan.dp.ensure_lan_stub(name=stub, mark=lan.mark)  # idempotent
    links = lan.host_links()
    for end in (stub, stub + "p"):
        assert links[end]["linkinfo"]["info_kind"] == "veth" and links[end]["ifalias"] == lan.mark
        assert "UP" in links[end]["flags"] and "LOWER_UP" in links[end]["flags"]
        assert lan.in_host("ip", "-6", "addr", "show", "dev", end).stdout == ""  # no link-local either
    c1 = lan.container("c1", 20, parent=stub, gateway=None, gateway6=None)
    c2 = lan.container("c2", 21, parent=stub, gateway=None, gateway6=None)
    for address in ("192.0.2.21", "2001:db8::21"):
        assert lan.pings(c1, address), address
    assert lan.pings(c2, "192.0.2.20")

    # The peer end sits in the host's own stack: it must not answer for the host's addresses.
    lan.in_host("ip", "addr", "add", "192.0.2.99/32", "dev", "lo")
    assert not lan.pings(c1, "192.0.2.99")
    neigh = lan.in_ns(c1, "ip", "neigh", "show", "192.0.2.99").stdout
    assert "lladdr" not in neigh, neigh

    lan.dp.delete_lan_stub(stub)
    lan.dp.delete_lan_stub(stub)
    assert not {stub, stub + "p"} & set(lan.host_links())
    assert list(lan.ns_links(c1)) == ["lo"]  # the kernel took the children with their parent


def test_a_lan_stub_name_taken_by_another_link_is_refused(lan: Lan) -> None:
    with pytest.raises(DatapathError, match="is not a LAN stub"):
        lan.dp.ensure_lan_stub(name=lan.parent, mark=lan.mark)
    lan.in_host("ip", "link", "add", lan.ns("xp"), "type", "bridge")
    with pytest.raises(DatapathError, match="already exists"):
        lan.dp.ensure_lan_stub(name=lan.ns("x"), mark=lan.mark)
    assert lan.ns("x") not in lan.host_links()
    with pytest.raises(DatapathError, match="it is a bridge, not a veth"):
        lan.dp.delete_lan_stub(lan.ns("xp"))


# ---------------------------------------------------------------------- host-side children and views


def test_create_macvlan_leaves_a_down_marked_link(lan: Lan) -> None:
    name = lan.ns("m")
    lan.dp.create_macvlan(ifname=name, parent=lan.parent, mode="private", mac="02:00:00:00:00:09", mtu=1400,
                          mark=lan.mark)  # fmt: skip
    link = lan.host_links()[name]
    assert link["linkinfo"]["info_kind"] == "macvlan" and link["linkinfo"]["info_data"]["mode"] == "private"
    assert (link["address"], link["mtu"], link["ifalias"], link["link"]) == (
        "02:00:00:00:00:09", 1400, lan.mark, lan.parent)
    assert "UP" not in link["flags"]
    assert lan.dp.macvlan_children(lan.parent) == [(name, "private")]
    assert (name, "macvlan") in lan.dp.links_with_mark(lan.mark)
    with pytest.raises(DatapathError, match=f"{name} already exists"):
        lan.dp.create_macvlan(ifname=name, parent=lan.parent, mode="private", mac="02:00:00:00:00:0a", mtu=1400,
                              mark=lan.mark)  # fmt: skip
    lan.dp.delete_macvlan(name)
    lan.dp.delete_macvlan(name)  # missing is success
    assert name not in lan.host_links() and lan.dp.macvlan_children(lan.parent) == []
    with pytest.raises(DatapathError, match="it is a veth, not a macvlan"):
        lan.dp.delete_macvlan(lan.parent)
    assert lan.parent in lan.host_links()


def test_parent_candidates(lan: Lan) -> None:
    bridge, port = lan.ns("br"), lan.ns("pt")
    lan.in_host("ip", "link", "add", bridge, "type", "bridge")
    lan.in_host("ip", "link", "add", port, "type", "veth", "peer", "name", port + "x")
    lan.in_host("ip", "link", "set", port, "master", bridge)
    lan.in_host("ip", "link", "add", lan.ns("um"), "link", lan.parent, "type", "macvlan")  # unmarked
    lan.dp.ensure_macvlan_shim(ifname=lan.ns("sh"), parent=lan.parent, mode="bridge", address=SHIM, address6=None,
                               mark=lan.mark)  # fmt: skip
    lan.dp.ensure_lan_stub(name=lan.ns("st"), mark=lan.mark)
    assert lan.dp.parent_candidates() == sorted([bridge, lan.parent, port + "x"])


# ---------------------------------------------------------------------- failures leave nothing behind


def test_failed_attaches_leave_no_link_behind(lan: Lan) -> None:
    c1 = lan.container("c1", 10)
    before_host, before_c1 = set(lan.host_links()), lan.ns_link_ids(c1)
    spec: dict[str, Any] = dict(
        netns=c1, ifname="eth1", parent=lan.parent, mode="bridge", mac="02:00:c0:00:02:0b", cidr="192.0.2.11/24",
        gateway=None, mtu=1500,
    )  # fmt: skip
    refusals: list[tuple[dict[str, Any], str]] = [
        ({"parent": lan.ns("gone")}, f"parent interface {lan.ns('gone')} does not exist"),
        ({"ifname": "eth0"}, f"eth0 in {c1} already exists"),
        ({"netns": lan.ns("gone")}, f"network namespace {lan.ns('gone')} does not exist"),
        ({"mtu": 9000}, f"MTU 9000 is more than parent {lan.parent} allows \\(1500\\)"),
        ({"mode": "source"}, "invalid macvlan mode 'source'"),
        ({"parent": "lo"}, "parent lo is not an Ethernet interface"),
        ({"mac": "01:00:5e:00:00:01"}, "not a unicast address"),
        ({"mac": "02:00:c0:00:02:0a"}, "MAC 02:00:c0:00:02:0a is already in use"),  # eth0's, a sibling
        ({"ifname": "a-name-too-long-for-linux"}, "invalid interface name"),
        # made, then refused inside the namespace (c1 has a default route): undone
        ({"gateway": ROUTER}, "File exists"),
    ]
    for overrides, message in refusals:
        with pytest.raises(DatapathError, match=message):
            lan.dp.attach_macvlan(**{**spec, **overrides})
        assert set(lan.host_links()) == before_host, overrides
        assert lan.ns_link_ids(c1) == before_c1, overrides
    assert lan.dp.attach_macvlan(**{**spec, "gateway": ROUTER, "keep_existing_default": True}) is False
    assert [r["dev"] for r in lan.dp.container_routes(c1) if r["dst"] == "default"] == ["eth0"]
    assert lan.pings(c1, ROUTER)
