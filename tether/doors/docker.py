"""Docker's door: libnetwork's remote network driver and IPAM driver, as controller verbs.

Docker splits an attachment into steps tether does in one for its own containers: IPAM
hands out an address (``RequestAddress``) before the endpoint exists, ``CreateEndpoint``
only records it, ``Join`` must leave the container end of the veth *on the host* for
dockerd to move and configure, and ``Leave``/``DeleteEndpoint``/``ReleaseAddress`` undo
each step separately. So a Docker endpoint is a sandbox of the runtime ``docker`` (record
``docker-<endpoint id>``) whose kernel side appears at Join. Its lease is taken at
RequestAddress by a placeholder owner and handed to the endpoint at CreateEndpoint in one
compare-and-swap, so ``tether run``, CNI and Docker containers draw from one IPAM.

Dual stack (``docker network create --ipv6 --subnet V4 --subnet V6``): dockerd asks the
IPAM driver for a pool and a gateway of each family (``V6`` set; no v6 subnet given: a
free ULA /64 is picked), passes both in CreateNetwork (``IPv4Data``, ``IPv6Data``), and an
address of each family per endpoint; Join answers both gateways.

Docker never tells a driver the network's name: ``-o tether.network=NAME`` picks the
tether name (and adopts an existing tether network of that name and subnet); otherwise it
is ``docker-<network id>``. The door keeps only what maps Docker's ids onto tether's (its
networks and pools, under ``/docker/`` in the host's store); every change of network
state is a controller verb. The HTTP mapping lives in ``api/docker_plugin.py``.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from ..controller import Controller
from ..errors import Conflict, InvalidInput, NotFound
from ..ipam import validate_ip_range6, validate_network_cidrs, validate_network_cidrs6
from ..model import Network, PortMapping
from ..storekeys import DOCKER_NETS, DOCKER_POOLS
from ..validate import check_ipv4, check_ipv6, validate_mac

__all__ = ["DockerDoor", "DOCKER_OPTIONS", "RESERVED_OWNER"]

RUNTIME = "docker"
RESERVED_OWNER = "docker-ipam"  # owner of a lease Docker's IPAM call took, until CreateEndpoint
GENERIC = "com.docker.network.generic"
GATEWAY_REQUEST = "com.docker.network.gateway"
PORTMAP = "com.docker.network.portmap"
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
    # macvlan (`-o tether.driver=macvlan`), spelled as Docker's own macvlan driver too
    "parent": "parent",
    "macvlan_mode": "macvlan_mode",
    "tether.parent": "parent",
    "tether.macvlan_mode": "macvlan_mode",
    "tether.host_access": "host_access",
    "tether.host_address": "host_address",
}
_PROTOCOLS = {6: "tcp", 17: "udp"}


def _pool_id(subnet: str) -> str:
    return "tether-" + subnet.replace("/", "-")


def _strip_prefix(cidr: str) -> str:
    return cidr.split("/", 1)[0] if cidr else ""


def _ref(endpoint_id: str) -> str:
    return endpoint_id[:12]


def _is_v6(subnet: str) -> bool:
    return ":" in subnet


class DockerDoor:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.store = controller.store  # the door's own records, under /docker/

    # ------------------------------------------------------------------ IPAM driver
    def request_pool(self, pool: str, sub_pool: str, options: dict[str, Any], v6: bool) -> dict[str, Any]:
        if v6:
            return self._request_pool6(pool, sub_pool)
        if pool and _is_v6(pool):
            raise InvalidInput(f"--subnet {pool} is IPv6: add --ipv6 to make a dual-stack network")
        if not pool and sub_pool:
            raise InvalidInput("--ip-range needs --subnet: give the subnet it belongs to")
        c = self.controller
        with c.lock:
            networks = c.all_networks()
            pools = {kv.key[len(DOCKER_POOLS) :]: kv.value for kv in self.store.list(DOCKER_POOLS)}
            # (no "pick this network's subnet" option: without --subnet dockerd rejects a
            # pool that overlaps a route, as an adopted network's does, and asks again)
            if pool:
                subnet, _, ip_range = validate_network_cidrs(pool, None, sub_pool or None)
                if _pool_id(subnet) in pools:  # Docker asks again after a restart: same answer
                    return {"PoolID": _pool_id(subnet), "Pool": subnet, "Data": {}}
            # a subnet tether already has is adopted, not an overlap
            if not pool or not any(n.subnet == subnet for n in networks):
                in_use = {p["subnet"]: "the subnet of another Docker network" for p in pools.values()}
                in_use.update({n.subnet: f"network {n.name!r}" for n in networks})
                # a requested pool is not checked against this host's routes here: a macvlan
                # network's is the LAN's, which the host may route; CreateNetwork checks it
                # as the network's driver needs (every other driver: against the routes too)
                subnet, _, ip_range = c.place_subnet(pool or None, None, sub_pool or None, in_use, check_host=not pool)
            self.store.put(DOCKER_POOLS + _pool_id(subnet), {"subnet": subnet, "ip_range": ip_range})
            return {"PoolID": _pool_id(subnet), "Pool": subnet, "Data": {}}

    def _request_pool6(self, pool: str, sub_pool: str) -> dict[str, Any]:
        """The v6 pool of a dual-stack network: ``pool`` checked (one tether already has
        is adopted), or a free ULA /64."""
        if sub_pool and not pool:
            raise InvalidInput("an IPv6 --ip-range needs the IPv6 --subnet it belongs to")
        if pool and not _is_v6(pool):
            raise InvalidInput(f"--subnet {pool} is IPv4 where dockerd asked for the IPv6 pool: give an IPv6 --subnet")
        c = self.controller
        subnet = validate_network_cidrs6(pool, None)[0] if pool else None  # bad input refused before the lock
        ip_range = validate_ip_range6(sub_pool, subnet) if sub_pool and subnet else None
        with c.lock:
            networks = c.all_networks()
            pools = {kv.key[len(DOCKER_POOLS) :]: kv.value for kv in self.store.list(DOCKER_POOLS)}
            if subnet is not None and _pool_id(subnet) in pools:  # Docker asks again after a restart
                return {"PoolID": _pool_id(subnet), "Pool": subnet, "Data": {}}
            if subnet is None or not any(n.subnet6 == subnet for n in networks):  # adopted: not an overlap
                others = [p["subnet"] for p in pools.values() if _is_v6(p["subnet"])]
                in_use = {s: "the subnet of another Docker network" for s in others}
                in_use.update({n.subnet6: f"network {n.name!r}" for n in networks if n.subnet6})
                subnet, _ = c.place_subnet6(subnet, None, in_use, check_host=subnet is None)  # (as for v4)
            self.store.put(DOCKER_POOLS + _pool_id(subnet), {"subnet": subnet, "ip_range": ip_range})
            return {"PoolID": _pool_id(subnet), "Pool": subnet, "Data": {}}

    def release_pool(self, pool_id: str) -> None:
        self.store.delete(DOCKER_POOLS + pool_id)

    def _pool(self, pool_id: str) -> dict[str, Any]:
        kv = self.store.get(DOCKER_POOLS + pool_id)
        if kv is None:
            raise NotFound(f"unknown tether address pool {pool_id!r}: create the network again with --ipam-driver tether")
        return kv.value

    def _network_of_pool(self, subnet: str) -> Network | None:
        """The tether network whose v4 or v6 subnet a pool is."""
        return next((n for n in self.controller.all_networks() if subnet in n.subnets), None)

    def request_address(self, pool_id: str, address: str, options: dict[str, Any]) -> str:
        pool = self._pool(pool_id)
        subnet = pool["subnet"]
        family = 6 if _is_v6(subnet) else 4
        prefixlen = ipaddress.ip_network(subnet).prefixlen
        network = self._network_of_pool(subnet)
        if options.get("RequestAddressType") == GATEWAY_REQUEST:
            return f"{self._gateway(subnet, network, address)}/{prefixlen}"
        if network is None:
            raise NotFound(
                f"no tether network has subnet {subnet} (removed with `tether network rm`?): "
                "remove the Docker network and create it again"
            )
        leased = self.controller.reserve_address(network, RESERVED_OWNER, address or None, family)
        return f"{leased}/{prefixlen}"

    @staticmethod
    def _gateway(subnet: str, network: Network | None, address: str) -> str:
        """The gateway of a pool: as asked (checked) before the network exists, the
        network's own after."""
        v6 = _is_v6(subnet)
        if network is None:  # CreateNetwork, next, gets it back from dockerd in IPv4Data/IPv6Data
            if v6:
                return validate_network_cidrs6(subnet, address or None)[1]
            return validate_network_cidrs(subnet, address or None, None)[1]
        gateway = network.gateway6 if v6 else network.gateway
        assert gateway is not None  # the network was found by this family's subnet
        if address and address != gateway:  # dockerd sends addresses in canonical form
            raise Conflict(
                f"network {network.name!r} ({subnet}) already has gateway {gateway}: "
                f"use --gateway {gateway} or leave it out"
            )
        return gateway

    def release_address(self, pool_id: str, address: str) -> None:
        kv = self.store.get(DOCKER_POOLS + pool_id)
        if kv is None or not address:
            return
        subnet = kv.value["subnet"]
        network = self._network_of_pool(subnet)
        if network is None or address == (network.gateway6 if _is_v6(subnet) else network.gateway):
            return
        # only a placeholder lease: an endpoint's lease went with DeleteEndpoint, and the
        # address may already belong to someone else
        self.controller.release_reservation(network, address, RESERVED_OWNER)

    # ------------------------------------------------------------------ networks
    def _network(self, network_id: str) -> Network:
        kv = self.store.get(DOCKER_NETS + network_id)
        if kv is None:
            raise NotFound(f"Docker network {network_id[:12]} is not a tether network: create it with -d tether")
        return self.controller.get_network(kv.value["name"])

    def create_network(
        self, network_id: str, options: dict[str, Any], ipv4: list[dict[str, Any]], ipv6: list[dict[str, Any]]
    ) -> None:
        """``ipv6`` (IPv6Data, with ``--ipv6``): the v6 pool and gateway of a dual-stack network."""
        if not network_id:
            raise InvalidInput("missing NetworkID in the request")
        for family, data in ((4, ipv4), (6, ipv6)):
            if len(data) > 1:
                raise InvalidInput(f"a tether network has one IPv{family} subnet: give one IPv{family} --subnet")
        name, driver, net_options = _network_options(network_id, options.get(GENERIC) or {})
        internal = str(options.get("com.docker.network.internal", "")).lower() == "true"
        subnet = ipv4[0].get("Pool") if ipv4 else None
        gateway = _strip_prefix(ipv4[0].get("Gateway", "")) if ipv4 else None
        subnet6 = (ipv6[0].get("Pool") or None) if ipv6 else None
        gateway6 = _strip_prefix(ipv6[0].get("Gateway", "")) if ipv6 else None
        if self.store.get(DOCKER_NETS + network_id) is not None:
            return  # asked again: it exists
        existing = self.controller.find_network(name)
        if existing is not None:
            # `-o tether.network=NAME` of a network tether already has: Docker joins it
            _check_adoptable(existing, driver, subnet, subnet6)
            self.store.put(DOCKER_NETS + network_id, {"name": name, "adopted": True})
            return
        pool = self.store.get(DOCKER_POOLS + _pool_id(subnet)) if subnet else None
        ip_range = pool.value.get("ip_range") if pool else None
        pool6 = self.store.get(DOCKER_POOLS + _pool_id(subnet6)) if subnet6 else None
        self.controller.create_network(
            name, driver, subnet, gateway or None, ip_range, net_options, internal,
            ipv6=bool(ipv6), subnet6=subnet6, gateway6=gateway6 or None,
            ip_range6=pool6.value.get("ip_range") if pool6 else None,
        )
        try:
            self.store.put(DOCKER_NETS + network_id, {"name": name, "adopted": False})
        except BaseException:
            self.controller.remove_network(name)
            raise

    def delete_network(self, network_id: str) -> None:
        kv = self.store.get(DOCKER_NETS + network_id)
        if kv is None:
            return
        if not kv.value.get("adopted") and self.controller.find_network(kv.value["name"]) is not None:
            self.controller.remove_network(kv.value["name"])
        self.store.delete(DOCKER_NETS + network_id)

    # ------------------------------------------------------------------ endpoints
    def create_endpoint(
        self, network_id: str, endpoint_id: str, interface: dict[str, Any], options: dict[str, Any]
    ) -> dict[str, Any]:
        if not endpoint_id:
            raise InvalidInput("missing EndpointID in the request")
        ip = _strip_prefix(str(interface.get("Address") or "")) or None
        ip6 = _strip_prefix(str(interface.get("AddressIPv6") or "")) or None
        mac = validate_mac(str(interface["MacAddress"])) if interface.get("MacAddress") else None
        if ip is not None:
            check_ipv4("address", ip)
        if ip6 is not None:
            ip6 = check_ipv6("AddressIPv6", ip6)
        network = self._network(network_id)
        # the leases tether's IPAM gave Docker a moment ago become the endpoint's; an
        # address Docker's own IPAM chose (or none yet) is leased now
        att = self.controller.create_external(
            RUNTIME, _ref(endpoint_id), network, ip, mac, reserved_by=RESERVED_OWNER, ip6=ip6
        )
        # only what Docker did not give (dockerd refuses a driver that "changes" an
        # address or MAC it passed in)
        given: dict[str, str] = {}
        if ip is None:
            given["Address"] = att.endpoint.cidr
        if ip6 is None and att.endpoint.cidr6 is not None:
            given["AddressIPv6"] = att.endpoint.cidr6
        if mac is None:
            given["MacAddress"] = att.endpoint.mac
        return {"Interface": given} if given else {}

    def join(self, network_id: str, endpoint_id: str, sandbox_key: str) -> dict[str, Any]:
        if not sandbox_key.startswith("/"):
            raise InvalidInput(f"invalid SandboxKey {sandbox_key!r}: Docker gives the namespace's path")
        # reachable from every host when Join returns, as for `tether run`
        endpoint = self.controller.join_external(RUNTIME, _ref(endpoint_id), sandbox_key).value.endpoint
        reply: dict[str, Any] = {
            "InterfaceName": {"SrcName": endpoint.ifname, "DstPrefix": "eth"},
            "StaticRoutes": [],
        }
        if endpoint.default_route:
            reply["Gateway"] = endpoint.gateway
            if endpoint.gateway6 is not None:
                reply["GatewayIPv6"] = endpoint.gateway6
        else:
            reply["DisableGatewayService"] = True  # an internal network: no way out, no extra NIC
        return reply

    def leave(self, network_id: str, endpoint_id: str) -> None:
        self.controller.leave_external(RUNTIME, _ref(endpoint_id))

    def delete_endpoint(self, network_id: str, endpoint_id: str) -> None:
        self.controller.remove_external(RUNTIME, _ref(endpoint_id))  # endpoint, lease, veth, records

    def endpoint_info(self, network_id: str, endpoint_id: str) -> dict[str, Any]:
        att = self.controller.external(RUNTIME, _ref(endpoint_id))
        if att is None:
            return {}
        info: dict[str, Any] = {
            "tether.network": att.network.name,
            "tether.container": att.container.name,
            "tether.host_ifname": att.endpoint.host_ifname,
        }
        if att.container.ports:
            info[PORTMAP] = [
                {"Proto": 6 if p.protocol == "tcp" else 17, "IP": att.endpoint.address, "Port": p.container_port,
                 "HostIP": p.host_ip or "", "HostPort": p.host_port, "HostPortEnd": p.host_port}
                for p in att.container.port_mappings
            ]
        return info

    def program_external(self, network_id: str, endpoint_id: str, options: dict[str, Any]) -> None:
        """Publish the ports of ``docker run -p`` through tether's port map."""
        mappings = _port_map(options.get(PORTMAP) or [])
        if mappings:
            self.controller.publish_external(RUNTIME, _ref(endpoint_id), mappings)

    def revoke_external(self, network_id: str, endpoint_id: str) -> None:
        self.controller.unpublish_external(RUNTIME, _ref(endpoint_id))


def _check_adoptable(existing: Network, driver: str, subnet: str | None, subnet6: str | None) -> None:
    """Docker may join a tether network only as it is: same subnets, same driver."""
    if subnet and existing.subnet != subnet:
        raise Conflict(
            f"tether network {existing.name!r} has subnet {existing.subnet}: use --subnet {existing.subnet} "
            "or another -o tether.network"
        )
    if subnet6 and existing.subnet6 != subnet6:
        if existing.subnet6 is None:
            raise Conflict(f"tether network {existing.name!r} has no IPv6 subnet: leave out --ipv6")
        raise Conflict(
            f"tether network {existing.name!r} has IPv6 subnet {existing.subnet6}: use --subnet {existing.subnet6} "
            "or another -o tether.network"
        )
    if existing.driver != driver:
        raise Conflict(
            f"tether network {existing.name!r} uses driver {existing.driver}: use -o tether.driver={existing.driver}"
        )


def _network_options(network_id: str, generic: Any) -> tuple[str, str, dict[str, str]]:
    """(tether name, driver, tether -o options) from Docker's generic options."""
    if not isinstance(generic, dict):
        raise InvalidInput("malformed driver options")
    unknown = sorted(k for k in generic if k not in DOCKER_OPTIONS)
    if unknown:
        raise InvalidInput(f"unknown option -o {unknown[0]}: known options are {', '.join(sorted(DOCKER_OPTIONS))}")
    name = str(generic.get("tether.network") or f"docker-{network_id[:12]}")
    driver = str(generic.get("tether.driver") or "bridge")
    if driver not in ("bridge", "overlay", "macvlan"):
        raise InvalidInput(f"invalid -o tether.driver={driver}: use bridge, overlay or macvlan")
    options = {DOCKER_OPTIONS[k]: str(v) for k, v in generic.items() if DOCKER_OPTIONS[k]}
    return name, driver, options  # type: ignore[return-value]


def _port_map(raw: Any) -> list[PortMapping]:
    """Docker's port map: ``[{Proto: 6|17, Port, HostIP, HostPort, HostPortEnd}]``."""
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
    return mappings
