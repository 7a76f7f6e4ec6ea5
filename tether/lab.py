"""The lab: several simulated hosts on this one machine, for trying tether's overlay networks.

Design note. A lab host is a network namespace (``h1`` ... ``hN``) running its own tether
daemon; the hosts share an underlay the way machines share a LAN:

    h1 (10.99.0.1) --eth0/veth--+
    h2 (10.99.0.2) --eth0/veth--+-- bridge "underlay" (10.99.0.254) in tl-fabric --- tl-inet
    ...                         |   etcd on 10.99.0.254:2379, ip_forward=1         (203.0.113.10)
    hN (10.99.0.N) --eth0/veth--+

* Namespaces, not containers: every host is a plain named netns, so ``ip netns exec h3
  ping ...`` works and the daemons' container namespaces (``h3-web``) sit beside them in
  /var/run/netns. Daemons and etcd are entered with ``nsenter --net`` rather than ``ip
  netns exec``: the latter gives the process a private mount namespace, which would hide
  the container namespaces a daemon binds under /var/run/netns.
* The underlay MTU is 1400, as on this machine's real eth0, so overlay MTUs are derived
  the way they will be on real hosts. The fabric is every host's default gateway and a
  router to an "internet" namespace, so NAT out of a host can be tried too.
* Building uses ``ip -batch`` (one process per namespace, the hosts' in parallel): a
  whole 16-host fabric is a few dozen milliseconds, and the time of ``lab up`` is the
  daemons' start. Every veth is created directly inside its two namespaces: the machine's
  own namespace is never touched except to create and delete namespaces.
* What the lab made is recorded in ``lab.json`` under its root *before* it is made (the
  file is claimed with O_EXCL, which is also what refuses a second lab). ``lab_down``
  trusts none of it blindly: it also finds the hosts from the fabric bridge's ports and
  the processes by the network namespace they live in, so a half-built or partly stale
  lab still comes down completely. It collects errors instead of stopping at the first.
* Several labs can coexist (tests): ``name_prefix`` changes every namespace name
  (``tt1h1``, ``tt1-fabric``), and ``root``/``state_root`` every path. Addresses do not
  change: each lab has its own fabric namespace, so 10.99.0.0/24 never meets another one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from .api.client import Client, q
from .datapath import nsutil
from .errors import Conflict, InvalidInput, NotFound, SystemFailure, TetherError

__all__ = [
    "DEFAULT_ROOT",
    "DEFAULT_STATE_ROOT",
    "LabDaemonFailed",
    "LabHost",
    "LabInfo",
    "daemon_argv",
    "default_root",
    "default_state_root",
    "enter_host",
    "find_host",
    "host_socket",
    "lab_down",
    "lab_json_path",
    "lab_status",
    "lab_up",
    "load_lab",
    "plan_lab",
    "print_status",
    "run_down",
    "run_up",
]

DEFAULT_ROOT = "/run/tether-lab"  # lab.json and the daemons' sockets (tmpfs: gone on reboot)
DEFAULT_STATE_ROOT = "/var/lib/tether-lab"  # etcd's data, each host's state dir and logs
NETNS_DIR = "/var/run/netns"

UNDERLAY_NET = "10.99.0"
UNDERLAY_PREFIXLEN = 24
FABRIC_IP = f"{UNDERLAY_NET}.254"
UNDERLAY_MTU = 1400  # as this machine's own eth0 (PLATFORM.md)
INET_NET = "203.0.113"
INET_ROUTER_IP = f"{INET_NET}.1"
INET_IP = f"{INET_NET}.10"
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
MAX_HOSTS = 253  # 10.99.0.1 .. .253; .254 is the fabric

_BRIDGE = "underlay"  # the fabric's bridge; its ports are named h1 .. hN whatever the prefix
_INET_PORT = "inet0"
_ETCD_PATIENCE = 20.0
_STOP_PATIENCE = 5.0  # seconds for killed processes to go, on lab down
_PREFIX_RE = re.compile(r"^[a-z0-9]{0,10}$")

Report = Callable[[str], None]


class LabDaemonFailed(SystemFailure):
    """A lab host's tether daemon exited or did not answer while the lab came up.

    Kept apart from other bring-up failures so that tests can tell "the daemon cannot
    run yet" from "the lab itself is broken"."""


# ---------------------------------------------------------------------- what a lab is
@dataclass
class LabHost:
    """One simulated host: a netns on the underlay with its own daemon."""

    name: str  # also its netns name: h1, or tt1h1 with a prefix
    index: int  # i in hI and in 10.99.0.I
    netns: str
    underlay_ip: str
    socket: str
    state_dir: str
    daemon_pid: int | None = None

    @property
    def netns_path(self) -> str:
        return f"{NETNS_DIR}/{self.netns}"

    @property
    def container_netns_prefix(self) -> str:
        """The daemon's ``--netns-prefix``: its containers' namespaces are ``h1-NAME``."""
        return f"{self.netns}-"

    @property
    def log(self) -> str:
        return os.path.join(self.state_dir, "daemon.log")

    def enter(self) -> list[str]:
        """The command prefix that runs a program inside this host (``nsenter --net``)."""
        return ["nsenter", f"--net={self.netns_path}", "--"]

    def tether_argv(self, *args: str) -> list[str]:
        """The command line of ``tether ARGS`` run inside this host against its daemon
        (run it with ``cli_env()``)."""
        return [*self.enter(), sys.executable, "-m", "tether.cli", *args]

    def cli_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env.pop("TETHER_HOST", None)
        env.update(TETHER_SOCKET=self.socket, TETHER_STATE_DIR=self.state_dir, TETHER_NO_AUTOSTART="1")
        return _with_pythonpath(env)


@dataclass
class LabInfo:
    """What a lab is made of, as recorded in ``{root}/lab.json``."""

    prefix: str
    root: str
    state_root: str
    fabric: str  # netns names
    inet: str
    grace: float
    hosts: list[LabHost] = field(default_factory=list)
    etcd_pid: int | None = None
    created: float = 0.0

    @property
    def tag(self) -> str:
        return self.prefix or "tl"

    @property
    def etcd_url(self) -> str:
        return f"http://{FABRIC_IP}:{ETCD_CLIENT_PORT}"

    @property
    def cluster_store(self) -> str:
        """The daemons' ``--cluster-store``."""
        return f"etcd://{FABRIC_IP}:{ETCD_CLIENT_PORT}"

    @property
    def etcd_data_dir(self) -> str:
        return os.path.join(self.state_root, "etcd")

    @property
    def etcd_log(self) -> str:
        return os.path.join(self.state_root, "etcd.log")

    @property
    def path(self) -> str:
        return lab_json_path(self.root)

    def namespaces(self) -> list[str]:
        """Every namespace the lab itself makes (not the daemons' container namespaces)."""
        return [self.fabric, self.inet, *(h.netns for h in self.hosts)]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "prefix": self.prefix,
            "root": self.root,
            "state_root": self.state_root,
            "grace": self.grace,
            "created": self.created,
            "fabric": {"netns": self.fabric, "address": FABRIC_IP, "bridge": _BRIDGE},
            "inet": {"netns": self.inet, "address": INET_IP},
            "etcd": {
                "pid": self.etcd_pid,
                "url": self.etcd_url,
                "cluster_store": self.cluster_store,
                "data_dir": self.etcd_data_dir,
                "log": self.etcd_log,
            },
            "hosts": [{**asdict(h), "log": h.log} for h in self.hosts],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabInfo:
        hosts = [
            LabHost(
                name=str(h["name"]),
                index=int(h["index"]),
                netns=str(h.get("netns", h["name"])),
                underlay_ip=str(h["underlay_ip"]),
                socket=str(h["socket"]),
                state_dir=str(h["state_dir"]),
                daemon_pid=h.get("daemon_pid"),
            )
            for h in data.get("hosts", [])
        ]
        return cls(
            prefix=str(data.get("prefix", "")),
            root=str(data["root"]),
            state_root=str(data["state_root"]),
            fabric=str(data["fabric"]["netns"]),
            inet=str(data["inet"]["netns"]),
            grace=float(data.get("grace", 0.0)),
            hosts=hosts,
            etcd_pid=(data.get("etcd") or {}).get("pid"),
            created=float(data.get("created", 0.0)),
        )

    def find(self, name: str) -> LabHost:
        """The host called ``name`` (``h2`` also finds ``tt1h2`` in a prefixed lab)."""
        for host in self.hosts:
            if name in (host.name, host.netns, f"h{host.index}"):
                return host
        names = ", ".join(h.name for h in self.hosts) or "none"
        raise NotFound(f"no lab host {name!r}: the lab's hosts are {names}")


def plan_lab(hosts: int, grace: float, root: str, state_root: str, name_prefix: str) -> LabInfo:
    """The lab ``lab_up`` would build, with nothing made yet."""
    if not _PREFIX_RE.match(name_prefix):
        raise InvalidInput(f"lab name prefix {name_prefix!r}: use up to 10 lowercase letters and digits")
    if not 1 <= hosts <= MAX_HOSTS:
        raise InvalidInput(f"a lab has 1 to {MAX_HOSTS} hosts, not {hosts}")
    if grace <= 0:
        raise InvalidInput(f"--grace must be a positive number of seconds, not {grace}")
    root, state_root = os.path.abspath(root), os.path.abspath(state_root)
    tag = name_prefix or "tl"
    info = LabInfo(
        prefix=name_prefix,
        root=root,
        state_root=state_root,
        fabric=f"{tag}-fabric",
        inet=f"{tag}-inet",
        grace=grace,
        created=time.time(),
    )
    info.hosts = [_plan_host(info, i) for i in range(1, hosts + 1)]
    return info


def _plan_host(info: LabInfo, index: int) -> LabHost:
    name = f"{info.prefix}h{index}"
    return LabHost(
        name=name,
        index=index,
        netns=name,
        underlay_ip=f"{UNDERLAY_NET}.{index}",
        socket=os.path.join(info.root, f"{name}.sock"),
        state_dir=os.path.join(info.state_root, name),
    )


def default_root() -> str:
    """Where lab.json and the sockets live: ``TETHER_LAB_ROOT`` or /run/tether-lab."""
    return os.environ.get("TETHER_LAB_ROOT") or DEFAULT_ROOT


def default_state_root() -> str:
    return os.environ.get("TETHER_LAB_STATE_ROOT") or DEFAULT_STATE_ROOT


def lab_json_path(root: str) -> str:
    return os.path.join(root, "lab.json")


def load_lab(root: str | None = None) -> LabInfo:
    """The lab recorded under ``root``; ``NotFound`` when there is none."""
    path = lab_json_path(root or default_root())
    try:
        with open(path, encoding="utf-8") as f:
            return LabInfo.from_json(json.load(f))
    except FileNotFoundError:
        raise NotFound("no lab is up: run `tether lab up` first") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemFailure(f"cannot read {path}: {exc}; `tether lab down` removes what it can") from exc


def find_host(name: str, root: str | None = None) -> LabHost:
    return load_lab(root).find(name)


def host_socket(name: str, root: str | None = None) -> str:
    """The API socket of lab host ``name``'s daemon."""
    return find_host(name, root).socket


def _save(info: LabInfo) -> None:
    tmp = info.path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(info.to_json(), f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, info.path)


def _claim(info: LabInfo) -> None:
    """Create lab.json, failing if it exists: this is what refuses a second lab."""
    os.makedirs(info.root, mode=0o755, exist_ok=True)
    try:
        fd = os.open(info.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise Conflict(f"a lab is already up ({info.path}): run `tether lab down` first") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(info.to_json(), f, indent=2, sort_keys=True)
        f.write("\n")


# ---------------------------------------------------------------------- small helpers
def _with_pythonpath(env: dict[str, str]) -> dict[str, str]:
    """Make ``python -m tether.cli`` find this very tether, whatever the cwd."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if here not in parts:
        env["PYTHONPATH"] = os.pathsep.join([here, *parts])
    return env


def _ip_batch(lines: list[str], netns: str | None = None) -> subprocess.Popen[str]:
    """Start ``ip [-n NETNS] -batch -`` over ``lines``; finish it with ``_finish``."""
    cmd = ["ip", *(["-n", netns] if netns else []), "-batch", "-"]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None
    proc.stdin.write("\n".join(lines) + "\n")  # a few KiB at most: fits the pipe
    proc.stdin.close()
    proc.stdin = None  # so that communicate() only reads
    return proc


def _finish(proc: subprocess.Popen[str], what: str) -> None:
    _, err = proc.communicate(timeout=60)
    if proc.returncode != 0:
        reason = " ".join(err.strip().splitlines()[-2:]) or f"exit status {proc.returncode}"
        raise SystemFailure(f"building the lab failed at {what}: {reason}")


def _netns_exists(name: str) -> bool:
    return os.path.lexists(f"{NETNS_DIR}/{name}")


def _netns_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _process_state(pid: int) -> str | None:
    """The state letter of ``pid`` (R, S, Z ...), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


def _alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    _reap(pid)
    state = _process_state(pid)
    return state is not None and state not in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _is_daemon_of(pid: int | None, host: LabHost) -> bool:
    """Whether ``pid`` is still this host's tether daemon (pids get reused)."""
    if not _alive(pid):
        return False
    assert pid is not None
    args = _cmdline(pid)
    return "tether.cli" in args and "daemon" in args and host.socket in args


def _is_etcd_of(pid: int | None, info: LabInfo) -> bool:
    if not _alive(pid):
        return False
    assert pid is not None
    args = _cmdline(pid)
    return bool(args) and os.path.basename(args[0]) == "etcd" and info.etcd_data_dir in args


# Children this process started (daemons, etcd), so their exit can be reaped: a dead child
# stays a zombie, and a zombie still answers kill(pid, 0).
_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()


def _spawn(argv: list[str], log_path: str, env: dict[str, str] | None = None) -> int:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,  # detached: outlives the CLI, and a ^C is not its
            close_fds=True,
        )
    with _children_lock:
        _children[proc.pid] = proc
    return proc.pid


def _reap(pid: int) -> None:
    with _children_lock:
        proc = _children.get(pid)
    if proc is not None and proc.poll() is not None:
        with _children_lock:
            _children.pop(pid, None)


def _log_tail(path: str, lines: int = 4) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            tail = [line.strip() for line in f.readlines()[-lines:] if line.strip()]
    except OSError:
        return "no log"
    return " | ".join(tail) or "no log output"


def _connect_in_netns(netns_path: str, address: tuple[str, int], timeout: float) -> socket.socket:
    """A TCP connection made from inside ``netns_path`` (the calling thread never moves)."""

    def body() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        return sock

    return nsutil.run_in_netns(netns_path, body)


def _etcd_healthy(info: LabInfo, netns: str | None = None, timeout: float = 1.0) -> bool:
    """Whether etcd answers ``GET /health`` with true, asked from inside ``netns``
    (default: the fabric, where it runs)."""
    try:
        sock = _connect_in_netns(f"{NETNS_DIR}/{netns or info.fabric}", (FABRIC_IP, ETCD_CLIENT_PORT), timeout)
    except OSError:
        return False
    with sock:
        try:
            sock.sendall(f"GET /health HTTP/1.0\r\nHost: {FABRIC_IP}\r\n\r\n".encode())
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        except OSError:
            return False
    return b" 200 " in reply.split(b"\r\n", 1)[0] and b'"true"' in reply


# ---------------------------------------------------------------------- lab up
def lab_up(
    hosts: int,
    grace: float = 10.0,
    root: str = DEFAULT_ROOT,
    state_root: str = DEFAULT_STATE_ROOT,
    name_prefix: str = "",
    *,
    start_daemons: bool = True,
    report: Report | None = None,
) -> LabInfo:
    """Build a lab of ``hosts`` hosts and return what it is made of.

    ``report(step)`` is called as each step finishes: "fabric", "etcd", "h1 daemon" ...
    Refuses (``Conflict``) if a lab is recorded under ``root`` or one of the namespace
    names is taken. On any failure, including ^C, everything made so far is removed
    again before the error propagates; ``LabDaemonFailed`` means the underlay and etcd
    came up but a daemon did not. ``start_daemons=False`` builds only fabric and etcd.
    """
    info = plan_lab(hosts, grace, root, state_root, name_prefix)
    made_root = not os.path.isdir(info.root)
    _claim(info)
    try:
        taken = [n for n in info.namespaces() if _netns_exists(n)]
        taken += _container_namespaces(info.hosts)
        if taken:
            shown = ", ".join(taken[:5]) + (" ..." if len(taken) > 5 else "")
            raise Conflict(
                f"network namespace(s) {shown} already exist and are not this lab's: "
                f"remove them or use another lab prefix"
            )
    except BaseException:
        os.unlink(info.path)
        if made_root:
            os.rmdir(info.root)
        raise
    done = report or (lambda step: None)
    try:
        _build_underlay(info)
        done("fabric")
        _start_etcd(info)
        done("etcd")
        if start_daemons:
            _start_daemons(info, done)
    except BaseException:
        lab_down(info.root)
        raise
    return info


def _build_underlay(info: LabInfo) -> None:
    for path in [info.etcd_data_dir, *(h.state_dir for h in info.hosts)]:
        shutil.rmtree(path, ignore_errors=True)  # a fresh lab: no stale etcd member or state
    for host in info.hosts:
        os.makedirs(host.state_dir, mode=0o755, exist_ok=True)
    os.makedirs(info.state_root, mode=0o755, exist_ok=True)

    _finish(_ip_batch([f"netns add {n}" for n in info.namespaces()]), "creating the namespaces")

    fabric = [
        "link set lo up",
        f"link add {_BRIDGE} type bridge",
        f"addr add {FABRIC_IP}/{UNDERLAY_PREFIXLEN} dev {_BRIDGE}",
        f"link add {_INET_PORT} type veth peer name eth0 netns {info.inet}",
        f"addr add {INET_ROUTER_IP}/24 dev {_INET_PORT}",
        f"link set {_INET_PORT} up",
    ]
    for host in info.hosts:
        # port named by index: short and the same whatever the prefix
        fabric += [
            (
                f"link add h{host.index} mtu {UNDERLAY_MTU} master {_BRIDGE} type veth "
                f"peer name eth0 netns {host.netns} mtu {UNDERLAY_MTU}"
            ),
            f"link set h{host.index} up",
        ]
    fabric.append(f"link set {_BRIDGE} up")
    _finish(_ip_batch(fabric, info.fabric), f"the fabric ({info.fabric})")

    def forward() -> None:
        # the fabric routes between underlay and internet; the hosts keep the default
        # they were created with (the daemon turns forwarding on where it needs it)
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("1")

    nsutil.run_in_netns(f"{NETNS_DIR}/{info.fabric}", forward)

    procs = [
        (
            info.inet,
            _ip_batch(
                [
                    "link set lo up",
                    f"addr add {INET_IP}/24 dev eth0",
                    "link set eth0 up",
                    f"route add {UNDERLAY_NET}.0/{UNDERLAY_PREFIXLEN} via {INET_ROUTER_IP}",
                ],
                info.inet,
            ),
        )
    ]
    for host in info.hosts:
        procs.append(
            (
                host.netns,
                _ip_batch(
                    [
                        "link set lo up",
                        f"addr add {host.underlay_ip}/{UNDERLAY_PREFIXLEN} dev eth0",
                        "link set eth0 up",
                        f"route add default via {FABRIC_IP}",
                    ],
                    host.netns,
                ),
            )
        )
    for netns, proc in procs:
        _finish(proc, netns)


def _etcd_binary() -> str:
    from .testing.etcd import EtcdUnavailable, ensure_etcd_installed

    try:
        return ensure_etcd_installed()
    except EtcdUnavailable as exc:
        raise SystemFailure(str(exc)) from exc


def _start_etcd(info: LabInfo) -> None:
    name = f"{info.tag}-etcd"
    client = info.etcd_url
    peer = f"http://{FABRIC_IP}:{ETCD_PEER_PORT}"
    argv = [
        "nsenter", f"--net={NETNS_DIR}/{info.fabric}", "--",
        _etcd_binary(),
        "--name", name,
        "--data-dir", info.etcd_data_dir,
        "--listen-client-urls", client,
        "--advertise-client-urls", client,
        "--listen-peer-urls", peer,
        "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"{name}={peer}",
        "--initial-cluster-state", "new",
        "--initial-cluster-token", name,
        # short raft ticks: a single member elects itself in ~100 ms instead of ~1 s
        "--heartbeat-interval", "10",
        "--election-timeout", "100",
        "--logger", "zap",
        "--log-outputs", "stderr",
        "--log-level", "warn",
    ]  # fmt: skip
    # nsenter execs etcd without forking, so this pid is etcd's
    info.etcd_pid = _spawn(argv, info.etcd_log)
    _save(info)
    deadline = time.monotonic() + _ETCD_PATIENCE
    while time.monotonic() < deadline:
        if not _alive(info.etcd_pid):
            raise SystemFailure(f"etcd exited at start: {_log_tail(info.etcd_log)}")
        if _etcd_healthy(info, timeout=0.5):
            return
        time.sleep(0.02)
    raise SystemFailure(f"etcd did not become healthy in {_ETCD_PATIENCE:.0f} s: {_log_tail(info.etcd_log)}")


def daemon_argv(info: LabInfo, host: LabHost) -> list[str]:
    """How the lab runs ``host``'s daemon: inside the host's netns, joined to the cluster."""
    return [
        *host.enter(),
        sys.executable, "-m", "tether.cli", "daemon",
        "--state-dir", host.state_dir,
        "--socket", host.socket,
        "--netns-prefix", host.container_netns_prefix,
        "--cluster-store", info.cluster_store,
        "--cluster-advertise", host.underlay_ip,
        "--node-name", host.name,
        "--node-grace", f"{info.grace:g}",
        "--dns-upstream", f"{INET_IP}:53",
    ]  # fmt: skip


def _start_daemons(info: LabInfo, done: Report) -> None:
    env = _with_pythonpath(dict(os.environ))
    for key in ("TETHER_HOST", "TETHER_SOCKET", "TETHER_STATE_DIR", "TETHER_NETNS_PREFIX"):
        env.pop(key, None)
    for host in info.hosts:
        try:
            os.unlink(host.socket)
        except FileNotFoundError:
            pass
        host.daemon_pid = _spawn(daemon_argv(info, host), host.log, env)
    _save(info)

    # Every daemon starts at once; a Python start is CPU-bound, so allow more time for more.
    deadline = time.monotonic() + 20.0 + 1.5 * len(info.hosts)
    pending = {h.name: h for h in info.hosts}
    while pending:
        for name, host in list(pending.items()):
            if not _alive(host.daemon_pid):
                raise LabDaemonFailed(f"the tether daemon of {name} exited at start: {_log_tail(host.log)}")
            if os.path.exists(host.socket) and Client(host.socket, timeout=2.0).alive():
                del pending[name]
                done(f"{name} daemon")
        if not pending:
            break
        if time.monotonic() > deadline:
            first = next(iter(pending.values()))
            raise LabDaemonFailed(
                f"the tether daemon of {', '.join(pending)} did not answer on its socket: "
                f"{first.log}: {_log_tail(first.log)}"
            )
        time.sleep(0.05)


# ---------------------------------------------------------------------- lab down
def _container_namespaces(hosts: Iterable[LabHost]) -> list[str]:
    """Namespaces named ``{host}-*``: the containers of these hosts' daemons."""
    prefixes = tuple(h.container_netns_prefix for h in hosts)
    if not prefixes:
        return []
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefixes))


def _fabric_host_indexes(fabric: str) -> list[int]:
    """The host indexes that have a port on the fabric bridge (h1 .. hN)."""
    if not _netns_exists(fabric):
        return []
    result = subprocess.run(
        ["ip", "-n", fabric, "-o", "link", "show"], capture_output=True, text=True, timeout=30, check=False
    )
    found = re.findall(r"^\d+:\s+h(\d+)@", result.stdout, flags=re.MULTILINE)
    return sorted(int(i) for i in found)


def _discover(root: str, state_root: str | None, name_prefix: str | None) -> LabInfo | None:
    """The lab as lab.json records it, completed with what the kernel shows.

    Without a readable lab.json, the names are those a lab with ``name_prefix`` would
    have; with no ``name_prefix`` either there is nothing safe to guess (another lab may
    own ``tl-fabric``), and None is returned."""
    try:
        info = load_lab(root)
    except TetherError:
        if name_prefix is None:
            return None
        tag = name_prefix or "tl"
        info = LabInfo(name_prefix, root, state_root or "", f"{tag}-fabric", f"{tag}-inet", grace=0.0)
    known = {h.index for h in info.hosts}
    info.hosts += [_plan_host(info, i) for i in _fabric_host_indexes(info.fabric) if i not in known]
    return info


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
                pid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _pids_in_namespaces(netns_names: Iterable[str]) -> set[int]:
    """Every process whose network namespace is one of these (one scan of /proc)."""
    keys = {k for k in (_netns_key(f"{NETNS_DIR}/{n}") for n in netns_names) if k}
    if not keys:
        return set()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _netns_key(f"/proc/{entry}/ns/net") in keys:
            found.add(int(entry))
    return found - _ancestors()


def _stop(pids: set[int], errors: list[str]) -> None:
    """SIGKILL these processes and wait until they are gone.

    No SIGTERM first: the containers were removed already, a daemon is built to survive
    being killed (live restore), and etcd's data is deleted next anyway. A daemon's
    graceful stop takes over a second, which would make every ``lab down`` slow."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except OSError as exc:
            errors.append(f"cannot kill pid {pid}: {exc}")
    deadline = time.monotonic() + _STOP_PATIENCE
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if _alive(p)}
        if pids:
            time.sleep(0.01)
    if pids:
        errors.append(f"processes {sorted(pids)} did not exit")


def _remove_containers(host: LabHost, errors: list[str]) -> None:
    """Ask the host's daemon to remove every container (best effort)."""
    if not os.path.exists(host.socket):
        return
    client = Client(host.socket, timeout=15.0)
    try:
        containers = client.get("/containers?all=1")
    except TetherError:
        return  # no daemon: its containers are killed and their namespaces deleted below
    for container in containers:
        try:
            client.delete(f"/containers/{q(container['name'])}?force=1")
        except TetherError as exc:
            errors.append(f"{host.name}: removing container {container['name']}: {exc}")


def lab_down(
    root: str = DEFAULT_ROOT,
    state_root: str | None = None,
    name_prefix: str | None = None,
    *,
    report: Report | None = None,
) -> list[str]:
    """Remove the lab under ``root`` and everything in it; return the errors met.

    Idempotent, and never stops at an error. lab.json may be missing or stale: the hosts
    are also found from the fabric's ports, and processes by the namespace they are in.
    ``state_root``/``name_prefix`` only matter when lab.json is unreadable: then the
    lab's names are derived from ``name_prefix`` (None: only ``root`` is removed) and
    ``state_root`` is removed if given."""
    errors: list[str] = []
    done = report or (lambda step: None)
    root = os.path.abspath(root)
    info = _discover(root, state_root, name_prefix)
    if info is None:
        _remove_tree(root, errors)
        return errors

    # 1. containers, through their daemons, so each daemon undoes its own records
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(info.hosts)))) as pool:
        list(pool.map(lambda h: _remove_containers(h, errors), info.hosts))
    done("containers")

    # 2. processes: the daemons, etcd, and anything else living in the lab's namespaces
    container_ns = _container_namespaces(info.hosts)
    pids = _pids_in_namespaces([*info.namespaces(), *container_ns])
    pids |= {h.daemon_pid for h in info.hosts if h.daemon_pid and _is_daemon_of(h.daemon_pid, h)}
    if info.etcd_pid and _is_etcd_of(info.etcd_pid, info):
        pids.add(info.etcd_pid)
    _stop(pids, errors)
    done("processes")

    # 3. namespaces: the containers' first, then the hosts', the fabric, the internet
    for netns in [*_container_namespaces(info.hosts), *info.namespaces()]:
        path = f"{NETNS_DIR}/{netns}"
        if not os.path.lexists(path):
            continue
        try:
            nsutil.unbind_netns(path)
        except OSError as exc:
            errors.append(f"deleting namespace {netns}: {exc}")
    done("namespaces")

    # 4. files
    for path in (info.root, info.state_root):
        if path:
            _remove_tree(path, errors)
    done("files")
    return errors


def _remove_tree(path: str, errors: list[str]) -> None:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        errors.append(f"removing {path}: {exc}")


# ---------------------------------------------------------------------- lab status
def lab_status(root: str | None = None) -> dict[str, Any]:
    """lab.json checked against reality: is each daemon alive and answering, is etcd?"""
    info = load_lab(root)

    def check(host: LabHost) -> dict[str, Any]:
        running = _is_daemon_of(host.daemon_pid, host)
        answers = running and Client(host.socket, timeout=2.0).alive()
        return {
            "name": host.name,
            "netns": host.netns,
            "netns_exists": _netns_exists(host.netns),
            "underlay_ip": host.underlay_ip,
            "daemon_pid": host.daemon_pid,
            "daemon_running": running,
            "alive": answers,
            "socket": host.socket,
            "state_dir": host.state_dir,
            "log": host.log,
        }

    with ThreadPoolExecutor(max_workers=min(16, max(1, len(info.hosts)))) as pool:
        hosts = list(pool.map(check, info.hosts))
    etcd_running = _is_etcd_of(info.etcd_pid, info)
    return {
        "prefix": info.prefix,
        "root": info.root,
        "state_root": info.state_root,
        "fabric": {"netns": info.fabric, "address": FABRIC_IP, "exists": _netns_exists(info.fabric)},
        "inet": {"netns": info.inet, "address": INET_IP, "exists": _netns_exists(info.inet)},
        "etcd": {
            "url": info.etcd_url,
            "pid": info.etcd_pid,
            "running": etcd_running,
            "alive": etcd_running and _etcd_healthy(info),
            "log": info.etcd_log,
        },
        "hosts": hosts,
    }


# ---------------------------------------------------------------------- CLI glue
def run_up(hosts: int, grace: float, name_prefix: str = "", state_root: str | None = None) -> None:
    """``tether lab up``: build the lab with a progress bar, then say how to use it."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    started = time.monotonic()
    with Progress(
        TextColumn("[bold]lab up[/bold] {task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # in a log, the "ok" lines alone say it all
    ) as progress:
        task = progress.add_task("fabric", total=hosts + 2)

        def report(step: str) -> None:
            progress.console.print(f"  [green]ok[/green] {step}  [dim]{time.monotonic() - started:.2f} s[/dim]")
            progress.update(task, advance=1, description="etcd" if step == "fabric" else "daemons")

        info = lab_up(
            hosts,
            grace,
            root=default_root(),
            state_root=state_root or default_state_root(),
            name_prefix=name_prefix,
            report=report,
        )
    first = info.hosts[0].name
    console.print(
        f"lab up: {len(info.hosts)} host(s) {info.hosts[0].name}..{info.hosts[-1].name} on "
        f"{UNDERLAY_NET}.0/{UNDERLAY_PREFIXLEN}, etcd at {info.etcd_url}, "
        f"in {time.monotonic() - started:.1f} s\n"
        f"try: tether --host {first} network ls    ip netns exec {first} ping {FABRIC_IP}"
    )


def run_down(name_prefix: str | None = None) -> None:
    """``tether lab down``: remove everything; exit 1 after the end if anything failed.

    Should lab.json be lost, the names of the standard lab (no prefix, under
    /run/tether-lab) are assumed; under another root only with an explicit prefix, so
    that a test's ``lab down`` can never take a user's lab with it."""
    root = default_root()
    standard = os.path.abspath(root) == DEFAULT_ROOT
    if name_prefix is None and standard:
        name_prefix = ""
    state_root = os.environ.get("TETHER_LAB_STATE_ROOT") or (DEFAULT_STATE_ROOT if standard else None)
    errors = lab_down(root, state_root=state_root, name_prefix=name_prefix)
    for error in errors:
        sys.stderr.write(f"Warning: {error}\n")
    if errors:
        raise SystemFailure(f"lab down finished with {len(errors)} error(s) (above); run it again to retry")
    sys.stdout.write("lab down\n")


def print_status(fmt: str = "table") -> None:
    """``tether lab status``: a table of hosts and etcd, or the same as JSON."""
    status = lab_status(default_root())
    if fmt == "json":
        sys.stdout.write(json.dumps(status, indent=2, sort_keys=True) + "\n")
        return
    if fmt != "table":
        raise InvalidInput(f"--format {fmt!r}: use table or json")
    from rich.console import Console
    from rich.table import Table

    def yes_no(ok: bool) -> str:
        return "[green]yes[/green]" if ok else "[red]no[/red]"

    table = Table(box=None, header_style="bold")
    for col in ("HOST", "UNDERLAY", "DAEMON PID", "ALIVE", "SOCKET"):
        table.add_column(col)
    for h in status["hosts"]:
        table.add_row(h["name"], h["underlay_ip"], str(h["daemon_pid"] or "-"), yes_no(h["alive"]), h["socket"])
    etcd = status["etcd"]
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = 1000  # a pipe gets whole socket paths, not an 80-column cut
    console.print(table)
    console.print(
        f"etcd {etcd['url']} (pid {etcd['pid'] or '-'}, in {status['fabric']['netns']}): alive {yes_no(etcd['alive'])}"
    )


def _in_netns(path: str) -> bool:
    here, there = _netns_key("/proc/self/ns/net"), _netns_key(path)
    return here is not None and here == there


def enter_host(name: str, ctx: Any, socket_path: str, state_dir: str, explicit: bool = False) -> tuple[str, str]:
    """``tether --host NAME ...``: make this CLI talk to lab host NAME's daemon.

    ``ctx`` is the Typer/Click context of the top-level callback; ``socket_path`` and
    ``state_dir`` are what the CLI would use otherwise (``explicit``: given as flags),
    returned unchanged when ``TETHER_HOST`` from the environment does not apply: to
    ``tether lab`` and ``tether daemon``, or against an explicit flag. Outside the host's
    netns this never returns: it re-executes the same command line minus ``--host`` as
    ``nsenter --net=<host netns> python -m tether.cli ...`` with the host's socket and
    state dir in the environment, because a foreground ``run`` (``--net host`` above all)
    must run in the host's namespace. Inside it, returns (socket, state dir). Either way
    the daemon is never auto-started: the lab runs it.
    """
    subcommand = ctx.invoked_subcommand
    source = ctx.get_parameter_source("host")
    from_env = source is not None and source.name == "ENVIRONMENT"
    if subcommand in ("lab", "daemon") or explicit:
        if from_env:
            return socket_path, state_dir
        if explicit:
            raise InvalidInput("--host picks the socket and state dir: leave out --socket and --state-dir")
        raise InvalidInput(f"--host does not apply to `tether {subcommand}`")
    host = find_host(name)
    os.environ["TETHER_NO_AUTOSTART"] = "1"
    if _in_netns(host.netns_path):
        return host.socket, host.state_dir
    if not nsutil.is_bound_netns(host.netns_path):
        raise NotFound(f"lab host {host.name} has no network namespace any more: run `tether lab down`, then `lab up`")
    argv = host.tether_argv(*_args_without_host(ctx, sys.argv[1:]))
    sys.stdout.flush()
    sys.stderr.flush()
    nsenter = shutil.which("nsenter") or "/usr/bin/nsenter"
    os.execve(nsenter, argv, host.cli_env())
    raise AssertionError("unreachable")  # pragma: no cover


# replaced by the environment of the re-executed CLI
_DROPPED_GLOBALS = ("--host", "--socket", "--state-dir")


def _args_without_host(ctx: Any, argv: list[str]) -> list[str]:
    """``argv`` (this command line) without ``--host NAME``, ``--socket`` and ``--state-dir``.

    Only the global options before the subcommand are looked at (a ``--host`` after it
    belongs to the subcommand); which of them take a value is read from the command's
    own parameters, so global options added later pass through unchanged."""
    valued: set[str] = set()
    for param in ctx.command.params:
        if getattr(param, "param_type_name", "") == "option" and not (
            getattr(param, "is_flag", False) or getattr(param, "count", False)
        ):
            valued.update(param.opts)
    kept: list[str] = []
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        option, has_inline_value, _ = argv[i].partition("=")
        takes_next = option in valued and not has_inline_value
        if option not in _DROPPED_GLOBALS:
            kept.extend(argv[i : i + 1 + takes_next])
        i += 1 + takes_next
    rest = argv[i:]
    if not rest or rest[0] != ctx.invoked_subcommand:
        raise InvalidInput("--host re-runs the command line, but this one is not sys.argv (called in-process?)")
    return [*kept, *rest]
