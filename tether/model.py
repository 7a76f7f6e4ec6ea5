"""The three nouns of tether, as frozen values with no I/O.

A Network is a broadcast domain with a subnet, served by one driver. An Endpoint is one
interface of one container on one network: an address, a MAC, a device name on each
side. A Container is a process tree with its own sandbox: its network namespace (unless
``host``), or the namespace of another container (``container:NAME``). Everything here
round-trips through plain dicts so any Store backend can keep it as JSON.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, TypeVar

from .errors import InvalidInput

__all__ = [
    "Network",
    "Endpoint",
    "Container",
    "NetMode",
    "parse_net_mode",
    "validate_name",
    "host_ifname_for",
    "bridge_name_for",
    "mac_for",
    "DEFAULT_NETWORK",
    "DEFAULT_BRIDGE",
]

DEFAULT_NETWORK = "bridge"
DEFAULT_BRIDGE = "tether0"
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
_RESERVED = {"none", "host", "bridge", "default", "container"}

T = TypeVar("T")


def _from_dict(cls: type[T], data: dict[str, Any]) -> T:
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in known})


def validate_name(kind: str, name: str) -> str:
    """Names follow Docker's rule: start alphanumeric, then [a-zA-Z0-9_.-], at most 63."""
    if not _NAME_RE.match(name or ""):
        raise InvalidInput(
            f"invalid {kind} name {name!r}: use 1-63 characters from [a-zA-Z0-9_.-], "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Network:
    id: str
    name: str
    driver: str
    subnet: str
    gateway: str
    bridge: str
    ip_range: str | None = None
    mtu: int = 1500
    internal: bool = False
    options: dict[str, str] = field(default_factory=dict)
    created: float = 0.0

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Network:
        return _from_dict(cls, data)


@dataclass(frozen=True)
class Endpoint:
    """One container interface on one network. ``host_ifname`` is the bridge-side veth."""

    id: str
    network_id: str
    network: str
    container_id: str
    ifname: str
    host_ifname: str
    address: str
    prefixlen: int
    gateway: str
    mac: str
    default_route: bool = True

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefixlen}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Endpoint:
        return _from_dict(cls, data)


@dataclass(frozen=True)
class NetMode:
    """How a container gets its network: none, host, container (joining ``target``) or
    attached to the network named ``target`` (the bridge driver)."""

    kind: str  # "none" | "host" | "container" | "network"
    target: str | None = None

    def __str__(self) -> str:
        if self.kind in ("none", "host"):
            return self.kind
        if self.kind == "container":
            return f"container:{self.target}"
        return str(self.target)


def parse_net_mode(value: str | None) -> NetMode:
    value = (value or DEFAULT_NETWORK).strip()
    if value in ("none", "host"):
        return NetMode(value)
    if value.startswith("container:"):
        target = value.split(":", 1)[1]
        if not target:
            raise InvalidInput("--net container: needs a name, as in --net container:web")
        return NetMode("container", target)
    if value == "default":
        value = DEFAULT_NETWORK
    validate_name("network", value)
    return NetMode("network", value)


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    hostname: str
    net_mode: str  # str(NetMode)
    netns: str | None  # bound namespace name under /var/run/netns, None for host mode
    cmd: list[str]
    state: str = "created"  # created | running | exited
    pid: int = 0
    start_time: int = 0  # /proc/PID/stat starttime, to tell a reused PID apart
    exit_code: int | None = None
    detach: bool = False
    auto_remove: bool = False
    joined: str | None = None  # id of the container whose netns this one shares
    rootfs: str | None = None
    created: float = 0.0

    @property
    def mode(self) -> NetMode:
        return parse_net_mode(self.net_mode)

    def with_(self, **changes: Any) -> Container:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Container:
        return _from_dict(cls, data)


def _digest(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def host_ifname_for(container_id: str, network_id: str) -> str:
    """The bridge-side veth name: deterministic, so teardown never needs a lookup."""
    return "vt" + _digest(container_id, network_id)[:12]


def bridge_name_for(network_id: str) -> str:
    return "tbr-" + network_id[:11]


def mac_for(address: str) -> str:
    """A locally administered MAC derived from the IPv4 address, as Docker does (02:42:..)."""
    packed = ipaddress.IPv4Address(address).packed
    return "02:42:" + ":".join(f"{b:02x}" for b in packed)
