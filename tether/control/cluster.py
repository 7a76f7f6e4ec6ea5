"""This host's membership in the cluster: liveness, the node list, and the barrier.

Liveness is an etcd lease (TTL 2 s, kept alive every 0.5 s) on ``/cluster/nodes/<node>``:
a host that dies disappears within about 2 s, with no gossip and no home-made failure
detector. The barrier makes ``run`` honest: a host records in ``/applied/<node>`` the
store revision it has programmed into its kernel, and the host that published an endpoint
at revision R waits until every *live* host has passed R, so the first packet from any
host gets through.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import TetherError
from ..store import Store
from . import keys

__all__ = ["Cluster"]

log = logging.getLogger("tether.cluster")

LEASE_TTL = 2
KEEPALIVE_EVERY = 0.5


class Cluster:
    def __init__(self, store: Store, node: str, advertise: str, grace: float = 60.0) -> None:
        self.store = store
        self.node = node
        self.advertise = advertise
        self.grace = grace
        self._lease: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_reregister: Callable[[], None] | None = None

    # ------------------------------------------------------------------ liveness
    def register(self) -> None:
        """Announce this host (info, then liveness) and keep the lease alive in a thread."""
        self.store.put(keys.node_info_key(self.node), {"name": self.node, "address": self.advertise})
        self._grant()
        self._thread = threading.Thread(target=self._keepalive, name="tether-lease", daemon=True)
        self._thread.start()

    def _grant(self) -> None:
        grant = getattr(self.store, "lease_grant", None)
        value = {"name": self.node, "address": self.advertise, "since": time.time()}
        if grant is None:  # a store without leases (tests): always up
            self.store.put(keys.node_key(self.node), value)
            return
        self._lease = grant(LEASE_TTL)
        self.store.put(keys.node_key(self.node), value, lease=self._lease)  # type: ignore[call-arg]

    def _keepalive(self) -> None:
        keepalive = getattr(self.store, "lease_keepalive", None)
        while not self._stop.wait(KEEPALIVE_EVERY):
            if keepalive is None:
                continue
            try:
                ttl = keepalive(self._lease) if self._lease is not None else 0
                if ttl <= 0:  # expired while we could not reach etcd: come back
                    self._grant()
                    if self.on_reregister:
                        self.on_reregister()
            except TetherError as exc:
                log.debug("lease keepalive: %s", exc)

    def stop(self) -> None:
        """Stop keeping the lease alive. The lease is *not* revoked: a daemon that restarts
        must not look like a host that left (its endpoints stay everywhere)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)

    def live_nodes(self) -> dict[str, str]:
        return {kv.key.rsplit("/", 1)[1]: kv.value.get("address", "") for kv in self.store.list(keys.NODES)}

    def nodes(self) -> list[dict[str, Any]]:
        live = self.live_nodes()
        applied = {kv.key.rsplit("/", 1)[1]: kv.value.get("revision", 0) for kv in self.store.list(keys.APPLIED)}
        out = []
        for kv in self.store.list(keys.NODE_INFO):
            name = kv.value["name"]
            out.append(
                {
                    "name": name,
                    "address": kv.value.get("address"),
                    "up": name in live,
                    "applied_revision": applied.get(name, 0),
                    "self": name == self.node,
                }
            )
        return out

    # ------------------------------------------------------------------ barrier
    def record_applied(self, revision: int) -> None:
        self.store.put(keys.applied_key(self.node), {"revision": revision})

    def wait_applied(self, revision: int, timeout: float = 5.0) -> list[str]:
        """Wait until every live host has programmed ``revision``; the hosts still behind
        when ``timeout`` runs out (empty: all caught up).

        It polls ``/applied/`` (one range read, well under a millisecond) rather than
        opening a watch: a watch that starts in the past costs tens of milliseconds to
        set up, longer than the whole wait usually is."""
        deadline = time.monotonic() + timeout
        pause = 0.001
        while True:
            behind = self._behind(revision)
            if not behind or time.monotonic() >= deadline:
                return sorted(behind)
            time.sleep(pause)
            pause = min(pause * 1.5, 0.01)

    def _behind(self, revision: int) -> set[str]:
        applied = {kv.key.rsplit("/", 1)[1]: kv.value.get("revision", 0) for kv in self.store.list(keys.APPLIED)}
        return {n for n in self.live_nodes() if applied.get(n, 0) < revision}
