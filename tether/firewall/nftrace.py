"""One nftables trace of one probe packet: what every table of this namespace did to it.

``tether trace`` asks the firewall which rule accepts or drops a packet between two
containers. tether's own rules it can evaluate from its model, but not the admin's
``user`` chain or another table (a host firewall, another engine's): for those the kernel
is asked. The Firewall's ``trace`` verb, implemented here:

1. arms a throw-away table ``ip <table>_trace<n>`` (or ``ip6``) whose one chain, on the
   prerouting hook at priority -350 (before tether's guard at -300), sets ``meta nftrace``
   on packets matching the probe exactly (source, destination, protocol, port);
2. runs ``nft monitor trace`` (a child process in the same namespace) and lets the caller
   send its probe (one packet, from a container's namespace);
3. reads every trace event of the marked packets: each table and chain they passed, each
   rule that matched and its verdict, each chain policy applied; then removes the table.

Design note. ``nft monitor`` prints nothing when it has subscribed, so the probe is sent
after a short pause (``_SETTLE``); when no event for the probe arrives the pause was too
short on a loaded machine and the caller is told so (an empty list), rather than
guessing. The trace table has its own name, so tether's healer (which watches ``ip
<table>`` and ``ip6 <table>`` only) never sees it. Packets are marked only in the
namespace the Firewall acts on: on an overlay, what the remote host does is out of sight.

Format of the lines read (nft 1.0.6)::

    trace id 6f517aa6 ip tether forward packet: iif "br0" oif "br0" ... ip saddr A ip daddr B ...
    trace id 6f517aa6 ip tether forward rule jump user (verdict jump user)
    trace id 6f517aa6 ip tether user rule ip daddr B tcp dport 80 drop (verdict drop)
    trace id 6f517aa6 ip tether forward policy accept
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import InvalidInput, SystemFailure
from .libnft import Nft

__all__ = ["TraceEvent", "TraceMatch", "first_drop", "parse_trace", "render_arm", "run_trace", "sweep_traces"]

_SETTLE = 0.3  # seconds for `nft monitor trace` to subscribe before the probe goes
_DRAIN = 0.4  # seconds to wait for the last events after the probe returned
_LINE = re.compile(r"^trace id (?P<id>\S+) (?P<family>\S+) (?P<table>\S+) (?P<chain>\S+) (?P<rest>.*)$")
_RULE = re.compile(r"^rule (?P<rule>.*) \(verdict (?P<verdict>[^)]*)\)$")
_COUNTER = re.compile(r"\s*counter packets \d+ bytes \d+")
_numbers = itertools.count(1)


@dataclass(frozen=True)
class TraceMatch:
    """The probe packet to mark: from ``saddr`` to ``daddr`` (one family), ``protocol`` tcp,
    udp or icmp, and ``port`` its destination port (None for icmp)."""

    saddr: str
    daddr: str
    protocol: str
    port: int | None = None

    @property
    def family(self) -> str:
        return "ip6" if ipaddress.ip_address(self.daddr).version == 6 else "ip"


@dataclass(frozen=True)
class TraceEvent:
    """One step of the marked packet: in ``table`` (``ip tether``), ``chain``, a ``rule``
    that matched (its text) and its ``verdict``, or the chain's policy (``rule`` empty)."""

    table: str
    chain: str
    rule: str
    verdict: str
    handle: int | None = None  # the rule's handle, when it could be found (for a fix command)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def render_arm(table: str, match: TraceMatch) -> str:
    """The nft text that creates the trace table marking ``match``'s packets. Pure."""
    for address in (match.saddr, match.daddr):
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise InvalidInput(f"cannot trace {address!r}: not an IP address") from None
    family = match.family
    what = f"{family} saddr {match.saddr} {family} daddr {match.daddr}"
    if match.protocol in ("tcp", "udp"):
        what += f" meta l4proto {match.protocol} th dport {int(match.port or 0)}"
    elif match.protocol == "icmp":
        what += " meta l4proto icmp" if family == "ip" else " meta l4proto ipv6-icmp"
    else:
        raise InvalidInput(f"cannot trace protocol {match.protocol!r}: use tcp, udp or icmp")
    return (
        f"add table {family} {table}\n"
        f"add chain {family} {table} tag_probe {{ type filter hook prerouting priority -350; policy accept; }}\n"
        f"add rule {family} {table} tag_probe {what} meta nftrace set 1\n"
    )


def parse_trace(text: str, match: TraceMatch, own_table: str) -> list[TraceEvent]:
    """The events of the packets ``match`` describes, in order, from ``nft monitor trace``
    output; the marking table's own events are left out. Pure."""
    family = match.family
    ours: set[str] = set()
    events: list[TraceEvent] = []
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m is None:
            continue
        rest = m["rest"].strip()
        if rest.startswith("packet:"):
            if f"{family} saddr {match.saddr} " in rest + " " and f"{family} daddr {match.daddr} " in rest + " ":
                ours.add(m["id"])
            continue
        if m["id"] not in ours or m["table"] == own_table:
            continue
        table = f"{m['family']} {m['table']}"
        rule = _RULE.match(rest)
        if rule is not None:
            events.append(TraceEvent(table, m["chain"], rule["rule"].strip(), rule["verdict"].strip()))
        elif rest.startswith("policy "):
            events.append(TraceEvent(table, m["chain"], "", rest.split(None, 1)[1].strip()))
    return events


def first_drop(events: list[TraceEvent]) -> TraceEvent | None:
    """The event that ended the packet, if a rule or a policy dropped (or rejected) it."""
    return next((e for e in events if e.verdict.split()[0] in ("drop", "reject")), None)


def _with_handles(events: list[TraceEvent], listing: Callable[[str, str], str]) -> list[TraceEvent]:
    """Events whose dropping rule got its handle from ``listing(table, chain)`` (``nft -a`` text)."""
    out = []
    for event in events:
        handle = None
        if event.rule and event.verdict.startswith(("drop", "reject")):
            for line in listing(event.table, event.chain).splitlines():
                body, _, tail = line.strip().partition(" # handle ")
                if tail.strip().isdigit() and _COUNTER.sub("", body).strip() == _COUNTER.sub("", event.rule).strip():
                    handle = int(tail.strip())
                    break
        out.append(TraceEvent(event.table, event.chain, event.rule, event.verdict, handle))
    return out


def sweep_traces(nft: Nft, base_table: str) -> list[str]:
    """Delete the trace tables a killed daemon left armed (``<base_table>_trace<n>x<m>``, both
    families); a daemon's own name proves them its own. Returns what was deleted."""
    pattern = re.compile(rf"^table (ip6?) ({re.escape(base_table)}_trace\d+x\d+)$")
    stale = [m.groups() for line in nft.run("list tables\n").splitlines() if (m := pattern.match(line.strip()))]
    if stale:
        nft.run("".join(f"delete table {family} {name}\n" for family, name in stale))
    return [f"{family} {name}" for family, name in stale]


def run_trace(nft: Nft, netns: str | None, base_table: str, match: TraceMatch, send: Callable[[], None]) -> list[TraceEvent]:
    """Arm, monitor, ``send()``, collect, disarm (see the module's note). ``nft`` is a context
    in the Firewall's namespace; ``netns`` is that namespace's path (None: this one)."""
    table = f"{base_table}_trace{os.getpid() % 10000}x{next(_numbers)}"[:32]
    argv = ["nft", "monitor", "trace"]
    if netns is not None:
        argv = ["nsenter", f"--net={netns}", "--", *argv]
    nft.run(render_arm(table, match))
    try:
        try:
            monitor = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError as exc:
            raise SystemFailure(f"cannot run nft monitor trace: {exc.strerror or exc}") from exc
        try:
            time.sleep(_SETTLE)
            send()
            time.sleep(_DRAIN)
        finally:
            monitor.send_signal(signal.SIGTERM)
            try:
                output, _ = monitor.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                monitor.kill()
                output, _ = monitor.communicate()
    finally:
        try:
            nft.run(f"delete table {match.family} {table}\n")
        except SystemFailure:
            pass  # already gone: nothing to clean
    events = parse_trace(output, match, table)

    def listing(table_name: str, chain: str) -> str:
        try:
            return nft.run(f"list chain {table_name} {chain}\n", handles=True)
        except SystemFailure:
            return ""

    return _with_handles(events, listing)
