"""Golden tests of the firewall's pure rendering: inputs -> nft text, no kernel. The v4
table's text is exactly what it was before dual stack; the ip6 table follows it in every
transaction."""

from __future__ import annotations

import pytest

from tether.errors import Conflict, InvalidInput
from tether.firewall.rules import (
    CHAINS,
    SETS,
    NetworkRules,
    PortRule,
    elements_from_json,
    merge_elements,
    network_candidates,
    network_elements,
    port_elements,
    render_add,
    render_delete,
    render_install,
    render_remove,
    render_sync,
    validate_table,
)

INSTALL_V4 = """\
add table ip tether
add set ip tether bridges { type ifname; }
add set ip tether masq_subnets { type ipv4_addr; flags interval; }
add set ip tether icc_pairs { type ifname . ifname; }
add set ip tether internal_bridges { type ifname; }
add set ip tether bridge_subnets { type ifname . ipv4_addr; flags interval; }
add set ip tether routed_subnets { type ipv4_addr; flags interval; }
add map ip tether ports { type inet_proto . inet_service : ipv4_addr . inet_service; }
add map ip tether ports_ip { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }
add chain ip tether user
add chain ip tether guard { type filter hook prerouting priority -300; policy accept; }
add chain ip tether prerouting { type nat hook prerouting priority -100; policy accept; }
add chain ip tether output { type nat hook output priority -100; policy accept; }
add chain ip tether postrouting { type nat hook postrouting priority 100; policy accept; }
add chain ip tether forward { type filter hook forward priority 0; policy accept; }
flush chain ip tether guard
flush chain ip tether prerouting
flush chain ip tether output
flush chain ip tether postrouting
flush chain ip tether forward
add rule ip tether guard iifname @bridges ip saddr 127.0.0.0/8 drop
add rule ip tether guard iifname @bridges ip daddr 127.0.0.0/8 drop
add rule ip tether prerouting fib daddr type local dnat ip to ip daddr . meta l4proto . th dport map @ports_ip
add rule ip tether prerouting fib daddr type local dnat ip to meta l4proto . th dport map @ports
add rule ip tether output fib daddr type local dnat ip to ip daddr . meta l4proto . th dport map @ports_ip
add rule ip tether output fib daddr type local dnat ip to meta l4proto . th dport map @ports
add rule ip tether postrouting ip saddr @masq_subnets oifname != @bridges masquerade
add rule ip tether postrouting oifname @bridges ip saddr 127.0.0.0/8 ct status dnat masquerade
add rule ip tether postrouting ct status dnat oifname . ip saddr @bridge_subnets masquerade
add rule ip tether forward jump user
add rule ip tether forward ct state established,related accept
add rule ip tether forward iifname . oifname @icc_pairs accept
add rule ip tether forward iifname @internal_bridges drop
add rule ip tether forward oifname @internal_bridges drop
add rule ip tether forward ct status dnat accept
add rule ip tether forward iifname @bridges oifname @bridges drop
add rule ip tether forward ip daddr @routed_subnets accept
add rule ip tether forward ip daddr @masq_subnets drop
"""

INSTALL_V6 = """\
add table ip6 tether
add set ip6 tether bridges { type ifname; }
add set ip6 tether masq_subnets { type ipv6_addr; flags interval; }
add set ip6 tether icc_pairs { type ifname . ifname; }
add set ip6 tether internal_bridges { type ifname; }
add set ip6 tether bridge_subnets { type ifname . ipv6_addr; flags interval; }
add set ip6 tether routed_subnets { type ipv6_addr; flags interval; }
add map ip6 tether ports { type inet_proto . inet_service : ipv6_addr . inet_service; }
add map ip6 tether ports_ip { type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; }
add chain ip6 tether user
add chain ip6 tether guard { type filter hook prerouting priority -300; policy accept; }
add chain ip6 tether prerouting { type nat hook prerouting priority -100; policy accept; }
add chain ip6 tether output { type nat hook output priority -100; policy accept; }
add chain ip6 tether postrouting { type nat hook postrouting priority 100; policy accept; }
add chain ip6 tether forward { type filter hook forward priority 0; policy accept; }
flush chain ip6 tether guard
flush chain ip6 tether prerouting
flush chain ip6 tether output
flush chain ip6 tether postrouting
flush chain ip6 tether forward
add rule ip6 tether guard iifname @bridges ip6 saddr ::1 drop
add rule ip6 tether guard iifname @bridges ip6 daddr ::1 drop
add rule ip6 tether prerouting fib daddr type local dnat ip6 to ip6 daddr . meta l4proto . th dport map @ports_ip
add rule ip6 tether prerouting fib daddr type local dnat ip6 to meta l4proto . th dport map @ports
add rule ip6 tether output ip6 daddr != ::1 fib daddr type local dnat ip6 to ip6 daddr . meta l4proto . th dport map @ports_ip
add rule ip6 tether output ip6 daddr != ::1 fib daddr type local dnat ip6 to meta l4proto . th dport map @ports
add rule ip6 tether postrouting ip6 saddr @masq_subnets oifname != @bridges masquerade
add rule ip6 tether postrouting ct status dnat oifname . ip6 saddr @bridge_subnets masquerade
add rule ip6 tether forward jump user
add rule ip6 tether forward ct state established,related accept
add rule ip6 tether forward iifname . oifname @icc_pairs accept
add rule ip6 tether forward iifname @internal_bridges drop
add rule ip6 tether forward oifname @internal_bridges drop
add rule ip6 tether forward ct status dnat accept
add rule ip6 tether forward iifname @bridges oifname @bridges drop
add rule ip6 tether forward ip6 daddr @routed_subnets accept
add rule ip6 tether forward ip6 daddr @masq_subnets drop
"""

FLUSH_ALL = """\
flush set ip tether bridges
flush set ip tether masq_subnets
flush set ip tether icc_pairs
flush set ip tether internal_bridges
flush set ip tether bridge_subnets
flush set ip tether routed_subnets
flush map ip tether ports
flush map ip tether ports_ip
flush set ip6 tether bridges
flush set ip6 tether masq_subnets
flush set ip6 tether icc_pairs
flush set ip6 tether internal_bridges
flush set ip6 tether bridge_subnets
flush set ip6 tether routed_subnets
flush map ip6 tether ports
flush map ip6 tether ports_ip
"""

NAT_NET = NetworkRules("tbr-a", "10.210.0.0/24", masquerade=True, internal=False, icc=True)
INTERNAL_NET = NetworkRules("tbr-b", "10.211.0.5/24", masquerade=True, internal=True, icc=False)
ROUTED_NET = NetworkRules("tbr-c", "10.212.0.0/16", masquerade=False, internal=False, icc=False)
WEB = PortRule("tcp", None, 8080, "10.210.0.2", 80)
DNS_LOCAL = PortRule("udp", "127.0.0.1", 53, "10.210.0.2", 5353)


def test_install_golden() -> None:
    assert render_install("tether") == INSTALL_V4 + INSTALL_V6


def test_install_never_touches_the_user_chain_or_elements() -> None:
    text = render_install("t1")
    for family in ("ip", "ip6"):
        assert f"flush chain {family} t1 user" not in text
        assert f"add rule {family} t1 user" not in text
    assert "element" not in text and "flush set" not in text and "flush map" not in text
    assert "delete" not in text  # never delete-and-recreate


def test_rule_count_is_constant() -> None:
    assert sum(len(spec.rules) for key, spec in CHAINS.items() if " " not in key) == 18  # ip
    assert sum(len(spec.rules) for key, spec in CHAINS.items() if key.startswith("ip6 ")) == 17  # no ::1 rule
    many = [PortRule("tcp", None, 1000 + i, "10.210.0.2", 80) for i in range(1000)]
    assert render_sync("tether", [NAT_NET], many).count("add rule") == 0


def test_sync_empty() -> None:
    assert render_sync("tether", [], []) == FLUSH_ALL


def test_sync_golden() -> None:
    text = render_sync("tether", [NAT_NET, INTERNAL_NET, ROUTED_NET], [WEB, DNS_LOCAL, WEB])
    assert text == FLUSH_ALL + """\
add element ip tether bridges { "tbr-a", "tbr-b", "tbr-c" }
add element ip tether masq_subnets { 10.210.0.0/24 }
add element ip tether icc_pairs { "tbr-a" . "tbr-a" }
add element ip tether internal_bridges { "tbr-b" }
add element ip tether bridge_subnets { "tbr-a" . 10.210.0.0/24, "tbr-b" . 10.211.0.0/24, "tbr-c" . 10.212.0.0/16 }
add element ip tether ports { tcp . 8080 : 10.210.0.2 . 80 }
add element ip tether ports_ip { 127.0.0.1 . udp . 53 : 10.210.0.2 . 5353 }
add element ip6 tether bridges { "tbr-a", "tbr-b", "tbr-c" }
add element ip6 tether icc_pairs { "tbr-a" . "tbr-a" }
add element ip6 tether internal_bridges { "tbr-b" }
"""


def test_network_elements_by_flags() -> None:
    assert network_elements(NAT_NET) == {
        "bridges": ['"tbr-a"'],
        "masq_subnets": ["10.210.0.0/24"],
        "icc_pairs": ['"tbr-a" . "tbr-a"'],
        "internal_bridges": [],
        "bridge_subnets": ['"tbr-a" . 10.210.0.0/24'],
        "routed_subnets": [],
        "ports": [],
        "ports_ip": [],
        # a v4-only network's bridge is in the ip6 table's interface sets all the same
        "ip6 bridges": ['"tbr-a"'],
        "ip6 masq_subnets": [],
        "ip6 icc_pairs": ['"tbr-a" . "tbr-a"'],
        "ip6 internal_bridges": [],
        "ip6 bridge_subnets": [],
        "ip6 routed_subnets": [],
        "ip6 ports": [],
        "ip6 ports_ip": [],
    }
    internal = network_elements(INTERNAL_NET)
    assert internal["masq_subnets"] == []  # internal: never masqueraded, whatever the flag
    assert internal["internal_bridges"] == ['"tbr-b"']
    assert internal["icc_pairs"] == []
    assert internal["bridge_subnets"] == ['"tbr-b" . 10.211.0.0/24']  # host bits dropped
    routed = network_elements(ROUTED_NET)
    assert routed["masq_subnets"] == [] and routed["icc_pairs"] == []
    overlay = network_elements(NetworkRules("tov-1", "10.220.0.0/16", True, False, True, routed=True))
    assert overlay["routed_subnets"] == ["10.220.0.0/16"]
    assert network_elements(NetworkRules("tov-2", "10.221.0.0/16", True, True, True, routed=True))["routed_subnets"] == []


def test_add_network_golden() -> None:
    assert render_add("tether", network_elements(NAT_NET)) == """\
add element ip tether bridges { "tbr-a" }
add element ip tether masq_subnets { 10.210.0.0/24 }
add element ip tether icc_pairs { "tbr-a" . "tbr-a" }
add element ip tether bridge_subnets { "tbr-a" . 10.210.0.0/24 }
add element ip6 tether bridges { "tbr-a" }
add element ip6 tether icc_pairs { "tbr-a" . "tbr-a" }
"""


def test_remove_network_covers_every_flag_and_adds_before_deleting() -> None:
    text = render_remove("tether", network_candidates(ROUTED_NET))
    assert text == """\
add element ip tether bridges { "tbr-c" }
add element ip tether masq_subnets { 10.212.0.0/16 }
add element ip tether icc_pairs { "tbr-c" . "tbr-c" }
add element ip tether internal_bridges { "tbr-c" }
add element ip tether bridge_subnets { "tbr-c" . 10.212.0.0/16 }
add element ip tether routed_subnets { 10.212.0.0/16 }
add element ip6 tether bridges { "tbr-c" }
add element ip6 tether icc_pairs { "tbr-c" . "tbr-c" }
add element ip6 tether internal_bridges { "tbr-c" }
delete element ip tether bridges { "tbr-c" }
delete element ip tether masq_subnets { 10.212.0.0/16 }
delete element ip tether icc_pairs { "tbr-c" . "tbr-c" }
delete element ip tether internal_bridges { "tbr-c" }
delete element ip tether bridge_subnets { "tbr-c" . 10.212.0.0/16 }
delete element ip tether routed_subnets { 10.212.0.0/16 }
delete element ip6 tether bridges { "tbr-c" }
delete element ip6 tether icc_pairs { "tbr-c" . "tbr-c" }
delete element ip6 tether internal_bridges { "tbr-c" }
"""


def test_ports_golden() -> None:
    elements = port_elements([WEB, DNS_LOCAL])
    assert render_add("tether", elements) == """\
add element ip tether ports { tcp . 8080 : 10.210.0.2 . 80 }
add element ip tether ports_ip { 127.0.0.1 . udp . 53 : 10.210.0.2 . 5353 }
"""
    assert render_remove("tether", elements) == """\
add element ip tether ports { tcp . 8080 : 10.210.0.2 . 80 }
add element ip tether ports_ip { 127.0.0.1 . udp . 53 : 10.210.0.2 . 5353 }
delete element ip tether ports { tcp . 8080 : 10.210.0.2 . 80 }
delete element ip tether ports_ip { 127.0.0.1 . udp . 53 : 10.210.0.2 . 5353 }
"""
    assert render_delete("tether", {"ports": ["tcp . 8080 : 10.210.0.2 . 80"]}) == (
        "delete element ip tether ports { tcp . 8080 : 10.210.0.2 . 80 }\n"
    )


def test_any_address_is_the_ports_map() -> None:
    assert port_elements([PortRule("tcp", "0.0.0.0", 8080, "10.210.0.2", 80)]) == port_elements([WEB])


def test_nothing_to_do_renders_nothing() -> None:
    assert render_add("tether", port_elements([])) == ""
    assert render_remove("tether", port_elements([])) == ""
    assert render_delete("tether", {}) == ""


def test_port_ranges_expanded_into_one_statement() -> None:
    ports = [PortRule("udp", "192.0.2.7", p, "10.210.0.9", p) for p in range(1, 65536, 4096)]
    text = render_add("tether", port_elements(ports))
    assert text.count("\n") == 1
    assert text.startswith("add element ip tether ports_ip { 192.0.2.7 . udp . 1 : 10.210.0.9 . 1, ")
    assert text.endswith("192.0.2.7 . udp . 61441 : 10.210.0.9 . 61441 }\n")


@pytest.mark.parametrize("port", [1, 80, 65535])
def test_port_bounds_ok(port: int) -> None:
    assert port_elements([PortRule("tcp", None, port, "10.0.0.2", port)])["ports"] == [
        f"tcp . {port} : 10.0.0.2 . {port}"
    ]


@pytest.mark.parametrize(
    "rule",
    [
        PortRule("tcp", None, 0, "10.0.0.2", 80),
        PortRule("tcp", None, 65536, "10.0.0.2", 80),
        PortRule("tcp", None, 80, "10.0.0.2", 0),
        PortRule("tcp", None, True, "10.0.0.2", 80),  # type: ignore[arg-type]
        PortRule("sctp", None, 80, "10.0.0.2", 80),
        PortRule("TCP", None, 80, "10.0.0.2", 80),
        PortRule("tcp", "::1", 80, "10.0.0.2", 80),
        PortRule("tcp", None, 80, "10.0.0.256", 80),
        PortRule("tcp", "0.0.0.0 } ; flush ruleset ; {", 80, "10.0.0.2", 80),
    ],
)
def test_bad_ports_are_invalid_input(rule: PortRule) -> None:
    with pytest.raises(InvalidInput):
        port_elements([rule])


@pytest.mark.parametrize(
    "net",
    [
        NetworkRules("", "10.0.0.0/24", True, False, True),
        NetworkRules("a-very-long-bridge0", "10.0.0.0/24", True, False, True),  # > 15
        NetworkRules('br"0', "10.0.0.0/24", True, False, True),
        NetworkRules("br 0", "10.0.0.0/24", True, False, True),
        NetworkRules("br0", "10.0.0.0/33", True, False, True),
        NetworkRules("br0", "fd00::/64", True, False, True),
        NetworkRules("br0", "nonsense", True, False, True),
    ],
)
def test_bad_networks_are_invalid_input(net: NetworkRules) -> None:
    with pytest.raises(InvalidInput):
        network_elements(net)


@pytest.mark.parametrize("table", ["", "1abc", "te ther", "t;flush", "x" * 33])
def test_bad_table_names(table: str) -> None:
    with pytest.raises(InvalidInput):
        validate_table(table)
    with pytest.raises(InvalidInput):
        render_install(table)


def test_same_host_port_twice_is_a_conflict() -> None:
    with pytest.raises(Conflict, match="tcp/8080"):
        port_elements([WEB, PortRule("tcp", None, 8080, "10.210.0.3", 80)])
    # same port number on another protocol, or another host address, is fine
    elements = port_elements([
        WEB,
        PortRule("udp", None, 8080, "10.210.0.3", 80),
        PortRule("tcp", "127.0.0.1", 8080, "10.210.0.3", 80),
    ])
    assert len(elements["ports"]) == 2 and len(elements["ports_ip"]) == 1


def test_merge_keeps_order_and_drops_repeats() -> None:
    merged = merge_elements([network_elements(NAT_NET), network_elements(NAT_NET), network_elements(ROUTED_NET)])
    assert merged["bridges"] == ['"tbr-a"', '"tbr-c"']
    assert list(merged) == list(SETS)


def test_elements_from_json_matches_rendering() -> None:
    # shapes as nft 1.0.6 lists them with ``-j``
    assert elements_from_json("ports", {
        "type": ["inet_proto", "inet_service"], "map": "ipv4_addr . inet_service",
        "elem": [[{"concat": ["tcp", 8080]}, {"concat": ["10.210.0.2", 80]}]],
    }) == set(port_elements([WEB])["ports"])
    assert elements_from_json("ports_ip", {
        "type": ["ipv4_addr", "inet_proto", "inet_service"],
        "elem": [[{"concat": ["127.0.0.1", "udp", 53]}, {"concat": ["10.210.0.2", 5353]}]],
    }) == set(port_elements([DNS_LOCAL])["ports_ip"])
    assert elements_from_json("bridges", {"type": "ifname", "elem": ["tbr-a", "tbr-c"]}) == {'"tbr-a"', '"tbr-c"'}
    assert elements_from_json("icc_pairs", {
        "type": ["ifname", "ifname"], "elem": [{"concat": ["tbr-a", "tbr-a"]}],
    }) == set(network_elements(NAT_NET)["icc_pairs"])
    assert elements_from_json("bridge_subnets", {
        "type": ["ifname", "ipv4_addr"], "flags": ["interval"],
        "elem": [{"concat": ["tbr-a", {"prefix": {"addr": "10.210.0.0", "len": 24}}]}],
    }) == set(network_elements(NAT_NET)["bridge_subnets"])
    assert elements_from_json("masq_subnets", {
        "type": "ipv4_addr", "flags": ["interval"],
        "elem": [{"prefix": {"addr": "10.210.0.0", "len": 24}}, "10.9.9.9"],
    }) == {"10.210.0.0/24", "10.9.9.9/32"}
    assert elements_from_json("bridges", {"type": "ifname"}) == set()
