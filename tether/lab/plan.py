"""The plan of a lab: its hosts, names, addresses and paths, and ``lab.json``.

Design note. Everything a lab will be is decided here, before anything is made, as plain
values: ``plan_lab`` returns a ``LabInfo`` with one ``LabHost`` per host, and that is what
``lab.json`` records (``claim_lab`` writes it *before* the lab is built, with O_EXCL, which
is also what refuses a second lab). Nothing here starts a process or touches a namespace:
``processes`` and ``underlay`` carry a plan out, and ``lab down`` reads it back.

Several labs can coexist (tests): ``name_prefix`` changes every namespace name (``tt1h1``,
``tt1-fabric``), and ``root``/``state_root`` every path. Addresses do not change: each lab
has its own fabric namespace, so 10.99.0.0/24 never meets another one.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from ..errors import Conflict, InvalidInput, NotFound, SystemFailure

__all__ = [
    "DEFAULT_ROOT",
    "DEFAULT_STATE_ROOT",
    "ETCD_CLIENT_PORT",
    "ETCD_PEER_PORT",
    "FABRIC_BRIDGE",
    "FABRIC_IP",
    "INET_IP",
    "INET_NET",
    "INET_ROUTER_IP",
    "LAN_PARENT",
    "MAX_HOSTS",
    "NETNS_DIR",
    "UNDERLAY_MTU",
    "UNDERLAY_NET",
    "UNDERLAY_PREFIXLEN",
    "LabHost",
    "LabInfo",
    "claim_lab",
    "default_root",
    "default_state_root",
    "find_host",
    "host_socket",
    "lab_json_path",
    "load_lab",
    "plan_host",
    "plan_lab",
    "save_lab",
    "with_pythonpath",
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
FABRIC_BRIDGE = "underlay"  # the fabric's bridge; its ports are named h1 .. hN whatever the prefix
# Each host's LAN-facing interface, its end of the veth to the fabric bridge: also the parent
# of macvlan networks (`-o parent=eth0`), whose containers then meet on the fabric's LAN
# directly, no overlay (the bridge floods unknown MACs and filters nothing).
LAN_PARENT = "eth0"

_PREFIX_RE = re.compile(r"^[a-z0-9]{0,10}$")


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
        return with_pythonpath(env)


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
            "fabric": {"netns": self.fabric, "address": FABRIC_IP, "bridge": FABRIC_BRIDGE, "lan_parent": LAN_PARENT},
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
    info.hosts = [plan_host(info, i) for i in range(1, hosts + 1)]
    return info


def plan_host(info: LabInfo, index: int) -> LabHost:
    """Host ``index`` of lab ``info``: its names, address and paths."""
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


def _write_lab_json(info: LabInfo, f: IO[str]) -> None:
    json.dump(info.to_json(), f, indent=2, sort_keys=True)
    f.write("\n")


def save_lab(info: LabInfo) -> None:
    """Rewrite lab.json (atomically: a reader sees the old record or the new one)."""
    tmp = info.path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        _write_lab_json(info, f)
    os.replace(tmp, info.path)


def claim_lab(info: LabInfo) -> None:
    """Create lab.json, failing if it exists: this is what refuses a second lab."""
    os.makedirs(info.root, mode=0o755, exist_ok=True)
    try:
        fd = os.open(info.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise Conflict(f"a lab is already up ({info.path}): run `tether lab down` first") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        _write_lab_json(info, f)


def with_pythonpath(env: dict[str, str]) -> dict[str, str]:
    """Make ``python -m tether.cli`` find this very tether, whatever the cwd."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if here not in parts:
        env["PYTHONPATH"] = os.pathsep.join([here, *parts])
    return env
