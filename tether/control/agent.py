"""The per-host overlay agent: makes this host's kernel match the cluster's records.

It lists ``/cluster/`` once (a snapshot), programs everything, then follows a watch from
the snapshot's revision. Each change is applied as a diff of the peer table (remove, then
add; neighbour before FDB inside ``add_peer``), and the revision it reached is recorded
in ``/applied/<node>`` for the barrier, only once every entry of that change is in: both
peers of a dual-stack endpoint (v4 and v6 address, one MAC) are programmed in the same
step, so the barrier covers IPv6 too. When the store goes away the agent touches nothing
in the kernel — the data plane never depends on etcd or on this daemon — and when it comes
back the agent watches on from where it stopped, or, if that history was compacted, takes
a fresh snapshot and converges by diff.

Names travel the same way. In the step that programs a remote container's peers (so
before the revision is acknowledged, and ``run``'s barrier covers them), its name and
aliases go into this host's resolver for that network, under both its addresses, through
two narrow callbacks (``add_name``/``remove_name``); they go when the endpoint is
withdrawn, a dead host's with its endpoints after the grace period. The resolver holds
them in memory: a query never waits on the store, and with etcd down every name known
stays. What the resolver was given is kept here (``named``) and converged by the same
diff after a fresh snapshot; a restarted daemon starts with an empty resolver and gives
it the whole snapshot's names.

It also keeps the cluster honest: endpoints this host published but no longer has are
withdrawn, and a host that stays down past the grace period is reclaimed (its endpoints
withdrawn, its addresses released) by the first live host in name order.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..datapath import Datapath
from ..errors import TetherError
from .cluster import Cluster
from . import keys
from .peers import NetworkPeers, Peer, PeerTable, RemoteName

__all__ = ["OverlayAgent", "AgentHooks"]

log = logging.getLogger("tether.agent")

# Every 2 s (4 ticks of the grace timer) the kernel's peer entries are compared with what
# was programmed, and what someone deleted (`ip neigh del`, `bridge fdb del`) is put back:
# one neighbour + FDB dump per overlay network.
_PEER_CHECK_TICKS = 4


def _no_names(network: str, name: str, address: str) -> None:
    """A host without a resolver: remote names have nowhere to go."""


def _nobody_told(node: str, up: bool, address: str) -> None:
    """No one to tell that a host came up or went down."""


@dataclass
class AgentHooks:
    ensure_network: Callable[[dict[str, Any]], str]  # record -> vxlan device name (builds bridge, vxlan, host address)
    teardown_network: Callable[[dict[str, Any]], None]
    owns_endpoint: Callable[[dict[str, Any]], bool]  # is this endpoint of ours still real here?
    reclaim_node: Callable[[str], None]  # withdraw a dead host's endpoints and addresses
    # (network name, container name or alias, address) -> this host's resolver; idempotent
    add_name: Callable[[str, str, str], None] = _no_names
    remove_name: Callable[[str, str, str], None] = _no_names
    # (host, up, its underlay address) when a host's liveness changes (`tether events`)
    host_changed: Callable[[str, bool, str], None] = _nobody_told


class OverlayAgent:
    def __init__(self, cluster: Cluster, datapath: Datapath, hooks: AgentHooks) -> None:
        self.cluster = cluster
        self.store = cluster.store
        self.datapath = datapath
        self.hooks = hooks
        self.table = PeerTable(cluster.node)
        self.programmed: dict[str, NetworkPeers] = {}
        self.vxlans: dict[str, str] = {}
        self.ensured: dict[str, dict[str, Any]] = {}  # net id -> the record we built it from
        self.named: dict[str, tuple[str, list[RemoteName]]] = {}  # net id -> (its name, names given the resolver)
        self.down_since: dict[str, float] = {}
        self.live: set[str] = set()
        self.applied = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = threading.RLock()  # the watch thread and the grace timer share the tables
        self.synced = threading.Event()
        # peers found missing from the kernel and programmed again (``_repair_peers``):
        # (vxlan, address) -> when, so ``tether trace`` can say the repair happened
        self.repaired: dict[tuple[str, str], float] = {}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tether-overlay-agent", daemon=True)
        self._thread.start()
        threading.Thread(target=self._grace_loop, name="tether-overlay-grace", daemon=True).start()

    def stop(self) -> None:
        """Stop following the cluster. The watch blocks until the next event, so this
        waits only until no event is being applied (the handler holds ``_state``), not for
        the watch to end: the thread is a daemon and sees the flag at its next event."""
        self._stop.set()
        with self._state:
            pass

    # ------------------------------------------------------------------ main loop
    def _run(self) -> None:
        revision = 0
        while not self._stop.is_set():
            try:
                if revision == 0:
                    with self._state:
                        revision = self._snapshot()
                    self.synced.set()
                revision = self._follow(revision)
            except TetherError as exc:
                # Store unreachable or history compacted: keep the kernel exactly as it is,
                # and once the store answers again take a fresh snapshot and converge by diff
                # (which also withdraws what we could not withdraw while it was away).
                log.warning("overlay agent: %s", exc)
                revision = 0
                self._stop.wait(0.2)
            except Exception:
                log.exception("overlay agent")
                revision = 0
                self._stop.wait(0.5)

    def _snapshot(self) -> int:
        revision = self.store.revision()
        self.table.clear()
        for kv in self.store.list(keys.NETWORKS):
            self.table.networks[kv.value["id"]] = kv.value
        for kv in self.store.list(keys.ENDPOINTS):
            self.table.endpoints[kv.key[len(keys.ENDPOINTS):]] = kv.value
        for kv in self.store.list(keys.NODE_INFO):
            self.table.hosts[kv.value["name"]] = kv.value
        was_live, self.live = self.live, {kv.key.rsplit("/", 1)[1] for kv in self.store.list(keys.NODES)}
        if self.synced.is_set():  # a fresh snapshot after the store came back: what changed meanwhile
            for name in sorted(was_live ^ self.live):
                self._host_changed(name, name in self.live)
        now = time.monotonic()
        for name in self.table.hosts:
            if name not in self.live:
                self.down_since.setdefault(name, now)
            else:
                self.down_since.pop(name, None)
        self._withdraw_stale_own_endpoints()
        for net_id in list(self.vxlans):
            if net_id not in self.table.networks:
                self._teardown(net_id)
        for net_id in list(self.named):
            if net_id not in self.table.networks:
                self._drop_names(net_id)
        for net_id in list(self.table.networks):
            self._apply(net_id)
        self._ack(revision)
        return revision

    def _follow(self, revision: int) -> int:
        # One watch, kept open: reopening it costs tens of ms during which a new endpoint
        # would wait. Grace-period checks run on their own timer (``_grace_loop``).
        for event in self.store.watch(keys.CLUSTER, revision + 1, timeout=None):
            if self._stop.is_set():
                break
            with self._state:
                self._handle(event.type, event.key, event.value)
                revision = event.revision
                self._ack(revision)
        return revision

    def _grace_loop(self) -> None:
        ticks = 0
        while not self._stop.wait(0.5):
            if not self.synced.is_set():
                continue
            ticks += 1
            try:
                with self._state:
                    self._check_grace()
                if ticks % _PEER_CHECK_TICKS == 0:
                    self._repair_peers()
            except Exception:
                log.exception("overlay agent: grace check")

    def _ack(self, revision: int) -> None:
        if revision > self.applied:
            self.cluster.record_applied(revision)
            self.applied = revision

    # ------------------------------------------------------------------ events
    def _handle(self, kind: str, key: str, value: dict[str, Any] | None) -> None:
        if key.startswith(keys.NETWORKS):
            name = key[len(keys.NETWORKS):]
            if kind == "put" and value:
                self.table.networks[value["id"]] = value
                self._apply(value["id"])
            else:
                for net_id, rec in list(self.table.networks.items()):
                    if rec.get("name") == name:
                        del self.table.networks[net_id]
                        self._teardown(net_id)
                for net_id, rec in list(self.ensured.items()):
                    if rec.get("name") == name:
                        self._teardown(net_id)
        elif key.startswith(keys.ENDPOINTS):
            ep_key = key[len(keys.ENDPOINTS):]
            old = self.table.endpoints.get(ep_key)
            if kind == "put" and value:
                self.table.endpoints[ep_key] = value
            else:
                self.table.endpoints.pop(ep_key, None)
            net_id = (value or old or {}).get("network_id") or ep_key.split("/", 1)[0]
            self._apply(net_id)
        elif key.startswith(keys.NODE_INFO):
            name = key[len(keys.NODE_INFO):]
            if kind == "put" and value:
                self.table.hosts[name] = value
            else:
                self.table.hosts.pop(name, None)
                self.down_since.pop(name, None)
            for net_id in list(self.table.networks):
                self._apply(net_id)
        elif key.startswith(keys.NODES):
            name = key[len(keys.NODES):]
            if (kind == "put") != (name in self.live):
                self._host_changed(name, kind == "put")
            if kind == "put":
                self.live.add(name)
                self.down_since.pop(name, None)
            else:
                self.live.discard(name)
                if name in self.table.hosts:
                    self.down_since[name] = time.monotonic()

    def _host_changed(self, name: str, up: bool) -> None:
        address = str(self.table.hosts.get(name, {}).get("address", ""))
        try:
            self.hooks.host_changed(name, up, address)
        except Exception:  # telling must never stop the agent
            log.exception("overlay agent: reporting host %s %s", name, "up" if up else "down")

    # ------------------------------------------------------------------ kernel
    def _apply(self, net_id: str) -> None:
        record = self.table.networks.get(net_id)
        if record is None:
            return
        vxlan = self.vxlans.get(net_id)
        if vxlan is None:
            vxlan = self.hooks.ensure_network(record)
            self.vxlans[net_id] = vxlan
            self.ensured[net_id] = record
            if net_id not in self.programmed:  # first sight in this process: what the kernel holds
                self.programmed[net_id] = NetworkPeers(
                    peers={Peer(*p) for p in self.datapath.list_peers(vxlan)},
                    floods=set(self.datapath.list_floods(vxlan)),
                )
        programmed = self.programmed.setdefault(net_id, NetworkPeers())
        changes = PeerTable.diff(programmed, self.table.desired(net_id))
        for peer in changes.remove_peers:
            self.datapath.remove_peer(vxlan, peer.address, peer.mac, peer.vtep)
            programmed.peers.discard(peer)
        for vtep in changes.remove_floods:
            self.datapath.remove_flood(vxlan, vtep)
            programmed.floods.discard(vtep)
        for vtep in changes.add_floods:
            self.datapath.add_flood(vxlan, vtep)
            programmed.floods.add(vtep)
        for peer in changes.add_peers:
            self.datapath.add_peer(vxlan, peer.address, peer.mac, peer.vtep)
            programmed.peers.add(peer)
        self._sync_names(net_id, record["name"])

    def _sync_names(self, net_id: str, network: str) -> None:
        """The resolver's names of the network's remote containers, as the records say:
        those gone out first, then the new ones in the table's order."""
        _, had = self.named.get(net_id, (network, []))
        want = self.table.names(net_id)
        if want == had:
            return
        keep = set(want)
        for gone in had:
            if gone not in keep:
                self._tell(self.hooks.remove_name, network, gone)
        known = set(had)
        for new in want:
            if new not in known:
                self._tell(self.hooks.add_name, network, new)
        self.named[net_id] = (network, want)

    def _drop_names(self, net_id: str) -> None:
        network, had = self.named.pop(net_id, ("", []))
        for gone in had:
            self._tell(self.hooks.remove_name, network, gone)

    @staticmethod
    def _tell(hook: Callable[[str, str, str], None], network: str, entry: RemoteName) -> None:
        try:
            hook(network, entry.name, entry.address)
        except TetherError as exc:  # one bad record must not stop the rest (or the acknowledgement)
            log.warning("overlay agent: name %s (%s) on %s: %s", entry.name, entry.address, network, exc)

    def _teardown(self, net_id: str) -> None:
        self._drop_names(net_id)
        record = self.ensured.pop(net_id, None)
        self.vxlans.pop(net_id, None)
        self.programmed.pop(net_id, None)
        if record is None:
            return
        try:
            self.hooks.teardown_network(record)
        except TetherError as exc:
            log.warning("overlay agent: tearing down network %s: %s", net_id, exc)

    def forget_network(self, net_id: str) -> None:
        """The controller removed a network's datapath itself; drop our cache of it (and
        the names we gave the resolver for it)."""
        self._drop_names(net_id)
        self.vxlans.pop(net_id, None)
        self.programmed.pop(net_id, None)
        self.ensured.pop(net_id, None)

    # ------------------------------------------------------------------ hygiene
    def _withdraw_stale_own_endpoints(self) -> None:
        for ep_key, ep in list(self.table.endpoints.items()):
            if ep.get("node") != self.cluster.node or ep.get("kind") != "container":
                continue
            if not self.hooks.owns_endpoint(ep):
                log.info("withdrawing endpoint %s (%s): no such container here any more", ep_key, ep.get("address"))
                self.store.delete(keys.ENDPOINTS + ep_key)
                self.table.endpoints.pop(ep_key, None)

    def _check_grace(self) -> None:
        now = time.monotonic()
        for name, since in list(self.down_since.items()):
            if now - since < self.cluster.grace or name in self.live:
                continue
            first_live = min(self.live | {self.cluster.node})
            if first_live != self.cluster.node:
                continue  # another live host reclaims it
            log.info("host %s has been down for %.0f s: reclaiming its endpoints and addresses", name, now - since)
            try:
                self.hooks.reclaim_node(name)
                self.down_since.pop(name, None)
            except TetherError as exc:
                log.warning("reclaiming %s: %s", name, exc)

    def _repair_peers(self) -> None:
        """Program again every peer and flood entry the kernel lost since it was programmed
        (deleted by hand, say). The kernel is read without ``_state`` (a dump of 1000 peers
        takes ~0.2 s: the watch must not wait for it); what to put back is decided under it,
        against what is programmed by then (a re-add is idempotent)."""
        with self._state:
            vxlans = list(self.vxlans.items())
        for net_id, vxlan in vxlans:
            try:
                held = {Peer(*p) for p in self.datapath.list_peers(vxlan)}
                floods = set(self.datapath.list_floods(vxlan))
            except TetherError as exc:
                log.warning("overlay agent: peer check of %s: %s", vxlan, exc)
                continue
            with self._state:
                self._put_back(net_id, vxlan, held, floods)

    def _put_back(self, net_id: str, vxlan: str, held: set[Peer], floods: set[str]) -> None:
        """What ``programmed`` has and the kernel (read as ``held``/``floods``) lost; under ``_state``."""
        programmed = self.programmed.get(net_id)
        if programmed is None or self.vxlans.get(net_id) != vxlan:
            return
        try:
            vteps: dict[str, set[str]] = {}
            for peer in programmed.peers:
                vteps.setdefault(peer.mac, set()).add(peer.vtep)
            # a MAC programmed behind two VTEPs (moving between hosts) is left to the
            # next change: putting one back would move the other's FDB entry
            for peer in sorted(p for p in programmed.peers - held if len(vteps[p.mac]) == 1):
                self.datapath.add_peer(vxlan, peer.address, peer.mac, peer.vtep)
                self.repaired[(vxlan, peer.address)] = time.time()
                log.warning("overlay agent: restored the lost peer %s on %s", peer.address, vxlan)
            for vtep in sorted(programmed.floods - floods):
                self.datapath.add_flood(vxlan, vtep)
                log.warning("overlay agent: restored flooding to %s on %s", vtep, vxlan)
        except TetherError as exc:
            log.warning("overlay agent: peer check of %s: %s", vxlan, exc)
