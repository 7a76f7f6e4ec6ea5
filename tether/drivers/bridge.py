"""The bridge network driver: one Linux bridge per network, one veth pair per endpoint.

The bridge holds the network's gateway address, so the host routes to every container
directly (no published port needed to reach a container from its host). The container
end of the veth is created directly inside the container's namespace (no move and
rename), and all device names derive from ids, so teardown never needs a lookup and a
restarted daemon can find and finish any half-done work. The network's record lives in
this host's store; its firewall rules go in with the bridge and out with it.
"""

from __future__ import annotations

import time

from ..errors import Conflict, InvalidInput
from ..model import Container, Endpoint, Network, bridge_name_for
from ..storekeys import NET_PREFIX
from ..validate import check_ifname, parse_bool_option, parse_mtu
from .base import DriverContext, NetworkDriver, NetworkSpec, Undo, collect, enable_uplink_forwarding

__all__ = ["BridgeDriver"]


class BridgeDriver(NetworkDriver):
    name = "bridge"
    options = ("bridge_name", "mtu", "masquerade", "icc")

    # ---------------------------------------------------------------- networks
    def validate(self, ctx: DriverContext, options: dict[str, str], internal: bool) -> dict[str, str]:
        _check_known(self, options)
        out = dict(options)
        if "mtu" in out:
            parse_mtu(out["mtu"])
        for flag in ("masquerade", "icc"):
            if flag in out:
                out[flag] = parse_bool_option(flag, out[flag])
        if internal and out.get("masquerade") == "true":
            raise InvalidInput(
                "--internal and -o masquerade=true contradict each other: an internal network has no way out; "
                "drop one of them"
            )
        if "bridge_name" in out:
            check_ifname("bridge_name", out["bridge_name"])
        return out

    def create_network(self, ctx: DriverContext, spec: NetworkSpec, others: list[Network], undo: Undo) -> Network:
        bridge = spec.options.get("bridge_name") or spec.bridge or bridge_name_for(spec.id)
        for other in others:
            if other.bridge == bridge:
                raise Conflict(f"bridge {bridge!r} is already used by network {other.name!r}: choose another bridge_name")
        if ctx.datapath.link_exists(bridge):
            raise Conflict(f"a device named {bridge!r} already exists on the host: choose another bridge_name")
        network = Network(
            id=spec.id,
            name=spec.name,
            driver=self.name,
            subnet=spec.subnet,
            gateway=spec.gateway,
            bridge=bridge,
            ip_range=spec.ip_range,
            mtu=parse_mtu(spec.options["mtu"]) if "mtu" in spec.options else 1500,
            internal=spec.internal,
            options=dict(spec.options),
            created=time.time(),
            labels=dict(spec.labels),
            subnet6=spec.subnet6,
            gateway6=spec.gateway6,
            aux_addresses=dict(spec.aux_addresses),
            ip_range6=spec.ip_range6,
        )
        ctx.store.put(NET_PREFIX + network.name, network.to_dict())
        undo.push(f"record of network {network.name}", lambda: ctx.store.delete(NET_PREFIX + network.name))
        undo.push(f"bridge {bridge}", lambda: ctx.datapath.delete_bridge(bridge))  # (none was there: checked)
        self.restore(ctx, network)
        if not network.internal:
            enable_uplink_forwarding(ctx, network.ipv6)
        if ctx.firewall is not None:
            firewall, rules = ctx.firewall, self.rules(network)
            firewall.add_network(rules)
            undo.push(f"firewall of network {network.name}", lambda: firewall.remove_network(rules))
        return network

    def restore(self, ctx: DriverContext, network: Network) -> None:
        gateway6 = f"{network.gateway6}/{network.prefixlen6}" if network.gateway6 else None
        ctx.datapath.ensure_bridge(
            network.bridge, f"{network.gateway}/{network.prefixlen}", network.mtu, ctx.mark, gateway_cidr6=gateway6
        )
        # Forwarding is switched on per interface, only where needed: an internal network's
        # bridge never forwards. route_localnet lets the host's own 127.0.0.1 reach a port
        # published on loopback (DNAT to the bridge) without a proxy process; the firewall
        # drops 127.0.0.0/8 arriving *from* a bridge, so containers gain nothing from it.
        ctx.datapath.set_interface_sysctl(network.bridge, "forwarding", "0" if network.internal else "1")
        ctx.datapath.set_interface_sysctl(network.bridge, "route_localnet", "1")
        if network.ipv6 and not network.internal:
            ctx.datapath.enable_ipv6_forwarding()

    def delete_network(self, ctx: DriverContext, network: Network) -> list[str]:
        errors = [f"bridge {network.bridge}: {e}" for e in collect(lambda: ctx.datapath.delete_bridge(network.bridge))]
        if ctx.firewall is not None:
            firewall = ctx.firewall
            errors += collect(lambda: firewall.remove_network(self.rules(network)))
        ctx.ipam.drop_network(network.id)
        ctx.store.delete(NET_PREFIX + network.name)
        return errors

    # ---------------------------------------------------------------- endpoints
    # The veth verbs below serve every driver whose endpoints are veths on a bridge (the
    # overlay driver too); they differ only in which bridge, which MTU and hairpin.
    def port_bridge(self, ctx: DriverContext, network: Network) -> str:
        return network.bridge

    def port_mtu(self, ctx: DriverContext, network: Network) -> int:
        return network.mtu

    hairpin = True  # a container may reach its own published port through a host address

    def attach_endpoint(
        self,
        ctx: DriverContext,
        network: Network,
        container: Container,
        endpoint: Endpoint,
        undo: Undo,
        keep_existing_default: bool = False,
    ) -> bool:
        assert container.netns is not None
        routed = ctx.datapath.attach_veth(
            netns=container.netns,
            host_ifname=endpoint.host_ifname,
            ifname=endpoint.ifname,
            bridge=self.port_bridge(ctx, network),
            mac=endpoint.mac,
            cidr=endpoint.cidr,
            gateway=endpoint.gateway if endpoint.default_route else None,
            cidr6=endpoint.cidr6,
            gateway6=endpoint.gateway6 if endpoint.default_route else None,
            mtu=self.port_mtu(ctx, network),
            mark=ctx.mark,
            hairpin=self.hairpin,
            keep_existing_default=keep_existing_default,
        )
        undo.push(f"veth {endpoint.host_ifname}", lambda: ctx.datapath.detach_veth(endpoint.host_ifname))
        return routed

    def plug_endpoint(
        self, ctx: DriverContext, network: Network, container: Container, endpoint: Endpoint, peer: str, undo: Undo
    ) -> None:
        ctx.datapath.detach_veth(endpoint.host_ifname)  # a leftover of an earlier Join
        ctx.datapath.create_veth_pair(
            host_ifname=endpoint.host_ifname,
            peer_ifname=peer,
            bridge=self.port_bridge(ctx, network),
            mac=endpoint.mac,
            mtu=self.port_mtu(ctx, network),
            mark=ctx.mark,
            hairpin=self.hairpin,
        )
        undo.push(f"veth {endpoint.host_ifname}", lambda: ctx.datapath.detach_veth(endpoint.host_ifname))

    def detach_endpoint(
        self,
        ctx: DriverContext,
        network: Network,
        endpoint: Endpoint,
        kernel_gone: bool = False,
        netns: str | None = None,
    ) -> list[str]:
        if kernel_gone:
            return []
        return [f"veth {endpoint.host_ifname}: {e}" for e in collect(lambda: ctx.datapath.detach_veth(endpoint.host_ifname))]

    def endpoint_present(self, ctx: DriverContext, network: Network, endpoint: Endpoint) -> bool:
        # a veth that lost its bridge (the bridge was deleted and rebuilt) is as good as gone
        return ctx.datapath.link_master(endpoint.host_ifname) == self.port_bridge(ctx, network)

    def owned_links(self, network: Network) -> set[str]:
        return {network.bridge}


def _check_known(driver: NetworkDriver, options: dict[str, str]) -> None:
    unknown = sorted(set(options) - set(driver.options))
    if unknown:
        raise InvalidInput(
            f"unknown network option {unknown[0]!r} for driver {driver.name}: "
            f"known options are {', '.join(driver.options)}"
        )
