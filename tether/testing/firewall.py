"""RecordingFirewall: an in-memory ``tether.firewall.base.Firewall`` for unit tests.

It keeps tether's two tables as what nftables would hold: the element texts of each set
and map, by key (``elements["ports"]`` is the ip table's map, ``elements["ip6 ports"]``
the ip6 table's), rendered by the same pure functions the real firewall uses
(``firewall/rules.py``), so a test compares exactly what would be in the kernel. It
records every verb that changes something and can be told to fail any verb, in the style
of RecordingDatapath.

Like the real one: adding an identical element is a no-op, a map key with other data or
an overlapping interval is a ``Conflict``, removals take exactly the elements present and
succeed when the table is gone, and adding to a missing table is a ``SystemFailure``
(the daemon runs ``ensure`` first, through reconcile).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence

from ..errors import Conflict, SystemFailure
from ..firewall.base import DesiredState, Healed
from ..firewall.nftrace import TraceEvent, TraceMatch
from ..firewall.rules import (
    CHAINS,
    SETS,
    NetworkRules,
    PortRule,
    merge_elements,
    network_candidates,
    network_elements,
    port_elements,
)

__all__ = ["RecordingFirewall"]

_INTERVALS = {key for key, spec in SETS.items() if "interval" in spec.declaration}


class RecordingFirewall:
    """tether's table as sets of element texts. ``calls`` lists, in order, every verb that
    changes something; a verb named in ``fail``, reads included, raises SystemFailure
    before it does anything (a change is still recorded). Tests may read and seed every
    public attribute."""

    def __init__(self) -> None:
        self.installed = False  # both tables, their sets and chains exist
        self.elements: dict[str, set[str]] = {name: set() for name in SETS}
        self.desired: DesiredState | None = None  # given to start_healer, until stop_healer
        self.repairs = 0
        self.calls: list[str] = []
        self.fail: set[str] = set()
        self.trace_events: list[TraceEvent] = []  # what trace() answers
        self.traced: list[TraceMatch] = []  # every match trace() was asked for

    # ------------------------------------------------------------------ bookkeeping

    def _check(self, verb: str) -> None:
        if verb in self.fail:
            raise SystemFailure(f"injected failure in {verb}")

    def _change(self, verb: str) -> None:
        self.calls.append(verb)
        self._check(verb)

    def _add(self, elements: Mapping[str, Sequence[str]]) -> None:
        if not any(elements.values()):
            return
        if not self.installed:
            raise SystemFailure("nft: Error: Could not process rule: No such file or directory")
        for name, items in elements.items():
            for item in items:
                clash = next((e for e in self.elements[name] if e != item and _clashes(name, e, item)), None)
                if clash is not None:
                    raise Conflict(f"firewall: an element clashes with a present one: {item} vs {clash} in {name}")
        for name, items in elements.items():
            self.elements[name].update(items)

    def _remove(self, elements: Mapping[str, Sequence[str]]) -> None:
        if not self.installed:
            return  # no table: nothing to remove
        for name, items in elements.items():
            self.elements[name].difference_update(items)

    # ------------------------------------------------------------------ the protocol

    def present(self) -> bool:
        self._check("present")
        return self.installed

    def rule_count(self) -> int:
        self._check("rule_count")
        return sum(len(spec.rules) for spec in CHAINS.values()) if self.installed else 0

    def ensure(self) -> bool:
        self._change("ensure")
        created, self.installed = not self.installed, True
        return created

    def sync(self, networks: list[NetworkRules], ports: list[PortRule]) -> None:
        self._change("sync")
        wanted = merge_elements([*(network_elements(n) for n in networks), port_elements(ports)])
        self.installed = True
        self.elements = {name: set(items) for name, items in wanted.items()}

    def add_network(self, net: NetworkRules) -> None:
        self._change("add_network")
        self._add(network_elements(net))

    def remove_network(self, net: NetworkRules) -> None:
        self._change("remove_network")
        self._remove(network_candidates(net))

    def add_ports(self, ports: list[PortRule]) -> None:
        self._change("add_ports")
        self._add(port_elements(ports))

    def remove_ports(self, ports: list[PortRule]) -> None:
        self._change("remove_ports")
        self._remove(port_elements(ports))

    def delete(self) -> None:
        self._change("delete")
        self.desired = None
        self.installed = False
        self.elements = {name: set() for name in SETS}

    def start_healer(self, desired: DesiredState, interval: float = 0.2, on_heal: Healed | None = None) -> None:
        self._change("start_healer")
        self.desired = desired

    def stop_healer(self) -> None:
        self._change("stop_healer")
        self.desired = None

    def close(self) -> None:
        self._change("close")
        self.desired = None

    def trace(self, match: TraceMatch, send: Callable[[], None]) -> list[TraceEvent]:
        """Sends the probe, and answers ``trace_events`` (seed it; empty: nothing seen)."""
        self._check("trace")
        self.traced.append(match)
        send()
        return list(self.trace_events)


def _clashes(name: str, present: str, new: str) -> bool:
    """Whether nft refuses ``new`` next to ``present`` (two different texts) in set ``name``."""
    if SETS[name].kind == "map":
        return present.split(" : ")[0] == new.split(" : ")[0]  # one key, another target
    if name not in _INTERVALS:
        return False
    *key_a, net_a = present.split(" . ")
    *key_b, net_b = new.split(" . ")
    return key_a == key_b and ipaddress.ip_network(net_a).overlaps(ipaddress.ip_network(net_b))
