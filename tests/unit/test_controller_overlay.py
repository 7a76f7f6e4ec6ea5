"""Overlay networks across hosts, on fakes: three controllers (hosts A, B, C), each with its
own store and fake kernel, share one MemoryStore as the cluster store; each runs the real
OverlayAgent in its threads (MemoryStore supports watch; a store without leases keeps
every registered host up). What each host's kernel ends up holding is checked against the
cluster's records: peers (FDB + neighbour) for every endpoint of the *other* hosts, one
flood entry per other host, nothing for its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from controllerkit import kernel, make_controller, snapshot, store_state

from tether.control import keys as ckeys
from tether.control.agent import OverlayAgent
from tether.control.cluster import Cluster
from tether.controller import Controller
from tether.drivers import overlay_devices
from tether.errors import Conflict, InvalidInput
from tether.model import Network
from tether.testing.datapath import RecordingDatapath
from tether.testing.memory import MemoryStore

SUBNET = "10.50.0.0/24"


@dataclass
class Host:
    name: str
    advertise: str
    ctl: Controller
    agent: OverlayAgent

    @property
    def dp(self) -> RecordingDatapath:
        return self.ctl.ctx.datapath  # type: ignore[return-value]

    def programmed(self, network: Network) -> tuple[set[tuple[str, str, str]], set[str]]:
        """(peers, flood VTEPs) of the network's VXLAN device in this host's fake kernel."""
        vxlan = overlay_devices(network)[1]
        with self.agent._state:  # the agent's thread changes these tables while holding it
            return set(self.dp.peers.get(vxlan, ())), set(self.dp.floods.get(vxlan, ()))


@pytest.fixture
def gstore() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def hosts(tmp_path: Path, gstore: MemoryStore) -> Iterator[list[Host]]:
    started: list[Host] = []
    try:
        for name, advertise in (("A", "192.0.2.1"), ("B", "192.0.2.2"), ("C", "192.0.2.3")):
            ctl = make_controller(
                tmp_path, cluster_store=gstore, node=name, advertise=advertise,
                netns_prefix=f"{name.lower()}-", barrier_timeout=2.0,
            )  # fmt: skip
            assert ctl.cluster is not None
            ctl.cluster.register()
            agent = OverlayAgent(ctl.cluster, ctl.ctx.datapath, ctl.agent_hooks())
            ctl.agent = agent
            agent.start()
            assert agent.synced.wait(2)
            started.append(Host(name, advertise, ctl, agent))
        yield started
    finally:
        for host in started:
            host.agent.stop()
            assert host.ctl.cluster is not None
            host.ctl.cluster.stop()
        gstore.put(ckeys.CLUSTER + "~", {})  # one last event: the agents' watch threads see the stop and end


def wait_for(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the hosts did not converge in time"
        time.sleep(0.005)


def settle(hosts: list[Host], gstore: MemoryStore) -> None:
    """Wait until every agent has applied the last change to the cluster's records. Applying
    one may write another (a host publishes its own address when it builds a network), so
    until the last revision stays put."""
    seen = -1
    while True:
        last = max((kv.mod_revision for kv in gstore.list(ckeys.CLUSTER)), default=0)
        if last == seen:
            return
        wait_for(lambda: all(h.agent.applied >= last for h in hosts))  # noqa: B023
        seen = last


def expected(host: Host, network: Network, gstore: MemoryStore) -> tuple[set[tuple[str, str, str]], set[str]]:
    """What ``host`` must program, from the cluster's records: every other host's endpoint
    (its containers' and its own address on the network) and every other host's VTEP."""
    records = [kv.value for kv in gstore.list(f"{ckeys.ENDPOINTS}{network.id}/")]
    peers = {(r["address"], r["mac"], r["vtep"]) for r in records if r["node"] != host.name}
    floods = {kv.value["address"] for kv in gstore.list(ckeys.NODE_INFO) if kv.value["name"] != host.name}
    return peers, floods


def everything(hosts: list[Host], gstore: MemoryStore) -> dict[str, Any]:
    return {"cluster": store_state(gstore), **{h.name: snapshot(h.ctl) for h in hosts}}


# ---------------------------------------------------------------------------- peers
def test_each_host_programs_the_other_hosts_endpoints_and_never_its_own(hosts: list[Host], gstore: MemoryStore) -> None:
    a, b, c = hosts
    network = a.ctl.create_network("ov", driver="overlay", subnet=SUBNET)
    a1 = a.ctl.create_container(["true"], name="a1", net="ov")
    b1 = b.ctl.create_container(["true"], name="b1", net="ov")
    assert a1.lagging == [] and b1.lagging == []
    # run returned after the barrier: every host has b1 already, without waiting here
    ep_a = a.ctl.inspect_container("a1")["networks"]["ov"]
    ep_b = b.ctl.inspect_container("b1")["networks"]["ov"]
    assert (ep_b["address"], ep_b["mac"], b.advertise) in a.programmed(network)[0]
    assert (ep_b["address"], ep_b["mac"], b.advertise) in c.programmed(network)[0]
    assert (ep_a["address"], ep_a["mac"], a.advertise) in b.programmed(network)[0]
    settle(hosts, gstore)
    bridge, vxlan = overlay_devices(network)
    for host in hosts:
        peers, floods = host.programmed(network)
        assert (peers, floods) == expected(host, network, gstore)
        assert floods == {h.advertise for h in hosts} - {host.advertise}  # one per remote host
        assert all(vtep != host.advertise for _, _, vtep in peers)
        assert len(peers) == 3 + (host is c)  # 2 other hosts' addresses + the other containers
        assert host.dp.vxlans[vxlan]["local_ip"] == host.advertise
        assert host.dp.vxlans[vxlan]["bridge"] == bridge and bridge in host.dp.bridges
    # each host's own address on the network is its containers' gateway, distinct per host
    gateways = {h.name: h.dp.bridges[bridge] for h in hosts}
    assert len(set(gateways.values())) == 3
    assert ep_a["gateway"] + "/24" == gateways["A"] and ep_b["gateway"] + "/24" == gateways["B"]


def test_removal_withdraws_peers_then_the_network_everywhere(hosts: list[Host], gstore: MemoryStore) -> None:
    a, b, c = hosts
    network = a.ctl.create_network("ov", driver="overlay", subnet=SUBNET)
    a.ctl.create_container(["true"], name="a1", net="ov")
    b.ctl.create_container(["true"], name="b1", net="ov")
    ep_b = b.ctl.inspect_container("b1")["networks"]["ov"]
    peer_b = (ep_b["address"], ep_b["mac"], b.advertise)
    b.ctl.remove_container("b1")
    wait_for(lambda: all(peer_b not in h.programmed(network)[0] for h in (a, c)))
    settle(hosts, gstore)
    for host in hosts:
        assert host.programmed(network) == expected(host, network, gstore)
    with pytest.raises(Conflict, match="a1 on A"):
        c.ctl.remove_network("ov")  # a1 still uses it, from another host
    a.ctl.remove_container("a1")
    c.ctl.remove_network("ov")  # any host may remove it
    bridge, vxlan = overlay_devices(network)
    wait_for(lambda: all(bridge not in h.dp.bridges and vxlan not in h.dp.vxlans for h in hosts))
    settle(hosts, gstore)
    for host in hosts:
        assert kernel(host.dp)["peers"] == {} and kernel(host.dp)["floods"] == {}
        assert host.ctl.all_networks() == []
    left = [k for k in store_state(gstore) if network.id in k or k.startswith((ckeys.NETWORKS, ckeys.VNI))]
    assert left == []


def test_a_host_behind_is_reported_as_lagging_after_the_barrier_timeout(hosts: list[Host], gstore: MemoryStore) -> None:
    a = hosts[0]
    a.ctl.create_network("ov", driver="overlay", subnet=SUBNET)
    silent = Cluster(gstore, "D", "192.0.2.4")  # registered, so live, but no agent programs anything
    silent.register()
    try:
        a.ctl.barrier_timeout = 0.2
        started = time.monotonic()
        done = a.ctl.create_container(["true"], name="a1", net="ov")
        assert done.lagging == ["D"]
        assert 0.2 <= time.monotonic() - started < 1.5
        assert done.value.state == "created"  # lagging is news, not a failure
    finally:
        silent.stop()


def test_an_agent_starting_withdraws_endpoints_its_host_no_longer_has(hosts: list[Host], gstore: MemoryStore) -> None:
    a, b, _ = hosts
    network = a.ctl.create_network("ov", driver="overlay", subnet=SUBNET)
    a.ctl.create_container(["true"], name="a1", net="ov")
    ep = a.ctl.inspect_container("a1")["networks"]["ov"]
    stale = (ep["address"], ep["mac"], a.advertise)
    # A's daemon goes away; meanwhile a1's record vanishes from A's own store (say, its
    # state was lost); the cluster still says a1 is on A, so B still programs it
    a.agent.stop()
    a.ctl.store.delete(f"/endpoints/{a.ctl.inspect_container('a1')['id']}/{network.id}")
    assert stale in b.programmed(network)[0]
    a.agent = OverlayAgent(a.agent.cluster, a.dp, a.ctl.agent_hooks())  # A's daemon back
    a.ctl.agent = a.agent
    a.agent.start()
    assert a.agent.synced.wait(2)
    wait_for(lambda: stale not in b.programmed(network)[0])
    assert all(kv.value.get("container") != "a1" for kv in gstore.list(ckeys.ENDPOINTS))


def test_reconcile_on_an_overlay_host_changes_nothing(hosts: list[Host], gstore: MemoryStore) -> None:
    a, b, _ = hosts
    network = a.ctl.create_network("ov", driver="overlay", subnet=SUBNET)
    a.ctl.create_container(["true"], name="a1", net="ov")
    b.ctl.create_container(["true"], name="b1", net="ov")
    settle(hosts, gstore)
    before = everything(hosts, gstore), a.programmed(network)
    assert a.ctl.reconcile() == []  # the overlay's devices are the network's, not orphans
    assert b.ctl.reconcile() == []
    assert (everything(hosts, gstore), a.programmed(network)) == before


# ---------------------------------------------------------------------------- refusals
def test_a_taken_vni_is_a_one_line_conflict_that_changes_nothing(hosts: list[Host], gstore: MemoryStore) -> None:
    a, b, _ = hosts
    a.ctl.create_network("ov1", driver="overlay", subnet=SUBNET, options={"vni": "5000"})
    settle(hosts, gstore)
    before, calls = everything(hosts, gstore), [len(h.dp.calls) for h in hosts]
    with pytest.raises(Conflict, match=r"^VNI 5000 is already used by network 'ov1': ") as taken:
        b.ctl.create_network("ov2", driver="overlay", subnet="10.51.0.0/24", options={"vni": "5000"})
    assert "\n" not in str(taken.value)
    with pytest.raises(Conflict, match="'ov1' already exists"):
        b.ctl.create_network("ov1", driver="overlay", subnet="10.51.0.0/24")
    with pytest.raises(Conflict, match="overlaps network 'ov1'"):
        b.ctl.create_network("ov3", driver="overlay", subnet="10.50.0.0/16")
    time.sleep(0.05)  # room for any event an agent would (wrongly) act on
    assert everything(hosts, gstore) == before
    assert [len(h.dp.calls) for h in hosts] == calls


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"colour": "blue"}, "unknown network option 'colour' for driver overlay"),
        ({"bridge_name": "br9"}, "unknown network option 'bridge_name'"),  # a bridge option
        ({"vni": "abc"}, "invalid vni 'abc'"),
        ({"vni": "4095"}, "invalid vni '4095'"),  # below VNI_MIN
        ({"vni": "16777216"}, "invalid vni '16777216'"),  # past 24 bits
        ({"mtu": "9"}, "mtu"),
    ],
)
def test_bad_overlay_options_are_refused_before_anything_changes(
    hosts: list[Host], gstore: MemoryStore, options: dict[str, str], message: str
) -> None:
    before, calls = everything(hosts, gstore), [len(h.dp.calls) for h in hosts]
    with pytest.raises(InvalidInput, match=message):
        hosts[0].ctl.create_network("ov", driver="overlay", subnet=SUBNET, options=options)
    assert everything(hosts, gstore) == before
    assert [len(h.dp.calls) for h in hosts] == calls


def test_overlay_without_a_cluster_store_is_refused(tmp_path: Path) -> None:
    ctl = make_controller(tmp_path)
    before = snapshot(ctl)
    with pytest.raises(InvalidInput, match="-d overlay needs a cluster store"):
        ctl.create_network("ov", driver="overlay", subnet=SUBNET)
    with pytest.raises(InvalidInput, match="unknown network driver 'vxlan'"):
        ctl.create_network("ov", driver="vxlan", subnet=SUBNET)
    assert snapshot(ctl) == before and ctl.ctx.datapath.calls == []  # type: ignore[attr-defined]


def test_a_cluster_on_a_store_without_leases_keeps_its_hosts_up() -> None:
    store = MemoryStore()
    cluster = Cluster(store, "A", "192.0.2.1")
    cluster.register()
    cluster.stop()  # a stopping daemon does not look like a host that left
    assert cluster.live_nodes() == {"A": "192.0.2.1"}
    assert [(n["name"], n["up"], n["self"]) for n in cluster.nodes()] == [("A", True, True)]
    assert cluster.wait_applied(store.revision(), timeout=0.05) == ["A"]  # no agent acknowledged
    cluster.record_applied(store.revision())
    assert cluster.wait_applied(store.revision() - 1, timeout=0.05) == []
