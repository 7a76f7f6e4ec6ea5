"""The macvlan driver behind the controller, on the fakes: options, placement, host
access, passthru, aux addresses, and that every refusal changes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from tether.controller import Controller
from tether.controller.reconcile import Reconciler  # noqa: F401  (the controller's reconcile verb)
from tether.drivers.macvlan import shim_name, stub_name
from tether.errors import Conflict, InvalidInput
from tether.testing.datapath import RecordingDatapath
from tether.testing.memory import MemoryStore


@pytest.fixture
def ctl(tmp_path: Any) -> Controller:
    dp = RecordingDatapath(["192.168.1.0/24"])
    dp.nics = {"eth1": 1500, "eth2": 1500}
    return Controller(MemoryStore(), dp, str(tmp_path), netns_prefix="u-")


def dp_of(c: Controller) -> RecordingDatapath:
    return c.ctx.datapath  # type: ignore[return-value]


def state(c: Controller) -> dict[str, Any]:
    dp = dp_of(c)
    return {
        "keys": sorted(kv.key for kv in c.store.list("/") if not kv.key.startswith("/ipam-cursor/")),
        "netns": sorted(dp.netns),
        "macvlans": dict(dp.macvlans),
        "endpoints": dict(dp.macvlan_endpoints),
        "stubs": set(dp.stubs),
        "routes": {k: set(v) for k, v in dp.routes_via.items()},
    }


def lan(c: Controller, name: str = "lan", **opts: str) -> Any:
    options = {"parent": "eth1", **opts}
    return c.create_network(name, driver="macvlan", subnet="192.168.1.0/24", gateway="192.168.1.1", options=options)


def test_create_on_a_lan_the_host_routes(ctl: Controller) -> None:
    net = lan(ctl)
    assert net.bridge == "eth1" and net.options["macvlan_mode"] == "bridge"
    assert net.options["host_access"] == "false"
    assert not dp_of(ctl).macvlans and not dp_of(ctl).stubs  # nothing on the host
    c = ctl.create_container(["true"], name="a", net="lan").value
    ep = ctl._endpoints(c.id)[0]
    args = dp_of(ctl).macvlan_endpoints[(c.netns, "eth0")]
    assert args["parent"] == "eth1" and args["gateway"] == "192.168.1.1" and ep.address == "192.168.1.2"
    described = ctl.inspect_network("lan")
    assert described["parent"] == "eth1" and described["macvlan_mode"] == "bridge"


@pytest.mark.parametrize(
    "options, internal, says",
    [
        ({"parent": "eth9"}, False, "no such interface on this host: use one of eth1, eth2"),
        ({"parent": "eth1", "macvlan_mode": "loud"}, False, "unknown -o macvlan_mode='loud'"),
        ({"parent": "eth1", "colour": "red"}, False, "unknown network option 'colour'"),
        ({"parent": "eth1"}, True, "--internal and -o parent contradict"),
        ({"macvlan_mode": "passthru"}, False, "passthru needs -o parent"),
        ({"parent": "eth1", "host_address": "192.168.1.9"}, False, "needs -o host_access=true"),
        ({"parent": "eth1", "macvlan_mode": "private", "host_access": "true"}, False, "needs macvlan_mode=bridge"),
        ({"parent": "eth1", "host_access": "maybe"}, False, "use true or false"),
    ],
)
def test_bad_options_change_nothing(ctl: Controller, options: dict[str, str], internal: bool, says: str) -> None:
    before = state(ctl)
    with pytest.raises(InvalidInput, match=says.replace("(", r"\(").replace("+", r"\+")):
        ctl.create_network("bad", driver="macvlan", subnet="10.9.0.0/24", options=options, internal=internal)
    assert state(ctl) == before


def test_overlap_only_on_the_same_parent(ctl: Controller) -> None:
    lan(ctl)
    before = state(ctl)
    with pytest.raises(Conflict, match="overlaps network 'lan'"):
        ctl.create_network("lan2", driver="macvlan", subnet="192.168.1.128/25", options={"parent": "eth1"})
    assert state(ctl) == before
    ctl.create_network("other", driver="macvlan", subnet="192.168.1.0/24", options={"parent": "eth2"})
    with pytest.raises(Conflict, match="overlaps network"):
        ctl.create_network("br", subnet="192.168.1.0/26")  # a bridge may never overlap it


def test_gateway_and_ip_outside_the_subnet(ctl: Controller) -> None:
    with pytest.raises(InvalidInput, match="outside the subnet"):
        ctl.create_network("g", driver="macvlan", subnet="10.9.0.0/24", gateway="10.8.0.1", options={"parent": "eth1"})
    lan(ctl)
    before = state(ctl)
    with pytest.raises(InvalidInput, match="is outside network 'lan'"):
        ctl.create_container(["true"], name="a", net="lan", ip="10.1.1.1")
    assert state(ctl) == before


def test_aux_addresses_are_never_handed_out(ctl: Controller) -> None:
    net = ctl.create_network(
        "lan", driver="macvlan", subnet="192.168.1.0/24", ip_range="192.168.1.0/30",
        options={"parent": "eth1"}, aux_addresses={"printer": "192.168.1.2"},
    )  # fmt: skip
    assert net.aux_addresses == {"printer": "192.168.1.2"}
    c = ctl.create_container(["true"], name="a", net="lan").value
    assert ctl._endpoints(c.id)[0].address == "192.168.1.3"  # .1 gateway, .2 the printer's
    with pytest.raises(Conflict, match="reserved in network lan \\(aux address printer\\)"):
        ctl.create_container(["true"], name="b", net="lan", ip="192.168.1.2")


@pytest.mark.parametrize(
    "aux, says",
    [
        ({"x": "10.0.0.1"}, "outside the network's subnet"),
        ({"x": "192.168.1.1"}, "is the network's gateway"),
        ({"x": "192.168.1.255"}, "network or broadcast"),
        ({"x": "192.168.1.5", "y": "192.168.1.5"}, "given twice"),
        ({"x": "nope"}, "invalid aux address x"),
    ],
)
def test_bad_aux_addresses(ctl: Controller, aux: dict[str, str], says: str) -> None:
    before = state(ctl)
    with pytest.raises(InvalidInput, match=says):
        ctl.create_network("n", subnet="192.168.1.0/24", aux_addresses=aux, driver="macvlan", options={"parent": "eth1"})
    assert state(ctl) == before


def test_aux_address_needs_a_subnet(ctl: Controller) -> None:
    with pytest.raises(InvalidInput, match="--aux-address needs --subnet"):
        ctl.create_network("n", aux_addresses={"x": "10.0.0.5"})


def test_host_access_shim_and_routes(ctl: Controller) -> None:
    net = lan(ctl, host_access="true")
    ctl.ipam  # noqa: B018
    shim = shim_name(net.id)
    assert net.options["host_address"] == "192.168.1.254"  # the highest free one
    assert dp_of(ctl).macvlans[shim]["parent"] == "eth1"
    a = ctl.create_container(["true"], name="a", net="lan").value
    address = ctl._endpoints(a.id)[0].address
    assert dp_of(ctl).host_routes(shim) == [address]
    with pytest.raises(Conflict, match="reserved"):
        ctl.create_container(["true"], name="b", net="lan", ip="192.168.1.254")
    ctl.remove_container("a")
    assert dp_of(ctl).host_routes(shim) == []
    ctl.remove_network("lan")
    assert shim not in dp_of(ctl).macvlans


def test_host_address_chosen_and_checked(ctl: Controller) -> None:
    with pytest.raises(InvalidInput, match="inside --ip-range 192.168.1.0/25"):
        ctl.create_network(
            "n", driver="macvlan", subnet="192.168.1.0/24", ip_range="192.168.1.0/25",
            options={"parent": "eth1", "host_access": "true", "host_address": "192.168.1.10"},
        )  # fmt: skip
    net = ctl.create_network(
        "n", driver="macvlan", subnet="192.168.1.0/24", ip_range="192.168.1.0/25",
        options={"parent": "eth1", "host_access": "true", "host_address": "192.168.1.200"},
    )  # fmt: skip
    assert net.options["host_address"] == "192.168.1.200"


def test_reconcile_restores_the_shim_and_its_routes(ctl: Controller) -> None:
    net = lan(ctl, host_access="true")
    a = ctl.create_container(["true"], name="a", net="lan").value
    address = ctl._endpoints(a.id)[0].address
    shim = shim_name(net.id)
    dp_of(ctl).delete_macvlan(shim)  # someone deleted it (its routes go with it)
    dp_of(ctl).routes_via.pop(shim, None)
    ctl.reconcile()
    assert shim in dp_of(ctl).macvlans and dp_of(ctl).host_routes(shim) == [address]


def test_passthru_takes_one_container(ctl: Controller) -> None:
    ctl.create_network("pt", driver="macvlan", subnet="10.9.0.0/24", options={"parent": "eth2", "macvlan_mode": "passthru"})
    ctl.create_container(["true"], name="a", net="pt")
    ctl.create_container(["true"], name="b", net="none")
    before = state(ctl)
    with pytest.raises(Conflict, match="passthru mode"):
        ctl.create_container(["true"], name="c", net="pt")
    with pytest.raises(Conflict, match="passthru mode"):
        ctl.connect("pt", "b")
    assert state(ctl) == before


def test_published_ports_are_refused(ctl: Controller) -> None:
    lan(ctl)
    before = state(ctl)
    with pytest.raises(InvalidInput, match="is a macvlan network.*drop -p"):
        ctl.create_container(["true"], name="a", net="lan", publish=["8080:80"])
    assert state(ctl) == before


def test_internal_and_parentless_networks_use_a_stub(ctl: Controller) -> None:
    net = ctl.create_network("iso", driver="macvlan", subnet="10.9.0.0/24", internal=True)
    assert net.bridge == stub_name(net.id) and net.bridge in dp_of(ctl).stubs
    a = ctl.create_container(["true"], name="a", net="iso").value
    assert dp_of(ctl).macvlan_endpoints[(a.netns, "eth0")]["gateway"] is None  # no way out
    free = ctl.create_network("free", driver="macvlan", subnet="10.9.0.0/24")  # another stub: may overlap
    b = ctl.create_container(["true"], name="b", net="free").value
    assert dp_of(ctl).macvlan_endpoints[(b.netns, "eth0")]["gateway"] is None
    ctl.remove_container("a")
    ctl.remove_network("iso")
    assert net.bridge not in dp_of(ctl).stubs and free.bridge in dp_of(ctl).stubs


def test_connect_and_disconnect_a_running_container(ctl: Controller) -> None:
    ctl.create_network("app", subnet="10.20.0.0/24")
    lan(ctl)
    a = ctl.create_container(["true"], name="a", net="app").value
    ctl.connect("lan", "a")
    assert (a.netns, "eth1") in dp_of(ctl).macvlan_endpoints
    ctl.disconnect("lan", "a")
    assert (a.netns, "eth1") not in dp_of(ctl).macvlan_endpoints


def test_failed_attach_leaves_nothing(ctl: Controller) -> None:
    lan(ctl, host_access="true")
    before = state(ctl)
    dp_of(ctl).fail.add("add_host_route")
    with pytest.raises(Exception):
        ctl.create_container(["true"], name="a", net="lan")
    dp_of(ctl).fail.clear()
    assert state(ctl) == before


def test_mtu_follows_the_parent(ctl: Controller) -> None:
    dp_of(ctl).nics["eth2"] = 1400
    net = ctl.create_network("n", driver="macvlan", subnet="10.9.0.0/24", options={"parent": "eth2"})
    assert net.mtu == 1400
    with pytest.raises(InvalidInput, match="more than parent eth2 carries \\(1400\\)"):
        ctl.create_network("m", driver="macvlan", subnet="10.8.0.0/24", options={"parent": "eth2", "mtu": "9000"})
    assert ctl.create_network("s", driver="macvlan", subnet="10.7.0.0/24").mtu == 1500


def test_passthru_never_shares_a_parent(ctl: Controller) -> None:
    lan(ctl)
    with pytest.raises(Conflict, match="passthru takes the whole interface"):
        ctl.create_network("pt", driver="macvlan", subnet="10.9.0.0/24", options={"parent": "eth1", "macvlan_mode": "passthru"})
    ctl.create_network("pt", driver="macvlan", subnet="10.9.0.0/24", options={"parent": "eth2", "macvlan_mode": "passthru"})
    with pytest.raises(Conflict, match="passthru takes the whole interface"):
        ctl.create_network("b", driver="macvlan", subnet="10.8.0.0/24", options={"parent": "eth2"})
