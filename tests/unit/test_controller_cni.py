"""The CNI verbs (ADD, DEL, CHECK, GC) through CniDoor, on fakes: a runtime's namespace is
a file standing for its bind mount, registered in the fake kernel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from controllerkit import make_controller, runtime_netns, snapshot

from tether.controller import Controller
from tether.doors import CniDoor
from tether.errors import Conflict, InvalidInput, NotFound
from tether.testing.datapath import RecordingDatapath
from tether.testing.firewall import RecordingFirewall

PORTS = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]


@pytest.fixture
def ctl(tmp_path: Path) -> Controller:
    ctl = make_controller(tmp_path)
    ctl.create_network("appnet", subnet="10.1.0.0/24")
    ctl.create_network("n2", subnet="10.2.0.0/24")
    return ctl


@pytest.fixture
def cni(ctl: Controller) -> CniDoor:
    return CniDoor(ctl)


def dp_of(ctl: Controller) -> RecordingDatapath:
    return ctl.ctx.datapath  # type: ignore[return-value]


def fw_of(ctl: Controller) -> RecordingFirewall:
    return ctl.firewall  # type: ignore[return-value]


def host_side(result: dict[str, Any]) -> str:
    return str(result["interfaces"][0]["name"])


# ---------------------------------------------------------------------------- ADD
def test_add_twice_gives_the_same_result_and_changes_nothing_the_second_time(
    ctl: Controller, cni: CniDoor, tmp_path: Path
) -> None:
    ns = runtime_netns(ctl, tmp_path / "pod1")
    first = cni.add("pod1", ns, "eth0", "appnet", publish=PORTS)
    assert first["ips"] == [{"address": "10.1.0.2/24", "gateway": "10.1.0.1", "interface": 1}]
    assert first["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]
    assert first["interfaces"][1] == {"name": "eth0", "mac": first["interfaces"][1]["mac"], "sandbox": ns}
    assert fw_of(ctl).elements["ports"] == {"tcp . 8080 : 10.1.0.2 . 80"}
    after_first, calls = snapshot(ctl), (list(dp_of(ctl).calls), list(fw_of(ctl).calls))
    assert cni.add("pod1", ns, "eth0", "appnet", publish=PORTS) == first
    assert snapshot(ctl) == after_first
    assert (dp_of(ctl).calls, fw_of(ctl).calls) == calls  # no kernel or firewall work at all


def test_a_second_network_keeps_the_first_ones_default_route(ctl: Controller, cni: CniDoor, tmp_path: Path) -> None:
    ns = runtime_netns(ctl, tmp_path / "pod1")
    cni.add("pod1", ns, "eth0", "appnet")
    second = cni.add("pod1", ns, "eth1", "n2")
    assert second["routes"] == []  # the runtime must not be told of a route it does not have
    assert dp_of(ctl).has_default_route(ns)
    assert [r["gateway"] for r in dp_of(ctl).container_routes(ns) if r["dst"] == "default"] == ["10.1.0.1"]


def test_add_with_another_namespace_for_the_same_id_conflicts(ctl: Controller, cni: CniDoor, tmp_path: Path) -> None:
    ns = runtime_netns(ctl, tmp_path / "pod1")
    other = runtime_netns(ctl, tmp_path / "pod1-again")
    cni.add("pod1", ns, "eth0", "appnet")
    before = snapshot(ctl)
    with pytest.raises(Conflict, match="pod1 is known with another namespace"):
        cni.add("pod1", other, "eth0", "appnet")
    with pytest.raises(Conflict, match="already on network 'appnet' as eth0"):
        cni.add("pod1", ns, "eth1", "appnet")  # same network, another interface name
    with pytest.raises(NotFound, match="does not exist"):
        cni.add("pod2", str(tmp_path / "never-made"), "eth0", "appnet")
    assert snapshot(ctl) == before


# ---------------------------------------------------------------------------- DEL
def test_delete_is_idempotent_and_leaves_nothing(ctl: Controller, cni: CniDoor, tmp_path: Path) -> None:
    ns = runtime_netns(ctl, tmp_path / "pod1")
    before = snapshot(ctl)
    cni.add("pod1", ns, "eth0", "appnet", publish=PORTS, aliases=["db"])
    cni.delete("pod1", "eth0", "appnet")
    assert snapshot(ctl) == before  # records, index, lease, veth, published ports: all gone
    cni.delete("pod1", "eth0", "appnet")
    cni.delete("never-added", "eth0", "appnet")
    cni.delete("pod1", "eth0", "no-such-network")
    assert snapshot(ctl) == before


def test_delete_of_one_interface_keeps_the_others(ctl: Controller, cni: CniDoor, tmp_path: Path) -> None:
    ns = runtime_netns(ctl, tmp_path / "pod1")
    before = snapshot(ctl)
    cni.add("pod1", ns, "eth0", "appnet")
    cni.add("pod1", ns, "eth1", "n2")
    cni.delete("pod1", "eth1", "n2")
    assert list(ctl.inspect_container("cni-pod1")["networks"]) == ["appnet"]
    cni.check("pod1", "eth0", "appnet")
    cni.delete("pod1", "eth0", "appnet")
    assert snapshot(ctl) == before


def test_delete_of_another_interface_first_still_unpublishes_the_ports(
    ctl: Controller, cni: CniDoor, tmp_path: Path
) -> None:
    ns = runtime_netns(ctl, tmp_path / "pod1")
    before = snapshot(ctl)
    cni.add("pod1", ns, "eth0", "appnet", publish=PORTS)
    cni.add("pod1", ns, "eth1", "n2")
    cni.delete("pod1", "eth1", "n2")
    assert fw_of(ctl).elements["ports"] == {"tcp . 8080 : 10.1.0.2 . 80"}  # eth0 is still there
    cni.delete("pod1", "eth0", "appnet")
    assert snapshot(ctl) == before


def test_delete_after_the_runtime_removed_the_namespace(ctl: Controller, cni: CniDoor, tmp_path: Path) -> None:
    ns = runtime_netns(ctl, tmp_path / "pod1")
    before = snapshot(ctl)
    cni.add("pod1", ns, "eth0", "appnet")
    (tmp_path / "pod1").unlink()
    dp_of(ctl).delete_netns(ns)  # the kernel took the veth pair with it
    cni.delete("pod1", "eth0", "appnet")  # DEL after the namespace is gone: still success
    after = snapshot(ctl)
    assert after["store"] == before["store"] and after["firewall"] == before["firewall"]
    assert after["kernel"]["veths"] == {}


# ---------------------------------------------------------------------------- CHECK
def test_check_passes_on_what_add_built(ctl: Controller, cni: CniDoor, tmp_path: Path) -> None:
    ns = runtime_netns(ctl, tmp_path / "pod1")
    cni.add("pod1", ns, "eth0", "appnet")
    cni.check("pod1", "eth0", "appnet")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("interface", "interface eth0 is missing in "),
        ("address", r"address 10\.1\.0\.2/24 is missing on eth0"),
        ("route", r"the default route via 10\.1\.0\.1 is missing in "),
        ("host side", "the host side vt[0-9a-f]+ of eth0 is missing or off its bridge"),
        ("namespace", "network namespace .* is gone"),
    ],
)
def test_check_names_what_is_missing(ctl: Controller, cni: CniDoor, tmp_path: Path, damage: str, message: str) -> None:
    ns = runtime_netns(ctl, tmp_path / "pod1")
    veth = ctl.ctx.datapath.veths[host_side(cni.add("pod1", ns, "eth0", "appnet"))]  # type: ignore[attr-defined]
    if damage == "interface":
        veth["ifname"] = "eth7"  # renamed inside the namespace
    elif damage == "address":
        veth["cidr"] = "10.1.0.99/24"
    elif damage == "route":
        veth["gateway"] = None
    elif damage == "host side":
        veth["bridge"] = "gone-bridge"
    else:
        (tmp_path / "pod1").unlink()
    with pytest.raises(NotFound, match=message):
        cni.check("pod1", "eth0", "appnet")


def test_check_of_what_was_never_added(ctl: Controller, cni: CniDoor, tmp_path: Path) -> None:
    ns = runtime_netns(ctl, tmp_path / "pod1")
    with pytest.raises(NotFound, match="not attached to network 'appnet'"):
        cni.check("pod1", "eth0", "appnet")
    cni.add("pod1", ns, "eth0", "appnet")
    with pytest.raises(NotFound, match="not attached to network 'n2'"):
        cni.check("pod1", "eth0", "n2")
    with pytest.raises(NotFound, match="network 'nope' not found"):
        cni.check("pod1", "eth0", "nope")


# ---------------------------------------------------------------------------- GC
def test_gc_removes_only_cni_attachments_missing_from_the_valid_list(
    ctl: Controller, cni: CniDoor, tmp_path: Path
) -> None:
    ctl.create_container(["true"], name="web", net="appnet")  # tether's own
    ctl.create_container(["true"], name="cni-lookalike", net="appnet")  # tether's own, named like CNI's
    ctl.create_external("docker", "e1", ctl.get_network("appnet"))  # Docker's, through its door
    for pod in ("keep", "stale", "renamed", "elsewhere"):
        ns = runtime_netns(ctl, tmp_path / pod)
        cni.add(pod, ns, "eth0", "n2" if pod == "elsewhere" else "appnet")
    dp = dp_of(ctl)
    veths_before = set(dp.veths)

    removed = cni.gc("appnet", [("keep", "eth0"), ("renamed", "eth1"), ("elsewhere", "eth0")])

    assert removed == ["cni-renamed/eth0", "cni-stale/eth0"]
    names = {c["name"] for c in ctl.list_containers(all_=True)}
    assert names == {"web", "cni-lookalike", "docker-e1", "cni-keep", "cni-elsewhere"}
    gone = veths_before - set(dp.veths)
    assert len(gone) == 2 and all(dp_of(ctl).link_exists(v) is False for v in gone)
    leases = ctl.ipam.leases(ctl.get_network("appnet").id)
    owners = {c["id"] for c in ctl.list_containers(all_=True)}
    assert set(leases.values()) <= owners  # the removed ones' addresses were released
    assert cni.gc("appnet", [("keep", "eth0"), ("elsewhere", "eth0")]) == []  # nothing more to do
    assert cni.gc("no-such-network", []) == []


# ---------------------------------------------------------------------------- dual stack
@pytest.fixture
def dual(ctl: Controller) -> Controller:
    ctl.create_network("dual", subnet="10.6.0.0/24", ipv6=True, subnet6="fd00:6::/64")
    return ctl


def test_dual_stack_add_gives_both_addresses_and_routes_and_del_frees_both(
    dual: Controller, cni: CniDoor, tmp_path: Path
) -> None:
    ns = runtime_netns(dual, tmp_path / "pod1")
    before = snapshot(dual)
    result = cni.add("pod1", ns, "eth0", "dual")
    assert result["ips"] == [
        {"address": "10.6.0.2/24", "gateway": "10.6.0.1", "interface": 1},
        {"address": "fd00:6::2/64", "gateway": "fd00:6::1", "interface": 1},
    ]
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.6.0.1"}, {"dst": "::/0", "gw": "fd00:6::1"}]
    assert set(dual.ipam.leases(dual.get_network("dual").id)) == {"10.6.0.2", "fd00:6::2"}
    assert cni.add("pod1", ns, "eth0", "dual") == result  # ADD again: the same answer
    cni.check("pod1", "eth0", "dual")
    cni.delete("pod1", "eth0", "dual")
    assert snapshot(dual) == before  # both leases, the veth, the records: all gone


def test_dual_stack_requested_addresses_and_v6_host_ports(dual: Controller, cni: CniDoor, tmp_path: Path) -> None:
    dp_of(dual).addresses["uplink0"] = {"2001:db8::5/64"}  # a v6 address of the host
    ns = runtime_netns(dual, tmp_path / "pod1")
    ports = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "2001:db8:0::5"}]
    result = cni.add("pod1", ns, "eth0", "dual", ip="10.6.0.50", ip6="fd00:6:0::50", publish=ports)
    assert [i["address"] for i in result["ips"]] == ["10.6.0.50/24", "fd00:6::50/64"]
    assert fw_of(dual).elements["ip6 ports_ip"] == {"2001:db8::5 . tcp . 8080 : fd00:6::50 . 80"}
    assert dual.inspect_container("cni-pod1")["ports"][0]["host_ip"] == "2001:db8::5"  # normalised


@pytest.mark.parametrize(
    ("network", "kwargs", "error", "message"),
    [
        ("appnet", {"ip6": "fd00:6::50"}, InvalidInput, "IPv6 address fd00:6::50 asked for on network 'appnet', which has no IPv6 subnet"),
        ("dual", {"ip6": "fd00:7::50"}, InvalidInput, "outside network 'dual'"),
        ("dual", {"ip6": "fd00:6::1"}, Conflict, "gateway of network 'dual'"),
        ("dual", {"ip6": "10.6.0.9"}, InvalidInput, "give an IPv6 address"),
        ("appnet", {"publish": [{"hostPort": 8080, "containerPort": 80, "hostIP": "::1"}]}, InvalidInput,
         "has no IPv6 subnet"),
        ("dual", {"publish": [{"hostPort": 8080, "containerPort": 80, "hostIP": "nowhere"}]}, InvalidInput,
         "invalid portMappings hostIP 'nowhere'"),
    ],
)
def test_dual_stack_bad_input_is_one_line_and_changes_nothing(
    dual: Controller, cni: CniDoor, tmp_path: Path, network: str, kwargs: dict[str, Any], error: type[Exception],
    message: str,
) -> None:
    ns = runtime_netns(dual, tmp_path / "pod1")
    before = snapshot(dual)
    with pytest.raises(error, match=message) as info:
        cni.add("pod1", ns, "eth0", network, **kwargs)
    assert "\n" not in str(info.value)
    assert snapshot(dual) == before


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("address6", r"address fd00:6::2/64 is missing on eth0"),
        ("route6", r"the IPv6 default route via fd00:6::1 is missing in "),
    ],
)
def test_dual_stack_check_names_the_missing_v6_part(
    dual: Controller, cni: CniDoor, tmp_path: Path, damage: str, message: str
) -> None:
    ns = runtime_netns(dual, tmp_path / "pod1")
    veth = dp_of(dual).veths[host_side(cni.add("pod1", ns, "eth0", "dual"))]
    if damage == "address6":
        veth["cidr6"] = None
    else:
        veth["gateway6"] = None
    with pytest.raises(NotFound, match=message):
        cni.check("pod1", "eth0", "dual")
