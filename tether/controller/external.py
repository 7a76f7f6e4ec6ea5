"""Attachments of other runtimes: namespaces tether did not make (CNI, Docker's driver).

Another runtime's sandbox is recorded as an *external* container named
``<runtime>-<its id>`` with the namespace the runtime gave; tether attaches endpoints to it
but never creates, deletes or runs anything in that namespace. These verbs are what the
doors (``doors/cni.py``, ``doors/docker.py``) translate their protocols into; the doors
hold no network state of their own beyond their protocol's ids.

Two attachment shapes: ``attach_external`` builds the interface inside the runtime's
namespace at once (CNI ADD). Docker splits the same into steps: ``create_external``
leases and records (CreateEndpoint), ``join_external`` builds a veth whose container end
stays on the host for dockerd to move (Join), ``leave_external`` removes it (Leave).

On a dual-stack network every attachment gets an address of each family, as ``tether
run`` does: asked for (CNI's ``ips``, Docker's AddressIPv6) or leased here.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, replace

from ..errors import Conflict, InvalidInput, NotFound
from ..model import Container, Endpoint, Network, PortMapping, host_ifname_for
from ..storekeys import CTR_PREFIX, ep_key
from .containers import ContainerVerbs
from .endpoints import check_port_families
from .core import Operation, Outcome

__all__ = ["ExternalVerbs", "RUNTIMES", "Runtime", "external_name"]


@dataclass(frozen=True)
class Runtime:
    """What tether does for one kind of foreign sandbox."""

    serve_dns: bool  # run the embedded resolver in its namespace (else it has its own)
    names_netns: bool  # give its namespace an ``ip netns`` name (it binds it elsewhere)
    configures_inside: bool  # tether names and addresses the interface inside (else the runtime)


RUNTIMES = {
    "cni": Runtime(serve_dns=True, names_netns=False, configures_inside=True),
    # dockerd runs its own resolver, and moves, renames and addresses the interface itself
    "docker": Runtime(serve_dns=False, names_netns=True, configures_inside=False),
}


def external_name(runtime: str, ref: str) -> str:
    """The record name of a runtime's sandbox: ``<runtime>-<ref>``, a valid container name."""
    clean = "".join(c if c.isalnum() or c in "_.-" else "-" for c in ref)
    return f"{runtime}-{clean}"[:63]


def _check_v6_wanted(network: Network, ip6: str | None) -> None:
    """A v6 address asked for by another runtime needs a dual-stack network."""
    if ip6 is not None and not network.ipv6:
        raise InvalidInput(
            f"IPv6 address {ip6} asked for on network {network.name!r}, which has no IPv6 subnet: "
            "leave it out, or use a network created with --ipv6"
        )


def runtime_of(container: Container) -> Runtime | None:
    if not container.external:
        return None
    return RUNTIMES.get(container.name.split("-", 1)[0])


@dataclass(frozen=True)
class Attachment:
    container: Container
    endpoint: Endpoint
    network: Network


class ExternalVerbs(ContainerVerbs):
    # ------------------------------------------------------------------ one step (CNI)
    def attach_external(
        self,
        runtime: str,
        ref: str,
        network_name: str,
        netns: str,
        ifname: str,
        ip: str | None = None,
        mac: str | None = None,
        ports: list[PortMapping] | None = None,
        aliases: list[str] | None = None,
        ip6: str | None = None,
    ) -> Outcome[Attachment]:
        """Give the runtime's namespace an interface on a network (CNI ADD), with ``ip``
        and ``ip6`` if asked for. Idempotent: the same sandbox, interface and network give
        the same attachment again."""
        if not netns.startswith("/") or not os.path.exists(netns):
            raise NotFound(f"network namespace {netns!r} does not exist: the runtime must create it first")
        name = external_name(runtime, ref)
        aliases = aliases or []
        with self._operation() as op:
            network = self._resolve_network(network_name)
            kv = self.store.get(CTR_PREFIX + name)
            container = Container.from_dict(kv.value) if kv else None
            if container is not None:
                if container.netns != netns:
                    raise Conflict(f"container {ref} is known with another namespace ({container.netns})")
                existing = self.store.get(ep_key(container.id, network.id))
                if existing is not None:
                    ep = Endpoint.from_dict(existing.value)
                    if ep.ifname == ifname:
                        return Outcome(Attachment(container, ep, network))
                    raise Conflict(f"container {ref} is already on network {network.name!r} as {ep.ifname}")
            _check_v6_wanted(network, ip6)
            self._check_requested(network, ip, ip6)
            self._check_aliases(network, [name, *aliases], name)
            if ports and network.internal:
                raise InvalidInput(f"network {network.name!r} is internal: it has no published ports")
            check_port_families(ports or [], network, self._driver(network).publishes_ports)
            mappings = [replace(m, network=network.name) for m in self._check_ports(ports or [])]
            if container is None:
                container = self._new_external(runtime, name, netns, op)
            if mappings:
                before = container
                container = self._save(container.with_(ports=container.ports + [m.to_dict() for m in mappings]))
                op.push("published ports of the record", lambda: self._save(before))
            endpoint = self._attach(
                container, network, ip, op, default_route=None, aliases=aliases, ifname=ifname, mac=mac, ip6=ip6
            )
            if mappings:
                self._publish_ports(container.with_(ports=[m.to_dict() for m in mappings]), endpoint, op)
        return Outcome(Attachment(container, endpoint, network), op.lagging)

    def _new_external(self, runtime: str, name: str, netns: str | None, op: Operation) -> Container:
        container = Container(
            id=uuid.uuid4().hex,
            name=name,
            hostname=name,
            net_mode="none",
            netns=netns,
            cmd=[],
            state="external",
            external=True,
            created=time.time(),
        )
        self._save(container)
        op.push("record", lambda: self.store.delete(CTR_PREFIX + name))
        self._index(container, op)
        if RUNTIMES[runtime].serve_dns:
            # the embedded resolver on 127.0.0.11, as for `tether run`: a runtime that writes
            # resolv.conf from the result resolves tether's names (and, through upstreams,
            # everything else)
            self._serve_dns(container, op)
        return container

    def detach_external(self, runtime: str, ref: str, network_name: str, ifname: str = "") -> None:
        """Remove a runtime's interface (CNI DEL); with its last one, the whole record. A
        missing sandbox, network or endpoint is success: DEL may come again, after a
        half-done ADD, or after a reboot."""
        with self.lock:
            kv = self.store.get(CTR_PREFIX + external_name(runtime, ref))
            if kv is None:
                return
            container = Container.from_dict(kv.value)
            network = self._lookup_network(network_name)
            for ep in self._endpoints(container.id):
                if (network is None or ep.network_id == network.id) and (not ifname or ep.ifname == ifname):
                    self._log_undo(self._detach(container, ep))  # also drops its published ports
                    container = self._save(container.with_(ports=self._ports_off(container, ep)))
            if not self._endpoints(container.id):
                self._log_undo(self._teardown(container))

    def check_external(self, runtime: str, ref: str, network_name: str, ifname: str) -> None:
        """The interface, its addresses, its default routes and its host side are still
        there (CNI CHECK); raises ``NotFound`` naming the first thing missing."""
        with self.lock:
            kv = self.store.get(CTR_PREFIX + external_name(runtime, ref))
            network = self._network(network_name)
            ep_kv = self.store.get(ep_key(kv.value["id"], network.id)) if kv else None
            if kv is None or ep_kv is None:
                raise NotFound(f"container {ref} is not attached to network {network_name!r}")
            container, ep = Container.from_dict(kv.value), Endpoint.from_dict(ep_kv.value)
            if ep.ifname != ifname:
                raise NotFound(f"container {ref} is on network {network_name!r} as {ep.ifname}, not {ifname}")
        assert container.netns is not None
        if not os.path.exists(container.netns):
            raise NotFound(f"network namespace {container.netns} is gone")
        interfaces = {i["ifname"]: i for i in self.ctx.datapath.container_interfaces(container.netns)}
        found = interfaces.get(ep.ifname)
        if found is None:
            raise NotFound(f"interface {ep.ifname} is missing in {container.netns}")
        present = {*found.get("addresses", []), *found.get("addresses6", [])}
        for cidr in (ep.cidr, ep.cidr6):
            if cidr is not None and cidr not in present:
                raise NotFound(f"address {cidr} is missing on {ep.ifname}")
        if ep.default_route:
            self._check_default_routes(container.netns, ep)
        if not self._driver(network).endpoint_present(self.ctx, network, ep):
            raise NotFound(f"the host side {ep.host_ifname} of {ep.ifname} is missing or off its bridge")

    def _check_default_routes(self, netns: str, ep: Endpoint) -> None:
        """Both default routes of an endpoint that holds them: v4 via its gateway, and v6
        via its v6 gateway on a dual-stack network."""
        if not self.ctx.datapath.has_default_route(netns):
            raise NotFound(f"the default route via {ep.gateway} is missing in {netns}")
        if ep.gateway6 is not None and not self.ctx.datapath.has_default_route(netns, family=6):
            raise NotFound(f"the IPv6 default route via {ep.gateway6} is missing in {netns}")

    def gc_external(self, runtime: str, network_name: str, keep: list[tuple[str, str]]) -> list[str]:
        """Remove every attachment of ``runtime`` on the network not in ``keep`` (ref,
        ifname); tether's own containers and other runtimes' are never touched."""
        wanted = {(external_name(runtime, ref), ifname) for ref, ifname in keep}
        removed = []
        with self.lock:
            network = self._lookup_network(network_name)
            if network is None:
                return []
            for c in self._containers():
                if not c.external or not c.name.startswith(external_name(runtime, "")):
                    continue
                detached = False
                for ep in self._endpoints(c.id):
                    if ep.network_id == network.id and (c.name, ep.ifname) not in wanted:
                        removed.append(f"{c.name}/{ep.ifname}")
                        self._log_undo(self._detach(c, ep))
                        c = self._save(c.with_(ports=self._ports_off(c, ep)))
                        detached = True
                if detached and not self._endpoints(c.id):
                    self._log_undo(self._teardown(c))
        return removed

    # ------------------------------------------------------------------ in steps (Docker)
    def reserve_address(self, network: Network, owner: str, address: str | None = None, family: int = 4) -> str:
        """Lease an address (of ``family``) to a placeholder ``owner`` until
        ``create_external`` takes it."""
        with self.lock:
            return self._ipam_for(network).allocate(network, owner, address, family=family)

    def release_reservation(self, network: Network, address: str, owner: str) -> None:
        """Free a placeholder lease; an address some endpoint took over stays leased."""
        with self.lock:
            ipam = self._ipam_for(network)
            if ipam.owner(network.id, address) == owner:
                ipam.release(network.id, address)

    def external(self, runtime: str, ref: str) -> Attachment | None:
        """A runtime's sandbox with its one endpoint, or None."""
        kv = self.store.get(CTR_PREFIX + external_name(runtime, ref))
        if kv is None:
            return None
        container = Container.from_dict(kv.value)
        for ep in self._endpoints(container.id):
            network = self._lookup_network(ep.network)
            if network is not None:
                return Attachment(container, ep, network)
        return None

    def create_external(
        self,
        runtime: str,
        ref: str,
        network: Network,
        ip: str | None = None,
        mac: str | None = None,
        reserved_by: str | None = None,
        ip6: str | None = None,
    ) -> Attachment:
        """Record a sandbox-to-be with its endpoint and leases, no kernel work yet. ``ip``
        (and ``ip6``) leased to ``reserved_by`` (``reserve_address``) passes to the
        endpoint in one compare-and-swap; any other address is leased now, one of each
        family the network has. Idempotent."""
        with self._operation() as op:
            found = self.external(runtime, ref)
            if found is not None:  # asked again: the same answer
                return found
            name = external_name(runtime, ref)
            if self.store.get(CTR_PREFIX + name) is not None:
                raise Conflict(f"endpoint {ref} exists already")
            _check_v6_wanted(network, ip6)
            container = self._new_external(runtime, name, None, op)
            address = self._take_lease(network, container.id, ip, 4, reserved_by, op)
            address6 = self._take_lease(network, container.id, ip6, 6, reserved_by, op) if network.ipv6 else None
            ifname = "vd" + host_ifname_for(container.id, network.id)[2:]  # until the runtime renames it
            endpoint = self._new_endpoint(container, network, address, op, True, ifname, mac, leased=True, ip6=address6)
        return Attachment(container, endpoint, network)

    def _take_lease(
        self, network: Network, owner: str, address: str | None, family: int, reserved_by: str | None, op: Operation
    ) -> str:
        """``owner``'s lease of one family: ``address`` handed over from ``reserved_by`` in
        one compare-and-swap, else leased now (``address``, or the next free one)."""
        ipam = self._ipam_for(network)
        if address is not None and reserved_by is not None and ipam.transfer(network.id, address, reserved_by, owner):
            taken = address
        else:
            taken = ipam.allocate(network, owner, address, family=family)
        op.push(f"lease {taken}", lambda: ipam.release(network.id, taken, owner=owner))
        return taken

    def join_external(self, runtime: str, ref: str, sandbox: str) -> Outcome[Attachment]:
        """Build the endpoint's veth with its container end on the host (named as the
        endpoint's ``ifname``), for the runtime to move into ``sandbox``. Returns once
        every live host has programmed it, as ``run`` does."""
        with self._operation() as op:
            found = self.external(runtime, ref)
            if found is None:
                raise NotFound(f"endpoint {ref} not found: the runtime must create it first")
            container, endpoint, network = found.container, found.endpoint, found.network
            self._driver(network).plug_endpoint(self.ctx, network, container, endpoint, endpoint.ifname, op)
            container = self._save(container.with_(netns=sandbox))
            if RUNTIMES[runtime].names_netns:
                # `ip netns exec <prefix><runtime>-<ref> ...` works, as for tether's own
                alias = self.ctx.netns_name(container.name)
                self.ctx.datapath.alias_netns(alias, sandbox)
                op.push(f"netns name {alias}", lambda: self.ctx.datapath.unalias_netns(alias))
        return Outcome(Attachment(container, endpoint, network), op.lagging)

    def leave_external(self, runtime: str, ref: str) -> None:
        """Undo ``join_external`` (and its published ports); the lease and records stay."""
        with self.lock:
            found = self.external(runtime, ref)
            if found is None:
                return
            container, endpoint, network = found.container, found.endpoint, found.network
            errors = self._unpublish_ports(container)
            errors += self._driver(network).detach_endpoint(self.ctx, network, endpoint, netns=container.netns)
            errors += self._sandbox(container).teardown(self.ctx, container)  # its ip netns name
            self._save(container.with_(netns=None, ports=[]))
            self._log_undo(errors)

    def remove_external(self, runtime: str, ref: str) -> None:
        """Remove a runtime's sandbox record with everything it holds. Idempotent."""
        with self.lock:
            kv = self.store.get(CTR_PREFIX + external_name(runtime, ref))
            if kv is not None:
                self._log_undo(self._teardown(Container.from_dict(kv.value)))

    def publish_external(self, runtime: str, ref: str, mappings: list[PortMapping]) -> None:
        """Publish the sandbox's ports (replacing any it had) through tether's port map."""
        with self._operation() as op:
            found = self.external(runtime, ref)
            if found is None:
                raise NotFound(f"endpoint {ref} not found: the runtime must create it first")
            container, endpoint, network = found.container, found.endpoint, found.network
            if network.internal:
                raise InvalidInput(f"network {network.name!r} is internal: it has no published ports")
            check_port_families(mappings, network, self._driver(network).publishes_ports)
            self._log_undo(self._unpublish_ports(container))
            container = self._save(container.with_(ports=[]))
            mappings = [replace(m, network=network.name) for m in self._check_ports(mappings)]
            container = self._save(container.with_(ports=[m.to_dict() for m in mappings]))
            op.push("published ports of the record", lambda: self._save(container.with_(ports=[])))
            self._publish_ports(container, endpoint, op)

    def unpublish_external(self, runtime: str, ref: str) -> None:
        with self.lock:
            found = self.external(runtime, ref)
            if found is not None:
                self._log_undo(self._unpublish_ports(found.container))
                self._save(found.container.with_(ports=[]))
