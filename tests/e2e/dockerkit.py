"""A real Docker engine for end-to-end tests, confined to one test host.

Debian's dockerd runs inside the host's network namespace with directories of its own
(``--data-root``, ``--exec-root``, its own API socket and containerd namespace) and
``--bridge=none --iptables=false``, so it touches nothing outside the test; the vfs
storage driver keeps its mounts out of the way. The host's tether daemon serves the
plugin socket under a per-test name, which is the driver name Docker is given.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Host, busybox_image, processes_mentioning, sh

DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"
IMAGE = "tbb:latest"


def have_docker() -> bool:
    return shutil.which("dockerd") is not None and os.path.exists("/bin/busybox")


@dataclass
class Docker:
    enter: Callable[[], list[str]]  # how to get into the test host's namespace
    base: Path
    plugin: str  # the driver name: tether serves /run/docker/plugins/<plugin>.sock
    proc: subprocess.Popen[bytes] | None = None

    @property
    def sock(self) -> str:
        return str(self.base / "docker.sock")

    def start(self) -> None:
        log = open(self.base / "dockerd.log", "ab")
        self.proc = subprocess.Popen(
            [*self.enter(), "dockerd", "--data-root", str(self.base / "data"), "--exec-root",
             str(self.base / "exec"), "-H", f"unix://{self.sock}", "--pidfile", str(self.base / "dockerd.pid"),
             "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
             "--userland-proxy=false", "--storage-driver", "vfs", "--containerd-namespace", self.plugin,
             "--containerd-plugins-namespace", self.plugin + "p"],
            stdout=log, stderr=log, start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited: {(self.base / 'dockerd.log').read_text()[-2000:]}")
            if self("version", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("dockerd did not come up")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def __call__(self, *args: str, check: bool = True, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([DOCKER, "-H", f"unix://{self.sock}", *args], capture_output=True, text=True,
                           timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({r.returncode}): {r.stderr}{r.stdout}")
        return r

    def ip(self, name: str) -> str:
        return self("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name).stdout.strip()

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            ids = self("ps", "-aq", check=False).stdout.split()
            if ids:
                self("rm", "-f", *ids, check=False)
            for net in self("network", "ls", "-q", "--filter", f"driver={self.plugin}", check=False).stdout.split():
                self("network", "rm", net, check=False)
        self.stop()
        try:  # a tether daemon killed with SIGKILL cannot remove its plugin socket
            os.unlink(f"/run/docker/plugins/{self.plugin}.sock")
        except FileNotFoundError:
            pass
        mounts = [line.split()[1] for line in open("/proc/mounts") if line.split()[1].startswith(str(self.base))]
        for mount in sorted(mounts, key=len, reverse=True):
            sh("umount", "-l", mount, check=False)
        shutil.rmtree(self.base, ignore_errors=True)



    def load_image(self, page: str) -> None:
        """The busybox rootfs as ``tbb:latest``, imported offline."""
        self("import", str(busybox_image(self.base, page)), IMAGE)


@contextmanager
def docker_engine(host: Host, page: str) -> Iterator[Docker]:
    """A running dockerd in ``host``'s namespace with the busybox image serving ``page``,
    and ``host``'s tether daemon started to serve the plugin under a per-test name. Skips
    the test where Docker is not installed; afterwards, asserts that nothing of Docker's
    runs on. For a fixture: ``with docker_engine(bare_host, PAGE) as d: yield d``."""
    if not have_docker():
        pytest.skip("needs Debian's docker.io and busybox-static (apt-get install docker.io busybox-static)")
    plugin = host.prefix.rstrip("-") + "d"
    host.daemon_args = ["--docker-plugin", plugin]
    host.start_daemon()
    base = Path(tempfile.mkdtemp(prefix=f"{host.prefix}dk-"))
    d = Docker(host.enter, base, plugin)
    try:
        d.start()
        d.load_image(page)
        yield d
    finally:
        d.cleanup()
        left = processes_mentioning(str(base))  # dockerd, its containerd, shims, containers
        assert not left, f"dockerd left processes behind: {left}"
