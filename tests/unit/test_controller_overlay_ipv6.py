"""Dual-stack overlay networks across hosts, on fakes (the three hosts of
``test_controller_overlay``: their own controllers and fake kernels, one shared
MemoryStore as the cluster store, the real OverlayAgent in each).

A dual-stack endpoint is two peers on every other host (its v4 and its v6 address, one MAC,
one VTEP) over one FDB entry; each host has a v6 address of its own on the network, which
is its containers' v6 gateway. What each host's fake kernel holds is checked against the
cluster's records, right after ``run`` returns (the barrier) and after agent restarts.
"""

from __future__ import annotations

import ipaddress
import time

import pytest
import test_controller_overlay as three_hosts
from controllerkit import kernel, store_state
from test_controller_overlay import Host, everything, settle, wait_for

from tether.control import keys as ckeys
from tether.control.agent import OverlayAgent
from tether.drivers import overlay_devices
from tether.model import Network
from tether.testing.memory import MemoryStore

# the three-host fixtures, shared (assigned, so that pytest finds them here)
gstore = three_hosts.gstore
hosts = three_hosts.hosts

SUBNET = "10.60.0.0/24"
SUBNET6 = "fd00:60::/64"


def dual(host: Host, name: str = "ov6") -> Network:
    return host.ctl.create_network(name, driver="overlay", subnet=SUBNET, ipv6=True, subnet6=SUBNET6)


def expected6(host: Host, network: Network, gstore: MemoryStore) -> tuple[set[tuple[str, str, str]], set[str]]:
    """What ``host`` must program on a dual-stack network: a peer per address of every other
    host's endpoints (containers' and hosts' own), v4 and v6 at the same MAC and VTEP."""
    peers = set()
    for kv in gstore.list(f"{ckeys.ENDPOINTS}{network.id}/"):
        r = kv.value
        if r["node"] != host.name:
            peers |= {(a, r["mac"], r["vtep"]) for a in (r["address"], r.get("address6")) if a}
    floods = {kv.value["address"] for kv in gstore.list(ckeys.NODE_INFO) if kv.value["name"] != host.name}
    return peers, floods


def host_record(gstore: MemoryStore, network: Network, node: str) -> dict[str, str]:
    kv = gstore.get(ckeys.endpoint_key(network.id, f"host-{node}"))
    assert kv is not None, f"no record of {node}'s own addresses"
    return kv.value  # type: ignore[no-any-return]


def restart_agent(host: Host) -> None:
    host.agent = OverlayAgent(host.agent.cluster, host.dp, host.ctl.agent_hooks())
    host.ctl.agent = host.agent
    host.agent.start()
    assert host.agent.synced.wait(2)


# ---------------------------------------------------------------------------- records and gateways
def test_network_record_keeps_the_v6_subnet_and_each_host_gets_a_v6_address(
    hosts: list[Host], gstore: MemoryStore
) -> None:
    a, b, c = hosts
    network = dual(a)
    assert (network.subnet6, network.ipv6) == (SUBNET6, True)
    kv = gstore.get(ckeys.network_key("ov6"))
    assert kv is not None and kv.value["subnet6"] == SUBNET6 and kv.value["gateway6"] == network.gateway6
    settle(hosts, gstore)
    bridge, _ = overlay_devices(network)
    own6 = {}
    for host in hosts:
        assert host.ctl.inspect_network("ov6")["subnet6"] == SUBNET6  # every host sees it dual stack
        record = host_record(gstore, network, host.name)
        address6 = record["address6"]
        assert ipaddress.IPv6Address(address6) in ipaddress.ip_network(SUBNET6)
        assert address6 != network.gateway6  # the network's gateway stays reserved, as the v4 one
        assert host.ctl.ctx.global_ipam.owner(network.id, address6) == f"node:{host.name}"  # type: ignore[union-attr]
        assert host.dp.bridges6[bridge] == f"{address6}/64"  # on this host's bridge, the only v6 one
        assert host.dp.ipv6_forwarding
        own6[host.name] = address6
    assert len(set(own6.values())) == 3
    # the host is its containers' v6 gateway: one interface per container
    a.ctl.create_container(["true"], name="a1", net="ov6")
    ep = a.ctl.inspect_container("a1")["networks"]["ov6"]
    assert ep["gateway6"] == own6["A"] and ep["address6"] is not None
    veths = [v for v in a.dp.veths.values() if v.get("netns")]
    assert len(veths) == 1 and veths[0]["gateway6"] == own6["A"] and veths[0]["cidr6"] == f"{ep['address6']}/64"
    described = b.ctl.inspect_network("ov6")
    assert described["containers"]["a1"]["address6"] == f"{ep['address6']}/64"
    assert {n: h["address6"] for n, h in described["hosts"].items()} == own6


def test_v4_only_overlay_has_no_v6_anything(hosts: list[Host], gstore: MemoryStore) -> None:
    a, b, _ = hosts
    network = a.ctl.create_network("ov4", driver="overlay", subnet=SUBNET)
    b.ctl.create_container(["true"], name="b1", net="ov4")
    settle(hosts, gstore)
    assert all("address6" not in kv.value for kv in gstore.list(ckeys.ENDPOINTS))
    assert all(overlay_devices(network)[0] not in h.dp.bridges6 for h in hosts)
    assert b.ctl.inspect_container("b1")["networks"]["ov4"]["gateway6"] is None
    assert all(":" not in ip for h in hosts for ip, _, _ in h.programmed(network)[0])


# ---------------------------------------------------------------------------- peers and the barrier
def test_both_peers_of_an_endpoint_are_programmed_everywhere_when_run_returns(
    hosts: list[Host], gstore: MemoryStore
) -> None:
    a, b, c = hosts
    network = dual(a)
    b1 = b.ctl.create_container(["true"], name="b1", net="ov6")
    assert b1.lagging == []
    ep = b.ctl.inspect_container("b1")["networks"]["ov6"]
    record = next(kv.value for kv in gstore.list(ckeys.ENDPOINTS) if kv.value.get("container") == "b1")
    assert record["address6"] == ep["address6"] and record["mac"] == ep["mac"]
    for host in (a, c):  # no waiting: the barrier covered the v6 entry too
        peers = host.programmed(network)[0]
        assert (ep["address"], ep["mac"], b.advertise) in peers
        assert (ep["address6"], ep["mac"], b.advertise) in peers
    assert all(vtep != b.advertise for _, _, vtep in b.programmed(network)[0])  # never its own
    settle(hosts, gstore)
    for host in hosts:
        assert host.programmed(network) == expected6(host, network, gstore)
        assert sum(":" in ip for ip, _, _ in host.programmed(network)[0]) == 2 + (host is not b)  # hosts + b1


def test_removal_withdraws_both_peers_and_teardown_releases_the_v6_addresses(
    hosts: list[Host], gstore: MemoryStore
) -> None:
    a, b, c = hosts
    network = dual(a)
    b.ctl.create_container(["true"], name="b1", net="ov6")
    ep = b.ctl.inspect_container("b1")["networks"]["ov6"]
    gone = {(ep["address"], ep["mac"], b.advertise), (ep["address6"], ep["mac"], b.advertise)}
    b.ctl.remove_container("b1")
    wait_for(lambda: all(not gone & h.programmed(network)[0] for h in (a, c)))
    settle(hosts, gstore)
    for host in hosts:
        assert host.programmed(network) == expected6(host, network, gstore)
    assert b.ctl.ctx.global_ipam.owner(network.id, ep["address6"]) is None  # type: ignore[union-attr]
    own6 = {h.name: host_record(gstore, network, h.name)["address6"] for h in hosts}
    c.ctl.remove_network("ov6")
    bridge, vxlan = overlay_devices(network)
    wait_for(lambda: all(bridge not in h.dp.bridges6 and vxlan not in h.dp.vxlans for h in hosts))
    settle(hosts, gstore)
    for host in hosts:
        assert kernel(host.dp)["peers"] == {} and host.dp.bridges6 == {}
    assert [k for k in store_state(gstore) if network.id in k] == []
    assert all(a not in str(store_state(gstore)) for a in own6.values())


def test_teardown_of_one_host_releases_its_v6_lease(hosts: list[Host], gstore: MemoryStore) -> None:
    a, b, _ = hosts
    network = dual(a)
    settle(hosts, gstore)
    record = host_record(gstore, network, "B")
    driver = b.ctl.drivers["overlay"]
    assert driver.teardown_host(b.ctl.ctx, network) == []  # type: ignore[attr-defined]
    ipam = b.ctl.ctx.global_ipam
    assert ipam is not None
    assert ipam.owner(network.id, record["address6"]) is None and ipam.owner(network.id, record["address"]) is None
    assert gstore.get(ckeys.endpoint_key(network.id, "host-B")) is None


def test_reclaiming_a_dead_host_releases_its_v6_addresses(hosts: list[Host], gstore: MemoryStore) -> None:
    a, b, _ = hosts
    network = dual(a)
    b.ctl.create_container(["true"], name="b1", net="ov6")
    settle(hosts, gstore)
    ep = b.ctl.inspect_container("b1")["networks"]["ov6"]
    own6 = host_record(gstore, network, "B")["address6"]
    b.agent.stop()
    a.ctl.drivers["overlay"]._reclaim_node(a.ctl.ctx, "B")  # type: ignore[attr-defined]
    ipam = a.ctl.ctx.global_ipam
    assert ipam is not None
    assert ipam.owner(network.id, ep["address6"]) is None and ipam.owner(network.id, own6) is None
    wait_for(lambda: all(ip not in {p[0] for p in a.programmed(network)[0]} for ip in (ep["address6"], own6)))


# ---------------------------------------------------------------------------- resync
def test_agent_restart_converges_v6_peers_nothing_leaked_nothing_lost(hosts: list[Host], gstore: MemoryStore) -> None:
    """While A's agent is away: b1 goes, b2 comes, and A's kernel holds a v6 entry no record
    has any more at the MAC of a live endpoint (c1 had another v6 address once). A's
    restarted agent removes b1's two entries and the stale one, keeps c1's v4 entry
    working (its FDB entry is shared with the stale v6 one) and adds b2's two."""
    a, b, c = hosts
    network = dual(a)
    b.ctl.create_container(["true"], name="b1", net="ov6")
    c.ctl.create_container(["true"], name="c1", net="ov6")
    settle(hosts, gstore)
    c1 = c.ctl.inspect_container("c1")["networks"]["ov6"]
    vxlan = overlay_devices(network)[1]
    a.agent.stop()
    b.ctl.remove_container("b1")
    b.ctl.create_container(["true"], name="b2", net="ov6")
    stale = ("fd00:60::ffff", c1["mac"], c.advertise)
    with a.agent._state:
        a.dp.add_peer(vxlan, *stale)
    gstore.put(ckeys.CLUSTER + "~", {})  # wakes the stopped agent's watch thread, which then ends
    restart_agent(a)
    settle(hosts, gstore)
    peers, floods = a.programmed(network)
    assert (peers, floods) == expected6(a, network, gstore)
    assert stale not in peers
    assert (c1["address"], c1["mac"], c.advertise) in peers and (c1["address6"], c1["mac"], c.advertise) in peers
    assert {(p.address, p.mac, p.vtep) for p in a.agent.programmed[network.id].peers} == peers  # its own view agrees
    assert sorted(a.dp.list_peers(vxlan)) == sorted(peers)


def test_agent_restart_with_nothing_changed_changes_nothing(hosts: list[Host], gstore: MemoryStore) -> None:
    a, b, _ = hosts
    network = dual(a)
    b.ctl.create_container(["true"], name="b1", net="ov6")
    settle(hosts, gstore)
    before = everything(hosts, gstore), a.programmed(network)
    a.agent.stop()
    gstore.put(ckeys.CLUSTER + "~", {})
    calls = len(a.dp.calls)
    restart_agent(a)
    settle(hosts, gstore)
    time.sleep(0.05)
    assert a.programmed(network) == before[1]
    changes = [c for c in a.dp.calls[calls:] if c.startswith(("add_peer", "remove_peer", "add_flood", "remove_flood"))]
    assert changes == []
    assert a.ctl.reconcile() == []


def test_a_changed_v6_address_moves_only_the_v6_entry(hosts: list[Host], gstore: MemoryStore) -> None:
    """A record republished with another v6 address (same MAC, VTEP and v4 address): the old
    v6 entry goes, and the v4 entry, whose FDB entry the removal took, is there again."""
    a, b, _ = hosts
    network = dual(a)
    b.ctl.create_container(["true"], name="b1", net="ov6")
    settle(hosts, gstore)
    kv = next(kv for kv in gstore.list(ckeys.ENDPOINTS) if kv.value.get("container") == "b1")
    old6 = kv.value["address6"]
    gstore.put(kv.key, dict(kv.value, address6="fd00:60::beef"))
    settle(hosts, gstore)
    peers = a.programmed(network)[0]
    mac = kv.value["mac"]
    assert (old6, mac, b.advertise) not in peers
    assert {(kv.value["address"], mac, b.advertise), ("fd00:60::beef", mac, b.advertise)} <= peers
    assert set(a.dp.list_peers(overlay_devices(network)[1])) == peers


@pytest.mark.parametrize("requested", ["fd00:60::10"])
def test_requested_v6_address_on_an_overlay(hosts: list[Host], gstore: MemoryStore, requested: str) -> None:
    a, b, _ = hosts
    network = dual(a)
    a.ctl.create_container(["true"], name="a1", net="ov6", ip6=requested)
    assert (requested, a.ctl.inspect_container("a1")["networks"]["ov6"]["mac"], a.advertise) in b.programmed(network)[0]
