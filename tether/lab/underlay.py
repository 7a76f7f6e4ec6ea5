"""The lab's network: its namespaces, the fabric bridge, every veth and address, built with
``ip -batch``, and found again from the kernel when lab.json is lost.

Design note. A lab host is a named netns (``h1`` ... ``hN``) on an underlay, the way
machines share a LAN; the fabric namespace holds the bridge, is every host's default
gateway and routes to an "internet" namespace, so NAT out of a host can be tried too.
Building uses ``ip -batch``: one process per namespace, the hosts' in parallel, so a whole
16-host fabric is a few dozen milliseconds and the time of ``lab up`` is the daemons'
start. Every veth is created directly inside its two namespaces: the machine's own
namespace is never touched except to create and delete namespaces. The fabric's bridge
ports are named by host index (``h1``), so ``fabric_host_indexes`` finds the hosts of a
lab whatever lab.json says.

Each host's ``eth0`` (``LAN_PARENT``) is also a macvlan parent: a macvlan child's frames
carry its own MAC onto the fabric, and nothing there filters them. The bridge learns and
floods unknown unicast and broadcast (its defaults), has no VLAN filtering and no port
isolation, and the fabric namespace has no firewall (with br_netfilter its bridged traffic
passes the namespace's IP hooks, which are empty). The host end needs no promiscuous mode
set by hand: the kernel turns it on when the first macvlan child appears (a veth has no
unicast filter), and a veth hands every frame up whatever its destination MAC.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Iterable

from ..datapath import nsutil
from ..errors import SystemFailure
from .plan import (
    FABRIC_BRIDGE,
    FABRIC_IP,
    INET_IP,
    INET_ROUTER_IP,
    LAN_PARENT,
    NETNS_DIR,
    UNDERLAY_MTU,
    UNDERLAY_NET,
    UNDERLAY_PREFIXLEN,
    LabHost,
    LabInfo,
)

__all__ = [
    "build_underlay",
    "connect_in_netns",
    "container_namespaces",
    "fabric_host_indexes",
    "netns_exists",
    "netns_key",
    "remove_namespaces",
]

_INET_PORT = "inet0"  # the fabric's end of the veth to the internet namespace


def netns_exists(name: str) -> bool:
    return os.path.lexists(f"{NETNS_DIR}/{name}")


def netns_key(path: str) -> tuple[int, int] | None:
    """What identifies the namespace at ``path`` (a bound file or /proc/PID/ns/net)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def container_namespaces(hosts: Iterable[LabHost]) -> list[str]:
    """Namespaces named ``{host}-*``: the containers of these hosts' daemons."""
    prefixes = tuple(h.container_netns_prefix for h in hosts)
    if not prefixes:
        return []
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefixes))


# ---------------------------------------------------------------------- building
def _start_batch(lines: list[str], netns: str | None = None) -> subprocess.Popen[str]:
    """Start ``ip [-n NETNS] -batch -`` over ``lines``; finish it with ``_finish_batch``."""
    cmd = ["ip", *(["-n", netns] if netns else []), "-batch", "-"]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None
    proc.stdin.write("\n".join(lines) + "\n")  # a few KiB at most: fits the pipe
    proc.stdin.close()
    proc.stdin = None  # so that communicate() only reads
    return proc


def _finish_batch(proc: subprocess.Popen[str], what: str) -> None:
    _, err = proc.communicate(timeout=60)
    if proc.returncode != 0:
        reason = " ".join(err.strip().splitlines()[-2:]) or f"exit status {proc.returncode}"
        raise SystemFailure(f"building the lab failed at {what}: {reason}")


def _fabric_lines(info: LabInfo) -> list[str]:
    """The fabric's bridge with a port per host, and its veth to the internet."""
    lines = [
        "link set lo up",
        f"link add {FABRIC_BRIDGE} type bridge",
        f"addr add {FABRIC_IP}/{UNDERLAY_PREFIXLEN} dev {FABRIC_BRIDGE}",
        f"link add {_INET_PORT} type veth peer name eth0 netns {info.inet}",
        f"addr add {INET_ROUTER_IP}/24 dev {_INET_PORT}",
        f"link set {_INET_PORT} up",
    ]
    for host in info.hosts:
        # port named by index: short and the same whatever the prefix
        lines += [
            (
                f"link add h{host.index} mtu {UNDERLAY_MTU} master {FABRIC_BRIDGE} type veth "
                f"peer name {LAN_PARENT} netns {host.netns} mtu {UNDERLAY_MTU}"
            ),
            f"link set h{host.index} up",
        ]
    lines.append(f"link set {FABRIC_BRIDGE} up")
    return lines


def _eth0_lines(address: str, route: str, dev: str = "eth0") -> list[str]:
    """A namespace's side: lo and ``dev`` up, ``address`` on ``dev``, and ``route``."""
    return ["link set lo up", f"addr add {address} dev {dev}", f"link set {dev} up", f"route add {route}"]


def _enable_forwarding(info: LabInfo) -> None:
    def forward() -> None:
        # the fabric routes between underlay and internet; the hosts keep the default
        # they were created with (the daemon turns forwarding on where it needs it)
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("1")

    nsutil.run_in_netns(f"{NETNS_DIR}/{info.fabric}", forward)


def build_underlay(info: LabInfo) -> None:
    """Make the lab's namespaces, the fabric, and each host's and the internet's eth0."""
    _finish_batch(_start_batch([f"netns add {n}" for n in info.namespaces()]), "creating the namespaces")
    _finish_batch(_start_batch(_fabric_lines(info), info.fabric), f"the fabric ({info.fabric})")
    _enable_forwarding(info)
    inet = _eth0_lines(f"{INET_IP}/24", f"{UNDERLAY_NET}.0/{UNDERLAY_PREFIXLEN} via {INET_ROUTER_IP}")
    procs = [(info.inet, _start_batch(inet, info.inet))]
    for host in info.hosts:
        lines = _eth0_lines(f"{host.underlay_ip}/{UNDERLAY_PREFIXLEN}", f"default via {FABRIC_IP}", LAN_PARENT)
        procs.append((host.netns, _start_batch(lines, host.netns)))
    for netns, proc in procs:
        _finish_batch(proc, netns)


# ---------------------------------------------------------------------- finding and removing
def fabric_host_indexes(fabric: str) -> list[int]:
    """The host indexes that have a port on the fabric bridge (h1 .. hN)."""
    if not netns_exists(fabric):
        return []
    result = subprocess.run(
        ["ip", "-n", fabric, "-o", "link", "show"], capture_output=True, text=True, timeout=30, check=False
    )
    found = re.findall(r"^\d+:\s+h(\d+)@", result.stdout, flags=re.MULTILINE)
    return sorted(int(i) for i in found)


def remove_namespaces(info: LabInfo, errors: list[str]) -> None:
    """Delete the containers' namespaces first, then the hosts', the fabric, the internet.

    Call it once no process lives in them any more; errors are collected, not raised."""
    for netns in [*container_namespaces(info.hosts), *info.namespaces()]:
        path = f"{NETNS_DIR}/{netns}"
        if not os.path.lexists(path):
            continue
        try:
            nsutil.unbind_netns(path)
        except OSError as exc:
            errors.append(f"deleting namespace {netns}: {exc}")


def connect_in_netns(netns_path: str, address: tuple[str, int], timeout: float) -> socket.socket:
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
