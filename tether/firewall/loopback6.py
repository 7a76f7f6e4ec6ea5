"""The IPv6 loopback relay: a user-space proxy for the published ports kernel NAT cannot serve.

It owns, for every published port whose container address is IPv6 and whose host address
is ``::1`` or every address (``-p [::1]:9090:80``; ``-p 8080:80`` on a dual-stack network),
a listening socket on [::1]:PORT and the connections relayed from it to the container, all
served by one selector thread. ``Firewall(loopback_proxy=True)`` keeps the listeners equal
to those ports; nothing here speaks nftables.

Why (measured, ``chains.py`` "IPv6 and ::1"): DNAT of ::1 to a container delivers the SYN,
but the reply, un-NAT'ed to ``daddr ::1`` on a bridge, is dropped (v6 has no
``route_localnet``; br_netfilter hands it up again and ip6_rcv refuses ::1 off ``lo``). So
the ip6 output chain leaves ::1 alone and this relay answers there, as Docker's userland
proxy does; the container sees the bridge's gateway address as the client.

Relaying: non-blocking, level-triggered. TCP: two buffers of at most ``BUFFER`` bytes; a
side is read only while the buffer towards the other has room and watched for writing only
while its own holds data (back-pressure, no busy loop); EOF from one side becomes
``shutdown(SHUT_WR)`` on the other once flushed (half-close); the pair closes when both ways
are done, with a reset on any error. UDP: one connected upstream socket per client address,
replies sent from the listening socket, sessions idle ``udp_idle`` s closed, a datagram that
cannot be sent at once dropped. Closing a listener closes its connections.

Threads: the thread starts with the first listener and owns every socket; each change runs
on it (``_call``) while the caller waits, so a port just removed can be bound again. With
``netns`` the thread enters that namespace first. Only TCP listeners get ``SO_REUSEADDR``
(past TIME_WAIT): on UDP it would let the relay share a port another process holds.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple, TypeVar

from ..datapath.nsutil import move_high, setns
from ..errors import Conflict, SystemFailure
from .rules import PortRule

__all__ = ["BUFFER", "ListenerKey", "LoopbackRelay", "Target", "loopback_listeners"]

log = logging.getLogger("tether.firewall.loopback6")

T = TypeVar("T")
Target = tuple[str, int]  # (container's IPv6 address, container port)

BUFFER = 256 * 1024  # bytes waiting to be written to one side of a TCP connection, at most
_CHUNK = 64 * 1024  # one recv
_BATCH = 64  # accepts or datagrams handled per readiness event (other sockets get a turn)
_MAX_SESSIONS = 4096  # UDP clients per listener; the least recently heard from goes first
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_LOOPBACK = ipaddress.IPv6Address("::1")
_ANY = ipaddress.IPv6Address("::")


class ListenerKey(NamedTuple):
    """One listener: a protocol and a port on [::1]."""

    protocol: str
    port: int

    def __str__(self) -> str:
        return f"host port {self.protocol}/{self.port} on [::1]"


def loopback_listeners(ports: Iterable[PortRule]) -> dict[ListenerKey, Target]:
    """The [::1] listeners ``ports`` need: those with an IPv6 container address, published
    on ::1 or on every address. A port published on ::1 wins over one on every address for
    the same host port, as the kernel's ``ports_ip`` map comes before ``ports``. Pure."""
    out: dict[ListenerKey, Target] = {}
    specific: set[ListenerKey] = set()
    for rule in ports:
        if ipaddress.ip_address(rule.container_ip).version != 6:
            continue
        host = _ANY if rule.host_ip is None else ipaddress.ip_address(rule.host_ip)
        if host not in (_ANY, _LOOPBACK):
            continue
        key = ListenerKey(rule.protocol, rule.host_port)
        if host == _LOOPBACK:
            specific.add(key)
            out[key] = (rule.container_ip, rule.container_port)
        elif key not in specific:
            out[key] = (rule.container_ip, rule.container_port)
    return out


@dataclass(slots=True, eq=False)
class _Side:
    """One socket of a relayed TCP connection and the bytes waiting to be written to it."""

    sock: socket.socket
    pending: bytearray = field(default_factory=bytearray)
    eof: bool = False  # it sent FIN: nothing more to read from it
    shut: bool = False  # it was sent FIN, after everything pending
    mask: int = 0  # events registered with the selector (0: not registered)


@dataclass(slots=True, eq=False)
class _UdpSession:
    sock: socket.socket
    client: Any  # its address
    last: float  # when it was last heard from, or answered


@dataclass(eq=False)
class _Listener:
    key: ListenerKey
    target: Target
    sock: socket.socket
    pairs: set[_TcpPair] = field(default_factory=set)
    sessions: dict[Any, _UdpSession] = field(default_factory=dict)  # by client, least recently heard first
    paused: bool = False  # not accepting for a moment: out of descriptors


class _TcpPair:
    """A relayed TCP connection: the client's socket and the one to the container."""

    def __init__(self, selector: selectors.BaseSelector, listener: _Listener,
                 client: socket.socket, upstream: socket.socket) -> None:
        self.selector, self.listener = selector, listener
        self.client, self.upstream = _Side(client), _Side(upstream)
        self.connecting = True
        self.closed = False
        listener.pairs.add(self)
        self.update()

    def on_event(self, side: _Side, mask: int) -> None:
        if self.closed:
            return
        try:
            if side is self.upstream and self.connecting:
                error = side.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise OSError(error, os.strerror(error))
                self.connecting = False
            else:
                if mask & _READ and not side.eof:
                    self._read(side, self.upstream if side is self.client else self.client)
                if mask & _WRITE and side.pending:
                    self._write(side)
            self._half_close()
        except OSError:
            self.close(reset=True)
            return
        if self.client.shut and self.upstream.shut:  # both ways done
            self.close()
        else:
            self.update()

    @staticmethod
    def _read(side: _Side, other: _Side) -> None:
        room = min(_CHUNK, BUFFER - len(other.pending))
        if room <= 0:
            return
        try:
            data = side.sock.recv(room)
        except (BlockingIOError, InterruptedError):
            return
        if data:
            other.pending += data
        else:
            side.eof = True

    @staticmethod
    def _write(side: _Side) -> None:
        try:
            sent = side.sock.send(side.pending)
        except (BlockingIOError, InterruptedError):
            return
        del side.pending[:sent]

    def _half_close(self) -> None:
        for source, sink in ((self.client, self.upstream), (self.upstream, self.client)):
            if source.eof and not sink.pending and not sink.shut and not (sink is self.upstream and self.connecting):
                sink.sock.shutdown(socket.SHUT_WR)
                sink.shut = True

    def _interest(self, side: _Side) -> int:
        if side is self.upstream and self.connecting:
            return _WRITE
        other = self.upstream if side is self.client else self.client
        mask = _READ if not side.eof and len(other.pending) < BUFFER else 0
        return mask | (_WRITE if side.pending else 0)

    def update(self) -> None:
        for side in (self.client, self.upstream):
            mask = self._interest(side)
            if mask == side.mask:
                continue
            if side.mask == 0:
                self.selector.register(side.sock, mask, partial(self.on_event, side))
            elif mask == 0:
                self.selector.unregister(side.sock)
            else:
                self.selector.modify(side.sock, mask, partial(self.on_event, side))
            side.mask = mask

    def close(self, reset: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self.listener.pairs.discard(self)
        for side in (self.client, self.upstream):
            if side.mask:
                self.selector.unregister(side.sock)
            if reset:
                _reset(side.sock)
            side.sock.close()


def _enter(netns: str) -> None:
    """Move the calling thread (the relay's own) into the network namespace ``netns``."""
    fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd)
    finally:
        os.close(fd)


def _guarded(handler: Callable[[Any], None], arg: Any) -> None:
    """Run one handler on the relay's thread: a bug with one socket must not stop the others."""
    try:
        handler(arg)
    except Exception:
        log.exception("IPv6 loopback relay: unexpected error")


def _reset(sock: socket.socket) -> None:
    """Make ``close`` send a reset, so the peer sees a failure rather than a clean end."""
    with suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class LoopbackRelay:
    """Listeners on [::1] relaying to containers' IPv6 addresses, one thread for all."""

    def __init__(self, netns: str | None = None, *, udp_idle: float = 30.0) -> None:
        self._netns, self._udp_idle = netns, udp_idle
        self._tick = min(1.0, udp_idle / 4)
        self._listeners: dict[ListenerKey, _Listener] = {}  # the relay's thread only
        self._lock = threading.Lock()  # the thread's start and stop, and the queue of calls
        self._calls: list[tuple[Callable[[], Any], Future[Any]]] = []
        self._thread: threading.Thread | None = None
        self._closed = False
        self._running = True
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        for sock in (self._wake_r, self._wake_w):
            sock.setblocking(False)
        self._selector.register(self._wake_r, _READ, self._on_wake)

    # -- the caller's side ----------------------------------------------------------------

    def listening(self) -> dict[ListenerKey, Target]:
        """Every listener and its target."""
        if self._thread is None:
            return {}
        return self._call(lambda: {key: lst.target for key, lst in self._listeners.items()})

    def add(self, wanted: Mapping[ListenerKey, Target]) -> list[ListenerKey]:
        """Listen for every key of ``wanted`` not listening yet, and return those keys. All or
        nothing: a key listening for another target, or a port another process holds, is a
        Conflict naming the port; any failure closes what this call opened."""
        return self._call(lambda: self._add(wanted)) if wanted else []

    def remove(self, listeners: Mapping[ListenerKey, Target]) -> None:
        """Close each listener that relays to exactly this target, and its connections."""
        if listeners and self._thread is not None:
            self._call(lambda: self._remove(listeners))

    def replace(self, wanted: Mapping[ListenerKey, Target]) -> list[str]:
        """Make the listeners exactly ``wanted``: close the others, then open the missing
        ones; a listener that cannot be opened is skipped and named in the result."""
        if not wanted and self._thread is None:
            return []
        return self._call(lambda: self._replace(wanted))

    def close(self) -> None:
        """Close every listener and connection and stop the thread; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            done = self._enqueue(self._shutdown) if thread is not None else None
        if thread is not None and done is not None:
            done.result()
            thread.join()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _call(self, fn: Callable[[], T]) -> T:
        with self._lock:
            if self._closed:
                raise SystemFailure("the IPv6 loopback relay is closed")
            if self._thread is None:
                self._start()
            done: Future[T] = self._enqueue(fn)
        return done.result()

    def _enqueue(self, fn: Callable[[], T]) -> Future[T]:
        done: Future[T] = Future()
        self._calls.append((fn, done))
        with suppress(BlockingIOError):  # full: a wake-up is pending anyway
            self._wake_w.send(b"\0")
        return done

    def _start(self) -> None:
        ready: Future[None] = Future()
        thread = threading.Thread(target=self._run, args=(ready,), name="tether-loopback6", daemon=True)
        thread.start()
        ready.result()  # raises if the namespace could not be entered (the thread has ended)
        self._thread = thread

    # -- the relay's thread ---------------------------------------------------------------

    def _run(self, ready: Future[None]) -> None:
        try:
            if self._netns is not None:
                _enter(self._netns)
        except OSError as exc:
            ready.set_exception(SystemFailure(f"IPv6 loopback relay: cannot enter {self._netns}: {exc}"))
            return
        ready.set_result(None)
        next_tick = time.monotonic() + self._tick
        while self._running:
            for key, mask in self._selector.select(max(0.0, next_tick - time.monotonic())):
                if key.fileobj.fileno() >= 0:  # type: ignore[union-attr]  # else closed by an earlier handler
                    _guarded(key.data, mask)
            if time.monotonic() >= next_tick:
                _guarded(self._sweep, time.monotonic())
                next_tick = time.monotonic() + self._tick

    def _on_wake(self, mask: int) -> None:
        with suppress(BlockingIOError):
            self._wake_r.recv(4096)
        with self._lock:
            calls, self._calls = self._calls, []
        for fn, done in calls:
            try:
                done.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - raised in the caller
                done.set_exception(exc)

    def _shutdown(self) -> None:
        for listener in list(self._listeners.values()):
            self._close_listener(listener)
        self._running = False

    def _add(self, wanted: Mapping[ListenerKey, Target]) -> list[ListenerKey]:
        for key, target in wanted.items():
            present = self._listeners.get(key)
            if present is not None and present.target != target:
                raise Conflict(f"{key} is already relayed to [{present.target[0]}]:{present.target[1]}")
        opened: list[ListenerKey] = []
        try:
            for key, target in wanted.items():
                if key not in self._listeners:
                    self._open_listener(key, target)
                    opened.append(key)
        except BaseException:
            for key in opened:
                self._close_listener(self._listeners[key])
            raise
        return opened

    def _remove(self, listeners: Mapping[ListenerKey, Target]) -> None:
        for key, target in listeners.items():
            present = self._listeners.get(key)
            if present is not None and present.target == target:
                self._close_listener(present)

    def _replace(self, wanted: Mapping[ListenerKey, Target]) -> list[str]:
        for key, listener in list(self._listeners.items()):
            if wanted.get(key) != listener.target:
                self._close_listener(listener)
        problems: list[str] = []
        for key, target in wanted.items():
            if key not in self._listeners:
                try:
                    self._open_listener(key, target)
                except (Conflict, SystemFailure) as exc:
                    problems.append(exc.message)
        return problems

    def _socket(self, kind: int) -> socket.socket:
        sock = move_high(socket.socket(socket.AF_INET6, kind))  # libnftables select()s: keep fds < 1024 free
        sock.setblocking(False)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _open_listener(self, key: ListenerKey, target: Target) -> None:
        tcp = key.protocol == "tcp"
        sock = self._socket(socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if tcp:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("::1", key.port))
            if tcp:
                sock.listen(socket.SOMAXCONN)
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise Conflict(f"{key} is held by another process: pick another host port") from exc
            raise SystemFailure(f"cannot listen on {key}: {exc.strerror}") from exc
        listener = _Listener(key, target, sock)
        on_ready = self._on_accept if tcp else self._on_datagram
        self._selector.register(sock, _READ, partial(on_ready, listener))
        self._listeners[key] = listener

    def _close_listener(self, listener: _Listener) -> None:
        del self._listeners[listener.key]
        if not listener.paused:
            self._selector.unregister(listener.sock)
        listener.sock.close()
        for pair in list(listener.pairs):
            pair.close()
        for client in list(listener.sessions):
            self._close_session(listener, client)

    def _on_accept(self, listener: _Listener, mask: int) -> None:
        for _ in range(_BATCH):
            try:
                client, _ = listener.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:  # out of descriptors or memory: wait for the next tick
                log.warning("IPv6 loopback relay: %s: cannot accept: %s", listener.key, exc.strerror)
                self._selector.unregister(listener.sock)
                listener.paused = True
                return
            self._connect(listener, client)

    def _connect(self, listener: _Listener, accepted: socket.socket) -> None:
        client = move_high(accepted)
        client.setblocking(False)
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            upstream = self._socket(socket.SOCK_STREAM)
        except OSError:
            client.close()
            return
        if upstream.connect_ex(listener.target) in (0, errno.EINPROGRESS):
            _TcpPair(self._selector, listener, client, upstream)
            return
        upstream.close()
        _reset(client)
        client.close()

    def _on_datagram(self, listener: _Listener, mask: int) -> None:
        now = time.monotonic()
        for _ in range(_BATCH):
            try:
                data, client = listener.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error about an earlier reply: nothing to do
                continue
            session = listener.sessions.pop(client, None) or self._open_session(listener, client, now)
            if session is None:
                continue
            listener.sessions[client] = session  # to the end: most recently heard from
            session.last = now
            with suppress(OSError):  # full, or refused (ICMP): dropped
                session.sock.send(data)

    def _open_session(self, listener: _Listener, client: Any, now: float) -> _UdpSession | None:
        if len(listener.sessions) >= _MAX_SESSIONS:
            self._close_session(listener, next(iter(listener.sessions)))
        try:
            sock = self._socket(socket.SOCK_DGRAM)
        except OSError:
            return None
        try:
            sock.connect(listener.target)
        except OSError:
            sock.close()
            return None
        session = _UdpSession(sock, client, now)
        self._selector.register(sock, _READ, partial(self._on_reply, listener, session))
        return session

    def _on_reply(self, listener: _Listener, session: _UdpSession, mask: int) -> None:
        for _ in range(_BATCH):
            try:
                data = session.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:  # an ICMP error about an earlier datagram
                continue
            except OSError:
                self._close_session(listener, session.client)
                return
            session.last = time.monotonic()
            with suppress(OSError):  # full: dropped
                listener.sock.sendto(data, session.client)

    def _close_session(self, listener: _Listener, client: Any) -> None:
        session = listener.sessions.pop(client)
        self._selector.unregister(session.sock)
        session.sock.close()

    def _sweep(self, now: float) -> None:
        """Close UDP sessions idle for ``udp_idle``; accept again where descriptors ran out."""
        for listener in self._listeners.values():
            for client, session in list(listener.sessions.items()):
                if now - session.last >= self._udp_idle:
                    self._close_session(listener, client)
            if listener.paused:
                listener.paused = False
                self._selector.register(listener.sock, _READ, partial(self._on_accept, listener))
