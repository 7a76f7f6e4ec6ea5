"""The controller: the one orchestrator of tether. Only it combines store, IPAM and drivers.

Every operation has the same shape: validate all input against the store (names, modes,
networks, addresses) before touching the kernel; then act step by step, pushing each
step's inverse on an ``Undo``; on any failure unwind and re-raise. Records are written
*before* the kernel change they describe (a container starts in state ``creating``), so
a daemon killed at any instant leaves a record that ``reconcile`` finishes or removes:
nothing the kernel holds is ever unknown to the store. Mutations run under one lock (they
take milliseconds); waiting on processes (start, stop) happens outside it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from . import runtime
from .datapath import Datapath
from .control import keys as ckeys
from .controller_docker import DockerDoor
from .drivers import (
    NETWORK_DRIVERS,
    DriverContext,
    ExternalNamespace,
    HostNamespace,
    NetworkDriver,
    OverlayDriver,
    OwnNamespace,
    SandboxMode,
    SharedNamespace,
    Undo,
)
from .errors import Conflict, Exhausted, InvalidInput, NotFound, TetherError
from .ipam import DEFAULT_POOLS, IPAM, choose_subnet, find_overlap, validate_network_cidrs
from .model import (
    DEFAULT_BRIDGE,
    DEFAULT_NETWORK,
    Container,
    Endpoint,
    Network,
    PortMapping,
    bridge_name_for,
    host_ifname_for,
    mac_for,
    parse_net_mode,
    parse_port_spec,
    validate_mac,
    validate_name,
)
from .store import Store
from .storekeys import CTR_PREFIX, EP_PREFIX, ID_PREFIX, JOIN_PREFIX, NET_PREFIX
from .storekeys import ep_key as _ep_key

if TYPE_CHECKING:
    from .control.agent import OverlayAgent
    from .control.cluster import Cluster
    from .dns import Resolver
    from .firewall import Firewall, NetworkRules, PortRule

__all__ = ["Controller", "NETWORK_OPTIONS"]

log = logging.getLogger("tether.controller")

NETWORK_OPTIONS = ("bridge_name", "mtu", "masquerade", "icc")
EPHEMERAL_PORTS = range(32768, 61000)
_RESERVED_NETWORK_NAMES = ("none", "host", "container", "default")

T = TypeVar("T")


def _valid_ifname(name: str) -> bool:
    return 0 < len(name) <= 15 and all(c not in name for c in "/: \t\n") and name not in (".", "..")


class Controller(DockerDoor):
    """Docker's remote driver and IPAM calls live in ``DockerDoor`` (controller_docker.py)."""

    def __init__(
        self,
        store: Store,
        datapath: Datapath,
        state_dir: str,
        netns_prefix: str = "",
        socket_path: str | None = None,
        firewall: Firewall | None = None,
        resolver: Resolver | None = None,
        cluster: Cluster | None = None,
        barrier_timeout: float = 5.0,
    ) -> None:
        self.store = store
        self.firewall = firewall
        self.resolver = resolver
        self.cluster = cluster
        self.global_ipam = IPAM(cluster.store) if cluster else None
        self.agent: OverlayAgent | None = None
        self.barrier_timeout = barrier_timeout
        self._overlay_gateways: dict[str, str] = {}  # overlay net id -> this host's address on it
        self._barrier_revision = threading.local()
        self.ipam = IPAM(store)
        self.ctx = DriverContext(datapath=datapath, mark=f"tether:{netns_prefix}", netns_prefix=netns_prefix)
        self.state_dir = state_dir
        self.socket_path = socket_path
        self.lock = threading.RLock()
        os.makedirs(os.path.join(state_dir, "containers"), exist_ok=True)

    # ------------------------------------------------------------------ lookups
    def _lookup_network(self, name: str) -> Network | None:
        """A network by name: this host's bridge networks first, then the cluster's overlays."""
        kv = self.store.get(NET_PREFIX + name)
        if kv is None and self.cluster is not None:
            kv = self.cluster.store.get(ckeys.network_key(name))
        return Network.from_dict(kv.value) if kv else None

    def _overlay_networks(self) -> list[Network]:
        if self.cluster is None:
            return []
        return [Network.from_dict(kv.value) for kv in self.cluster.store.list(ckeys.NETWORKS)]

    def _ipam_for(self, network: Network) -> IPAM:
        if network.driver == "overlay":
            assert self.global_ipam is not None
            return self.global_ipam
        return self.ipam

    def _network(self, name: str) -> Network:
        network = self._lookup_network(name)
        if network is None:
            raise NotFound(
                f"network {name!r} not found: create it with `tether network create {name}` "
                "or list networks with `tether network ls`"
            )
        return network

    def _container(self, name: str) -> Container:
        kv = self.store.get(CTR_PREFIX + name)
        if kv is None:
            raise NotFound(f"container {name!r} not found: list containers with `tether ps -a`")
        return Container.from_dict(kv.value)

    def _networks(self) -> list[Network]:
        return [Network.from_dict(kv.value) for kv in self.store.list(NET_PREFIX)]

    def _containers(self) -> list[Container]:
        return [Container.from_dict(kv.value) for kv in self.store.list(CTR_PREFIX)]

    def _endpoints(self, container_id: str | None = None) -> list[Endpoint]:
        prefix = EP_PREFIX + (f"{container_id}/" if container_id else "")
        return [Endpoint.from_dict(kv.value) for kv in self.store.list(prefix)]

    def _driver(self, network: Network) -> NetworkDriver:
        return NETWORK_DRIVERS[network.driver]

    def _sandbox(self, container: Container) -> SandboxMode:
        mode = container.mode
        if container.external:
            return ExternalNamespace()
        if mode.kind == "host":
            return HostNamespace()
        if mode.kind == "container":
            return SharedNamespace(container.netns)
        return OwnNamespace()

    def _index(self, container: Container, undo: Undo) -> None:
        id_key = ID_PREFIX + container.id
        self.store.put(id_key, {"name": container.name})
        undo.push("id index", lambda: self.store.delete(id_key))
        if container.joined:
            join_key = f"{JOIN_PREFIX}{container.joined}/{container.id}"
            self.store.put(join_key, {"name": container.name})
            undo.push("join index", lambda: self.store.delete(join_key))

    def _save(self, container: Container) -> Container:
        self.store.put(CTR_PREFIX + container.name, container.to_dict())
        return container

    def container_dir(self, container: Container) -> str:
        return os.path.join(self.state_dir, "containers", container.id)

    # ------------------------------------------------------------------ networks
    def create_network(
        self,
        name: str,
        driver: str = "bridge",
        subnet: str | None = None,
        gateway: str | None = None,
        ip_range: str | None = None,
        options: dict[str, str] | None = None,
        internal: bool = False,
    ) -> Network:
        validate_name("network", name)
        if name in _RESERVED_NETWORK_NAMES or name == DEFAULT_NETWORK:
            raise Conflict(f"network name {name!r} is reserved: choose another name")
        return self._create_network(name, driver, subnet, gateway, ip_range, options or {}, internal)

    def _create_network(
        self,
        name: str,
        driver: str,
        subnet: str | None,
        gateway: str | None,
        ip_range: str | None,
        options: dict[str, str],
        internal: bool,
        bridge: str | None = None,
    ) -> Network:
        if driver not in NETWORK_DRIVERS:
            raise InvalidInput(f"unknown network driver {driver!r}: use one of {', '.join(sorted(NETWORK_DRIVERS))}")
        known = NETWORK_OPTIONS if driver == "bridge" else ("mtu", "vni")
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise InvalidInput(
                f"unknown network option {unknown[0]!r} for driver {driver}: known options are {', '.join(known)}"
            )
        if driver == "overlay":
            return self._create_overlay(name, subnet, gateway, ip_range, options, internal)
        mtu = 1500
        if "mtu" in options:
            try:
                mtu = int(options["mtu"])
            except ValueError:
                mtu = -1
            if not 68 <= mtu <= 65535:
                raise InvalidInput(f"invalid mtu {options['mtu']!r}: use a whole number from 68 to 65535")
        for flag in ("masquerade", "icc"):
            if flag in options:
                options[flag] = _parse_bool(flag, options[flag])
        if subnet is None and (gateway or ip_range):
            raise InvalidInput("--gateway and --ip-range need --subnet: give the subnet they belong to")
        with self.lock:
            if self._lookup_network(name) is not None:
                raise Conflict(f"network {name!r} already exists: choose another name or remove it first")
            networks = self._networks() + self._overlay_networks()
            net_id = uuid.uuid4().hex
            bridge = options.get("bridge_name") or bridge or bridge_name_for(net_id)
            if not _valid_ifname(bridge):
                raise InvalidInput(f"invalid bridge_name {bridge!r}: use at most 15 characters, no '/', ':' or spaces")
            for other in networks:
                if other.bridge == bridge:
                    raise Conflict(f"bridge {bridge!r} is already used by network {other.name!r}: choose another bridge_name")
            if self.ctx.datapath.link_exists(bridge):
                raise Conflict(f"a device named {bridge!r} already exists on the host: choose another bridge_name")
            in_use = {n.subnet: f"network {n.name!r}" for n in networks}
            subnet, gateway, ip_range = self._place_subnet(subnet, gateway, ip_range, in_use)
            network = Network(
                id=net_id,
                name=name,
                driver=driver,
                subnet=subnet,
                gateway=gateway,
                bridge=bridge,
                ip_range=ip_range,
                mtu=mtu,
                internal=internal,
                options=dict(options),
                created=time.time(),
            )
            undo = Undo()
            try:
                self.store.put(NET_PREFIX + name, network.to_dict())
                undo.push(f"record of network {name}", lambda: self.store.delete(NET_PREFIX + name))
                self._driver(network).create(self.ctx, network, undo)
                if not internal:
                    self._enable_uplink_forwarding()
                if self.firewall is not None:
                    rules = self._network_rules(network)
                    self.firewall.add_network(rules)
                    undo.push(f"firewall of network {name}", lambda: self.firewall.remove_network(rules))  # type: ignore[union-attr]
            except BaseException:
                self._log_undo(undo.unwind())
                raise
            return network

    def _place_subnet(
        self,
        subnet: str | None,
        gateway: str | None,
        ip_range: str | None,
        in_use: dict[str, str],
        pools: list[tuple[str, int]] = DEFAULT_POOLS,
    ) -> tuple[str, str, str | None]:
        """A requested subnet, checked against ``in_use`` (cidr -> owner) and this host's
        routes and addresses; or, with none requested, the first free one of ``pools``.
        Returns (subnet, gateway, ip_range), normalised."""
        if subnet is None:
            subnet = choose_subnet(list(in_use) + self.ctx.datapath.host_networks(), pools)
            return validate_network_cidrs(subnet, None, None)
        subnet, gateway, ip_range = validate_network_cidrs(subnet, gateway, ip_range)
        owner = find_overlap(subnet, in_use) or find_overlap(
            subnet, {c: "a route or address on this host" for c in self.ctx.datapath.host_networks()}
        )
        if owner is not None:
            raise Conflict(f"subnet {subnet} overlaps {owner}: choose a subnet that does not overlap")
        return subnet, gateway, ip_range

    def _enable_uplink_forwarding(self) -> None:
        """Replies and published-port traffic arrive on the uplink: it must forward too."""
        for ifname in self.ctx.datapath.uplinks():
            self.ctx.datapath.set_interface_sysctl(ifname, "forwarding", "1")

    def _network_rules(self, network: Network) -> NetworkRules:
        from .firewall import NetworkRules

        return NetworkRules(
            bridge=network.bridge,
            subnet=network.subnet,
            masquerade=network.options.get("masquerade", "true") == "true" and not network.internal,
            internal=network.internal,
            icc=network.options.get("icc", "true") == "true",
            routed=network.driver == "overlay",
        )

    def _port_rules(self, container: Container, endpoint: Endpoint | None = None) -> list[PortRule]:
        """Firewall inputs for a container's published ports, aimed at its address on the
        network it was started on."""
        from .firewall import PortRule

        if not container.ports:
            return []
        if endpoint is None and container.external:
            eps = self._endpoints(container.id)
            endpoint = eps[0] if eps else None
            if endpoint is None:
                return []
        if endpoint is None:
            mode = container.mode
            if mode.kind != "network" or mode.target is None:
                return []
            kv = self.store.get(NET_PREFIX + mode.target)
            if kv is None:
                return []
            ep_kv = self.store.get(_ep_key(container.id, kv.value["id"]))
            if ep_kv is None:
                return []
            endpoint = Endpoint.from_dict(ep_kv.value)
        return [
            PortRule(
                protocol=p.protocol,
                host_ip=p.host_ip,
                host_port=p.host_port,
                container_ip=endpoint.address,
                container_port=p.container_port,
            )
            for p in container.port_mappings
        ]

    def desired_firewall(self) -> tuple[list[NetworkRules], list[PortRule]]:
        """The whole firewall state, derived from the store (the healer's and reconcile's input)."""
        networks = [self._network_rules(n) for n in self._networks()]
        networks += [self._network_rules(n) for n in self._overlay_networks() if n.id in self._overlay_gateways]
        ports: list[PortRule] = []
        for c in self._containers():
            if c.state != "creating":
                ports += self._port_rules(c)
        return networks, ports

    # ------------------------------------------------------------------ overlay networks
    def _create_overlay(
        self,
        name: str,
        subnet: str | None,
        gateway: str | None,
        ip_range: str | None,
        options: dict[str, str],
        internal: bool,
    ) -> Network:
        if self.cluster is None:
            raise InvalidInput(
                "-d overlay needs a cluster store: start the daemon with "
                "--cluster-store etcd://HOST:2379 --cluster-advertise IP"
            )
        gstore = self.cluster.store
        requested_vni: int | None = None
        if "vni" in options:
            try:
                requested_vni = int(options["vni"])
            except ValueError:
                requested_vni = -1
            if not ckeys.VNI_MIN <= requested_vni <= ckeys.VNI_MAX:
                raise InvalidInput(f"invalid vni {options['vni']!r}: use a number from {ckeys.VNI_MIN} to {ckeys.VNI_MAX}")
        with self.lock:
            if self._lookup_network(name) is not None:
                raise Conflict(f"network {name!r} already exists: choose another name or remove it first")
            networks = self._networks() + self._overlay_networks()
            in_use = {n.subnet: f"network {n.name!r}" for n in networks}
            subnet, gateway, ip_range = self._place_subnet(subnet, gateway, ip_range, in_use, [("10.0.0.0/8", 24)])
            net_id = uuid.uuid4().hex
            undo = Undo()
            try:
                vni = self._claim_vni(name, requested_vni)
                undo.push(f"vni {vni}", lambda: gstore.delete(ckeys.vni_key(vni)))
                network = Network(
                    id=net_id,
                    name=name,
                    driver="overlay",
                    subnet=subnet,
                    gateway=gateway,
                    bridge=f"tov-{vni}",
                    ip_range=ip_range,
                    mtu=int(options.get("mtu", 1450)),
                    internal=internal,
                    options={**options, "vni": str(vni)},
                    created=time.time(),
                )
                if not gstore.compare_and_swap(ckeys.network_key(name), 0, network.to_dict()):
                    raise Conflict(f"network {name!r} already exists in the cluster: choose another name")
                undo.push(f"record of network {name}", lambda: gstore.delete(ckeys.network_key(name)))
                self._ensure_overlay(network)
            except BaseException:
                self._log_undo(undo.unwind())
                raise
            return network

    def _claim_vni(self, name: str, requested: int | None) -> int:
        assert self.cluster is not None
        gstore = self.cluster.store
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

    def _ensure_overlay(self, network: Network) -> str:
        """This host's side of an overlay network: its own address on it (published like an
        endpoint, so every host and container reaches it), the bridge and the VXLAN device.
        Idempotent; the agent calls it for every overlay network in the cluster."""
        assert self.cluster is not None and self.global_ipam is not None
        gstore = self.cluster.store
        node = self.cluster.node
        with self.lock:
            key = ckeys.endpoint_key(network.id, f"host-{node}")
            kv = gstore.get(key)
            if kv is not None:
                address = kv.value["address"]
            else:
                address = self.global_ipam.allocate(network, f"node:{node}")
                gstore.put(
                    key,
                    {
                        "kind": "host",
                        "node": node,
                        "vtep": self.cluster.advertise,
                        "address": address,
                        "mac": mac_for(address),
                        "network_id": network.id,
                        "container": None,
                        "container_id": None,
                    },
                )
            driver = NETWORK_DRIVERS["overlay"]
            assert isinstance(driver, OverlayDriver)
            vxlan = driver.ensure_host(self.ctx, network, address, mac_for(address), self.cluster.advertise)
            self._enable_uplink_forwarding()
            self._overlay_gateways[network.id] = address
            if self.firewall is not None:
                self.firewall.add_network(self._network_rules(network))
            return vxlan

    def _teardown_overlay(self, record: dict[str, Any]) -> None:
        """Remove this host's side of an overlay network that the cluster no longer has."""
        assert self.cluster is not None and self.global_ipam is not None
        network = Network.from_dict(record)
        with self.lock:
            errors = NETWORK_DRIVERS["overlay"].delete(self.ctx, network)
            if self.firewall is not None:
                errors += _collect(lambda: self.firewall.remove_network(self._network_rules(network)))  # type: ignore[union-attr]
            address = self._overlay_gateways.pop(network.id, None)
            key = ckeys.endpoint_key(network.id, f"host-{self.cluster.node}")
            errors += _collect(lambda: self.cluster.store.delete(key))  # type: ignore[union-attr]
            if address:
                errors += _collect(lambda: self.global_ipam.release(network.id, address))  # type: ignore[union-attr]
            self._log_undo(errors)

    def _owns_overlay_endpoint(self, record: dict[str, Any]) -> bool:
        kv = self.store.get(_ep_key(record.get("container_id") or "", record.get("network_id") or ""))
        return kv is not None and kv.value.get("address") == record.get("address")

    def _reclaim_node(self, node: str) -> None:
        """A host stayed down past the grace period: withdraw its endpoints, free its addresses."""
        assert self.cluster is not None and self.global_ipam is not None
        gstore = self.cluster.store
        for kv in gstore.list(ckeys.ENDPOINTS):
            if kv.value.get("node") == node:
                self.global_ipam.release(kv.value["network_id"], kv.value["address"])
                gstore.delete(kv.key)
        gstore.delete(ckeys.node_info_key(node))
        gstore.delete(ckeys.applied_key(node))

    def agent_hooks(self) -> Any:
        from .control.agent import AgentHooks

        return AgentHooks(
            ensure_network=lambda rec: self._ensure_overlay(Network.from_dict(rec)),
            teardown_network=self._teardown_overlay,
            owns_endpoint=self._owns_overlay_endpoint,
            reclaim_node=self._reclaim_node,
        )

    def _overlay_users(self, network: Network) -> list[str]:
        assert self.cluster is not None
        return sorted(
            f"{kv.value.get('container')} on {kv.value.get('node')}"
            for kv in self.cluster.store.list(f"{ckeys.ENDPOINTS}{network.id}/")
            if kv.value.get("kind") == "container"
        )

    def _remove_overlay(self, network: Network) -> None:
        assert self.cluster is not None and self.global_ipam is not None
        users = self._overlay_users(network)
        if users:
            raise Conflict(f"network {network.name!r} has containers attached ({', '.join(users)}): remove them first")
        gstore = self.cluster.store
        gstore.delete(ckeys.network_key(network.name))
        self._teardown_overlay(network.to_dict())
        if self.agent is not None:
            self.agent.forget_network(network.id)
        for kv in gstore.list(f"{ckeys.ENDPOINTS}{network.id}/"):
            gstore.delete(kv.key)
        self.global_ipam.drop_network(network.id)
        gstore.delete(ckeys.vni_key(int(network.options["vni"])))

    def nodes(self) -> list[dict[str, Any]]:
        if self.cluster is None:
            raise InvalidInput("this daemon has no cluster store: start it with --cluster-store etcd://HOST:2379")
        return self.cluster.nodes()

    def default_network(self) -> Network:
        """The network ``bridge`` (device tether0), created on first use like Docker's."""
        with self.lock:
            kv = self.store.get(NET_PREFIX + DEFAULT_NETWORK)
            if kv is not None:
                return Network.from_dict(kv.value)
            return self._create_network(DEFAULT_NETWORK, "bridge", None, None, None, {}, False, bridge=DEFAULT_BRIDGE)

    def _resolve_network(self, name: str) -> Network:
        if name == DEFAULT_NETWORK:
            return self.default_network()
        return self._network(name)

    def list_networks(self) -> list[dict[str, Any]]:
        counts: dict[str, int] = {}
        for ep in self._endpoints():
            counts[ep.network_id] = counts.get(ep.network_id, 0) + 1
        out = [dict(n.to_dict(), containers=counts.get(n.id, 0), scope="local") for n in self._networks()]
        for n in self._overlay_networks():
            out.append(dict(n.to_dict(), containers=len(self._overlay_users(n)), scope="global"))
        return out

    def inspect_network(self, name: str) -> dict[str, Any]:
        network = self._network(name)
        names = {c.id: c.name for c in self._containers()}
        attached = {
            names.get(ep.container_id, ep.container_id): {
                "ifname": ep.ifname,
                "address": ep.cidr,
                "mac": ep.mac,
                "host_ifname": ep.host_ifname,
            }
            for ep in self._endpoints()
            if ep.network_id == network.id
        }
        if network.driver == "overlay" and self.cluster is not None:
            attached = {}
            hosts = {}
            for kv in self.cluster.store.list(f"{ckeys.ENDPOINTS}{network.id}/"):
                v = kv.value
                if v.get("kind") == "container":
                    attached[f"{v.get('container')}"] = {"address": f"{v['address']}/{network.prefixlen}",
                                                         "mac": v["mac"], "node": v["node"]}
                else:
                    hosts[v["node"]] = {"address": v["address"], "vtep": v["vtep"]}
            return dict(network.to_dict(), containers=attached, hosts=hosts, scope="global")
        return dict(network.to_dict(), containers=attached, scope="local")

    def remove_network(self, name: str) -> None:
        with self.lock:
            network = self._network(name)
            if name == DEFAULT_NETWORK:
                raise Conflict("bridge is the predefined default network and cannot be removed")
            if network.driver == "overlay":
                self._remove_overlay(network)
                return
            users = self._network_users(network)
            if users:
                raise Conflict(
                    f"network {name!r} has containers attached ({', '.join(users)}): "
                    f"disconnect or remove them first"
                )
            errors = self._driver(network).delete(self.ctx, network)
            if self.firewall is not None:
                errors += _collect(lambda: self.firewall.remove_network(self._network_rules(network)))  # type: ignore[union-attr]
            if self.resolver is not None:
                self.resolver.drop_network(network.name)
            self.ipam.drop_network(network.id)
            self.store.delete(NET_PREFIX + name)
            self._log_undo(errors)

    def _network_users(self, network: Network) -> list[str]:
        names = {c.id: c.name for c in self._containers()}
        return sorted(names.get(ep.container_id, ep.container_id) for ep in self._endpoints() if ep.network_id == network.id)

    def prune_networks(self) -> list[str]:
        removed = []
        with self.lock:
            for network in self._networks():
                if network.name != DEFAULT_NETWORK and not self._network_users(network):
                    self.remove_network(network.name)
                    removed.append(network.name)
        return removed

    # ------------------------------------------------------------------ containers
    def create_container(
        self,
        cmd: list[str],
        name: str | None = None,
        net: str | None = None,
        ip: str | None = None,
        hostname: str | None = None,
        detach: bool = False,
        auto_remove: bool = False,
        rootfs: str | None = None,
        publish: list[str] | None = None,
        aliases: list[str] | None = None,
        lagging: list[str] | None = None,
    ) -> Container:
        """Validate everything, build the sandbox and its endpoint, record it; start it if
        ``detach`` (the CLI starts foreground containers itself and reports the pid)."""
        if not cmd:
            raise InvalidInput("no command given: put the command after `--`, as in `tether run -- sleep 60`")
        if name is None:
            name = f"t{uuid.uuid4().hex[:11]}"
        validate_name("container", name)
        mode = parse_net_mode(net)
        if ip is not None:
            if mode.kind != "network":
                raise InvalidInput(f"--ip needs a network to attach to, not --net {mode}")
            try:
                ipaddress.IPv4Address(ip)
            except ValueError:
                raise InvalidInput(f"invalid --ip {ip!r}: give an IPv4 address such as 10.0.0.5") from None
        if hostname is not None and not (0 < len(hostname) <= 63 and all(c.isalnum() or c in "-." for c in hostname)):
            raise InvalidInput(f"invalid --hostname {hostname!r}: use letters, digits, '-' and '.', at most 63")
        if rootfs is not None and not os.path.isdir(rootfs):
            raise InvalidInput(f"--rootfs {rootfs!r} is not a directory")
        mappings = [m for spec in publish or [] for m in parse_port_spec(spec)]
        if mappings and mode.kind != "network":
            raise InvalidInput(f"-p needs a bridge network: --net {mode} has no address of its own to publish")
        aliases = [validate_name("alias", a) for a in aliases or []]
        if aliases and mode.kind != "network":
            raise InvalidInput(f"--network-alias needs a network: --net {mode} has none")
        with self.lock:
            if self.store.get(CTR_PREFIX + name) is not None:
                raise Conflict(f"container name {name!r} is already in use: choose another name or remove it first")
            network: Network | None = None
            joined: Container | None = None
            if mode.kind == "network":
                assert mode.target is not None
                network = self._resolve_network(mode.target)
                if ip is not None:
                    self._check_requested_ip(network, ip)
                if mappings and network.internal:
                    raise InvalidInput(f"network {network.name!r} is internal: it has no published ports")
                mappings = self._check_ports(mappings)
                self._check_aliases(network, [name, *aliases], name)
            elif mode.kind == "container":
                assert mode.target is not None
                joined = self._refresh(self._container(mode.target))
                if joined.state == "creating":
                    raise Conflict(f"container {joined.name!r} is still being created: try again")
                if joined.joined is not None:
                    # chain to the owner of the namespace, as Docker does
                    joined = self._container_by_id(joined.joined) or joined
            container = Container(
                id=uuid.uuid4().hex,
                name=name,
                hostname=hostname or name,
                net_mode=str(mode),
                netns=joined.netns if joined else None,
                cmd=list(cmd),
                state="creating",
                detach=detach,
                auto_remove=auto_remove,
                joined=joined.id if joined else None,
                rootfs=rootfs,
                created=time.time(),
                ports=[m.to_dict() for m in mappings],
            )
            undo = Undo()
            try:
                self._save(container)
                undo.push(f"record of container {name}", lambda: self.store.delete(CTR_PREFIX + name))
                self._index(container, undo)
                os.makedirs(self.container_dir(container), exist_ok=True)
                undo.push("state dir", lambda: shutil.rmtree(self.container_dir(container), ignore_errors=True))
                netns = self._sandbox(container).setup(self.ctx, container, undo)
                container = container.with_(netns=netns)
                endpoint = None
                if network is not None:
                    assert netns is not None
                    endpoint = self._attach(container, network, ip, undo, default_route=True, aliases=aliases)
                if self.firewall is not None and endpoint is not None and container.ports:
                    rules = self._port_rules(container, endpoint)
                    self.firewall.add_ports(rules)
                    undo.push("published ports", lambda: self.firewall.remove_ports(rules))  # type: ignore[union-attr]
                self._serve_dns(container, undo)
                container = self._save(container.with_(state="created"))
            except BaseException:
                self._barrier_revision.value = 0
                self._log_undo(undo.unwind())
                raise
            undo.commit()
        behind = self._wait_barrier()
        if lagging is not None:
            lagging.extend(behind)
        if detach:
            try:
                container = self.start_detached(container.name)
            except TetherError:
                self.remove_container(container.name, force=True)
                raise
        return container

    def _joiners(self, container: Container) -> list[Container]:
        out = []
        for kv in self.store.list(f"{JOIN_PREFIX}{container.id}/"):
            c = self.store.get(CTR_PREFIX + kv.value["name"])
            if c is not None:
                out.append(Container.from_dict(c.value))
        return out

    def _container_by_id(self, container_id: str) -> Container | None:
        kv = self.store.get(ID_PREFIX + container_id) if container_id else None
        if kv is not None:
            c = self.store.get(CTR_PREFIX + kv.value["name"])
            if c is not None and c.value.get("id") == container_id:
                return Container.from_dict(c.value)
        for c in self._containers():  # records written before the index existed
            if c.id == container_id:
                return c
        return None

    def _check_requested_ip(self, network: Network, ip: str) -> None:
        if ipaddress.IPv4Address(ip) not in ipaddress.ip_network(network.subnet):
            raise InvalidInput(f"--ip {ip} is outside network {network.name!r} ({network.subnet}): pick an address inside it")
        if ip == network.gateway:
            raise Conflict(f"--ip {ip} is the gateway of network {network.name!r}: pick another address")
        holder = self._ipam_for(network).owner(network.id, ip)
        if holder is not None:
            owner = self._container_by_id(holder)
            raise Conflict(
                f"address {ip} on network {network.name!r} is in use by "
                f"{'container ' + repr(owner.name) if owner else holder}: pick another address"
            )

    def _attach(
        self,
        container: Container,
        network: Network,
        ip: str | None,
        undo: Undo,
        default_route: bool | None,
        aliases: list[str] | None = None,
        ifname: str | None = None,
        mac: str | None = None,
    ) -> Endpoint:
        """``default_route`` None: the route only if the namespace has none yet (a later
        network, or a runtime's namespace), found out in the same trip into it."""
        assert container.netns is not None
        if ifname is None:
            used = {ep.ifname for ep in self._endpoints(container.id)}
            index = 0
            while f"eth{index}" in used:
                index += 1
            ifname = f"eth{index}"
        endpoint = self._new_endpoint(container, network, ip, undo, default_route is not False, ifname, mac, aliases)
        key = _ep_key(container.id, network.id)
        routed = self._driver(network).attach(
            self.ctx, network, endpoint, container.netns, undo, keep_existing_default=default_route is None
        )
        if endpoint.default_route and not routed:  # the namespace kept the route it had
            endpoint = Endpoint.from_dict(dict(endpoint.to_dict(), default_route=False))
            self.store.put(key, endpoint.to_dict())
        if network.driver == "overlay":
            self._publish_overlay_endpoint(container, network, endpoint, undo)
        self._add_dns_records(container, network, endpoint, undo)
        return endpoint

    def _new_endpoint(
        self,
        container: Container,
        network: Network,
        ip: str | None,
        undo: Undo,
        default_route: bool,
        ifname: str,
        mac: str | None = None,
        aliases: list[str] | None = None,
        leased: bool = False,
    ) -> Endpoint:
        """Lease the address (``ip`` is already ``container``'s when ``leased``) and write
        the endpoint's record, both undoable; no kernel work yet."""
        ipam = self._ipam_for(network)
        address = ip if leased and ip else ipam.allocate(network, container.id, ip)
        undo.push(f"lease {address}", lambda: ipam.release(network.id, address))
        endpoint = Endpoint(
            id=uuid.uuid4().hex,
            network_id=network.id,
            network=network.name,
            container_id=container.id,
            ifname=ifname,
            host_ifname=host_ifname_for(container.id, network.id),
            address=address,
            prefixlen=network.prefixlen,
            gateway=self._local_gateway(network),
            mac=mac or mac_for(address),
            default_route=default_route and not network.internal,  # internal: no way out at all
            aliases=list(aliases or []),
        )
        key = _ep_key(container.id, network.id)
        self.store.put(key, endpoint.to_dict())
        undo.push(f"record of endpoint {endpoint.ifname}", lambda: self.store.delete(key))
        return endpoint

    def _local_gateway(self, network: Network) -> str:
        """The gateway of this host's containers on ``network``; for an overlay, this
        host's own address on it, with the host side built (once per network)."""
        if network.driver != "overlay":
            return network.gateway
        if network.id not in self._overlay_gateways:
            self._ensure_overlay(network)
        return self._overlay_gateways[network.id]

    def _publish_overlay_endpoint(self, container: Container, network: Network, endpoint: Endpoint, undo: Undo) -> None:
        """Tell every host where the endpoint is; its revision is what the barrier waits for."""
        assert self.cluster is not None
        gstore = self.cluster.store
        key = ckeys.endpoint_key(network.id, endpoint.id)
        revision = gstore.put(
            key,
            {
                "kind": "container",
                "node": self.cluster.node,
                "vtep": self.cluster.advertise,
                "address": endpoint.address,
                "mac": endpoint.mac,
                "network_id": network.id,
                "container": container.name,
                "container_id": container.id,
            },
        )
        undo.push(f"cluster record of {endpoint.ifname}", lambda: gstore.delete(key))
        self._barrier_revision.value = max(getattr(self._barrier_revision, "value", 0), revision)

    def _withdraw_overlay_endpoint(self, endpoint: Endpoint) -> list[str]:
        """Tell every host the endpoint is gone (the inverse of the publish above)."""
        assert self.cluster is not None
        gstore = self.cluster.store
        return _collect(lambda: gstore.delete(ckeys.endpoint_key(endpoint.network_id, endpoint.id)))

    def _wait_barrier(self) -> list[str]:
        """After an overlay endpoint was published: wait until every live host programmed it."""
        revision = getattr(self._barrier_revision, "value", 0)
        self._barrier_revision.value = 0
        if not revision or self.cluster is None:
            return []
        try:
            return self.cluster.wait_applied(revision, self.barrier_timeout)
        except TetherError as exc:
            log.warning("barrier: %s", exc)
            return ["(cluster store unreachable)"]

    # ------------------------------------------------------------------ ports and names
    def _check_ports(self, mappings: list[PortMapping]) -> list[PortMapping]:
        """Validate published ports against the host and every container; pick free host
        ports for ``-p CPORT``. Returns the mappings with every host port concrete."""
        if not mappings:
            return mappings
        host_addrs = set(self.ctx.datapath.host_addresses())
        host_ports = self.ctx.datapath.host_ports()
        taken: list[tuple[PortMapping, str]] = [
            (p, c.name) for c in self._containers() for p in c.port_mappings
        ]
        chosen: list[PortMapping] = []

        def clash(p: PortMapping, q: PortMapping) -> bool:
            same_ip = p.host_ip is None or q.host_ip is None or p.host_ip == q.host_ip
            return p.protocol == q.protocol and p.host_port == q.host_port and same_ip

        for m in mappings:
            if m.host_ip is not None and m.host_ip not in host_addrs:
                raise InvalidInput(
                    f"-p {m}: {m.host_ip} is not an address of this host: use one of {', '.join(sorted(host_addrs))}"
                )
            if m.host_port == 0:
                for port in EPHEMERAL_PORTS:
                    candidate = PortMapping(m.protocol, port, m.container_port, m.host_ip)
                    if not any(clash(candidate, q) for q, _ in taken) and not any(
                        clash(candidate, q) for q in chosen
                    ) and host_ports.holder(m.protocol, port, m.host_ip) is None:
                        m = candidate
                        break
                else:
                    raise Exhausted(f"-p {m}: no free host port left between 32768 and 60999")
            for q in chosen:
                if clash(m, q):
                    raise Conflict(f"-p {m}: host port {m.host_port}/{m.protocol} is given twice")
            for q, owner in taken:
                if clash(m, q):
                    raise Conflict(
                        f"-p {m}: host port {m.host_port}/{m.protocol} is already published by container "
                        f"{owner!r}: pick another host port"
                    )
            holder = host_ports.holder(m.protocol, m.host_port, m.host_ip)
            if holder is not None:
                raise Conflict(
                    f"-p {m}: host port {m.host_port}/{m.protocol} is held by {holder}: pick another host port"
                )
            chosen.append(m)
        return chosen

    def _check_aliases(self, network: Network, names: list[str], own_name: str) -> None:
        """A name or alias may not shadow another container's name on the same network."""
        if len(names) < 2:
            return  # no aliases: nothing to check (and no scan of every container)
        others = {
            c.name
            for c in self._containers()
            if c.name != own_name and self.store.get(_ep_key(c.id, network.id)) is not None
        }
        for alias in names[1:]:
            if alias in others:
                raise Conflict(
                    f"alias {alias!r} is the name of another container on network {network.name!r}: pick another alias"
                )

    def _dns_names(self, container: Container, endpoint: Endpoint) -> list[str]:
        return [container.name, *endpoint.aliases]

    def _add_dns_records(self, container: Container, network: Network, endpoint: Endpoint, undo: Undo) -> None:
        if self.resolver is None or network.name == DEFAULT_NETWORK:
            return  # the default network has no names, as in Docker
        resolver = self.resolver
        for name in self._dns_names(container, endpoint):
            resolver.add_record(network.name, name, endpoint.address)
            undo.push(f"name {name}", lambda n=name: resolver.remove_record(network.name, n, endpoint.address))  # type: ignore[misc]
        self._set_dns_view(container)

    def _remove_dns_records(self, container: Container, endpoint: Endpoint) -> None:
        if self.resolver is None:
            return
        for name in self._dns_names(container, endpoint):
            self.resolver.remove_record(endpoint.network, name, endpoint.address)

    def _set_dns_view(self, container: Container) -> None:
        """Which networks' names a sandbox sees: the networks of its namespace's owner."""
        if self.resolver is None:
            return
        owner = container.joined or container.id
        self.resolver.set_networks(owner, [ep.network for ep in self._endpoints(owner)])

    def _serve_dns(self, container: Container, undo: Undo) -> None:
        """Every own namespace gets the embedded resolver on 127.0.0.11 and a resolv.conf
        pointing at it (host mode keeps the host's resolv.conf)."""
        if self.resolver is None or container.netns is None or container.joined is not None:
            return
        resolver = self.resolver
        resolver.serve(container.id, self.ctx.datapath.netns_path(container.netns))
        undo.push("resolver", lambda: resolver.unserve(container.id))
        self._set_dns_view(container)

    def _resolv_conf(self, container: Container) -> str | None:
        if self.resolver is None or container.netns is None:
            return None
        from .dns import resolv_conf_text

        path = os.path.join(self.container_dir(container), "resolv.conf")
        if not os.path.exists(path):
            with open(path, "w") as fh:
                fh.write(resolv_conf_text())
        return path

    def _detach(self, container: Container, endpoint: Endpoint, kernel_gone: bool = False) -> list[str]:
        """Undo one endpoint. ``kernel_gone``: its namespace was just deleted with nothing
        left inside, so the kernel removes the veth pair by itself (deleting it by hand
        costs 20-40 ms of the caller's time for the same result)."""
        errors: list[str] = []
        network = self._lookup_network(endpoint.network)
        if self.firewall is not None and container.ports and (
            container.mode.target == endpoint.network or container.external
        ):
            errors += _collect(lambda: self.firewall.remove_ports(self._port_rules(container, endpoint)))  # type: ignore[union-attr]
        errors += _collect(lambda: self._remove_dns_records(container, endpoint))
        if kernel_gone:
            pass
        elif network is not None:
            errors += self._driver(network).detach(self.ctx, network, endpoint, container.netns)
        else:
            errors += _collect(lambda: self.ctx.datapath.detach_veth(endpoint.host_ifname))
        if network is not None and network.driver == "overlay" and self.cluster is not None:
            errors += self._withdraw_overlay_endpoint(endpoint)
            errors += _collect(lambda: self._ipam_for(network).release(endpoint.network_id, endpoint.address))
        else:
            errors += _collect(lambda: self.ipam.release(endpoint.network_id, endpoint.address))
        errors += _collect(lambda: self.store.delete(_ep_key(container.id, endpoint.network_id)))
        errors += _collect(lambda: self._set_dns_view(container))
        return errors

    def start_detached(self, name: str) -> Container:
        container = self._container(name)
        spec = self._process_spec(container, detach=True)
        pid, start_time = runtime.spawn_detached(spec)
        with self.lock:
            current = self._container(name)
            return self._save(current.with_(state="running", pid=pid, start_time=start_time, exit_code=None))

    def _process_spec(self, container: Container, detach: bool) -> runtime.ProcessSpec:
        cdir = self.container_dir(container)
        on_exit = None
        if detach and container.auto_remove and self.socket_path:
            on_exit = [sys.executable, "-m", "tether.cli", "--socket", self.socket_path, "reap", container.id]
        return runtime.ProcessSpec(
            cmd=container.cmd,
            state_dir=cdir,
            netns_path=self.ctx.datapath.netns_path(container.netns) if container.netns else None,
            hostname=container.hostname,
            log_path=os.path.join(cdir, "log") if detach else None,
            rootfs=container.rootfs,
            resolv_conf=self._resolv_conf(container),
            on_exit=on_exit,
        )

    def process_spec(self, name: str) -> dict[str, Any]:
        """What a front end needs to run a created container in the foreground itself."""
        spec = self._process_spec(self._container(name), detach=False)
        return {k: getattr(spec, k) for k in spec.__dataclass_fields__}

    def mark_started(self, name: str, pid: int, start_time: int) -> Container:
        with self.lock:
            return self._save(self._container(name).with_(state="running", pid=pid, start_time=start_time))

    def mark_exited(self, name: str, code: int) -> Container:
        with self.lock:
            return self._save(self._container(name).with_(state="exited", exit_code=code))

    def _refresh(self, container: Container) -> Container:
        """Derive running/exited from the process itself; the record only caches it."""
        if container.state == "running" and not runtime.process_alive(container.pid, container.start_time):
            code = runtime.read_exit_code(self.container_dir(container))
            deadline = time.monotonic() + 0.5
            while code is None and time.monotonic() < deadline:  # the shim writes it just after
                time.sleep(0.01)
                code = runtime.read_exit_code(self.container_dir(container))
            container = self._save(container.with_(state="exited", exit_code=code if code is not None else -1))
        return container

    def list_containers(self, all_: bool = False) -> list[dict[str, Any]]:
        with self.lock:
            out = []
            for c in self._containers():
                c = self._refresh(c)
                # another runtime's attachments (CNI, Docker) are live while they exist
                if all_ or c.state in ("running", "external"):
                    out.append(self._describe(c))
            return out

    def inspect_container(self, name: str) -> dict[str, Any]:
        with self.lock:
            return self._describe(self._refresh(self._container(name)))

    def _describe(self, container: Container) -> dict[str, Any]:
        owner = container
        if container.joined:
            owner = self._container_by_id(container.joined) or container
        networks = {
            ep.network: {
                "ifname": ep.ifname,
                "address": ep.address,
                "prefixlen": ep.prefixlen,
                "gateway": ep.gateway,
                "mac": ep.mac,
                "host_ifname": ep.host_ifname,
                "network_id": ep.network_id,
            }
            for ep in self._endpoints(owner.id)
        }
        return dict(
            container.to_dict(),
            networks=networks,
            netns_path=self.ctx.datapath.netns_path(container.netns) if container.netns else None,
            log_path=os.path.join(self.container_dir(container), "log"),
        )

    def logs(self, name: str) -> str:
        path = os.path.join(self.container_dir(self._container(name)), "log")
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    def stop_container(self, name: str, timeout: float = 10.0) -> Container:
        container = self.inspect_container(name)
        if container["state"] == "running":
            runtime.stop_process(container["pid"], container["start_time"], timeout)
        with self.lock:
            return self._refresh(self._container(name))

    def remove_container(self, name: str, force: bool = False) -> None:
        with self.lock:
            container = self._refresh(self._container(name))
            if container.state == "running" and not force:
                raise Conflict(f"container {name!r} is running: stop it first (`tether stop {name}`) or use `tether rm -f`")
            joiners = [c.name for c in map(self._refresh, self._joiners(container)) if c.state == "running"]
            if joiners and not force:
                raise Conflict(
                    f"container {name!r} shares its network namespace with running "
                    f"{', '.join(joiners)}: remove {'them' if len(joiners) > 1 else 'it'} first, or use `tether rm -f`"
                )
        if container.state == "running":
            runtime.stop_process(container.pid, container.start_time, 0)
        with self.lock:
            container = self._container(name)
            links = [ep.host_ifname for ep in self._endpoints(container.id)]
            self._log_undo(self._teardown(container))
        # The kernel removes the veths with the namespace a few tens of ms later; `rm`
        # returns once they are gone (outside the lock: other requests go on meanwhile).
        self._wait_links_gone(links)

    def _wait_links_gone(self, links: list[str], timeout: float = 1.0) -> None:
        deadline = time.monotonic() + timeout
        while links and time.monotonic() < deadline:
            links = [link for link in links if self.ctx.datapath.link_exists(link)]
            if links:
                time.sleep(0.005)

    def _teardown(self, container: Container) -> list[str]:
        """Remove everything a container holds. Keeps going past errors; idempotent."""
        errors: list[str] = []
        sandbox = self._sandbox(container)
        # Deleting the namespace first takes its veth ends with it, which is much faster
        # than deleting links one by one; detach then only finds leftovers.
        if self.resolver is not None and container.joined is None:
            errors += _collect(lambda: self.resolver.unserve(container.id))  # type: ignore[union-attr]
        netns_errors = sandbox.teardown(self.ctx, container)
        errors += netns_errors
        # Nothing keeps the namespace alive (its process is dead, no joiner runs): the veth
        # pairs go with it. Otherwise (a joiner still runs) they must be deleted by hand.
        kernel_gone = (
            sandbox.owns_netns()
            and not netns_errors
            and not runtime.process_alive(container.pid, container.start_time)
            and not any(runtime.process_alive(c.pid, c.start_time) for c in self._joiners(container))
        )
        for ep in self._endpoints(container.id):
            errors += self._detach(container, ep, kernel_gone=kernel_gone)
        # (each endpoint's lease went with _detach; a lease left by a crash mid-attach is
        # released by reconcile's orphan sweep, not by a scan of every lease here)
        shutil.rmtree(self.container_dir(container), ignore_errors=True)
        errors += _collect(lambda: self.store.delete(ID_PREFIX + container.id))
        if container.joined:
            errors += _collect(lambda: self.store.delete(f"{JOIN_PREFIX}{container.joined}/{container.id}"))
        errors += _collect(lambda: self.store.delete(CTR_PREFIX + container.name))
        return errors

    def reap(self, container_id: str) -> bool:
        """Called when a detached --rm container exits: remove it if it really has."""
        with self.lock:
            container = self._container_by_id(container_id)
            if container is None or not container.auto_remove:
                return False
            container = self._refresh(container)
            if container.state != "exited":
                return False
            self._log_undo(self._teardown(container))
            return True

    def reap_exited(self) -> None:
        """Remove detached --rm containers that exited (a foreground --rm is removed by the
        CLI that ran it)."""
        # Scan without the lock (reads only); take it only to remove what has exited, so
        # a host with a thousand containers does not stall requests every 2 s.
        candidates = [
            c.name
            for c in self._containers()
            if c.auto_remove and c.detach and c.state == "running" and not runtime.process_alive(c.pid, c.start_time)
        ]
        for name in candidates:
            with self.lock:
                kv = self.store.get(CTR_PREFIX + name)
                if kv is None:
                    continue
                c = self._refresh(Container.from_dict(kv.value))
                if c.auto_remove and c.state == "exited":
                    self._log_undo(self._teardown(c))

    # ------------------------------------------------------------------ connect
    def connect(
        self,
        network_name: str,
        container_name: str,
        ip: str | None = None,
        aliases: list[str] | None = None,
        lagging: list[str] | None = None,
    ) -> Endpoint:
        aliases = [validate_name("alias", a) for a in aliases or []]
        if ip is not None:
            try:
                ipaddress.IPv4Address(ip)
            except ValueError:
                raise InvalidInput(f"invalid --ip {ip!r}: give an IPv4 address such as 10.0.0.5") from None
        with self.lock:
            container = self._refresh(self._container(container_name))
            network = self._resolve_network(network_name)
            if container.external:
                raise Conflict(
                    f"container {container_name!r} is another runtime's (CNI or Docker): connect it through that runtime"
                )
            kind = container.mode.kind
            if kind == "host":
                raise Conflict(f"container {container_name!r} uses the host's network: it cannot be connected to networks")
            if kind == "container":
                raise Conflict(
                    f"container {container_name!r} shares the network of another container: connect that one instead"
                )
            if container.state == "creating":
                raise Conflict(f"container {container_name!r} is still being created: try again")
            if self.store.get(_ep_key(container.id, network.id)) is not None:
                raise Conflict(f"container {container_name!r} is already connected to network {network.name!r}")
            if ip is not None:
                self._check_requested_ip(network, ip)
            self._check_aliases(network, [container_name, *aliases], container_name)
            assert container.netns is not None
            undo = Undo()
            try:
                endpoint = self._attach(container, network, ip, undo, default_route=None, aliases=aliases)
            except BaseException:
                self._barrier_revision.value = 0
                self._log_undo(undo.unwind())
                raise
            undo.commit()
        behind = self._wait_barrier()
        if lagging is not None:
            lagging.extend(behind)
        return endpoint

    def disconnect(self, network_name: str, container_name: str) -> None:
        with self.lock:
            container = self._container(container_name)
            network = self._network(network_name)
            if container.external:
                raise Conflict(
                    f"container {container_name!r} is another runtime's (CNI or Docker): disconnect it through that runtime"
                )
            kv = self.store.get(_ep_key(container.id, network.id))
            if kv is None:
                raise NotFound(f"container {container_name!r} is not connected to network {network_name!r}")
            self._log_undo(self._detach(container, Endpoint.from_dict(kv.value)))

    # ------------------------------------------------------------------ CNI (other runtimes)
    def _cni_name(self, container_id: str) -> str:
        return "cni-" + "".join(c if c.isalnum() or c in "_.-" else "-" for c in container_id)[:59]

    def cni_add(
        self,
        container_id: str,
        netns_path: str,
        ifname: str,
        network_name: str,
        ip: str | None = None,
        mac: str | None = None,
        publish: list[dict[str, Any]] | None = None,
        aliases: list[str] | None = None,
    ) -> dict[str, Any]:
        """Attach a namespace another runtime made to a tether network (CNI ADD). Idempotent:
        the same container, interface and network give the same result again."""
        if not container_id:
            raise InvalidInput("CNI_CONTAINERID is empty: the runtime must name the container")
        if not netns_path.startswith("/") or not os.path.exists(netns_path):
            raise NotFound(f"network namespace {netns_path!r} does not exist: the runtime must create it first")
        if not _valid_ifname(ifname):
            raise InvalidInput(f"invalid interface name {ifname!r}: at most 15 characters, no '/', ':' or spaces")
        if ip is not None:
            try:
                ipaddress.IPv4Address(ip)
            except ValueError:
                raise InvalidInput(f"invalid ip {ip!r}: give an IPv4 address such as 10.0.0.5") from None
        if mac is not None:
            mac = validate_mac(mac)
        try:
            mappings = [
                PortMapping(
                    str(p.get("protocol", "tcp")).lower(),
                    int(p.get("hostPort", 0)),
                    int(p.get("containerPort", 0)),
                    p.get("hostIP") or None,
                )
                for p in publish or []
            ]
        except (TypeError, ValueError, AttributeError):
            raise InvalidInput("malformed portMappings: give objects with hostPort, containerPort and protocol") from None
        for m in mappings:
            if m.protocol not in ("tcp", "udp") or not (1 <= m.host_port <= 65535 and 1 <= m.container_port <= 65535):
                raise InvalidInput(f"invalid port mapping {m}: ports 1-65535, protocol tcp or udp")
        aliases = [validate_name("alias", a) for a in aliases or []]
        name = self._cni_name(container_id)
        with self.lock:
            network = self._resolve_network(network_name)
            kv = self.store.get(CTR_PREFIX + name)
            container = Container.from_dict(kv.value) if kv else None
            if container is not None:
                if container.netns != netns_path:
                    raise Conflict(f"container {container_id} is known with another namespace ({container.netns})")
                existing = self.store.get(_ep_key(container.id, network.id))
                if existing is not None:
                    ep = Endpoint.from_dict(existing.value)
                    if ep.ifname == ifname:
                        return self._cni_result(container, ep)
                    raise Conflict(f"container {container_id} is already on network {network.name!r} as {ep.ifname}")
            if ip is not None:
                self._check_requested_ip(network, ip)
            self._check_aliases(network, [name, *aliases], name)
            if mappings and network.internal:
                raise InvalidInput(f"network {network.name!r} is internal: it has no published ports")
            mappings = self._check_ports(mappings)
            undo = Undo()
            try:
                if container is None:
                    container = Container(
                        id=uuid.uuid4().hex,
                        name=name,
                        hostname=name,
                        net_mode="none",
                        netns=netns_path,
                        cmd=[],
                        state="external",
                        external=True,
                        created=time.time(),
                    )
                    self._save(container)
                    undo.push("record", lambda: self.store.delete(CTR_PREFIX + name))
                    self._index(container, undo)
                    # the embedded resolver on 127.0.0.11, as for `tether run`: the result's
                    # DNS names it, so a runtime that writes resolv.conf from it resolves
                    # tether's names (and, through upstreams, everything else)
                    self._serve_dns(container, undo)
                if mappings:
                    before = container
                    container = self._save(container.with_(ports=container.ports + [m.to_dict() for m in mappings]))
                    undo.push("published ports of the record", lambda: self._save(before))
                endpoint = self._attach(
                    container, network, ip, undo, default_route=None, aliases=aliases, ifname=ifname, mac=mac
                )
                if self.firewall is not None and mappings:
                    from .firewall import PortRule

                    rules = [
                        PortRule(m.protocol, m.host_ip, m.host_port, endpoint.address, m.container_port)
                        for m in mappings
                    ]
                    self.firewall.add_ports(rules)
                    undo.push("published ports", lambda: self.firewall.remove_ports(rules))  # type: ignore[union-attr]
            except BaseException:
                self._barrier_revision.value = 0
                self._log_undo(undo.unwind())
                raise
            undo.commit()
        self._wait_barrier()
        return self._cni_result(container, endpoint)

    def _cni_result(self, container: Container, ep: Endpoint) -> dict[str, Any]:
        from .dns import RESOLVER_ADDRESS

        result: dict[str, Any] = {
            "interfaces": [
                {"name": ep.host_ifname},
                {"name": ep.ifname, "mac": ep.mac, "sandbox": container.netns},
            ],
            "ips": [{"address": ep.cidr, "gateway": ep.gateway, "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": ep.gateway}] if ep.default_route else [],
            "dns": {"nameservers": [RESOLVER_ADDRESS]} if self.resolver is not None else {},
        }
        return result

    def cni_del(self, container_id: str, ifname: str, network_name: str) -> None:
        """Detach (CNI DEL). A missing container, network or endpoint is success: the
        runtime may call DEL again, or after a half-done ADD, or after a reboot."""
        name = self._cni_name(container_id)
        with self.lock:
            kv = self.store.get(CTR_PREFIX + name)
            if kv is None:
                return
            container = Container.from_dict(kv.value)
            network = self._lookup_network(network_name)
            for ep in self._endpoints(container.id):
                if (network is None or ep.network_id == network.id) and (not ifname or ep.ifname == ifname):
                    self._log_undo(self._detach(container, ep))  # also drops its published ports
                    container = self._save(container.with_(ports=[]))
            if not self._endpoints(container.id):
                self._log_undo(self._teardown(container))

    def cni_check(self, container_id: str, ifname: str, network_name: str) -> None:
        """CHECK: the interface, its address and its routes are still there."""
        name = self._cni_name(container_id)
        with self.lock:
            kv = self.store.get(CTR_PREFIX + name)
            network = self._network(network_name)
            if kv is None:
                raise NotFound(f"container {container_id} is not attached to network {network_name!r}")
            container = Container.from_dict(kv.value)
            ep_kv = self.store.get(_ep_key(container.id, network.id))
            if ep_kv is None:
                raise NotFound(f"container {container_id} is not attached to network {network_name!r}")
            ep = Endpoint.from_dict(ep_kv.value)
            if ep.ifname != ifname:
                raise NotFound(f"container {container_id} is on network {network_name!r} as {ep.ifname}, not {ifname}")
        assert container.netns is not None
        if not os.path.exists(container.netns):
            raise NotFound(f"network namespace {container.netns} is gone")
        interfaces = {i["ifname"]: i for i in self.ctx.datapath.container_interfaces(container.netns)}
        found = interfaces.get(ep.ifname)
        if found is None:
            raise NotFound(f"interface {ep.ifname} is missing in {container.netns}")
        if ep.cidr not in found.get("addresses", []):
            raise NotFound(f"address {ep.cidr} is missing on {ep.ifname}")
        if ep.default_route and not self.ctx.datapath.has_default_route(container.netns):
            raise NotFound(f"the default route via {ep.gateway} is missing in {container.netns}")
        if not self._driver(network).endpoint_present(self.ctx, network, ep):
            raise NotFound(f"the host side {ep.host_ifname} of {ep.ifname} is missing or off its bridge")

    def cni_gc(self, network_name: str, valid: list[tuple[str, str]]) -> list[str]:
        """GC: remove every CNI attachment on the network not in ``valid`` (container id, ifname)."""
        keep = {(self._cni_name(cid), ifname) for cid, ifname in valid}
        removed = []
        with self.lock:
            network = self._lookup_network(network_name)
            if network is None:
                return []
            for c in self._containers():
                # CNI's own attachments only: Docker's endpoints are external containers too
                if not c.external or not c.name.startswith(self._cni_name("")):
                    continue
                detached = False
                for ep in self._endpoints(c.id):
                    if ep.network_id == network.id and (c.name, ep.ifname) not in keep:
                        removed.append(f"{c.name}/{ep.ifname}")
                        self._log_undo(self._detach(c, ep))
                        detached = True
                if detached and not self._endpoints(c.id):
                    self._log_undo(self._teardown(c))
        return removed

    # ------------------------------------------------------------------ reconcile
    def reconcile(self) -> list[str]:
        """Make the kernel and the store agree after a restart or a crash at any point.

        Networks the store has are rebuilt; half-created containers are removed; exited
        --rm containers are removed; missing namespaces and endpoints of live records are
        recreated; links carrying this daemon's mark that no record owns are deleted; and
        leases whose owner no longer exists are released."""
        actions: list[str] = []
        with self.lock:
            local_networks = {n.id: n for n in self._networks()}
            networks = {**local_networks, **{n.id: n for n in self._overlay_networks()}}
            for network in local_networks.values():
                try:
                    self._driver(network).restore(self.ctx, network)
                except TetherError as exc:
                    actions.append(f"network {network.name}: {exc}")
            containers = self._containers()
            docker_waiting = self.docker_pending()  # Docker endpoints get their namespace at Join
            live_ids: set[str] = set()
            for c in containers:
                c = self._refresh(c)
                if c.state == "creating" or (c.auto_remove and c.state == "exited"):
                    actions.append(f"removed container {c.name} ({c.state})")
                    actions += self._teardown(c)
                    continue
                if c.external and not c.netns and c.name in docker_waiting:
                    live_ids.add(c.id)
                    continue
                if c.external and (not c.netns or not os.path.exists(c.netns)):
                    actions.append(f"removed CNI attachment {c.name}: its runtime's namespace is gone")
                    actions += self._teardown(c)
                    continue
                live_ids.add(c.id)
                if self._sandbox(c).owns_netns() and c.netns and not self.ctx.datapath.netns_exists(c.netns):
                    if c.state == "running":
                        actions.append(f"container {c.name}: its namespace binding is gone while it runs")
                        continue
                    self.ctx.datapath.create_netns(c.netns)
                    actions.append(f"recreated namespace of {c.name}")
                for ep in self._endpoints(c.id):
                    network = networks.get(ep.network_id)
                    if network is None:
                        actions.append(f"dropped endpoint of {c.name} on a removed network")
                        actions += self._detach(c, ep)
                        continue
                    if c.netns and not self._driver(network).endpoint_present(self.ctx, network, ep):
                        try:
                            self.ctx.datapath.detach_veth(ep.host_ifname)
                            self.ctx.datapath.detach_in_netns(c.netns, ep.ifname)
                            undo = Undo()
                            self._driver(network).attach(self.ctx, network, ep, c.netns, undo, keep_existing_default=True)
                            actions.append(f"re-attached {c.name} to {network.name}")
                        except TetherError as exc:
                            actions.append(f"could not re-attach {c.name} to {network.name}: {exc}")
            # endpoint records whose container is gone
            for ep in self._endpoints():
                if ep.container_id not in live_ids:
                    actions += _collect(lambda: self.ctx.datapath.detach_veth(ep.host_ifname))
                    self.store.delete(_ep_key(ep.container_id, ep.network_id))
                    actions.append(f"dropped orphan endpoint {ep.host_ifname}")
            # links with our mark that nothing owns
            expected = {ep.host_ifname for ep in self._endpoints()}
            for network in networks.values():
                expected |= self._driver(network).owned_links(network)
            for ifname, kind in self.ctx.datapath.links_with_mark(self.ctx.mark):
                if ifname in expected:
                    continue
                if kind == "bridge":
                    actions += _collect(lambda: self.ctx.datapath.delete_bridge(ifname))
                else:
                    actions += _collect(lambda: self.ctx.datapath.detach_veth(ifname))
                actions.append(f"deleted orphan link {ifname}")
            # leases without an owner
            # (only this host's own networks: overlay leases belong to the whole cluster)
            for net_id in local_networks:
                for address, owner in self.ipam.leases(net_id).items():
                    if owner not in live_ids:
                        self.ipam.release(net_id, address)
                        actions.append(f"released orphan lease {address}")
            # id and join index entries whose container is gone
            for kv in self.store.list(ID_PREFIX) + self.store.list(JOIN_PREFIX):
                if kv.key.rsplit("/", 1)[1] not in live_ids:
                    self.store.delete(kv.key)
            # leases of networks that no longer exist
            for kv in self.store.list("/ipam/"):
                parts = kv.key.split("/")
                if len(parts) >= 4 and parts[2] not in local_networks:
                    self.store.delete(kv.key)
                    actions.append(f"released lease {parts[3]} of a removed network")
            # ip netns names of runtimes' namespaces (Docker's) whose endpoint is gone
            named = {self.ctx.netns_name(c.name): c.netns for c in containers if c.external and c.id in live_ids}
            # (only names tether gives: `<prefix>docker-...`; others' symlinks are theirs)
            for alias, target in self.ctx.datapath.netns_aliases(self.ctx.netns_name("docker-")).items():
                if named.get(alias) != target:
                    actions += _collect(lambda: self.ctx.datapath.unalias_netns(alias))
                    actions.append(f"removed stale namespace name {alias}")
            # state dirs without a record
            root = os.path.join(self.state_dir, "containers")
            for entry in os.listdir(root):
                if entry not in live_ids:
                    shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
            if any(not n.internal for n in networks.values()):
                actions += _collect(self._enable_uplink_forwarding)
            if self.firewall is not None:
                self.firewall.ensure()
                self.firewall.sync(*self.desired_firewall())
            actions += self._restore_dns()
        for line in actions:
            log.info("reconcile: %s", line)
        return actions

    def _restore_dns(self) -> list[str]:
        """The resolver keeps its table in memory: rebuild it and its sockets from the store."""
        if self.resolver is None:
            return []
        errors: list[str] = []
        containers = {c.id: c for c in self._containers()}
        docker = self.docker_pending()  # Docker's sandboxes have Docker's own resolver
        records: dict[str, dict[str, list[str]]] = {}
        for ep in self._endpoints():
            c = containers.get(ep.container_id)
            if c is None or ep.network == DEFAULT_NETWORK:
                continue
            table = records.setdefault(ep.network, {})
            for name in self._dns_names(c, ep):
                table.setdefault(name.lower(), []).append(ep.address)
        for network in self._networks():
            self.resolver.set_records(network.name, records.get(network.name, {}))
        for c in containers.values():
            if c.netns and c.joined is None and c.name not in docker and self.ctx.datapath.netns_exists(c.netns):
                try:
                    self.resolver.serve(c.id, self.ctx.datapath.netns_path(c.netns))
                    self._set_dns_view(c)
                except TetherError as exc:
                    errors.append(f"resolver for {c.name}: {exc}")
        return errors

    def _log_undo(self, failures: list[str]) -> None:
        for line in failures:
            log.warning("%s", line)


def _parse_bool(flag: str, value: str) -> str:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return "true"
    if lowered in ("false", "0", "no", "off"):
        return "false"
    raise InvalidInput(f"invalid -o {flag}={value!r}: use true or false")


def _collect(step: Callable[[], object]) -> list[str]:
    try:
        step()
    except Exception as exc:
        return [str(exc)]
    return []

