"""Network verbs: create (placing a subnet), list, inspect, remove, prune.

The controller checks what is common to every network (the name, the subnet and its
overlap with every other network and with this host's routes) and asks the network's
driver for the rest: its options (``validate``), its records and kernel side
(``create_network``/``delete_network``), who uses it and how it is described.
"""

from __future__ import annotations

import uuid
from typing import Any

from ..errors import Conflict, InvalidInput
from ..ipam import (
    DEFAULT_POOLS,
    choose_subnet,
    choose_subnet6,
    find_overlap,
    validate_aux_addresses,
    validate_ip_range6,
    validate_network_cidrs,
    validate_network_cidrs6,
)
from ..model import DEFAULT_BRIDGE, DEFAULT_NETWORK, Network, check_labels
from ..storekeys import NET_PREFIX
from ..drivers import NetworkSpec
from ..validate import RESERVED_NETWORK_NAMES, validate_name
from .core import ControllerCore

__all__ = ["NetworkVerbs"]


class NetworkVerbs(ControllerCore):
    def create_network(
        self,
        name: str,
        driver: str = "bridge",
        subnet: str | None = None,
        gateway: str | None = None,
        ip_range: str | None = None,
        options: dict[str, str] | None = None,
        internal: bool = False,
        labels: dict[str, str] | None = None,
        ipv6: bool = False,
        subnet6: str | None = None,
        gateway6: str | None = None,
        aux_addresses: dict[str, str] | None = None,
        ip_range6: str | None = None,
    ) -> Network:
        """``ipv6``: dual stack, with ``subnet6`` (None: a free ULA /64), ``gateway6`` and
        ``ip_range6`` (where container v6 addresses come from; None: the whole v6 subnet);
        ``aux_addresses``: NAME -> address of the subnet(s) that IPAM never hands out."""
        validate_name("network", name)
        labels = check_labels(labels)
        if name in RESERVED_NETWORK_NAMES or name == DEFAULT_NETWORK:
            raise Conflict(f"network name {name!r} is reserved: choose another name")
        if (subnet6 or gateway6) and not ipv6:
            raise InvalidInput("an IPv6 --subnet or --gateway needs --ipv6: add --ipv6 to make a dual-stack network")
        if gateway6 and not subnet6:
            raise InvalidInput("an IPv6 --gateway needs the IPv6 --subnet it belongs to")
        if ip_range6 and not subnet6:
            raise InvalidInput("an IPv6 --ip-range needs the IPv6 --subnet it belongs to")
        if aux_addresses and subnet is None:
            raise InvalidInput("--aux-address needs --subnet: give the subnet its addresses belong to")
        v6 = (subnet6, gateway6) if ipv6 else None
        return self._create_network(
            name, driver, subnet, gateway, ip_range, options or {}, internal, labels=labels, v6=v6, aux=aux_addresses or {},
            ip_range6=ip_range6,
        )

    def _create_network(
        self,
        name: str,
        driver_name: str,
        subnet: str | None,
        gateway: str | None,
        ip_range: str | None,
        options: dict[str, str],
        internal: bool,
        bridge: str | None = None,
        labels: dict[str, str] | None = None,
        v6: tuple[str | None, str | None] | None = None,
        aux: dict[str, str] | None = None,
        ip_range6: str | None = None,
    ) -> Network:
        """``v6``: (subnet6, gateway6) of a dual-stack network, either None to pick; None: IPv4 only;
        ``ip_range6`` inside the given v6 subnet."""
        driver = self._driver_named(driver_name)
        options = driver.validate(self.ctx, options, internal)
        if subnet is None and (gateway or ip_range):
            raise InvalidInput("--gateway and --ip-range need --subnet: give the subnet they belong to")
        if v6 is not None and v6[0] is not None:
            subnet6 = validate_network_cidrs6(v6[0], v6[1])[0]  # bad input is refused before the lock
            ip_range6 = validate_ip_range6(ip_range6, subnet6) if ip_range6 else None
        with self._operation() as op:
            if self._lookup_network(name) is not None:
                raise Conflict(f"network {name!r} already exists: choose another name or remove it first")
            networks = self._all_networks()
            # a driver whose subnet is a LAN's (macvlan) may overlap the host's routes, and
            # networks on other parents: only what shares its address space is checked
            near = [n for n in networks if driver.shares_space(options, n)]
            in_use = {n.subnet: f"network {n.name!r}" for n in near}
            host = not driver.lan
            subnet, gateway, ip_range = self.place_subnet(subnet, gateway, ip_range, in_use, driver.pools, host)
            subnet6 = gateway6 = None
            if v6 is not None:
                in_use6 = {n.subnet6: f"network {n.name!r}" for n in near if n.subnet6}
                subnet6, gateway6 = self.place_subnet6(v6[0], v6[1], in_use6, host)
            subnets = [subnet, *([subnet6] if subnet6 else [])]
            aux = validate_aux_addresses(aux or {}, subnets, [gateway, *([gateway6] if gateway6 else [])])
            spec = NetworkSpec(
                uuid.uuid4().hex, name, subnet, gateway, ip_range, options, internal, bridge, labels or {}, subnet6, gateway6,
                aux, ip_range6,
            )
            network = driver.create_network(self.ctx, spec, networks, op)
            self._emit("network", "create", network, driver=network.driver, subnet=network.subnet, subnet6=network.subnet6)
            if self.resolver is not None and name != DEFAULT_NETWORK:
                self.resolver.set_subnets(name, network.subnets)  # its reverse names are answered here
            return network

    def place_subnet6(
        self, subnet6: str | None, gateway6: str | None, in_use: dict[str, str], check_host: bool = True
    ) -> tuple[str, str]:
        """The v6 half of ``place_subnet``: a requested v6 subnet checked against ``in_use``
        and this host, or a free random ULA /64. Returns (subnet6, gateway6)."""
        host = [c for c in self.ctx.datapath.host_networks() if ":" in c]
        if subnet6 is None:
            return validate_network_cidrs6(choose_subnet6(list(in_use) + host), None)
        subnet6, gateway6 = validate_network_cidrs6(subnet6, gateway6)
        if not check_host:
            host = []
        owner = find_overlap(subnet6, in_use) or find_overlap(subnet6, {c: "a route or address on this host" for c in host})
        if owner is not None:
            raise Conflict(f"IPv6 subnet {subnet6} overlaps {owner}: choose a subnet that does not overlap")
        return subnet6, gateway6

    def place_subnet(
        self,
        subnet: str | None,
        gateway: str | None,
        ip_range: str | None,
        in_use: dict[str, str],
        pools: list[tuple[str, int]] = DEFAULT_POOLS,
        check_host: bool = True,
    ) -> tuple[str, str, str | None]:
        """A requested subnet, checked against ``in_use`` (cidr -> owner) and this host's
        routes and addresses (unless not ``check_host``); or, with none requested, the
        first free one of ``pools``. Returns (subnet, gateway, ip_range), normalised."""
        host = self.ctx.datapath.host_networks()
        if subnet is None:
            return validate_network_cidrs(choose_subnet(list(in_use) + host, pools), None, None)
        subnet, gateway, ip_range = validate_network_cidrs(subnet, gateway, ip_range)
        if not check_host:
            host = []
        owner = find_overlap(subnet, in_use) or find_overlap(subnet, {c: "a route or address on this host" for c in host})
        if owner is not None:
            raise Conflict(f"subnet {subnet} overlaps {owner}: choose a subnet that does not overlap")
        return subnet, gateway, ip_range

    def default_network(self) -> Network:
        """The network ``bridge`` (device tether0), created on first use like Docker's."""
        with self.lock:
            kv = self.store.get(NET_PREFIX + DEFAULT_NETWORK)
            if kv is not None:
                return Network.from_dict(kv.value)
            v6 = (None, None) if self.default_ipv6 else None
            return self._create_network(
                DEFAULT_NETWORK, "bridge", None, None, None, {}, False, bridge=DEFAULT_BRIDGE, v6=v6
            )

    def _resolve_network(self, name: str) -> Network:
        if name == DEFAULT_NETWORK:
            return self.default_network()
        return self._network(name)

    def get_network(self, name: str) -> Network:
        """A network by name (this host's or the cluster's); ``NotFound`` if none."""
        return self._network(name)

    def find_network(self, name: str) -> Network | None:
        """A network by name (this host's or the cluster's), or None."""
        return self._lookup_network(name)

    def all_networks(self) -> list[Network]:
        """Every network this host sees: its own and the cluster's."""
        return self._all_networks()

    def _local_users(self, network: Network) -> list[str]:
        names = {c.id: c.name for c in self._containers()}
        return sorted(names.get(ep.container_id, ep.container_id) for ep in self._endpoints() if ep.network_id == network.id)

    def list_networks(self) -> list[dict[str, Any]]:
        counts: dict[str, int] = {}
        for ep in self._endpoints():
            counts[ep.network_id] = counts.get(ep.network_id, 0) + 1
        out = []
        for n in self._all_networks():
            driver = self._driver(n)
            local = [""] * counts.get(n.id, 0)  # only their number matters here
            out.append(dict(n.to_dict(), containers=len(driver.users(self.ctx, n, local)), scope=driver.scope))
        return out

    def inspect_network(self, name: str) -> dict[str, Any]:
        network = self._network(name)
        names = {c.id: c.name for c in self._containers()}
        attached = {
            names.get(ep.container_id, ep.container_id): {
                "ifname": ep.ifname,
                "address": ep.cidr,
                "address6": ep.cidr6,
                "mac": ep.mac,
                "host_ifname": ep.host_ifname,
            }
            for ep in self._endpoints()
            if ep.network_id == network.id
        }
        return self._driver(network).describe(self.ctx, network, attached)

    def remove_network(self, name: str) -> None:
        with self.lock:
            network = self._network(name)  # a name, an ID or a unique ID prefix
            if network.name == DEFAULT_NETWORK:
                raise Conflict("bridge is the predefined default network and cannot be removed")
            users = self._driver(network).users(self.ctx, network, self._local_users(network))
            if users:
                raise Conflict(
                    f"network {network.name!r} has containers attached ({', '.join(users)}): "
                    f"disconnect or remove them first"
                )
            errors = self._driver(network).delete_network(self.ctx, network)
            self.events.emit("network", "destroy", network, driver=network.driver)
            if self.resolver is not None:
                self.resolver.drop_network(network.name)
            self._log_undo(errors)

    def prune_networks(self) -> list[str]:
        removed = []
        with self.lock:
            for network in self._networks():
                if network.name != DEFAULT_NETWORK and not self._local_users(network):
                    self.remove_network(network.name)
                    removed.append(network.name)
        return removed

    def nodes(self) -> list[dict[str, Any]]:
        if self.cluster is None:
            raise InvalidInput("this daemon has no cluster store: start it with --cluster-store etcd://HOST:2379")
        return self.cluster.nodes()
