"""The client side of the daemon API, shared by the CLI (and later the CNI plugin).

It only speaks HTTP/JSON over the unix socket and rebuilds daemon errors from the wire,
so it imports nothing heavy. When no daemon answers it can start one in the background
(the embedded default: no configuration, no supervisor needed on one host).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any
from urllib.parse import quote

from ..errors import DaemonUnavailable, error_from_wire

__all__ = ["Client", "default_socket", "default_state_dir"]


def default_socket() -> str:
    return os.environ.get("TETHER_SOCKET", "/run/tether/tether.sock")


def default_state_dir() -> str:
    return os.environ.get("TETHER_STATE_DIR", "/var/lib/tether")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class Client:
    def __init__(self, socket_path: str | None = None, timeout: float = 120.0) -> None:
        self.socket_path = socket_path or default_socket()
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data is not None else {}
            try:
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise DaemonUnavailable(
                    f"no tether daemon answers on {self.socket_path}: start one with `tether daemon`"
                ) from exc
            except OSError as exc:
                raise DaemonUnavailable(f"talking to the daemon on {self.socket_path} failed: {exc}") from exc
        finally:
            conn.close()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            raise DaemonUnavailable(f"the daemon on {self.socket_path} sent a malformed reply") from None
        if response.status >= 400:
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
        """Start a background daemon on this socket if none answers (the embedded default)."""
        if self.alive():
            return
        state_dir = state_dir or default_state_dir()
        os.makedirs(state_dir, exist_ok=True)
        log_path = os.path.join(state_dir, "daemon.log")
        with open(log_path, "ab") as log_file:
            subprocess.Popen(
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
            time.sleep(0.05)
        raise DaemonUnavailable(f"started a tether daemon but it did not answer on {self.socket_path}: see {log_path}")


def q(name: str) -> str:
    """Quote a name for use in a URL path."""
    return quote(name, safe="")
