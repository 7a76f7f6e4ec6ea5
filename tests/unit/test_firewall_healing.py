"""The healer's pure parts: the desired elements, the repair plan (missing, stray, and what
tether did lately), element texts read back from nft's JSON, and nftables' change
notifications reduced to what another process changed in tether's table. No kernel."""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from tether.firewall.nft import _ChangeWatch, _ours, table_notifications
from tether.firewall.rules import (
    SETS,
    NetworkRules,
    PortRule,
    desired_elements,
    element_repair,
    elements_from_json,
    merge_elements,
    network_elements,
    port_elements,
)

NET = NetworkRules("tbr-a", "10.210.0.0/24", masquerade=True, internal=False, icc=True)
WEB = PortRule("tcp", None, 8080, "10.210.0.2", 80)
LOCAL = PortRule("tcp", "127.0.0.1", 9090, "10.210.0.2", 80)
WEB_ELEMENT = "tcp . 8080 : 10.210.0.2 . 80"
LOCAL_ELEMENT = "127.0.0.1 . tcp . 9090 : 10.210.0.2 . 80"


def _want() -> dict[str, list[str]]:
    return desired_elements([NET], [WEB, LOCAL])


# -- desired_elements ---------------------------------------------------------------------


def test_desired_elements_are_what_sync_renders() -> None:
    assert desired_elements([NET, NET], [WEB, LOCAL, WEB]) == merge_elements(
        [network_elements(NET), port_elements([WEB, LOCAL])]
    )


def test_desired_elements_keep_the_first_target_of_a_host_port_given_twice() -> None:
    other = PortRule("tcp", None, 8080, "10.210.0.9", 80)
    assert desired_elements([], [WEB, other])["ports"] == [WEB_ELEMENT]


# -- element_repair -----------------------------------------------------------------------


def test_nothing_to_do_when_the_kernel_holds_the_desired_state() -> None:
    want = _want()
    delete, add = element_repair(want, {name: set(items) for name, items in want.items()})
    assert not any(delete.values()) and not any(add.values())
    assert list(delete) == list(add) == list(SETS)


def test_a_flushed_map_gets_exactly_its_elements_back() -> None:
    want = _want()
    delete, add = element_repair(want, {"ports_ip": set()})
    assert add["ports_ip"] == [LOCAL_ELEMENT]
    assert not any(delete.values())
    assert not any(v for k, v in add.items() if k != "ports_ip")  # only the sets read are compared


def test_a_flushed_set_gets_its_bridge_back() -> None:
    _, add = element_repair(_want(), {"bridges": set(), "icc_pairs": set()})
    assert add["bridges"] == ['"tbr-a"'] and add["icc_pairs"] == ['"tbr-a" . "tbr-a"']


def test_strays_go_and_a_retargeted_key_is_put_back() -> None:
    want = _want()
    have = {
        "ports": {"tcp . 8080 : 10.210.0.66 . 80", "udp . 7777 : 10.210.0.9 . 53"},
        "bridges": {'"tbr-a"', '"stray0"'},
    }
    delete, add = element_repair(want, have)
    assert delete["ports"] == ["tcp . 8080 : 10.210.0.66 . 80", "udp . 7777 : 10.210.0.9 . 53"]
    assert add["ports"] == [WEB_ELEMENT]
    assert delete["bridges"] == ['"stray0"'] and add["bridges"] == []


def test_what_tether_added_lately_stays_though_the_desired_state_lacks_it() -> None:
    # a container still ``creating``: its ports are in the kernel, not yet in the desired state
    fresh = "tcp . 6000 : 10.210.0.3 . 80"
    want = _want()
    delete, add = element_repair(want, {"ports": {WEB_ELEMENT, fresh}}, {("ports", fresh): True})
    assert delete["ports"] == [] and add["ports"] == []
    # and it is put back if someone flushes the map meanwhile
    _, add = element_repair(want, {"ports": set()}, {("ports", fresh): True})
    assert add["ports"] == sorted([WEB_ELEMENT, fresh])


def test_what_tether_removed_lately_is_not_put_back() -> None:
    # ``rm``: ports removed, the record a moment later; the desired state still has them
    want = _want()
    delete, add = element_repair(want, {"ports": set()}, {("ports", WEB_ELEMENT): False})
    assert add["ports"] == [] and delete["ports"] == []
    # if someone put it back by hand, it goes
    delete, _ = element_repair(want, {"ports": {WEB_ELEMENT}}, {("ports", WEB_ELEMENT): False})
    assert delete["ports"] == [WEB_ELEMENT]


def test_a_key_tether_set_lately_wins_over_a_lagging_desired_target() -> None:
    moved = "tcp . 8080 : 10.210.0.7 . 80"  # the port now goes to another container
    delete, add = element_repair(_want(), {"ports": {moved}}, {("ports", moved): True})
    assert delete["ports"] == [] and add["ports"] == []


def test_elements_changed_after_the_read_are_left_alone() -> None:
    fresh = "tcp . 6000 : 10.210.0.3 . 80"
    have = {"ports": {fresh}}  # read before tether removed it (recent: absent, and newer)
    delete, add = element_repair(
        _want(), have, {("ports", fresh): False, ("ports", WEB_ELEMENT): True},
        skip={("ports", fresh), ("ports", WEB_ELEMENT)},
    )
    assert delete["ports"] == [] and add["ports"] == []


# -- elements_from_json -------------------------------------------------------------------


def test_elements_with_comments_read_back_canonically() -> None:
    assert elements_from_json("bridges", {
        "type": "ifname", "elem": [{"elem": {"val": "x1", "comment": "hand"}}, "x2"],
    }) == {'"x1"', '"x2"'}
    assert elements_from_json("bridge_subnets", {
        "type": ["ifname", "ipv4_addr"], "flags": ["interval"],
        "elem": [{"elem": {"val": {"concat": ["x1", {"prefix": {"addr": "10.2.0.0", "len": 24}}]}, "comment": "z"}},
                 {"concat": ["x2", "10.3.0.1"]}],
    }) == {'"x1" . 10.2.0.0/24', '"x2" . 10.3.0.1/32'}
    assert elements_from_json("masq_subnets", {
        "type": "ipv4_addr", "flags": ["interval"],
        "elem": [{"elem": {"val": "10.7.7.7", "comment": "c"}}, {"range": ["10.9.0.1", "10.9.0.5"]}],
    }) == {"10.7.7.7/32", "10.9.0.1-10.9.0.5"}
    assert elements_from_json("ports", {
        "type": ["inet_proto", "inet_service"], "map": "ipv4_addr . inet_service",
        "elem": [[{"elem": {"val": {"concat": ["tcp", 99]}, "comment": "q"}}, {"concat": ["10.0.0.1", 80]}]],
    }) == {"tcp . 99 : 10.0.0.1 . 80"}


# -- change notifications -----------------------------------------------------------------

NEWCHAIN, NEWRULE, NEWSETELEM, DELSETELEM, NEWGEN = 3, 6, 12, 14, 15
IPV4, INET, UNSPEC = 2, 1, 0


def _attr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def _message(msg: int, family: int, attrs: bytes, portid: int = 0) -> bytes:
    header = struct.pack("=IHHII", 20 + len(attrs), (10 << 8) | msg, 0, 0, portid)
    return header + struct.pack("=BBH", family, 0, 0) + attrs


def _on(msg: int, table: str, set_name: str | None = None, family: int = IPV4) -> bytes:
    attrs = _attr(1, table.encode() + b"\0")
    if set_name is not None:
        attrs += _attr(2, set_name.encode() + b"\0")
    return _message(msg, family, attrs)


def _commit(pid: int) -> bytes:
    return _message(NEWGEN, UNSPEC, _attr(1, struct.pack("!I", 7)) + _attr(2, struct.pack("!I", pid)) + _attr(3, b"nft\0"))


def test_notifications_name_the_sets_of_tether_table_and_the_committer() -> None:
    data = b"".join([
        _on(DELSETELEM, "tether", "ports_ip"),
        _on(NEWSETELEM, "other", "ports"),  # another table
        _on(NEWSETELEM, "tether", "ports", family=INET),  # another family's table of that name
        _on(NEWRULE, "tether"),
        _on(NEWCHAIN, "tether"),
        _commit(4242),
    ])
    assert list(table_notifications(data, "tether")) == [
        ("elements", "ports_ip"), ("other", None), ("other", None), ("commit", 4242),
    ]


def test_a_message_cut_short_counts_as_a_change_and_others_are_ignored() -> None:
    whole = _on(DELSETELEM, "tether", "bridges")
    assert list(table_notifications(whole[:-3], "tether")) == [("other", None)]
    assert list(table_notifications(whole[:12], "tether")) == []  # not even a header
    route = struct.pack("=IHHII", 20, 16, 0, 0, 0) + b"\0" * 4  # RTM_NEWLINK: not nftables
    assert list(table_notifications(route, "tether")) == []


def test_transactions_of_this_process_are_ours() -> None:
    assert _ours(os.getpid())
    assert _ours(threading.get_native_id())
    assert not _ours(None)
    assert not _ours(2**31 - 7)


@pytest.fixture
def watch() -> Iterator[tuple[_ChangeWatch, socket.socket]]:
    """A _ChangeWatch reading datagrams a test sends, instead of the kernel's."""
    theirs, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    w = _ChangeWatch.__new__(_ChangeWatch)
    w._table, w._sock, w._sets, w._other = "tether", ours, set(), False
    yield w, theirs
    theirs.close()
    ours.close()


def test_watch_reports_what_another_process_changed(watch: tuple[_ChangeWatch, socket.socket]) -> None:
    w, kernel = watch
    assert w.changes() == (set(), False)
    kernel.send(_on(DELSETELEM, "tether", "ports_ip") + _on(DELSETELEM, "tether", "ports"))
    kernel.send(_on(NEWSETELEM, "tether", "admins_own_set"))  # not a set tether declared
    assert w.changes() == (set(), False)  # the transaction's end not read yet
    kernel.send(_commit(2**31 - 7))
    assert w.changes() == ({"ports_ip", "ports"}, False)
    kernel.send(_on(NEWRULE, "tether") + _commit(2**31 - 7))
    assert w.changes() == (set(), True)


def test_watch_ignores_transactions_of_this_process(watch: tuple[_ChangeWatch, socket.socket]) -> None:
    w, kernel = watch
    kernel.send(_on(NEWSETELEM, "tether", "ports") + _commit(threading.get_native_id()))
    kernel.send(_on(NEWSETELEM, "tether", "bridges") + _commit(os.getpid()))
    assert w.changes() == (set(), False)
