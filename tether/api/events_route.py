"""``GET /events``: the controller's event bus (``tether/events.py``) as a stream.

Query: ``since`` and ``until`` (Unix seconds; the CLI turns ``10m`` or a date into them),
``filter`` (``KEY=VALUE``, repeatable: ``type``, ``event``, ``container``, ``network``).
Without ``since`` only events after the request are sent; with it, the kept events at or
after it first. The reply is ``application/x-ndjson``: one event per line, as
``Event.to_dict`` gives it, while the connection stays open; it ends when ``until`` has
passed, when the daemon stops (the bus closes) or when the client goes away (checked
once a second even when nothing happens; a client that stops reading is dropped by the
send timeout). A bad query is refused with the usual one-line error before the stream
starts. Each stream runs in a thread of its own (``listener.Streaming``), at most
``MAX_STREAMS`` at a time.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from typing import Any

from ..controller import Controller
from ..errors import Conflict, InvalidInput
from ..events import EventBus, Filters, matches, parse_filters
from .listener import Streaming
from .schema import Empty
from .server import Query, route

__all__ = ["MAX_STREAMS", "EventStream"]

MAX_STREAMS = 64
_CHECK_EVERY = 1.0  # seconds between looks at a quiet stream's client
_active = 0
_active_lock = threading.Lock()


class EventStream(Streaming):
    """One reader of the bus: replay from ``after`` (a sequence number), then follow."""

    def __init__(self, bus: EventBus, after: int, until: float | None, filters: Filters) -> None:
        self.bus = bus
        self.after = after
        self.until = until
        self.filters = filters
        self._holding = True  # one of the MAX_STREAMS slots, taken by the route

    def run(self, sock: socket.socket) -> None:
        try:
            self._follow(sock)
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Give back the slot the route took for this stream (once)."""
        global _active
        with _active_lock:
            if self._holding:
                self._holding = False
                _active -= 1

    def _follow(self, sock: socket.socket) -> None:
        after, looked = self.after, time.monotonic()
        while True:
            wait = _CHECK_EVERY if self.until is None else min(_CHECK_EVERY, self.until - time.time())
            events = self.bus.wait(after, max(0.0, wait))
            lines = []
            for event in events:
                if self.until is not None and event.time > self.until:
                    break
                after = event.seq
                if matches(event, self.filters):
                    lines.append(json.dumps(event.to_dict(), separators=(",", ":")) + "\n")
            if lines:
                sock.sendall("".join(lines).encode())
            if self.bus.closed or (self.until is not None and time.time() >= self.until):
                return
            # a client that went away is noticed by a send, or, while nothing is sent (a
            # quiet bus, or a busy one whose events the filters drop), by a look each second
            if lines or time.monotonic() - looked < _CHECK_EVERY:
                continue
            looked = time.monotonic()
            if _client_gone(sock):
                return


def _client_gone(sock: socket.socket) -> bool:
    """Whether the client closed its end (it sends nothing while it reads the stream).
    (A socket with a timeout waits in ``recv`` whatever the flags: ask ``select`` first.)"""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _seconds(query: Query, name: str) -> float | None:
    text = query.get(name, [None])[0]
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < 1e11:  # (also refuses nan and inf)
        raise InvalidInput(f"invalid {name}={text!r}: give Unix seconds, such as 1733400000.5")
    return value


@route("GET", "/events")
def events_stream(c: Controller, p: dict[str, str], body: Empty, q: Query) -> Any:
    since, until = _seconds(q, "since"), _seconds(q, "until")
    filters = parse_filters(q.get("filter"))
    global _active
    after = c.events.last_seq if since is None else c.events.seq_before(since)
    with _active_lock:  # the slot is taken here, under the lock: a burst cannot pass the cap
        if _active >= MAX_STREAMS:
            raise Conflict(f"{MAX_STREAMS} event streams are open already: close one and try again")
        _active += 1
    return EventStream(c.events, after, until, filters)
