"""The embedded resolver: 127.0.0.11:53 inside every sandbox, served by the daemon.

Design note. Docker answers container names from inside each container at 127.0.0.11;
Podman's aardvark-dns does it from a separate process whose reload stalls lookups for tens
of seconds. Here the daemon serves every sandbox itself, and a name is an entry in a dict:
it resolves on the next query after ``add_record`` returns, and nothing ever restarts.

* Sockets. For each sandbox one UDP and one TCP socket are made *inside* its network
  namespace, bound to 127.0.0.11:53 (``nsutil.open_sockets_in_netns``: a throwaway thread
  that ``setns``-es, binds and ends). A socket stays in the namespace it was made in, so
  one serving thread in the daemon's own namespace reads them all through a selector.
  The address lives on the sandbox's ``lo``, which must be up.
* One thread owns every socket. Only the serving thread reads, writes, registers or
  closes a listening or client socket; other threads hand it work through ``_post`` (a
  queue and a wake-up socketpair). So ``unserve`` can never close a socket under a
  ``recvfrom``, and a fresh ``serve`` right after it finds the port free.
* Names and reverse names live in ``records.py`` (``network -> name -> [IPv4 and IPv6]``,
  each network's subnets, ``sandbox -> [network]``), read per query; it decides what the
  resolver answers itself: A and AAAA of container names and aliases, PTR of container
  addresses, NXDOMAIN for the rest of a tether subnet's reverse names. Answers carry
  TTL 0, so churn never leaves a stale address cached.
* Everything else goes upstream, from the daemon's namespace (whose loopback resolvers
  are therefore usable), to the sandbox's own upstreams if it has some (``docker run
  --dns`` on a user-defined network: the container keeps the embedded resolver, and its
  --dns servers become the resolver's upstreams for it alone), else the daemon's; on a
  small thread pool so a slow upstream never holds up the serving thread: UDP first, then TCP if the answer was truncated and the asker came over
  TCP (a UDP asker gets the truncated answer and retries over TCP itself). Each forward
  goes out under a fresh random ID on a fresh socket, and only a reply with that ID and
  the same question is taken. No usable reply within two seconds: SERVFAIL.
"""

from __future__ import annotations

import functools
import logging
import secrets
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..datapath import nsutil
from ..errors import DatapathError, InvalidInput
from .message import (
    BADVERS,
    NOTIMP,
    REFUSED,
    SERVFAIL,
    TCP_MAX_SIZE,
    MalformedMessage,
    Query,
    Question,
    build_format_error,
    build_response,
    first_question,
    is_response,
    is_truncated,
    message_id,
    parse_query,
    rcode_of,
    truncate,
    with_id,
)
from .records import Records

__all__ = [
    "RESOLVER_ADDRESS",
    "RESOLVER_PORT",
    "Resolver",
    "resolv_conf_text",
    "upstreams_from_resolv_conf",
]

log = logging.getLogger("tether.dns")

RESOLVER_ADDRESS = "127.0.0.11"
RESOLVER_PORT = 53
UPSTREAM_TIMEOUT = 2.0  # from receipt of a query to SERVFAIL
TCP_IDLE_TIMEOUT = 10.0  # an idle client connection is closed after this
_FORWARD_WORKERS = 32
_MAX_FORWARDS = 512  # forwarded queries waiting or running; beyond: SERVFAIL at once
_MAX_TCP_CONNECTIONS = 256  # over all sandboxes; beyond: new ones are closed at once
_MAX_TCP_BACKLOG = 1 << 20  # unread reply bytes before a client connection is dropped
_LOOP_TIMEOUT = 10.0  # for serve/unserve to wait on the serving thread
_UDP_BATCH = 64  # datagrams read per wake-up, so one busy sandbox cannot starve the rest


def resolv_conf_text(
    search_domains: Sequence[str] = (), options: Sequence[str] = (), nameservers: Sequence[str] | None = None
) -> str:
    """The /etc/resolv.conf of a sandbox: served by the resolver (``nameservers`` None), or
    asking ``nameservers`` directly, with ``search`` and ``options`` lines (``--dns-search``,
    ``--dns-option``; a search list of just "." means none, as in Docker).

    With the resolver, ``ndots:0`` (as Docker writes it) sends a bare container name as it
    is, first, unless the options set ndots themselves.
    """
    lines = [f"nameserver {server}" for server in (nameservers if nameservers is not None else [RESOLVER_ADDRESS])]
    domains = [d for d in search_domains if d != "."]
    if domains:
        lines.append("search " + " ".join(domains))
    chosen = list(options)
    if nameservers is None and not any(o.startswith("ndots:") for o in chosen):
        chosen.insert(0, "ndots:0")
    if chosen:
        lines.append("options " + " ".join(chosen))
    return "\n".join(lines) + "\n"


def upstreams_from_resolv_conf(path: str = "/etc/resolv.conf") -> list[str]:
    """The ``nameserver`` entries of a resolv.conf, in order; [] if it cannot be read.

    Loopback ones are kept: forwarding happens in the daemon's own namespace, where a
    local resolver (127.0.0.53, a dnsmasq) answers.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            found.append(fields[1])
    return found


@dataclass(frozen=True)
class _Upstream:
    text: str
    family: int
    sockaddr: tuple[Any, ...]


def _parse_upstream(text: str) -> _Upstream:
    """'1.2.3.4', '1.2.3.4:5353', '::1', '[::1]:5353', 'fe80::1%eth0'."""
    host, port = text, RESOLVER_PORT
    try:
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            if rest:
                if not rest.startswith(":"):
                    raise ValueError(text)
                port = int(rest[1:])
        elif text.count(":") == 1:
            host, port_text = text.split(":")
            port = int(port_text)
        if not 0 < port < 65536:
            raise ValueError(text)
        family, _, _, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST
        )[0]
    except (ValueError, OSError) as exc:
        raise InvalidInput(f"invalid upstream DNS server {text!r}") from exc
    return _Upstream(text=text, family=family, sockaddr=tuple(sockaddr))


def _answers(reply: bytes, ident: int, question: Question) -> bool:
    """True if ``reply`` is the response to our forward ``ident`` of ``question``."""
    try:
        return (
            message_id(reply) == ident
            and is_response(reply)
            and first_question(reply).key() == question.key()
        )
    except MalformedMessage:
        return False


def _exchange_udp(upstream: _Upstream, packet: bytes, question: Question, deadline: float) -> bytes | None:
    ident = secrets.randbits(16)
    with socket.socket(upstream.family, socket.SOCK_DGRAM) as sock:
        # Connected: the kernel drops datagrams from anyone else, and a closed port
        # surfaces as ConnectionRefusedError at once instead of a timeout.
        sock.connect(upstream.sockaddr)
        sock.send(with_id(packet, ident))
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            try:
                reply = sock.recv(TCP_MAX_SIZE)
            except TimeoutError:
                return None
            if _answers(reply, ident, question):
                return reply
    return None


def _recv_exactly(sock: socket.socket, count: int, deadline: float) -> bytes:
    data = bytearray()
    while len(data) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("upstream too slow")
        sock.settimeout(remaining)
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("upstream closed the connection")
        data += chunk
    return bytes(data)


def _exchange_tcp(upstream: _Upstream, packet: bytes, question: Question, deadline: float) -> bytes | None:
    ident = secrets.randbits(16)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None
    with socket.socket(upstream.family, socket.SOCK_STREAM) as sock:
        sock.settimeout(remaining)
        sock.connect(upstream.sockaddr)
        wire = with_id(packet, ident)
        sock.sendall(len(wire).to_bytes(2, "big") + wire)
        length = int.from_bytes(_recv_exactly(sock, 2, deadline), "big")
        reply = _recv_exactly(sock, length, deadline)
    return reply if _answers(reply, ident, question) else None


class _Listener:
    """The two sockets serving one sandbox, and the client connections they accepted."""

    def __init__(self, sandbox: str, netns_path: str, udp: socket.socket, tcp: socket.socket) -> None:
        self.sandbox = sandbox
        self.netns_path = netns_path
        self.udp = udp
        self.tcp = tcp
        self.connections: set[_Connection] = set()
        self.closed = False


class _Connection:
    """One DNS-over-TCP client: length-prefixed messages in, replies out, in any order."""

    def __init__(self, sock: socket.socket, listener: _Listener) -> None:
        self.sock = sock
        self.listener = listener
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.forwards = 0  # replies still to come from upstream
        self.peer_done = False  # the client shut down its sending side
        self.closed = False
        self.last_active = time.monotonic()
        self.events = 0  # what the selector watches for; 0: not registered
        self.handler: Callable[[int], None] = lambda mask: None


class Resolver:
    """The embedded DNS server of one daemon: names per network, sockets per sandbox.

    Every method may be called from any thread. ``serve`` may come before ``start``: the
    sockets are open (the kernel queues queries) and are read once the resolver starts.
    """

    def __init__(
        self,
        upstreams: list[str] | None = None,
        port: int = RESOLVER_PORT,
        on_serve: Callable[[int, int], None] | None = None,
    ) -> None:
        """``upstreams``: 'IP' or 'IP:PORT' ('[IPv6]:PORT'); None reads /etc/resolv.conf.
        ``port`` 0 lets the kernel pick the listening ports in each namespace; ``on_serve``
        (udp port, tcp port), called from inside that namespace, then points 127.0.0.11:53
        at them."""
        self.port = port
        self.on_serve = on_serve
        texts = upstreams_from_resolv_conf() if upstreams is None else upstreams
        self._upstreams = [_parse_upstream(text) for text in texts]
        # Names: written by the controller's threads, read by the serving thread.
        self._records = Records()
        self._upstreams_lock = threading.Lock()
        self._sandbox_upstreams: dict[str, list[_Upstream]] = {}
        # Lifecycle: start, stop, serve and unserve take turns.
        self._lifecycle_lock = threading.Lock()
        self._listeners: dict[str, _Listener] = {}
        self._thread: threading.Thread | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake_recv: socket.socket | None = None
        self._wake_send: socket.socket | None = None
        self._pool: ThreadPoolExecutor | None = None
        # Work handed to the serving thread; _open says whether it still takes any.
        self._post_lock = threading.Lock()
        self._posted: deque[Callable[[], None]] = deque()
        self._open = False
        # Serving-thread state.
        self._forwards = 0
        self._connections: set[_Connection] = set()
        self._next_sweep = 0.0

    # ---- names ----------------------------------------------------------------------

    def set_records(self, network: str, records: dict[str, list[str]]) -> None:
        """Replace every name of ``network`` at once: name -> addresses (IPv4 and IPv6)."""
        self._records.set_records(network, records)

    def add_record(self, network: str, name: str, address: str) -> None:
        """One more address (either family) under ``name``; A asks get the IPv4 ones,
        AAAA the IPv6 ones, and a PTR of the address gives ``NAME.NETWORK``."""
        self._records.add_record(network, name, address)

    def remove_record(self, network: str, name: str, address: str) -> None:
        """Forget one address of a name; a name or address not there is not an error."""
        self._records.remove_record(network, name, address)

    def set_subnets(self, network: str, subnets: list[str]) -> None:
        """``network``'s subnets (v4 and v6): their reverse names are answered here,
        never forwarded. Forgotten with ``drop_network``; [] forgets them too."""
        self._records.set_subnets(network, subnets)

    def set_networks(self, sandbox: str, networks: list[str]) -> None:
        """The networks whose names ``sandbox`` sees, preferred first; [] forgets it."""
        self._records.set_networks(sandbox, networks)

    def drop_network(self, network: str) -> None:
        """Forget a network's names and subnets, and take it off every sandbox's list."""
        self._records.drop_network(network)

    def set_upstreams(self, sandbox: str, upstreams: Sequence[str] | None) -> None:
        """Where ``sandbox``'s other names go ('IP' or 'IP:PORT' each); None or [] gives it
        the daemon's upstreams again. Forgotten with ``unserve``."""
        parsed = [_parse_upstream(text) for text in upstreams or []]
        with self._upstreams_lock:
            if parsed:
                self._sandbox_upstreams[sandbox] = parsed
            else:
                self._sandbox_upstreams.pop(sandbox, None)

    def upstreams_of(self, sandbox: str) -> list[str]:
        """The upstreams ``sandbox``'s queries go to."""
        return [u.text for u in self._upstreams_for(sandbox)]

    def _upstreams_for(self, sandbox: str) -> list[_Upstream]:
        with self._upstreams_lock:
            return self._sandbox_upstreams.get(sandbox, self._upstreams)

    def resolve(self, sandbox: str, name: str, version: int | None = None) -> list[str]:
        """The addresses ``name`` has for ``sandbox`` (IPv4 then IPv6, or only ``version``
        4 or 6); [] if it is not a local name.

        Case-insensitive, trailing dot ignored. ``NAME`` on the sandbox's networks in their
        order, then ``NAME.NETWORK`` for one of them; each family from the first network
        that has an address of it.
        """
        return self._records.resolve(sandbox, name, version)

    def reverse(self, sandbox: str, address: str) -> str | None:
        """What a PTR query for ``address`` from ``sandbox`` answers (``NAME.NETWORK``),
        or None if the resolver has no name for it."""
        return self._records.reverse(sandbox, address)

    # ---- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start the serving thread (one, for every sandbox); a second call does nothing."""
        with self._lifecycle_lock:
            if self._thread is not None:
                return
            self._selector = selectors.DefaultSelector()
            self._wake_recv, self._wake_send = socket.socketpair()
            self._wake_recv.setblocking(False)
            self._wake_send.setblocking(False)
            self._selector.register(self._wake_recv, selectors.EVENT_READ, self._on_wake)
            for listener in self._listeners.values():
                self._register_listener(listener)
            self._pool = ThreadPoolExecutor(
                max_workers=_FORWARD_WORKERS, thread_name_prefix="tether-dns-upstream"
            )
            self._forwards = 0
            with self._post_lock:
                self._open = True
            self._thread = threading.Thread(target=self._serve_forever, name="tether-dns", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop serving and close every socket; names are kept, ``serve`` again after ``start``."""
        with self._lifecycle_lock:
            thread = self._thread
            if thread is not None:
                with self._post_lock:
                    self._open = False
                self._wake()
                thread.join()
                self._thread = None
            for listener in self._listeners.values():
                self._close_listener(listener)
            self._listeners.clear()
            if self._pool is not None:
                # Forwards still running finish on their own; their replies are dropped.
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
            for sock in (self._wake_recv, self._wake_send):
                if sock is not None:
                    sock.close()
            self._wake_recv = self._wake_send = None
            if self._selector is not None:
                self._selector.close()
                self._selector = None
            self._posted.clear()

    def serve(self, sandbox: str, netns_path: str) -> None:
        """Answer on 127.0.0.11:53, UDP and TCP, inside the namespace at ``netns_path``.

        Idempotent per sandbox; served again under another path, the old sockets close.
        """
        with self._lifecycle_lock:
            old = self._listeners.get(sandbox)
            if old is not None:
                if old.netns_path == netns_path:
                    return
                self._unserve_locked(sandbox)
            address = (RESOLVER_ADDRESS, self.port)
            on_serve = self.on_serve

            def inside(socks: list[socket.socket]) -> None:
                if on_serve is not None:
                    on_serve(socks[0].getsockname()[1], socks[1].getsockname()[1])

            try:
                udp, tcp = nsutil.open_sockets_in_netns(
                    netns_path,
                    [(socket.AF_INET, socket.SOCK_DGRAM, address), (socket.AF_INET, socket.SOCK_STREAM, address)],
                    inside,
                )
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise DatapathError(
                    f"cannot serve DNS on {RESOLVER_ADDRESS}:{self.port} in {netns_path}: {reason}"
                ) from exc
            except Exception as exc:
                raise DatapathError(f"cannot point 127.0.0.11:53 at the resolver in {netns_path}: {exc}") from exc
            udp.setblocking(False)
            tcp.setblocking(False)
            listener = _Listener(sandbox, netns_path, udp, tcp)
            self._listeners[sandbox] = listener
            if self._thread is not None:
                self._in_loop(lambda: self._register_listener(listener))

    def unserve(self, sandbox: str) -> None:
        """Close the sandbox's sockets (and its client connections); idempotent.

        Its networks are kept (``set_networks(sandbox, [])`` forgets them); its own
        upstreams are forgotten.
        """
        with self._lifecycle_lock:
            self._unserve_locked(sandbox)
        self.set_upstreams(sandbox, None)

    def _unserve_locked(self, sandbox: str) -> None:
        listener = self._listeners.pop(sandbox, None)
        if listener is None:
            return
        if self._thread is not None:
            # Closed by the serving thread, and closed when this returns: a serve that
            # follows at once binds the same address.
            self._in_loop(lambda: self._close_listener(listener))
        else:
            self._close_listener(listener)

    # ---- handing work to the serving thread -----------------------------------------

    def _post(self, fn: Callable[[], None]) -> bool:
        """Queue ``fn`` for the serving thread; False (and dropped) once it is stopping."""
        with self._post_lock:
            if not self._open:
                return False
            self._posted.append(fn)
        self._wake()
        return True

    def _wake(self) -> None:
        sock = self._wake_send
        if sock is None:
            return
        try:
            sock.send(b"\0")
        except OSError:
            pass  # full (it will wake anyway) or closing

    def _in_loop(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the serving thread and wait for it (the caller holds the lifecycle lock)."""
        if self._thread is threading.current_thread():
            fn()
            return
        done: Future[None] = Future()

        def call() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                done.set_exception(exc)
            else:
                done.set_result(None)

        if not self._post(call):  # cannot happen under the lifecycle lock; be safe
            fn()
            return
        try:
            done.result(timeout=_LOOP_TIMEOUT)
        except TimeoutError as exc:
            raise DatapathError("the DNS serving thread does not respond") from exc

    # ---- the serving thread ---------------------------------------------------------

    def _serve_forever(self) -> None:
        selector = self._selector
        assert selector is not None
        while True:
            try:
                events = selector.select(timeout=1.0)
            except OSError:
                log.exception("dns: select failed")
                time.sleep(0.1)
                continue
            for key, mask in events:
                try:
                    key.data(mask)
                except Exception:
                    log.exception("dns: handler failed")
            while True:
                with self._post_lock:
                    if not self._posted:
                        if not self._open:
                            return
                        break
                    fn = self._posted.popleft()
                try:
                    fn()
                except Exception:
                    log.exception("dns: posted work failed")
            now = time.monotonic()
            if now >= self._next_sweep:
                self._next_sweep = now + 1.0
                try:
                    self._close_idle_connections(now)
                except Exception:
                    log.exception("dns: closing idle connections failed")

    def _on_wake(self, mask: int) -> None:
        assert self._wake_recv is not None
        try:
            while self._wake_recv.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _register_listener(self, listener: _Listener) -> None:
        assert self._selector is not None
        self._selector.register(listener.udp, selectors.EVENT_READ, lambda mask: self._on_udp(listener))
        self._selector.register(listener.tcp, selectors.EVENT_READ, lambda mask: self._on_accept(listener))

    def _close_listener(self, listener: _Listener) -> None:
        listener.closed = True
        for connection in list(listener.connections):
            self._close_connection(connection)
        for sock in (listener.udp, listener.tcp):
            self._unregister(sock)
            sock.close()

    def _unregister(self, sock: socket.socket) -> None:
        if self._selector is None:
            return
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass  # never registered (served before start), or already gone

    def _on_udp(self, listener: _Listener) -> None:
        for _ in range(_UDP_BATCH):
            try:
                packet, peer = listener.udp.recvfrom(TCP_MAX_SIZE)
            except OSError:
                return  # EAGAIN: drained

            def send(reply: bytes, peer: Any = peer) -> None:
                if listener.closed:
                    return
                try:
                    listener.udp.sendto(reply, peer)
                except OSError:
                    pass  # the asker is gone or its buffer is full: it will ask again

            outcome = self._answer(listener.sandbox, packet, tcp=False)
            if isinstance(outcome, Query):
                self._forward(listener.sandbox, outcome, packet, tcp=False, reply=send)
            elif outcome is not None:
                send(outcome)

    def _on_accept(self, listener: _Listener) -> None:
        while True:
            try:
                sock, _ = listener.tcp.accept()
            except OSError:
                return  # EAGAIN: drained; ECONNABORTED and friends: the client gave up
            if len(self._connections) >= _MAX_TCP_CONNECTIONS:
                sock.close()
                continue
            sock.setblocking(False)
            connection = _Connection(sock, listener)
            connection.handler = functools.partial(self._on_connection, connection)
            listener.connections.add(connection)
            self._connections.add(connection)
            self._settle(connection)

    def _on_connection(self, connection: _Connection, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush(connection)
        if connection.closed or not mask & selectors.EVENT_READ:
            return
        try:
            data = connection.sock.recv(TCP_MAX_SIZE + 2)
        except BlockingIOError:
            return
        except OSError:
            self._close_connection(connection)
            return
        connection.last_active = time.monotonic()
        if not data:
            connection.peer_done = True
            self._settle(connection)
            return
        inbox = connection.inbox
        inbox += data
        while len(inbox) >= 2 and not connection.closed:
            length = int.from_bytes(inbox[:2], "big")
            if len(inbox) < 2 + length:
                break
            packet = bytes(inbox[2 : 2 + length])
            del inbox[: 2 + length]
            outcome = self._answer(connection.listener.sandbox, packet, tcp=True)
            if isinstance(outcome, Query):
                connection.forwards += 1

                def forwarded(reply: bytes, c: _Connection = connection) -> None:
                    c.forwards -= 1
                    self._send_tcp(c, reply)

                self._forward(connection.listener.sandbox, outcome, packet, tcp=True, reply=forwarded)
            elif outcome is not None:
                self._send_tcp(connection, outcome)

    def _send_tcp(self, connection: _Connection, reply: bytes) -> None:
        if connection.closed:
            return
        connection.outbox += len(reply).to_bytes(2, "big") + reply
        self._flush(connection)

    def _flush(self, connection: _Connection) -> None:
        if connection.outbox:
            try:
                sent = connection.sock.send(connection.outbox)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._close_connection(connection)
                return
            del connection.outbox[:sent]
            connection.last_active = time.monotonic()
            if len(connection.outbox) > _MAX_TCP_BACKLOG:
                self._close_connection(connection)  # a client that asks but does not read
                return
        self._settle(connection)

    def _settle(self, connection: _Connection) -> None:
        """Close a finished connection, or watch it for exactly what it still needs.

        A client that shut down its side and waits for upstream answers is watched for
        nothing (a socket with nothing to send would be "writable" in a busy loop).
        """
        if connection.closed:
            return
        if connection.peer_done and not connection.outbox and not connection.forwards:
            self._close_connection(connection)
            return
        events = 0 if connection.peer_done else selectors.EVENT_READ
        if connection.outbox:
            events |= selectors.EVENT_WRITE
        if events == connection.events:
            return
        assert self._selector is not None
        if connection.events == 0:
            self._selector.register(connection.sock, events, connection.handler)
        elif events == 0:
            self._selector.unregister(connection.sock)
        else:
            self._selector.modify(connection.sock, events, connection.handler)
        connection.events = events

    def _close_connection(self, connection: _Connection) -> None:
        if connection.closed:
            return
        connection.closed = True
        connection.listener.connections.discard(connection)
        self._connections.discard(connection)
        if connection.events:
            self._unregister(connection.sock)
        connection.sock.close()

    def _close_idle_connections(self, now: float) -> None:
        for connection in list(self._connections):
            if not connection.forwards and now - connection.last_active > TCP_IDLE_TIMEOUT:
                self._close_connection(connection)

    # ---- answering ------------------------------------------------------------------

    def _answer(self, sandbox: str, packet: bytes, *, tcp: bool) -> bytes | Query | None:
        """The reply to ``packet`` if the resolver has it, the query if it goes upstream,
        or None if it deserves no reply."""
        try:
            query = parse_query(packet)
        except MalformedMessage:
            return build_format_error(packet)
        if query.is_response:
            return None  # never answer an answer
        max_size = TCP_MAX_SIZE if tcp else query.max_udp_size
        if query.opcode != 0:
            return build_response(query, NOTIMP, max_size=max_size)
        if query.edns is not None and query.edns.version != 0:
            return build_response(query, BADVERS, max_size=max_size)
        local = self._records.answer(sandbox, query.question)
        if local is not None:
            return build_response(
                query, local.rcode, local.addresses, pointers=local.pointers, max_size=max_size, authoritative=True
            )
        if not self._upstreams_for(sandbox) or self._forwards >= _MAX_FORWARDS or self._pool is None:
            return build_response(query, SERVFAIL, max_size=max_size)
        return query

    def _forward(
        self, sandbox: str, query: Query, packet: bytes, *, tcp: bool, reply: Callable[[bytes], None]
    ) -> None:
        """Ask ``sandbox``'s upstreams on a pool thread; ``reply`` runs on the serving thread
        with the answer."""
        assert self._pool is not None
        deadline = time.monotonic() + UPSTREAM_TIMEOUT
        max_size = TCP_MAX_SIZE if tcp else query.max_udp_size
        upstreams = self._upstreams_for(sandbox)
        self._forwards += 1

        def work() -> None:
            try:
                answer = self._ask_upstreams(upstreams, packet, query.question, tcp=tcp, deadline=deadline)
            except Exception:
                log.exception("dns: forwarding failed")
                answer = None
            if answer is None:
                response = build_response(query, SERVFAIL, max_size=max_size)
            else:
                response = truncate(with_id(answer, query.id), max_size)
            self._post(functools.partial(self._forward_done, response, reply))

        self._pool.submit(work)

    def _forward_done(self, response: bytes, reply: Callable[[bytes], None]) -> None:
        self._forwards -= 1
        reply(response)

    def _ask_upstreams(
        self, upstreams: list[_Upstream], packet: bytes, question: Question, *, tcp: bool, deadline: float
    ) -> bytes | None:
        """The first good upstream answer: each upstream in turn, sharing what time is left.

        SERVFAIL or REFUSED from one upstream is kept only in case no other answers.
        """
        fallback: bytes | None = None
        for index, upstream in enumerate(upstreams):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            attempt_deadline = time.monotonic() + remaining / (len(upstreams) - index)
            try:
                answer = _exchange_udp(upstream, packet, question, attempt_deadline)
                if answer is not None and tcp and is_truncated(answer):
                    answer = _exchange_tcp(upstream, packet, question, deadline)
            except OSError as exc:
                log.debug("dns: upstream %s: %s", upstream.text, exc)
                answer = None
            if answer is None:
                continue
            if rcode_of(answer) in (SERVFAIL, REFUSED):
                fallback = answer
                continue
            return answer
        return fallback

