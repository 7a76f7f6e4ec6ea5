"""Container verbs: run (create, then start), start, stop, restart, rm, ps, inspect,
connect, disconnect, and what a container's exit releases.

A container is a record, a sandbox (its network namespace, by the sandbox mode its
``--net`` names) and its endpoints; its process runs under a shim (``runtime/``). The
record's state (running, exited) is a cache of what the process says: ``_refresh``
derives it. ``_teardown`` removes everything a container holds, keeps going past errors
and is idempotent, so rm, --rm, reconcile and the other runtimes' doors share it.

As in Docker, a container holds its network only while it may run: when its process
ends (``stop``, an exit of its own, noticed by the daemon's monitor, by any ``_refresh``
or by reconcile) its endpoints are detached, so its addresses, veths, published ports
and names are free for others; its namespace stays. The record keeps what ``start``
needs to attach it again: the networks it joined, in order, each with the address asked
for (``--ip``) and its aliases (``attachments``), and the ports as asked (``publish``).
A restart policy (``restarts.py``) may start it again by itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .. import runtime
from ..drivers import Undo, collect
from ..errors import Conflict, InvalidInput, NotFound, TetherError
from ..model import (
    Container,
    Endpoint,
    NetMode,
    Network,
    PortMapping,
    check_labels,
    parse_net_mode,
    parse_port_spec,
)
from ..runtime.process import PID_FILE
from ..storekeys import CTR_PREFIX, ID_PREFIX, JOIN_PREFIX, ep_key
from ..validate import check_hostname, check_ipv4, check_ipv6, validate_name
from .core import Operation, Outcome
from .endpoints import EndpointVerbs, check_port_families
from .names import unused_name
from .networks import NetworkVerbs
from .processes import ProcessVerbs, _ifname_order, check_run_options
from .restarts import RestartPolicy

if TYPE_CHECKING:
    from .restarts import ProcessMonitor

__all__ = ["ContainerVerbs"]

log = logging.getLogger("tether.controller")


@dataclass(frozen=True)
class _RunRequest:
    """``run``'s input after every check that needs no state."""

    name: str | None  # None: one is picked (names.py)
    mode: NetMode
    mappings: list[PortMapping]
    aliases: list[str]
    restart: RestartPolicy
    ip6: str | None = None  # --ip6, checked to be IPv6


class ContainerVerbs(NetworkVerbs, EndpointVerbs, ProcessVerbs):
    # ------------------------------------------------------------------ run
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
        labels: dict[str, str] | None = None,
        restart: str | None = None,
        env: list[str] | None = None,
        workdir: str | None = None,
        tty: bool = False,
        interactive: bool = False,
        dns: list[str] | None = None,
        dns_search: list[str] | None = None,
        dns_options: list[str] | None = None,
        extra_hosts: list[str] | None = None,
        mac_address: str | None = None,
        expose: list[str] | None = None,
        publish_all: bool = False,
        ip6: str | None = None,
    ) -> Outcome[Container]:
        """Validate everything, build the sandbox and its endpoint, record it; start it if
        ``detach`` (the CLI starts foreground containers itself and reports the pid)."""
        req = _check_run(cmd, name, net, ip, hostname, rootfs, publish, aliases, restart, auto_remove, ip6)
        labels = check_labels(labels)
        options = check_run_options(
            req.mode, env, workdir, tty, interactive, dns, dns_search, dns_options, extra_hosts, mac_address,
            expose, publish_all,
        )
        req = replace(req, mappings=options.published(req.mappings))  # -P: the exposed ports too
        container_id = uuid.uuid4().hex
        with self._operation() as op:
            if req.name is not None and self.store.get(CTR_PREFIX + req.name) is not None:
                raise Conflict(f"container name {req.name!r} is already in use: choose another name or remove it first")
            name = req.name or unused_name(lambda n: self.store.get(CTR_PREFIX + n) is not None, f"t{container_id[:11]}")
            network, joined, mappings, net_mode = self._run_targets(req, ip, name)
            container = Container(
                id=container_id,
                name=name,
                # an unnamed container's hostname is its short ID, as in Docker (its name has a '_')
                hostname=hostname or (name if req.name else container_id[:12]),
                net_mode=net_mode,
                netns=joined.netns if joined else None,
                cmd=list(cmd),
                state="creating",
                detach=detach,
                auto_remove=auto_remove,
                joined=joined.id if joined else None,
                rootfs=rootfs,
                created=time.time(),
                ports=[m.to_dict() for m in mappings],
                labels=labels,
                attachments=[_attachment(network.name, ip, req.aliases, req.ip6)] if network is not None else [],
                publish=[m.to_dict() for m in req.mappings],
                restart_policy=str(req.restart),
                **options.record(),
            )
            container = self._build(container, network, (ip, req.ip6), req.aliases, op)
        if detach:
            try:
                container = self.start_detached(container.name)
            except TetherError:
                self.remove_container(container.name, force=True)
                raise
        return Outcome(container, op.lagging)

    def _run_targets(
        self, req: _RunRequest, ip: str | None, name: str
    ) -> tuple[Network | None, Container | None, list[PortMapping], str]:
        """The network (``--net NET``) or the container (``--net container:C``) a new
        container attaches to, checked against the store; its ports made concrete; and
        its net mode as recorded (NET and C by name, whatever ID or prefix was typed)."""
        mode, mappings = req.mode, req.mappings
        if mode.kind == "network":
            assert mode.target is not None
            network = self._resolve_network(mode.target)
            self._check_requested(network, ip, req.ip6)
            if mappings and network.internal:
                raise InvalidInput(f"network {network.name!r} is internal: it has no published ports")
            check_port_families(mappings, network, self._driver(network).publishes_ports)
            mappings = self._check_ports(mappings)
            self._check_aliases(network, [name, *req.aliases], name)
            return network, None, mappings, network.name
        if mode.kind == "container":
            assert mode.target is not None
            target = self._refresh(self._container(mode.target))
            # chain to the owner of the namespace, as Docker does
            joined = self._namespace_owner(target) if target.joined is not None else target
            if joined is None:
                raise Conflict(
                    f"container {target.name!r} shared the network of a container that was removed: "
                    "there is no network to join"
                )
            if joined.state == "creating":
                raise Conflict(f"container {joined.name!r} is still being created: try again")
            if joined.state == "exited":
                raise Conflict(f"container {joined.name!r} is not running: start it first (`tether start {joined.name}`)")
            return None, joined, mappings, f"container:{target.name}"
        return None, None, mappings, str(mode)

    def _namespace_owner(self, container: Container) -> Container | None:
        """The container whose namespace a ``container:`` joiner shares; None once it is removed."""
        return self._container_by_id(container.joined) if container.joined else container

    def _build(
        self,
        container: Container,
        network: Network | None,
        ips: tuple[str | None, str | None],
        aliases: list[str],
        undo: Undo,
    ) -> Container:
        """Record, sandbox, endpoint, ports, resolver: each undoable; the record last says
        ``created``."""
        name = container.name
        self._save(container)
        undo.push(f"record of container {name}", lambda: self.store.delete(CTR_PREFIX + name))
        self._emit("container", "create", container, net_mode=container.net_mode)
        self._index(container, undo)
        os.makedirs(self.container_dir(container), exist_ok=True)
        undo.push("state dir", lambda: shutil.rmtree(self.container_dir(container), ignore_errors=True))
        sandbox = self._sandbox(container)
        if sandbox.owns_netns():
            self._mark_netns(self.ctx.netns_name(container.name), undo)
        container = container.with_(netns=sandbox.setup(self.ctx, container, undo))
        if network is not None:
            endpoint = self._attach(
                container, network, ips[0], undo, default_route=True, aliases=aliases, mac=container.mac_address,
                ip6=ips[1],
            )
            self._publish_ports(container, endpoint, undo)
        self._serve_dns(container, undo)
        return self._save(container.with_(state="created"))

    def _netns_marker(self, netns: str) -> str:
        return os.path.join(self.state_dir, "netns", netns)

    def _mark_netns(self, netns: str, undo: Undo) -> None:
        """Record, before it exists, that this daemon makes namespace ``netns``: the proof
        reconcile needs to remove it if its container's record is ever lost (the netns
        dir is shared by every runtime on the machine; a name alone proves nothing)."""
        marker = self._netns_marker(netns)
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        with open(marker, "w"):
            pass
        def unmark() -> None:
            if not self.ctx.datapath.netns_exists(netns):  # kept while the namespace is left
                os.unlink(marker)

        undo.push(f"netns marker {netns}", unmark)

    def _index(self, container: Container, undo: Undo) -> None:
        id_key = ID_PREFIX + container.id
        self.store.put(id_key, {"name": container.name})
        undo.push("id index", lambda: self.store.delete(id_key))
        if container.joined:
            join_key = f"{JOIN_PREFIX}{container.joined}/{container.id}"
            self.store.put(join_key, {"name": container.name})
            undo.push("join index", lambda: self.store.delete(join_key))

    def _joiners(self, container: Container) -> list[Container]:
        out = []
        for kv in self.store.list(f"{JOIN_PREFIX}{container.id}/"):
            c = self.store.get(CTR_PREFIX + kv.value["name"])
            if c is not None:
                out.append(Container.from_dict(c.value))
        return out

    # ------------------------------------------------------------------ ps, inspect, logs
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
        owner = self._namespace_owner(container)
        if owner is None:
            return self._describe_orphan(container)
        networks = {
            ep.network: {
                "ifname": ep.ifname,
                "address": ep.address,
                "prefixlen": ep.prefixlen,
                "gateway": ep.gateway,
                "mac": ep.mac,
                "host_ifname": ep.host_ifname,
                "network_id": ep.network_id,
                "address6": ep.address6,
                "prefixlen6": ep.prefixlen6,
                "gateway6": ep.gateway6,
            }
            for ep in self._endpoints(owner.id)
        }
        return dict(
            container.to_dict(),
            networks=networks,
            netns_path=self.ctx.datapath.netns_path(container.netns) if container.netns else None,
            log_path=os.path.join(self.container_dir(container), "log"),
        )

    def _describe_orphan(self, container: Container) -> dict[str, Any]:
        """A ``container:NAME`` joiner whose NAME was removed (``rm -f``): NAME's endpoints
        and its ``ip netns`` name are gone, but a joiner that still runs still holds the
        namespace (with only ``lo`` left), reachable through its own process."""
        alive = container.state == "running" and runtime.process_alive(container.pid, container.start_time)
        return dict(
            container.to_dict(),
            net_mode=f"{container.net_mode} (removed)",
            networks={},
            netns_path=f"/proc/{container.pid}/ns/net" if alive else None,
            log_path=os.path.join(self.container_dir(container), "log"),
        )

    # ------------------------------------------------------------------ stop, rm
    def _find(self, ref: str) -> Container:
        """The container a user means (name, ID or ID prefix), for a verb that then takes
        its lock (``_container_lock``) and reads the record again by name under it."""
        with self.lock:
            return self._container(ref)

    def stop_container(self, ref: str, timeout: float = 10.0) -> Container:
        """SIGTERM, then SIGKILL after ``timeout``; its endpoints are released. The restart
        policy leaves it down until it is started again (also when it was not running:
        that cancels a restart the policy had scheduled)."""
        found = self._find(ref)
        with self._container_lock(found.id):
            container = self._stop(found.name, timeout)
            with self.lock:
                stopped = self._refresh(self._container(container.name))
            if container.state == "running":
                self.events.emit("container", "stop", stopped, exit_code=stopped.exit_code)
            return stopped

    def _stop(self, name: str, timeout: float) -> Container:
        """Mark it stopped by hand, then stop its process (outside the lock). Call with
        the container's lock held."""
        with self.lock:
            container = self._refresh(self._container(name))
            if container.state in ("running", "exited") and not container.external:
                container = self._save(container.with_(manually_stopped=True))
        if container.state == "running":
            runtime.stop_process(container.pid, container.start_time, timeout)
        return container

    def remove_container(self, ref: str, force: bool = False) -> None:
        found = self._find(ref)
        with self._container_lock(found.id):
            self._remove(found.name, force)
        self._forget_lock(found.id)

    def _remove(self, name: str, force: bool) -> None:
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
            resolver = self.resolver
            errors += collect(lambda: resolver.unserve(container.id))
        netns_errors = sandbox.teardown(self.ctx, container)
        errors += netns_errors
        if sandbox.owns_netns() and container.netns and not netns_errors:
            errors += collect(lambda: os.unlink(self._netns_marker(container.netns or "")))
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
        errors += collect(lambda: self.store.delete(ID_PREFIX + container.id))
        if container.joined:
            errors += collect(lambda: self.store.delete(f"{JOIN_PREFIX}{container.joined}/{container.id}"))
        errors += collect(lambda: self.store.delete(CTR_PREFIX + container.name))
        self.events.emit("container", "destroy", container)
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

    # ------------------------------------------------------------------ start, restart
    def start_container(self, ref: str) -> Outcome[Container]:
        """Start an exited container again: its namespace (made again if it is gone), its
        endpoints on the networks it joined (a ``--ip`` asked for again), its published
        ports and names, then its process, detached. One that runs is refused."""
        found = self._find(ref)
        with self._container_lock(found.id):
            return self._start(found.name, by_policy=False)

    def restart_container(self, ref: str, timeout: float = 10.0) -> Outcome[Container]:
        """``stop`` (SIGTERM, SIGKILL after ``timeout``) if it runs, then ``start``."""
        found = self._find(ref)
        with self._container_lock(found.id):
            self._stop(found.name, timeout)
            done = self._start(found.name, by_policy=False)
        self.events.emit("container", "restart", done.value)
        return done

    def _start(self, name: str, by_policy: bool) -> Outcome[Container]:
        """Attach again (one operation: all of it or none), then start the process outside
        the lock. Call with the container's lock held. The record says ``created`` while
        the process starts, so a daemon killed meanwhile adopts it (``_refresh``)."""
        with self._operation() as op:
            container = self._refresh(self._container(name))
            self._check_startable(container)
            container = self._attach_again(container, op)
            container = self._save(
                container.with_(
                    state="created",
                    pid=0,
                    start_time=0,
                    detach=True,  # the daemon runs it now, also one that ran in a CLI's foreground
                    manually_stopped=False,
                    restart_count=container.restart_count + 1 if by_policy else 0,
                )
            )
        try:
            with contextlib.suppress(FileNotFoundError):  # the last run's: never adopt its pid
                os.unlink(os.path.join(self.container_dir(container), PID_FILE))
            started = self.start_detached(name)
        except TetherError:
            with self.lock:
                kv = self.store.get(CTR_PREFIX + name)
                if kv is not None:  # 127, as Docker records a process that could not start
                    failed = Container.from_dict(kv.value).with_(state="exited", exit_code=127)
                    self._on_exit(self._save(failed))
            raise
        return Outcome(started, op.lagging)

    def _check_startable(self, container: Container) -> None:
        name = container.name
        if container.external:
            raise Conflict(f"container {name!r} is another runtime's (CNI or Docker): start it through that runtime")
        if container.state == "creating":
            raise Conflict(f"container {name!r} is still being created: try again")
        if container.state == "running":
            raise Conflict(f"container {name!r} is already running: stop it first, or use `tether restart {name}`")
        if container.mode.kind == "container":
            owner = self._namespace_owner(container)
            if owner is None:
                raise Conflict(
                    f"container {name!r} shared the network of a container that was removed: "
                    f"it cannot start again; remove it (`tether rm {name}`)"
                )
            owner = self._refresh(owner)
            if owner.state not in ("running", "created"):
                raise Conflict(
                    f"container {name!r} shares the network of {owner.name!r}, which is not running: "
                    f"start {owner.name} first"
                )

    def _attach_again(self, container: Container, op: Operation) -> Container:
        """What an exit released, built again: the namespace if it is gone, an endpoint
        per network joined, in the order joined (the first one without a default route
        gets it), the ports published. Each step undoable."""
        sandbox = self._sandbox(container)
        netns = container.netns
        if sandbox.owns_netns() and netns and not self.ctx.datapath.netns_exists(netns):
            # gone since it exited (a reboot, an `ip netns del`): made again, resolver and all
            self._mark_netns(netns, op)
            self.ctx.datapath.create_netns(netns)
            op.push(f"netns {netns}", lambda: self.ctx.datapath.delete_netns(netns))
            if self.resolver is not None:
                self.resolver.unserve(container.id)  # its sockets were in the namespace that went
            self._serve_dns(container, op)
        held = {ep.network for ep in self._endpoints(container.id)}
        for wanted in container.attachments:
            if wanted["network"] in held:
                continue  # a created container still holds what run attached
            network = self._joined_network(container, wanted["network"])
            ip, ip6, aliases = wanted.get("ip"), wanted.get("ip6"), list(wanted.get("aliases") or [])
            self._check_requested(network, ip, ip6)
            self._check_aliases(network, [container.name, *aliases], container.name)
            first = wanted is container.attachments[0]  # `run --mac-address` is the first network's
            self._attach(container, network, ip, op, default_route=None, aliases=aliases,
                         mac=container.mac_address if first else None, ip6=ip6)
        if container.publish and not container.ports and container.mode.kind == "network":
            target = self._endpoint_on(container, container.mode.target)
            if target is not None:
                mappings = self._check_ports([PortMapping.from_dict(p) for p in container.publish])
                before = container
                container = self._save(container.with_(ports=[m.to_dict() for m in mappings]))
                op.push("published ports of the record", lambda: self._save(before))
                self._publish_ports(container, target, op)
        return container

    def _joined_network(self, container: Container, name: str) -> Network:
        try:
            return self._resolve_network(name)
        except NotFound:
            raise NotFound(
                f"network {name!r} of container {container.name!r} no longer exists: disconnect it "
                f"(`tether network disconnect {name} {container.name}`) or create it again, then start"
            ) from None

    # ------------------------------------------------------------------ what an exit releases
    def _on_exit(self, container: Container) -> Container:
        self.events.emit("container", "die", container, exit_code=container.exit_code)
        released, errors = self._release(container.with_(finished_at=time.time()))
        self._log_undo(errors)
        return released

    def _release(self, container: Container) -> tuple[Container, list[str]]:
        """Detach every endpoint of a container whose process ended: its addresses, veths,
        published ports and names go, its namespace stays. The record, written first,
        keeps what ``start`` attaches again. Idempotent; returns the errors."""
        endpoints = self._endpoints(container.id)
        attachments = container.attachments
        if not attachments and endpoints:  # a record older than `attachments`
            attachments = [_attachment(ep.network, None, ep.aliases) for ep in sorted(endpoints, key=_ifname_order)]
        released = self._save(
            container.with_(attachments=attachments, publish=container.publish or container.ports, ports=[])
        )
        errors: list[str] = []
        for ep in endpoints:
            errors += self._detach(container, ep)  # `container` still names the ports to take back
        return released, errors

    # ------------------------------------------------------------------ restart policies
    def handle_exit(self, container_id: str) -> float | None:
        """The monitor saw a container's process end (``restarts.py``): the record says
        so and the endpoints are released (``_refresh``); a detached ``--rm`` container
        is removed. Returns how long the run lasted when the policy restarts it."""
        with self.lock:
            found = self._container_by_id(container_id)
        if found is None:
            return None
        with self._container_lock(container_id), self.lock:
            current = self._container_by_id(container_id)
            if current is None:
                return None
            container = self._refresh(current)
            if container.state != "exited":
                return None  # a new process runs (started meanwhile), or never ran
            if container.auto_remove and container.detach:
                self._log_undo(self._teardown(container))
                return None
            policy = RestartPolicy.parse(container.restart_policy)
            if not policy.should_restart(container.exit_code, container.manually_stopped, container.restart_count):
                return None
            return max(0.0, container.finished_at - container.started_at)

    def restart_by_policy(self, container_id: str, at_daemon_start: bool = False) -> None:
        """Start a container again because its policy says so, if it still does (a
        ``stop`` or a ``start`` may have come in between). A failure is logged: the
        container stays exited, as after any failed start."""
        with self.lock:
            found = self._container_by_id(container_id)
        if found is None:
            return
        with self._container_lock(container_id):
            with self.lock:
                current = self._container_by_id(container_id)
                if current is None:
                    return
                container = self._refresh(current)
                policy = RestartPolicy.parse(container.restart_policy)
                if container.state != "exited" or not policy.should_restart(
                    container.exit_code, container.manually_stopped, container.restart_count, at_daemon_start
                ):
                    return
            try:
                done = self._start(container.name, by_policy=True)
                self.events.emit("container", "restart", done.value, policy=str(policy))
                log.info("restarted container %s (policy %s)", container.name, policy)
            except TetherError as exc:
                log.warning("container %s: restart by policy %s failed: %s", container.name, policy, exc)

    def start_monitor(self) -> ProcessMonitor:
        """The daemon's process monitor: it watches every running container's process and
        restarts, now, what exited while no daemon ran and whose policy says so."""
        from .restarts import ProcessMonitor

        monitor = ProcessMonitor(self)
        with self.lock:
            self.monitor = monitor
            for container in self._containers():
                container = self._refresh(container)
                if container.state == "running":
                    monitor.watch(container.id, container.pid, container.start_time)
                elif container.state == "exited" and not container.external:
                    policy = RestartPolicy.parse(container.restart_policy)
                    if policy.should_restart(
                        container.exit_code, container.manually_stopped, container.restart_count, at_daemon_start=True
                    ):
                        monitor.schedule(container.id, 0.0, at_daemon_start=True)
        monitor.start()
        return monitor

    def stop_monitor(self) -> None:
        monitor, self.monitor = self.monitor, None
        if monitor is not None:
            monitor.stop()

    # ------------------------------------------------------------------ connect, disconnect
    def connect(
        self,
        network_ref: str,
        container_ref: str,
        ip: str | None = None,
        aliases: list[str] | None = None,
        ip6: str | None = None,
    ) -> Outcome[Endpoint | None]:
        """Give a container an interface on one more network. An exited one only records
        it (None): the interface comes with its next start, as in Docker."""
        aliases = [validate_name("alias", a) for a in aliases or []]
        if ip is not None:
            check_ipv4("--ip", ip)
        if ip6 is not None:
            ip6 = check_ipv6("--ip6", ip6)
        found = self._find(container_ref)
        with self._container_lock(found.id), self._operation() as op:
            container = self._refresh(self._container(found.name))
            network = self._resolve_network(network_ref)
            name = container.name
            self._check_connectable(container, name)
            joined = {a["network"] for a in container.attachments}
            if network.name in joined or self.store.get(ep_key(container.id, network.id)) is not None:
                raise Conflict(f"container {name!r} is already connected to network {network.name!r}")
            self._check_requested(network, ip, ip6)
            self._check_aliases(network, [name, *aliases], name)
            attachment = _attachment(network.name, ip, aliases, ip6)
            self._save(container.with_(attachments=[*container.attachments, attachment]))
            op.push(f"attachments of {name}", lambda: self._save(container))
            endpoint = None
            if container.state != "exited":
                endpoint = self._attach(container, network, ip, op, default_route=None, aliases=aliases, ip6=ip6)
        return Outcome(endpoint, op.lagging)

    @staticmethod
    def _check_connectable(container: Container, name: str) -> None:
        if container.external:
            raise Conflict(f"container {name!r} is another runtime's (CNI or Docker): connect it through that runtime")
        kind = container.mode.kind
        if kind == "host":
            raise Conflict(f"container {name!r} uses the host's network: it cannot be connected to networks")
        if kind == "container":
            raise Conflict(f"container {name!r} shares the network of another container: connect that one instead")
        if container.state == "creating":
            raise Conflict(f"container {name!r} is still being created: try again")

    def disconnect(self, network_ref: str, container_ref: str) -> None:
        """Remove a container's interface on a network, and the network from those it
        joins at start. An exited container may leave a network that was removed since."""
        found = self._find(container_ref)
        with self._container_lock(found.id), self.lock:
            container = self._container(found.name)
            name = container.name
            if container.external:
                raise Conflict(f"container {name!r} is another runtime's (CNI or Docker): disconnect it through that runtime")
            joined = {a["network"] for a in container.attachments}
            try:
                network: Network | None = self._network(network_ref)
            except NotFound:
                if network_ref not in joined:
                    raise
                network = None  # removed while the container was down: only the record knows it
            network_name = network.name if network is not None else network_ref
            kv = self.store.get(ep_key(container.id, network.id)) if network is not None else None
            if kv is None and network_name not in joined:
                raise NotFound(f"container {name!r} is not connected to network {network_name!r}")
            # the record first: a crash in between must not bring the network back at start
            self._save(container.with_(attachments=[a for a in container.attachments if a["network"] != network_name]))
            if kv is not None:
                self._log_undo(self._detach(container, Endpoint.from_dict(kv.value)))


def _attachment(network: str, ip: str | None, aliases: list[str], ip6: str | None = None) -> dict[str, Any]:
    """One network a container joins at each start (``Container.attachments``)."""
    return {"network": network, "ip": ip, **({"ip6": ip6} if ip6 else {}), "aliases": list(aliases)}


def _check_run(
    cmd: list[str],
    name: str | None,
    net: str | None,
    ip: str | None,
    hostname: str | None,
    rootfs: str | None,
    publish: list[str] | None,
    aliases: list[str] | None,
    restart: str | None = None,
    auto_remove: bool = False,
    ip6: str | None = None,
) -> _RunRequest:
    """Every check of ``run``'s input that needs no state, before the lock is taken."""
    if not cmd:
        raise InvalidInput("no command given: put the command after `--`, as in `tether run -- sleep 60`")
    if name is not None:
        validate_name("container", name)
    policy = RestartPolicy.parse(restart)
    if auto_remove and policy.name != "no":
        raise InvalidInput(
            f"--rm and --restart {policy} contradict each other: a container removed when it exits "
            "cannot be restarted; drop one of them"
        )
    mode = parse_net_mode(net)
    if ip is not None:
        if mode.kind != "network":
            raise InvalidInput(f"--ip needs a network to attach to, not --net {mode}")
        check_ipv4("--ip", ip)
    if ip6 is not None:
        if mode.kind != "network":
            raise InvalidInput(f"--ip6 needs a network to attach to, not --net {mode}")
        ip6 = check_ipv6("--ip6", ip6)
    if hostname is not None:
        check_hostname(hostname)
    if rootfs is not None and not os.path.isdir(rootfs):
        raise InvalidInput(f"--rootfs {rootfs!r} is not a directory")
    mappings = [m for spec in publish or [] for m in parse_port_spec(spec)]
    if mappings and mode.kind != "network":
        raise InvalidInput(f"-p needs a bridge network: --net {mode} has no address of its own to publish")
    checked = [validate_name("alias", a) for a in aliases or []]
    if checked and mode.kind != "network":
        raise InvalidInput(f"--network-alias needs a network: --net {mode} has none")
    return _RunRequest(name, mode, mappings, checked, policy, ip6)
