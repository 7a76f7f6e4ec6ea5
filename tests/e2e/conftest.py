"""A simulated host per test: its own network namespace running its own tether daemon.

The daemon and every CLI call enter the host's namespace with ``nsenter --net`` (not
``ip netns exec``, which would also give them a private mount namespace and hide the
container namespaces they bind under /var/run/netns). Everything carries a unique prefix
and is removed afterwards, even when the test fails: containers are killed through the
daemon, leftover namespaces with the prefix are deleted, and deleting the host namespace
takes its bridges and veths with it.

Shared with the test modules: ``World`` (a LAN and an internet around a host), the
``Cni`` runner (``tether-cni`` run as a runtime runs it, and its ``cni`` fixture), and the
prefix sweep the datapath tests use (``netns_with``, ``remove_prefixed``, ...).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

NETNS_DIR = "/var/run/netns"
REPO = Path(__file__).resolve().parents[2]


def sh(*cmd: str, check: bool = True, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=timeout, **kw)


def netns_with(prefix: str) -> list[str]:
    """The names of the namespaces (``ip netns``) that start with ``prefix``, sorted."""
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def root_links_with(prefix: str) -> list[str]:
    """The links of the machine's own namespace whose names start with ``prefix``."""
    links = json.loads(sh("ip", "-j", "link").stdout or "[]")
    return [link["ifname"] for link in links if link["ifname"].startswith(prefix)]


def remove_prefixed(prefix: str) -> None:
    """Delete every ``prefix*`` namespace, and any ``prefix*`` link in the machine's own
    namespace (there only if a bug put one there). Call from a fixture's ``finally``."""
    for name in netns_with(prefix):
        sh("ip", "netns", "del", name, check=False)
    for link in root_links_with(prefix):
        sh("ip", "link", "del", link, check=False)


def assert_nothing_left(prefix: str) -> None:
    """After ``remove_prefixed``: no ``prefix*`` namespace or root-namespace link is left."""
    assert netns_with(prefix) == [], "namespaces left behind"
    assert root_links_with(prefix) == [], "links left in the machine's own namespace"


@dataclass
class Host:
    name: str  # the host's netns name
    prefix: str  # netns prefix of its daemon
    state_dir: str
    socket: str
    daemon: subprocess.Popen[bytes] | None = None
    extra_netns: list[str] = field(default_factory=list)
    daemon_args: list[str] = field(default_factory=list)

    @property
    def netns_path(self) -> str:
        return f"{NETNS_DIR}/{self.name}"

    def enter(self) -> list[str]:
        return ["nsenter", f"--net={self.netns_path}", "--"]

    def start_daemon(self) -> None:
        log = open(os.path.join(self.state_dir, "daemon.log"), "ab")
        self.daemon = subprocess.Popen(
            [*self.enter(), sys.executable, "-m", "tether.cli", "daemon", "--state-dir", self.state_dir,
             "--socket", self.socket, "--netns-prefix", self.prefix, *self.daemon_args],
            stdout=log, stderr=log, start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                raise RuntimeError(f"daemon exited: {open(os.path.join(self.state_dir, 'daemon.log')).read()}")
            if os.path.exists(self.socket) and self.tether("network", "ls", check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError("daemon did not come up")

    def kill_daemon(self, sig: int = signal.SIGKILL) -> None:
        if self.daemon and self.daemon.poll() is None:
            self.daemon.send_signal(sig)
            self.daemon.wait(timeout=20)
        self.daemon = None

    def tether(self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, "TETHER_NO_AUTOSTART": "1", **(env or {})}
        cmd = [*self.enter(), sys.executable, "-m", "tether.cli", "--socket", self.socket,
               "--state-dir", self.state_dir, *args]
        result = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout, env=full_env)
        if check and result.returncode != 0:
            raise AssertionError(f"tether {' '.join(args)} failed ({result.returncode}): {result.stderr}{result.stdout}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.tether(*args).stdout)

    def inspect(self, name: str) -> dict[str, Any]:
        return self.json("inspect", name)[0]

    def in_host(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return sh(*self.enter(), *cmd, check=check, timeout=timeout)

    def in_container(self, name: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.prefix + name, *cmd, check=check)

    def snapshot(self) -> dict[str, Any]:
        """Everything a failed command must leave unchanged: store and kernel."""
        links = self.in_host("ip", "-o", "link").stdout
        return {
            "networks": self.json("network", "ls", "--format", "json"),
            "containers": self.json("ps", "-a", "--format", "json"),
            "links": sorted(line.split(":")[1].strip() for line in links.splitlines()),
            "addrs": sorted(self.in_host("ip", "-o", "-4", "addr").stdout.split()),
            "netns": sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(self.prefix)),
        }

    def cleanup(self) -> None:
        if self.daemon and self.daemon.poll() is None:
            try:
                for c in self.json("ps", "-a", "--format", "json"):
                    self.tether("rm", "-f", c["name"], check=False)
            except Exception:
                pass
        self.kill_daemon()
        # any container process still in one of our namespaces
        for ns in [n for n in os.listdir(NETNS_DIR) if n.startswith(self.prefix)] + [self.name]:
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for ns in [n for n in os.listdir(NETNS_DIR) if n.startswith(self.prefix)] + self.extra_netns + [self.name]:
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.state_dir, ignore_errors=True)


def processes_mentioning(*needles: str) -> list[str]:
    """Live processes (not zombies) whose command line mentions any of ``needles``: what a
    lab or a dockerd left behind."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z" and any(n in args for n in needles):
            found.append(f"{entry}: {args}")
    return found


def busybox_image(base: Path, page: str) -> Path:
    """An image without a registry, for Podman and Docker to import: a rootfs tarball of
    Debian's static busybox with ``page`` as /www/index.html. Returns the tarball."""
    rootfs = base / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "www").mkdir()
    shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in ("sh", "ping", "ip", "sleep", "httpd", "wget", "cat"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "www" / "index.html").write_text(page)
    tarball = base / "rootfs.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(rootfs, arcname=".")
    return tarball


def _new_host() -> Host:
    tag = uuid.uuid4().hex[:6]
    name = f"tt{tag}h"
    state_dir = tempfile.mkdtemp(prefix=f"tether-{tag}-")
    host = Host(name=name, prefix=f"tt{tag}-", state_dir=state_dir, socket=os.path.join(state_dir, "tether.sock"))
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")
    return host


@pytest.fixture
def bare_host() -> Iterator[Host]:
    """A host namespace with no daemon running yet."""
    host = _new_host()
    try:
        yield host
    finally:
        host.cleanup()


@pytest.fixture
def host(bare_host: Host) -> Host:
    """A host namespace with its own tether daemon."""
    bare_host.start_daemon()
    return bare_host


@dataclass
class World:
    """The outside of a host, built from namespaces the test owns:

        host (198.51.100.2) --- lan (198.51.100.1, a machine on the LAN and the router)
                                 lan (203.0.113.1) --- inet (203.0.113.10, "the internet")

    The internet routes back only to the LAN, so a container reaches it only through the
    host's NAT. TEST-NET ranges: nothing real is ever addressed."""

    host: Host
    lan: str
    inet: str
    host_ip: str = "198.51.100.2"
    lan_ip: str = "198.51.100.1"
    inet_ip: str = "203.0.113.10"

    def in_lan(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.lan, *cmd, check=check, timeout=timeout)

    def in_inet(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.inet, *cmd, check=check, timeout=timeout)


def build_world(host: Host) -> World:
    lan, inet = host.prefix + "lan", host.prefix + "inet"
    host.extra_netns += [lan, inet]
    for ns in (lan, inet):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "link", "add", "twup0", "netns", host.name, "type", "veth", "peer", "name", "twlan0", "netns", lan)
    sh("ip", "link", "add", "twlan1", "netns", lan, "type", "veth", "peer", "name", "twinet0", "netns", inet)
    for ns, dev, addr in ((host.name, "twup0", "198.51.100.2/24"), (lan, "twlan0", "198.51.100.1/24"),
                          (lan, "twlan1", "203.0.113.1/24"), (inet, "twinet0", "203.0.113.10/24")):
        sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
    sh("ip", "-n", host.name, "route", "add", "default", "via", "198.51.100.1")
    sh("ip", "-n", inet, "route", "add", "198.51.100.0/24", "via", "203.0.113.1")
    sh("ip", "netns", "exec", lan, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    return World(host=host, lan=lan, inet=inet)


@pytest.fixture
def world(bare_host: Host) -> World:
    """A host with a LAN and an internet around it, and a daemon whose upstream DNS is the
    internet's fake resolver."""
    w = build_world(bare_host)
    bare_host.daemon_args = ["--dns-upstream", f"{w.inet_ip}:53"]
    bare_host.start_daemon()
    return w


# ---------------------------------------------------------------------- tether-cni, as a runtime runs it
def netconf(name: str, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": name, "type": "tether", **extra}


@dataclass
class Call:
    rc: int
    out: dict[str, Any] | None
    stderr: str


@dataclass
class Cni:
    """Runs the plugin in the host's namespace; makes container namespaces the test owns."""

    host: Host
    namespaces: list[str] = field(default_factory=list)
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def netns(self) -> str:
        name = f"{self.host.prefix[:-1]}c{len(self.namespaces)}"
        self.host.extra_netns.append(name)  # the host fixture deletes it, even on failure
        self.namespaces.append(name)
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return f"{NETNS_DIR}/{name}"

    def call(self, command: str, config: Any, cid: str = "", netns: str = "", ifname: str = "eth0",
             args: str = "", env: dict[str, str] | None = None) -> Call:
        full_env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "CNI_COMMAND": command,
                    "CNI_PATH": "/opt/cni/bin:/usr/lib/cni", "TETHER_SOCKET": self.host.socket}
        for key, value in (("CNI_CONTAINERID", cid), ("CNI_NETNS", netns), ("CNI_IFNAME", ifname), ("CNI_ARGS", args)):
            if value:
                full_env[key] = value
        full_env.update(env or {})
        stdin = config if isinstance(config, str) else json.dumps(config)
        proc = subprocess.run([*self.host.enter(), sys.executable, "-m", "tether.cni"], input=stdin, env=full_env,
                              capture_output=True, text=True, timeout=60, cwd=REPO, check=False)
        # whatever happens: at most one line of JSON on stdout, and an error's msg is one line
        assert len(proc.stdout.splitlines()) <= 1, proc.stdout
        out = json.loads(proc.stdout) if proc.stdout.strip() else None
        if proc.returncode != 0:
            assert out is not None and isinstance(out.get("code"), int) and "\n" not in out["msg"], proc.stdout
        return Call(proc.returncode, out, proc.stderr)

    def add(self, config: Any, cid: str, netns: str, **kw: Any) -> dict[str, Any]:
        result = self.call("ADD", config, cid, netns, **kw)
        assert result.rc == 0 and result.out is not None, result
        return result.out

    def in_ns(self, netns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", os.path.basename(netns), *cmd, check=check)

    def serve(self, netns: str, *cmd: str) -> None:
        self.servers.append(subprocess.Popen(["ip", "netns", "exec", os.path.basename(netns), *cmd],
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def cleanup(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait()
        for name in self.namespaces:  # anything else still running in our namespaces
            for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass


@pytest.fixture
def cni(host: Host) -> Iterator[Cni]:
    c = Cni(host)
    try:
        yield c
    finally:
        c.cleanup()
