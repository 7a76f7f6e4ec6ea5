"""What ``tether trace`` reports, as values: the destination asked for, each hop checked,
and the verdict. No I/O.

A ``Step`` is one hop of the path with a status: ``ok`` (✓, what tether expects is what
the kernel holds), ``fail`` (✗, broken here: ``why`` and the ``fix`` command) or ``info``
(•, worth knowing, decides nothing). ``how`` says where the answer came from: ``kernel``
(read from netlink or /proc), ``model`` (tether's records and its own rules evaluated),
``probe`` (one real packet, traced by nftables) or ``cluster`` (the cluster store). The
verdict is the first ``fail``, or reachable when there is none.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import InvalidInput

__all__ = ["MARKS", "Step", "Target", "Trace", "parse_target"]

MARKS = {"ok": "✓", "fail": "✗", "info": "•"}
_PORT = re.compile(r"^(?P<port>\d{1,5})(?:/(?P<protocol>[A-Za-z]+))?$")


@dataclass(frozen=True)
class Step:
    hop: str  # what was checked: "source", "interface", "route", "bridge port", "firewall" ...
    status: str  # ok | fail | info
    detail: str  # one line: what was found
    how: str = "model"  # kernel | model | probe | cluster
    fix: str | None = None  # for a fail: the command (or the action) that fixes it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Target:
    """A destination as typed: ``kind`` container (``name``, optionally on ``network``), ip
    (``address``) or host; with a ``port`` and its ``protocol`` (tcp unless /udp)."""

    kind: str
    name: str | None = None
    network: str | None = None
    address: str | None = None
    port: int | None = None
    protocol: str = "tcp"

    def __str__(self) -> str:
        where = {"host": "host", "ip": self.address or ""}.get(self.kind)
        if where is None:
            where = f"{self.name}.{self.network}" if self.network else str(self.name)
        if ":" in where:
            where = f"[{where}]"
        return f"{where}:{self.port}/{self.protocol}" if self.port else where


def parse_target(text: str, port: int | None = None, protocol: str | None = None) -> Target:
    """``DST[:PORT[/tcp|udp]]`` with DST a container, ``NAME.NETWORK``, an IP (IPv6 in
    brackets when a port follows) or ``host``; InvalidInput for bad syntax. Whether
    ``NAME.NETWORK`` is a name with a dot or a name on a network is decided later, by what
    exists. ``port``/``protocol`` (from the API body) take the place of a suffix."""
    text = (text or "").strip()
    if not text:
        raise InvalidInput("no destination: give a container, NAME.NETWORK, an IP or host, as in web:80/tcp")
    suffix = None
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise InvalidInput(f"invalid destination {text!r}: write an IPv6 address as [fd00::2]:80")
        text, suffix = inner, rest[1:] if rest else None
    elif text.count(":") == 1:
        text, suffix = text.split(":")
    if suffix is not None:
        port, protocol = _port(suffix, text)
    protocol = (protocol or "tcp").lower()
    if protocol not in ("tcp", "udp"):
        raise InvalidInput(f"invalid protocol {protocol!r}: use tcp or udp, as in web:53/udp")
    if port is not None and not 1 <= port <= 65535:
        raise InvalidInput(f"invalid port {port}: ports are 1 to 65535")
    if text == "host":
        return Target("host", port=port, protocol=protocol)
    try:
        return Target("ip", address=str(ipaddress.ip_address(text)), port=port, protocol=protocol)
    except ValueError:
        pass
    if ":" in text or not text:
        raise InvalidInput(f"invalid destination {text!r}: give a container, NAME.NETWORK, an IP or host")
    name, dot, network = text.rpartition(".")
    if dot and name and network:
        return Target("container", name=name, network=network, port=port, protocol=protocol)
    return Target("container", name=text, port=port, protocol=protocol)


def _port(text: str, dst: str) -> tuple[int, str | None]:
    m = _PORT.match(text)
    if m is None:
        raise InvalidInput(f"invalid port {text!r} in {dst}:{text}: use PORT or PORT/tcp or PORT/udp, as in web:80/tcp")
    return int(m["port"]), m["protocol"]


@dataclass
class Trace:
    """The hops from ``source`` to ``destination``, in path order."""

    source: str
    destination: str
    steps: list[Step] = field(default_factory=list)

    def add(self, step: Step) -> Step:
        self.steps.append(step)
        return step

    @property
    def broken(self) -> Step | None:
        return next((s for s in self.steps if s.status == "fail"), None)

    @property
    def reachable(self) -> bool:
        return self.broken is None

    def to_dict(self) -> dict[str, Any]:
        broken = self.broken
        return {
            "source": self.source,
            "destination": self.destination,
            "reachable": broken is None,
            "steps": [s.to_dict() for s in self.steps],
            "verdict": (
                {"reachable": True, "hop": None, "why": None, "fix": None}
                if broken is None
                else {"reachable": False, "hop": broken.hop, "why": broken.detail, "fix": broken.fix}
            ),
        }
