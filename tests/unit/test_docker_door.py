"""Docker's remote driver and IPAM calls on the controller, against in-memory fakes: the
order dockerd calls them in, shared leases, idempotence and undo."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from controllerkit import snapshot

from tether.controller import Controller
from tether.doors import CniDoor, DockerDoor
from tether.doors.docker import RESERVED_OWNER
from tether.errors import Conflict, DatapathError, Exhausted, InvalidInput, NotFound
from tether.testing.datapath import RecordingDatapath
from tether.testing.memory import MemoryStore

NID = "n" * 64
GW_REQUEST = {"RequestAddressType": "com.docker.network.gateway"}


@pytest.fixture
def ctl(tmp_path: Any) -> Controller:
    return Controller(MemoryStore(), RecordingDatapath(["192.168.1.0/24"]), str(tmp_path), netns_prefix="u-")


def docker(ctl: Controller) -> DockerDoor:
    return DockerDoor(ctl)


def cni(ctl: Controller) -> CniDoor:
    return CniDoor(ctl)


def create(ctl: Controller, subnet: str = "10.1.0.0/24", nid: str = NID, **generic: str) -> str:
    """What `docker network create -d tether --ipam-driver tether --subnet S` does."""
    pool = docker(ctl).request_pool(subnet, "", {}, False)
    gateway = docker(ctl).request_address(pool["PoolID"], "", GW_REQUEST)
    docker(ctl).create_network(
        nid,
        {"com.docker.network.generic": generic},
        [{"AddressSpace": "tether", "Pool": pool["Pool"], "Gateway": gateway}],
        [],
    )
    return str(pool["PoolID"])


def endpoint(ctl: Controller, pool_id: str, eid: str) -> str:
    """RequestAddress then CreateEndpoint, as dockerd does before Join."""
    cidr = docker(ctl).request_address(pool_id, "", {})
    docker(ctl).create_endpoint(NID, eid, {"Address": cidr, "MacAddress": ""}, {})
    return cidr.split("/")[0]


def test_pool_gateway_and_network(ctl: Controller) -> None:
    create(ctl, **{"tether.network": "appnet"})
    net = ctl.inspect_network("appnet")
    assert net["subnet"] == "10.1.0.0/24" and net["gateway"] == "10.1.0.1"


def test_pool_without_subnet_avoids_host_routes_and_other_pools(ctl: Controller) -> None:
    first = docker(ctl).request_pool("", "", {}, False)["Pool"]
    second = docker(ctl).request_pool("", "", {}, False)["Pool"]
    assert first != second  # dockerd asks again when it dislikes a pool: never the same answer
    assert "192.168.1" not in first + second


def test_overlapping_pool_and_v6_without_ipv6_are_refused(ctl: Controller) -> None:
    create(ctl)
    with pytest.raises(Conflict, match="overlaps"):
        docker(ctl).request_pool("10.1.0.128/25", "", {}, False)
    with pytest.raises(InvalidInput, match="is IPv6: add --ipv6"):
        docker(ctl).request_pool("fd00::/64", "", {}, False)
    with pytest.raises(InvalidInput, match="unknown option -o colour"):
        docker(ctl).create_network("m" * 64, {"com.docker.network.generic": {"colour": "blue"}}, [], [])


def test_endpoint_takes_over_the_ipam_lease_and_join_leaves_the_peer_on_the_host(ctl: Controller) -> None:
    pool = create(ctl, **{"tether.network": "appnet"})
    ip = endpoint(ctl, pool, "e1")
    net_id = ctl.inspect_network("appnet")["id"]
    owner = ctl.ipam.leases(net_id)[ip]
    assert owner != RESERVED_OWNER and ctl._container_by_id(owner) is not None
    reply = docker(ctl).join(NID, "e1", "/run/docker/netns/abc")
    assert reply["Gateway"] == "10.1.0.1" and reply["InterfaceName"]["DstPrefix"] == "eth"
    veth = next(iter(ctl.ctx.datapath.veths.values()))  # type: ignore[attr-defined]
    assert veth["peer_ifname"] == reply["InterfaceName"]["SrcName"] and veth["netns"] is None
    # Leave removes the veth; DeleteEndpoint the lease; ReleaseAddress then has nothing to do
    docker(ctl).leave(NID, "e1")
    assert ctl.ctx.datapath.veths == {}  # type: ignore[attr-defined]
    docker(ctl).delete_endpoint(NID, "e1")
    docker(ctl).release_address(pool, ip)
    assert ctl.ipam.leases(net_id) == {}
    assert [c["name"] for c in ctl.list_containers(all_=True)] == []


def test_release_address_never_frees_a_live_owners_lease(ctl: Controller) -> None:
    pool = create(ctl, **{"tether.network": "appnet"})
    ip = endpoint(ctl, pool, "e1")
    docker(ctl).release_address(pool, ip)  # out of order: the endpoint still holds it
    assert ip in ctl.ipam.leases(ctl.inspect_network("appnet")["id"])


def test_docker_default_ipam_address_taken_by_tether_is_a_conflict(ctl: Controller) -> None:
    docker(ctl).create_network(NID, {"com.docker.network.generic": {"tether.network": "appnet"}},
                              [{"Pool": "10.1.0.0/24", "Gateway": "10.1.0.1/24"}], [])
    net = ctl.inspect_network("appnet")
    ctl.ipam.allocate(ctl._network("appnet"), "someone", "10.1.0.2")
    with pytest.raises(Conflict, match="already in use"):
        docker(ctl).create_endpoint(NID, "e1", {"Address": "10.1.0.2/24"}, {})
    assert [c["name"] for c in ctl.list_containers(all_=True)] == []
    assert ctl.ipam.leases(net["id"]) == {"10.1.0.2": "someone"}


def test_failed_join_undoes_and_can_be_retried(ctl: Controller) -> None:
    pool = create(ctl)
    endpoint(ctl, pool, "e1")
    ctl.ctx.datapath.fail.add("create_veth_pair")  # type: ignore[attr-defined]
    with pytest.raises(DatapathError):
        docker(ctl).join(NID, "e1", "/run/docker/netns/abc")
    assert ctl.ctx.datapath.veths == {}  # type: ignore[attr-defined]
    ctl.ctx.datapath.fail.clear()  # type: ignore[attr-defined]
    assert docker(ctl).join(NID, "e1", "/run/docker/netns/abc")["Gateway"] == "10.1.0.1"


def test_exhausted_pool_and_unknown_ids(ctl: Controller) -> None:
    pool = create(ctl, "10.2.0.0/30")
    endpoint(ctl, pool, "e1")
    with pytest.raises(Exhausted, match="no free address"):
        docker(ctl).request_address(pool, "", {})
    with pytest.raises(NotFound, match="not a tether network"):
        docker(ctl).create_endpoint("x" * 64, "e2", {"Address": "10.2.0.2/30"}, {})
    with pytest.raises(NotFound, match="unknown tether address pool"):
        docker(ctl).request_address("tether-nope", "", {})
    # the idempotent ones: DEL-like calls on what does not exist succeed
    docker(ctl).leave(NID, "nope")
    docker(ctl).delete_endpoint(NID, "nope")
    docker(ctl).delete_network("nope")


def test_adopted_network_survives_docker_network_rm(ctl: Controller) -> None:
    ctl.create_network("appnet", subnet="10.3.0.0/24")
    create(ctl, "10.3.0.0/24", **{"tether.network": "appnet"})  # the exact subnet: adopted, not an overlap
    docker(ctl).delete_network(NID)
    assert ctl.inspect_network("appnet")["subnet"] == "10.3.0.0/24"
    with pytest.raises(Conflict, match="has subnet 10.3.0.0/24"):
        docker(ctl).create_network("m" * 64, {"com.docker.network.generic": {"tether.network": "appnet"}},
                                  [{"Pool": "10.4.0.0/24", "Gateway": "10.4.0.1/24"}], [])


def test_network_made_for_docker_goes_with_docker_network_rm(ctl: Controller) -> None:
    create(ctl)
    name = f"docker-{NID[:12]}"
    assert ctl.inspect_network(name)
    docker(ctl).delete_network(NID)
    with pytest.raises(NotFound):
        ctl.inspect_network(name)


def test_reconcile_keeps_an_endpoint_waiting_for_its_join(ctl: Controller) -> None:
    pool = create(ctl, **{"tether.network": "appnet"})
    ip = endpoint(ctl, pool, "e1")
    ctl.reconcile()
    assert ip in ctl.ipam.leases(ctl.inspect_network("appnet")["id"])
    assert docker(ctl).join(NID, "e1", "/run/docker/netns/abc")["Gateway"] == "10.1.0.1"


def test_which_docker_driver_a_daemon_serves() -> None:
    from tether.daemon import docker_plugin_choice

    system = "/run/tether/tether.sock"
    assert docker_plugin_choice(None, system) == ("tether", False)  # by default, not required
    assert docker_plugin_choice(None, "/tmp/x/tether.sock") == (None, False)
    assert docker_plugin_choice("none", system) == (None, False)
    assert docker_plugin_choice("off", system) == (None, False)
    assert docker_plugin_choice("mine", "/tmp/x/tether.sock") == ("mine", True)
    assert docker_plugin_choice(" mine ", system) == ("mine", True)


def test_create_endpoint_answers_only_what_docker_did_not_give_and_is_repeatable(ctl: Controller) -> None:
    pool = create(ctl, **{"tether.network": "appnet"})
    cidr = docker(ctl).request_address(pool, "", {})
    reply = docker(ctl).create_endpoint(NID, "e1", {"Address": cidr, "MacAddress": ""}, {})
    assert set(reply["Interface"]) == {"MacAddress"}  # Docker gave the address
    assert docker(ctl).create_endpoint(NID, "e1", {"Address": cidr, "MacAddress": ""}, {}) == reply
    assert len(ctl.list_containers(all_=True)) == 1
    given = docker(ctl).create_endpoint(NID, "e2", {"Address": "", "MacAddress": "02:00:00:00:00:07"}, {})
    assert set(given["Interface"]) == {"Address"} and given["Interface"]["Address"].endswith("/24")


def test_joined_sandbox_gets_an_ip_netns_name_until_leave(ctl: Controller, tmp_path: Any) -> None:
    pool = create(ctl)
    endpoint(ctl, pool, "e1abcdef0123456789")
    dp = ctl.ctx.datapath
    sandbox = tmp_path / "sandbox"  # stands for Docker's bound namespace file
    sandbox.touch()
    docker(ctl).join(NID, "e1abcdef0123456789", str(sandbox))
    assert dp.aliases == {"u-docker-e1abcdef0123": str(sandbox)}  # type: ignore[attr-defined]
    dp.aliases["u-docker-gone00000000"] = "/run/docker/netns/old"  # type: ignore[attr-defined]
    dp.aliases["someone-elses"] = "/elsewhere"  # type: ignore[attr-defined]
    ctl.reconcile()  # a stale name of ours goes; the live one and others' stay
    assert dp.aliases == {"u-docker-e1abcdef0123": str(sandbox), "someone-elses": "/elsewhere"}  # type: ignore[attr-defined]
    docker(ctl).leave(NID, "e1abcdef0123456789")
    assert dp.aliases == {"someone-elses": "/elsewhere"}  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- CNI and Docker side by side
def test_cni_gc_leaves_docker_endpoints_alone(ctl: Controller, tmp_path: Any) -> None:
    pool = create(ctl, **{"tether.network": "appnet"})
    endpoint(ctl, pool, "e1")
    ns = tmp_path / "cni-ns"  # stands for a runtime's bound namespace
    ns.touch()
    ctl.ctx.datapath.netns.add(str(ns))  # type: ignore[attr-defined]
    cni(ctl).add("podA", str(ns), "eth0", "appnet")
    assert cni(ctl).gc("appnet", []) == ["cni-podA/eth0"]
    assert [c["name"] for c in ctl.list_containers(all_=True)] == ["docker-e1"]


def test_other_runtimes_containers_are_not_connected_by_tether(ctl: Controller) -> None:
    pool = create(ctl, **{"tether.network": "appnet"})
    endpoint(ctl, pool, "e1")
    ctl.create_network("other", subnet="10.9.0.0/24")
    with pytest.raises(Conflict, match="another runtime"):
        ctl.connect("other", "docker-e1")
    with pytest.raises(Conflict, match="another runtime"):
        ctl.disconnect("appnet", "docker-e1")


def test_cni_add_checks_aliases_ports_and_check_compares_the_interface(ctl: Controller, tmp_path: Any) -> None:
    ctl.create_network("appnet", subnet="10.1.0.0/24")
    ns = tmp_path / "ns"
    ns.touch()
    ctl.ctx.datapath.netns.add(str(ns))  # type: ignore[attr-defined]
    before = [kv.key for kv in ctl.store.list("/")]
    with pytest.raises(InvalidInput, match="malformed portMappings"):
        cni(ctl).add("podA", str(ns), "eth0", "appnet", publish=[{"hostPort": "eighty", "containerPort": 80}])
    with pytest.raises(InvalidInput, match="invalid mac"):
        cni(ctl).add("podA", str(ns), "eth0", "appnet", mac="02:42")
    cni(ctl).add("podA", str(ns), "eth0", "appnet", aliases=["db"])
    ns2 = tmp_path / "ns2"
    ns2.touch()
    ctl.ctx.datapath.netns.add(str(ns2))  # type: ignore[attr-defined]
    with pytest.raises(Conflict):
        cni(ctl).add("podB", str(ns2), "eth0", "appnet", aliases=["cni-podA"])  # another's name
    with pytest.raises(Conflict, match="another namespace"):
        cni(ctl).add("podA", str(ns2), "eth0", "appnet")  # same id, new namespace: not the old result
    with pytest.raises(NotFound, match="not eth1"):
        cni(ctl).check("podA", "eth1", "appnet")
    cni(ctl).delete("podA", "eth0", "appnet")
    assert [kv.key for kv in ctl.store.list("/") if not kv.key.startswith("/ipam-cursor/")] == [
        k for k in before if not k.startswith("/ipam-cursor/")
    ]


def test_docker_bad_mac_and_malformed_port_map_are_one_line_refusals(ctl: Controller) -> None:
    pool = create(ctl)
    with pytest.raises(InvalidInput, match="invalid mac"):
        docker(ctl).create_endpoint(NID, "e1", {"Address": "", "MacAddress": "zz"}, {})
    endpoint(ctl, pool, "e2")
    docker(ctl).join(NID, "e2", "/run/docker/netns/x")
    with pytest.raises(InvalidInput, match="malformed port map"):
        docker(ctl).program_external(NID, "e2", {"com.docker.network.portmap": [{"Proto": "tcp?", "Port": 80}]})


# ---------------------------------------------------------------------------- dual stack
def create_dual(ctl: Controller, subnet6: str = "", subnet: str = "10.1.0.0/24", **generic: str) -> tuple[str, str]:
    """`docker network create --ipv6 -d tether --ipam-driver tether --subnet 10.1.0.0/24 [--subnet V6]`,
    in dockerd's order: both pools and gateways, then CreateNetwork. Returns the pool ids."""
    d = docker(ctl)
    pool = d.request_pool(subnet, "", {}, False)
    gateway = d.request_address(pool["PoolID"], "", GW_REQUEST)
    pool6 = d.request_pool(subnet6, "", {}, True)
    gateway6 = d.request_address(pool6["PoolID"], "", GW_REQUEST)
    d.create_network(
        NID,
        {"com.docker.network.generic": generic},
        [{"AddressSpace": "tether", "Pool": pool["Pool"], "Gateway": gateway}],
        [{"AddressSpace": "tether", "Pool": pool6["Pool"], "Gateway": gateway6}],
    )
    return str(pool["PoolID"]), str(pool6["PoolID"])


def test_dual_stack_network_endpoint_and_join(ctl: Controller) -> None:
    before = snapshot(ctl)
    pool, pool6 = create_dual(ctl, "fd00:1::/64", **{"tether.network": "dual"})
    net = ctl.inspect_network("dual")
    assert (net["subnet"], net["subnet6"], net["gateway6"]) == ("10.1.0.0/24", "fd00:1::/64", "fd00:1::1")
    # RequestAddress of each family, then CreateEndpoint with both: the leases pass to the endpoint
    d = docker(ctl)
    cidr, cidr6 = d.request_address(pool, "", {}), d.request_address(pool6, "", {})
    assert (cidr, cidr6) == ("10.1.0.2/24", "fd00:1::2/64")
    assert d.create_endpoint(NID, "e1", {"Address": cidr, "AddressIPv6": cidr6, "MacAddress": ""}, {}) == {
        "Interface": {"MacAddress": ctl.external("docker", "e1").endpoint.mac}  # type: ignore[union-attr]
    }
    leases = ctl.ipam.leases(net["id"])
    assert set(leases) == {"10.1.0.2", "fd00:1::2"} and RESERVED_OWNER not in leases.values()
    reply = d.join(NID, "e1", "/run/docker/netns/abc")
    assert (reply["Gateway"], reply["GatewayIPv6"]) == ("10.1.0.1", "fd00:1::1")
    # --ip6: a requested v6 address; no AddressIPv6 given: tether's IPAM picks one and says so
    assert d.request_address(pool6, "fd00:1::77", {}) == "fd00:1::77/64"
    d.create_endpoint(NID, "e2", {"Address": d.request_address(pool, "", {}), "AddressIPv6": "fd00:1::77/64"}, {})
    given = d.create_endpoint(NID, "e3", {"Address": "", "MacAddress": "02:00:00:00:00:03"}, {})
    assert given == {"Interface": {"Address": "10.1.0.4/24", "AddressIPv6": "fd00:1::3/64"}}
    # tear down as dockerd does: every lease and pool goes
    for eid in ("e1", "e2", "e3"):
        d.leave(NID, eid)
        d.delete_endpoint(NID, eid)
    for address in (cidr, cidr6, "fd00:1::77"):
        d.release_address(pool6 if ":" in address else pool, address.split("/")[0])
    assert ctl.ipam.leases(net["id"]) == {}
    d.delete_network(NID)
    for pool_id, gateway in ((pool, "10.1.0.1"), (pool6, "fd00:1::1")):
        d.release_address(pool_id, gateway)
        d.release_pool(pool_id)
    assert snapshot(ctl) == before


def test_dual_stack_pool_without_subnet_is_a_free_ula_64(ctl: Controller) -> None:
    ctl.create_network("mine", subnet="10.9.0.0/24", ipv6=True, subnet6="fd00:9::/64")
    create_dual(ctl)
    net = ctl.inspect_network(f"docker-{NID[:12]}")
    subnet6 = ipaddress.ip_network(net["subnet6"])
    assert subnet6.prefixlen == 64 and subnet6.subnet_of(ipaddress.ip_network("fd00::/8"))
    assert subnet6 != ipaddress.ip_network("fd00:9::/64")
    again = docker(ctl).request_pool("", "", {}, True)["Pool"]
    assert again != net["subnet6"]  # never the pool of another network
    # the same subnet asked for again (dockerd after a restart): the same pool
    assert docker(ctl).request_pool(net["subnet6"], "", {}, True)["PoolID"] == f"tether-{net['subnet6'].replace('/', '-')}"


@pytest.mark.parametrize(
    ("pool", "sub_pool", "error", "message"),
    [
        ("fd00::/40", "", InvalidInput, "too large"),
        ("fd00:1::/129", "", InvalidInput, "invalid IPv6 subnet"),
        ("10.5.0.0/24", "", InvalidInput, "is IPv4 where dockerd asked for the IPv6 pool"),
        ("fd00:1::/64", "fd00:2::/80", InvalidInput, "not inside the subnet fd00:1::/64"),
        ("", "fd00:2::/80", InvalidInput, "needs the IPv6 --subnet"),
        ("fd00:9::/80", "", Conflict, "overlaps network 'mine'"),
    ],
)
def test_bad_v6_pools_are_one_line_and_change_nothing(
    ctl: Controller, pool: str, sub_pool: str, error: type[Exception], message: str
) -> None:
    ctl.create_network("mine", subnet="10.9.0.0/24", ipv6=True, subnet6="fd00:9::/64")
    before = snapshot(ctl)
    with pytest.raises(error, match=message) as info:
        docker(ctl).request_pool(pool, sub_pool, {}, True)
    assert "\n" not in str(info.value) and snapshot(ctl) == before


def test_v6_on_a_v4_only_network_is_refused(ctl: Controller) -> None:
    pool = create(ctl, **{"tether.network": "appnet"})
    before = snapshot(ctl)
    with pytest.raises(InvalidInput, match="has no IPv6 subnet"):
        docker(ctl).create_endpoint(NID, "e1", {"Address": "", "AddressIPv6": "fd00::5/64"}, {})
    assert snapshot(ctl) == before
    # adopting it from an --ipv6 Docker network: refused, naming why
    pool6 = docker(ctl).request_pool("fd00:5::/64", "", {}, True)["Pool"]
    with pytest.raises(Conflict, match="has no IPv6 subnet: leave out --ipv6"):
        docker(ctl).create_network("m" * 64, {"com.docker.network.generic": {"tether.network": "appnet"}},
                                  [{"Pool": "10.1.0.0/24"}], [{"Pool": pool6, "Gateway": "fd00:5::1/64"}])
    assert pool


def test_adopting_a_dual_stack_network_needs_its_v6_subnet(ctl: Controller) -> None:
    ctl.create_network("dual", subnet="10.8.0.0/24", ipv6=True, subnet6="fd00:8::/64")
    create_dual(ctl, "fd00:8::/64", "10.8.0.0/24", **{"tether.network": "dual"})  # its subnets: adopted, not overlaps
    docker(ctl).delete_network(NID)
    assert ctl.inspect_network("dual")["subnet6"] == "fd00:8::/64"
    with pytest.raises(Conflict, match="has IPv6 subnet fd00:8::/64: use --subnet fd00:8::/64"):
        docker(ctl).create_network("m" * 64, {"com.docker.network.generic": {"tether.network": "dual"}},
                                  [{"Pool": "10.8.0.0/24"}], [{"Pool": "fd00:7::/64"}])


def test_a_macvlan_network_on_the_lan_the_host_routes(ctl: Controller) -> None:
    """The host routes its LAN (192.168.1.0/24 here): a macvlan network takes that subnet
    through the door too; a bridge network on it is still refused, at CreateNetwork."""
    ctl.ctx.datapath.nics["eth1"] = 1500  # type: ignore[attr-defined]
    before = snapshot(ctl)
    with pytest.raises(Conflict, match="overlaps a route or address on this host"):
        create(ctl, "192.168.1.0/24", nid="b" * 64)
    docker(ctl).release_pool("tether-192.168.1.0-24")  # as dockerd does after a failed CreateNetwork
    assert snapshot(ctl) == before
    create(ctl, "192.168.1.0/24", **{"tether.driver": "macvlan", "parent": "eth1", "tether.network": "lan"})
    net = ctl.inspect_network("lan")
    assert (net["driver"], net["parent"], net["subnet"]) == ("macvlan", "eth1", "192.168.1.0/24")


def test_a_v6_ip_range_through_the_door(ctl: Controller) -> None:
    d = docker(ctl)
    pool = d.request_pool("10.1.0.0/24", "", {}, False)
    pool6 = d.request_pool("fd00:1::/64", "fd00:1::100/120", {}, True)
    gateways = [d.request_address(p["PoolID"], "", GW_REQUEST) for p in (pool, pool6)]
    d.create_network(
        NID, {"com.docker.network.generic": {"tether.network": "dual"}},
        [{"AddressSpace": "tether", "Pool": pool["Pool"], "Gateway": gateways[0]}],
        [{"AddressSpace": "tether", "Pool": pool6["Pool"], "Gateway": gateways[1]}],
    )  # fmt: skip
    assert ctl.inspect_network("dual")["ip_range6"] == "fd00:1::100/120"
    assert d.request_address(pool6["PoolID"], "", {}) == "fd00:1::100/64"
