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
    def __init__(self, socket_path: str | None = None, timeout: float = 120.0) -> None:
        self.socket_path = socket_path or default_socket()
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        try:
            status, raw = _http(self.socket_path, method, path, data, self.timeout)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonUnavailable(
                f"no tether daemon answers on {self.socket_path}: start one with `tether daemon`"
            ) from exc
        except OSError as exc:
            raise DaemonUnavailable(f"talking to the daemon on {self.socket_path} failed: {exc}") from exc
        except ValueError:
            raise DaemonUnavailable(f"the daemon on {self.socket_path} sent a malformed reply") from None
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


def q(name: str) -> str:
    """Quote a name for use in a URL path."""
    from urllib.parse import quote

    return quote(name, safe="")
