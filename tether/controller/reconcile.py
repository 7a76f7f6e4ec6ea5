"""Reconcile: make the kernel and the store agree after a restart or a crash at any point.

The store is the truth for what should exist; the kernel is checked against it in a
fixed order: networks are rebuilt; half-created and exited ``--rm`` containers are
removed; other runtimes' sandboxes whose namespace is gone are dropped; missing
namespaces and endpoints of live records are rebuilt; then the sweeps, each limited to
what carries this daemon's mark or lives in its own store: orphan endpoints, links,
leases, index entries, ``ip netns`` names and state dirs. Last, the firewall and the
resolver are rebuilt from their inputs, which are derived from the store too.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import TYPE_CHECKING

from ..drivers import Undo, collect, enable_uplink_forwarding
from ..errors import Conflict, TetherError
from ..model import DEFAULT_NETWORK, Container, Endpoint, Network
from ..storekeys import ID_PREFIX, JOIN_PREFIX, ep_key
from .external import RUNTIMES, ExternalVerbs, external_name, runtime_of
from .processes import _ifname_order

if TYPE_CHECKING:
    from ..firewall import NetworkRules, PortRule

__all__ = ["Reconciler"]

log = logging.getLogger("tether.controller")


class Reconciler(ExternalVerbs):
    def reconcile(self, discard_unknown: bool = False) -> list[str]:
        """Every correction made, one line each (also logged). An empty store facing links
        of this daemon is refused (``discard_unknown`` lets them go): it is a lost store,
        and removing them would cut running containers off."""
        actions: list[str] = []
        with self.lock:
            local_networks = {n.id: n for n in self._networks()}
            networks = {n.id: n for n in self._all_networks()}
            if not discard_unknown:
                self._refuse_a_lost_store(networks)
            for network in local_networks.values():
                try:
                    self._driver(network).restore(self.ctx, network)
                except TetherError as exc:
                    actions.append(f"network {network.name}: {exc}")
            containers = self._containers()
            live_ids = {c.id for c in containers if self._reconcile_container(c, networks, actions)}
            self._sweep_endpoints(live_ids, networks, actions)
            self._sweep_leases(live_ids, local_networks, actions)
            self._sweep_names(containers, live_ids, actions)
            if any(not n.internal for n in networks.values()):
                actions += collect(lambda: enable_uplink_forwarding(self.ctx))
            if self.firewall is not None:
                self.firewall.ensure()
                self.firewall.sync(*self.desired_firewall())
            actions += self._restore_dns()
        for line in actions:
            log.info("reconcile: %s", line)
            self.events.emit("reconcile", "correct", "", message=line)
        return actions

    def _refuse_a_lost_store(self, networks: dict[str, Network]) -> None:
        if self._networks() or self._containers():
            return
        expected = {link for n in networks.values() for link in self._driver(n).owned_links(n)}
        strays = sorted(name for name, _ in self.ctx.datapath.links_with_mark(self.ctx.mark) if name not in expected)
        if strays:
            where = getattr(self.store, "path", "the store")
            raise Conflict(
                f"the store {where} is empty but this host has {len(strays)} link(s) of tether's "
                f"({', '.join(strays[:4])}{', ...' if len(strays) > 4 else ''}): restore the store from a backup, "
                "or start the daemon once with --discard-unknown to remove them"
            )

    def _reconcile_container(self, c: Container, networks: dict[str, Network], actions: list[str]) -> bool:
        """Finish or remove one container; rebuild what a live one lost. Returns whether
        it lives on."""
        c = self._refresh(c)  # a process that ended while no daemon ran: its endpoints are released
        if c.state == "creating" or (c.auto_remove and c.state == "exited"):
            actions.append(f"removed container {c.name} ({c.state})")
            actions += self._teardown(c)
            return False
        if self.store.get(ID_PREFIX + c.id) is None:  # a record older than the index
            self.store.put(ID_PREFIX + c.id, {"name": c.name})
        if self._sandbox(c).owns_netns() and c.netns and not self.ctx.datapath.netns_exists(c.netns):
            if c.state == "running":
                actions.append(f"container {c.name}: its namespace binding is gone while it runs")
                return True
            self._mark_netns(c.netns, Undo())
            self.ctx.datapath.create_netns(c.netns)
            actions.append(f"recreated namespace of {c.name}")
        if c.state == "exited":
            # an exited container holds nothing: a daemon killed between the record and
            # the release (or a record older than that rule) left its endpoints
            if self._endpoints(c.id):
                actions.append(f"released the network of exited container {c.name}")
                _, errors = self._release(c)
                actions += errors
            return True
        if c.external and not c.netns:
            return True  # a runtime's endpoint waiting for its sandbox (Docker's Join)
        if c.external and not os.path.exists(c.netns or ""):
            actions.append(f"removed CNI attachment {c.name}: its runtime's namespace is gone")
            actions += self._teardown(c)
            return False
        endpoints = self._endpoints(c.id)
        inside = self._addresses_inside(c) if endpoints else None
        for ep in endpoints:
            network = networks.get(ep.network_id)
            if network is None:
                actions.append(f"dropped endpoint of {c.name} on a removed network")
                actions += self._detach(c, ep)
                continue
            if not self._lease_held(c, network, ep, actions):
                continue
            driver = self._driver(network)
            # both sides: an attach killed half-way leaves the host side with nothing inside
            whole = driver.endpoint_present(self.ctx, network, ep) and (
                inside is None or all(c in inside.get(ep.ifname, []) for c in (ep.cidr, ep.cidr6) if c)
            )
            if c.netns and not whole:
                try:
                    self.ctx.datapath.detach_veth(ep.host_ifname)
                    self.ctx.datapath.detach_in_netns(c.netns, ep.ifname)
                    driver.attach_endpoint(self.ctx, network, c, ep, Undo(), keep_existing_default=True)
                    actions.append(f"re-attached {c.name} to {network.name}")
                except TetherError as exc:
                    actions.append(f"could not re-attach {c.name} to {network.name}: {exc}")
        if inside is not None and c.netns:
            self._restore_default_routes(c, networks, actions)
        return True

    def _restore_default_routes(self, c: Container, networks: dict[str, Network], actions: list[str]) -> None:
        """A kill between an attach's addresses and its routes leaves the namespace without
        its default route: put each family's back. v4's is the endpoint's that holds it (its
        record says so); v6's is the first non-internal dual-stack endpoint's in attach order,
        as attach gives it (a v4 default kept from an earlier network does not stop it)."""
        assert c.netns is not None
        endpoints = sorted(self._endpoints(c.id), key=_ifname_order)
        holder4 = next((ep for ep in endpoints if ep.default_route), None)
        holder6 = next(
            (ep for ep in endpoints if ep.gateway6 and ep.network_id in networks and not networks[ep.network_id].internal),
            None,
        )
        wanted = [(4, holder4.gateway if holder4 else None), (6, holder6.gateway6 if holder6 else None)]
        for family, gateway in wanted:
            if not gateway:
                continue
            try:
                if not self.ctx.datapath.has_default_route(c.netns, family):
                    self.ctx.datapath.add_default_route(c.netns, gateway)
                    actions.append(f"restored the IPv{family} default route of {c.name} via {gateway}")
            except TetherError as exc:
                actions.append(f"could not restore the IPv{family} default route of {c.name}: {exc}")

    def _lease_held(self, c: Container, network: Network, ep: Endpoint, actions: list[str]) -> bool:
        """An endpoint must hold its address's lease (a kill may have parted them): take it
        back if free; if someone else holds it now, the endpoint goes."""
        ipam = self._ipam_for(network)
        for address in ep.addresses:
            owner = ipam.owner(network.id, address)
            if owner == c.id:
                continue
            if owner is None:
                try:
                    ipam.allocate(network, c.id, address, family=6 if ":" in address else 4)
                    actions.append(f"leased {address} again to {c.name}")
                    continue
                except TetherError:
                    pass  # taken meanwhile: handled below as held by someone else
            return self._drop_unleased(c, ep, address, actions)
        return True

    def _drop_unleased(self, c: Container, ep: Endpoint, address: str, actions: list[str]) -> bool:
        actions.append(f"dropped endpoint {ep.ifname} of {c.name}: its address {address} belongs to another")
        actions += self._detach(c, ep)  # (its release spares the other owner's lease)
        return False

    def _addresses_inside(self, c: Container) -> dict[str, list[str]] | None:
        """{ifname: addresses} in the container's namespace; None where tether does not
        configure the inside (a runtime that does it itself) or cannot look."""
        runtime = runtime_of(c)
        if not c.netns or (runtime is not None and runtime.configures_inside is False):
            return None
        try:
            # a link left down (a kill between its address and its "up") counts as unconfigured
            return {
                i["ifname"]: [*i.get("addresses", []), *i.get("addresses6", [])] if i.get("state", "up") == "up" else []
                for i in self.ctx.datapath.container_interfaces(c.netns)
            }
        except TetherError:
            return None

    def _sweep_endpoints(self, live_ids: set[str], networks: dict[str, Network], actions: list[str]) -> None:
        """Endpoint records whose container is gone; links with our mark nothing owns."""
        for ep in self._endpoints():
            if ep.container_id not in live_ids:
                network = networks.get(ep.network_id)
                if network is not None:  # what the driver keeps outside the namespace (a route, a record)
                    actions += self._driver(network).detach_endpoint(self.ctx, network, ep, kernel_gone=True)
                actions += collect(lambda: self.ctx.datapath.detach_veth(ep.host_ifname))
                self.store.delete(ep_key(ep.container_id, ep.network_id))
                actions.append(f"dropped orphan endpoint {ep.host_ifname}")
        expected = {ep.host_ifname for ep in self._endpoints()}
        for network in networks.values():
            expected |= self._driver(network).owned_links(network)
        for ifname, kind in self.ctx.datapath.links_with_mark(self.ctx.mark):
            if ifname in expected:
                continue
            if kind == "bridge":
                actions += collect(lambda: self.ctx.datapath.delete_bridge(ifname))
            else:
                actions += collect(lambda: self.ctx.datapath.detach_veth(ifname))
            actions.append(f"deleted orphan link {ifname}")

    def _sweep_leases(self, live_ids: set[str], local_networks: dict[str, Network], actions: list[str]) -> None:
        """Leases without an owner, of this host's own networks only (overlay leases belong
        to the whole cluster); leases of removed networks; stale index entries."""
        held = {(ep.network_id, a, ep.container_id) for ep in self._endpoints() for a in ep.addresses}
        for net_id in local_networks:
            for address, owner in self.ipam.leases(net_id).items():
                # a live owner's lease with no endpoint of it: a kill between lease and record
                if owner not in live_ids or (net_id, address, owner) not in held:
                    self.ipam.release(net_id, address)
                    actions.append(f"released orphan lease {address}")
        for kv in self.store.list(ID_PREFIX) + self.store.list(JOIN_PREFIX):
            if kv.key.rsplit("/", 1)[1] not in live_ids:
                self.store.delete(kv.key)
        for kv in self.store.list("/ipam/"):
            parts = kv.key.split("/")
            if len(parts) >= 4 and parts[2] not in local_networks:
                self.store.delete(kv.key)
                actions.append(f"released lease {parts[3]} of a removed network")

    def _sweep_names(self, containers: list[Container], live_ids: set[str], actions: list[str]) -> None:
        """``ip netns`` names of runtimes' namespaces whose endpoint is gone (only names
        tether gives: ``<prefix><runtime>-...``; others' symlinks are theirs); state dirs
        without a record."""
        named = {self.ctx.netns_name(c.name): c.netns for c in containers if c.external and c.id in live_ids}
        for runtime, traits in RUNTIMES.items():
            if not traits.names_netns:
                continue
            for alias, target in self.ctx.datapath.netns_aliases(self.ctx.netns_name(external_name(runtime, ""))).items():
                if named.get(alias) != target:
                    actions += collect(lambda: self.ctx.datapath.unalias_netns(alias))
                    actions.append(f"removed stale namespace name {alias}")
        root = os.path.join(self.state_dir, "containers")
        for entry in os.listdir(root):
            if entry not in live_ids:
                shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
        self._sweep_namespaces({c.netns for c in containers if c.id in live_ids and c.netns}, actions)

    def _sweep_namespaces(self, live: set[str], actions: list[str]) -> None:
        """Namespaces this daemon made (it marked them before making them) that no live
        record holds: what a crash or a lost record left. Others' are never touched."""
        marks = os.path.join(self.state_dir, "netns")
        for name in os.listdir(marks) if os.path.isdir(marks) else []:
            if name in live:
                continue
            # (a half-made one too: a file not yet bound, left by a kill inside create_netns)
            there = self.ctx.datapath.netns_exists(name) or os.path.lexists(self.ctx.datapath.netns_path(name))
            errors = collect(lambda: self.ctx.datapath.delete_netns(name))
            if errors:
                actions += errors
                continue
            if there:
                actions.append(f"deleted namespace {name}: no record holds it")
            os.unlink(os.path.join(marks, name))

    def desired_firewall(self) -> tuple[list[NetworkRules], list[PortRule]]:
        """The whole firewall state, derived from the store (the healer's and reconcile's input)."""
        networks = [self._driver(n).rules(n) for n in self._all_networks() if self._driver(n).built_here(self.ctx, n)]
        ports = [rule for c in self._containers() if c.state != "creating" for rule in self._port_rules(c)]
        return networks, ports

    def _restore_dns(self) -> list[str]:
        """The resolver keeps its table in memory: rebuild it and its sockets from the store.
        An overlay's table is shared with the overlay agent, which has already put the
        other hosts' containers there (from its snapshot): this host's are added to it."""
        if self.resolver is None:
            return []
        errors: list[str] = []
        containers = {c.id: c for c in self._containers()}
        records: dict[str, dict[str, list[str]]] = {}
        for ep in self._endpoints():
            c = containers.get(ep.container_id)
            if c is None or ep.network == DEFAULT_NETWORK:
                continue
            table = records.setdefault(ep.network, {})
            for name in self._dns_names(c, ep):
                table.setdefault(name.lower(), []).extend(ep.addresses)
        for network in self._all_networks():
            if network.name != DEFAULT_NETWORK:  # no names there, as in Docker: all goes upstream
                self.resolver.set_subnets(network.name, network.subnets)
            if self._driver(network).scope != "global":
                self.resolver.set_records(network.name, records.get(network.name, {}))
                continue
            for name, addresses in records.get(network.name, {}).items():
                for address in addresses:
                    self.resolver.add_record(network.name, name, address)
        for c in containers.values():
            runtime = runtime_of(c)
            if runtime is not None and not runtime.serve_dns:
                continue  # e.g. Docker's sandboxes have Docker's own resolver
            if c.netns and c.joined is None and self.ctx.datapath.netns_exists(c.netns):
                try:
                    self.resolver.serve(c.id, self.ctx.datapath.netns_path(c.netns))
                    self._set_dns_view(c)
                    self._set_dns_upstreams(c)  # `run --dns` on a user-defined network
                except TetherError as exc:
                    errors.append(f"resolver for {c.name}: {exc}")
        return errors
