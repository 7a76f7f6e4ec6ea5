"""etcd as a process: finding (or installing) the binary, a single member's command line,
and ``EtcdServer``, a supervised member on loopback for tests.

Design note. Two kinds of caller run etcd, and both want the same member: the lab starts
one in its fabric namespace (``processes``), and tests and benchmarks start one on
127.0.0.1 in a temporary data dir (``EtcdServer``). So the binary (``ensure_etcd_installed``)
and the command line (``member_argv``) live here, once, and each caller supervises its
process its own way. Nothing here imports the rest of tether: tests can use it alone.

Tests need a real etcd (the etcd backend is a thin mapping onto etcd's own revisions,
transactions, watches and leases, and a fake would only test the fake), and they need to
stop it for a while and start it again on the same ports and data dir (a watch must
survive an etcd restart). So ``EtcdServer`` is a small process supervisor, not a fixture:
``start``/``stop``/``restart``/``close``, or ``with EtcdServer() as etcd``.

The binary comes from Debian's ``etcd-server`` package; ``ensure_etcd_installed`` runs
``apt-get`` once when it is missing (as root). ``EtcdServer`` picks its ports by binding
port 0 on 127.0.0.1 and keeps them for the life of the object, so a restart comes back at
the same URL. A single member needs ``--name``, ``--initial-advertise-peer-urls`` and a
one-entry ``--initial-cluster`` besides the listen/advertise URLs (PLATFORM.md). Shorter
raft ticks (heartbeat 10 ms, election 100 ms) make a start take a few hundred ms, not
seconds. etcd's log goes to ``etcd.log`` beside (not inside) the data dir, so a test
that fails to start etcd can show why; ``close`` removes both.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from types import TracebackType
from typing import TYPE_CHECKING, Self
from weakref import WeakSet

if TYPE_CHECKING:
    import urllib.request

__all__ = ["EtcdServer", "EtcdUnavailable", "ensure_etcd_installed", "free_port", "log_tail", "member_argv"]

_START_PATIENCE = 20.0  # seconds for etcd to report healthy
_STOP_PATIENCE = 10.0  # seconds between SIGTERM and SIGKILL
_PORT_TRIES = 3  # a random port can be taken between picking it and etcd binding it

# Servers still open when the interpreter exits (a test forgot close(), or was
# interrupted) are closed then, so no etcd process or data dir outlives the run.
_OPEN: WeakSet[EtcdServer] = WeakSet()


@atexit.register
def _close_all() -> None:
    for server in list(_OPEN):
        if server.owner_pid == os.getpid():  # not in a forked child: the parent owns etcd
            server.close()


class EtcdUnavailable(RuntimeError):
    """etcd is not installed and could not be installed (tests skip on this)."""


def ensure_etcd_installed() -> str:
    """The path of the ``etcd`` binary, installing Debian's ``etcd-server`` if missing."""
    found = shutil.which("etcd") or ("/usr/bin/etcd" if os.access("/usr/bin/etcd", os.X_OK) else None)
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise EtcdUnavailable("etcd is not installed: run `apt-get install etcd-server` as root")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "etcd-server"]):
        result = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise EtcdUnavailable(f"`{' '.join(command)}` failed: {tail[0]}")
    found = shutil.which("etcd") or "/usr/bin/etcd"
    if not os.access(found, os.X_OK):
        raise EtcdUnavailable("etcd-server was installed but no etcd binary was found")
    return found


def member_argv(binary: str, name: str, data_dir: str, client_url: str, peer_url: str, token: str) -> list[str]:
    """The command line of a new single-member cluster ``name`` serving ``client_url``."""
    return [
        binary,
        "--name", name,
        "--data-dir", data_dir,
        "--listen-client-urls", client_url,
        "--advertise-client-urls", client_url,
        "--listen-peer-urls", peer_url,
        "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"{name}={peer_url}",
        "--initial-cluster-state", "new",
        "--initial-cluster-token", token,
        # short raft ticks: a single member elects itself in ~100 ms instead of ~1 s
        "--heartbeat-interval", "10",
        "--election-timeout", "100",
        "--logger", "zap",
        "--log-outputs", "stderr",
        "--log-level", "warn",
    ]  # fmt: skip


def log_tail(path: str, lines: int = 4) -> str:
    """The last non-empty lines of a process's log, on one line, for an error message."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            tail = [line.strip() for line in f.readlines()[-lines:] if line.strip()]
    except OSError:
        return "no log"
    return " | ".join(tail) or "no log output"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@functools.cache
def _no_proxy() -> urllib.request.OpenerDirector:
    # imported here: urllib.request pulls in http.client and ssl, which the lab's CLI
    # paths (they import this module too) never need
    import urllib.request

    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _PortTaken(Exception):
    pass


class EtcdServer:
    """One etcd member on 127.0.0.1 with random ports and a temporary data dir.

    ``client_url`` stays the same across ``stop``/``start``/``restart``; ``close`` stops
    etcd and removes the data dir. Not thread-safe: drive it from one test thread.
    """

    def __init__(self, name: str = "tether-test") -> None:
        self.name = name
        self.binary = ensure_etcd_installed()
        self._workdir = tempfile.mkdtemp(prefix="tether-etcd-")
        self.data_dir = os.path.join(self._workdir, "data")
        self.log_path = os.path.join(self._workdir, "etcd.log")
        self.client_port = free_port()
        self.peer_port = free_port()
        while self.peer_port == self.client_port:
            self.peer_port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._started_once = False
        self.owner_pid = os.getpid()
        _OPEN.add(self)

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _command(self) -> list[str]:
        token = f"{self.name}-{self.client_port}"
        return member_argv(self.binary, self.name, self.data_dir, self.client_url, self.peer_url, token)

    def start(self) -> str:
        """Start etcd (on the same ports and data dir as before, if it ran before) and
        wait until it serves requests; returns the client URL."""
        if self.running:
            return self.client_url
        if not os.path.isdir(self._workdir):
            raise RuntimeError("this EtcdServer was closed")
        for attempt in range(_PORT_TRIES):
            try:
                self._launch()
                self._started_once = True
                return self.client_url
            except _PortTaken:
                if self._started_once or attempt == _PORT_TRIES - 1:
                    raise RuntimeError(f"etcd could not bind its ports: {self._log_tail()}") from None
                shutil.rmtree(self.data_dir, ignore_errors=True)  # bootstrapped with the old URLs
                self.client_port, self.peer_port = free_port(), free_port()
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a ^C in the test run is ours to forward, not etcd's
            )
        deadline = time.monotonic() + _START_PATIENCE
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                if "address already in use" in self._log_tail():
                    raise _PortTaken()
                raise RuntimeError(f"etcd exited at start: {self._log_tail()}")
            if self._healthy():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"etcd did not become healthy in {_START_PATIENCE:.0f} s: {self._log_tail()}")

    def _healthy(self) -> bool:
        try:
            with _no_proxy().open(self.client_url + "/health", timeout=0.5) as response:
                return b'"true"' in response.read()
        except OSError:  # urllib.error.URLError is an OSError
            return False

    def _log_tail(self) -> str:
        return log_tail(self.log_path, 5)

    def stop(self, *, crash: bool = False) -> None:
        """Stop etcd (SIGTERM, then SIGKILL; at once SIGKILL with ``crash``); the data
        dir is kept for ``start``."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if crash else signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_PATIENCE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> str:
        self.stop()
        return self.start()

    def wipe(self) -> str:
        """Stop, delete every key and all history (a fresh data dir), start again."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        return self.start()

    def close(self) -> None:
        """Stop etcd and remove its data dir and log. Idempotent."""
        self.stop()
        shutil.rmtree(self._workdir, ignore_errors=True)
        _OPEN.discard(self)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"EtcdServer({self.client_url}, {state}, data_dir={self.data_dir!r})"
