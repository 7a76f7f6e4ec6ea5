"""Endpoint verbs: one interface of one sandbox on one network, and what hangs off it.

An attach leases the address, writes the endpoint's record, has the network's driver
build the interface (and, on an overlay, publish it to every host), then registers the
names in the embedded resolver; each step pushes its inverse on the operation. Published
ports and the checks that come before any of it (a requested address, host ports,
aliases) live here too, because every front end's attach goes through them.
"""

from __future__ import annotations

import ipaddress
import uuid
from typing import TYPE_CHECKING, Any

from ..errors import Conflict, Exhausted, InvalidInput
from ..model import DEFAULT_NETWORK, Container, Endpoint, Network, PortMapping, host_ifname_for, mac_for
from ..storekeys import NET_PREFIX, ep_key
from ..drivers import Undo, collect
from .core import ControllerCore

if TYPE_CHECKING:
    from ..firewall import PortRule

__all__ = ["EndpointVerbs", "EPHEMERAL_PORTS", "check_port_families"]

EPHEMERAL_PORTS = range(32768, 61000)


class EndpointVerbs(ControllerCore):
    # ------------------------------------------------------------------ attach and detach
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
        ip6: str | None = None,
    ) -> Endpoint:
        """``default_route`` None: the route only if the namespace has none yet (a later
        network, or a runtime's namespace), found out in the same trip into it. ``ip6``:
        the v6 address asked for on a dual-stack network (None: one is leased)."""
        assert container.netns is not None
        if ifname is None:
            used = {ep.ifname for ep in self._endpoints(container.id)}
            index = 0
            while f"eth{index}" in used:
                index += 1
            ifname = f"eth{index}"
        endpoint = self._new_endpoint(
            container, network, ip, undo, default_route is not False, ifname, mac, aliases, ip6=ip6
        )
        routed = self._driver(network).attach_endpoint(
            self.ctx, network, container, endpoint, undo, keep_existing_default=default_route is None
        )
        if endpoint.default_route and not routed:  # the namespace kept the route it had
            endpoint = Endpoint.from_dict(dict(endpoint.to_dict(), default_route=False))
            self.store.put(ep_key(container.id, network.id), endpoint.to_dict())
        self._add_dns_records(container, network, endpoint, undo)
        self._emit_endpoint("attach", container, endpoint)
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
        ip6: str | None = None,
    ) -> Endpoint:
        """Lease the addresses, one per family of the network (``ip``/``ip6`` are already
        ``container``'s when ``leased``) and write the endpoint's record, all undoable; no
        kernel work yet."""
        ipam = self._ipam_for(network)
        address = ip if leased and ip else ipam.allocate(network, container.id, ip)
        undo.push(f"lease {address}", lambda: ipam.release(network.id, address))
        address6: str | None = None
        if network.ipv6:
            address6 = ip6 if leased and ip6 else ipam.allocate(network, container.id, ip6, family=6)
            undo.push(f"lease {address6}", lambda: ipam.release(network.id, address6))
        elif ip6:
            raise InvalidInput(f"--ip6 {ip6}: network {network.name!r} has no IPv6 subnet (create it with --ipv6)")
        driver = self._driver(network)
        endpoint = Endpoint(
            id=uuid.uuid4().hex,
            network_id=network.id,
            network=network.name,
            container_id=container.id,
            ifname=ifname,
            host_ifname=host_ifname_for(container.id, network.id),
            address=address,
            prefixlen=network.prefixlen,
            gateway=driver.gateway(self.ctx, network),
            mac=mac or mac_for(address),
            default_route=default_route and not network.internal,  # internal: no way out at all
            aliases=list(aliases or []),
            address6=address6,
            prefixlen6=network.prefixlen6,
            gateway6=driver.gateway6(self.ctx, network) if address6 else None,
        )
        key = ep_key(container.id, network.id)
        self.store.put(key, endpoint.to_dict())
        undo.push(f"record of endpoint {endpoint.ifname}", lambda: self.store.delete(key))
        return endpoint

    def _detach(self, container: Container, endpoint: Endpoint, kernel_gone: bool = False) -> list[str]:
        """Undo one endpoint. ``kernel_gone``: its namespace was just deleted with nothing
        left inside, so the kernel removes the veth pair by itself (deleting it by hand
        costs 20-40 ms of the caller's time for the same result)."""
        errors: list[str] = []
        network = self._lookup_network(endpoint.network)
        if self.firewall is not None and container.ports:
            firewall = self.firewall
            errors += collect(lambda: firewall.remove_ports(self._port_rules(container, endpoint)))
            self._emit_ports("unpublish", container, endpoint, now=True)
        errors += collect(lambda: self._remove_dns_records(container, endpoint))
        if network is not None:
            errors += self._driver(network).detach_endpoint(self.ctx, network, endpoint, kernel_gone, container.netns)
            ipam = self._ipam_for(network)
        else:
            if not kernel_gone:
                errors += collect(lambda: self.ctx.datapath.detach_veth(endpoint.host_ifname))
            ipam = self.ipam
        # the record goes before its lease: a kill between leaves a lease reconcile frees,
        # never an endpoint without a lease (whose address could be handed out twice)
        errors += collect(lambda: self.store.delete(ep_key(container.id, endpoint.network_id)))
        for address in endpoint.addresses:
            errors += collect(lambda a=address: ipam.release(endpoint.network_id, a, owner=container.id))  # type: ignore[misc]
        errors += collect(lambda: self._set_dns_view(container))
        self._emit_endpoint("detach", container, endpoint, now=True)
        return errors

    def _check_requested_ip(self, network: Network, ip: str, family: int = 4) -> None:
        """``--ip`` (or ``--ip6``, ``family`` 6) on ``network``: of its family, inside its
        subnet, not its gateway, not leased."""
        flag, subnet, gateway = ("--ip", network.subnet, network.gateway) if family == 4 else (
            "--ip6", network.subnet6, network.gateway6)
        if subnet is None:
            raise InvalidInput(f"--ip6 {ip}: network {network.name!r} has no IPv6 subnet (create it with --ipv6)")
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            raise InvalidInput(f"{flag} {ip!r} is not an IP address: give one inside {subnet}") from None
        if address.version != family:
            other = "--ip6" if family == 4 else "--ip"
            raise InvalidInput(f"{flag} {ip} is IPv{address.version}: use {other} for it, or an address inside {subnet}")
        if address not in ipaddress.ip_network(subnet):
            raise InvalidInput(f"{flag} {ip} is outside network {network.name!r} ({subnet}): pick an address inside it")
        if str(address) == gateway:
            raise Conflict(f"{flag} {ip} is the gateway of network {network.name!r}: pick another address")
        holder = self._ipam_for(network).owner(network.id, str(address))
        if holder is not None:
            owner = self._container_by_id(holder)
            raise Conflict(
                f"address {ip} on network {network.name!r} is in use by "
                f"{'container ' + repr(owner.name) if owner else holder}: pick another address"
            )

    def _check_requested(self, network: Network, ip: str | None, ip6: str | None) -> None:
        """Both requested addresses of an attach, checked before anything changes."""
        if ip:
            self._check_requested_ip(network, ip)
        if ip6:
            self._check_requested_ip(network, ip6, 6)

    def _check_aliases(self, network: Network, names: list[str], own_name: str) -> None:
        """A name or alias may not shadow another container's name on the same network."""
        if len(names) < 2:
            return  # no aliases: nothing to check (and no scan of every container)
        others = {
            c.name
            for c in self._containers()
            if c.name != own_name and self.store.get(ep_key(c.id, network.id)) is not None
        }
        for alias in names[1:]:
            if alias in others:
                raise Conflict(
                    f"alias {alias!r} is the name of another container on network {network.name!r}: pick another alias"
                )

    # ------------------------------------------------------------------ published ports
    def _check_ports(self, mappings: list[PortMapping]) -> list[PortMapping]:
        """Validate published ports against the host and every container; pick free host
        ports for ``-p CPORT``. Returns the mappings with every host port concrete."""
        if not mappings:
            return mappings
        host_addrs = set(self.ctx.datapath.host_addresses()) | {"::1"}  # (served by the firewall's proxy)
        host_ports = self.ctx.datapath.host_ports()
        taken = [(p, c.name) for c in self._containers() for p in c.port_mappings]
        chosen: list[PortMapping] = []
        for m in mappings:
            if m.host_ip is not None and m.host_ip not in host_addrs and m.host_ip not in _WILDCARDS:
                raise InvalidInput(
                    f"-p {m}: {m.host_ip} is not an address of this host: use one of {', '.join(sorted(host_addrs))}"
                )
            if m.host_port == 0:
                m = self._pick_host_port(m, [q for q, _ in taken] + chosen, host_ports)
            for q in chosen:
                if _clash(m, q):
                    raise Conflict(f"-p {m}: host port {m.host_port}/{m.protocol} is given twice")
            for q, owner in taken:
                if _clash(m, q):
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

    @staticmethod
    def _pick_host_port(m: PortMapping, taken: list[PortMapping], host_ports: object) -> PortMapping:
        for port in EPHEMERAL_PORTS:
            candidate = PortMapping(m.protocol, port, m.container_port, m.host_ip)
            if not any(_clash(candidate, q) for q in taken) and (
                host_ports.holder(m.protocol, port, m.host_ip) is None  # type: ignore[attr-defined]
            ):
                return candidate
        raise Exhausted(f"-p {m}: no free host port left between 32768 and 60999")

    def _port_rules(self, container: Container, endpoint: Endpoint | None = None) -> list[PortRule]:
        """Firewall inputs for a container's published ports, each aimed at its address on
        the network it was published on (only those on ``endpoint``'s, when given)."""
        from ..firewall import PortRule

        rules: list[PortRule] = []
        targets: dict[str | None, Endpoint | None] = {}
        for p in container.port_mappings:
            network = self._port_network(container, p)
            if endpoint is not None:
                if network is not None and network != endpoint.network:
                    continue
                target: Endpoint | None = endpoint
            else:
                if network not in targets:
                    targets[network] = self._endpoint_on(container, network)
                target = targets[network]
            if target is not None:
                for host_ip, address in _port_targets(p.host_ip, target):
                    rules.append(PortRule(p.protocol, host_ip, p.host_port, address, p.container_port))
        return rules

    @staticmethod
    def _port_network(container: Container, port: PortMapping) -> str | None:
        """The network a port was published on: its own record's, or the network a
        container was started on (None: an old record of another runtime, any endpoint)."""
        if port.network is not None:
            return port.network
        return None if container.external else container.mode.target

    def _endpoint_on(self, container: Container, network_name: str | None) -> Endpoint | None:
        """The container's endpoint on a network by name (None: its first one)."""
        if network_name is None:
            eps = self._endpoints(container.id)
            return eps[0] if eps else None
        network = self.store.get(NET_PREFIX + network_name)
        ep_kv = self.store.get(ep_key(container.id, network.value["id"])) if network else None
        return Endpoint.from_dict(ep_kv.value) if ep_kv else None

    def _ports_off(self, container: Container, endpoint: Endpoint) -> list[dict[str, Any]]:
        """The container's port records less those published on ``endpoint``'s network."""
        return [
            p.to_dict()
            for p in container.port_mappings
            if (network := self._port_network(container, p)) is not None and network != endpoint.network
        ]

    def _publish_ports(self, container: Container, endpoint: Endpoint, undo: Undo) -> None:
        if self.firewall is None or not container.ports:
            return
        firewall, rules = self.firewall, self._port_rules(container, endpoint)
        firewall.add_ports(rules)
        undo.push("published ports", lambda: firewall.remove_ports(rules))
        self._emit_ports("publish", container, endpoint)

    def _unpublish_ports(self, container: Container) -> list[str]:
        if self.firewall is None or not container.ports:
            return []
        firewall = self.firewall
        errors = collect(lambda: firewall.remove_ports(self._port_rules(container)))
        self._emit_ports("unpublish", container, None, now=True)
        return errors

    def _emit_ports(self, action: str, container: Container, endpoint: Endpoint | None, now: bool = False) -> None:
        """A port event per mapping published on ``endpoint``'s network (every one: None)."""
        emit = self.events.emit if now else self._emit
        for p in container.port_mappings:
            network = self._port_network(container, p)
            if endpoint is None or network is None or network == endpoint.network:
                host = f"[{p.host_ip}]:" if p.host_ip and ":" in p.host_ip else f"{p.host_ip}:" if p.host_ip else ""
                emit(
                    "port", action, container, port=f"{host}{p.host_port}->{p.container_port}/{p.protocol}",
                    host_ip=p.host_ip, host_port=p.host_port, container_port=p.container_port, protocol=p.protocol,
                    network=network or (endpoint.network if endpoint else None),
                )

    # ------------------------------------------------------------------ names
    def _dns_names(self, container: Container, endpoint: Endpoint) -> list[str]:
        return [container.name, *endpoint.aliases]

    def _add_dns_records(self, container: Container, network: Network, endpoint: Endpoint, undo: Undo) -> None:
        if self.resolver is None or network.name == DEFAULT_NETWORK:
            return  # the default network has no names, as in Docker
        resolver = self.resolver
        resolver.set_subnets(network.name, network.subnets)  # its reverse names are answered, never forwarded
        for name in self._dns_names(container, endpoint):
            for address in endpoint.addresses:
                resolver.add_record(network.name, name, address)
                undo.push(f"name {name}", lambda n=name, a=address: resolver.remove_record(network.name, n, a))  # type: ignore[misc]
        self._set_dns_view(container)

    def _remove_dns_records(self, container: Container, endpoint: Endpoint) -> None:
        if self.resolver is None:
            return
        for name in self._dns_names(container, endpoint):
            for address in endpoint.addresses:
                self.resolver.remove_record(endpoint.network, name, address)

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


def check_port_families(mappings: list[PortMapping], network: Network, publishes: bool = True) -> None:
    """A port published on a v6 host address needs a v6 address to point at; a network
    whose driver does not publish ports (``publishes`` false: macvlan) takes none."""
    if mappings and not publishes:
        raise InvalidInput(
            f"-p {mappings[0]}: network {network.name!r} is a {network.driver} network, whose containers are on "
            "the LAN with addresses of their own: drop -p and reach the container at its address"
        )
    for m in mappings:
        if m.host_ip is not None and ":" in m.host_ip and not network.ipv6:
            raise InvalidInput(
                f"-p {m}: network {network.name!r} has no IPv6 subnet, so nothing answers on {m.host_ip}: "
                "publish on an IPv4 address or create the network with --ipv6"
            )


_WILDCARDS = {"0.0.0.0": 4, "::": 6}


def _port_targets(host_ip: str | None, target: Endpoint) -> list[tuple[str | None, str]]:
    """(host address, container address) per family a published port covers: ``-p 8080:80``
    both families the endpoint has; ``0.0.0.0``/``::`` every address of one family; an
    address its own family (a v6 one needs the endpoint's v6 address)."""
    if host_ip is None:
        return [(None, a) for a in target.addresses]
    family = _WILDCARDS.get(host_ip) or (6 if ":" in host_ip else 4)
    address = target.address if family == 4 else target.address6
    if address is None:
        return []
    return [(None if host_ip in _WILDCARDS else host_ip, address)]


def _clash(p: PortMapping, q: PortMapping) -> bool:
    """Whether two published ports want the same host port on some address."""
    if p.protocol != q.protocol or p.host_port != q.host_port:
        return False
    if p.host_ip is None or q.host_ip is None or p.host_ip == q.host_ip:
        return True
    fp, fq = (_WILDCARDS.get(ip) or (6 if ":" in ip else 4) for ip in (p.host_ip, q.host_ip))
    return fp == fq and (p.host_ip in _WILDCARDS or q.host_ip in _WILDCARDS)
