"""The controller's Docker door: libnetwork's remote network driver and IPAM driver.

Docker splits an attachment into steps tether does in one for its own containers: IPAM
hands out an address (``RequestAddress``) before the endpoint exists, ``CreateEndpoint``
only records it, ``Join`` must leave the container end of the veth *on the host* for
dockerd to move and configure, and ``Leave``/``DeleteEndpoint``/``ReleaseAddress`` undo
each step separately. So a Docker endpoint is an ordinary tether endpoint of an external
container (one per Docker endpoint, named ``docker-<endpoint id>``) whose kernel side
appears at Join. Its lease is taken at RequestAddress by a placeholder owner and handed
to the endpoint at CreateEndpoint in one compare-and-swap, so ``tether run``, CNI and
Docker containers draw from one IPAM and never collide. Docker does not tell a driver the
network's name: ``-o tether.network=NAME`` picks the tether name (and adopts an existing
tether network of that name and subnet); otherwise it is ``docker-<network id>``.

This is a mixin of ``Controller`` (it uses its lock, store, IPAM and drivers): the
controller stays the only orchestrator, and the HTTP mapping lives in
``api/docker_plugin.py``.
"""

from __future__ import annotations

import ipaddress
import time
import uuid
from typing import TYPE_CHECKING, Any

from .drivers import BridgeDriver, Undo
from .errors import Conflict, InvalidInput, NotFound
from .ipam import validate_network_cidrs
from .model import Container, Endpoint, Network, PortMapping, host_ifname_for, validate_mac
from .storekeys import CTR_PREFIX, DOCKER_EPS, DOCKER_NETS, DOCKER_POOLS, ep_key

if TYPE_CHECKING:
    from .controller import Controller

__all__ = ["DockerDoor", "DOCKER_OPTIONS", "RESERVED_OWNER"]

RESERVED_OWNER = "docker-ipam"  # owner of a lease Docker's IPAM call took, until CreateEndpoint
GENERIC = "com.docker.network.generic"
GATEWAY_REQUEST = "com.docker.network.gateway"
PORTMAP = "com.docker.network.portmap"
EXPOSED = "com.docker.network.endpoint.exposedports"
# -o options Docker passes through (tether.* map to tether's network options)
DOCKER_OPTIONS = {
    "tether.network": None,
    "tether.driver": None,
    "tether.mtu": "mtu",
    "com.docker.network.driver.mtu": "mtu",
    "tether.masquerade": "masquerade",
    "tether.icc": "icc",
    "tether.bridge_name": "bridge_name",
    "tether.vni": "vni",
}
_PROTOCOLS = {6: "tcp", 17: "udp"}


def _pool_id(subnet: str) -> str:
    return "tether-" + subnet.replace("/", "-")


def _strip_prefix(cidr: str) -> str:
    return cidr.split("/", 1)[0] if cidr else ""


class DockerDoor:
    # ------------------------------------------------------------------ IPAM driver
    def ipam_request_pool(
        self: Controller, pool: str, sub_pool: str, options: dict[str, Any], v6: bool
    ) -> dict[str, Any]:
        if v6:
            raise InvalidInput("tether's IPAM is IPv4 only: create the network without --ipv6")
        with self.lock:
            networks = self._networks() + self._overlay_networks()
            pools = {kv.key[len(DOCKER_POOLS) :]: kv.value for kv in self.store.list(DOCKER_POOLS)}
            # (no "pick this network's subnet" option: without --subnet dockerd rejects a
            # pool that overlaps a route, as an adopted network's does, and asks again)
            if not pool and sub_pool:
                raise InvalidInput("--ip-range needs --subnet: give the subnet it belongs to")
            if pool:
                subnet, _, ip_range = validate_network_cidrs(pool, None, sub_pool or None)
                if _pool_id(subnet) in pools:  # Docker asks again after a restart: same answer
                    return {"PoolID": _pool_id(subnet), "Pool": subnet, "Data": {}}
            # a subnet tether already has is adopted, not an overlap
            if not pool or not any(n.subnet == subnet for n in networks):
                in_use = {p["subnet"]: "the subnet of another Docker network" for p in pools.values()}
                in_use.update({n.subnet: f"network {n.name!r}" for n in networks})
                subnet, _, ip_range = self._place_subnet(pool or None, None, sub_pool or None, in_use)
            self.store.put(DOCKER_POOLS + _pool_id(subnet), {"subnet": subnet, "ip_range": ip_range})
            return {"PoolID": _pool_id(subnet), "Pool": subnet, "Data": {}}

    def ipam_release_pool(self: Controller, pool_id: str) -> None:
        self.store.delete(DOCKER_POOLS + pool_id)

    def _pool(self: Controller, pool_id: str) -> dict[str, Any]:
        kv = self.store.get(DOCKER_POOLS + pool_id)
        if kv is None:
            raise NotFound(f"unknown tether address pool {pool_id!r}: create the network again with --ipam-driver tether")
        return kv.value

    def _network_of_subnet(self: Controller, subnet: str) -> Network | None:
        for network in self._networks() + self._overlay_networks():
            if network.subnet == subnet:
                return network
        return None

    def ipam_request_address(self: Controller, pool_id: str, address: str, options: dict[str, Any]) -> str:
        with self.lock:
            pool = self._pool(pool_id)
            subnet = ipaddress.ip_network(pool["subnet"])
            network = self._network_of_subnet(pool["subnet"])
            if options.get("RequestAddressType") == GATEWAY_REQUEST:
                if network is not None:
                    if address and address != network.gateway:
                        raise Conflict(
                            f"network {network.name!r} ({network.subnet}) already has gateway {network.gateway}: "
                            f"use --gateway {network.gateway} or leave it out"
                        )
                    gateway = network.gateway
                else:  # CreateNetwork, next, gets it back from dockerd in IPv4Data
                    _, gateway, _ = validate_network_cidrs(pool["subnet"], address or None, None)
                return f"{gateway}/{subnet.prefixlen}"
            if network is None:
                raise NotFound(
                    f"no tether network has subnet {pool['subnet']} (removed with `tether network rm`?): "
                    "remove the Docker network and create it again"
                )
            leased = self._ipam_for(network).allocate(network, RESERVED_OWNER, address or None)
            return f"{leased}/{subnet.prefixlen}"

    def ipam_release_address(self: Controller, pool_id: str, address: str) -> None:
        with self.lock:
            kv = self.store.get(DOCKER_POOLS + pool_id)
            if kv is None or not address:
                return
            network = self._network_of_subnet(kv.value["subnet"])
            if network is None or address == network.gateway:
                return
            ipam = self._ipam_for(network)
            # only a placeholder lease: an endpoint's lease went with DeleteEndpoint, and
            # the address may already belong to someone else
            if ipam.owner(network.id, address) == RESERVED_OWNER:
                ipam.release(network.id, address)

    # ------------------------------------------------------------------ network driver
    def _docker_network(self: Controller, network_id: str) -> Network:
        kv = self.store.get(DOCKER_NETS + network_id)
        if kv is None:
            raise NotFound(f"Docker network {network_id[:12]} is not a tether network: create it with -d tether")
        return self._network(kv.value["name"])

    def docker_create_network(
        self: Controller, network_id: str, options: dict[str, Any], ipv4: list[dict[str, Any]], ipv6: list[dict[str, Any]]
    ) -> None:
        if not network_id:
            raise InvalidInput("missing NetworkID in the request")
        if ipv6:
            raise InvalidInput("tether networks are IPv4 only: create the network without --ipv6")
        if len(ipv4) > 1:
            raise InvalidInput("a tether network has one IPv4 subnet: give --subnet once")
        generic = options.get(GENERIC) or {}
        if not isinstance(generic, dict):
            raise InvalidInput("malformed driver options")
        unknown = sorted(k for k in generic if k not in DOCKER_OPTIONS)
        if unknown:
            raise InvalidInput(f"unknown option -o {unknown[0]}: known options are {', '.join(sorted(DOCKER_OPTIONS))}")
        name = str(generic.get("tether.network") or f"docker-{network_id[:12]}")
        driver = str(generic.get("tether.driver") or "bridge")
        if driver not in ("bridge", "overlay"):
            raise InvalidInput(f"invalid -o tether.driver={driver}: use bridge or overlay")
        net_options = {DOCKER_OPTIONS[k]: str(v) for k, v in generic.items() if DOCKER_OPTIONS[k]}
        internal = str(options.get("com.docker.network.internal", "")).lower() == "true"
        subnet = ipv4[0].get("Pool") if ipv4 else None
        gateway = _strip_prefix(ipv4[0].get("Gateway", "")) if ipv4 else None
        if self.store.get(DOCKER_NETS + network_id) is not None:
            return  # asked again: it exists
        existing = self._lookup_network(name)
        if existing is not None:
            # `-o tether.network=NAME` of a network tether already has: Docker joins it
            if subnet and existing.subnet != subnet:
                raise Conflict(
                    f"tether network {name!r} has subnet {existing.subnet}: use --subnet {existing.subnet} "
                    "or another -o tether.network"
                )
            if existing.driver != driver:
                raise Conflict(f"tether network {name!r} uses driver {existing.driver}: use -o tether.driver={existing.driver}")
            self.store.put(DOCKER_NETS + network_id, {"name": name, "adopted": True})
            return
        pool = self.store.get(DOCKER_POOLS + _pool_id(subnet)) if subnet else None
        ip_range = pool.value.get("ip_range") if pool else None
        self.create_network(name, driver, subnet, gateway or None, ip_range, net_options, internal)
        try:
            self.store.put(DOCKER_NETS + network_id, {"name": name, "adopted": False})
        except BaseException:
            self.remove_network(name)
            raise

    def docker_delete_network(self: Controller, network_id: str) -> None:
        kv = self.store.get(DOCKER_NETS + network_id)
        if kv is None:
            return
        if not kv.value.get("adopted") and self._lookup_network(kv.value["name"]) is not None:
            self.remove_network(kv.value["name"])
        self.store.delete(DOCKER_NETS + network_id)

    def _docker_endpoint(self: Controller, endpoint_id: str) -> tuple[Container, Network, Endpoint] | None:
        kv = self.store.get(DOCKER_EPS + endpoint_id)
        if kv is None:
            return None
        ckv = self.store.get(CTR_PREFIX + kv.value["container"])
        network = self._lookup_network(kv.value["network"])
        if ckv is None or network is None:
            return None
        container = Container.from_dict(ckv.value)
        ep_kv = self.store.get(ep_key(container.id, network.id))
        if ep_kv is None:
            return None
        return container, network, Endpoint.from_dict(ep_kv.value)

    def docker_create_endpoint(
        self: Controller, network_id: str, endpoint_id: str, interface: dict[str, Any], options: dict[str, Any]
    ) -> dict[str, Any]:
        if not endpoint_id:
            raise InvalidInput("missing EndpointID in the request")
        cidr = str(interface.get("Address") or "")
        ip = _strip_prefix(cidr) or None
        mac = validate_mac(str(interface["MacAddress"])) if interface.get("MacAddress") else None
        if ip is not None:
            try:
                ipaddress.IPv4Address(ip)
            except ValueError:
                raise InvalidInput(f"invalid address {cidr!r}: give an IPv4 address") from None
        name = f"docker-{endpoint_id[:12]}"
        with self.lock:
            network = self._docker_network(network_id)
            found = self._docker_endpoint(endpoint_id)
            if found is not None:  # asked again: the same answer
                return self._endpoint_reply(found[2], ip, mac)
            if self.store.get(CTR_PREFIX + name) is not None:
                raise Conflict(f"endpoint {endpoint_id[:12]} exists already")
            undo = Undo()
            try:
                container = Container(
                    id=uuid.uuid4().hex, name=name, hostname=name, net_mode="none", netns=None, cmd=[],
                    state="external", external=True, created=time.time(),
                )
                self._save(container)
                undo.push("record", lambda: self.store.delete(CTR_PREFIX + name))
                self._index(container, undo)
                # the lease tether's IPAM gave Docker a moment ago becomes the endpoint's;
                # an address Docker's own IPAM chose (or none yet) is leased now
                leased = ip is not None and self._ipam_for(network).transfer(network.id, ip, RESERVED_OWNER, container.id)
                ifname = "vd" + host_ifname_for(container.id, network.id)[2:]  # until dockerd renames it
                endpoint = self._new_endpoint(container, network, ip, undo, True, ifname, mac, leased=leased)
                self.store.put(DOCKER_EPS + endpoint_id, {"container": name, "network": network.name})
            except BaseException:
                self._log_undo(undo.unwind())
                raise
            undo.commit()
        return self._endpoint_reply(endpoint, ip, mac)

    @staticmethod
    def _endpoint_reply(endpoint: Endpoint, ip: str | None, mac: str | None) -> dict[str, Any]:
        """What CreateEndpoint answers: only what Docker did not give (dockerd refuses a
        driver that "changes" an address or MAC it passed in)."""
        given: dict[str, str] = {}
        if ip is None:
            given["Address"] = endpoint.cidr
        if mac is None:
            given["MacAddress"] = endpoint.mac
        return {"Interface": given} if given else {}

    def docker_join(self: Controller, network_id: str, endpoint_id: str, sandbox_key: str) -> dict[str, Any]:
        if not sandbox_key.startswith("/"):
            raise InvalidInput(f"invalid SandboxKey {sandbox_key!r}: Docker gives the namespace's path")
        with self.lock:
            found = self._docker_endpoint(endpoint_id)
            if found is None:
                raise NotFound(f"endpoint {endpoint_id[:12]} not found: Docker must create it first")
            container, network, endpoint = found
            driver = self._driver(network)
            if not isinstance(driver, BridgeDriver):
                raise InvalidInput(f"network {network.name!r} ({network.driver}) cannot hold Docker endpoints")
            undo = Undo()
            try:
                self._local_gateway(network)  # an overlay's host side, after a daemon restart
                self.ctx.datapath.detach_veth(endpoint.host_ifname)  # a leftover of an earlier Join
                driver.attach_unplaced(self.ctx, network, endpoint, endpoint.ifname, undo)
                self._save(container.with_(netns=sandbox_key))
                # `ip netns exec <prefix>docker-<endpoint> ...` works, as for tether's own
                alias = self.ctx.netns_name(container.name)
                self.ctx.datapath.alias_netns(alias, sandbox_key)
                undo.push(f"netns name {alias}", lambda: self.ctx.datapath.unalias_netns(alias))
                if network.driver == "overlay":
                    self._publish_overlay_endpoint(container, network, endpoint, undo)
            except BaseException:
                self._barrier_revision.value = 0
                self._log_undo(undo.unwind())
                raise
            undo.commit()
        self._wait_barrier()  # reachable from every host when Join returns, as for `tether run`
        reply: dict[str, Any] = {
            "InterfaceName": {"SrcName": endpoint.ifname, "DstPrefix": "eth"},
            "StaticRoutes": [],
        }
        if endpoint.default_route:
            reply["Gateway"] = endpoint.gateway
        else:
            reply["DisableGatewayService"] = True  # an internal network: no way out, no extra NIC
        return reply

    def docker_leave(self: Controller, network_id: str, endpoint_id: str) -> None:
        with self.lock:
            found = self._docker_endpoint(endpoint_id)
            if found is None:
                return
            container, network, endpoint = found
            errors = self._docker_unpublish(container)
            errors += self._driver(network).detach(self.ctx, network, endpoint, None)
            try:
                self.ctx.datapath.unalias_netns(self.ctx.netns_name(container.name))
            except Exception as exc:
                errors.append(str(exc))
            if network.driver == "overlay" and self.cluster is not None:
                errors += self._withdraw_overlay_endpoint(endpoint)
            self._save(container.with_(netns=None, ports=[]))
            self._log_undo(errors)

    def docker_delete_endpoint(self: Controller, network_id: str, endpoint_id: str) -> None:
        with self.lock:
            kv = self.store.get(DOCKER_EPS + endpoint_id)
            if kv is None:
                return
            ckv = self.store.get(CTR_PREFIX + kv.value["container"])
            if ckv is not None:
                container = Container.from_dict(ckv.value)
                self._log_undo(self._teardown(container))  # endpoint, lease, veth, records
            self.store.delete(DOCKER_EPS + endpoint_id)

    def docker_endpoint_info(self: Controller, network_id: str, endpoint_id: str) -> dict[str, Any]:
        with self.lock:
            found = self._docker_endpoint(endpoint_id)
        if found is None:
            return {}
        container, network, endpoint = found
        info: dict[str, Any] = {
            "tether.network": network.name,
            "tether.container": container.name,
            "tether.host_ifname": endpoint.host_ifname,
        }
        if container.ports:
            info[PORTMAP] = [
                {"Proto": 6 if p.protocol == "tcp" else 17, "IP": endpoint.address, "Port": p.container_port,
                 "HostIP": p.host_ip or "", "HostPort": p.host_port, "HostPortEnd": p.host_port}
                for p in container.port_mappings
            ]
        return info

    def docker_program_external(
        self: Controller, network_id: str, endpoint_id: str, options: dict[str, Any]
    ) -> None:
        """Publish the ports of ``docker run -p`` through tether's port map."""
        raw = options.get(PORTMAP) or []
        if not isinstance(raw, list):
            raise InvalidInput("malformed port map")
        mappings: list[PortMapping] = []
        try:
            for p in raw:
                proto = _PROTOCOLS.get(int(p.get("Proto", 6)))
                if proto is None:
                    raise InvalidInput(f"unsupported protocol {p.get('Proto')} in a port mapping: use tcp or udp")
                first, last = int(p.get("HostPort") or 0), int(p.get("HostPortEnd") or 0)
                if last and last != first:
                    raise InvalidInput(f"host port ranges ({first}-{last}) are not supported: publish one port per -p")
                mappings.append(PortMapping(proto, first, int(p.get("Port") or 0), p.get("HostIP") or None))
        except (TypeError, ValueError, AttributeError):
            raise InvalidInput("malformed port map: give objects with Proto, Port and HostPort") from None
        if not mappings:
            return
        with self.lock:
            found = self._docker_endpoint(endpoint_id)
            if found is None:
                raise NotFound(f"endpoint {endpoint_id[:12]} not found: Docker must create it first")
            container, network, endpoint = found
            if network.internal:
                raise InvalidInput(f"network {network.name!r} is internal: it has no published ports")
            self._log_undo(self._docker_unpublish(container))
            container = self._save(container.with_(ports=[]))
            mappings = self._check_ports(mappings)
            container = self._save(container.with_(ports=[m.to_dict() for m in mappings]))
            if self.firewall is not None:
                try:
                    self.firewall.add_ports(self._port_rules(container, endpoint))
                except BaseException:
                    self._save(container.with_(ports=[]))
                    raise

    def docker_revoke_external(self: Controller, network_id: str, endpoint_id: str) -> None:
        with self.lock:
            found = self._docker_endpoint(endpoint_id)
            if found is None:
                return
            container = found[0]
            self._log_undo(self._docker_unpublish(container))
            self._save(container.with_(ports=[]))

    def _docker_unpublish(self: Controller, container: Container) -> list[str]:
        if self.firewall is None or not container.ports:
            return []
        try:
            self.firewall.remove_ports(self._port_rules(container))
        except Exception as exc:
            return [str(exc)]
        return []

    def docker_pending(self: Controller) -> set[str]:
        """Names of Docker endpoint containers (kept by reconcile even before their Join)."""
        return {kv.value["container"] for kv in self.store.list(DOCKER_EPS)}
