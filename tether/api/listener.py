"""The connections of the daemon's unix sockets: one selector thread reads every request
whole, a fixed pool of worker threads serves only complete requests.

What was tried: each accepted connection went to one of 64 worker threads, which then
blocked reading it, with no timeout. 64 clients that connected and sent nothing (or half a
header, or half a body) held every worker for as long as they liked, and ``tether network
ls`` hung behind them; when they finally went away, each worker logged a BrokenPipe
traceback. A larger pool only moves the number.

What is done now: connections wait in a selector (``HttpListener``), which reads whatever
arrives without blocking, until the request is whole: the head up to its empty line, then
exactly Content-Length bytes of body, within ``Limits``. Only then does a worker get it,
parse it with http.server (``RequestHandler``) and write the reply itself, with a send
timeout. An idle or slow client costs a descriptor and a buffer, never a worker, and is
closed at its read deadline (with a 408 if it had sent part of a request); framing the
listener cannot accept (a bad or oversized Content-Length, chunked bodies, a head over
the limit) is answered and closed by the listener alone. After a reply on a keep-alive
connection the worker hands the connection back, with any pipelined bytes, for a fresh
deadline. The workers stay a fixed pool so each keeps its store connection and netlink
sockets across requests. A client that goes away is logged at debug level, never with a
traceback.

A reply that lasts (``GET /events``: a ``Streaming`` a route returns) must not hold a worker
either: the worker sends its head (``Connection: close``, the body runs until the close),
hands a duplicate of the connection to a thread of the stream's own and returns; the
listener then closes its handle as after any closing reply. The stream ends itself (its
own end, the client gone, a send timed out), and its thread is a daemon thread, so it
never holds up the daemon's exit.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import queue
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

__all__ = ["FramingError", "HttpListener", "Limits", "Request", "RequestHandler", "Streaming", "frame"]

log = logging.getLogger("tether.api")


@dataclass(frozen=True)
class Limits:
    """How much a client may send and how long it may take."""

    read_timeout: float = 10.0  # from connect (or the previous reply) until the request is whole
    write_timeout: float = 10.0  # for the client to take each part of the reply
    max_head: int = 64 * 1024  # request line and headers
    max_body: int = 1024 * 1024
    max_connections: int = 4096  # waiting for their request; beyond it the oldest is closed
    workers: int = 64


@dataclass(frozen=True)
class Request:
    """One complete request, as the listener read it."""

    sock: socket.socket
    head: bytes  # the request line and header lines, through the empty line
    body: bytes


class FramingError(Exception):
    """The request cannot be delimited (or is over a limit): answered with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _end_of_head(buf: bytes | bytearray) -> int | None:
    """The offset just past the empty line that ends the head, as http.server reads it
    (lines end with LF, optionally preceded by CR); None while it has not arrived."""
    pos = buf.find(b"\n")  # the request line
    while pos >= 0:
        nxt = buf.find(b"\n", pos + 1)
        if nxt < 0:
            return None
        if nxt - pos == 1 or (nxt - pos == 2 and buf[pos + 1] == 0x0D):
            return nxt + 1
        pos = nxt
    return None


def frame(buf: bytes | bytearray, limits: Limits) -> tuple[int, int, bool] | None:
    """Where the first request in ``buf`` ends: (end of its head, end of its body, whether
    it expects ``100 Continue``) once the head has arrived (the body may still be coming:
    compare with ``len(buf)``); None before. Raises FramingError."""
    head_end = _end_of_head(buf)
    if head_end is None:
        if len(buf) > limits.max_head:
            raise FramingError(431, f"the request line and headers exceed {limits.max_head} bytes")
        return None
    if head_end > limits.max_head:
        raise FramingError(431, f"the request line and headers exceed {limits.max_head} bytes")
    length: int | None = None
    expect = False
    for line in bytes(buf[:head_end]).split(b"\n")[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue  # the empty line, or a line http.server will judge
        name, value = name.strip().lower(), value.strip()
        if name == b"content-length":
            shown = value[:40].decode("latin-1")
            if not value.isdigit():
                raise FramingError(400, f"Content-Length must be a whole number of bytes, not {shown!r}")
            if len(value) > 18 or int(value) > limits.max_body:
                raise FramingError(413, f"the request body exceeds {limits.max_body} bytes")
            if length is not None and int(value) != length:
                raise FramingError(400, "the request has two different Content-Length headers")
            length = int(value)
        elif name == b"transfer-encoding" and value.lower() != b"identity":
            raise FramingError(400, "chunked request bodies are not supported: send Content-Length")
        elif name == b"expect" and value.lower() == b"100-continue":
            expect = True
    return head_end, head_end + (length or 0), expect


class Streaming:
    """A reply written over time by a thread of its own (see the module's note)."""

    content_type = "application/x-ndjson"

    def run(self, sock: socket.socket) -> None:
        """Write the body to ``sock`` (blocking, with the send timeout) until done; the
        caller closes it afterwards."""
        raise NotImplementedError

    def cancel(self) -> None:
        """The head could not be sent: ``run`` will never be called (release what was held)."""


class RequestHandler(BaseHTTPRequestHandler):
    """Serves one ``Request`` the listener read whole (``self.body`` is its body).

    Subclasses write ``do_<METHOD>`` and say what an error looks like on their protocol
    (``error_reply``); every error leaves that way, http.server's own included (a bad
    request line, 431, 501 for an unknown method), never as http.server's HTML page.
    """

    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.1"  # an error found before the version still gets a status line
    content_type = "application/json"
    server: HttpListener  # type: ignore[assignment]
    request: Request
    body: bytes

    @classmethod
    def error_reply(cls, status: int, message: str) -> tuple[int, Any]:
        """(status, JSON payload) of an error on this protocol."""
        raise NotImplementedError

    @classmethod
    def error_response(cls, status: int, message: str) -> bytes:
        """A whole HTTP response carrying an error, for the listener to send on its own."""
        code, payload = cls.error_reply(status, message)
        data = json.dumps(payload).encode()
        reason = HTTPStatus(code).phrase if code in HTTPStatus._value2member_map_ else "Error"
        head = (
            f"HTTP/1.1 {code} {reason}\r\nContent-Type: {cls.content_type}\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        )
        return head.encode("latin-1") + data

    def setup(self) -> None:
        self.connection = self.request.sock
        self.rfile = io.BytesIO(self.request.head)
        self.wfile = _SocketWriter(self.request.sock)  # type: ignore[assignment]
        self.body = self.request.body

    def handle(self) -> None:
        self.handle_one_request()  # one request; keep-alive is the listener's business

    def finish(self) -> None:
        pass  # nothing buffered; the listener owns the socket

    def handle_expect_100(self) -> bool:
        return True  # the listener answered 100 Continue while the body came in

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        text = message or self.responses.get(code, ("error",))[0]
        if len(text) > 200:
            text = text[:200] + "..."
        self.close_connection = True
        self.send_json(*self.error_reply(code, text))

    def send_json(self, status: int, payload: Any, content_type: str | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type or self.content_type)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def send_stream(self, reply: Streaming) -> None:
        """Send ``reply``'s head, then leave its body to a thread of its own."""
        self.close_connection = True
        try:
            self.send_response(200)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            sock = self.connection.dup()  # the listener closes its own handle when this returns
        except BaseException:
            reply.cancel()
            raise

        def stream() -> None:
            try:
                reply.run(sock)
            except OSError as exc:
                log.debug("API stream ended: %s", exc)
            except Exception:  # a bug in the stream: keep the traceback in the daemon's log
                log.exception("API stream failed")
            finally:
                _close(sock)

        threading.Thread(target=stream, name="tether-api-stream", daemon=True).start()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s", format % args)

    def address_string(self) -> str:
        return "unix"


class _SocketWriter(io.RawIOBase):
    """``wfile``: every write goes out whole (``sendall``, under the socket's timeout)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._sock.sendall(b)
        with memoryview(b) as view:
            return view.nbytes


class _Conn:
    """A connection while the listener reads its next request."""

    __slots__ = ("buf", "continued", "deadline", "sock")

    def __init__(self, sock: socket.socket, buf: bytearray) -> None:
        self.sock = sock
        self.buf = buf
        self.deadline = 0.0
        self.continued = False  # 100 Continue sent for the request being read


_WAKE = object()  # the selector key of the wake-up socket
_OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class HttpListener:
    """Listens on the unix socket ``path`` and serves its requests with ``handler``
    (``app`` is what the handler serves: the controller, or Docker's door) until
    ``shutdown``."""

    def __init__(self, path: str, handler: type[RequestHandler], app: Any, limits: Limits | None = None) -> None:
        self.handler = handler
        self.app = app
        self.limits = limits or Limits()
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.socket.bind(path)
            self.socket.listen(512)
        except BaseException:
            self.socket.close()
            raise
        self.socket.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.socket, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        # waiting for their request, oldest deadline first (all deadlines are now + read_timeout)
        self._waiting: dict[int, _Conn] = {}
        self._returned: queue.SimpleQueue[_Conn] = queue.SimpleQueue()
        self._pool = ThreadPoolExecutor(max_workers=self.limits.workers, thread_name_prefix="tether-api")
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._closed = False
        self._warned = 0.0

    # ------------------------------------------------------------------ the selector thread
    def serve_forever(self, poll_interval: float = 0.2) -> None:
        self._stopped.clear()
        try:
            while not self._stop.is_set():
                for key, _ in self._selector.select(poll_interval):
                    try:
                        if key.data is None:
                            self._accept()
                        elif key.data is _WAKE:
                            self._take_returned()
                        else:
                            self._on_readable(key.data)
                    except Exception:  # a bug: lose that connection, never the listener
                        log.exception("API listener: handling a connection failed")
                        if isinstance(key.data, _Conn):
                            self._forget(key.data)
                self._expire()
        finally:
            self._stopped.set()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF_DESCRIPTORS:
                    log.debug("accept failed: %s", exc)
                    return
                if self._waiting:  # make room: the oldest waiting connection goes
                    self._drop(next(iter(self._waiting.values())), "closed to make room: out of descriptors")
                    continue
                self._warn(f"cannot accept API connections: {exc.strerror}")
                time.sleep(0.05)  # every descriptor is in a request being served: let them finish
                return
            if len(self._waiting) >= self.limits.max_connections:
                self._drop(next(iter(self._waiting.values())), "closed to make room: too many connections")
            sock.setblocking(False)
            self._watch(_Conn(sock, bytearray()))

    def _watch(self, conn: _Conn) -> None:
        conn.deadline = time.monotonic() + self.limits.read_timeout
        self._selector.register(conn.sock, selectors.EVENT_READ, conn)
        self._waiting[conn.sock.fileno()] = conn

    def _unwatch(self, conn: _Conn) -> None:
        self._waiting.pop(conn.sock.fileno(), None)
        self._selector.unregister(conn.sock)

    def _on_readable(self, conn: _Conn) -> None:
        try:
            chunk = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._drop(conn, f"read failed: {exc}")
            return
        if not chunk:
            self._drop(conn, "closed by the client" + (" mid-request" if conn.buf else ""))
            return
        conn.buf += chunk
        self._advance(conn)

    def _advance(self, conn: _Conn) -> None:
        """Hand the request in ``conn.buf`` to a worker once it is whole."""
        if conn.buf.startswith((b"\r", b"\n")):  # empty lines before a request line are allowed
            conn.buf = bytearray(conn.buf.lstrip(b"\r\n"))
        try:
            framed = frame(conn.buf, self.limits)
        except FramingError as exc:
            self._refuse(conn, exc.status, exc.message)
            return
        if framed is None:
            return
        head_end, body_end, expect = framed
        if len(conn.buf) < body_end:
            if expect and not conn.continued:
                conn.continued = True
                _send_quietly(conn.sock, b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        request = Request(conn.sock, bytes(conn.buf[:head_end]), bytes(conn.buf[head_end:body_end]))
        del conn.buf[:body_end]
        conn.continued = False
        self._unwatch(conn)
        try:
            self._pool.submit(self._serve, conn, request)
        except RuntimeError:  # the pool is shut down: we are closing
            _close(conn.sock)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._waiting:
            conn = next(iter(self._waiting.values()))
            if conn.deadline > now:
                return
            if conn.buf:
                self._refuse(conn, 408, f"the request did not arrive whole within {self.limits.read_timeout:g} s")
            else:
                self._drop(conn, "idle")

    def _refuse(self, conn: _Conn, status: int, message: str) -> None:
        """Answer ``status`` on the listener's own and close: the request never reaches a worker."""
        log.debug("refused an API request (%d): %s", status, message)
        try:  # what the client already sent, so that closing does not reset the connection
            for _ in range(16):  # before it reads the answer (bounded: it may never stop sending)
                if not conn.sock.recv(65536):
                    break
        except OSError:
            pass
        _send_quietly(conn.sock, self.handler.error_response(status, message))
        self._drop(conn, None)

    def _drop(self, conn: _Conn, why: str | None) -> None:
        if why:
            log.debug("API connection %s", why)
        self._unwatch(conn)
        _close(conn.sock)

    def _forget(self, conn: _Conn) -> None:
        """Drop ``conn`` whatever state it is in (after a bug)."""
        self._waiting = {fd: c for fd, c in self._waiting.items() if c is not conn}
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        _close(conn.sock)

    def _take_returned(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass
        while True:
            try:
                conn = self._returned.get_nowait()
            except queue.Empty:
                return
            conn.sock.setblocking(False)
            self._watch(conn)
            self._advance(conn)  # a pipelined request may be whole already

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned > 10:
            self._warned = now
            log.warning("%s", message)

    # ------------------------------------------------------------------ worker threads
    def _serve(self, conn: _Conn, request: Request) -> None:
        keep = False
        try:
            conn.sock.settimeout(self.limits.write_timeout)
            handler = self.handler(request, "unix", self)  # type: ignore[arg-type]
            keep = not handler.close_connection
        except OSError as exc:  # broken pipe, reset, send timeout: the client went away or stopped reading
            log.debug("API client went away before its reply was sent: %s", exc)
        except Exception:  # a bug in the handler: keep the traceback in the daemon's log
            log.exception("serving an API request failed")
        if keep and not self._stop.is_set():
            self._returned.put(conn)
            self._wake()
        else:
            _close(conn.sock)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # full: a wake-up is pending anyway; closed: we are closing

    # ------------------------------------------------------------------ any thread
    def shutdown(self) -> None:
        """Stop ``serve_forever`` and wait for it to return (at once if it is not running)."""
        self._stop.set()
        self._wake()
        self._stopped.wait()

    def server_close(self) -> None:
        """Close the socket, every waiting connection, and the pool (without waiting for it)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        for conn in list(self._waiting.values()):
            _close(conn.sock)
        self._waiting.clear()
        while True:
            try:
                _close(self._returned.get_nowait().sock)
            except queue.Empty:
                break
        self._selector.close()
        self.socket.close()
        self._wake_r.close()
        self._wake_w.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    """A short answer on a non-blocking socket; a client that is gone or not reading loses it."""
    try:
        sock.send(data)
    except OSError:
        pass


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
