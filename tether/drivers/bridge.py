"""The bridge network driver: one Linux bridge per network, one veth pair per endpoint.

The bridge holds the network's gateway address, so the host routes to every container
directly (no published port needed to reach a container from its host). The container
end of the veth is created directly inside the container's namespace (no move and
rename), and all device names derive from ids, so teardown never needs a lookup and a
restarted daemon can find and finish any half-done work.
"""

from __future__ import annotations

from ..model import Endpoint, Network
from .base import DriverContext, NetworkDriver, Undo

__all__ = ["BridgeDriver"]


class BridgeDriver(NetworkDriver):
    name = "bridge"

    def create(self, ctx: DriverContext, network: Network, undo: Undo) -> None:
        existed = ctx.datapath.link_exists(network.bridge)
        self.restore(ctx, network)
        if not existed:
            undo.push(f"bridge {network.bridge}", lambda: ctx.datapath.delete_bridge(network.bridge))

    def restore(self, ctx: DriverContext, network: Network) -> None:
        ctx.datapath.ensure_bridge(
            network.bridge, f"{network.gateway}/{network.prefixlen}", network.mtu, ctx.mark
        )
        # Forwarding is switched on per interface, only where needed: an internal network's
        # bridge never forwards. route_localnet lets the host's own 127.0.0.1 reach a port
        # published on loopback (DNAT to the bridge) without a proxy process; the firewall
        # drops 127.0.0.0/8 arriving *from* a bridge, so containers gain nothing from it.
        ctx.datapath.set_interface_sysctl(network.bridge, "forwarding", "0" if network.internal else "1")
        ctx.datapath.set_interface_sysctl(network.bridge, "route_localnet", "1")

    def delete(self, ctx: DriverContext, network: Network) -> list[str]:
        try:
            ctx.datapath.delete_bridge(network.bridge)
        except Exception as exc:
            return [f"bridge {network.bridge}: {exc}"]
        return []

    # The veth verbs below serve every driver whose endpoints are veths on a bridge (the
    # overlay driver too); they differ only in which bridge, which MTU and hairpin.
    def port_bridge(self, network: Network) -> str:
        return network.bridge

    def port_mtu(self, network: Network) -> int:
        return network.mtu

    hairpin = True  # a container may reach its own published port through a host address

    def attach(
        self,
        ctx: DriverContext,
        network: Network,
        endpoint: Endpoint,
        netns: str,
        undo: Undo,
        keep_existing_default: bool = False,
    ) -> bool:
        routed = ctx.datapath.attach_veth(
            netns=netns,
            host_ifname=endpoint.host_ifname,
            ifname=endpoint.ifname,
            bridge=self.port_bridge(network),
            mac=endpoint.mac,
            cidr=endpoint.cidr,
            gateway=endpoint.gateway if endpoint.default_route else None,
            mtu=self.port_mtu(network),
            mark=ctx.mark,
            hairpin=self.hairpin,
            keep_existing_default=keep_existing_default,
        )
        undo.push(f"veth {endpoint.host_ifname}", lambda: ctx.datapath.detach_veth(endpoint.host_ifname))
        return routed

    def attach_unplaced(
        self, ctx: DriverContext, network: Network, endpoint: Endpoint, peer_ifname: str, undo: Undo
    ) -> None:
        """The endpoint's veth with its container end left on the host as ``peer_ifname``,
        for a runtime that moves it into its sandbox and sets its address itself (Docker)."""
        ctx.datapath.create_veth_pair(
            host_ifname=endpoint.host_ifname,
            peer_ifname=peer_ifname,
            bridge=self.port_bridge(network),
            mac=endpoint.mac,
            mtu=self.port_mtu(network),
            mark=ctx.mark,
            hairpin=self.hairpin,
        )
        undo.push(f"veth {endpoint.host_ifname}", lambda: ctx.datapath.detach_veth(endpoint.host_ifname))

    def detach(self, ctx: DriverContext, network: Network, endpoint: Endpoint, netns: str | None) -> list[str]:
        try:
            ctx.datapath.detach_veth(endpoint.host_ifname)
        except Exception as exc:
            return [f"veth {endpoint.host_ifname}: {exc}"]
        return []

    def endpoint_present(self, ctx: DriverContext, network: Network, endpoint: Endpoint) -> bool:
        # a veth that lost its bridge (the bridge was deleted and rebuilt) is as good as gone
        return ctx.datapath.link_master(endpoint.host_ifname) == self.port_bridge(network)

    def owned_links(self, network: Network) -> set[str]:
        return {network.bridge}
