"""The Firewall: tether's nftables table, created once, then changed element by element.

Design note. The ruleset (``rules.py``) has a constant number of rules; networks and
published ports are elements of sets and maps. So:

- ``ensure()`` creates what is missing (table, sets, maps, the ``user`` chain, the base
  chains and their rules) in one transaction. It never deletes the table and never
  touches the ``user`` chain's rules or any set's elements; a base chain whose rule count
  is off is refilled (``flush chain`` + ``add rule`` in the same transaction).
- ``sync()`` is the full desired state: flush every set and map and add all elements, in
  ONE transaction together with ``ensure``'s work if any was needed, so packets never see
  a half-built table and new connections are never refused.
- ``add_*``/``remove_*`` are one small transaction each (~0.03-0.1 ms in-process).
  Removal is idempotent without ``destroy`` (nft 1.0.6 has none): see ``render_remove``.
- A healer thread polls ``present()`` (one ``list chains``, ~0.1 ms) every ``interval``
  and, every 2 s, the full check of ``ensure``; when something is gone (``nft flush
  ruleset``, a deleted table or chain) it resyncs from the caller's desired state.

Namespaces: libnftables binds its netlink socket when the context is made, so a Firewall
acts on the network namespace of the thread that constructed it, or on ``netns`` when
given (a bound namespace path): every later call, from any thread (the healer's too),
goes there. All calls are serialised by one lock.

Errors: nftables failures raise ``SystemFailure`` with nft's first error line; an added
element that clashes with a present one (a host port already published to another
target, an overlapping subnet) raises ``Conflict``.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import Conflict, SystemFailure
from .libnft import Nft
from .rules import (
    CHAINS,
    SETS,
    USER_CHAIN,
    NetworkRules,
    PortRule,
    elements_from_json,
    network_candidates,
    network_elements,
    port_elements,
    render_add,
    render_delete,
    render_install,
    render_remove,
    render_sync,
    validate_table,
)

__all__ = ["DesiredState", "Firewall"]

log = logging.getLogger("tether.firewall")

DesiredState = Callable[[], tuple[list[NetworkRules], list[PortRule]]]

_FULL_CHECK_EVERY = 2.0  # seconds between the healer's full (rule count) checks


class Firewall:
    """tether's table ``ip <table>`` in one network namespace."""

    def __init__(self, table: str = "tether", *, netns: str | None = None) -> None:
        self.table = validate_table(table)
        if netns is None:
            self._nft = Nft()
            self._probe_nft = Nft()
        else:
            from ..datapath.nsutil import run_in_netns

            self._nft = run_in_netns(netns, Nft)
            self._probe_nft = run_in_netns(netns, Nft)
        # The healer reads the ruleset through its own context, without the lock: a full
        # read can take long when other tables are large (iptables-nft rules of another
        # engine), and it must never make an add_ports wait. Only a repair takes the lock.
        self._lock = threading.RLock()
        self._healer: threading.Thread | None = None
        self._stop = threading.Event()
        self.repairs = 0  # how many times the healer rebuilt the table (for tests, metrics)

    # -- reading --------------------------------------------------------------------

    def _table_state(
        self, nft: Nft | None = None
    ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], Counter[str]] | None:
        """(sets by name, chains by name, rule count by chain) of our table, or None."""
        # ``list ruleset ip`` with terse output skips set elements (0.5 ms with 1000 ports);
        # ``list table`` fetches them even when terse (6.5 ms).
        items = (nft or self._nft).run_json("list ruleset ip", terse=True)
        found = False
        sets: dict[str, dict[str, Any]] = {}
        chains: dict[str, dict[str, Any]] = {}
        rules: Counter[str] = Counter()
        for item in items:
            (kind, obj), = item.items()
            if not isinstance(obj, dict) or (obj.get("table", obj.get("name")) != self.table):
                continue
            if kind == "table":
                found = True
            elif kind in ("set", "map"):
                sets[obj["name"]] = obj
            elif kind == "chain":
                chains[obj["name"]] = obj
            elif kind == "rule":
                rules[obj["chain"]] += 1
        return (sets, chains, rules) if found else None

    def _problem(self, nft: Nft | None = None) -> str | None:
        """Why ``ensure`` must act, or None when the table is complete."""
        state = self._table_state(nft)
        if state is None:
            return "table missing"
        sets, chains, rules = state
        for name in SETS:
            if name not in sets:
                return f"set {name} missing"
        if USER_CHAIN not in chains:
            return f"chain {USER_CHAIN} missing"
        for name, spec in CHAINS.items():
            chain = chains.get(name)
            if chain is None:
                return f"chain {name} missing"
            if (chain.get("type"), chain.get("hook"), chain.get("prio")) != (spec.type, spec.hook, spec.priority):
                return f"chain {name} has another hook"
            if rules[name] != len(spec.rules):
                return f"chain {name} has {rules[name]} rules, not {len(spec.rules)}"
        return None

    def present(self, nft: Nft | None = None) -> bool:
        """True if the table, the ``user`` chain and every base chain exist (cheap)."""
        if nft is None:
            with self._lock:
                items = self._nft.run_json("list chains ip", terse=True)
        else:
            items = nft.run_json("list chains ip", terse=True)
        names = {obj["name"] for item in items if (obj := item.get("chain")) and obj.get("table") == self.table}
        return names >= {USER_CHAIN, *CHAINS}

    def rule_count(self) -> int:
        """Rules in the table, the ``user`` chain's included (constant in the port count)."""
        with self._lock:
            state = self._table_state()
        return 0 if state is None else sum(state[2].values())

    def _elements(self, name: str) -> set[str]:
        kind = SETS[name][0]
        for item in self._nft.run_json(f"list {kind} ip {self.table} {name}"):
            if kind in item:
                return elements_from_json(name, item[kind])
        return set()

    # -- changing -------------------------------------------------------------------

    def ensure(self) -> bool:
        """Create whatever is missing; True if anything had to be created or refilled."""
        with self._lock:
            problem = self._problem()
            if problem is None:
                return False
            log.info("nftables table %s: %s; installing", self.table, problem)
            self._nft.run(render_install(self.table))
            return True

    def sync(self, networks: list[NetworkRules], ports: list[PortRule]) -> None:
        """Make every set and map hold exactly the desired elements, in one transaction."""
        text = render_sync(self.table, networks, ports)  # validates before touching anything
        with self._lock:
            install = render_install(self.table) if self._problem() is not None else ""
            self._nft.run(install + text)

    def add_network(self, net: NetworkRules) -> None:
        self._add(network_elements(net))

    def remove_network(self, net: NetworkRules) -> None:
        """Remove everything ``net`` may have added, whatever its flags were; idempotent."""
        self._remove(network_candidates(net))

    def add_ports(self, ports: list[PortRule]) -> None:
        self._add(port_elements(ports))

    def remove_ports(self, ports: list[PortRule]) -> None:
        """Remove these exact mappings; absent ones (or a key now mapped elsewhere) are
        left alone. Idempotent."""
        self._remove(port_elements(ports))

    def _add(self, elements: Mapping[str, Sequence[str]]) -> None:
        text = render_add(self.table, elements)
        if not text:
            return
        with self._lock:
            try:
                self._nft.run(text)
            except SystemFailure as exc:
                if "File exists" in exc.message or "overlaps" in exc.message:
                    raise Conflict(f"firewall: an element clashes with a present one: {exc.message}") from exc
                raise

    def _remove(self, elements: Mapping[str, Sequence[str]]) -> None:
        text = render_remove(self.table, elements)
        if not text:
            return
        with self._lock:
            try:
                self._nft.run(text)
                return
            except SystemFailure:
                if not self.present():
                    return  # no table: nothing to remove
            # A clash (a key with other data, an overlapping interval): read, then delete
            # exactly the elements that are present.
            present: dict[str, list[str]] = {}
            for name, items in elements.items():
                if items:
                    existing = self._elements(name)
                    present[name] = [e for e in items if e in existing]
            text = render_delete(self.table, present)
            if text:
                self._nft.run(text)

    def delete(self) -> None:
        """Drop the whole table (tests, uninstall); idempotent. Stops the healer first."""
        self.stop_healer()
        with self._lock:
            # add-then-delete: succeeds whether or not the table exists
            self._nft.run(f"add table ip {self.table}\ndelete table ip {self.table}\n")

    # -- healing --------------------------------------------------------------------

    def start_healer(self, desired: DesiredState, interval: float = 0.2) -> None:
        """Rebuild the table from ``desired()`` (called in the healer thread; keep it
        quick and free of locks the caller holds while calling this Firewall) whenever the
        table or one of its chains is gone. Repairs land within ``interval`` plus one sync."""
        self.stop_healer()
        self._stop = threading.Event()
        self._healer = threading.Thread(
            target=self._heal_loop, args=(desired, interval, self._stop),
            name=f"tether-firewall-healer-{self.table}", daemon=True,
        )
        self._healer.start()

    def stop_healer(self) -> None:
        thread, self._healer = self._healer, None
        if thread is not None:
            self._stop.set()
            thread.join()

    def _heal_loop(self, desired: DesiredState, interval: float, stop: threading.Event) -> None:
        full_every = max(1, round(_FULL_CHECK_EVERY / interval))
        tick = 0
        while not stop.wait(interval):
            tick += 1
            try:
                broken = not self.present(self._probe_nft) or (
                    tick % full_every == 0 and self._problem(self._probe_nft) is not None
                )
                if not broken:
                    continue
                networks, ports = desired()
                self.sync(networks, ports)
                self.repairs += 1
                log.warning("nftables table %s was damaged; rebuilt it", self.table)
            except Exception:
                log.exception("firewall healer: repair of table %s failed", self.table)

    def close(self) -> None:
        self.stop_healer()
        self._nft.close()
