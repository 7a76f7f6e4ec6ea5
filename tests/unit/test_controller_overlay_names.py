"""Names on an overlay across hosts, on fakes: three controllers (A, B, C) with their own
stores and fake kernels, one shared MemoryStore as the cluster store, the real
OverlayAgent in each, wired as the daemon wires it (``daemon._start_agent``: the agent
gets the resolver's ``add_record``/``remove_record`` and nothing else). The resolver is
the real name table (``dns.records.Records``) without sockets, so each host answers
exactly as its embedded resolver would, for any of its sandboxes.

Also the pure half: which names the peer table derives from the cluster's records.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from controllerkit import make_controller
from test_controller_overlay import Host, settle, wait_for

from tether.control import keys as ckeys
from tether.control.agent import AgentHooks, OverlayAgent
from tether.control.peers import PeerTable, RemoteName
from tether.daemon import _start_agent
from tether.dns.records import Records
from tether.errors import InvalidInput
from tether.testing.memory import MemoryStore

SUBNET = "10.70.0.0/24"
SUBNET6 = "fd00:70::/64"


class TableResolver(Records):
    """The resolver's tables, no sockets: what the controller and the agent write, and
    what a query from any sandbox would be answered."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str, str, str]] = []

    def add_record(self, network: str, name: str, address: str) -> None:
        self.calls.append(("add", network, name, address))
        super().add_record(network, name, address)

    def remove_record(self, network: str, name: str, address: str) -> None:
        self.calls.append(("remove", network, name, address))
        super().remove_record(network, name, address)

    def serve(self, sandbox: str, netns_path: str) -> None:
        pass

    def unserve(self, sandbox: str) -> None:
        pass

    def set_upstreams(self, sandbox: str, upstreams: object) -> None:
        pass


def resolver(host: Host) -> TableResolver:
    return host.ctl.resolver  # type: ignore[return-value]


def ask(host: Host, container: str, name: str, version: int | None = None) -> list[str]:
    """What ``container`` (on ``host``) gets for ``name``: A then AAAA, or one family."""
    cid = host.ctl.inspect_container(container)["id"]
    return resolver(host).resolve(cid, name, version)


def ptr(host: Host, container: str, address: str) -> str | None:
    return resolver(host).reverse(host.ctl.inspect_container(container)["id"], address)


def addresses(host: Host, container: str, net: str = "ov") -> list[str]:
    ep = host.ctl.inspect_container(container)["networks"][net]
    return [a for a in (ep["address"], ep.get("address6")) if a]


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
            ctl.resolver = TableResolver()  # type: ignore[assignment]
            assert ctl.cluster is not None
            agent = _start_agent(ctl.cluster, ctl.ctx.datapath, ctl)  # type: ignore[arg-type]
            started.append(Host(name, advertise, ctl, agent))
        yield started
    finally:
        for host in started:
            host.agent.stop()
            assert host.ctl.cluster is not None
            host.ctl.cluster.stop()
        gstore.put(ckeys.CLUSTER + "~", {})  # one last event: the agents' watch threads see the stop and end


def dual(host: Host, name: str = "ov") -> None:
    host.ctl.create_network(name, driver="overlay", subnet=SUBNET, ipv6=True, subnet6=SUBNET6)


def restart_agent(host: Host) -> None:
    """A's daemon restarted: a new agent, and a resolver with only what reconcile gives it."""
    host.agent.stop()
    host.ctl.cluster.store.put(ckeys.CLUSTER + "~", {})  # type: ignore[union-attr]  # the old watch ends
    host.ctl.resolver = TableResolver()  # type: ignore[assignment]
    assert host.ctl.cluster is not None
    host.agent = _start_agent(host.ctl.cluster, host.ctl.ctx.datapath, host.ctl)  # type: ignore[arg-type]
    host.ctl.reconcile()


# ---------------------------------------------------------------------------- the peer table
def _ep(node: str, address: str, name: str | None, aliases: tuple[str, ...] = (), **more: object) -> dict[str, object]:
    return {"kind": "container", "network_id": "n1", "node": node, "address": address, "mac": "m", "vtep": "v",
            "container": name, "names": [name, *aliases] if name else [], **more}


def test_names_are_the_remote_containers_names_and_aliases_under_each_address() -> None:
    t = PeerTable("h1")
    t.endpoints["n1/a"] = _ep("h2", "10.0.0.2", "web", ("www", "front"), address6="fd00::2")
    assert t.names("n1") == []  # the network is not known yet: nothing
    t.networks["n1"] = {"id": "n1", "name": "ov"}
    t.endpoints["n1/own"] = _ep("h1", "10.0.0.3", "mine")  # this host's: the controller names it
    t.endpoints["n1/host-h2"] = dict(_ep("h2", "10.0.0.4", None), kind="host")  # a host's own address
    t.endpoints["n2/x"] = dict(_ep("h2", "10.1.0.2", "elsewhere"), network_id="n2")
    t.endpoints["n1/b"] = _ep("h3", "10.0.0.5", "web")  # the same name on another host: both answer
    assert t.names("n1") == [
        RemoteName("web", "10.0.0.2"), RemoteName("web", "fd00::2"),
        RemoteName("www", "10.0.0.2"), RemoteName("www", "fd00::2"),
        RemoteName("front", "10.0.0.2"), RemoteName("front", "fd00::2"),
        RemoteName("web", "10.0.0.5"),
    ]  # fmt: skip


def test_a_record_without_names_is_known_by_its_containers_name_and_an_empty_list_by_none() -> None:
    t = PeerTable("h1")
    t.networks["n1"] = {"id": "n1", "name": "ov"}
    old = _ep("h2", "10.0.0.2", "old")
    del old["names"]  # published before names were
    t.endpoints["n1/a"] = old
    t.endpoints["n1/b"] = dict(_ep("h2", "10.0.0.3", "docker-1234"), names=[])  # Docker's: no name given
    assert t.names("n1") == [RemoteName("old", "10.0.0.2")]


# ---------------------------------------------------------------------------- across hosts
def test_names_aliases_and_name_dot_network_answer_on_other_hosts_when_run_returns(hosts: list[Host]) -> None:
    a, b, c = hosts
    dual(a)
    b.ctl.create_container(["true"], name="b1", net="ov")
    c.ctl.create_container(["true"], name="c1", net="ov")
    a.ctl.create_container(["true"], name="web", net="ov", aliases=["db"])
    v4, v6 = addresses(a, "web")
    # no waiting: `run` returned after every host acknowledged, which it does only with the names in
    for host, asker in ((b, "b1"), (c, "c1")):
        for name in ("web", "db", "web.ov", "WEB", "db.ov."):
            assert ask(host, asker, name) == [v4, v6], (host.name, name)
        assert ask(host, asker, "web", 4) == [v4] and ask(host, asker, "db", 6) == [v6]
        assert ptr(host, asker, v4) == "web.ov" and ptr(host, asker, v6) == "web.ov"  # the name, never the alias
    # the home host answers its own container once, from the controller's records; its agent adds none
    a.ctl.create_container(["true"], name="a1", net="ov")
    assert ask(a, "a1", "web") == [v4, v6]
    assert all(entry.name not in ("web", "db") for _, given in a.agent.named.values() for entry in given)


def test_containers_not_on_the_network_do_not_see_its_names(hosts: list[Host]) -> None:
    a, b, _ = hosts
    a.ctl.create_network("ov", driver="overlay", subnet=SUBNET)
    b.ctl.create_network("other", driver="overlay", subnet="10.71.0.0/24")
    b.ctl.create_network("local", subnet="10.72.0.0/24")
    b.ctl.create_container(["true"], name="b_other", net="other")
    b.ctl.create_container(["true"], name="b_local", net="local")
    b.ctl.create_container(["true"], name="b_in", net="ov")
    a.ctl.create_container(["true"], name="web", net="ov")
    [address] = addresses(a, "web")
    assert ask(b, "b_in", "web") == [address]
    for outsider in ("b_other", "b_local"):
        assert ask(b, outsider, "web") == [] and ask(b, outsider, "web.ov") == []
        assert ptr(b, outsider, address) is None


def test_removal_stops_answering_on_every_host(hosts: list[Host], gstore: MemoryStore) -> None:
    a, b, c = hosts
    dual(a)
    b.ctl.create_container(["true"], name="b1", net="ov")
    c.ctl.create_container(["true"], name="c1", net="ov")
    a.ctl.create_container(["true"], name="web", net="ov", aliases=["db"])
    v4, _ = addresses(a, "web")
    a.ctl.remove_container("web")
    wait_for(lambda: ask(b, "b1", "web") == [] and ask(c, "c1", "db") == [])
    settle(hosts, gstore)
    for host, asker in ((b, "b1"), (c, "c1")):
        assert ask(host, asker, "web.ov") == [] and ptr(host, asker, v4) is None
        [(_, given)] = host.agent.named.values()
        assert {entry.name for entry in given} == {"b1", "c1"} - {asker}  # only the other's left


def test_a_name_on_two_hosts_answers_with_both_addresses(hosts: list[Host]) -> None:
    a, b, c = hosts
    a.ctl.create_network("ov", driver="overlay", subnet=SUBNET)
    a.ctl.create_container(["true"], name="a1", net="ov")
    b.ctl.create_container(["true"], name="web", net="ov")
    c.ctl.create_container(["true"], name="web", net="ov")  # names are unique per host only
    on_b, on_c = addresses(b, "web") + addresses(c, "web")
    assert sorted(ask(a, "a1", "web")) == sorted([on_b, on_c])
    assert sorted(ask(b, "web", "web")) == sorted([on_b, on_c])  # its own (controller) and C's (agent)
    assert ptr(a, "a1", on_b) == "web.ov" and ptr(a, "a1", on_c) == "web.ov"
    c.ctl.remove_container("web")
    wait_for(lambda: ask(a, "a1", "web") == [on_b] and ask(b, "web", "web") == [on_b])


def test_a_dead_hosts_names_go_when_it_is_reclaimed(hosts: list[Host]) -> None:
    a, b, c = hosts
    dual(a)
    a.ctl.create_container(["true"], name="a1", net="ov")
    b.ctl.create_container(["true"], name="b1", net="ov")
    c.ctl.create_container(["true"], name="c1", net="ov", aliases=["cache"])
    b.agent.stop()  # B is gone; until the grace period ends its names stay (as its peers do)
    assert ask(a, "a1", "b1") == addresses(b, "b1")
    a.ctl.drivers["overlay"]._reclaim_node(a.ctl.ctx, "B")  # type: ignore[attr-defined]
    wait_for(lambda: ask(a, "a1", "b1") == [] and ask(c, "c1", "b1") == [])
    assert ask(a, "a1", "cache") == addresses(c, "c1")  # the others' names stay


def test_names_survive_the_store_going_away(hosts: list[Host], gstore: MemoryStore) -> None:
    """The agent's snapshot fails (the store is unreachable): the resolver keeps every name,
    and no query depends on the store."""
    a, b, _ = hosts
    a.ctl.create_network("ov", driver="overlay", subnet=SUBNET)
    a.ctl.create_container(["true"], name="a1", net="ov")
    b.ctl.create_container(["true"], name="b1", net="ov")
    settle(hosts, gstore)
    from tether.errors import StoreError

    def unreachable(*args: object, **kwargs: object) -> object:
        raise StoreError("etcd unreachable")

    broken = pytest.MonkeyPatch()
    broken.setattr(gstore, "list", unreachable)
    broken.setattr(gstore, "get", unreachable)
    broken.setattr(gstore, "revision", unreachable)
    try:
        with a.agent._state, pytest.raises(StoreError):
            a.agent._snapshot()
        assert ask(a, "a1", "b1") == addresses(b, "b1")
    finally:
        broken.undo()


def test_a_fresh_snapshot_changes_only_what_changed(hosts: list[Host], gstore: MemoryStore) -> None:
    """The resync after the store comes back: names are converged by diff, so what stayed
    the same is never taken out (not even for an instant) and what went away goes."""
    a, b, _ = hosts
    a.ctl.create_network("ov", driver="overlay", subnet=SUBNET)
    a.ctl.create_container(["true"], name="a1", net="ov")
    b.ctl.create_container(["true"], name="b1", net="ov")
    b.ctl.create_container(["true"], name="b2", net="ov", aliases=["cache"])
    settle(hosts, gstore)
    a.agent.stop()
    b.ctl.remove_container("b2")  # A misses it
    gstore.put(ckeys.CLUSTER + "~", {})  # the stopped watch thread ends
    b2_names = [(c[2], c[3]) for c in resolver(a).calls if c[0] == "add" and c[2] in ("b2", "cache")]
    assert len(b2_names) == 2
    calls = len(resolver(a).calls)
    with a.agent._state:
        a.agent._snapshot()
    assert resolver(a).calls[calls:] == [("remove", "ov", name, address) for name, address in b2_names]
    assert ask(a, "a1", "b1") == addresses(b, "b1") and ask(a, "a1", "cache") == ask(a, "a1", "b2") == []


def test_a_restarted_daemon_answers_every_name_again(hosts: list[Host], gstore: MemoryStore) -> None:
    """Its resolver starts empty: the agent's snapshot gives it the other hosts' names and
    reconcile its own (added beside them, not over them)."""
    a, b, c = hosts
    dual(a)
    a.ctl.create_container(["true"], name="a1", net="ov", aliases=["front"])
    b.ctl.create_container(["true"], name="b1", net="ov", aliases=["db"])
    c.ctl.create_container(["true"], name="a1", net="ov")  # same name as A's
    settle(hosts, gstore)
    restart_agent(a)
    settle(hosts, gstore)
    assert ask(a, "a1", "db") == addresses(b, "b1")
    assert ask(a, "a1", "front") == addresses(a, "a1")
    assert sorted(ask(a, "a1", "a1")) == sorted(addresses(a, "a1") + addresses(c, "a1"))
    assert ptr(a, "a1", addresses(b, "b1")[1]) == "b1.ov"


def test_removing_the_network_drops_its_remote_names(hosts: list[Host], gstore: MemoryStore) -> None:
    a, b, c = hosts
    a.ctl.create_network("ov", driver="overlay", subnet=SUBNET)
    a.ctl.create_container(["true"], name="a1", net="ov")
    c.ctl.create_container(["true"], name="c1", net="ov")
    settle(hosts, gstore)
    assert b.agent.named  # B has no container there, yet holds the names (its resolver's table)
    a.ctl.remove_container("a1")
    c.ctl.remove_container("c1")
    b.ctl.remove_network("ov")
    settle(hosts, gstore)
    for host in hosts:
        wait_for(lambda h=host: h.agent.named == {})  # type: ignore[misc]
    assert resolver(a).resolve("x", "c1") == []


def test_a_name_the_resolver_refuses_neither_stops_the_others_nor_the_acknowledgement(gstore: MemoryStore) -> None:
    from tether.control.cluster import Cluster
    from tether.testing.datapath import RecordingDatapath

    added: list[tuple[str, str, str]] = []

    def add_name(network: str, name: str, address: str) -> None:
        if name == "bad":
            raise InvalidInput(f"invalid name {name!r} for a DNS record")
        added.append((network, name, address))

    dp = RecordingDatapath()

    def ensure_network(record: dict[str, object]) -> str:
        dp.ensure_bridge("tov-1", "10.0.0.1/24", 1350, "tether:")
        dp.ensure_vxlan("tvx-1", 4096, "192.0.2.1", "tov-1", 1350, "tether:")
        return "tvx-1"

    hooks = AgentHooks(
        ensure_network=ensure_network, teardown_network=lambda rec: None,
        owns_endpoint=lambda rec: True, reclaim_node=lambda node: None, add_name=add_name,
    )  # fmt: skip
    gstore.put(ckeys.network_key("ov"), {"id": "n1", "name": "ov"})
    for ep, name, address in (("e1", "bad", "10.0.0.2"), ("e2", "good", "10.0.0.3")):
        gstore.put(ckeys.endpoint_key("n1", ep), _ep("B", address, name) | {"mac": "02:00:00:00:00:0" + ep[-1]})
    published = gstore.revision()
    agent = OverlayAgent(Cluster(gstore, "A", "192.0.2.1"), dp, hooks)
    agent.start()
    try:
        assert agent.synced.wait(2)
        assert added == [("ov", "good", "10.0.0.3")]
        assert agent.applied == published  # acknowledged: the barrier is not held up
        assert {p[0] for p in dp.peers["tvx-1"]} == {"10.0.0.2", "10.0.0.3"}
    finally:
        agent.stop()
        gstore.put(ckeys.CLUSTER + "~", {})


def test_names_follow_an_alias_added_by_connect(hosts: list[Host]) -> None:
    a, b, _ = hosts
    a.ctl.create_network("ov", driver="overlay", subnet=SUBNET)
    a.ctl.create_network("local", subnet="10.73.0.0/24")
    b.ctl.create_container(["true"], name="b1", net="ov")
    a.ctl.create_container(["true"], name="web", net="local")
    a.ctl.connect("ov", "web", aliases=["www"])
    started = time.monotonic()
    address = addresses(a, "web")[0]
    assert ask(b, "b1", "www") == [address] and ask(b, "b1", "web.ov") == [address]
    assert time.monotonic() - started < 1


def test_a_cni_attachment_is_named_on_other_hosts_by_the_names_the_runtime_gave(
    hosts: list[Host], tmp_path: Path
) -> None:
    """CNI ADD with the ``aliases`` capability (Podman passes the container's name there):
    the aliases and the sandbox's record name answer on the other hosts, as on its own."""
    from controllerkit import runtime_netns

    from tether.doors import CniDoor

    a, b, _ = hosts
    dual(a)
    b.ctl.create_container(["true"], name="b1", net="ov")
    ns = runtime_netns(a.ctl, tmp_path / "pod1")
    result = CniDoor(a.ctl).add("0123abcd", ns, "eth0", "ov", aliases=["podweb"])
    v4, v6 = (ip["address"].split("/")[0] for ip in result["ips"])
    for name in ("podweb", "cni-0123abcd", "podweb.ov"):
        assert ask(b, "b1", name) == [v4, v6], name
    CniDoor(a.ctl).delete("0123abcd", "eth0", "ov")
    wait_for(lambda: ask(b, "b1", "podweb") == [])


def test_a_docker_endpoint_on_an_overlay_is_reachable_everywhere_but_named_nowhere(hosts: list[Host]) -> None:
    """Docker tells the driver no name (its containers are named by Docker's own resolver),
    and tether's resolver names the endpoint on no host: not on its own, not on the others."""
    a, b, _ = hosts
    a.ctl.create_network("ov", driver="overlay", subnet=SUBNET)
    b.ctl.create_container(["true"], name="b1", net="ov")
    network = a.ctl._network("ov")
    att = a.ctl.create_external("docker", "e1", network)
    a.ctl.join_external("docker", "e1", "/run/docker/netns/abc")
    address = att.endpoint.address
    assert any(p[0] == address for p in b.programmed(network)[0])  # reachable from B at once
    assert b.ctl.cluster is not None
    records = [kv.value for kv in b.ctl.cluster.store.list(ckeys.ENDPOINTS) if kv.value.get("address") == address]
    assert [r["names"] for r in records] == [[]]
    assert ask(b, "b1", att.container.name) == [] and ptr(b, "b1", address) is None
