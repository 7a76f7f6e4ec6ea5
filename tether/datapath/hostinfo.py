"""What the host itself holds, read from the kernel's /proc views of the daemon's
network namespace: sockets already bound to a port (and the process holding each), and
the per-interface sysctls tether needs (forwarding, route_localnet).

/proc/net and /proc/sys/net always show the namespace of the reading process, which is
the daemon's: exactly the host these answers are about.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

from ..errors import DatapathError

__all__ = ["HostPorts", "set_interface_sysctl"]

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
    """Whether a socket bound to ``bound`` takes connections for ``wanted`` (None = any)."""
    addr = ipaddress.ip_address(bound)
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        elif addr.is_unspecified:
            return True  # [::] also takes IPv4 unless v6only; be conservative
        else:
            return False
    if addr.is_unspecified or wanted is None:
        return True
    return str(addr) == wanted


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


def _sysctl_path(ifname: str, key: str) -> str:
    if "/" in ifname or ifname in ("", ".", ".."):
        raise DatapathError(f"invalid interface name {ifname!r}")
    return f"/proc/sys/net/ipv4/conf/{ifname}/{key}"


def set_interface_sysctl(ifname: str, key: str, value: str) -> None:
    path = _sysctl_path(ifname, key)
    try:
        with open(path) as fh:
            if fh.read().strip() == value:
                return
        with open(path, "w") as fh:
            fh.write(value)
    except OSError as exc:
        raise DatapathError(f"cannot set {key}={value} on {ifname}: {exc.strerror or exc}") from exc
