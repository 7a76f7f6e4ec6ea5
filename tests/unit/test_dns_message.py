"""The DNS wire format of the embedded resolver: parse, build, truncate, and survive garbage.

Packets are assembled by hand (``dnskit.query_bytes``) and responses are read back with a
small decoder of the tests' own (``dnskit.decode``), so the module is never checked only
against itself.
"""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest
from dnskit import (
    addresses,
    addresses6,
    decode,
    opt_record,
    pointers,
    query_bytes,
    wire_name,
)

from tether.dns import message
from tether.dns.message import (
    AAAA,
    ADVERTISED_UDP_SIZE,
    CLASS_IN,
    FORMERR,
    NOERROR,
    NXDOMAIN,
    OPT,
    PTR,
    SERVFAIL,
    A,
    MalformedMessage,
    build_format_error,
    build_response,
    first_question,
    is_response,
    is_truncated,
    message_id,
    name_labels,
    parse_query,
    rcode_of,
    truncate,
    with_id,
)

# ---- parsing ----------------------------------------------------------------------------


def test_parse_plain_query() -> None:
    query = parse_query(query_bytes("db.appnet.", ident=0xBEEF))
    assert query.id == 0xBEEF
    assert query.opcode == 0
    assert not query.is_response
    assert query.question.name == "db.appnet"
    assert query.question.qtype == A and query.question.qclass == CLASS_IN
    assert query.edns is None
    assert query.max_udp_size == 512


def test_parse_keeps_case_and_compares_without_it() -> None:
    upper = parse_query(query_bytes("Db.AppNet"))
    lower = parse_query(query_bytes("db.appnet"))
    assert upper.question.name == "Db.AppNet"
    assert upper.question.key() == lower.question.key()


def test_root_and_escaped_labels() -> None:
    assert parse_query(query_bytes(".")).question.name == ""
    packet = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x04a.bc\x03net\x00" + struct.pack("!HH", A, 1)
    assert parse_query(packet).question.name == "a\\.bc.net"  # not 'a.bc.net'


@pytest.mark.parametrize(
    ("size", "expected"), [(4096, 4096), (1232, 1232), (512, 512), (100, 512), (0, 512)]
)
def test_edns_size_is_honoured_with_512_floor(size: int, expected: int) -> None:
    query = parse_query(query_bytes("db", edns=size, do=True))
    assert query.edns is not None
    assert query.edns.payload_size == size
    assert query.edns.dnssec_ok
    assert query.edns.version == 0
    assert query.max_udp_size == expected


def test_edns_version_is_read() -> None:
    query = parse_query(query_bytes("db", edns=1232, version=1))
    assert query.edns is not None and query.edns.version == 1


def test_compression_pointers_in_later_sections_are_followed() -> None:
    # A query carrying an answer record whose owner is "www" + pointer to the question,
    # a second question that is a bare pointer, then the OPT record: parse must walk the
    # pointers to find the OPT.
    question = wire_name("example.test") + struct.pack("!HH", A, 1)
    second_question = b"\xc0\x0c" + struct.pack("!HH", AAAA, 1)
    answer_offset = 12 + len(question) + len(second_question)
    answer = b"\x03www\xc0\x0c" + struct.pack("!HHIH", A, 1, 60, 4) + bytes([192, 0, 2, 1])
    # an authority record pointing at the answer's owner, which itself points further back
    authority = struct.pack("!H", 0xC000 | answer_offset) + struct.pack("!HHIH", A, 1, 60, 4) + bytes(4)
    header = struct.pack("!HHHHHH", 7, 0, 2, 1, 1, 1)
    packet = header + question + second_question + answer + authority + opt_record(2048)
    query = parse_query(packet)
    assert query.question.name == "example.test"
    assert query.edns is not None and query.edns.payload_size == 2048
    # the names themselves, through the private reader
    labels, end = message._read_name(packet, answer_offset)
    assert labels == (b"www", b"example", b"test") and end == answer_offset + 6
    labels, _ = message._read_name(packet, answer_offset + len(answer))
    assert labels == (b"www", b"example", b"test")


# ---- building ---------------------------------------------------------------------------


def test_a_answer_round_trip() -> None:
    query = parse_query(query_bytes("Db.AppNet", ident=0x4242))
    decoded = decode(build_response(query, NOERROR, ["10.0.0.2", "10.0.0.3"], authoritative=True))
    assert decoded["id"] == 0x4242
    assert decoded["qr"] and decoded["aa"] and decoded["ra"] and decoded["rd"]
    assert not decoded["tc"]
    assert decoded["rcode"] == NOERROR
    assert decoded["questions"] == [("Db.AppNet", A, CLASS_IN)]  # echoed as asked (0x20)
    assert addresses(decoded) == ["10.0.0.2", "10.0.0.3"]
    for owner, rtype, rclass, ttl, _ in decoded["answers"]:
        assert (owner, rtype, rclass, ttl) == ("Db.AppNet", A, CLASS_IN, 0)
    assert decoded["additional"] == []


def test_aaaa_answer_round_trip() -> None:
    query = parse_query(query_bytes("Db.AppNet", AAAA, ident=0x4343))
    packet = build_response(query, NOERROR, ["fd00:210::2", "FD00:210:0::3"], authoritative=True)
    decoded = decode(packet)
    assert decoded["aa"] and decoded["rcode"] == NOERROR and not decoded["tc"]
    assert decoded["questions"] == [("Db.AppNet", AAAA, CLASS_IN)]
    assert addresses6(decoded) == ["fd00:210::2", "fd00:210::3"]
    for owner, rtype, rclass, ttl, rdata in decoded["answers"]:
        assert (owner, rtype, rclass, ttl, len(rdata)) == ("Db.AppNet", AAAA, CLASS_IN, 0, 16)


def test_any_answer_carries_both_families_in_the_order_given() -> None:
    query = parse_query(query_bytes("db", message.ANY))
    decoded = decode(build_response(query, NOERROR, ["10.0.0.2", "fd00::2", "10.0.0.3"]))
    assert [r[1] for r in decoded["answers"]] == [A, AAAA, A]
    assert addresses(decoded) == ["10.0.0.2", "10.0.0.3"] and addresses6(decoded) == ["fd00::2"]


@pytest.mark.parametrize(
    ("address", "target"),
    [("10.210.0.2", "web.appnet"), ("fd00:210::2", "Web.AppNet"), ("10.210.0.2", "a.b.c.appnet.")],
)
def test_ptr_answer_round_trip(address: str, target: str) -> None:
    reverse = ipaddress.ip_address(address).reverse_pointer
    query = parse_query(query_bytes(reverse.upper(), PTR, edns=1232))
    assert message.first_question(query_bytes(reverse, PTR)).key() == query.question.key()
    packet = build_response(query, NOERROR, pointers=[target], authoritative=True)
    decoded = decode(packet)
    assert decoded["questions"] == [(reverse.upper(), PTR, CLASS_IN)]  # echoed as asked
    assert pointers(decoded) == [target.rstrip(".")]
    owner, rtype, rclass, ttl, _ = decoded["answers"][0]
    assert (owner, rtype, rclass, ttl) == (reverse.upper(), PTR, CLASS_IN, 0)
    assert decoded["additional"][0][1] == OPT


def test_addresses_and_pointers_together_and_bad_ones() -> None:
    query = parse_query(query_bytes("x", message.ANY))
    decoded = decode(build_response(query, NOERROR, ["fd00::1"], pointers=["x.net"]))
    assert [r[1] for r in decoded["answers"]] == [AAAA, PTR]
    for bad in ("a..b", "é.net", "x" * 64 + ".net"):
        with pytest.raises(MalformedMessage):
            build_response(query, NOERROR, pointers=[bad])
        with pytest.raises(MalformedMessage):
            name_labels(bad)
    with pytest.raises(ValueError):
        build_response(query, NOERROR, ["not-an-address"])
    assert name_labels("web.appnet.") == (b"web", b"appnet")


def test_aaaa_truncation_keeps_whole_records() -> None:
    many6 = [str(ipaddress.IPv6Address("fd00::") + i) for i in range(40)]
    query = parse_query(query_bytes("big", AAAA))
    packet = build_response(query, NOERROR, many6, max_size=query.max_udp_size)
    decoded = decode(packet)
    assert len(packet) <= 512 and decoded["tc"]
    assert addresses6(decoded) == many6[: len(decoded["answers"])] and decoded["answers"]


@pytest.mark.parametrize("rcode", [NXDOMAIN, SERVFAIL, FORMERR])
def test_error_responses(rcode: int) -> None:
    query = parse_query(query_bytes("nowhere.test", flags=0))
    decoded = decode(build_response(query, rcode))
    assert decoded["rcode"] == rcode
    assert decoded["qr"] and not decoded["aa"] and not decoded["rd"]
    assert decoded["answers"] == []
    assert decoded["questions"] == [("nowhere.test", A, CLASS_IN)]


def test_noerror_empty_for_aaaa_of_a_known_name() -> None:
    query = parse_query(query_bytes("db", AAAA))
    decoded = decode(build_response(query, NOERROR, [], authoritative=True))
    assert decoded["rcode"] == NOERROR and decoded["answers"] == []
    assert decoded["questions"] == [("db", AAAA, CLASS_IN)]


def test_edns_query_gets_an_opt_record_back() -> None:
    query = parse_query(query_bytes("db", edns=4096))
    decoded = decode(build_response(query, NOERROR, ["10.0.0.2"]))
    assert len(decoded["additional"]) == 1
    owner, rtype, rclass, ttl, rdata = decoded["additional"][0]
    assert (owner, rtype, rclass, ttl, rdata) == ("", OPT, ADVERTISED_UDP_SIZE, 0, b"")


def test_badvers_goes_into_the_opt_record() -> None:
    query = parse_query(query_bytes("db", edns=4096, version=1))
    decoded = decode(build_response(query, message.BADVERS))
    assert decoded["rcode"] == 0
    assert decoded["additional"][0][3] >> 24 == 1  # 16 >> 4: the extended rcode's top bits


def many(count: int) -> list[str]:
    return [str(ipaddress.IPv4Address("10.1.0.0") + i) for i in range(count)]


def test_udp_truncation_at_512_without_edns() -> None:
    query = parse_query(query_bytes("big"))
    packet = build_response(query, NOERROR, many(100), max_size=query.max_udp_size)
    assert len(packet) <= 512
    decoded = decode(packet)
    assert decoded["tc"] and is_truncated(packet)
    assert 0 < len(decoded["answers"]) < 100
    assert addresses(decoded) == many(len(decoded["answers"]))  # whole records, in order


def test_edns_size_lifts_the_limit() -> None:
    query = parse_query(query_bytes("big", edns=4096))
    packet = build_response(query, NOERROR, many(100), max_size=query.max_udp_size)
    decoded = decode(packet)
    assert not decoded["tc"] and len(decoded["answers"]) == 100
    assert len(decoded["additional"]) == 1

    small = parse_query(query_bytes("big", edns=1000))
    packet = build_response(small, NOERROR, many(100), max_size=small.max_udp_size)
    assert len(packet) <= 1000 and is_truncated(packet)
    assert decode(packet)["additional"][0][1] == OPT  # the OPT record survives truncation


def test_tcp_size_fits_everything() -> None:
    query = parse_query(query_bytes("big"))
    packet = build_response(query, NOERROR, many(1000), max_size=message.TCP_MAX_SIZE)
    assert not is_truncated(packet) and len(decode(packet)["answers"]) == 1000


def test_truncate_relayed_response() -> None:
    query = parse_query(query_bytes("big.example"))
    full = build_response(query, NOERROR, many(100), max_size=message.TCP_MAX_SIZE)
    assert truncate(full, len(full)) is full
    cut = truncate(full, 512)
    decoded = decode(cut)
    assert decoded["tc"] and decoded["answers"] == [] and decoded["id"] == 0x1234
    assert decoded["questions"] == [("big.example", A, CLASS_IN)]


def test_header_helpers() -> None:
    packet = query_bytes("db", ident=0x0102)
    assert message_id(packet) == 0x0102
    assert message_id(with_id(packet, 0xFFFE)) == 0xFFFE
    assert with_id(packet, 0xFFFE)[2:] == packet[2:]
    response = build_response(parse_query(packet), NXDOMAIN)
    assert is_response(response) and not is_response(packet)
    assert rcode_of(response) == NXDOMAIN
    assert first_question(response).key() == first_question(packet).key()


# ---- malformed input --------------------------------------------------------------------


def header(qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0, flags: int = 0) -> bytes:
    return struct.pack("!HHHHHH", 0x5555, flags, qd, an, ns, ar)


QTAIL = struct.pack("!HH", A, 1)
MALFORMED = {
    "empty": b"",
    "short header": b"\x12\x34\x01\x00\x00",
    "no question": header(qd=0),
    "question missing": header(),
    "cut label": header() + b"\x05ab",
    "no root": header() + b"\x02ab",
    "no qtype": header() + b"\x02ab\x00\x00",
    "self pointer": header() + b"\xc0\x0c" + QTAIL,
    "pointer loop": header(qd=2) + b"\x01a\x00" + QTAIL + b"\xc0\x17" + QTAIL,
    "forward pointer": header() + b"\xc0\x20" + QTAIL + bytes(32),
    "pointer into header": header(qd=2) + b"\x01a\x00" + QTAIL + b"\xc0\x02" + QTAIL,
    "cut pointer": header() + b"\x01a\xc0",
    "reserved label type": header() + b"\x41a\x00" + QTAIL,
    "name over 255": header() + b"".join(b"\x3f" + b"a" * 63 for _ in range(4)) + b"\x00" + QTAIL,
    "cut answer": header(an=1) + b"\x01a\x00" + QTAIL + b"\xc0\x0c\x00\x01",
    "rdata past end": header(ar=1) + b"\x01a\x00" + QTAIL + b"\x00" + struct.pack("!HHIH", 1, 1, 0, 50),
    "two opt": header(ar=2) + b"\x01a\x00" + QTAIL + opt_record(512) + opt_record(512),
    "opt not at root": header(ar=1) + b"\x01a\x00" + QTAIL + b"\x01x\x00" + opt_record(512)[1:],
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_raises_only_malformed(name: str) -> None:
    packet = MALFORMED[name]
    with pytest.raises(MalformedMessage):
        parse_query(packet)
    reply = build_format_error(packet)
    if len(packet) < 12:
        assert reply is None
    else:
        assert reply is not None
        decoded = decode(reply)
        assert decoded["id"] == 0x5555 and decoded["qr"] and decoded["rcode"] == FORMERR
        assert decoded["questions"] == []


def test_format_error_never_answers_a_response() -> None:
    assert build_format_error(header(flags=0x8000) + b"\x05ab") is None


def test_every_truncation_of_a_valid_query_is_handled() -> None:
    packet = query_bytes("www.example.test", edns=1232)
    parse_query(packet)
    for cut in range(len(packet)):
        with pytest.raises(MalformedMessage):
            parse_query(packet[:cut])


def test_fuzz_never_raises_anything_else() -> None:
    rng = random.Random(20240611)
    seeds = [query_bytes("www.example.test", edns=1232), query_bytes("db"), MALFORMED["pointer loop"]]
    for i in range(20000):
        if i % 2:
            packet = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 4)):
                packet[rng.randrange(len(packet))] = rng.randrange(256)
        else:
            packet = bytearray(rng.randbytes(rng.randint(0, 80)))
            if len(packet) > 5 and rng.random() < 0.8:
                packet[4:6] = b"\x00\x01"  # mostly one question, to get past the header
        try:
            query = parse_query(bytes(packet))
        except MalformedMessage:
            build_format_error(bytes(packet))
            continue
        # whatever parses can be answered, and the answer is well formed
        decode(build_response(query, NOERROR, ["10.0.0.1"], max_size=query.max_udp_size))
