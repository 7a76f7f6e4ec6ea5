"""The Firewall: tether's nftables tables, created once, then changed element by element.

Design note. The ruleset (``chains.py``) is two tables, ``ip <table>`` and ``ip6
<table>``, with a constant number of rules; networks and published ports are elements of
sets and maps (``rules.py``). Every verb below is ONE transaction covering both tables.
So:

- ``ensure()`` creates what is missing (tables, sets, maps, the ``user`` chains, the base
  chains and their rules) in one transaction. It never deletes a table and never
  touches a ``user`` chain's rules or any set's elements; a base chain whose rule count
  is off is refilled (``flush chain`` + ``add rule`` in the same transaction).
- ``sync()`` is the full desired state: flush every set and map and add all elements, in
  ONE transaction together with ``ensure``'s work if any was needed, so packets never see
  a half-built table and new connections are never refused.
- ``add_*``/``remove_*`` are one small transaction each (~0.03-0.1 ms in-process).
  Removal is idempotent without ``destroy`` (nft 1.0.6 has none): see ``render_remove``.
- The cost of the second table (medians in ms, in-process, measured beside the v4-only
  code in one run; "v4" = the same v4 networks and ports, "dual" = every network and
  port in both families): publishing one v4 port 0.16 before, 0.23 now (libnftables'
  cache reads the ip6 table's sets too: +0.055 ms for the same text), a v4+v6 pair 0.30;
  add_network 0.43 / 0.51 v4 / 0.86 dual; sync of 20 networks and 1000 ports per family
  32 / 40 / 60; install 1.4 / 3.8; ``present()`` 0.09 / 0.14; the full check every 2 s
  0.5 / 1.4; comparing every set with 1000 ports per family (every 30 s) 41 / 44 / 121.

Healing. A healer thread (``start_healer``) puts back what someone else took away, in
both tables: a table, a chain, a base chain's rules -- and the *elements* of tether's sets
and maps (``nft flush map ip6 tether ports_ip`` must not unpublish ports for good). Each repair is one
transaction that adds exactly the missing elements and deletes the stray ones (tether
owns its sets and maps; the ``user`` chain and sets tether did not declare are never
touched), plus ``ensure``'s work when the structure is damaged.

- What to look at: comparing every set costs about 1 ms with no port published, 4 ms with
  100 and 28 ms with 1000 (libnftables' JSON output dominates), plus the desired state
  from the store (about 15 ms with 100 containers, 70 ms with 1000): far too much to poll
  every 0.2 s. So the healer listens to nftables' change notifications (what ``nft
  monitor`` reads; one netlink socket, ``_ChangeWatch``): a transaction by another process
  that touches either of tether's tables names the sets to compare (by key: ``ports``,
  ``ip6 ports``), or asks for a structural check.
  Only those sets are read (0.1 ms for ``bridges``, 12 ms for a map of 1000 ports) and
  fixed at the next tick (``interval``, 0.2 s), and the desired state is asked for only
  when the kernel differs from its last answer. Without notifications (the socket
  refused) every set is compared every 0.6 s instead.
- Cheap checks stay as they were: ``present()`` (one ``list chains``) every tick,
  the full rule-count check every 2 s; and every 30 s every set is compared with a fresh
  desired state (lost notifications, damage done from inside this process, an element the
  store no longer has): 0.3 % of a CPU with 1000 containers.
- Races: the desired state comes from the store, which the controller writes just before
  or just after it calls this Firewall, while the healer reads it without the
  controller's lock. So the Firewall remembers what it last did to each element (a
  journal, 10 s long), and for those elements that wins over the desired state: a port
  just published by a container still ``creating`` is not deleted, a port just unpublished
  by ``rm`` (whose record goes a moment later) is not put back. Elements changed by tether
  after the healer read the kernel are left alone, and a ``sync`` since then cancels the
  repair. Past 10 s the desired state decides: an element tether added but the store no
  longer has is stale and goes.

Published ports on [::1]: kernel NAT cannot carry them to a container (``chains.py``, "IPv6
and ::1"), so with ``loopback_proxy`` the Firewall also owns a user-space relay
(``loopback6.py``) and keeps its listeners equal to the ports it serves: every port whose
container address is IPv6, published on ::1 or on every address. ``add_ports`` binds the
listeners it needs *before* its transaction and closes the ones it opened if nft refuses it,
so a call stays all or nothing (undoing the transaction instead could delete elements that
were there before the call); a port another process holds on ::1 is a ``Conflict`` and the
ruleset is left untouched. ``sync`` replaces every listener, logging (not raising) a port it
cannot bind: reconcile must not fail on one port. The healer leaves the relay alone.

Namespaces: libnftables binds its netlink socket when the context is made, so a Firewall
acts on the network namespace of the thread that constructed it, or on ``netns`` when
given (a bound namespace path): every later call, from any thread (the healer's too),
goes there. All changes are serialised by one lock.

Errors: nftables failures raise ``SystemFailure`` with nft's first error line; an added
element that clashes with a present one (a host port already published to another
target, an overlapping subnet) raises ``Conflict``.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from ..errors import Conflict, SystemFailure
from .chains import CHAINS, FAMILIES, SETS, USER_CHAIN, qualified, split_key
from .libnft import Nft
from .loopback6 import LoopbackRelay, loopback_listeners
from .nftrace import TraceEvent, TraceMatch, run_trace, sweep_traces
from .rules import (
    Elements,
    NetworkRules,
    PortRule,
    desired_elements,
    element_repair,
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

__all__ = ["DesiredState", "Firewall", "Healed", "table_notifications"]

log = logging.getLogger("tether.firewall")

DesiredState = Callable[[], tuple[list[NetworkRules], list[PortRule]]]
# told after each repair: (what was wrong or "", what was put back, what stray went), as text
Healed = Callable[[str, str, str], None]

_FULL_CHECK_EVERY = 2.0  # seconds between the healer's full (rule count) checks
_ELEMENT_CHECK_EVERY = 30.0  # seconds between comparisons of every set with a fresh desired()
_ELEMENT_POLL_EVERY = 0.6  # ... when change notifications are unavailable (restored within 1 s)
_RECENT = 10.0  # seconds during which what tether did to an element beats the desired state


class _Touch(NamedTuple):
    """What tether last did to one element: added (present) or removed it, when, and the
    change counter's value then."""

    present: bool
    seq: int
    at: float


class Firewall:
    """tether's tables ``ip <table>`` and ``ip6 <table>`` in one network namespace."""

    def __init__(self, table: str = "tether", *, netns: str | None = None, loopback_proxy: bool = False) -> None:
        self.table = validate_table(table)
        self._netns = netns
        # the relay serving [::1] (its thread starts with the first listener)
        self._relay = LoopbackRelay(netns) if loopback_proxy else None
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
        self._traces_swept = False  # the first ensure() removes trace tables a killed daemon left
        self._on_heal: Healed | None = None
        self._stop = threading.Event()
        self.repairs = 0  # how many times the healer changed the table (for tests, metrics)
        # The journal: what this Firewall last did to each element, oldest first, kept for
        # _RECENT seconds; _seq counts changes, _synced is its value at the last sync.
        self._journal: dict[tuple[str, str], _Touch] = {}
        self._seq = 0
        self._synced = 0
        # the healer's last answer from desired() and its elements
        self._last_desired: tuple[tuple[tuple[NetworkRules, ...], tuple[PortRule, ...]], Elements] | None = None

    # -- reading --------------------------------------------------------------------

    def _table_state(
        self, nft: Nft | None = None
    ) -> tuple[set[str], dict[str, dict[str, Any]], dict[str, dict[str, Any]], Counter[str]]:
        """(families whose table exists, sets by key, chains by key, rule count by chain key)
        of our two tables."""
        # ``list ruleset ip`` with terse output skips set elements (0.5 ms with 1000 ports);
        # ``list table`` fetches them even when terse (6.5 ms).
        found: set[str] = set()
        sets: dict[str, dict[str, Any]] = {}
        chains: dict[str, dict[str, Any]] = {}
        rules: Counter[str] = Counter()
        for family in FAMILIES:
            for item in (nft or self._nft).run_json(f"list ruleset {family}", terse=True):
                (kind, obj), = item.items()
                if not isinstance(obj, dict) or (obj.get("table", obj.get("name")) != self.table):
                    continue
                if kind == "table":
                    found.add(family)
                elif kind in ("set", "map"):
                    sets[qualified(family, obj["name"])] = obj
                elif kind == "chain":
                    chains[qualified(family, obj["name"])] = obj
                elif kind == "rule":
                    rules[qualified(family, obj["chain"])] += 1
        return found, sets, chains, rules

    def _problem(self, nft: Nft | None = None) -> str | None:
        """Why ``ensure`` must act, or None when both tables are complete."""
        found, sets, chains, rules = self._table_state(nft)
        for family in FAMILIES:
            if family not in found:
                return f"table {family} {self.table} missing"
        for key, spec in SETS.items():
            if key not in sets:
                return f"{spec.kind} {spec.family} {spec.name} missing"
        for family in FAMILIES:
            if qualified(family, USER_CHAIN) not in chains:
                return f"chain {family} {USER_CHAIN} missing"
        for key, chain_spec in CHAINS.items():
            chain = chains.get(key)
            where = "chain {} {}".format(*split_key(key))
            if chain is None:
                return f"{where} missing"
            if (chain.get("type"), chain.get("hook"), chain.get("prio")) != (
                chain_spec.type, chain_spec.hook, chain_spec.priority,
            ):
                return f"{where} has another hook"
            if rules[key] != len(chain_spec.rules):
                return f"{where} has {rules[key]} rules, not {len(chain_spec.rules)}"
        return None

    def present(self, nft: Nft | None = None) -> bool:
        """True if both tables, their ``user`` chains and every base chain exist (cheap:
        one ``list chains``)."""
        if nft is None:
            with self._lock:
                items = self._nft.run_json("list chains", terse=True)
        else:
            items = nft.run_json("list chains", terse=True)
        keys = {
            qualified(obj["family"], obj["name"])
            for item in items
            if (obj := item.get("chain")) and obj.get("table") == self.table and obj.get("family") in FAMILIES
        }
        return keys >= {*(qualified(f, USER_CHAIN) for f in FAMILIES), *CHAINS}

    def rule_count(self) -> int:
        """Rules in both tables, the ``user`` chains' included (constant in the port count)."""
        with self._lock:
            found, _, _, rules = self._table_state()
        return sum(rules.values()) if found else 0

    def _elements(self, key: str, nft: Nft | None = None) -> set[str]:
        spec = SETS[key]
        for item in (nft or self._nft).run_json(f"list {spec.kind} {spec.family} {self.table} {spec.name}"):
            if spec.kind in item:
                return elements_from_json(key, item[spec.kind])
        return set()

    # -- changing -------------------------------------------------------------------

    def ensure(self) -> bool:
        """Create whatever is missing; True if anything had to be created or refilled."""
        with self._lock:
            if not self._traces_swept:
                self._traces_swept = True
                for name in sweep_traces(self._nft, self.table):
                    log.info("removed the trace table %s a killed daemon left", name)
            problem = self._problem()
            if problem is None:
                return False
            log.info("nftables tables %s: %s; installing", self.table, problem)
            self._nft.run(render_install(self.table))
            return True

    def sync(self, networks: list[NetworkRules], ports: list[PortRule]) -> None:
        """Make every set and map hold exactly the desired elements, in one transaction."""
        text = render_sync(self.table, networks, ports)  # validates before touching anything
        with self._lock:
            install = render_install(self.table) if self._problem() is not None else ""
            self._nft.run(install + text)
            self._journal.clear()  # the desired state it was given is the truth now
            self._seq += 1
            self._synced = self._seq
            if self._relay is not None:
                for problem in self._relay.replace(loopback_listeners(ports)):
                    log.warning("IPv6 loopback relay: %s; [::1] is not served there", problem)

    def add_network(self, net: NetworkRules) -> None:
        self._add(network_elements(net))

    def remove_network(self, net: NetworkRules) -> None:
        """Remove everything ``net`` may have added, whatever its flags were; idempotent."""
        self._remove(network_candidates(net))

    def add_ports(self, ports: list[PortRule]) -> None:
        elements = port_elements(ports)  # validates before touching anything
        if self._relay is None:
            self._add(elements)
            return
        relayed = loopback_listeners(ports)
        with self._lock:
            opened = self._relay.add(relayed)  # all or nothing itself
            try:
                self._add(elements)
            except BaseException:
                self._relay.remove({key: relayed[key] for key in opened})
                raise

    def remove_ports(self, ports: list[PortRule]) -> None:
        """Remove these exact mappings; absent ones (or a key now mapped elsewhere) are
        left alone. Idempotent."""
        elements = port_elements(ports)
        with self._lock:
            self._remove(elements)
            if self._relay is not None:
                self._relay.remove(loopback_listeners(ports))

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
            self._record(elements, present=True)

    def _remove(self, elements: Mapping[str, Sequence[str]]) -> None:
        text = render_remove(self.table, elements)
        if not text:
            return
        with self._lock:
            try:
                self._nft.run(text)
            except SystemFailure:
                if self.present():
                    # A clash (a key with other data, an overlapping interval): read, then
                    # delete exactly the elements that are present.
                    present: dict[str, list[str]] = {}
                    for name, items in elements.items():
                        if items:
                            existing = self._elements(name)
                            present[name] = [e for e in items if e in existing]
                    text = render_delete(self.table, present)
                    if text:
                        self._nft.run(text)
                # else: no table, nothing to remove (and the healer must not put them back)
            self._record(elements, present=False)

    def _record(self, elements: Mapping[str, Sequence[str]], present: bool) -> None:
        """Journal a change just made (the caller holds the lock)."""
        self._seq += 1
        now = time.monotonic()
        touch = _Touch(present, self._seq, now)
        for name, items in elements.items():
            for element in items:
                self._journal.pop((name, element), None)  # to the end: oldest first
                self._journal[(name, element)] = touch
        self._forget(now)

    def _forget(self, now: float) -> None:
        """Drop journal entries older than _RECENT (the caller holds the lock)."""
        journal = self._journal
        while journal:
            key = next(iter(journal))
            if now - journal[key].at < _RECENT:
                return
            del journal[key]

    def delete(self) -> None:
        """Drop both tables (tests, uninstall) in one transaction; idempotent. Stops the
        healer first."""
        self.stop_healer()
        with self._lock:
            # add-then-delete: succeeds whether or not a table exists
            self._nft.run("".join(
                f"add table {family} {self.table}\ndelete table {family} {self.table}\n" for family in FAMILIES
            ))
            if self._relay is not None:
                self._relay.replace({})

    # -- healing --------------------------------------------------------------------

    def start_healer(self, desired: DesiredState, interval: float = 0.2, on_heal: Healed | None = None) -> None:
        """Put back whatever someone else removes from the tables, their chains, rules, set and
        map elements, from ``desired()`` (called in the healer thread; keep it quick and free
        of locks the caller holds while calling this Firewall); strays in tether's sets and
        maps go. Repairs land within ``interval`` plus one repair (see the module's note);
        ``on_heal`` is told of each (in the healer thread)."""
        self.stop_healer()
        self._on_heal = on_heal
        try:
            if self._netns is None:
                watch: _ChangeWatch | None = _ChangeWatch(self.table)
            else:
                from ..datapath.nsutil import run_in_netns

                watch = run_in_netns(self._netns, lambda: _ChangeWatch(self.table))
        except OSError as exc:
            log.warning("nftables notifications unavailable (%s): comparing set elements every %.1f s",
                        exc, _ELEMENT_POLL_EVERY)
            watch = None
        self._stop = threading.Event()
        self._healer = threading.Thread(
            target=self._heal_loop, args=(desired, interval, self._stop, watch),
            name=f"tether-firewall-healer-{self.table}", daemon=True,
        )
        self._healer.start()

    def stop_healer(self) -> None:
        thread, self._healer = self._healer, None
        if thread is not None:
            self._stop.set()
            thread.join()

    def _heal_loop(
        self, desired: DesiredState, interval: float, stop: threading.Event, watch: _ChangeWatch | None
    ) -> None:
        full_every = max(1, round(_FULL_CHECK_EVERY / interval))
        ask_every = max(1, round(_ELEMENT_CHECK_EVERY / interval))
        elements_every = ask_every if watch is not None else max(1, round(_ELEMENT_POLL_EVERY / interval))
        tick = 0
        names: set[str] = set()  # sets to compare at the next repair, kept until one succeeds
        structural = ask = False
        try:
            while not stop.wait(interval):
                tick += 1
                try:
                    if watch is not None:
                        changed, other = watch.changes()
                        names |= changed
                        structural |= other
                    if tick % elements_every == 0:
                        names |= set(SETS)
                    if tick % ask_every == 0:  # also what the store no longer has (or now has)
                        names, ask = set(SETS), True
                    if not self.present(self._probe_nft) or (
                        tick % full_every == 0 and self._problem(self._probe_nft) is not None
                    ):
                        structural = True
                    if structural:
                        names = set(SETS)
                    if names:
                        self._heal(desired, names, structural, ask)
                        names, structural, ask = set(), False, False  # (kept if it raised)
                except Exception:
                    log.exception("firewall healer: repair of table %s failed", self.table)
        finally:
            if watch is not None:
                watch.close()

    def _heal(self, desired: DesiredState, names: set[str], structural: bool, ask: bool) -> None:
        """Compare the sets ``names`` with the desired state and fix them -- and the structure
        when ``structural`` -- in one transaction.

        ``desired()`` is called when ``ask`` is set, when there is no earlier answer, or when
        the kernel differs from the earlier answer (it costs ~70 ms with 1000 containers in
        the store): a notification about a change that did no harm is answered from the
        earlier one. The reads go through the healer's own context without the lock (26 ms
        with 1000 ports must not hold up an ``add_ports``); the journal, read under the
        lock, makes up for what tether changed meanwhile."""
        started = time.perf_counter()
        seq = self._seq
        problem = self._problem(self._probe_nft) if structural else None
        have: dict[str, set[str]] = {}
        for name in SETS:
            if name in names:
                try:
                    have[name] = self._elements(name, self._probe_nft)
                except SystemFailure:  # no such set (or table): ensure's work
                    have[name] = set()
                    problem = problem or f"{SETS[name].kind} {name} missing"
        if not ask and not problem and self._last_desired is not None:
            with self._lock:
                plan = self._plan(self._last_desired[1], have, seq)
            if plan is None or (not any(plan[0].values()) and not any(plan[1].values())):
                log.debug("nftables table %s: %s as before (checked in %.1f ms)",
                          self.table, ", ".join(sorted(names)), (time.perf_counter() - started) * 1000)
                return
        want = self._desired_elements(desired)
        with self._lock:
            plan = self._plan(want, have, seq)
            if plan is None:
                return  # a sync since the reads above made every element right
            delete, add = plan
            install = render_install(self.table) if problem else ""
            if not install and not any(delete.values()) and not any(add.values()):
                log.debug("nftables table %s: %s as desired (checked in %.1f ms)",
                          self.table, ", ".join(sorted(names)), (time.perf_counter() - started) * 1000)
                return
            self._apply_repair(install, delete, add)
        self.repairs += 1
        log.warning(
            "nftables table %s was damaged%s; repaired it (restored %s; removed %s)",
            self.table, f" ({problem})" if problem else "", _count(add), _count(delete),
        )
        if self._on_heal is not None:
            self._on_heal(problem or "", _count(add), _count(delete))

    def _desired_elements(self, desired: DesiredState) -> Elements:
        networks, ports = desired()
        state = (tuple(networks), tuple(ports))  # copies: the caller may reuse its lists
        if self._last_desired is None or self._last_desired[0] != state:
            # rendering validates every address: ~20 ms for 1000 ports, comparing ~0.3 ms
            self._last_desired = (state, desired_elements(*state))
        return self._last_desired[1]

    def _plan(self, want: Elements, have: Mapping[str, set[str]], seq: int) -> tuple[Elements, Elements] | None:
        """(to delete, to add), given the kernel's sets as read when the change counter was
        ``seq``; None if a sync came since. The caller holds the lock."""
        if self._synced > seq:
            return None
        self._forget(time.monotonic())
        recent = {key: touch.present for key, touch in self._journal.items()}
        newer = {key for key, touch in self._journal.items() if touch.seq > seq}
        return element_repair(want, have, recent, newer)

    def _apply_repair(self, install: str, delete: Mapping[str, Sequence[str]], add: Mapping[str, Sequence[str]]) -> None:
        """One transaction; if nft refuses it (a stray element it cannot take back as we
        spell it), restore first and then delete the strays one by one (the caller holds
        the lock)."""
        try:
            self._nft.run(install + render_delete(self.table, delete) + render_add(self.table, add))
            return
        except SystemFailure as exc:
            log.warning("firewall healer: %s; restoring first, then removing strays one by one", exc.message)
        text = install + render_add(self.table, add)
        if text:
            self._nft.run(text)
        for name, items in delete.items():
            for element in items:
                try:
                    self._nft.run(render_delete(self.table, {name: [element]}))
                except SystemFailure as exc:
                    log.warning("firewall healer: could not remove %s from %s: %s", element, name, exc.message)

    def trace(self, match: TraceMatch, send: Callable[[], None]) -> list[TraceEvent]:
        return run_trace(self._probe_nft, self._netns, self.table, match, send)

    def close(self) -> None:
        self.stop_healer()
        if self._relay is not None:
            self._relay.close()
        self._nft.close()


def _count(elements: Mapping[str, Sequence[str]]) -> str:
    return ", ".join(f"{len(items)} in {name}" for name, items in elements.items() if items) or "nothing"


# -- change notifications ------------------------------------------------------------------

# linux/netlink.h, linux/netfilter/nfnetlink.h, linux/netfilter/nf_tables.h
_NETLINK_NETFILTER = 12
_SOL_NETLINK = 270
_NETLINK_ADD_MEMBERSHIP = 1
_NFNLGRP_NFTABLES = 7
_NFNL_SUBSYS_NFTABLES = 10
_NFPROTO_FAMILIES = {2: "ip", 10: "ip6"}  # NFPROTO_IPV4, NFPROTO_IPV6
_NFT_MSG_NEWGEN = 15
_NFT_ELEMENT_MSGS = {12, 14, 30}  # NEWSETELEM, DELSETELEM, DESTROYSETELEM
_NFTA_TABLE = 1  # the table's name: attribute 1 in table, chain, rule, set and element messages
_NFTA_SET = 2  # the set's name in set and element messages
_NFTA_GEN_PROC_PID = 2


def _attributes(data: bytes, start: int, end: int) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    while start + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, start)
        if length < 4 or start + length > end:
            break
        attrs[kind & 0x3FFF] = data[start + 4:start + length]
        start += (length + 3) & ~3
    return attrs


def _text(value: bytes) -> str:
    return value.split(b"\0", 1)[0].decode(errors="replace")


def table_notifications(data: bytes, table: str) -> Iterator[tuple[str, str | int | None]]:
    """What one datagram of nftables notifications says about ``ip <table>`` and ``ip6
    <table>``, in order: ``("elements", set key)`` for elements added or deleted (``ports``,
    ``ip6 ports``), ``("other", None)`` for any other change of either table (itself, a
    chain, a rule, a set), and ``("commit", pid)`` at
    the end of every transaction, whatever it touched (the pid of the thread that made it).
    A message cut short counts as ``("other", None)``: it may have been about the table.
    Pure: parses bytes."""
    offset = 0
    while offset + 20 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 20:
            return
        family = data[offset + 16]
        if kind >> 8 == _NFNL_SUBSYS_NFTABLES and offset + length > len(data):
            yield "other", None
            return
        end = offset + length
        if kind >> 8 == _NFNL_SUBSYS_NFTABLES:
            message = kind & 0xFF
            attrs = _attributes(data, offset + 20, end)
            if message == _NFT_MSG_NEWGEN:
                pid = attrs.get(_NFTA_GEN_PROC_PID)
                yield "commit", struct.unpack("!I", pid)[0] if pid and len(pid) == 4 else None
            elif family in _NFPROTO_FAMILIES and _text(attrs.get(_NFTA_TABLE, b"")) == table:
                if message in _NFT_ELEMENT_MSGS:
                    yield "elements", qualified(_NFPROTO_FAMILIES[family], _text(attrs.get(_NFTA_SET, b"")))
                else:
                    yield "other", None
        offset += (length + 3) & ~3


def _ours(pid: int | None) -> bool:
    """Whether a transaction came from this process (any of its threads)."""
    return pid is not None and (pid == os.getpid() or os.path.exists(f"/proc/self/task/{pid}"))


class _ChangeWatch:
    """nftables' change notifications in one network namespace (the one of the thread that
    makes it), reduced to what other processes changed in tether's two tables."""

    def __init__(self, table: str) -> None:
        self._table = table
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                             _NETLINK_NETFILTER)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((0, 0))
            sock.setsockopt(_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, _NFNLGRP_NFTABLES)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        # what the transaction being read touched so far, until its commit message says whose it is
        self._sets: set[str] = set()
        self._other = False

    def changes(self) -> tuple[set[str], bool]:
        """(keys of tether's sets whose elements another process changed, whether it changed
        anything else of the tables) since the last call. Lost notifications count as everything."""
        sets: set[str] = set()
        other = False
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                return sets, other
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self._sets, self._other = set(), False
                sets, other = set(SETS), True  # the queue overflowed: assume the worst
                continue
            for kind, value in table_notifications(data, self._table):
                if kind == "elements":
                    if value in SETS:  # sets tether did not declare are not its business
                        self._sets.add(str(value))
                elif kind == "other":
                    self._other = True
                else:
                    if not _ours(value if isinstance(value, int) else None):
                        sets |= self._sets
                        other |= self._other
                    self._sets, self._other = set(), False

    def close(self) -> None:
        self._sock.close()
