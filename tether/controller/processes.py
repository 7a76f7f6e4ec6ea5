"""Process verbs: a container's process under its shim, and what the record says of it.

The daemon starts detached containers itself (``runtime.spawn_detached``); a foreground
one is run by the CLI, which reports its pid and exit code back. The record's state
(running, exited) only caches what the process says: ``_refresh`` derives it, and adopts
a process the shim started while the daemon died before recording it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from .. import runtime
from ..model import Container
from .core import ControllerCore

__all__ = ["ProcessVerbs"]


class ProcessVerbs(ControllerCore):
    def start_detached(self, name: str) -> Container:
        container = self._container(name)
        spec = self._process_spec(container, detach=True)
        pid, start_time = runtime.spawn_detached(spec)
        with self.lock:
            current = self._container(name)
            return self._save(current.with_(state="running", pid=pid, start_time=start_time, exit_code=None))

    def _process_spec(self, container: Container, detach: bool) -> runtime.ProcessSpec:
        cdir = self.container_dir(container)
        on_exit = None
        if detach and container.auto_remove and self.socket_path:
            on_exit = [sys.executable, "-m", "tether.cli", "--socket", self.socket_path, "reap", container.id]
        return runtime.ProcessSpec(
            cmd=container.cmd,
            state_dir=cdir,
            netns_path=self.ctx.datapath.netns_path(container.netns) if container.netns else None,
            hostname=container.hostname,
            log_path=os.path.join(cdir, "log") if detach else None,
            rootfs=container.rootfs,
            resolv_conf=self._resolv_conf(container),
            on_exit=on_exit,
        )

    def process_spec(self, name: str) -> dict[str, Any]:
        """What a front end needs to run a created container in the foreground itself."""
        spec = self._process_spec(self._container(name), detach=False)
        return {k: getattr(spec, k) for k in spec.__dataclass_fields__}

    def mark_started(self, name: str, pid: int, start_time: int) -> Container:
        with self.lock:
            return self._save(self._container(name).with_(state="running", pid=pid, start_time=start_time))

    def mark_exited(self, name: str, code: int) -> Container:
        with self.lock:
            return self._save(self._container(name).with_(state="exited", exit_code=code))

    def _refresh(self, container: Container) -> Container:
        """Derive running/exited from the process itself; the record only caches it. A
        ``created`` record whose shim reports a live process is adopted as running (the
        daemon was killed between starting it and recording that)."""
        if container.state == "created" and not container.pid and container.detach:
            started = runtime.read_started(self.container_dir(container))
            if started is not None and self._in_own_netns(container, started[0]):
                pid, start_time = started
                container = self._save(container.with_(state="running", pid=pid, start_time=start_time))
        if container.state == "running" and not runtime.process_alive(container.pid, container.start_time):
            code = runtime.read_exit_code(self.container_dir(container))
            deadline = time.monotonic() + 0.5
            while code is None and time.monotonic() < deadline:  # the shim writes it just after
                time.sleep(0.01)
                code = runtime.read_exit_code(self.container_dir(container))
            container = self._save(container.with_(state="exited", exit_code=code if code is not None else -1))
        return container

    def _in_own_netns(self, container: Container, pid: int) -> bool:
        """Whether process ``pid`` lives in the container's network namespace (so a pid
        file can not make tether adopt a stranger that reused the pid)."""
        if container.netns is None:
            return True
        try:
            inside = os.stat(f"/proc/{pid}/ns/net")
            bound = os.stat(self.ctx.datapath.netns_path(container.netns))
        except OSError:
            return False
        return (inside.st_dev, inside.st_ino) == (bound.st_dev, bound.st_ino)

    def logs(self, name: str) -> str:
        path = os.path.join(self.container_dir(self._container(name)), "log")
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    def _resolv_conf(self, container: Container) -> str | None:
        if self.resolver is None or container.netns is None:
            return None
        from ..dns import resolv_conf_text

        path = os.path.join(self.container_dir(container), "resolv.conf")
        if not os.path.exists(path):
            with open(path, "w") as fh:
                fh.write(resolv_conf_text())
        return path
