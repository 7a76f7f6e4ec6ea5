"""Hand-made DNS packets and an independent reader for responses, shared by the DNS unit
tests: the resolver's own wire code (``tether.dns.message``) is never checked only
against itself."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

A, PTR, AAAA, OPT, CLASS_IN = 1, 12, 28, 41, 1


def wire_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split(".") if name.strip(".") else []:
        out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def opt_record(size: int, version: int = 0, do: bool = False) -> bytes:
    ttl = (version << 16) | (0x8000 if do else 0)
    return b"\x00" + struct.pack("!HHIH", OPT, size, ttl, 0)


def query_bytes(
    name: str,
    qtype: int = A,
    *,
    ident: int = 0x1234,
    flags: int = 0x0100,  # RD
    edns: int | None = None,
    version: int = 0,
    do: bool = False,
) -> bytes:
    additional = opt_record(edns, version, do) if edns is not None else b""
    header = struct.pack("!HHHHHH", ident, flags, 1, 0, 0, 1 if additional else 0)
    return header + wire_name(name) + struct.pack("!HH", qtype, CLASS_IN) + additional


def read_name(packet: bytes, offset: int) -> tuple[str, int]:
    labels: list[str] = []
    end = None
    for _ in range(64):
        length = packet[offset]
        if length == 0:
            return ".".join(labels), (offset + 1 if end is None else end)
        if length >= 0xC0:
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | packet[offset + 1]
            continue
        labels.append(packet[offset + 1 : offset + 1 + length].decode("latin-1"))
        offset += 1 + length
    raise AssertionError("pointer loop in a response")


def decode(packet: bytes) -> dict[str, Any]:
    """An independent reader for what the resolver sends."""
    ident, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", packet)
    offset = 12
    questions = []
    for _ in range(qd):
        name, offset = read_name(packet, offset)
        qtype, qclass = struct.unpack_from("!HH", packet, offset)
        offset += 4
        questions.append((name, qtype, qclass))
    records = []
    for _ in range(an + ns + ar):
        name, offset = read_name(packet, offset)
        rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", packet, offset)
        offset += 10
        records.append((name, rtype, rclass, ttl, packet[offset : offset + rdlen]))
        offset += rdlen
    assert offset == len(packet), "trailing bytes"
    return {
        "id": ident,
        "qr": bool(flags & 0x8000),
        "opcode": (flags >> 11) & 0xF,
        "aa": bool(flags & 0x0400),
        "tc": bool(flags & 0x0200),
        "rd": bool(flags & 0x0100),
        "ra": bool(flags & 0x0080),
        "rcode": flags & 0xF,
        "questions": questions,
        "answers": records[:an],
        "additional": records[an + ns :],
    }


def addresses(decoded: dict[str, Any]) -> list[str]:
    return [str(ipaddress.IPv4Address(r[4])) for r in decoded["answers"] if r[1] == A]


def addresses6(decoded: dict[str, Any]) -> list[str]:
    return [str(ipaddress.IPv6Address(r[4])) for r in decoded["answers"] if r[1] == AAAA]


def pointers(decoded: dict[str, Any]) -> list[str]:
    """PTR targets, read from the rdata (uncompressed, so it stands alone)."""
    found = []
    for record in decoded["answers"]:
        if record[1] == PTR:
            name, end = read_name(record[4], 0)
            assert end == len(record[4])
            found.append(name)
    return found
