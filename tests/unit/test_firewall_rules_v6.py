"""Dual stack in the firewall's pure parts: what a v6 subnet and a v6 published port render
into the ``ip6`` table, what is refused, how elements read back, which notifications name
which keys, and the fake's v6 behaviour. No kernel."""

from __future__ import annotations

import pytest

from tether.errors import Conflict, InvalidInput
from tether.firewall.chains import CHAINS, SETS, qualified, split_key
from tether.firewall.nft import table_notifications
from tether.firewall.rules import (
    NetworkRules,
    PortRule,
    desired_elements,
    element_repair,
    elements_from_json,
    network_candidates,
    network_elements,
    port_elements,
    render_add,
    render_remove,
    render_sync,
)
from tether.testing.firewall import RecordingFirewall

DUAL = NetworkRules("tbr-a", "10.210.0.0/24", True, False, True, subnet6="fd12:3456:789a::/64")
DUAL_INTERNAL = NetworkRules("tbr-b", "10.211.0.0/24", True, True, False, subnet6="fd12:3456:789b::/64")
DUAL_ROUTED = NetworkRules("tbr-c", "10.212.0.0/16", False, False, True, True, "fd12:3456:789c::/64")
WEB4 = PortRule("tcp", None, 8080, "10.210.0.2", 80)
WEB6 = PortRule("tcp", None, 8080, "fd12:3456:789a::2", 80)
LOOP6 = PortRule("tcp", "::1", 8081, "fd12:3456:789a::2", 81)
ONE6 = PortRule("udp", "2001:db8::10", 53, "fd12:3456:789a::2", 5353)


def test_keys_name_family_and_set() -> None:
    assert split_key("ports") == ("ip", "ports") and split_key("ip6 ports") == ("ip6", "ports")
    assert qualified("ip", "bridges") == "bridges" and qualified("ip6", "bridges") == "ip6 bridges"
    assert [k for k in SETS if " " not in k] == [k.split(" ", 1)[1] for k in SETS if k.startswith("ip6 ")]
    assert SETS["ip6 ports"].kind == "map" and "ipv6_addr" in SETS["ip6 ports_ip"].declaration
    assert {split_key(k)[1] for k in CHAINS} == {"guard", "prerouting", "output", "postrouting", "forward"}


def test_dual_stack_network_golden() -> None:
    assert render_add("tether", network_elements(DUAL)) == """\
add element ip tether bridges { "tbr-a" }
add element ip tether masq_subnets { 10.210.0.0/24 }
add element ip tether icc_pairs { "tbr-a" . "tbr-a" }
add element ip tether bridge_subnets { "tbr-a" . 10.210.0.0/24 }
add element ip6 tether bridges { "tbr-a" }
add element ip6 tether masq_subnets { fd12:3456:789a::/64 }
add element ip6 tether icc_pairs { "tbr-a" . "tbr-a" }
add element ip6 tether bridge_subnets { "tbr-a" . fd12:3456:789a::/64 }
"""


def test_v6_flags_follow_the_v4_ones() -> None:
    internal = network_elements(DUAL_INTERNAL)
    assert internal["ip6 masq_subnets"] == [] and internal["ip6 icc_pairs"] == []
    assert internal["ip6 internal_bridges"] == ['"tbr-b"'] == internal["internal_bridges"]
    assert internal["ip6 bridge_subnets"] == ['"tbr-b" . fd12:3456:789b::/64']
    routed = network_elements(DUAL_ROUTED)
    assert routed["ip6 routed_subnets"] == ["fd12:3456:789c::/64"] and routed["ip6 masq_subnets"] == []
    # host bits are dropped, the spelling is canonical
    odd = network_elements(NetworkRules("x", "10.0.0.5/24", True, False, True, subnet6="FD00:0:0:0::7/64"))
    assert odd["ip6 masq_subnets"] == ["fd00::/64"]


def test_removal_covers_every_v6_element() -> None:
    candidates = network_candidates(DUAL_INTERNAL)
    assert candidates["ip6 masq_subnets"] == ["fd12:3456:789b::/64"]
    assert candidates["ip6 routed_subnets"] == ["fd12:3456:789b::/64"]
    assert candidates["ip6 icc_pairs"] == ['"tbr-b" . "tbr-b"']
    assert candidates["ip6 internal_bridges"] == ['"tbr-b"']
    text = render_remove("tether", candidates)
    assert text.index("add element ip6 tether routed_subnets") < text.index("delete element ip tether bridges")


def test_v6_ports_golden() -> None:
    text = render_add("tether", port_elements([WEB4, WEB6, LOOP6, ONE6, PortRule("tcp", "::", 9090, "fd00::3", 90)]))
    assert text == """\
add element ip tether ports { tcp . 8080 : 10.210.0.2 . 80 }
add element ip6 tether ports { tcp . 8080 : fd12:3456:789a::2 . 80, tcp . 9090 : fd00::3 . 90 }
add element ip6 tether ports_ip { ::1 . tcp . 8081 : fd12:3456:789a::2 . 81, 2001:db8::10 . udp . 53 : fd12:3456:789a::2 . 5353 }
"""


def test_v6_addresses_are_written_canonically() -> None:
    long = PortRule("tcp", "2001:0DB8:0000::0010", 1, "FD12:3456:789A:0:0:0:0:2", 2)
    assert port_elements([long])["ip6 ports_ip"] == ["2001:db8::10 . tcp . 1 : fd12:3456:789a::2 . 2"]


@pytest.mark.parametrize(
    "rule",
    [
        PortRule("tcp", "127.0.0.1", 80, "fd00::2", 80),  # a v4 host address, a v6 container
        PortRule("tcp", "0.0.0.0", 80, "fd00::2", 80),  # the v4 wildcard, a v6 container
        PortRule("tcp", "::", 80, "10.0.0.2", 80),  # the v6 wildcard, a v4 container
        PortRule("tcp", "::1", 80, "10.0.0.2", 80),
        PortRule("tcp", None, 80, "::ffff:10.0.0.2", 80),  # IPv4-mapped
        PortRule("tcp", "::ffff:127.0.0.1", 80, "fd00::2", 80),
        PortRule("tcp", None, 80, "fe80::2%eth0", 80),  # a zone
        PortRule("tcp", None, 80, "fd00::/64", 80),
        PortRule("tcp", "fd00::1 } ; flush ruleset ; {", 80, "fd00::2", 80),
        PortRule("tcp", None, 0, "fd00::2", 80),
    ],
)
def test_bad_v6_ports_are_invalid_input(rule: PortRule) -> None:
    with pytest.raises(InvalidInput):
        port_elements([rule])


@pytest.mark.parametrize("subnet6", ["10.0.0.0/24", "fd00::/129", "nonsense", ""])
def test_bad_v6_subnets_are_invalid_input(subnet6: str) -> None:
    with pytest.raises(InvalidInput):
        network_elements(NetworkRules("br0", "10.0.0.0/24", True, False, True, subnet6=subnet6))


def test_a_v6_host_port_published_twice_is_a_conflict() -> None:
    with pytest.raises(Conflict, match=r"every IPv6 host address .*\[fd00::3\]:80"):
        port_elements([WEB6, PortRule("tcp", None, 8080, "fd00::3", 80)])
    with pytest.raises(Conflict, match="on ::1"):
        port_elements([LOOP6, PortRule("tcp", "::1", 8081, "fd00::3", 80)])
    # the same host port in both families, to a container's two addresses: two tables
    both = port_elements([WEB4, WEB6, WEB6])
    assert both["ports"] == ["tcp . 8080 : 10.210.0.2 . 80"]
    assert both["ip6 ports"] == ["tcp . 8080 : fd12:3456:789a::2 . 80"]
    # and the same port on ::1 and on every v6 address: two maps, as in v4
    assert len(port_elements([WEB6, PortRule("tcp", "::1", 8080, "fd00::3", 80)])["ip6 ports_ip"]) == 1


def test_sync_covers_both_tables() -> None:
    text = render_sync("tether", [DUAL, NetworkRules("tbr-4", "10.9.0.0/24", True, False, False)], [WEB4, WEB6, LOOP6])
    assert text.count("flush ") == 16
    assert text.endswith("""\
add element ip tether bridges { "tbr-a", "tbr-4" }
add element ip tether masq_subnets { 10.210.0.0/24, 10.9.0.0/24 }
add element ip tether icc_pairs { "tbr-a" . "tbr-a" }
add element ip tether bridge_subnets { "tbr-a" . 10.210.0.0/24, "tbr-4" . 10.9.0.0/24 }
add element ip tether ports { tcp . 8080 : 10.210.0.2 . 80 }
add element ip6 tether bridges { "tbr-a", "tbr-4" }
add element ip6 tether masq_subnets { fd12:3456:789a::/64 }
add element ip6 tether icc_pairs { "tbr-a" . "tbr-a" }
add element ip6 tether bridge_subnets { "tbr-a" . fd12:3456:789a::/64 }
add element ip6 tether ports { tcp . 8080 : fd12:3456:789a::2 . 80 }
add element ip6 tether ports_ip { ::1 . tcp . 8081 : fd12:3456:789a::2 . 81 }
""")


def test_v6_elements_read_back_canonically() -> None:
    # shapes as nft 1.0.6 lists them with ``-j`` (taken from a real listing)
    assert elements_from_json("ip6 masq_subnets", {
        "family": "ip6", "type": "ipv6_addr", "flags": ["interval"],
        "elem": ["2001:db8::5", {"prefix": {"addr": "fd00:1::", "len": 64}}],
    }) == {"2001:db8::5/128", "fd00:1::/64"}
    assert elements_from_json("ip6 bridge_subnets", {
        "type": ["ifname", "ipv6_addr"], "flags": ["interval"],
        "elem": [{"concat": ["br0", {"prefix": {"addr": "fd00:1::", "len": 64}}]}, {"concat": ["br1", "2001:db8::7"]}],
    }) == {'"br0" . fd00:1::/64', '"br1" . 2001:db8::7/128'}
    assert elements_from_json("ip6 ports_ip", {
        "type": ["ipv6_addr", "inet_proto", "inet_service"], "map": "ipv6_addr . inet_service",
        "elem": [[{"concat": ["::1", "tcp", 8081]}, {"concat": ["fd12:3456:789a::2", 81]}],
                 [{"concat": ["::ffff:1.2.3.4", "tcp", 1]}, {"concat": ["fd00::1", 2]}]],
    }) == {*port_elements([LOOP6])["ip6 ports_ip"], "::ffff:102:304 . tcp . 1 : fd00::1 . 2"}
    assert elements_from_json("ip6 ports", {
        "type": ["inet_proto", "inet_service"], "map": "ipv6_addr . inet_service",
        "elem": [[{"concat": ["tcp", 8080]}, {"concat": ["fd12:3456:789a::2", 80]}]],
    }) == set(port_elements([WEB6])["ip6 ports"])
    assert elements_from_json("ip6 routed_subnets", {
        "type": "ipv6_addr", "flags": ["interval"], "elem": [{"range": ["fd00::1", "fd00::5"]}],
    }) == {"fd00::1-fd00::5"}


def test_repair_of_a_flushed_v6_map() -> None:
    want = desired_elements([DUAL], [WEB4, WEB6, LOOP6])
    delete, add = element_repair(want, {"ip6 ports": set(), "ip6 ports_ip": {"::1 . tcp . 1 : fd00::9 . 1"}})
    assert add["ip6 ports"] == ["tcp . 8080 : fd12:3456:789a::2 . 80"]
    assert add["ip6 ports_ip"] == ["::1 . tcp . 8081 : fd12:3456:789a::2 . 81"]
    assert delete["ip6 ports_ip"] == ["::1 . tcp . 1 : fd00::9 . 1"]
    assert add["ports"] == [] and delete["ports"] == []  # not read: not compared


def _message(msg: int, family: int, table: str, set_name: str) -> bytes:
    def attr(kind: int, value: bytes) -> bytes:
        raw = (4 + len(value)).to_bytes(2, "little") + kind.to_bytes(2, "little") + value
        return raw + b"\0" * (-len(raw) % 4)

    attrs = attr(1, table.encode() + b"\0") + attr(2, set_name.encode() + b"\0")
    header = (20 + len(attrs)).to_bytes(4, "little") + ((10 << 8) | msg).to_bytes(2, "little") + bytes(10)
    return header + bytes([family, 0, 0, 0]) + attrs


def test_notifications_of_the_ip6_table_name_ip6_keys() -> None:
    data = _message(14, 10, "tether", "ports") + _message(12, 2, "tether", "ports") + _message(6, 10, "tether", "")
    data += _message(12, 1, "tether", "ports")  # inet: not tether's
    assert list(table_notifications(data, "tether")) == [
        ("elements", "ip6 ports"), ("elements", "ports"), ("other", None),
    ]


# -- the fake ---------------------------------------------------------------------------


def test_the_fake_holds_v6_elements_and_refuses_v6_clashes() -> None:
    fw = RecordingFirewall()
    fw.ensure()
    fw.add_network(DUAL)
    fw.add_ports([WEB4, WEB6, LOOP6])
    assert fw.elements["ip6 ports"] == {"tcp . 8080 : fd12:3456:789a::2 . 80"}
    assert fw.elements["ip6 bridges"] == {'"tbr-a"'} == fw.elements["bridges"]
    with pytest.raises(Conflict):
        fw.add_ports([PortRule("tcp", None, 8080, "fd12:3456:789a::9", 80)])
    with pytest.raises(Conflict):  # overlapping v6 subnet, however distinct the v4 one
        fw.add_network(NetworkRules("tbr-x", "10.99.0.0/24", True, False, True, subnet6="fd12:3456:789a::/48"))
    fw.remove_ports([WEB6, LOOP6])
    assert fw.elements["ip6 ports"] == set() and fw.elements["ip6 ports_ip"] == set()
    assert fw.elements["ports"] == {"tcp . 8080 : 10.210.0.2 . 80"}
    fw.remove_network(NetworkRules("tbr-a", "10.210.0.0/24", False, True, False, subnet6="fd12:3456:789a::/64"))
    fw.remove_ports([WEB4])
    assert all(not items for items in fw.elements.values())
    assert fw.rule_count() == 35
