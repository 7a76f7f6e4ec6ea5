"""What the embedded resolver answers itself: A, AAAA and PTR from its tables, NXDOMAIN
inside tether subnets, and what it leaves to the upstream.

Questions are built as wire bytes by hand and answers read back with ``dnskit``'s
decoder (not with ``tether.dns.message``); the tables are also checked through
``Records`` directly. No sockets: the resolver's ``_answer`` is the whole path from a
packet to a reply, minus the network.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from dnskit import addresses, addresses6, decode, pointers, query_bytes

from tether.dns import Resolver
from tether.dns.message import AAAA, ANY, NOERROR, NXDOMAIN, PTR, A, Query, parse_query
from tether.dns.records import LocalAnswer, Records, reverse_network
from tether.errors import InvalidInput

MX = 15
SUBNETS = {"appnet": ["10.210.0.0/24", "fd00:210::/64"], "other": ["10.211.0.0/24", "fd00:211::/64"]}


def rev(address: str) -> str:
    return ipaddress.ip_address(address).reverse_pointer


def make_resolver() -> Resolver:
    """appnet (dual stack): db and web; other (dual stack): cache; s1 on appnet, s2 on both."""
    resolver = Resolver([])
    for network, subnets in SUBNETS.items():
        resolver.set_subnets(network, subnets)
    resolver.add_record("appnet", "db", "10.210.0.2")
    resolver.add_record("appnet", "database", "10.210.0.2")  # an alias, added after the name
    resolver.add_record("appnet", "db", "fd00:210::2")
    resolver.add_record("appnet", "database", "fd00:210::2")
    resolver.set_records("other", {"cache": ["10.211.0.2", "fd00:211::2"], "v4only": ["10.211.0.9"]})
    resolver.set_networks("s1", ["appnet"])
    resolver.set_networks("s2", ["other", "appnet"])
    return resolver


def ask(resolver: Resolver, sandbox: str, name: str, qtype: int = A) -> dict[str, Any] | None:
    """The decoded reply the resolver makes itself, or None if the query would go upstream."""
    outcome = resolver._answer(sandbox, query_bytes(name, qtype), tcp=False)
    if isinstance(outcome, Query):
        return None
    assert outcome is not None
    decoded = decode(outcome)
    # without upstreams a forwarded query is SERVFAIL at once: tell it apart by AA
    return decoded if decoded["aa"] else None


# ---- reverse names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "network"),
    [
        ("2.0.210.10.in-addr.arpa", "10.210.0.2/32"),
        ("2.0.210.10.IN-ADDR.ARPA", "10.210.0.2/32"),
        ("210.10.in-addr.arpa", "10.210.0.0/16"),
        ("10.in-addr.arpa", "10.0.0.0/8"),
        ("0.0.0.0.in-addr.arpa", "0.0.0.0/32"),
        (rev("fd00:210::2"), "fd00:210::2/128"),
        (rev("fd00:210::2").upper(), "fd00:210::2/128"),
        ("d.f.ip6.arpa", "fd00::/8"),
        ("0.1.2.0.0.0.d.f.ip6.arpa", "fd00:210::/32"),
    ],
)
def test_reverse_names_read_as_networks(name: str, network: str) -> None:
    labels = [label.encode() for label in name.split(".")]
    assert reverse_network(labels) == ipaddress.ip_network(network)


@pytest.mark.parametrize(
    "name",
    [
        "in-addr.arpa",
        "ip6.arpa",
        "1.2.3.4.5.in-addr.arpa",
        "256.0.0.10.in-addr.arpa",
        "02.0.0.10.in-addr.arpa",
        "a.0.0.10.in-addr.arpa",
        "0/25.0.210.10.in-addr.arpa",  # classless delegation: upstream's business
        "ab.d.f.ip6.arpa",
        "g.d.f.ip6.arpa",
        ".".join(["0"] * 33) + ".ip6.arpa",
        "2.0.210.10.in-addr.example",
        "2.0.210.10.ip6.int",
        "db.appnet",
    ],
)
def test_other_names_are_not_reverse_names(name: str) -> None:
    assert reverse_network([label.encode() for label in name.split(".")]) is None


def test_ptr_of_container_addresses_both_families() -> None:
    resolver = make_resolver()
    for address in ("10.210.0.2", "fd00:210::2"):
        reply = ask(resolver, "s1", rev(address), PTR)
        assert reply is not None and reply["rcode"] == NOERROR, address
        assert pointers(reply) == ["db.appnet"]  # the container name, not the alias
        reply = ask(resolver, "s2", rev(address), ANY)
        assert reply is not None and pointers(reply) == ["db.appnet"]
        reply = ask(resolver, "s1", rev(address), A)  # a known reverse name, another type
        assert reply is not None and (reply["rcode"], reply["answers"]) == (NOERROR, [])
    assert resolver.reverse("s2", "FD00:211:0::2") == "cache.other"
    assert resolver.reverse("s1", "10.211.0.2") is None


def test_reverse_names_inside_tether_subnets_never_go_upstream() -> None:
    resolver = make_resolver()
    for address in ("10.210.0.77", "fd00:210::77", "10.211.0.2", "fd00:211::2", "10.210.0.1"):
        reply = ask(resolver, "s1", rev(address), PTR)  # unknown, or on a network s1 cannot see
        assert reply is not None and reply["rcode"] == NXDOMAIN and reply["answers"] == [], address
    # a sandbox on no network at all still never sends them out
    reply = ask(resolver, "nobody", rev("10.210.0.2"), PTR)
    assert reply is not None and reply["rcode"] == NXDOMAIN
    # zone cuts inside a subnet: empty non-terminal when a visible address lies below
    reply = ask(resolver, "s1", "0.210.10.in-addr.arpa", PTR)  # 10.210.0.0/24, the whole subnet
    assert reply is not None and (reply["rcode"], reply["answers"]) == (NOERROR, [])
    reply = ask(resolver, "s1", "0.211.10.in-addr.arpa", PTR)  # other's subnet: s1 sees nothing
    assert reply is not None and reply["rcode"] == NXDOMAIN
    assert ask(resolver, "s1", "210.10.in-addr.arpa", PTR) is None  # wider than any subnet
    assert ask(resolver, "s1", "d.f.ip6.arpa", PTR) is None


def test_other_reverse_names_go_upstream() -> None:
    resolver = make_resolver()
    for address in ("192.0.2.1", "10.212.0.2", "2001:db8::1", "fd00:212::2"):
        assert ask(resolver, "s1", rev(address), PTR) is None, address
    records = Records()
    assert records.answer("s1", parse_query(query_bytes(rev("10.210.0.2"), PTR)).question) is None


def test_subnets_are_forgotten_with_the_network() -> None:
    resolver = make_resolver()
    resolver.drop_network("other")
    assert ask(resolver, "s1", rev("10.211.0.2"), PTR) is None  # no longer a tether subnet
    assert ask(resolver, "s2", rev("10.210.0.2"), PTR) is not None  # s2 still sees appnet
    resolver.set_subnets("appnet", [])
    assert ask(resolver, "s1", rev("10.210.0.77"), PTR) is None
    assert ask(resolver, "s1", rev("10.210.0.2"), PTR) is not None  # still a known address
    with pytest.raises(InvalidInput):
        resolver.set_subnets("appnet", ["10.0.0.0/33"])


def test_ptr_prefers_the_containers_own_name() -> None:
    records = Records()
    # reconcile's order: two containers share a round-robin alias, which comes first for b
    records.set_records(
        "appnet",
        {"a": ["10.210.0.2", "fd00::2"], "shared": ["10.210.0.2", "10.210.0.3", "fd00::2", "fd00::3"],
         "b": ["10.210.0.3", "fd00::3"], "b-alias": ["10.210.0.3"]},
    )
    records.set_networks("s", ["appnet"])
    assert [records.reverse("s", a) for a in ("10.210.0.2", "10.210.0.3", "fd00::2", "fd00::3")] == [
        "a.appnet", "b.appnet", "a.appnet", "b.appnet"
    ]
    records.remove_record("appnet", "b", "10.210.0.3")
    assert records.reverse("s", "10.210.0.3") == "b-alias.appnet"
    records.remove_record("appnet", "b-alias", "10.210.0.3")
    assert records.reverse("s", "10.210.0.3") == "shared.appnet"  # only a shared name left
    records.remove_record("appnet", "shared", "10.210.0.3")
    assert records.reverse("s", "10.210.0.3") is None


def test_ptr_keeps_the_spelling_and_skips_names_dns_cannot_carry() -> None:
    records = Records()
    records.add_record("AppNet", "Web", "10.210.0.3")
    records.add_record("AppNet", "web", "10.210.0.4")
    records.add_record("x" * 60, "long-name", "10.210.0.5")
    records.set_networks("s", ["AppNet", "x" * 60])
    assert records.reverse("s", "10.210.0.3") == "Web.AppNet"
    assert records.reverse("s", "10.210.0.4") == "Web.AppNet"
    assert records.reverse("s", "10.210.0.5") == "long-name." + "x" * 60
    records.add_record("y" * 64, "n", "10.210.0.6")  # a label DNS cannot carry
    records.set_networks("s", ["y" * 64])
    assert records.reverse("s", "10.210.0.6") is None


# ---- forward names, by family -----------------------------------------------------------


def test_a_and_aaaa_answer_their_own_family() -> None:
    resolver = make_resolver()
    reply = ask(resolver, "s1", "DB", A)
    assert reply is not None and addresses(reply) == ["10.210.0.2"] and addresses6(reply) == []
    reply = ask(resolver, "s1", "database.appnet.", AAAA)
    assert reply is not None and addresses6(reply) == ["fd00:210::2"] and addresses(reply) == []
    reply = ask(resolver, "s1", "db", ANY)
    assert reply is not None and (addresses(reply), addresses6(reply)) == (["10.210.0.2"], ["fd00:210::2"])
    reply = ask(resolver, "s1", "db", MX)
    assert reply is not None and (reply["rcode"], reply["answers"]) == (NOERROR, [])


def test_a_known_name_without_the_family_is_noerror_empty() -> None:
    resolver = make_resolver()
    reply = ask(resolver, "s2", "v4only", AAAA)
    assert reply is not None and (reply["rcode"], reply["answers"]) == (NOERROR, [])
    resolver.set_records("v6net", {"only6": ["fd00:212::5"]})
    resolver.set_networks("s3", ["v6net"])
    reply = ask(resolver, "s3", "only6", A)
    assert reply is not None and (reply["rcode"], reply["answers"]) == (NOERROR, [])
    reply = ask(resolver, "s3", "only6", AAAA)
    assert reply is not None and addresses6(reply) == ["fd00:212::5"]
    assert ask(resolver, "s3", "nosuch", AAAA) is None  # unknown: upstream as before


def test_each_family_comes_from_the_first_network_that_has_it() -> None:
    records = Records()
    records.set_records("first", {"shared": ["10.1.0.5"]})
    records.set_records("second", {"shared": ["10.2.0.5", "fd00:2::5"]})
    records.set_networks("s", ["first", "second"])
    assert records.resolve("s", "shared") == ["10.1.0.5", "fd00:2::5"]  # as Docker does
    assert records.resolve("s", "shared", 4) == ["10.1.0.5"]
    assert records.resolve("s", "shared", 6) == ["fd00:2::5"]
    assert records.resolve("s", "shared.second") == ["10.2.0.5", "fd00:2::5"]
    question = parse_query(query_bytes("shared", AAAA)).question
    assert records.answer("s", question) == LocalAnswer(NOERROR, ("fd00:2::5",))


def test_tables_take_both_families_and_refuse_the_rest() -> None:
    records = Records()
    records.add_record("n", "x", "fd00:0:0::1")
    records.add_record("n", "x", "fd00::1")  # the same address, spelled otherwise
    records.add_record("n", "x", "fe80::1")
    records.set_networks("s", ["n"])
    assert records.resolve("s", "x") == ["fd00::1", "fe80::1"]
    records.remove_record("n", "x", "FD00::0001")
    records.remove_record("n", "x", "not-an-ip")  # never added: nothing to forget
    records.remove_record("nonet", "x", "fe80::1")
    assert records.resolve("s", "x") == ["fe80::1"]
    for bad in ("not-an-ip", "fe80::1%eth0", "10.0.0.256", "10.0.0.0/24"):
        with pytest.raises(InvalidInput):
            records.add_record("n", "x", bad)
        with pytest.raises(InvalidInput):
            records.set_records("n", {"x": [bad]})
    assert records.resolve("s", "x") == ["fe80::1"]  # a refused set_records changed nothing
