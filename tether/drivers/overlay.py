"""The overlay network driver: one L2 segment across hosts, VXLAN under a Linux bridge.

Per network, on *every* host: a bridge holding that host's own address on the overlay
subnet (so the host reaches every container directly, and is the default gateway of its
local containers: one interface per container, no gateway NIC as in Docker), and a VXLAN
device (the network's VNI, UDP 4789, learning off, ARP and NDP proxy on) enslaved to it,
with an MTU 50 bytes below the underlay's. Endpoints plug into that bridge exactly as the
bridge driver plugs them. A dual-stack network (``--ipv6``) gives each host a v6 address
on the bridge too, leased and published beside its v4 one: its containers' v6 gateway.

This driver also owns the overlay's cluster half: the network record and its VNI (claimed
with compare-and-swap in the cluster store), the cluster-wide IPAM, each host's own
address on the network (published like an endpoint), and the publication of every
endpoint, whose store revision is what ``run``'s barrier waits for. The remote side (FDB
and neighbour entries per remote endpoint, flood entries per remote host, and the remote
containers' names in this host's resolver) is programmed by the overlay agent
(``control/agent.py``), which calls back into ``agent_hooks``. An endpoint's record carries
the names this host's resolver answers for it (``names``: the container's name and the
endpoint's aliases, a CNI sandbox's record name and the aliases its runtime gave; none for
Docker's, which Docker names in its own resolver and tells the driver no name of), so
every other host answers the same ones.
"""

from __future__ import annotations

import time
from typing import Any

from ..control import keys as ckeys
from ..control.agent import AgentHooks
from ..datapath.base import VXLAN_OVERHEAD
from ..errors import Conflict, InvalidInput
from ..ipam import IPAM
from ..model import Container, Endpoint, Network, mac_for
from ..storekeys import ep_key
from ..validate import parse_mtu
from .base import DriverContext, NetworkSpec, Undo, collect, enable_uplink_forwarding
from .bridge import BridgeDriver, _check_known

__all__ = ["OverlayDriver", "overlay_devices"]


def overlay_devices(network: Network) -> tuple[str, str]:
    """(bridge, vxlan) device names of an overlay network: derived from its VNI."""
    vni = network.options.get("vni", "0")
    return f"tov-{vni}", f"tvx-{vni}"


class OverlayDriver(BridgeDriver):
    name = "overlay"
    scope = "global"
    options = ("mtu", "vni")
    pools = [("10.0.0.0/8", 24)]
    hairpin = False  # no published ports on the overlay itself
    routed = True

    def __init__(self) -> None:
        self._gateways: dict[str, str] = {}  # net id -> this host's address on it
        self._gateways6: dict[str, str] = {}  # net id -> this host's v6 address on a dual-stack one
        self._mtu: dict[str, int] = {}  # net id -> MTU derived from this host's underlay
        self.agent: Any = None  # the OverlayAgent, told when a network is removed here

    # ---------------------------------------------------------------- networks
    def validate(self, ctx: DriverContext, options: dict[str, str], internal: bool) -> dict[str, str]:
        if ctx.cluster is None:
            raise InvalidInput(
                "-d overlay needs a cluster store: start the daemon with "
                "--cluster-store etcd://HOST:2379 --cluster-advertise IP"
            )
        _check_known(self, options)
        if "mtu" in options:
            parse_mtu(options["mtu"])
        if "vni" in options:
            _parse_vni(options["vni"])
        return dict(options)

    def create_network(self, ctx: DriverContext, spec: NetworkSpec, others: list[Network], undo: Undo) -> Network:
        cluster = _cluster(ctx)
        gstore = cluster.store
        vni = self._claim_vni(ctx, spec.name, _parse_vni(spec.options["vni"]) if "vni" in spec.options else None)
        undo.push(f"vni {vni}", lambda: gstore.delete(ckeys.vni_key(vni)))
        network = Network(
            id=spec.id,
            name=spec.name,
            driver=self.name,
            subnet=spec.subnet,
            gateway=spec.gateway,
            bridge=f"tov-{vni}",
            ip_range=spec.ip_range,
            mtu=int(spec.options.get("mtu", 1450)),
            internal=spec.internal,
            options={**spec.options, "vni": str(vni)},
            created=time.time(),
            labels=dict(spec.labels),
            subnet6=spec.subnet6,
            gateway6=spec.gateway6,  # (reserved, as the v4 one: each host is its containers' gateway)
            aux_addresses=dict(spec.aux_addresses),
            ip_range6=spec.ip_range6,
        )
        if not gstore.compare_and_swap(ckeys.network_key(spec.name), 0, network.to_dict()):
            raise Conflict(f"network {spec.name!r} already exists in the cluster: choose another name")
        undo.push(f"record of network {spec.name}", lambda: gstore.delete(ckeys.network_key(spec.name)))
        undo.push(f"this host's side of {spec.name}", lambda: self._log(self.teardown_host(ctx, network)))
        self.ensure_host(ctx, network)
        return network

    def _claim_vni(self, ctx: DriverContext, name: str, requested: int | None) -> int:
        gstore = _cluster(ctx).store
        if requested is not None:
            if not gstore.compare_and_swap(ckeys.vni_key(requested), 0, {"network": name}):
                holder = gstore.get(ckeys.vni_key(requested))
                raise Conflict(
                    f"VNI {requested} is already used by network {holder.value.get('network') if holder else '?'!r}: "
                    "pick another -o vni or leave it out"
                )
            return requested
        while True:
            used = {int(kv.key.rsplit("/", 1)[1]) for kv in gstore.list(ckeys.VNI)}
            vni = next(v for v in range(ckeys.VNI_MIN, ckeys.VNI_MAX) if v not in used)
            if gstore.compare_and_swap(ckeys.vni_key(vni), 0, {"network": name}):
                return vni

    def ensure_host(self, ctx: DriverContext, network: Network) -> str:
        """This host's side of the network: its own address on it, and a v6 one on a
        dual-stack network (published like an endpoint, so every host and container
        reaches them), the bridge and the VXLAN device. Idempotent; the agent calls it for
        every overlay network in the cluster. Returns the VXLAN device."""
        cluster = _cluster(ctx)
        with ctx.lock:
            address, address6 = self._own_addresses(ctx, network)
            bridge, vxlan = overlay_devices(network)
            mtu = ctx.datapath.underlay_mtu(cluster.advertise) - VXLAN_OVERHEAD
            cidr6 = f"{address6}/{network.prefixlen6}" if address6 else None
            ctx.datapath.ensure_bridge(
                bridge, f"{address}/{network.prefixlen}", mtu, ctx.mark, exclusive=True, gateway_cidr6=cidr6
            )
            ctx.datapath.set_bridge_mac(bridge, mac_for(address))
            ctx.datapath.ensure_vxlan(vxlan, int(network.options["vni"]), cluster.advertise, bridge, mtu, ctx.mark)
            ctx.datapath.set_interface_sysctl(bridge, "forwarding", "1")
            enable_uplink_forwarding(ctx, network.ipv6 and not network.internal)
            self._mtu[network.id] = mtu
            self._gateways[network.id] = address
            if address6:
                self._gateways6[network.id] = address6
            if ctx.firewall is not None:
                ctx.firewall.add_network(self.rules(network))
            return vxlan

    def _own_addresses(self, ctx: DriverContext, network: Network) -> tuple[str, str | None]:
        """This host's (v4, v6) addresses on the network (v6 None unless dual stack): from
        its record in the cluster, or leased now and recorded; what was leased here is
        given back if the record cannot be written."""
        cluster = _cluster(ctx)
        key = ckeys.endpoint_key(network.id, f"host-{cluster.node}")
        kv = cluster.store.get(key)
        address: str | None = kv.value["address"] if kv is not None else None
        address6: str | None = kv.value.get("address6") if kv is not None else None
        if address is not None and (address6 is not None or not network.ipv6):
            return address, address6
        ipam, owner = self.ipam(ctx), f"node:{cluster.node}"
        leased: list[str] = []
        try:
            if address is None:
                address = ipam.allocate(network, owner)
                leased.append(address)
            if network.ipv6:
                address6 = ipam.allocate(network, owner, family=6)
                leased.append(address6)
            record = _endpoint_record(cluster, "host", network, address, mac_for(address), address6=address6)
            cluster.store.put(key, record)
        except BaseException:
            for leased_address in leased:
                ipam.release(network.id, leased_address)
            raise
        return address, address6

    def teardown_host(self, ctx: DriverContext, network: Network) -> list[str]:
        """Remove this host's side of the network (the cluster no longer has it)."""
        cluster = _cluster(ctx)
        with ctx.lock:
            errors: list[str] = []
            bridge, vxlan = overlay_devices(network)
            for step, device in ((ctx.datapath.delete_vxlan, vxlan), (ctx.datapath.delete_bridge, bridge)):
                errors += [f"{device}: {e}" for e in collect(lambda: step(device))]  # type: ignore[misc]
            if ctx.firewall is not None:
                firewall = ctx.firewall
                errors += collect(lambda: firewall.remove_network(self.rules(network)))
            key = ckeys.endpoint_key(network.id, f"host-{cluster.node}")
            addresses = [self._gateways.pop(network.id, None), self._gateways6.pop(network.id, None)]
            if addresses[0] is None:  # a host side that never finished: its record has the addresses
                kv = cluster.store.get(key)
                addresses = [kv.value.get("address"), kv.value.get("address6")] if kv is not None else []
            self._mtu.pop(network.id, None)
            errors += collect(lambda: cluster.store.delete(key))
            for address in filter(None, addresses):
                errors += collect(lambda a=address: self.ipam(ctx).release(network.id, a))  # type: ignore[misc]
            return errors

    def delete_network(self, ctx: DriverContext, network: Network) -> list[str]:
        gstore = _cluster(ctx).store
        gstore.delete(ckeys.network_key(network.name))
        errors = self.teardown_host(ctx, network)
        if self.agent is not None:
            self.agent.forget_network(network.id)
        for kv in gstore.list(f"{ckeys.ENDPOINTS}{network.id}/"):
            gstore.delete(kv.key)
        self.ipam(ctx).drop_network(network.id)
        gstore.delete(ckeys.vni_key(int(network.options["vni"])))
        return errors

    def users(self, ctx: DriverContext, network: Network, local: list[str]) -> list[str]:
        return sorted(
            f"{kv.value.get('container')} on {kv.value.get('node')}"
            for kv in _cluster(ctx).store.list(f"{ckeys.ENDPOINTS}{network.id}/")
            if kv.value.get("kind") == "container"
        )

    def built_here(self, ctx: DriverContext, network: Network) -> bool:
        return network.id in self._gateways

    def describe(self, ctx: DriverContext, network: Network, attached: dict[str, Any]) -> dict[str, Any]:
        containers, hosts = {}, {}
        for kv in _cluster(ctx).store.list(f"{ckeys.ENDPOINTS}{network.id}/"):
            v = kv.value
            address6 = v.get("address6")
            if v.get("kind") == "container":
                containers[f"{v.get('container')}"] = {
                    "address": f"{v['address']}/{network.prefixlen}",
                    "address6": f"{address6}/{network.prefixlen6}" if address6 else None,
                    "mac": v["mac"],
                    "node": v["node"],
                }
            else:
                hosts[v["node"]] = {"address": v["address"], "address6": address6, "vtep": v["vtep"]}
        return dict(network.to_dict(), containers=containers, hosts=hosts, scope=self.scope)

    # ---------------------------------------------------------------- endpoints
    def ipam(self, ctx: DriverContext) -> IPAM:
        assert ctx.global_ipam is not None
        return ctx.global_ipam

    def gateway(self, ctx: DriverContext, network: Network) -> str:
        if network.id not in self._gateways:  # first use since the daemon started
            self.ensure_host(ctx, network)
        return self._gateways[network.id]

    def gateway6(self, ctx: DriverContext, network: Network) -> str | None:
        if not network.ipv6:
            return None
        if network.id not in self._gateways6:  # first use since the daemon started
            self.ensure_host(ctx, network)
        return self._gateways6[network.id]

    def port_bridge(self, ctx: DriverContext, network: Network) -> str:
        return overlay_devices(network)[0]

    def port_mtu(self, ctx: DriverContext, network: Network) -> int:
        if network.id not in self._mtu:
            self.ensure_host(ctx, network)
        return self._mtu[network.id]

    def attach_endpoint(
        self,
        ctx: DriverContext,
        network: Network,
        container: Container,
        endpoint: Endpoint,
        undo: Undo,
        keep_existing_default: bool = False,
    ) -> bool:
        routed = super().attach_endpoint(ctx, network, container, endpoint, undo, keep_existing_default)
        self._publish(ctx, network, container, endpoint, undo, [container.name, *endpoint.aliases])
        return routed

    def plug_endpoint(
        self, ctx: DriverContext, network: Network, container: Container, endpoint: Endpoint, peer: str, undo: Undo
    ) -> None:
        super().plug_endpoint(ctx, network, container, endpoint, peer, undo)
        self._publish(ctx, network, container, endpoint, undo, [])  # Docker's Join: no name given

    def detach_endpoint(
        self,
        ctx: DriverContext,
        network: Network,
        endpoint: Endpoint,
        kernel_gone: bool = False,
        netns: str | None = None,
    ) -> list[str]:
        errors = super().detach_endpoint(ctx, network, endpoint, kernel_gone)
        return errors + collect(lambda: _cluster(ctx).store.delete(ckeys.endpoint_key(endpoint.network_id, endpoint.id)))

    def _publish(
        self, ctx: DriverContext, network: Network, container: Container, endpoint: Endpoint, undo: Undo,
        names: list[str],
    ) -> None:  # fmt: skip
        """Tell every host where the endpoint is, and by which ``names`` (the ones this
        host's resolver answers for it); its revision is what the barrier waits for."""
        cluster = _cluster(ctx)
        key = ckeys.endpoint_key(network.id, endpoint.id)
        record = _endpoint_record(
            cluster, "container", network, endpoint.address, endpoint.mac, container,
            address6=endpoint.address6, names=names,
        )  # fmt: skip
        undo.published_at(cluster.store.put(key, record))
        undo.push(f"cluster record of {endpoint.ifname}", lambda: cluster.store.delete(key))

    def owned_links(self, network: Network) -> set[str]:
        return set(overlay_devices(network))

    # ---------------------------------------------------------------- the agent's calls
    def agent_hooks(self, ctx: DriverContext) -> AgentHooks:
        return AgentHooks(
            ensure_network=lambda rec: self.ensure_host(ctx, Network.from_dict(rec)),
            teardown_network=lambda rec: self._log(self.teardown_host(ctx, Network.from_dict(rec))),
            owns_endpoint=lambda rec: _owns_endpoint(ctx, rec),
            reclaim_node=lambda node: self._reclaim_node(ctx, node),
        )

    def _reclaim_node(self, ctx: DriverContext, node: str) -> None:
        """A host stayed down past the grace period: withdraw its endpoints, free its addresses."""
        gstore = _cluster(ctx).store
        for kv in gstore.list(ckeys.ENDPOINTS):
            if kv.value.get("node") == node:
                for address in filter(None, (kv.value["address"], kv.value.get("address6"))):
                    self.ipam(ctx).release(kv.value["network_id"], address)
                gstore.delete(kv.key)
        gstore.delete(ckeys.node_info_key(node))
        gstore.delete(ckeys.applied_key(node))

    @staticmethod
    def _log(errors: list[str]) -> None:
        import logging

        for line in errors:
            logging.getLogger("tether.overlay").warning("%s", line)


def _cluster(ctx: DriverContext) -> Any:
    if ctx.cluster is None:
        raise InvalidInput("this daemon has no cluster store: start it with --cluster-store etcd://HOST:2379")
    return ctx.cluster


def _parse_vni(value: str) -> int:
    try:
        vni = int(value)
    except ValueError:
        vni = -1
    if not ckeys.VNI_MIN <= vni <= ckeys.VNI_MAX:
        raise InvalidInput(f"invalid vni {value!r}: use a number from {ckeys.VNI_MIN} to {ckeys.VNI_MAX}")
    return vni


def _endpoint_record(
    cluster: Any,
    kind: str,
    network: Network,
    address: str,
    mac: str,
    container: Container | None = None,
    address6: str | None = None,
    names: list[str] | None = None,
) -> dict[str, Any]:
    """An endpoint as the cluster sees it; ``address6`` only on a dual-stack network (one
    MAC for both addresses: every other host programs a peer per address); a container's
    ``names`` are what every other host's resolver answers for it."""
    record: dict[str, Any] = {
        "kind": kind,
        "node": cluster.node,
        "vtep": cluster.advertise,
        "address": address,
        "mac": mac,
        "network_id": network.id,
        "container": container.name if container else None,
        "container_id": container.id if container else None,
    }
    if address6:
        record["address6"] = address6
    if names is not None:
        record["names"] = list(names)
    return record


def _owns_endpoint(ctx: DriverContext, record: dict[str, Any]) -> bool:
    """Whether an endpoint the cluster says is on this host is still one of ours."""
    kv = ctx.store.get(ep_key(record.get("container_id") or "", record.get("network_id") or ""))
    return (
        kv is not None
        and kv.value.get("address") == record.get("address")
        and kv.value.get("address6") == record.get("address6")
    )
