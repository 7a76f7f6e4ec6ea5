"""The real datapath and the test fake both satisfy the Datapath protocol, to the keyword,
so they cannot drift apart again; and the fake behaves as the protocol says where tests
rely on it (failure injection, idempotent peers and floods)."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

import pytest

from tether.datapath import Datapath, NetlinkDatapath
from tether.errors import DatapathError
from tether.testing.datapath import RecordingDatapath

Shape = tuple[tuple[tuple[str, Any, Any, Any], ...], Any]


def public_methods(cls: type) -> dict[str, Callable[..., Any]]:
    return {name: fn for name, fn in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_")}


def shape(fn: Callable[..., Any]) -> Shape:
    """(name, kind, default, type) of each parameter, and the return type. Types are
    resolved in the defining module, so a string annotation equals the type it names."""
    hints = typing.get_type_hints(fn)
    params = tuple(
        (p.name, p.kind, p.default, hints.get(p.name)) for p in inspect.signature(fn).parameters.values()
    )
    return params, hints.get("return")


def mismatches(impl: type, proto: type) -> list[str]:
    """How ``impl`` fails to have exactly the public methods of ``proto``, one line each."""
    wanted, found = public_methods(proto), public_methods(impl)
    problems = [f"{impl.__name__}.{n} is missing" for n in sorted(wanted.keys() - found.keys())]
    problems += [f"{impl.__name__}.{n} is not in {proto.__name__}" for n in sorted(found.keys() - wanted.keys())]
    for name in sorted(wanted.keys() & found.keys()):
        (want_params, want_return), (params, returns) = shape(wanted[name]), shape(found[name])
        if params != want_params:
            problems.append(f"{impl.__name__}.{name}{inspect.signature(found[name])} is not {name}"
                            f"{inspect.signature(wanted[name])}")
        if getattr(want_return, "_is_protocol", False):  # e.g. BoundPorts: any class with its methods
            problems += mismatches(returns, want_return) if isinstance(returns, type) else [
                f"{impl.__name__}.{name} returns {returns!r}, not a class"
            ]
        elif returns != want_return:
            problems.append(f"{impl.__name__}.{name} returns {returns!r}, not {want_return!r}")
    return problems


@pytest.mark.parametrize("impl", [NetlinkDatapath, RecordingDatapath])
def test_implementation_has_exactly_the_protocol(impl: type) -> None:
    assert mismatches(impl, Datapath) == []


def test_drift_is_caught() -> None:
    class Drifted(RecordingDatapath):
        def ensure_bridge(self, name: str, gateway_cidr: str, mtu: int, mark: str) -> None:  # type: ignore[override]
            pass

        def attach_veth(self, **kw: Any) -> bool:
            return False

        def sneaked_in(self) -> None:
            pass

    problems = mismatches(Drifted, Datapath)
    assert [p.split("(")[0] for p in problems] == [
        "Drifted.sneaked_in is not in Datapath", "Drifted.attach_veth", "Drifted.ensure_bridge"
    ]


def _static_check(real: NetlinkDatapath, fake: RecordingDatapath) -> list[Datapath]:
    return [real, fake]  # mypy checks both against the protocol, return types included


# ---------------------------------------------------------------------------- the fake

SAMPLE_ARGS: dict[str, Any] = {
    "name": "n1", "target": "/run/docker/netns/x", "prefix": "n", "gateway_cidr": "10.0.0.1/24",
    "mtu": 1450, "mark": "tether", "ifname": "eth0", "netns": "n1", "host_ifname": "veth1",
    "peer_ifname": "tmp1", "bridge": "br0", "mac": "02:00:00:00:00:01", "cidr": "10.0.0.2/24",
    "gateway": "10.0.0.1", "key": "forwarding", "value": "1", "vni": 42, "local_ip": "192.0.2.1",
    "vxlan": "vx42", "ip": "10.0.0.3", "vtep": "192.0.2.2",
    "protocol": "tcp", "address": "10.0.0.3", "port": 80,  # tether trace's reads
    "parent": "eth1", "mode": "bridge", "address6": None,  # macvlan
}  # fmt: skip


@pytest.mark.parametrize("verb", sorted(public_methods(Datapath)))
def test_fake_fails_any_verb_on_request(verb: str) -> None:
    dp = RecordingDatapath()
    dp.fail.add(verb)
    method = getattr(dp, verb)
    required = [p for p in inspect.signature(method).parameters.values() if p.default is p.empty]
    with pytest.raises(DatapathError, match=f"injected failure in {verb}$"):
        method(**{p.name: SAMPLE_ARGS[p.name] for p in required})


def test_fake_records_changes_only() -> None:
    dp = RecordingDatapath()
    dp.fail.add("create_netns")
    with pytest.raises(DatapathError):
        dp.create_netns("n1")
    dp.fail.clear()
    dp.list_netns()
    dp.netns_exists("n1")
    dp.set_interface_sysctl("br0", "forwarding", "1")
    assert dp.calls == ["create_netns", "sysctl br0 forwarding=1"]
    assert dp.netns == set()


def overlay_fake() -> RecordingDatapath:
    dp = RecordingDatapath()
    dp.ensure_bridge("br0", "10.0.0.1/24", 1450, "tether", exclusive=True)
    dp.ensure_vxlan("vx42", 42, "192.0.2.1", "br0", 1450, "tether")
    return dp


def test_fake_peers_are_idempotent_and_follow_a_moved_mac() -> None:
    dp = overlay_fake()
    peer = ("10.0.0.3", "02:00:00:00:00:03", "192.0.2.2")
    dp.add_peer("vx42", *peer)
    dp.add_peer("vx42", "10.0.0.3", "02:00:00:00:00:03".upper(), "192.0.2.2")
    assert dp.list_peers("vx42") == [peer]
    dp.add_peer("vx42", "10.0.0.3", "02:00:00:00:00:03", "192.0.2.9")  # the endpoint moved
    dp.remove_peer("vx42", *peer)  # stale: the new location owns the entries
    assert dp.list_peers("vx42") == [("10.0.0.3", "02:00:00:00:00:03", "192.0.2.9")]
    dp.remove_peer("vx42", "10.0.0.3", "02:00:00:00:00:03", "192.0.2.9")
    dp.remove_peer("vx42", "10.0.0.3", "02:00:00:00:00:03", "192.0.2.9")
    assert dp.list_peers("vx42") == []
    dp.remove_peer("gone", *peer)  # a missing device is success
    with pytest.raises(DatapathError, match="gone does not exist"):
        dp.add_peer("gone", *peer)


def test_fake_floods_are_idempotent_and_go_with_the_device() -> None:
    dp = overlay_fake()
    dp.add_flood("vx42", "192.0.2.2")
    dp.add_flood("vx42", "192.0.2.2")
    dp.add_flood("vx42", "192.0.2.3")
    dp.remove_flood("vx42", "192.0.2.3")
    dp.remove_flood("vx42", "192.0.2.3")
    assert dp.list_floods("vx42") == ["192.0.2.2"]
    dp.add_peer("vx42", "10.0.0.3", "02:00:00:00:00:03", "192.0.2.2")
    dp.delete_vxlan("vx42")
    dp.delete_vxlan("vx42")
    assert (dp.vxlans, dp.peers, dp.floods) == ({}, {}, {})
    with pytest.raises(DatapathError, match="does not exist"):
        dp.list_floods("vx42")


def test_fake_vxlan_is_idempotent_but_keeps_its_vni() -> None:
    dp = overlay_fake()
    dp.ensure_vxlan("vx42", 42, "192.0.2.1", "br0", 1400, "tether")
    assert dp.vxlans["vx42"]["mtu"] == 1400 and dp.link_master("vx42") == "br0"
    with pytest.raises(DatapathError, match="exists with VNI 42"):
        dp.ensure_vxlan("vx42", 43, "192.0.2.1", "br0", 1400, "tether")
    with pytest.raises(DatapathError, match="already has VNI 42"):
        dp.ensure_vxlan("vx43", 42, "192.0.2.1", "br0", 1400, "tether")
    with pytest.raises(DatapathError, match="it is a bridge"):
        dp.ensure_vxlan("br0", 44, "192.0.2.1", "br0", 1400, "tether")


def attach(dp: RecordingDatapath, host_ifname: str, ifname: str, **options: bool) -> bool:
    return dp.attach_veth(
        netns="n1", host_ifname=host_ifname, ifname=ifname, bridge="br0", mac="02:00:00:00:00:01",
        cidr="10.0.0.2/24", gateway="10.0.0.1", mtu=1450, mark="tether", **options,
    )


def test_fake_attach_takes_the_default_route_once() -> None:
    dp = overlay_fake()
    dp.create_netns("n1")
    assert attach(dp, "veth1", "eth0") is True
    with pytest.raises(DatapathError, match="default route already"):
        attach(dp, "veth2", "eth1")
    assert attach(dp, "veth2", "eth1", keep_existing_default=True) is False
    assert dp.has_default_route("n1") and dp.veths["veth2"]["gateway"] is None
    assert [i["ifname"] for i in dp.container_interfaces("n1")] == ["lo", "eth0", "eth1"]
    with pytest.raises(DatapathError, match="veth1 already exists"):
        attach(dp, "veth1", "eth2")
    dp.delete_netns("n1")
    assert dp.veths == {} and not dp.has_default_route("n1")


def test_fake_host_ports_name_a_holder() -> None:
    dp = RecordingDatapath()
    dp.held_ports[("tcp", 8080)] = "process nginx (pid 7)"
    ports = dp.host_ports()
    assert ports.holder("tcp", 8080, None) == "process nginx (pid 7)"
    assert ports.holder("udp", 8080, "10.0.0.1") is None
