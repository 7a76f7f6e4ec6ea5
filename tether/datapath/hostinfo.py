"""What the host itself holds, read from the kernel's /proc views of the daemon's
network namespace: sockets already bound to a port (and the process holding each), and
the sysctls tether needs (forwarding, route_localnet, accept_ra, accept_dad).

/proc/net shows the namespace of the reading *process*, which is the daemon's: exactly the
host these answers are about. /proc/sys/net shows the namespace of the calling *thread*:
the sysctl functions here act where they are called, so ``NetlinkDatapath`` calls them on
its host worker, or in a thread inside a container namespace (``nsutil.run_in_netns``).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

from ..errors import DatapathError

__all__ = [
    "HostPorts", "enable_ipv6_forwarding", "ensure_sysctl", "interface_sysctl_path", "set_interface_sysctl",
    "write_sysctl",
]  # fmt: skip

_TCP_LISTEN = "0A"


def _parse_addr(hexaddr: str) -> tuple[str, int]:
    host, port = hexaddr.split(":")
    if len(host) == 8:
        ip = socket.inet_ntop(socket.AF_INET, struct.pack("<I", int(host, 16)))
    else:
        raw = bytes.fromhex(host)
        ip = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
    return ip, int(port, 16)


def _covers(bound: str, wanted: str | None) -> bool:
    """Whether a socket bound to ``bound`` takes connections for ``wanted``: None is every
    address of both families, ``0.0.0.0``/``::`` every address of one, else one address."""
    addr = ipaddress.ip_address(bound)
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        elif addr.is_unspecified:
            return True  # [::] also takes IPv4 unless v6only; be conservative
    if wanted is None:
        return True
    want = ipaddress.ip_address(wanted)
    if want.version != addr.version:
        return False
    return addr.is_unspecified or want.is_unspecified or addr == want


def _socket_owners() -> dict[int, str]:
    owners: dict[int, str] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            with open(f"/proc/{pid}/comm") as fh:
                comm = fh.read().strip()
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owners.setdefault(int(target[8:-1]), f"process {comm} (pid {pid})")
    return owners


class HostPorts:
    """The host's bound ports, read once (each /proc/net file costs milliseconds: the
    kernel walks machine-wide hash tables), then asked about as many ports as needed."""

    def __init__(self) -> None:
        # (protocol, port) -> [(bound address, socket inode)]
        self._bound: dict[tuple[str, int], list[tuple[str, int]]] = {}
        for protocol in ("tcp", "udp"):
            for family in ("", "6"):
                try:
                    with open(f"/proc/net/{protocol}{family}") as fh:
                        lines = fh.read().splitlines()[1:]
                except FileNotFoundError:
                    continue
                for line in lines:
                    fields = line.split()
                    if protocol == "tcp" and fields[3] != _TCP_LISTEN:
                        continue
                    ip, port = _parse_addr(fields[1])
                    self._bound.setdefault((protocol, port), []).append((ip, int(fields[9])))
        self._owners: dict[int, str] | None = None

    def holder(self, protocol: str, port: int, host_ip: str | None) -> str | None:
        """Who holds ``port`` for ``host_ip`` (None = every address), or None."""
        inodes = [inode for ip, inode in self._bound.get((protocol, port), []) if _covers(ip, host_ip)]
        if not inodes:
            return None
        if self._owners is None:
            self._owners = _socket_owners()
        for inode in inodes:
            if inode in self._owners:
                return self._owners[inode]
        return "a socket of a process tether cannot see"


_FAMILY_DIRS = {4: "ipv4", 6: "ipv6"}
_IPV6_CONF = "/proc/sys/net/ipv6/conf"


def interface_sysctl_path(ifname: str, key: str, family: int = 4) -> str:
    """/proc/sys/net/ipv{4,6}/conf/IFNAME/KEY (``ifname`` may also be ``all`` or ``default``)."""
    if "/" in ifname or ifname in ("", ".", ".."):
        raise DatapathError(f"invalid interface name {ifname!r}")
    if family not in _FAMILY_DIRS or "/" in key or key in ("", ".", ".."):
        raise DatapathError(f"invalid sysctl {key!r} of IPv{family}")
    return f"/proc/sys/net/{_FAMILY_DIRS[family]}/conf/{ifname}/{key}"


def write_sysctl(path: str, value: str) -> None:
    """Write ``value`` to the sysctl file ``path``, unread: where the old value does not
    matter, this is the cheapest (on the attach path: each /proc/sys file of a fresh
    interface costs a lookup, and a text-mode ``open`` about as much again). Raises OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def ensure_sysctl(path: str, value: str) -> None:
    """Write ``value`` to the sysctl file ``path`` unless it holds it already (a read is
    cheaper than a write, and leaves the kernel's change notifications quiet). Raises OSError."""
    with open(path) as fh:
        if fh.read().strip() == value:
            return
    with open(path, "w") as fh:
        fh.write(value)


def set_interface_sysctl(ifname: str, key: str, value: str, family: int = 4) -> None:
    """net.ipv{4,6}.conf.IFNAME.KEY = VALUE in the calling thread's namespace."""
    path = interface_sysctl_path(ifname, key, family)
    try:
        ensure_sysctl(path, value)
    except OSError as exc:
        raise DatapathError(f"cannot set {key}={value} on {ifname}: {exc.strerror or exc}") from exc


def enable_ipv6_forwarding() -> None:
    """net.ipv6.conf.all.forwarding = 1 in the calling thread's namespace; already on is success.

    IPv6 has no per-interface forwarding check on input: only ``all.forwarding`` makes the
    namespace forward, and it turns every interface into a router, which ignores router
    advertisements when its accept_ra is 1. So first every interface with accept_ra 1 gets
    2 (accept them even when forwarding): the host keeps the default route and addresses
    it learns from its uplink's router. Interfaces with 0 (tether's bridges) keep 0; one
    that vanishes meanwhile is skipped. Once forwarding is on nothing is touched again, so
    an administrator's later choices stand.
    """
    forwarding = f"{_IPV6_CONF}/all/forwarding"
    try:
        with open(forwarding) as fh:
            if fh.read().strip() == "1":
                return
        for ifname in sorted(os.listdir(_IPV6_CONF)):
            if ifname in ("all", "default"):
                continue
            try:
                with open(f"{_IPV6_CONF}/{ifname}/accept_ra") as fh:
                    if fh.read().strip() != "1":
                        continue
                with open(f"{_IPV6_CONF}/{ifname}/accept_ra", "w") as fh:
                    fh.write("2")
            except FileNotFoundError:
                continue  # the interface went meanwhile
        with open(forwarding, "w") as fh:
            fh.write("1")
    except OSError as exc:
        raise DatapathError(f"cannot enable IPv6 forwarding: {exc.strerror or exc}") from exc
