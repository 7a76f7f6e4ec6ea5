"""The lab's processes and life cycle: etcd in the fabric, a tether daemon per host, and
``lab_up``, ``lab_down`` and ``lab_status`` around them.

Design note. Daemons and etcd are started detached (their own session: they outlive the
CLI, and a ^C is not theirs) and entered with ``nsenter --net`` rather than ``ip netns
exec``: the latter gives the process a private mount namespace, which would hide the
container namespaces a daemon binds under /var/run/netns. Their pids go into lab.json,
but a pid is only trusted after checking its command line (pids get reused).

``lab_up`` records the plan first, then builds underlay, etcd and daemons, and on any
failure, ^C included, takes down whatever was made. ``lab_down`` trusts lab.json no more
than it must: it also finds the hosts from the fabric bridge's ports and the processes by
the network namespace they live in, so a half-built or partly stale lab still comes down
completely; it collects errors instead of stopping at the first.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..api.client import Client, q
from ..errors import Conflict, SystemFailure, TetherError
from . import underlay
from .etcd import EtcdUnavailable, ensure_etcd_installed, log_tail, member_argv
from .plan import (
    DEFAULT_ROOT,
    DEFAULT_STATE_ROOT,
    ETCD_CLIENT_PORT,
    ETCD_PEER_PORT,
    FABRIC_IP,
    INET_IP,
    LAN_PARENT,
    NETNS_DIR,
    UNDERLAY_NET,
    UNDERLAY_PREFIXLEN,
    LabHost,
    LabInfo,
    claim_lab,
    load_lab,
    plan_host,
    plan_lab,
    save_lab,
    with_pythonpath,
)

__all__ = [
    "LabDaemonFailed",
    "Report",
    "daemon_argv",
    "etcd_healthy",
    "is_daemon_of",
    "is_etcd_of",
    "lab_down",
    "lab_status",
    "lab_up",
    "pids_in_namespaces",
    "process_alive",
]

_ETCD_PATIENCE = 20.0  # seconds for the lab's etcd to report healthy
_STOP_PATIENCE = 5.0  # seconds for killed processes to go, on lab down

Report = Callable[[str], None]


class LabDaemonFailed(SystemFailure):
    """A lab host's tether daemon exited or did not answer while the lab came up.

    Kept apart from other bring-up failures so that tests can tell "the daemon cannot
    run yet" from "the lab itself is broken"."""


# ---------------------------------------------------------------------- processes
def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid ...), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None


def process_alive(pid: int | None) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    if not pid or pid <= 0:
        return False
    _reap(pid)
    fields = _proc_stat(pid) or []
    return bool(fields) and fields[0] not in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def is_daemon_of(pid: int | None, host: LabHost) -> bool:
    """Whether ``pid`` is still this host's tether daemon (pids get reused)."""
    if not process_alive(pid):
        return False
    assert pid is not None
    args = _cmdline(pid)
    return "tether.cli" in args and "daemon" in args and host.socket in args


def is_etcd_of(pid: int | None, info: LabInfo) -> bool:
    """Whether ``pid`` is still this lab's etcd."""
    if not process_alive(pid):
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


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int((_proc_stat(pid) or [])[1])
        except (ValueError, IndexError):
            break
    return pids


def pids_in_namespaces(netns_names: Iterable[str]) -> set[int]:
    """Every process whose network namespace is one of these (one scan of /proc), except
    this process and its ancestors."""
    keys = {k for k in (underlay.netns_key(f"{NETNS_DIR}/{n}") for n in netns_names) if k}
    if not keys:
        return set()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and underlay.netns_key(f"/proc/{entry}/ns/net") in keys:
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
        pids = {p for p in pids if process_alive(p)}
        if pids:
            time.sleep(0.01)
    if pids:
        errors.append(f"processes {sorted(pids)} did not exit")


# ---------------------------------------------------------------------- etcd
def etcd_healthy(info: LabInfo, netns: str | None = None, timeout: float = 1.0) -> bool:
    """Whether etcd answers ``GET /health`` with true, asked from inside ``netns``
    (default: the fabric, where it runs)."""
    address = (FABRIC_IP, ETCD_CLIENT_PORT)
    try:
        sock = underlay.connect_in_netns(f"{NETNS_DIR}/{netns or info.fabric}", address, timeout)
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


def _etcd_binary() -> str:
    try:
        return ensure_etcd_installed()
    except EtcdUnavailable as exc:
        raise SystemFailure(str(exc)) from exc


def _start_etcd(info: LabInfo) -> None:
    name = f"{info.tag}-etcd"
    peer = f"http://{FABRIC_IP}:{ETCD_PEER_PORT}"
    member = member_argv(_etcd_binary(), name, info.etcd_data_dir, info.etcd_url, peer, token=name)
    # nsenter execs etcd without forking, so this pid is etcd's
    info.etcd_pid = _spawn(["nsenter", f"--net={NETNS_DIR}/{info.fabric}", "--", *member], info.etcd_log)
    save_lab(info)
    deadline = time.monotonic() + _ETCD_PATIENCE
    while time.monotonic() < deadline:
        if not process_alive(info.etcd_pid):
            raise SystemFailure(f"etcd exited at start: {log_tail(info.etcd_log)}")
        if etcd_healthy(info, timeout=0.5):
            return
        time.sleep(0.02)
    raise SystemFailure(f"etcd did not become healthy in {_ETCD_PATIENCE:.0f} s: {log_tail(info.etcd_log)}")


# ---------------------------------------------------------------------- daemons
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
    env = with_pythonpath(dict(os.environ))
    for key in ("TETHER_HOST", "TETHER_SOCKET", "TETHER_STATE_DIR", "TETHER_NETNS_PREFIX"):
        env.pop(key, None)
    for host in info.hosts:
        try:
            os.unlink(host.socket)
        except FileNotFoundError:
            pass
        host.daemon_pid = _spawn(daemon_argv(info, host), host.log, env)
    save_lab(info)
    _wait_for_daemons(info, done)


def _wait_for_daemons(info: LabInfo, done: Report) -> None:
    """Until every daemon answers on its socket; ``LabDaemonFailed`` if one exits or is late."""
    # Every daemon starts at once; a Python start is CPU-bound, so allow more time for more.
    deadline = time.monotonic() + 20.0 + 1.5 * len(info.hosts)
    pending = {h.name: h for h in info.hosts}
    while pending:
        for name, host in list(pending.items()):
            if not process_alive(host.daemon_pid):
                raise LabDaemonFailed(f"the tether daemon of {name} exited at start: {log_tail(host.log)}")
            if os.path.exists(host.socket) and Client(host.socket, timeout=2.0).alive():
                del pending[name]
                done(f"{name} daemon")
        if not pending:
            break
        if time.monotonic() > deadline:
            first = next(iter(pending.values()))
            raise LabDaemonFailed(
                f"the tether daemon of {', '.join(pending)} did not answer on its socket: "
                f"{first.log}: {log_tail(first.log)}"
            )
        time.sleep(0.05)


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
    _claim_namespaces(info)
    done = report or (lambda step: None)
    try:
        _fresh_state_dirs(info)
        underlay.build_underlay(info)
        done("fabric")
        _start_etcd(info)
        done("etcd")
        if start_daemons:
            _start_daemons(info, done)
    except BaseException:
        lab_down(info.root)
        raise
    return info


def _claim_namespaces(info: LabInfo) -> None:
    """Record the lab in lab.json, or refuse (``Conflict``) without leaving anything made:
    a lab is recorded already, or one of its namespace names is taken."""
    made_root = not os.path.isdir(info.root)
    claim_lab(info)
    try:
        taken = [n for n in info.namespaces() if underlay.netns_exists(n)]
        taken += underlay.container_namespaces(info.hosts)
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


def _fresh_state_dirs(info: LabInfo) -> None:
    """Empty state dirs for etcd and every host: no stale etcd member or daemon state."""
    for path in [info.etcd_data_dir, *(h.state_dir for h in info.hosts)]:
        shutil.rmtree(path, ignore_errors=True)
    for host in info.hosts:
        os.makedirs(host.state_dir, mode=0o755, exist_ok=True)
    os.makedirs(info.state_root, mode=0o755, exist_ok=True)


# ---------------------------------------------------------------------- lab down
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
    info.hosts += [plan_host(info, i) for i in underlay.fabric_host_indexes(info.fabric) if i not in known]
    return info


def _lab_pids(info: LabInfo) -> set[int]:
    """The daemons, etcd, and anything else living in the lab's namespaces."""
    container_ns = underlay.container_namespaces(info.hosts)
    pids = pids_in_namespaces([*info.namespaces(), *container_ns])
    pids |= {h.daemon_pid for h in info.hosts if h.daemon_pid and is_daemon_of(h.daemon_pid, h)}
    if info.etcd_pid and is_etcd_of(info.etcd_pid, info):
        pids.add(info.etcd_pid)
    return pids


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
    _stop(_lab_pids(info), errors)
    done("processes")
    # 3. namespaces
    underlay.remove_namespaces(info, errors)
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
def _host_status(host: LabHost) -> dict[str, Any]:
    running = is_daemon_of(host.daemon_pid, host)
    answers = running and Client(host.socket, timeout=2.0).alive()
    return {
        "name": host.name,
        "netns": host.netns,
        "netns_exists": underlay.netns_exists(host.netns),
        "underlay_ip": host.underlay_ip,
        "daemon_pid": host.daemon_pid,
        "daemon_running": running,
        "alive": answers,
        "socket": host.socket,
        "state_dir": host.state_dir,
        "log": host.log,
    }


def lab_status(root: str | None = None) -> dict[str, Any]:
    """lab.json checked against reality: is each daemon alive and answering, is etcd?"""
    info = load_lab(root)
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(info.hosts)))) as pool:
        hosts = list(pool.map(_host_status, info.hosts))
    etcd_running = is_etcd_of(info.etcd_pid, info)
    return {
        "prefix": info.prefix,
        "root": info.root,
        "state_root": info.state_root,
        "fabric": {"netns": info.fabric, "address": FABRIC_IP, "exists": underlay.netns_exists(info.fabric)},
        "inet": {"netns": info.inet, "address": INET_IP, "exists": underlay.netns_exists(info.inet)},
        # each host's interface on the fabric's LAN: the parent for macvlan networks
        "lan": {"parent": LAN_PARENT, "subnet": f"{UNDERLAY_NET}.0/{UNDERLAY_PREFIXLEN}"},
        "etcd": {
            "url": info.etcd_url,
            "pid": info.etcd_pid,
            "running": etcd_running,
            "alive": etcd_running and etcd_healthy(info),
            "log": info.etcd_log,
        },
        "hosts": hosts,
    }
