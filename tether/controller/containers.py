"""Container verbs: run (create, then start), stop, rm, ps, inspect, connect, disconnect.

A container is a record, a sandbox (its network namespace, by the sandbox mode its
``--net`` names) and its endpoints; its process runs under a shim (``runtime/``). The
record's state (running, exited) is a cache of what the process says: ``_refresh``
derives it. ``_teardown`` removes everything a container holds, keeps going past errors
and is idempotent, so rm, --rm, reconcile and the other runtimes' doors share it.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass
from typing import Any

from .. import runtime
from ..drivers import Undo, collect
from ..errors import Conflict, InvalidInput, NotFound, TetherError
from ..model import Container, Endpoint, NetMode, Network, PortMapping, parse_net_mode, parse_port_spec
from ..storekeys import CTR_PREFIX, ID_PREFIX, JOIN_PREFIX, ep_key
from ..validate import check_hostname, check_ipv4, validate_name
from .core import Outcome
from .endpoints import EndpointVerbs
from .networks import NetworkVerbs
from .processes import ProcessVerbs

__all__ = ["ContainerVerbs"]


@dataclass(frozen=True)
class _RunRequest:
    """``run``'s input after every check that needs no state."""

    name: str
    mode: NetMode
    mappings: list[PortMapping]
    aliases: list[str]


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
    ) -> Outcome[Container]:
        """Validate everything, build the sandbox and its endpoint, record it; start it if
        ``detach`` (the CLI starts foreground containers itself and reports the pid)."""
        req = _check_run(cmd, name, net, ip, hostname, rootfs, publish, aliases)
        with self._operation() as op:
            if self.store.get(CTR_PREFIX + req.name) is not None:
                raise Conflict(f"container name {req.name!r} is already in use: choose another name or remove it first")
            network, joined, mappings = self._run_targets(req, ip)
            container = Container(
                id=uuid.uuid4().hex,
                name=req.name,
                hostname=hostname or req.name,
                net_mode=str(req.mode),
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
            container = self._build(container, network, ip, req.aliases, op)
        if detach:
            try:
                container = self.start_detached(container.name)
            except TetherError:
                self.remove_container(container.name, force=True)
                raise
        return Outcome(container, op.lagging)

    def _run_targets(
        self, req: _RunRequest, ip: str | None
    ) -> tuple[Network | None, Container | None, list[PortMapping]]:
        """The network (``--net NAME``) or the container (``--net container:NAME``) a
        new container attaches to, checked against the store; its ports made concrete."""
        mode, mappings = req.mode, req.mappings
        if mode.kind == "network":
            assert mode.target is not None
            network = self._resolve_network(mode.target)
            if ip is not None:
                self._check_requested_ip(network, ip)
            if mappings and network.internal:
                raise InvalidInput(f"network {network.name!r} is internal: it has no published ports")
            mappings = self._check_ports(mappings)
            self._check_aliases(network, [req.name, *req.aliases], req.name)
            return network, None, mappings
        if mode.kind == "container":
            assert mode.target is not None
            joined = self._refresh(self._container(mode.target))
            if joined.state == "creating":
                raise Conflict(f"container {joined.name!r} is still being created: try again")
            if joined.joined is not None:
                # chain to the owner of the namespace, as Docker does
                joined = self._container_by_id(joined.joined) or joined
            return None, joined, mappings
        return None, None, mappings

    def _build(
        self, container: Container, network: Network | None, ip: str | None, aliases: list[str], undo: Undo
    ) -> Container:
        """Record, sandbox, endpoint, ports, resolver: each undoable; the record last says
        ``created``."""
        name = container.name
        self._save(container)
        undo.push(f"record of container {name}", lambda: self.store.delete(CTR_PREFIX + name))
        self._index(container, undo)
        os.makedirs(self.container_dir(container), exist_ok=True)
        undo.push("state dir", lambda: shutil.rmtree(self.container_dir(container), ignore_errors=True))
        sandbox = self._sandbox(container)
        if sandbox.owns_netns():
            self._mark_netns(self.ctx.netns_name(container.name), undo)
        container = container.with_(netns=sandbox.setup(self.ctx, container, undo))
        if network is not None:
            endpoint = self._attach(container, network, ip, undo, default_route=True, aliases=aliases)
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

    # ------------------------------------------------------------------ stop, rm
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

    # ------------------------------------------------------------------ connect, disconnect
    def connect(
        self, network_name: str, container_name: str, ip: str | None = None, aliases: list[str] | None = None
    ) -> Outcome[Endpoint]:
        aliases = [validate_name("alias", a) for a in aliases or []]
        if ip is not None:
            check_ipv4("--ip", ip)
        with self._operation() as op:
            container = self._refresh(self._container(container_name))
            network = self._resolve_network(network_name)
            self._check_connectable(container, container_name)
            if self.store.get(ep_key(container.id, network.id)) is not None:
                raise Conflict(f"container {container_name!r} is already connected to network {network.name!r}")
            if ip is not None:
                self._check_requested_ip(network, ip)
            self._check_aliases(network, [container_name, *aliases], container_name)
            endpoint = self._attach(container, network, ip, op, default_route=None, aliases=aliases)
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

    def disconnect(self, network_name: str, container_name: str) -> None:
        with self.lock:
            container = self._container(container_name)
            network = self._network(network_name)
            if container.external:
                raise Conflict(
                    f"container {container_name!r} is another runtime's (CNI or Docker): disconnect it through that runtime"
                )
            kv = self.store.get(ep_key(container.id, network.id))
            if kv is None:
                raise NotFound(f"container {container_name!r} is not connected to network {network_name!r}")
            self._log_undo(self._detach(container, Endpoint.from_dict(kv.value)))


def _check_run(
    cmd: list[str],
    name: str | None,
    net: str | None,
    ip: str | None,
    hostname: str | None,
    rootfs: str | None,
    publish: list[str] | None,
    aliases: list[str] | None,
) -> _RunRequest:
    """Every check of ``run``'s input that needs no state, before the lock is taken."""
    if not cmd:
        raise InvalidInput("no command given: put the command after `--`, as in `tether run -- sleep 60`")
    name = validate_name("container", name if name is not None else f"t{uuid.uuid4().hex[:11]}")
    mode = parse_net_mode(net)
    if ip is not None:
        if mode.kind != "network":
            raise InvalidInput(f"--ip needs a network to attach to, not --net {mode}")
        check_ipv4("--ip", ip)
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
    return _RunRequest(name, mode, mappings, checked)
