"""The overlay peer table: desired state from records, and diffs, in any event order."""

from __future__ import annotations

from tether.control.peers import NetworkPeers, Peer, PeerTable


def _ep(net: str, node: str, addr: str, vtep: str, mac: str = "") -> dict[str, str]:
    return {"network_id": net, "node": node, "address": addr, "vtep": vtep, "mac": mac or f"02:42:{addr}"}


def test_remote_endpoints_and_floods_only() -> None:
    t = PeerTable("h1")
    t.networks["n1"] = {"id": "n1"}
    t.hosts = {"h1": {"address": "10.99.0.1"}, "h2": {"address": "10.99.0.2"}, "h3": {"address": "10.99.0.3"}}
    t.endpoints["n1/a"] = _ep("n1", "h1", "10.220.0.2", "10.99.0.1")
    t.endpoints["n1/b"] = _ep("n1", "h2", "10.220.0.3", "10.99.0.2")
    t.endpoints["n2/c"] = _ep("n2", "h2", "10.221.0.3", "10.99.0.2")
    d = t.desired("n1")
    assert d.peers == {Peer("10.220.0.3", "02:42:10.220.0.3", "10.99.0.2")}
    assert d.floods == {"10.99.0.2", "10.99.0.3"}


def test_endpoint_before_network_is_replayed() -> None:
    t = PeerTable("h1")
    t.hosts = {"h2": {"address": "10.99.0.2"}}
    t.endpoints["n1/b"] = _ep("n1", "h2", "10.220.0.3", "10.99.0.2")
    assert t.desired("n1") == NetworkPeers()  # network not known yet: nothing to program
    t.networks["n1"] = {"id": "n1"}
    assert len(t.desired("n1").peers) == 1


def test_diff_moves_and_removals() -> None:
    old = NetworkPeers({Peer("10.0.0.2", "m2", "v1"), Peer("10.0.0.3", "m3", "v1")}, {"v1", "v2"})
    new = NetworkPeers({Peer("10.0.0.2", "m2", "v3"), Peer("10.0.0.3", "m3", "v1")}, {"v1", "v3"})
    ch = PeerTable.diff(old, new)
    assert ch.remove_peers == [Peer("10.0.0.2", "m2", "v1")]
    assert ch.add_peers == [Peer("10.0.0.2", "m2", "v3")]
    assert ch.add_floods == ["v3"] and ch.remove_floods == ["v2"]
    assert PeerTable.diff(new, new).empty()


def test_a_dual_stack_endpoint_is_two_peers_at_one_mac_and_vtep() -> None:
    t = PeerTable("h1")
    t.networks["n1"] = {"id": "n1"}
    t.endpoints["n1/b"] = dict(_ep("n1", "h2", "10.220.0.3", "10.99.0.2", "m3"), address6="fd00:0220:0::0003")
    t.endpoints["n1/a"] = dict(_ep("n1", "h1", "10.220.0.2", "10.99.0.1", "m2"), address6="fd00:220::2")  # own
    assert t.desired("n1").peers == {Peer("10.220.0.3", "m3", "10.99.0.2"), Peer("fd00:220::3", "m3", "10.99.0.2")}


def test_removing_one_address_of_a_mac_programs_the_others_again() -> None:
    # one FDB entry serves both addresses: removing the v6 one takes it, so the v4 one is redone
    v4, v6 = Peer("10.0.0.2", "m2", "v1"), Peer("fd00::2", "m2", "v1")
    other = Peer("10.0.0.3", "m3", "v1")
    ch = PeerTable.diff(NetworkPeers({v4, v6, other}), NetworkPeers({v4, other, Peer("fd00::9", "m2", "v1")}))
    assert ch.remove_peers == [v6]
    assert ch.add_peers == [v4, Peer("fd00::9", "m2", "v1")]  # not m3's: its FDB entry is untouched
    moved_to = {Peer("10.0.0.2", "m2", "v2"), Peer("fd00::2", "m2", "v2")}  # the endpoint moved to another host
    moved = PeerTable.diff(NetworkPeers({v4, v6}), NetworkPeers(moved_to))
    assert moved.remove_peers == [v4, v6] and moved.add_peers == sorted(moved_to)
    both_gone = PeerTable.diff(NetworkPeers({v4, v6}), NetworkPeers())
    assert both_gone.remove_peers == [v4, v6] and both_gone.add_peers == []
