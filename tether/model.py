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
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, TypeVar

from .errors import InvalidInput
from .validate import validate_mac, validate_name  # re-exported: the model's names obey them
from .validate import DEFAULT_NETWORK, check_labels  # re-exported: they live where the CLI's filters can afford them

__all__ = [
    "Network",
    "Endpoint",
    "Container",
    "NetMode",
    "parse_net_mode",
    "validate_name",
    "validate_mac",
    "host_ifname_for",
    "bridge_name_for",
    "mac_for",
    "DEFAULT_NETWORK",
    "DEFAULT_BRIDGE",
    "PortMapping",
    "parse_port_spec",
    "check_labels",
]

DEFAULT_BRIDGE = "tether0"

T = TypeVar("T")


def _from_dict(cls: type[T], data: dict[str, Any]) -> T:
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in known})


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
    labels: dict[str, str] = field(default_factory=dict)  # `--label KEY=VALUE`: the user's, never read by tether
    # Dual stack (`--ipv6`): the v6 subnet and its gateway, beside the v4 ones; None: IPv4 only.
    subnet6: str | None = None
    gateway6: str | None = None
    ip_range6: str | None = None  # the v6 `--ip-range` (None: the whole v6 subnet)
    # `--aux-address NAME=IP` (Docker's): addresses of the subnet that IPAM never hands out.
    aux_addresses: dict[str, str] = field(default_factory=dict)

    @property
    def reserved_addresses(self) -> dict[str, str]:
        """Address -> what holds it, besides the gateways: the aux addresses and a macvlan
        network's host-side address(es) (``-o host_access``)."""
        held = {ip: f"aux address {name}" for name, ip in self.aux_addresses.items()}
        for key in ("host_address", "host_address6"):
            if self.options.get(key):
                held[self.options[key]] = "the host's own address on the network (host_access)"
        return held

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen

    @property
    def ipv6(self) -> bool:
        return self.subnet6 is not None

    @property
    def prefixlen6(self) -> int:
        return ipaddress.ip_network(self.subnet6).prefixlen if self.subnet6 else 0

    @property
    def subnets(self) -> list[str]:
        """Every subnet of the network: the v4 one, then the v6 one if any."""
        return [self.subnet, *([self.subnet6] if self.subnet6 else [])]

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
    aliases: list[str] = field(default_factory=list)  # extra DNS names on this network
    # On a dual-stack network: its v6 address, prefix length and gateway; None on IPv4 only.
    address6: str | None = None
    prefixlen6: int = 0
    gateway6: str | None = None

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefixlen}"

    @property
    def cidr6(self) -> str | None:
        return f"{self.address6}/{self.prefixlen6}" if self.address6 else None

    @property
    def addresses(self) -> list[str]:
        """Its addresses: the v4 one, then the v6 one if any."""
        return [self.address, *([self.address6] if self.address6 else [])]

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
    # What its process gets (`run -e/--env-file -w -t -i`); Docker's PATH, HOSTNAME, TERM are added at start:
    env: list[str] = field(default_factory=list)  # KEY=VALUE, the user's, in order
    workdir: str = "/"
    tty: bool = False
    interactive: bool = False
    # Its /etc files (`run --dns --dns-search --dns-option --add-host`), written at each start:
    dns: list[str] = field(default_factory=list)
    dns_search: list[str] = field(default_factory=list)
    dns_options: list[str] = field(default_factory=list)
    extra_hosts: list[str] = field(default_factory=list)  # NAME:IP, IP may be "host-gateway"
    mac_address: str | None = None  # of its first endpoint (`run --mac-address`)
    expose: list[str] = field(default_factory=list)  # PORT/PROTO (`run --expose`)
    publish_all: bool = False  # `run -P`: every exposed port on a free host port
    ports: list[dict[str, Any]] = field(default_factory=list)  # PortMapping.to_dict(), one per port
    external: bool = False  # a namespace another runtime made (CNI): netns is its path
    labels: dict[str, str] = field(default_factory=dict)  # `--label KEY=VALUE`: the user's, never read by tether
    # An exited container holds no endpoint and no port; what `start` attaches again:
    attachments: list[dict[str, Any]] = field(default_factory=list)  # {"network", "ip", "ip6" (asked for), "aliases"}, in order
    publish: list[dict[str, Any]] = field(default_factory=list)  # -p as asked (host port 0: one is picked at each start)
    restart_policy: str = "no"  # no | on-failure[:N] | always | unless-stopped (controller/restarts.py)
    restart_count: int = 0  # restarts by the policy since the last start by hand
    manually_stopped: bool = False  # by `stop`: the policy leaves it down until it is started again
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def port_mappings(self) -> list[PortMapping]:
        return [PortMapping.from_dict(p) for p in self.ports]

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


@dataclass(frozen=True)
class PortMapping:
    """One published port: ``host_ip:host_port`` on the host to ``container_port`` inside.
    ``host_ip`` None means every address of the host; ``host_port`` 0 means "pick one"."""

    protocol: str
    host_port: int
    container_port: int
    host_ip: str | None = None
    network: str | None = None  # where it points: another runtime's endpoint on this network

    def __str__(self) -> str:
        where = "" if not self.host_ip else f"[{self.host_ip}]:" if ":" in self.host_ip else f"{self.host_ip}:"
        return f"{where}{self.host_port}:{self.container_port}/{self.protocol}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PortMapping:
        return _from_dict(cls, data)


def _port_range(text: str, what: str, spec: str) -> list[int]:
    lo_text, sep, hi_text = text.partition("-")
    try:
        lo = int(lo_text)
        hi = int(hi_text) if sep else lo
    except ValueError:
        raise InvalidInput(f"invalid -p {spec!r}: {what} {text!r} is not a port number or range like 8000-8010") from None
    if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
        raise InvalidInput(f"invalid -p {spec!r}: {what} {text!r} is out of range (ports are 1 to 65535)")
    if hi < lo:
        raise InvalidInput(f"invalid -p {spec!r}: {what} range {text!r} ends before it starts")
    return list(range(lo, hi + 1))


def parse_port_spec(spec: str) -> list[PortMapping]:
    """Docker's ``-p [HOSTIP:][HOSTPORT[-END]:]CPORT[-END][/tcp|udp]``, expanded to one
    mapping per port; an IPv6 HOSTIP is bracketed (``-p [::1]:8080:80``). A missing host
    port (``-p 80`` or ``-p 127.0.0.1::80``) is 0: the daemon picks a free one."""
    body, _, protocol = spec.partition("/")
    protocol = (protocol or "tcp").lower()
    if protocol not in ("tcp", "udp"):
        raise InvalidInput(f"invalid -p {spec!r}: unknown protocol {protocol!r}, use tcp or udp")
    host_ip: str | None = None
    if body.startswith("["):
        bracketed, sep, body = body[1:].partition("]:")
        if not sep:
            raise InvalidInput(f"invalid -p {spec!r}: write an IPv6 host address in brackets, as in [::1]:8080:80")
        host_ip = _port_host_ip(bracketed, spec, 6)
        parts = [bracketed, *body.split(":")]
        if len(parts) != 3:
            raise InvalidInput(f"invalid -p {spec!r}: use [IPV6]:HOSTPORT:CONTAINERPORT, as in [::1]:8080:80")
    else:
        parts = body.split(":")
    if len(parts) > 3 or not parts[-1]:
        raise InvalidInput(f"invalid -p {spec!r}: use [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|udp]")
    host_text = ""
    if len(parts) == 3:
        host_text = parts[1]
        if host_ip is None and parts[0]:
            host_ip = _port_host_ip(parts[0], spec, 4)
    elif len(parts) == 2:
        host_text = parts[0]
    container_ports = _port_range(parts[-1], "container port", spec)
    if not host_text:
        if len(container_ports) > 1:
            raise InvalidInput(f"invalid -p {spec!r}: give a host port range for a container port range")
        return [PortMapping(protocol, 0, container_ports[0], host_ip)]
    host_ports = _port_range(host_text, "host port", spec)
    if len(host_ports) != len(container_ports):
        raise InvalidInput(
            f"invalid -p {spec!r}: the host range has {len(host_ports)} ports and the container range "
            f"{len(container_ports)}; make them the same length"
        )
    return [PortMapping(protocol, h, c, host_ip) for h, c in zip(host_ports, container_ports)]


def _port_host_ip(text: str, spec: str, family: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        hint = "an IPv6 address in brackets such as [::1]" if family == 6 else "an IPv4 address such as 127.0.0.1"
        raise InvalidInput(f"invalid -p {spec!r}: host address {text!r} is not {hint}") from None
    if address.version != family:
        if family == 6:
            raise InvalidInput(f"invalid -p {spec!r}: {text} is IPv4: write it without brackets, as in {text}:8080:80")
        raise InvalidInput(f"invalid -p {spec!r}: write an IPv6 host address in brackets, as in [{text}]:8080:80")
    return str(address)
