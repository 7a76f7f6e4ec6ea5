"""RecordingDatapath mirrors the macvlan half of the Datapath protocol, refusals included
(missing parent or namespace, a taken name, passthru sharing a parent), so unit tests of a
macvlan driver on the fake mean something. tests/e2e/test_datapath_macvlan.py shows the
real kernel doing the same."""

from __future__ import annotations

from typing import Any

import pytest

from tether.errors import DatapathError
from tether.testing.datapath import RecordingDatapath

MARK = "tether:t-"
PASSTHRU_BUSY = "parent eth1 already has a passthru macvlan or children: passthru takes the whole interface"


def lan_fake() -> RecordingDatapath:
    dp = RecordingDatapath()
    dp.nics["eth1"] = 1500
    dp.create_netns("c1")
    dp.create_netns("c2")
    return dp


def attach(dp: RecordingDatapath, netns: str = "c1", **options: Any) -> bool:
    spec: dict[str, Any] = dict(
        netns=netns, ifname="eth0", parent="eth1", mode="bridge", mac="02:00:00:00:00:0a", cidr="192.0.2.10/24",
        gateway="192.0.2.1", mtu=1500, cidr6="2001:db8::a/64", gateway6="2001:db8::1",
    )  # fmt: skip
    spec.update(options)
    return dp.attach_macvlan(**spec)


def create(dp: RecordingDatapath, ifname: str = "mv1", **options: Any) -> None:
    spec: dict[str, Any] = dict(ifname=ifname, parent="eth1", mode="bridge", mac="02:00:00:00:00:0b", mtu=1500,
                                mark=MARK)  # fmt: skip
    spec.update(options)
    dp.create_macvlan(**spec)


def shim(dp: RecordingDatapath, ifname: str = "tsh1", parent: str = "eth1") -> None:
    dp.ensure_macvlan_shim(ifname=ifname, parent=parent, mode="bridge", address="192.0.2.250",
                           address6="2001:db8::250", mark=MARK)  # fmt: skip


def test_an_attached_child_is_a_container_interface_with_its_routes() -> None:
    dp = lan_fake()
    assert attach(dp) is True
    eth0 = dp.container_interfaces("c1")[1]
    assert (eth0["ifname"], eth0["mac"], eth0["addresses"], eth0["addresses6"]) == (
        "eth0", "02:00:00:00:00:0a", ["192.0.2.10/24"], ["2001:db8::a/64"])
    assert dp.has_default_route("c1") and dp.has_default_route("c1", family=6)
    assert dp.macvlan_endpoints[("c1", "eth0")]["parent"] == "eth1"
    assert dp.calls == ["create_netns", "create_netns", "attach_macvlan"]
    assert dp.macvlan_children("eth1") == []  # children in namespaces are not seen from the host


def test_a_second_network_keeps_the_default_route_only_if_asked() -> None:
    dp = lan_fake()
    attach(dp)
    with pytest.raises(DatapathError, match="default route already"):
        attach(dp, ifname="eth1")
    assert attach(dp, ifname="eth1", keep_existing_default=True) is False
    assert dp.macvlan_endpoints[("c1", "eth1")]["gateway"] is None
    assert attach(dp, "c2", gateway=None) is True  # with only gateway6: whether that one was installed
    with pytest.raises(DatapathError, match="with cidr6"):
        attach(dp, "c2", ifname="eth1", cidr6=None)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"netns": "gone"}, "network namespace gone does not exist"),
        ({"parent": "eth9"}, "parent interface eth9 does not exist"),
        ({"ifname": "eth0"}, "eth0 in c1 already exists"),
        ({"mode": "source"}, "invalid macvlan mode 'source'"),
        ({"mtu": 9000}, r"MTU 9000 is more than parent eth1 allows \(1500\)"),
        ({"parent": "mv1"}, "parent mv1 is itself a macvlan"),
    ],
)
def test_refused_attaches_change_nothing(options: dict[str, Any], message: str) -> None:
    dp = lan_fake()
    attach(dp)
    create(dp)
    before = (dict(dp.macvlan_endpoints), dict(dp.macvlans))
    with pytest.raises(DatapathError, match=message):
        attach(dp, **options)
    assert (dp.macvlan_endpoints, dp.macvlans) == before


def test_passthru_takes_the_whole_parent() -> None:
    dp = lan_fake()
    attach(dp, mode="passthru")
    assert dp.macvlan_endpoints[("c1", "eth0")]["mac"] is None  # the parent's, which the fake does not know
    for mode in ("passthru", "bridge"):
        with pytest.raises(DatapathError, match=PASSTHRU_BUSY):
            attach(dp, "c2", mode=mode)
        with pytest.raises(DatapathError, match=PASSTHRU_BUSY):
            create(dp, mode=mode)
    dp.delete_netns("c1")  # the passthru child goes with its namespace
    attach(dp, "c2")
    dp.create_netns("c3")
    with pytest.raises(DatapathError, match=PASSTHRU_BUSY):
        attach(dp, "c3", mode="passthru")  # beside a bridge child
    dp.detach_in_netns("c2", "eth0")
    assert dp.macvlan_endpoints == {}
    create(dp)
    with pytest.raises(DatapathError, match=PASSTHRU_BUSY):
        attach(dp, "c3", mode="passthru")  # beside a host-side child


def test_a_bridge_port_cannot_be_a_parent() -> None:
    dp = lan_fake()
    dp.ensure_bridge("br0", "10.0.0.1/24", 1500, MARK)
    dp.attach_veth(netns="c2", host_ifname="veth1", ifname="eth9", bridge="br0", mac="02:00:00:00:00:01",
                   cidr="10.0.0.2/24", gateway=None, mtu=1500, mark="other")  # fmt: skip
    with pytest.raises(DatapathError, match="veth1 is a bridge or bond port"):
        attach(dp, parent="veth1")
    attach(dp, parent="br0")  # a bridge itself can


def test_create_macvlan_leaves_a_down_marked_link() -> None:
    dp = lan_fake()
    create(dp, mode="private")
    assert dp.link_state("mv1") == {"ifname": "mv1", "kind": "macvlan", "up": False, "master": None, "mtu": 1500}
    assert dp.links_with_mark(MARK) == [("mv1", "macvlan")]
    assert dp.macvlan_children("eth1") == [("mv1", "private")]
    with pytest.raises(DatapathError, match="mv1 already exists"):
        create(dp)
    with pytest.raises(DatapathError, match="eth1 already exists"):
        create(dp, ifname="eth1")
    dp.delete_macvlan("mv1")
    dp.delete_macvlan("mv1")  # missing is success
    assert not dp.link_exists("mv1") and dp.macvlan_children("eth1") == []
    dp.ensure_bridge("br0", "10.0.0.1/24", 1500, MARK)
    with pytest.raises(DatapathError, match="it is a bridge, not a macvlan"):
        dp.delete_macvlan("br0")


def test_the_shim_is_idempotent_and_fixes_what_is_missing() -> None:
    dp = lan_fake()
    shim(dp)
    shim(dp)
    assert dp.addresses["tsh1"] == {"192.0.2.250/32", "2001:db8::250/128"}
    assert dp.link_state("tsh1")["up"] is True  # type: ignore[index]
    assert dp.macvlan_children("eth1") == [("tsh1", "bridge")]
    assert dp.sysctls[(6, "tsh1", "accept_ra")] == "0"
    assert "192.0.2.250" in dp.host_addresses() and "2001:db8::250" in dp.host_addresses()
    dp.down_links.add("tsh1")
    dp.addresses["tsh1"].discard("192.0.2.250/32")
    shim(dp)
    assert dp.link_state("tsh1")["up"] is True  # type: ignore[index]
    assert dp.addresses["tsh1"] == {"192.0.2.250/32", "2001:db8::250/128"}
    dp.nics["eth2"] = 1500
    for taken, parent in (("eth1", "eth1"), ("tsh1", "eth2")):
        with pytest.raises(DatapathError, match=f"{taken} exists and is not a macvlan on {parent}"):
            shim(dp, taken, parent)
    with pytest.raises(DatapathError, match="parent interface eth9 does not exist"):
        shim(dp, "tsh2", "eth9")
    dp.delete_macvlan("tsh1")
    assert "tsh1" not in dp.addresses and "192.0.2.250" not in dp.host_addresses()


def test_host_routes_replace_and_go_with_their_link() -> None:
    dp = lan_fake()
    shim(dp)
    shim(dp, "tsh2")
    for address in ("2001:db8::a", "192.0.2.11", "192.0.2.10", "192.0.2.10"):
        dp.add_host_route("tsh1", address)
    assert dp.host_routes("tsh1") == ["192.0.2.10", "192.0.2.11", "2001:db8::a"]
    dp.add_host_route("tsh2", "192.0.2.11")  # replace: the route moves
    assert dp.host_routes("tsh1") == ["192.0.2.10", "2001:db8::a"] and dp.host_routes("tsh2") == ["192.0.2.11"]
    dp.remove_host_route("tsh1", "192.0.2.10")
    dp.remove_host_route("tsh1", "192.0.2.10")
    dp.remove_host_route("gone", "192.0.2.10")
    assert dp.host_routes("tsh1") == ["2001:db8::a"]
    with pytest.raises(DatapathError, match="gone does not exist"):
        dp.add_host_route("gone", "192.0.2.10")
    dp.delete_macvlan("tsh1")
    assert dp.host_routes("tsh1") == []


def test_a_lan_stub_is_two_marked_ends_and_takes_its_children_along() -> None:
    dp = lan_fake()
    dp.ensure_lan_stub(name="tst1", mark=MARK)
    dp.ensure_lan_stub(name="tst1", mark=MARK)
    assert dp.links_with_mark(MARK) == [("tst1", "veth"), ("tst1p", "veth")]
    assert dp.sysctls[(6, "tst1p", "disable_ipv6")] == "1" and dp.sysctls[(4, "tst1p", "arp_ignore")] == "8"
    attach(dp, parent="tst1", gateway=None, gateway6=None)
    shim(dp, parent="tst1")
    dp.delete_lan_stub("tst1")
    dp.delete_lan_stub("tst1")
    assert not dp.link_exists("tst1") and not dp.link_exists("tst1p")
    assert dp.macvlan_endpoints == {} and dp.macvlans == {}  # as the kernel: a parent takes its children
    create(dp, "tst2p")
    with pytest.raises(DatapathError, match="tst2p already exists"):
        dp.ensure_lan_stub(name="tst2", mark=MARK)
    assert not dp.link_exists("tst2")
    with pytest.raises(DatapathError, match="it is a macvlan, not a veth"):
        dp.delete_lan_stub("tst2p")


def test_parent_candidates_leave_out_tether_links_and_children() -> None:
    dp = lan_fake()
    dp.nics["eth0"] = 1400
    dp.ensure_bridge("br-user", "10.0.0.1/24", 1500, "")  # someone else's bridge
    dp.ensure_bridge("tbr1", "10.1.0.1/24", 1500, MARK)
    dp.ensure_lan_stub(name="tst1", mark=MARK)
    create(dp, mark="")
    shim(dp)
    assert dp.parent_candidates() == ["br-user", "eth0", "eth1"]
    dp.delete_bridge("br-user")
    assert dp.parent_candidates() == ["eth0", "eth1"]
