"""What the controller's unit tests share: a controller on fakes, a snapshot of everything
it may change, and fakes that can fail one step of an operation.

A snapshot holds the host's store (and the cluster's, with a cluster), the fake kernel,
the fake firewall and the state dir. The IPAM cursor is left out: it is a hint that is
written without undo on purpose (``tether/ipam.py``), and ``/applied/`` is each host's
acknowledgement of what its agent programmed, not state an operation makes.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tether.control.cluster import Cluster
from tether.controller import Controller
from tether.datapath import Datapath
from tether.errors import StoreError
from tether.store import Store
from tether.testing.datapath import RecordingDatapath
from tether.testing.firewall import RecordingFirewall
from tether.testing.memory import MemoryStore

__all__ = [
    "KERNEL_TABLES",
    "FlakyStore",
    "StoreFaults",
    "TracingDatapath",
    "kernel",
    "make_controller",
    "runtime_netns",
    "snapshot",
    "state_files",
    "store_state",
]

# RecordingDatapath's tables: everything a kernel holds (``calls`` and ``fail`` are not state).
KERNEL_TABLES = (
    "netns", "aliases", "bridges", "bridge_macs", "veths", "vxlans", "peers", "floods",
    "addresses", "default_routes", "marks", "macvlans", "macvlan_endpoints", "stubs", "routes_via",
)  # fmt: skip

_NOT_STATE = ("/ipam-cursor/", "/applied/")


class TracingDatapath(RecordingDatapath):
    """A RecordingDatapath that also lists in ``trace`` every verb its caller used, reads
    included, but not the verbs the fake calls on itself (``create_netns`` asking
    ``netns_path``). Safe next to an overlay agent's thread: the depth is per thread."""

    def __init__(self, host_networks: list[str] | None = None) -> None:
        super().__init__(host_networks)
        self.trace: list[str] = []
        self._local = threading.local()


def _traced(name: str) -> Callable[..., Any]:
    inner = getattr(RecordingDatapath, name)

    @functools.wraps(inner)
    def verb(self: TracingDatapath, *args: Any, **kwargs: Any) -> Any:
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            self.trace.append(name)
        self._local.depth = depth + 1
        try:
            return inner(self, *args, **kwargs)
        finally:
            self._local.depth = depth

    return verb


for _name, _ in inspect.getmembers(Datapath, inspect.isfunction):
    if not _name.startswith("_"):
        setattr(TracingDatapath, _name, _traced(_name))


class StoreFaults:
    """Counts the writes of the stores that share it; fails the ``fail_at``-th one, once."""

    def __init__(self) -> None:
        self.writes: list[str] = []  # "put /containers", ...: verb and the key's first segment
        self.fail_at: int | None = None


class FlakyStore(MemoryStore):
    """A MemoryStore whose n-th write (put, compare-and-swap, delete) raises StoreError
    before it changes anything, once: one step of an operation failing."""

    def __init__(self, faults: StoreFaults) -> None:
        super().__init__()
        self.faults = faults

    def _write(self, verb: str, key: str) -> None:
        self.faults.writes.append(f"{verb} /{key.split('/')[1]}")
        if self.faults.fail_at == len(self.faults.writes):
            self.faults.fail_at = None
            raise StoreError(f"injected failure in {verb} {key}")

    def put(self, key: str, value: dict[str, Any]) -> int:
        self._write("put", key)
        return super().put(key, value)

    def compare_and_swap(self, key: str, expected_revision: int, value: dict[str, Any] | None) -> bool:
        self._write("cas", key)
        return super().compare_and_swap(key, expected_revision, value)

    def delete(self, key: str) -> bool:
        self._write("delete", key)
        return super().delete(key)


def make_controller(
    root: Path,
    *,
    store: Store | None = None,
    cluster_store: Store | None = None,
    node: str = "A",
    advertise: str = "192.0.2.1",
    netns_prefix: str = "u-",
    barrier_timeout: float = 0.2,
) -> Controller:
    """A controller on fakes: TracingDatapath, RecordingFirewall (its table installed, as
    the daemon's reconcile at start leaves it), a cluster when ``cluster_store`` is given."""
    firewall = RecordingFirewall()
    firewall.ensure()
    firewall.calls.clear()
    state_dir = root / f"state-{node}"
    return Controller(
        store if store is not None else MemoryStore(),
        TracingDatapath(["192.168.1.0/24"]),
        str(state_dir),
        netns_prefix=netns_prefix,
        firewall=firewall,  # type: ignore[arg-type]  # the fake satisfies firewall.base.Firewall
        cluster=Cluster(cluster_store, node, advertise) if cluster_store is not None else None,
        barrier_timeout=barrier_timeout,
    )


def runtime_netns(ctl: Controller, path: Path) -> str:
    """A namespace another runtime made and bound at ``path`` (a file stands for the bind mount)."""
    path.touch()
    ctl.ctx.datapath.netns.add(str(path))  # type: ignore[attr-defined]
    return str(path)


def store_state(store: Store) -> dict[str, Any]:
    return {kv.key: kv.value for kv in store.list("/") if not kv.key.startswith(_NOT_STATE)}


def kernel(dp: Any) -> dict[str, Any]:
    return {name: copy.deepcopy(getattr(dp, name)) for name in KERNEL_TABLES}


def state_files(root: str) -> list[str]:
    """What lies in a state dir (its top-level folders, made once, are not news)."""
    found = []
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.relpath(os.path.join(folder, name), root)
            if os.sep in path or name in files:
                found.append(path)
    return sorted(found)


def snapshot(ctl: Controller) -> dict[str, Any]:
    """Everything an operation of ``ctl`` may change, as plain values."""
    firewall: RecordingFirewall = ctl.firewall  # type: ignore[assignment]
    out = {
        "store": store_state(ctl.store),
        "kernel": kernel(ctl.ctx.datapath),
        "firewall": (firewall.installed, copy.deepcopy(firewall.elements)) if firewall is not None else None,
        "state dir": state_files(ctl.state_dir),
    }
    if ctl.cluster is not None:
        out["cluster store"] = store_state(ctl.cluster.store)
    return out
