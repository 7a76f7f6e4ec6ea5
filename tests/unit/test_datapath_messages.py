"""The netlink messages the datapath builds itself for the attach path (``workers.py``) are
byte for byte what pyroute2's keyword API sends for the same request, so building them
by hand (several times cheaper) changes nothing the kernel sees."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import Any

import pytest
from pyroute2 import IPBatch  # type: ignore[import-untyped]

from tether.datapath.workers import IFA_F_NODAD, address_message, default_route_message, link_up_message

CASES: list[tuple[str, Callable[[], Any], Callable[[Any], Any]]] = [
    ("IPv4 address", lambda: address_message(5, "10.1.0.2", 24),
     lambda b: b.addr("add", index=5, address="10.1.0.2", prefixlen=24)),
    ("IPv6 address, no DAD", lambda: address_message(5, "fd00:1::2", 64),
     lambda b: b.addr("add", index=5, address="fd00:1::2", prefixlen=64, family=socket.AF_INET6, flags=IFA_F_NODAD)),
    ("link up", lambda: link_up_message(5), lambda b: b.link("set", index=5, state="up")),
    ("IPv4 default route", lambda: default_route_message(5, "10.1.0.1", socket.AF_INET),
     lambda b: b.route("add", dst="0.0.0.0/0", gateway="10.1.0.1", oif=5)),
    ("IPv6 default route", lambda: default_route_message(5, "fd00:1::1", socket.AF_INET6),
     lambda b: b.route("add", family=socket.AF_INET6, dst="::/0", gateway="fd00:1::1", oif=5)),
]  # fmt: skip


@pytest.mark.parametrize("built, keyword", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_built_message_is_what_the_keyword_api_sends(built: Callable[[], Any], keyword: Callable[[Any], Any]) -> None:
    batch = IPBatch()
    try:
        keyword(batch)
        expected = bytes(batch.batch)
    finally:
        batch.close()
    _length, _type, _flags, seq, pid = struct.unpack_from("=IHHII", expected)
    msg = built()
    msg["header"]["sequence_number"], msg["header"]["pid"] = seq, pid
    msg.encode()
    assert bytes(msg.data) == expected
