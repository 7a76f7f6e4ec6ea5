"""RecordingDatapath mirrors the dual-stack half of the Datapath protocol: v6 gateways on
bridges, v6 addresses and default routes per family, the host view with IPv6 after IPv4,
IPv6 sysctls and forwarding, and peers of both families sharing one FDB entry per MAC."""

from __future__ import annotations

from typing import Any

import pytest

from tether.errors import DatapathError
from tether.testing.datapath import RecordingDatapath


def dual_fake() -> RecordingDatapath:
    dp = RecordingDatapath(host_networks=["192.0.2.0/24"])
    dp.ensure_bridge("br0", "10.0.0.1/24", 1500, "tether", gateway_cidr6="fd00:1::1/64")
    dp.create_netns("n1")
    return dp


def attach(dp: RecordingDatapath, host_ifname: str, ifname: str, **options: Any) -> bool:
    spec: dict[str, Any] = dict(
        netns="n1", host_ifname=host_ifname, ifname=ifname, bridge="br0", mac="02:00:00:00:00:01",
        cidr="10.0.0.2/24", gateway="10.0.0.1", mtu=1500, mark="tether", cidr6="fd00:1::2/64", gateway6="fd00:1::1",
    )  # fmt: skip
    spec.update(options)
    return dp.attach_veth(**spec)


def test_a_dual_stack_attach_has_both_addresses_and_default_routes() -> None:
    dp = dual_fake()
    assert attach(dp, "veth1", "eth0") is True
    eth0 = dp.container_interfaces("n1")[1]
    assert (eth0["addresses"], eth0["addresses6"]) == (["10.0.0.2/24"], ["fd00:1::2/64"])
    assert dp.container_interfaces("n1")[0]["addresses6"] == []  # lo
    assert dp.has_default_route("n1") and dp.has_default_route("n1", family=6)
    assert dp.container_routes("n1", family=6) == [
        {"dst": "default", "gateway": "fd00:1::1", "dev": "eth0"},
        {"dst": "fd00:1::/64", "gateway": None, "dev": "eth0"},
    ]
    assert all(":" not in str(r["dst"]) for r in dp.container_routes("n1"))
    with pytest.raises(DatapathError, match="family"):
        dp.container_routes("n1", family=5)


def test_each_family_keeps_its_own_existing_default_route() -> None:
    dp = dual_fake()
    attach(dp, "veth1", "eth0", cidr6=None, gateway6=None)  # v4 only: a v4 default, no v6 one
    with pytest.raises(DatapathError, match="IPv4 default route already"):
        attach(dp, "veth2", "eth1")
    # kept: the v4 route stays with eth0, the v6 one is eth1's; the answer is the v4 route's
    assert attach(dp, "veth2", "eth1", keep_existing_default=True) is False
    assert [r["dev"] for r in dp.container_routes("n1", family=6) if r["dst"] == "default"] == ["eth1"]
    assert [r["dev"] for r in dp.container_routes("n1") if r["dst"] == "default"] == ["eth0"]
    # without a v4 gateway the answer is the v6 route's
    assert attach(dp, "veth3", "eth2", gateway=None, keep_existing_default=True) is False
    with pytest.raises(DatapathError, match="IPv6 gateway"):
        attach(dp, "veth4", "eth3", gateway=None, cidr6=None)


def test_a_v6_default_route_added_later() -> None:
    dp = dual_fake()
    attach(dp, "veth1", "eth0", gateway6=None)
    assert not dp.has_default_route("n1", family=6)
    dp.add_default_route("n1", "fd00:1::1")
    dp.add_default_route("n1", "fd00:1::1")
    assert dp.has_default_route("n1", family=6)
    with pytest.raises(DatapathError, match="File exists"):
        dp.add_default_route("n1", "fd00:1::9")
    dp.delete_netns("n1")
    assert dp.default_routes6 == {}


def test_the_host_view_lists_ipv6_after_ipv4() -> None:
    dp = dual_fake()
    dp.add_address("br0", "fd00:2::1/64")
    dp.add_address("br0", "10.9.0.1/16")
    assert dp.host_addresses() == ["127.0.0.1", "10.0.0.1", "10.9.0.1", "fd00:1::1", "fd00:2::1"]
    assert dp.host_networks() == ["192.0.2.0/24", "10.0.0.0/24", "10.9.0.0/16", "fd00:1::/64", "fd00:2::/64"]
    dp.ensure_bridge("br0", "10.0.0.1/24", 1500, "tether", exclusive=True)  # no v6 gateway: none left
    assert dp.host_addresses() == ["127.0.0.1", "10.0.0.1"]


def test_ipv6_sysctls_and_forwarding_are_recorded() -> None:
    dp = dual_fake()
    dp.set_interface_sysctl("br0", "accept_ra", "0", family=6)
    dp.set_interface_sysctl("br0", "forwarding", "1")
    dp.enable_ipv6_forwarding()
    assert dp.calls[-3:] == ["sysctl6 br0 accept_ra=0", "sysctl br0 forwarding=1", "enable_ipv6_forwarding"]
    assert dp.ipv6_forwarding and dp.sysctls[(6, "br0", "accept_ra")] == "0"


def test_peers_of_both_families_share_the_fdb_entry_of_their_mac() -> None:
    dp = dual_fake()
    dp.ensure_vxlan("vx42", 42, "192.0.2.1", "br0", 1450, "tether")
    v4, v6 = ("10.0.0.3", "02:00:00:00:00:03", "192.0.2.2"), ("fd00:1::3", "02:00:00:00:00:03", "192.0.2.2")
    dp.add_peer("vx42", *v4)
    dp.add_peer("vx42", *v6)
    assert dp.list_peers("vx42") == [v4, v6]
    dp.remove_peer("vx42", *v6)  # the MAC's one FDB entry goes: neither is programmed any more
    assert dp.list_peers("vx42") == []
