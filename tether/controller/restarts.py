"""Restart policies, and the process monitor that acts on a container's exit at once.

Design note. A container's process may end at any moment: by itself, by ``stop``, by a
signal from anyone. What it held while it ran (its addresses, veths, published ports,
names) is released then, and its restart policy decides whether it runs again. Docker's
restart manager is the model: ``no``, ``on-failure[:N]`` (a non-zero exit, at most N
restarts), ``always``, ``unless-stopped``; a back-off of 100 ms, doubled at each restart up
to a minute, back to 100 ms once a run has lasted 10 s; ``stop`` cancels the policy until
the container is started again.

One thread watches every running container's process through a pidfd (``pidfd_open``: it
becomes readable when the process ends, and it names that process, never a number a
stranger may reuse later), so an exit is seen within milliseconds at a cost of nothing
while nothing happens. Tried and dropped: polling ``/proc`` every 100 ms (a read per
container per tick, and still up to 100 ms late), and the daemon's 2 s reaper alone (it
holds an address for 2 s and cannot keep a 100 ms back-off). The reaper stays as the
fallback for ``--rm`` containers.

The policy and the restart count live in the container's record, so they outlive the
daemon: at its start the daemon's monitor watches what runs and restarts what exited
while it was down, as Docker's daemon does at its start (``always`` even after a
``stop``, ``unless-stopped`` not, ``on-failure`` when the last exit failed and retries
are left).
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from ..errors import InvalidInput

__all__ = [
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
    "BACKOFF_RESET_AFTER",
    "POLICIES",
    "ProcessMonitor",
    "RestartPolicy",
    "next_delay",
]

log = logging.getLogger("tether.restarts")

POLICIES = ("no", "on-failure", "always", "unless-stopped")
BACKOFF_FIRST = 0.1  # seconds before the first restart
BACKOFF_MAX = 60.0
BACKOFF_RESET_AFTER = 10.0  # a run this long starts the back-off over


@dataclass(frozen=True)
class RestartPolicy:
    """``--restart``: when a container whose process ended runs again."""

    name: str = "no"
    max_retries: int = 0  # on-failure:N; 0 is no limit, as in Docker

    def __str__(self) -> str:
        return f"{self.name}:{self.max_retries}" if self.name == "on-failure" and self.max_retries else self.name

    @classmethod
    def parse(cls, text: str | None) -> RestartPolicy:
        """``no``, ``on-failure``, ``on-failure:N``, ``always``, ``unless-stopped``; anything
        else is one line of InvalidInput."""
        raw = "no" if text is None else str(text).strip()
        name, sep, count = raw.partition(":")
        if name not in POLICIES:
            raise InvalidInput(f"invalid --restart {raw!r}: use no, on-failure[:N], always or unless-stopped")
        if not sep:
            return cls(name)
        if name != "on-failure":
            raise InvalidInput(f"invalid --restart {raw!r}: only on-failure takes a maximum retry count, as in on-failure:3")
        if not (count.isascii() and count.isdigit()) or int(count) > 2**31 - 1:
            raise InvalidInput(f"invalid --restart {raw!r}: the maximum retry count must be a whole number, as in on-failure:3")
        return cls(name, int(count))

    def should_restart(
        self, exit_code: int | None, manually_stopped: bool, restart_count: int, at_daemon_start: bool = False
    ) -> bool:
        """Whether a container that exited with ``exit_code`` runs again. A ``stop`` holds
        every policy back while this daemon runs; at the daemon's start ``always`` comes
        back regardless (Docker's difference between ``always`` and ``unless-stopped``)."""
        if self.name == "always":
            return at_daemon_start or not manually_stopped
        if manually_stopped or self.name == "no":
            return False
        if self.name == "unless-stopped":
            return True
        failed = exit_code is not None and exit_code != 0
        return failed and (self.max_retries == 0 or restart_count < self.max_retries)


def next_delay(previous: float, ran_for: float) -> float:
    """Docker's back-off: 100 ms, doubled at each restart up to a minute, and 100 ms again
    once a run lasted 10 s. ``previous`` is the last delay (0: none yet)."""
    if previous <= 0 or ran_for >= BACKOFF_RESET_AFTER:
        return BACKOFF_FIRST
    return min(previous * 2, BACKOFF_MAX)


class MonitoredController(Protocol):
    """What the monitor calls back (the controller's container room); both take the
    container's own lock, so they serialise with ``start``, ``stop`` and ``rm``."""

    def handle_exit(self, container_id: str) -> float | None:
        """A watched process ended: release, remove (``--rm``) or keep the container.
        Returns how long its last run lasted when its policy restarts it, else None."""

    def restart_by_policy(self, container_id: str, at_daemon_start: bool) -> None:
        """Start the container again if it is still exited and its policy still says so."""


class ProcessMonitor:
    """One thread: a pidfd per running container, and the restarts due, in time order.

    ``watch`` and ``schedule`` may be called from any thread (a request's, or the
    monitor's own while it restarts a container); the poll set is only ever changed by
    the monitor thread, woken through a pipe."""

    def __init__(self, controller: MonitoredController) -> None:
        self.controller = controller
        self._lock = threading.Lock()
        self._pending: list[tuple[str, int, int]] = []  # (container id, pid, start time) to watch
        self._due: dict[str, tuple[float, bool]] = {}  # container id -> (monotonic time, at daemon start)
        self._delays: dict[str, float] = {}  # container id -> its last back-off (monitor thread only)
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- any thread
    def watch(self, container_id: str, pid: int, start_time: int) -> None:
        """Act on the exit of ``pid`` (started at ``start_time``), the container's process
        now; a process it watched for the container before is forgotten."""
        if pid <= 0:
            return
        with self._lock:
            self._pending.append((container_id, pid, start_time))
        self._wake()

    def schedule(self, container_id: str, delay: float, at_daemon_start: bool = False) -> None:
        """Restart the container by its policy in ``delay`` seconds (once, however often asked)."""
        with self._lock:
            self._due.setdefault(container_id, (time.monotonic() + delay, at_daemon_start))
        self._wake()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tether-monitor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._thread is None or not self._thread.is_alive():
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (a wake-up is pending anyway) or closed (stopped)

    # ---------------------------------------------------------------- the monitor thread
    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        by_fd: dict[int, str] = {}
        by_container: dict[str, int] = {}

        def forget(container_id: str) -> None:
            fd = by_container.pop(container_id, None)
            if fd is not None:
                poller.unregister(fd)
                by_fd.pop(fd, None)
                os.close(fd)

        try:
            while True:
                with self._lock:
                    if self._stopping:
                        return
                    pending, self._pending = self._pending, []
                exited: list[str] = []
                for container_id, pid, start_time in pending:
                    forget(container_id)
                    fd = _open_pidfd(pid, start_time)
                    if fd is None:
                        exited.append(container_id)  # it ended before we looked
                        continue
                    by_container[container_id], by_fd[fd] = fd, container_id
                    poller.register(fd, select.POLLIN)
                timeout = 0 if exited else self._next_timeout()
                for fd, _ in poller.poll(timeout):
                    if fd == self._wake_r:
                        _drain(fd)
                    elif fd in by_fd:
                        container_id = by_fd[fd]
                        forget(container_id)
                        exited.append(container_id)
                for container_id in exited:
                    self._exited(container_id)
                for container_id, at_start in self._take_due():
                    self._restart(container_id, at_start)
        finally:
            for container_id in list(by_container):
                forget(container_id)

    def _next_timeout(self) -> int:
        """Milliseconds until the next restart is due (-1: none; poll waits for an event)."""
        with self._lock:
            if not self._due:
                return -1
            soonest = min(when for when, _ in self._due.values())
        return max(0, int((soonest - time.monotonic()) * 1000) + 1)

    def _take_due(self) -> list[tuple[str, bool]]:
        now = time.monotonic()
        with self._lock:
            due = [(cid, at_start) for cid, (when, at_start) in self._due.items() if when <= now]
            for cid, _ in due:
                del self._due[cid]
        return due

    def _exited(self, container_id: str) -> None:
        try:
            ran_for = self.controller.handle_exit(container_id)
        except Exception:
            log.exception("handling the exit of container %s", container_id)
            return
        if ran_for is None:
            self._delays.pop(container_id, None)
            return
        delay = next_delay(self._delays.get(container_id, 0.0), ran_for)
        self._delays[container_id] = delay
        self.schedule(container_id, delay)

    def _restart(self, container_id: str, at_daemon_start: bool) -> None:
        try:
            self.controller.restart_by_policy(container_id, at_daemon_start)
        except Exception:
            log.exception("restarting container %s by its policy", container_id)


def _open_pidfd(pid: int, start_time: int) -> int | None:
    """A pidfd for ``pid`` if it still is the process that started at ``start_time``."""
    from .. import runtime

    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    # checked after opening: the pidfd now names this process, whatever happens to the pid
    if not runtime.process_alive(pid, start_time):
        os.close(fd)
        return None
    return fd


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
