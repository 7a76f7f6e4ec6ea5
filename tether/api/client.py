"""The client side of the daemon API, shared by the CLI (and later the CNI plugin).

It only speaks HTTP/JSON over the unix socket and rebuilds daemon errors from the wire,
so it imports nothing heavy: the few lines of HTTP/1.1 it needs are written here rather
than taken from http.client, whose imports (email, ssl) cost a short-lived CNI plugin
process about 30 ms. When no daemon answers it can start one in the background
(the embedded default: no configuration, no supervisor needed on one host).
"""

from __future__ import annotations

import _socket  # the C module: socket.py's enum and selectors imports cost a plugin call ms
import os
import sys
import time

from .. import wirejson as json
from ..errors import DaemonUnavailable, error_from_wire

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

__all__ = ["Client", "default_socket", "default_state_dir"]


DEFAULT_SOCKET = "/run/tether/tether.sock"


def default_socket() -> str:
    return os.environ.get("TETHER_SOCKET", DEFAULT_SOCKET)


def default_state_dir() -> str:
    return os.environ.get("TETHER_STATE_DIR", "/var/lib/tether")


def _http(path: str, method: str, target: str, body: bytes | None, timeout: float) -> tuple[int, bytes]:
    """One HTTP/1.1 request over the unix socket at ``path``; (status, body)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        head = f"{method} {target} HTTP/1.1\r\nHost: tether\r\nConnection: close\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        sock.sendall(head.encode() + b"\r\n" + (body or b""))
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        sock.close()
    raw = b"".join(chunks)
    header, _, payload = raw.partition(b"\r\n\r\n")
    lines = header.split(b"\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        raise ValueError("malformed reply") from None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            payload = payload[: int(value.strip())]
    return status, payload


class Client:
    def __init__(self, socket_path: str | None = None, timeout: float = 120.0, start_daemon_in: str | None = None) -> None:
        """``start_daemon_in``: a state dir; when the first request finds no daemon, start
        one there (``ensure_daemon``) and send it again: the ``/ping`` that ``ensure_daemon``
        sends first is saved where a daemon already runs (one request per CLI verb)."""
        self.socket_path = socket_path or default_socket()
        self.timeout = timeout
        self.start_daemon_in = start_daemon_in

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        state_dir, self.start_daemon_in = self.start_daemon_in, None  # the first request only
        try:
            return self._request(method, path, body)
        except DaemonUnavailable as exc:
            # nothing was sent when the connection itself failed: safe to send again
            if state_dir is None or not isinstance(exc.__cause__, (FileNotFoundError, ConnectionRefusedError)):
                raise
        self.ensure_daemon(state_dir)
        return self._request(method, path, body)

    def _unavailable(self, exc: BaseException) -> DaemonUnavailable:
        """What a failed exchange with the daemon means, in one line."""
        if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
            return DaemonUnavailable(f"no tether daemon answers on {self.socket_path}: start one with `tether daemon`")
        if isinstance(exc, ValueError):
            return DaemonUnavailable(f"the daemon on {self.socket_path} sent a malformed reply")
        return DaemonUnavailable(f"talking to the daemon on {self.socket_path} failed: {exc}")

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        try:
            status, raw = _http(self.socket_path, method, path, data, self.timeout)
        except (OSError, ValueError) as exc:
            raise self._unavailable(exc) from exc
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            raise DaemonUnavailable(f"the daemon on {self.socket_path} sent a malformed reply") from None
        if status >= 400:
            raise error_from_wire(payload if isinstance(payload, dict) else {})
        return payload

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", path, body or {})

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def trace(self, source: str, destination: str, port: int | None = None, protocol: str | None = None) -> Any:
        """``POST /trace``: the hops from ``source`` to ``destination``, checked (``api/trace_route.py``)."""
        return self.post("/trace", {"source": source, "destination": destination, "port": port, "protocol": protocol})

    def graph(self, all_: bool = False) -> Any:
        """The topology model of ``GET /graph`` (``api/graph_route.py`` describes it)."""
        return self.get("/graph" + ("?all=1" if all_ else ""))

    def events(self, query: str = "") -> Iterator[dict[str, Any]]:
        """``GET /events?QUERY``: each event as it comes (``api/events_route.py``), until the
        daemon ends the stream. No timeout while it follows; an error reply is raised as
        the error it names before the first event."""
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.socket_path)
                sock.sendall(f"GET /events{'?' + query if query else ''} HTTP/1.1\r\nHost: tether\r\n"
                             "Connection: close\r\n\r\n".encode())
                buf = b""
                while b"\r\n\r\n" not in buf:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ValueError("malformed reply")
                    buf += chunk
            except (OSError, ValueError) as exc:
                raise self._unavailable(exc) from exc
            head, _, buf = buf.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200 "):  # an error, whole: a JSON body until the close
                raise error_from_wire(self._refusal(sock, head, buf))
            sock.settimeout(None)  # following: the next event may be hours away
            while True:
                line, sep, rest = buf.partition(b"\n")
                if sep:
                    buf = rest
                    if line.strip():
                        yield json.loads(line)
                    continue
                try:
                    chunk = sock.recv(65536)
                except OSError as exc:
                    raise DaemonUnavailable(f"the event stream from {self.socket_path} broke: {exc}") from None
                if not chunk:
                    return
                buf += chunk
        finally:
            sock.close()

    def _refusal(self, sock: Any, head: bytes, buf: bytes) -> dict[str, Any]:
        """The daemon's one-line error, read to the close, from a reply that is not a stream."""
        try:
            while chunk := sock.recv(65536):
                buf += chunk
            payload = json.loads(buf)
        except (OSError, ValueError):
            payload = None
        if isinstance(payload, dict) and "error" in payload:
            return payload
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        return {"error": f"the daemon on {self.socket_path} refused the event stream: {status}", "kind": "SystemFailure"}

    def alive(self) -> bool:
        try:
            self.get("/ping")
            return True
        except DaemonUnavailable:
            return False

    def ensure_daemon(self, state_dir: str | None = None, wait: float = 15.0) -> None:
        """Start a background daemon on this socket if none answers (the embedded default).

        Callers racing here (ten parallel first `run`s) queue on a lock in the state dir,
        so exactly one starts a daemon and the others find it answering. A daemon that
        exits while starting is reported at once with its own one-line reason."""
        if self.alive():
            return
        import fcntl  # only here: a short-lived client never needs these

        state_dir = state_dir or default_state_dir()
        try:
            os.makedirs(state_dir, exist_ok=True)
            lock = open(os.path.join(state_dir, "autostart.lock"), "a")
        except OSError as exc:
            raise DaemonUnavailable(
                f"cannot start a tether daemon: state dir {state_dir}: {exc.strerror}: "
                "use a writable --state-dir (or TETHER_STATE_DIR)"
            ) from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not self.alive():
                self._start_daemon(state_dir, wait)

    def _start_daemon(self, state_dir: str, wait: float) -> None:
        import subprocess

        log_path = os.path.join(state_dir, "daemon.log")
        with open(log_path, "ab") as log_file:
            start = log_file.tell()
            proc = subprocess.Popen(
                [sys.executable, "-m", "tether.cli", "daemon", "--state-dir", state_dir, "--socket", self.socket_path],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
                close_fds=True,
            )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.alive():
                return
            if proc.poll() is not None:
                raise DaemonUnavailable(f"the tether daemon did not start: {_last_error(log_path, start)}")
            time.sleep(0.05)
        raise DaemonUnavailable(f"started a tether daemon but it did not answer on {self.socket_path}: see {log_path}")


def _last_error(log_path: str, offset: int) -> str:
    """The daemon's reason for exiting: the last line it wrote (its one-line error)."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(offset)
            lines = [x.strip() for x in fh.read().decode(errors="replace").splitlines() if x.strip()]
    except OSError:
        lines = []
    if not lines:
        return f"it exited without a word: see {log_path}"
    last = lines[-1]
    return last[len("Error: "):] if last.startswith("Error: ") else f"{last} (see {log_path})"


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


def q(name: str) -> str:
    """Quote a name for use in a URL path (``urllib.parse.quote(name, safe="")``)."""
    if name and all(c in _UNRESERVED for c in name):
        return name  # what quote() returns for these: a plain name costs no urllib import
    from urllib.parse import quote

    return quote(name, safe="")
