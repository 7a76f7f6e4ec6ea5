"""The overlay peer table: what one host must program for the rest of the cluster. Pure.

From the cluster's records (overlay networks, endpoints, hosts) it derives, per network,
the set of remote peers (address, MAC, VTEP: one static neighbour and one FDB entry each)
and the set of remote VTEPs (one all-zeros flood entry each). A dual-stack endpoint (a
record with ``address6``) is two peers with one MAC and one VTEP: an AF_INET and an
AF_INET6 neighbour entry over the same FDB entry. Because the desired state is
recomputed from the records, events may arrive in any order — an endpoint before its
network, a host before its endpoints — and replay (as libnetwork's peerdb does by hand)
comes for free: ``diff`` against what is programmed gives exactly the changes to make.

The same records give the names this host's resolver must answer for the network's
remote containers (``names``): each one's name and aliases, under each of its addresses.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Peer", "NetworkPeers", "PeerTable", "Changes", "RemoteName"]


@dataclass(frozen=True, order=True)
class Peer:
    address: str
    mac: str
    vtep: str


@dataclass(frozen=True)
class RemoteName:
    """One name of a remote container under one of its addresses (v4 or v6)."""

    name: str
    address: str


@dataclass
class NetworkPeers:
    peers: set[Peer] = field(default_factory=set)
    floods: set[str] = field(default_factory=set)


@dataclass
class Changes:
    add_peers: list[Peer] = field(default_factory=list)
    remove_peers: list[Peer] = field(default_factory=list)
    add_floods: list[str] = field(default_factory=list)
    remove_floods: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.add_peers or self.remove_peers or self.add_floods or self.remove_floods)


class PeerTable:
    """Cluster records in, per-network desired peers out, for host ``node``."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.networks: dict[str, dict[str, Any]] = {}  # net id -> overlay network record
        self.endpoints: dict[str, dict[str, Any]] = {}  # "<net id>/<ep id>" -> endpoint record
        self.hosts: dict[str, dict[str, Any]] = {}  # node -> node-info record

    def clear(self) -> None:
        self.networks.clear()
        self.endpoints.clear()
        self.hosts.clear()

    def desired(self, network_id: str) -> NetworkPeers:
        out = NetworkPeers()
        if network_id not in self.networks:
            return out
        for ep in self.endpoints.values():
            if ep.get("network_id") == network_id and ep.get("node") != self.node:
                out.peers.add(Peer(ep["address"], ep["mac"], ep["vtep"]))
                if ep.get("address6"):  # in the kernel's spelling, as list_peers reports it
                    out.peers.add(Peer(str(ipaddress.IPv6Address(ep["address6"])), ep["mac"], ep["vtep"]))
        for name, host in self.hosts.items():
            if name != self.node and host.get("address"):
                out.floods.add(host["address"])
        return out

    def names(self, network_id: str) -> list[RemoteName]:
        """The names of the network's containers on other hosts, as their records list
        them (the container's name first, then its aliases: the order the controller adds
        a local container's, so a PTR picks the container's name), each under every
        address it has. Two containers of one name on two hosts give that name twice,
        once per address: both answer. A record from before names were published is
        known by its container's name."""
        out: dict[RemoteName, None] = {}  # ordered, without repeats
        if network_id not in self.networks:
            return []
        for ep in self.endpoints.values():
            if ep.get("network_id") != network_id or ep.get("node") == self.node or ep.get("kind") != "container":
                continue
            addresses = [a for a in (ep.get("address"), ep.get("address6")) if a]
            for name in ep["names"] if "names" in ep else [ep.get("container")]:
                if name:
                    out.update((RemoteName(name, address), None) for address in addresses)
        return list(out)

    @staticmethod
    def diff(programmed: NetworkPeers, desired: NetworkPeers) -> Changes:
        # A MAC that moved to another VTEP shows up as remove(old) + add(new): the remove
        # comes first so the FDB entry ends up pointing at the new VTEP.
        removed = programmed.peers - desired.peers
        # One FDB entry serves every address at a MAC (a dual-stack endpoint's two), and
        # removing one of them takes that entry: the others at the same MAC and VTEP that
        # stay are programmed again after the removals (add_peer is idempotent).
        shared = {(p.mac, p.vtep) for p in removed}
        again = {p for p in desired.peers & programmed.peers if (p.mac, p.vtep) in shared}
        return Changes(
            add_peers=sorted((desired.peers - programmed.peers) | again),
            remove_peers=sorted(removed),
            add_floods=sorted(desired.floods - programmed.floods),
            remove_floods=sorted(programmed.floods - desired.floods),
        )
