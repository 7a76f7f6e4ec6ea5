"""The DNS wire format, as far as the embedded resolver needs it: pure functions, no I/O.

Design note. The resolver answers only two kinds of question itself, "the addresses of a
container name" and "the container name of an address", and relays everything else byte
for byte. So this module parses what it must to route a query (the header, the first
question, an EDNS0 OPT record for the UDP size limit) and builds the few responses the
resolver makes itself: A, AAAA and PTR answers, NOERROR with no answer, and error codes. Names are parsed with compression pointers, which must point
strictly backwards (each jump before the start of the piece that led to it), so a hostile
packet cannot loop; everything malformed raises ``MalformedMessage``, never anything else.
The question is echoed exactly as it was asked, case included: some resolvers randomise
the case of a name and check that the answer repeats it (DNS 0x20).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "AAAA",
    "ADVERTISED_UDP_SIZE",
    "ANY",
    "BADVERS",
    "CLASS_IN",
    "FORMERR",
    "NOERROR",
    "NOTIMP",
    "NXDOMAIN",
    "OPT",
    "PTR",
    "REFUSED",
    "SERVFAIL",
    "TCP_MAX_SIZE",
    "UDP_MIN_SIZE",
    "A",
    "Edns",
    "MalformedMessage",
    "Query",
    "Question",
    "build_format_error",
    "build_response",
    "encode_name",
    "first_question",
    "is_response",
    "is_truncated",
    "message_id",
    "name_labels",
    "parse_query",
    "rcode_of",
    "truncate",
    "with_id",
]

# Record types and the one class the resolver knows.
A = 1
PTR = 12
AAAA = 28
OPT = 41
ANY = 255
CLASS_IN = 1

# Response codes (BADVERS is an extended code, carried partly in the OPT record).
NOERROR = 0
FORMERR = 1
SERVFAIL = 2
NXDOMAIN = 3
NOTIMP = 4
REFUSED = 5
BADVERS = 16

UDP_MIN_SIZE = 512  # RFC 1035: the UDP limit without EDNS0, and the floor with it
TCP_MAX_SIZE = 65535  # the two-byte length prefix of DNS over TCP
# What the resolver advertises in its own OPT records: the DNS Flag Day 2020 value,
# which fits an IPv6 minimum MTU without fragments.
ADVERTISED_UDP_SIZE = 1232

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_QR = 0x8000
_AA = 0x0400
_TC = 0x0200
_RD = 0x0100
_RA = 0x0080
_CD = 0x0010
_OPCODE_MASK = 0x7800
_DO = 0x8000  # EDNS0 "DNSSEC OK", in the OPT record's TTL field
_MAX_NAME = 255  # RFC 1035, octets on the wire including length bytes and the root
_POINTER = 0xC0
_POINTER_ANSWER = 0xC00C  # every answer's owner: the question name at offset 12


class MalformedMessage(ValueError):
    """The bytes are not a DNS message this module can read."""


@dataclass(frozen=True)
class Question:
    """One question: the name as asked (labels, case kept), its type and class."""

    labels: tuple[bytes, ...]
    qtype: int
    qclass: int

    @property
    def name(self) -> str:
        """The name as text, case kept, without the trailing dot ('' for the root).

        A dot or backslash inside a label is escaped (``\\.``), so it cannot pass for a
        label boundary; other bytes outside ASCII become U+FFFD and match nothing.
        """
        return ".".join(_label_text(label) for label in self.labels)

    def key(self) -> tuple[tuple[bytes, ...], int, int]:
        """Equality as DNS sees it: names compare case-insensitively (ASCII only)."""
        return tuple(label.lower() for label in self.labels), self.qtype, self.qclass


@dataclass(frozen=True)
class Edns:
    """The EDNS0 OPT pseudo-record of a message (RFC 6891)."""

    payload_size: int
    version: int
    dnssec_ok: bool


@dataclass(frozen=True)
class Query:
    """What the resolver needs of a message: header, first question, EDNS0 if present."""

    id: int
    flags: int  # the header's second word as received
    question: Question
    edns: Edns | None

    @property
    def opcode(self) -> int:
        return (self.flags & _OPCODE_MASK) >> 11

    @property
    def is_response(self) -> bool:
        return bool(self.flags & _QR)

    @property
    def max_udp_size(self) -> int:
        """The largest UDP response the asker accepts: 512, or its EDNS0 size (not less)."""
        if self.edns is None:
            return UDP_MIN_SIZE
        return max(UDP_MIN_SIZE, self.edns.payload_size)


def _label_text(label: bytes) -> str:
    text = label.decode("ascii", errors="replace")
    return text.replace("\\", "\\\\").replace(".", "\\.")


def encode_name(labels: Sequence[bytes]) -> bytes:
    """The uncompressed wire form of a name given as labels."""
    out = bytearray()
    for label in labels:
        if not 0 < len(label) < 64:
            raise MalformedMessage(f"label of {len(label)} octets")
        out.append(len(label))
        out += label
    out.append(0)
    if len(out) > _MAX_NAME:
        raise MalformedMessage("name longer than 255 octets")
    return bytes(out)


def name_labels(text: str) -> tuple[bytes, ...]:
    """The labels of a name given as dotted text (a trailing dot ignored); raise
    ``MalformedMessage`` unless it encodes (ASCII, labels of 1-63 octets, 255 in all)."""
    try:
        labels = tuple(part.encode("ascii") for part in text.rstrip(".").split("."))
    except UnicodeEncodeError as exc:
        raise MalformedMessage(f"name {text!r} is not ASCII") from exc
    encode_name(labels)
    return labels


def _read_name(packet: bytes, offset: int) -> tuple[tuple[bytes, ...], int]:
    """Labels of the name at ``offset`` and the offset just after it (compression allowed)."""
    labels: list[bytes] = []
    wire_length = 1  # the root's zero octet
    end: int | None = None  # where the name ends in the packet: after its first pointer
    segment_start = offset
    while True:
        if offset >= len(packet):
            raise MalformedMessage("name runs past the end")
        length = packet[offset]
        if length == 0:
            offset += 1
            break
        if length & _POINTER == _POINTER:
            if offset + 1 >= len(packet):
                raise MalformedMessage("truncated compression pointer")
            target = ((length & 0x3F) << 8) | packet[offset + 1]
            # Strictly backwards, and before the piece that led here: every jump lands
            # earlier than the last one, so a pointer loop is impossible.
            if not _HEADER.size <= target < segment_start:
                raise MalformedMessage("bad compression pointer")
            if end is None:
                end = offset + 2
            offset = segment_start = target
            continue
        if length & _POINTER:
            raise MalformedMessage("unknown label type")
        label = packet[offset + 1 : offset + 1 + length]
        if len(label) != length:
            raise MalformedMessage("label runs past the end")
        wire_length += length + 1
        if wire_length > _MAX_NAME:
            raise MalformedMessage("name longer than 255 octets")
        labels.append(label)
        offset += 1 + length
    return tuple(labels), offset if end is None else end


def _read_question(packet: bytes, offset: int) -> tuple[Question, int]:
    labels, offset = _read_name(packet, offset)
    if offset + 4 > len(packet):
        raise MalformedMessage("question runs past the end")
    qtype, qclass = struct.unpack_from("!HH", packet, offset)
    return Question(labels, qtype, qclass), offset + 4


def _skip_record(packet: bytes, offset: int) -> tuple[tuple[bytes, ...], int, int, int, int]:
    """Read one resource record's owner and fixed part; return them and the offset after it."""
    labels, offset = _read_name(packet, offset)
    if offset + _RR_FIXED.size > len(packet):
        raise MalformedMessage("record runs past the end")
    rtype, rclass, ttl, rdlength = _RR_FIXED.unpack_from(packet, offset)
    offset += _RR_FIXED.size + rdlength
    if offset > len(packet):
        raise MalformedMessage("record data runs past the end")
    return labels, rtype, rclass, ttl, offset


def _first_question(packet: bytes) -> tuple[Question, int]:
    if len(packet) < _HEADER.size:
        raise MalformedMessage("shorter than a header")
    if packet[4:6] == b"\x00\x00":
        raise MalformedMessage("no question")
    return _read_question(packet, _HEADER.size)


def first_question(packet: bytes) -> Question:
    """Only the first question of a message (enough to match an upstream reply to its query)."""
    return _first_question(packet)[0]


def parse_query(packet: bytes) -> Query:
    """Header, first question and EDNS0 of a message; raise ``MalformedMessage`` if unreadable.

    Further questions are skipped (a query has one); answer and authority records are
    walked only to reach the additional section, where at most one OPT record may be.
    """
    question, offset = _first_question(packet)
    ident, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(packet)
    for _ in range(qdcount - 1):
        _, offset = _read_question(packet, offset)
    for _ in range(ancount + nscount):
        offset = _skip_record(packet, offset)[4]
    edns: Edns | None = None
    for _ in range(arcount):
        labels, rtype, rclass, ttl, offset = _skip_record(packet, offset)
        if rtype != OPT:
            continue
        if edns is not None or labels:
            raise MalformedMessage("more than one OPT record, or one not at the root")
        edns = Edns(
            payload_size=rclass,
            version=(ttl >> 16) & 0xFF,
            dnssec_ok=bool(ttl & _DO),
        )
    return Query(id=ident, flags=flags, question=question, edns=edns)


def _opt_record(extended_rcode: int = 0) -> bytes:
    ttl = (extended_rcode >> 4) << 24  # version 0, no flags
    return b"\x00" + _RR_FIXED.pack(OPT, ADVERTISED_UDP_SIZE, ttl, 0)


def _address_record(address: str, ttl: int) -> bytes:
    """An A or AAAA record for ``address`` (by its family), owned by the question name."""
    # inet_pton, not ipaddress: this runs per answer, and is over ten times faster.
    try:
        packed = socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
    except OSError as exc:
        raise ValueError(f"not an IP address: {address!r}") from exc
    rtype = A if len(packed) == 4 else AAAA
    return struct.pack("!H", _POINTER_ANSWER) + _RR_FIXED.pack(rtype, CLASS_IN, ttl, len(packed)) + packed


def _pointer_record(target: str, ttl: int) -> bytes:
    """A PTR record naming ``target`` (dotted text), owned by the question name."""
    rdata = encode_name(name_labels(target))
    return struct.pack("!H", _POINTER_ANSWER) + _RR_FIXED.pack(PTR, CLASS_IN, ttl, len(rdata)) + rdata


def build_response(
    query: Query,
    rcode: int = NOERROR,
    addresses: Sequence[str] = (),
    *,
    pointers: Sequence[str] = (),
    max_size: int = UDP_MIN_SIZE,
    ttl: int = 0,
    authoritative: bool = False,
) -> bytes:
    """A response to ``query``: ``rcode``, one A or AAAA record per address (by its
    family, in the order given), then one PTR record per name in ``pointers``.

    The caller picks the records that fit the question; this only encodes them. The
    question is echoed as asked; answers point at it (compression). An OPT record
    follows if the query had one. If the whole does not fit ``max_size``, the answers that
    fit are kept and TC is set, telling the asker to retry over TCP.
    """
    flags = _QR | _RA | (query.flags & (_OPCODE_MASK | _RD | _CD)) | (rcode & 0x0F)
    if authoritative:
        flags |= _AA
    q = query.question
    question = encode_name(q.labels) + struct.pack("!HH", q.qtype, q.qclass)
    opt = _opt_record(rcode) if query.edns is not None else b""
    room = max_size - _HEADER.size - len(question) - len(opt)
    answers = bytearray()
    count = 0
    records = [_address_record(a, ttl) for a in addresses] + [_pointer_record(p, ttl) for p in pointers]
    for record in records:
        if len(answers) + len(record) > room:
            flags |= _TC
            break
        answers += record
        count += 1
    header = _HEADER.pack(query.id, flags, 1, count, 0, 1 if opt else 0)
    return header + question + bytes(answers) + opt


def build_format_error(packet: bytes) -> bytes | None:
    """FORMERR for an unreadable message, or None when there is nothing to answer.

    Too short for a header, or itself a response: stay silent (answering responses is how
    two servers end up in a loop). The reply is a bare header: the question may be garbage.
    """
    if len(packet) < _HEADER.size:
        return None
    ident, flags = struct.unpack_from("!HH", packet)
    if flags & _QR:
        return None
    reply_flags = _QR | _RA | (flags & (_OPCODE_MASK | _RD | _CD)) | FORMERR
    return _HEADER.pack(ident, reply_flags, 0, 0, 0, 0)


def truncate(response: bytes, max_size: int) -> bytes:
    """``response`` if it fits ``max_size``, else its header and question with TC set.

    For relaying a large upstream answer over UDP: the asker retries over TCP.
    """
    if len(response) <= max_size:
        return response
    if len(response) < _HEADER.size:
        raise MalformedMessage("shorter than a header")
    ident, flags, qdcount = struct.unpack_from("!HHH", response)
    offset = _HEADER.size
    try:
        for _ in range(qdcount):
            _, offset = _read_question(response, offset)
    except MalformedMessage:
        qdcount, offset = 0, _HEADER.size
    if offset > max_size:  # an absurd question; a bare header still says "use TCP"
        qdcount, offset = 0, _HEADER.size
    header = _HEADER.pack(ident, flags | _TC, qdcount, 0, 0, 0)
    return header + response[_HEADER.size : offset]


def message_id(packet: bytes) -> int:
    if len(packet) < 2:
        raise MalformedMessage("shorter than a header")
    return int(struct.unpack_from("!H", packet)[0])


def with_id(packet: bytes, ident: int) -> bytes:
    """``packet`` with its message ID replaced (for forwarding under a fresh ID)."""
    if len(packet) < _HEADER.size:
        raise MalformedMessage("shorter than a header")
    return struct.pack("!H", ident) + packet[2:]


def is_response(packet: bytes) -> bool:
    return len(packet) >= _HEADER.size and bool((packet[2] << 8) & _QR)


def is_truncated(packet: bytes) -> bool:
    return len(packet) >= _HEADER.size and bool((packet[2] << 8) & _TC)


def rcode_of(packet: bytes) -> int:
    """The header's response code (the low four bits; extended codes live in OPT)."""
    if len(packet) < _HEADER.size:
        raise MalformedMessage("shorter than a header")
    return packet[3] & 0x0F
