"""The controller's core: its parts, its lookups, and the one shape every operation has.

Every mutating verb runs inside ``with self._operation() as op:``. That takes the lock,
hands out ``op`` (an ``Undo``) on which each step pushes its inverse, unwinds it if
anything raises, and after the lock is released waits for the overlay barrier when the
operation published a cluster record: every live host must have programmed it before
the verb returns. Hosts that did not make it in time come back in ``op.lagging``, which
the verb returns inside an ``Outcome`` value.

Events (``tether events``, ``events.py``): what a verb makes is announced with ``_emit``,
which holds the event until the outermost operation commits (an undone step never shows)
and emits at once outside one; what cannot be undone once it happened (an exit, a detach,
a removal) goes straight to ``self.events.emit``.

Records are written *before* the kernel change they describe (a container starts in
state ``creating``), so a daemon killed at any instant leaves a record that reconcile
finishes or removes. Mutations take milliseconds under the lock; waiting on processes
(start, stop) and on other hosts happens outside it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..control import keys as ckeys
from ..datapath import Datapath
from ..drivers import (
    DriverContext,
    ExternalNamespace,
    HostNamespace,
    NetworkDriver,
    OwnNamespace,
    SandboxMode,
    SharedNamespace,
    Undo,
    network_drivers,
)
from ..errors import InvalidInput, NotFound, TetherError
from ..events import EventBus
from ..ipam import IPAM
from ..model import Container, Endpoint, Network
from ..store import Store
from ..storekeys import CTR_PREFIX, EP_PREFIX, ID_PREFIX, NET_PREFIX

if TYPE_CHECKING:
    from ..control.agent import AgentHooks
    from ..control.cluster import Cluster
    from ..dns import Resolver
    from ..firewall import Firewall
    from .restarts import ProcessMonitor

__all__ = ["ControllerCore", "Operation", "Outcome"]

log = logging.getLogger("tether.controller")

T = TypeVar("T")


class Operation(Undo):
    """One operation's undo stack; after the ``with`` block, ``lagging`` names the hosts
    that had not programmed what it published when the barrier gave up."""

    def __init__(self) -> None:
        super().__init__()
        self.lagging: list[str] = []


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What a verb made, and the hosts still behind on it (empty on a single host)."""

    value: T
    lagging: list[str] = field(default_factory=list)


class ControllerCore:
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
        self.barrier_timeout = barrier_timeout
        self.default_ipv6 = False  # `tether daemon --ipv6`: the default network is made dual stack
        self.ipam = IPAM(store)
        self.lock = threading.RLock()
        self.ctx = DriverContext(
            datapath=datapath,
            mark=f"tether:{netns_prefix}",
            netns_prefix=netns_prefix,
            store=store,
            ipam=self.ipam,
            lock=self.lock,
            firewall=firewall,
            cluster=cluster,
            global_ipam=IPAM(cluster.store) if cluster else None,
        )
        self.drivers: dict[str, NetworkDriver] = network_drivers()
        self.state_dir = state_dir
        self.socket_path = socket_path
        self.monitor: ProcessMonitor | None = None  # the daemon's process monitor (controller/restarts.py)
        self._container_locks: dict[str, threading.Lock] = {}
        self.events = EventBus()  # what happens, for `tether events` (events.py)
        self._held = threading.local()  # the events of this thread's operation, until it commits
        os.makedirs(os.path.join(state_dir, "containers"), exist_ok=True)

    # ------------------------------------------------------------------ the operation
    @contextmanager
    def _operation(self) -> Iterator[Operation]:
        op = Operation()
        with self.lock:
            outermost = getattr(self._held, "events", None) is None
            held: list[tuple[str, str, object, dict[str, Any]]] = [] if outermost else self._held.events
            self._held.events, mark = held, len(held)
            try:
                yield op
            except BaseException:
                del held[mark:]  # undone: it never happened
                self._log_undo(op.unwind())
                raise
            finally:
                if outermost:
                    self._held.events = None
            op.commit()
            if outermost:
                for type_, action, actor, attributes in held:
                    self.events.emit(type_, action, actor, **attributes)
        op.lagging = self._wait_barrier(op.published)

    def _wait_barrier(self, revision: int) -> list[str]:
        """After an overlay endpoint was published: wait until every live host programmed it."""
        if not revision or self.cluster is None:
            return []
        try:
            return self.cluster.wait_applied(revision, self.barrier_timeout)
        except TetherError as exc:
            log.warning("barrier: %s", exc)
            return ["(cluster store unreachable)"]

    def _emit(self, type_: str, action: str, actor: object, **attributes: Any) -> None:
        """An event of what this operation made: emitted when it commits (at once outside one)."""
        held = getattr(self._held, "events", None)
        if held is None:
            self.events.emit(type_, action, actor, **attributes)
        else:
            held.append((type_, action, actor, attributes))

    def _emit_endpoint(self, action: str, container: Container, endpoint: Endpoint, now: bool = False) -> None:
        """An endpoint's event (actor ``CONTAINER.NETWORK``); ``now``: not held by the operation."""
        emit = self.events.emit if now else self._emit
        emit(
            "endpoint", action, (endpoint.id, f"{container.name}.{endpoint.network}"),
            container=container.name, container_id=container.id, network=endpoint.network,
            network_id=endpoint.network_id, ifname=endpoint.ifname, address=endpoint.cidr, address6=endpoint.cidr6,
        )

    def _log_undo(self, failures: list[str]) -> None:
        for line in failures:
            log.warning("%s", line)

    # ------------------------------------------------------------------ the overlay agent
    def agent_hooks(self) -> AgentHooks:
        """The calls the overlay agent makes back into this host (the overlay driver's)."""
        return self.drivers["overlay"].agent_hooks(self.ctx)  # type: ignore[attr-defined,no-any-return]

    @property
    def agent(self) -> Any:
        return getattr(self.drivers["overlay"], "agent", None)

    @agent.setter
    def agent(self, agent: Any) -> None:
        self.drivers["overlay"].agent = agent  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ lookups
    def _driver(self, network: Network) -> NetworkDriver:
        return self.drivers[network.driver]

    def _driver_named(self, name: str) -> NetworkDriver:
        driver = self.drivers.get(name)
        if driver is None:
            raise InvalidInput(f"unknown network driver {name!r}: use one of {', '.join(sorted(self.drivers))}")
        return driver

    def _lookup_network(self, name: str) -> Network | None:
        """A network by name: this host's bridge networks first, then the cluster's overlays."""
        kv = self.store.get(NET_PREFIX + name)
        if kv is None and self.cluster is not None:
            kv = self.cluster.store.get(ckeys.network_key(name))
        return Network.from_dict(kv.value) if kv else None

    def _network(self, ref: str) -> Network:
        """A network by what a user may type, as Docker takes it: its name, else its full
        ID, else a unique prefix of its ID. A name costs one get; only a miss scans."""
        network = self._lookup_network(ref)
        if network is not None:
            return network
        if _could_be_id(ref):
            found = [n for n in self._all_networks() if n.id.startswith(ref)]
            if len(found) == 1:
                return found[0]
            if found:
                raise _ambiguous("network", ref, [(n.id, n.name) for n in found])
        raise NotFound(
            f"network {ref!r} not found: create it with `tether network create {ref}` "
            "or list networks with `tether network ls`"
        )

    def _networks(self) -> list[Network]:
        """This host's own networks."""
        return [Network.from_dict(kv.value) for kv in self.store.list(NET_PREFIX)]

    def _all_networks(self) -> list[Network]:
        """This host's networks and the cluster's."""
        overlays = self.cluster.store.list(ckeys.NETWORKS) if self.cluster is not None else []
        return self._networks() + [Network.from_dict(kv.value) for kv in overlays]

    def _ipam_for(self, network: Network) -> IPAM:
        return self._driver(network).ipam(self.ctx)

    def _container(self, ref: str) -> Container:
        """A container by what a user may type, as Docker takes it: its name, else its
        full ID, else a unique prefix of its ID (``ps`` shows the first 12 characters).
        A name costs one get; only a miss reads the ID index, by prefix (one range read,
        and a get per match), never every record."""
        kv = self.store.get(CTR_PREFIX + ref)
        if kv is not None:
            return Container.from_dict(kv.value)
        if _could_be_id(ref):
            found = self._containers_by_id_prefix(ref)
            if len(found) == 1:
                return found[0]
            if found:
                raise _ambiguous("container", ref, [(c.id, c.name) for c in found])
        raise NotFound(f"container {ref!r} not found: list containers with `tether ps -a`")

    def _containers_by_id_prefix(self, prefix: str) -> list[Container]:
        """Every record has its index entry: ``run`` and the doors write it, reconcile
        restores one a record older than the index lacks."""
        found = []
        for entry in self.store.list(ID_PREFIX + prefix):
            kv = self.store.get(CTR_PREFIX + entry.value["name"])
            if kv is not None and str(kv.value.get("id", "")).startswith(prefix):
                found.append(Container.from_dict(kv.value))
        return found

    def _containers(self) -> list[Container]:
        return [Container.from_dict(kv.value) for kv in self.store.list(CTR_PREFIX)]

    def _container_by_id(self, container_id: str) -> Container | None:
        """A container by its full ID, through the index (two gets). Every record has
        its entry: ``run`` and the doors write it, reconcile restores a missing one."""
        kv = self.store.get(ID_PREFIX + container_id) if container_id else None
        if kv is not None:
            c = self.store.get(CTR_PREFIX + kv.value["name"])
            if c is not None and c.value.get("id") == container_id:
                return Container.from_dict(c.value)
        return None

    def _endpoints(self, container_id: str | None = None) -> list[Endpoint]:
        prefix = EP_PREFIX + (f"{container_id}/" if container_id else "")
        return [Endpoint.from_dict(kv.value) for kv in self.store.list(prefix)]

    def _sandbox(self, container: Container) -> SandboxMode:
        mode = container.mode
        if container.external:
            return ExternalNamespace()
        if mode.kind == "host":
            return HostNamespace()
        if mode.kind == "container":
            return SharedNamespace(container.netns)
        return OwnNamespace()

    def _save(self, container: Container) -> Container:
        self.store.put(CTR_PREFIX + container.name, container.to_dict())
        return container

    def container_dir(self, container: Container) -> str:
        return os.path.join(self.state_dir, "containers", container.id)

    # ------------------------------------------------------------------ one container at a time
    @contextmanager
    def _container_lock(self, container_id: str) -> Iterator[None]:
        """Serialise the lifecycle verbs of one container (start, stop, restart, rm,
        connect, disconnect, and the restart monitor's) across their slow parts, which run
        outside ``self.lock`` (a process start, a stop's grace period). Take it before
        ``self.lock``, never while holding it."""
        with self.lock:
            held = self._container_locks.setdefault(container_id, threading.Lock())
        with held:
            yield

    def _forget_lock(self, container_id: str) -> None:
        with self.lock:
            self._container_locks.pop(container_id, None)

    # ------------------------------------------------------------------ what the rooms above fill in
    def _on_exit(self, container: Container) -> Container:
        """A container's process has just been recorded as exited: what it held while it
        ran is released (its endpoints; the container room's). Returns the record."""
        return container

    def _watch(self, container: Container) -> None:
        """A container's process has just been recorded as running: the process monitor
        (the daemon's, when it runs one) acts on its exit at once."""
        self.events.emit("container", "start", container, pid=container.pid)
        if self.monitor is not None:
            self.monitor.watch(container.id, container.pid, container.start_time)


def _could_be_id(ref: str) -> bool:
    """IDs are lower-case hex: anything else is only ever a name (and costs no scan)."""
    return bool(ref) and len(ref) <= 64 and all(c in "0123456789abcdef" for c in ref)


def _ambiguous(kind: str, prefix: str, candidates: list[tuple[str, str]]) -> InvalidInput:
    named = ", ".join(f"{name} ({cid[:12]})" for cid, name in sorted(candidates, key=lambda c: c[1])[:5])
    more = f" and {len(candidates) - 5} more" if len(candidates) > 5 else ""
    return InvalidInput(
        f"{kind} ID prefix {prefix!r} is ambiguous: it matches {named}{more}: give more of the ID, or the name"
    )
