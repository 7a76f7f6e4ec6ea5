"""Read verbs for ``tether trace``: what the kernel holds along a container's path, and one
probe packet sent from inside a container's namespace.

``InspectVerbs`` is a mixin of ``NetlinkDatapath`` (its own room, so ``netlink.py`` stays
small). Every verb here only reads, except ``probe``, which sends exactly one connection
attempt (TCP), one datagram (UDP) or one echo request (ICMP) from inside ``netns``. The
caller (``tether.trace``) decides where a probe may go: only to addresses inside
namespaces tether made, never anywhere else.

Design note. Listening sockets are read from ``/proc/thread-self/net/{tcp,udp}[6]`` in a
throwaway thread that has ``setns``-ed into the container: ``/proc/self/net`` would show
the namespace of the process's main thread (the daemon's), not the container's. Parsing
the proc files costs well under a millisecond and needs no ``ss`` binary.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import struct
import time
from typing import Any

from pyroute2 import IPRoute  # type: ignore[import-untyped]

from ..errors import DatapathError
from . import nsutil
from .workers import NetlinkWorkers, mapped, reason

__all__ = ["InspectVerbs", "parse_proc_listeners"]

_NUD_NAMES = {
    0x01: "incomplete", 0x02: "reachable", 0x04: "stale", 0x08: "delay",
    0x10: "probe", 0x20: "failed", 0x40: "noarp", 0x80: "permanent",
}
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
_ZERO_MAC = "00:00:00:00:00:00"
_TCP_LISTEN = "0A"
_UDP_UNCONNECTED = "07"


def _nud_state(state: int) -> str:
    return next((name for bit, name in sorted(_NUD_NAMES.items(), reverse=True) if state & bit), "none")


def _proc_address(hex_addr: str) -> str:
    """An address as /proc/net/tcp writes it (host byte order words) in text."""
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(struct.pack("<I", struct.unpack(">I", raw)[0])))
    words = struct.unpack(">4I", raw)
    return str(ipaddress.IPv6Address(b"".join(struct.pack("<I", w) for w in words)))


def parse_proc_listeners(text: str, protocol: str) -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket, or unconnected UDP socket, in the text
    of ``/proc/net/{tcp,udp}[6]``. Pure."""
    wanted = _TCP_LISTEN if protocol == "tcp" else _UDP_UNCONNECTED
    found = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] != wanted:
            continue
        address, _, port = fields[1].partition(":")
        found.append((_proc_address(address), int(port, 16)))
    return sorted(set(found))


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _echo(address: str, timeout: float) -> str:
    """One ICMP echo request to ``address`` (IPv4 or IPv6) from the calling thread's namespace."""
    v6 = ipaddress.ip_address(address).version == 6
    family, proto, request, reply = (
        (socket.AF_INET6, socket.IPPROTO_ICMPV6, 128, 129) if v6 else (socket.AF_INET, socket.IPPROTO_ICMP, 8, 0)
    )
    ident = os.getpid() & 0xFFFF
    header = struct.pack("!BBHHH", request, 0, 0, ident, 1) + b"tether-trace"
    packet = header if v6 else header[:2] + struct.pack("!H", _checksum(header)) + header[4:]
    with socket.socket(family, socket.SOCK_RAW, proto) as sock:
        sock.sendto(packet, (address, 0))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([sock], [], [], left)[0]:
                break
            data, source = sock.recvfrom(2048)
            icmp = data if v6 else data[(data[0] & 0x0F) * 4:]
            if source[0] == address and len(icmp) >= 8 and icmp[0] == reply and struct.unpack("!H", icmp[4:6])[0] == ident:
                return "answered"
            if len(icmp) >= 1 and icmp[0] in ((1,) if v6 else (3,)):
                return "unreachable"
    return "timeout"


def _connect(address: str, protocol: str, port: int, timeout: float) -> str:
    """One TCP connection attempt, or one UDP datagram, to ``address:port``."""
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
            if protocol == "tcp":
                return "open"
            sock.send(b"tether-trace\n")
            sock.recv(1)
            return "open"
        except socket.timeout:
            return "timeout" if protocol == "tcp" else "sent"
        except OSError as exc:
            if exc.errno == errno.ECONNREFUSED:
                return "refused"
            if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
                return "unreachable"
            raise


class InspectVerbs(NetlinkWorkers):
    """The read verbs ``tether trace`` needs (see the Datapath protocol for each)."""

    def link_state(self, ifname: str) -> dict[str, Any] | None:
        """``ifname`` in the host namespace: {ifname, kind, up, master, mtu}, or None if missing."""

        def work(ipr: IPRoute) -> dict[str, Any] | None:
            with mapped(f"cannot read link {ifname}"):
                link = self._get_link(ipr, ifname)
                if link is None:
                    return None
                master = link.get("master")
                master_name = None
                if master:
                    found = ipr.link("get", index=master)
                    master_name = found[0].get("ifname") if found else None
                return {
                    "ifname": ifname, "kind": self._kind(link), "up": bool(link["flags"] & 1), "master": master_name,
                    "mtu": link.get_attr("IFLA_MTU"),
                }

        return self._host(work)

    def container_neighbours(self, netns: str) -> list[dict[str, Any]]:
        """The neighbour entries in ``netns``: {address, mac, state, dev}, both families."""

        def work(ipr: IPRoute) -> list[dict[str, Any]]:
            names = {link["index"]: link.get("ifname") for link in ipr.link("dump")}
            return [
                {
                    "address": str(msg.get("NDA_DST")),
                    "mac": str(msg.get("NDA_LLADDR") or "").lower() or None,
                    "state": _nud_state(msg["state"]),
                    "dev": names.get(msg["ifindex"]),
                }
                for msg in ipr.neigh("dump")
                if msg["family"] in (socket.AF_INET, socket.AF_INET6) and msg.get("NDA_DST")
            ]

        return self._in_netns(netns, f"cannot list neighbours in {netns}", work)

    def peer_entries(self, vxlan: str) -> dict[str, list[tuple[str, str]]]:
        """What ``vxlan`` holds for its peers, entry by entry: ``neighbours`` (ip, mac) of its
        permanent neighbour entries and ``fdb`` (mac, vtep) of its FDB entries with a
        destination, flood entries left out; both empty if the device is missing."""

        def work(ipr: IPRoute) -> dict[str, list[tuple[str, str]]]:
            with mapped(f"cannot list the entries of {vxlan}"):
                link = self._get_link(ipr, vxlan)
                if link is None:
                    return {"neighbours": [], "fdb": []}
                index = link["index"]
                fdb = sorted(
                    (str(msg.get("NDA_LLADDR")).lower(), str(msg.get("NDA_DST")))
                    for msg in ipr.fdb("dump", ifindex=index)
                    if msg["ifindex"] == index and msg["flags"] & NTF_SELF and msg.get("NDA_DST")
                    and str(msg.get("NDA_LLADDR")).lower() != _ZERO_MAC
                )
                neighbours = sorted(
                    (str(msg.get("NDA_DST")), str(msg.get("NDA_LLADDR") or "").lower())
                    for msg in ipr.neigh("dump", ifindex=index)
                    if msg["ifindex"] == index and msg["state"] & NUD_PERMANENT
                )
                return {"neighbours": neighbours, "fdb": fdb}

        return self._host(work)

    def listening(self, netns: str, protocol: str) -> list[tuple[str, int]]:
        """(address, port) of every socket listening for ``protocol`` (tcp, or udp: bound and
        unconnected) inside ``netns``, both families, sorted."""
        if protocol not in ("tcp", "udp"):
            raise DatapathError(f"cannot list listeners: unknown protocol {protocol!r}")
        fd = self._open_netns(netns)
        if fd is None:
            raise DatapathError(f"cannot list listeners: network namespace {netns} does not exist")

        def read() -> list[tuple[str, int]]:
            found: list[tuple[str, int]] = []
            for name in (protocol, protocol + "6"):
                try:
                    with open(f"/proc/thread-self/net/{name}") as f:
                        found += parse_proc_listeners(f.read(), protocol)
                except FileNotFoundError:
                    continue
            return sorted(set(found))

        try:
            return nsutil.run_in_netns(fd, read)
        except OSError as exc:
            raise DatapathError(f"cannot list listeners in {netns}: {reason(exc)}") from exc
        finally:
            os.close(fd)

    def probe(self, netns: str, address: str, protocol: str, port: int | None, timeout: float = 1.0) -> str:
        """Send one probe from inside ``netns`` to ``address``: a TCP connection attempt or a
        UDP datagram to ``port``, or an ICMP echo request (``protocol`` "icmp", no port).
        What came back: "open" (connected, or a UDP answer), "refused", "answered" (echo
        reply), "unreachable", "timeout", or "sent" (UDP, no answer either way)."""
        fd = self._open_netns(netns)
        if fd is None:
            raise DatapathError(f"cannot probe from {netns}: the network namespace does not exist")

        def send() -> str:
            if protocol == "icmp":
                return _echo(address, timeout)
            if port is None or protocol not in ("tcp", "udp"):
                raise DatapathError(f"cannot probe {address}: give tcp or udp with a port, or icmp")
            return _connect(address, protocol, port, timeout)

        try:
            return nsutil.run_in_netns(fd, send)
        except OSError as exc:
            raise DatapathError(f"cannot probe {address} from {netns}: {reason(exc)}") from exc
        finally:
            os.close(fd)
