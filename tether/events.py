"""What happens, as a stream: the event bus behind ``tether events`` (Docker's ``docker events``).

The controller owns one ``EventBus`` and emits into it where a thing has happened (after
success: a verb's events are held until its operation commits, so an undone step never
shows); the firewall healer and the overlay agent reach it through a callback they are
given. The bus keeps the last ``capacity`` events in a ring, each with a sequence number
and a timestamp, so a reader that comes late replays what is still kept (``--since``) and
then follows: it waits on a condition for events after the last sequence number it saw.
Emitting costs a lock, an append and a notify, whether or not anyone listens; a reader
that falls more than ``capacity`` events behind loses the oldest (they are gone from the
ring), it never holds the emitters up.

An event, as the API sends it (one JSON object per line)::

    {"seq": 7, "time": 1733400000.123456, "type": "container", "action": "die",
     "actor": {"id": "3f2a9c41b7e0...", "name": "web"}, "attributes": {"exit_code": 0}}

Types and actions (``TYPES``): container create, start, die (``exit_code``), stop,
restart, destroy; endpoint attach, detach (actor ``CONTAINER.NETWORK``); network create,
destroy; port publish, unpublish (``port``: ``[HOST_IP:]HOST_PORT->PORT/PROTO``);
firewall heal; host up, down; reconcile correct (``message``: the correction's line).

Also here, pure and shared by the CLI and the daemon: ``parse_time`` (``--since`` and
``--until``: a duration back from now, a Unix timestamp or an RFC 3339 date) and the
filters (``--filter type=container``; values of one key OR, different keys AND).

No I/O; the only concurrency is ``threading``.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidInput

__all__ = [
    "FILTER_KEYS",
    "TYPES",
    "Event",
    "EventBus",
    "Emit",
    "Filters",
    "matches",
    "parse_filters",
    "parse_time",
]

TYPES = ("container", "endpoint", "network", "port", "firewall", "host", "reconcile")
FILTER_KEYS = ("type", "event", "container", "network")
Filters = dict[str, list[str]]
Attribute = str | int | float | bool
# what a part that must not know the controller is given: emit(type, action, actor, **attributes)
Emit = Callable[..., None]


@dataclass(frozen=True)
class Event:
    seq: int
    time: float  # Unix seconds
    type: str
    action: str
    actor_id: str
    actor_name: str
    attributes: dict[str, Attribute] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "type": self.type,
            "action": self.action,
            "actor": {"id": self.actor_id, "name": self.actor_name},
            "attributes": dict(self.attributes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        actor = data.get("actor") or {}
        return cls(
            int(data["seq"]), float(data["time"]), str(data["type"]), str(data["action"]),
            str(actor.get("id", "")), str(actor.get("name", "")), dict(data.get("attributes") or {}),
        )


def actor_of(actor: object) -> tuple[str, str]:
    """(id, name) of what an event is about: a record with ``id`` and ``name`` (a
    Container, a Network), an (id, name) pair, or a bare name."""
    if isinstance(actor, str):
        return "", actor
    if isinstance(actor, tuple):
        return str(actor[0]), str(actor[1])
    return str(getattr(actor, "id", "")), str(getattr(actor, "name", ""))


class EventBus:
    """The last ``capacity`` events, and a way to wait for the next ones."""

    def __init__(self, capacity: int = 1024, clock: Callable[[], float] = time.time) -> None:
        self._ring: deque[Event] = deque(maxlen=capacity)
        self._cond = threading.Condition()
        self._clock = clock
        self._seq = 0
        self.closed = False

    def emit(self, type: str, action: str, actor: object = "", **attributes: Attribute | None) -> Event:  # noqa: A002
        """Record one event (attributes that are None are left out) and wake the readers."""
        actor_id, actor_name = actor_of(actor)
        attrs = {k: v for k, v in attributes.items() if v is not None}
        with self._cond:
            self._seq += 1
            # never earlier than the one before: readers compare times with --since/--until
            now = max(self._clock(), self._ring[-1].time if self._ring else 0.0)
            event = Event(self._seq, now, type, action, actor_id, actor_name, attrs)
            self._ring.append(event)
            self._cond.notify_all()
        return event

    @property
    def last_seq(self) -> int:
        """The sequence number of the newest event (0 before the first)."""
        with self._cond:
            return self._seq

    def seq_before(self, since: float) -> int:
        """The sequence number to read after so as to get every kept event at or after
        ``since`` (a Unix time)."""
        with self._cond:
            before = self._ring[0].seq - 1 if self._ring else self._seq
            for event in self._ring:
                if event.time >= since:
                    break
                before = event.seq
            return before

    def after(self, seq: int) -> list[Event]:
        """The kept events newer than ``seq``, oldest first."""
        with self._cond:
            return self._after(seq)

    def _after(self, seq: int) -> list[Event]:
        if not self._ring or self._ring[-1].seq <= seq:
            return []
        skip = max(0, seq - self._ring[0].seq + 1)  # sequence numbers in the ring are consecutive
        return [self._ring[i] for i in range(skip, len(self._ring))]

    def wait(self, seq: int, timeout: float | None = None) -> list[Event]:
        """The events newer than ``seq``, waiting up to ``timeout`` seconds for the first
        one; [] on timeout or once the bus is closed."""
        with self._cond:
            self._cond.wait_for(lambda: self.closed or self._seq > seq, timeout)
            return [] if self.closed else self._after(seq)

    def close(self) -> None:
        """Wake every reader for good (the daemon is stopping)."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()


# ---------------------------------------------------------------------- --filter
def parse_filters(items: Iterable[str] | None) -> Filters:
    """``--filter KEY=VALUE`` items (keys: ``FILTER_KEYS``), each checked."""
    filters: Filters = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"invalid filter {item!r}: use --filter KEY=VALUE")
        if key not in FILTER_KEYS:
            raise InvalidInput(f"invalid filter key {key!r}: events filters by {', '.join(FILTER_KEYS)}")
        if not value:
            raise InvalidInput(f"invalid filter {item!r}: give a value after '='")
        if key == "type" and value not in TYPES:
            raise InvalidInput(f"invalid filter {item!r}: the type is one of {', '.join(TYPES)}")
        filters.setdefault(key, []).append(value)
    return filters


def matches(event: Event, filters: Filters) -> bool:
    """Whether ``event`` passes ``filters``: one value of each key given must hold.
    ``container`` and ``network`` take a name or an ID prefix and match the event's actor
    when it is one, else its ``container``/``network`` attributes."""
    def named(kind: str, value: str) -> bool:
        if event.type == kind or (kind == "container" and event.type == "port"):
            return value == event.actor_name or (bool(event.actor_id) and event.actor_id.startswith(value))
        ident = str(event.attributes.get(f"{kind}_id", ""))
        return value == event.attributes.get(kind) or (bool(ident) and ident.startswith(value))

    tests: dict[str, Callable[[str], bool]] = {
        "type": lambda v: v == event.type,
        "event": lambda v: v == event.action,
        "container": lambda v: named("container", v),
        "network": lambda v: named("network", v),
    }
    return all(any(tests[key](v) for v in values) for key, values in filters.items())


# ---------------------------------------------------------------------- --since, --until
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_time(flag: str, text: str, now: float) -> float:
    """``--since``/``--until`` as Docker reads them, into Unix seconds: a duration counts
    back from ``now`` (``10m``, ``1h30m``, ``30s``; ``-30s`` counts forward), a number is
    a Unix timestamp (``1733400000``, ``1733400000.5``), anything else an RFC 3339 date
    (``2026-12-05T10:00:00Z``; without a zone, local time)."""
    value = text.strip()
    seconds = _duration(value)
    if seconds is not None:
        return now - seconds
    try:
        return float(value) if re.fullmatch(r"[0-9]+(\.[0-9]+)?", value) else _rfc3339(value)
    except ValueError:
        raise InvalidInput(
            f"invalid {flag} {text!r}: give a duration (10m, 30s), a Unix timestamp or an RFC 3339 date "
            "(2026-12-05T10:00:00Z)"
        ) from None


def _duration(value: str) -> float | None:
    """Go's duration syntax (what Docker takes), in seconds; None if it is not one."""
    sign = -1.0 if value.startswith("-") else 1.0
    body = value[1:] if value.startswith(("+", "-")) else value
    if not body or not re.fullmatch(f"(?:{_DURATION.pattern})+", body):
        return None
    return sign * sum(float(number) * _UNIT[unit] for number, unit in _DURATION.findall(body))


def _rfc3339(value: str) -> float:
    from datetime import datetime

    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt ][0-9:.]+([Zz]|[+-][0-9]{2}:?[0-9]{2})?)?", value):
        raise ValueError(value)
    return datetime.fromisoformat(value.upper()).timestamp()  # no zone: local time
