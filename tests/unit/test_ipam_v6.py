"""IPv6 address management: allocation, exhaustion of a small prefix, reserved addresses,
ULA picking, and the family checks, against both Store backends."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tether.errors import Conflict, Exhausted, InvalidInput
from tether.ipam import IPAM, choose_subnet6, find_overlap, validate_network_cidrs6
from tether.model import Network
from tether.store import SqliteStore, Store
from tether.testing import MemoryStore
from tether.validate import split_families


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    backend: Store = SqliteStore(str(tmp_path / "state.db")) if request.param == "sqlite" else MemoryStore()
    yield backend
    backend.close()


@pytest.fixture
def ipam(store: Store) -> IPAM:
    return IPAM(store)


def dual(subnet6: str = "fd00:1::/64", gateway6: str | None = None, id: str = "n1") -> Network:
    subnet6, gw6 = validate_network_cidrs6(subnet6, gateway6)
    return Network(
        id=id, name=f"net-{id}", driver="bridge", subnet="10.1.0.0/24", gateway="10.1.0.1",
        bridge="tbr-" + id, subnet6=subnet6, gateway6=gw6,
    )


def test_v6_allocation_skips_anycast_and_gateway_and_is_independent_of_v4(ipam: IPAM) -> None:
    net = dual()
    assert net.gateway6 == "fd00:1::1"
    assert ipam.allocate(net, "a", family=6) == "fd00:1::2"
    assert ipam.allocate(net, "a") == "10.1.0.2"  # the v4 side keeps its own cursor
    assert ipam.allocate(net, "b", family=6) == "fd00:1::3"
    assert list(ipam.leases(net.id)) == ["10.1.0.2", "fd00:1::2", "fd00:1::3"]


def test_a_small_prefix_is_exhausted_exactly(ipam: IPAM) -> None:
    net = dual("fd00:2::/120")
    got = []
    while True:
        try:
            got.append(ipam.allocate(net, f"c{len(got)}", family=6))
        except Exhausted as exc:
            assert "no free address left" in str(exc)
            break
    # 256 addresses less the Subnet-Router anycast one and the gateway; the last one is a host (no broadcast)
    assert len(got) == 254 and len(set(got)) == 254
    assert "fd00:2::" not in got and "fd00:2::1" not in got and "fd00:2::ff" in got
    ipam.release(net.id, "fd00:2::80")
    assert ipam.allocate(net, "again", family=6) == "fd00:2::80"


def test_requested_v6_addresses(ipam: IPAM) -> None:
    net = dual()
    assert ipam.allocate(net, "a", "fd00:1::abcd", family=6) == "fd00:1::abcd"
    with pytest.raises(Conflict, match="already in use by a"):
        ipam.allocate(net, "b", "fd00:1::abcd", family=6)
    with pytest.raises(Conflict, match="gateway"):
        ipam.allocate(net, "b", "fd00:1::1", family=6)
    with pytest.raises(InvalidInput, match="outside the subnet"):
        ipam.allocate(net, "b", "fd00:9::5", family=6)
    with pytest.raises(InvalidInput, match="Subnet-Router|network address"):
        ipam.allocate(net, "b", "fd00:1::", family=6)
    with pytest.raises(InvalidInput, match="IPv4 where an IPv6 address is expected"):
        ipam.allocate(net, "b", "10.1.0.9", family=6)
    with pytest.raises(InvalidInput, match="IPv6 where an IPv4 address is expected"):
        ipam.allocate(net, "b", "fd00:1::9")
    assert ipam.owner(net.id, "fd00:1:0:0::abcd") == "a"  # any spelling of the address


def test_v6_on_a_v4_only_network_is_refused(ipam: IPAM) -> None:
    net = Network(id="n4", name="v4", driver="bridge", subnet="10.2.0.0/24", gateway="10.2.0.1", bridge="b")
    with pytest.raises(InvalidInput, match="no IPv6 subnet"):
        ipam.allocate(net, "a", family=6)


def test_v6_cursor_moves_on_and_release_owner_frees_both_families(ipam: IPAM) -> None:
    net = dual()
    first = ipam.allocate(net, "a", family=6)
    ipam.release(net.id, first)
    assert ipam.allocate(net, "b", family=6) != first  # a freed address is not handed out at once
    ipam.allocate(net, "b")
    released = ipam.release_owner("b")
    assert sorted(a for _, a in released) == ["10.1.0.2", "fd00:1::3"]
    ipam.drop_network(net.id)
    assert ipam.leases(net.id) == {}


def test_parallel_v6_allocators_never_share_an_address(ipam: IPAM) -> None:
    net = dual("fd00:3::/122")
    got: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(5):
            address = ipam.allocate(net, f"w{n}-{i}", family=6)
            with lock:
                got.append(address)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 40 and len(set(got)) == 40


@pytest.mark.parametrize(
    "subnet6,gateway6,message",
    [
        ("fd00::/47", None, "too large"),
        ("fd00::/127", None, "too small"),
        ("fd00::/129", None, "invalid IPv6 subnet"),
        ("fd00::1/64", None, "host bits set"),
        ("10.0.0.0/24", None, "IPv4 where an IPv6 subnet is expected"),
        ("fd00::", None, "needs a prefix length"),
        ("fd00::/64", "fd01::1", "outside the subnet"),
        ("fd00::/64", "fd00::", "anycast"),
        ("fd00::/64", "10.0.0.1", "IPv4 where an IPv6 address is expected"),
    ],
)
def test_bad_v6_subnets_get_one_line(subnet6: str, gateway6: str | None, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        validate_network_cidrs6(subnet6, gateway6)
    assert "\n" not in str(info.value)


def test_ula_picking_is_random_and_avoids_what_is_in_use() -> None:
    picked = {choose_subnet6([]) for _ in range(20)}
    assert len(picked) == 20
    for text in picked:
        subnet = ipaddress.IPv6Network(text)
        assert subnet.prefixlen == 64 and subnet.subnet_of(ipaddress.IPv6Network("fd00::/8"))
    # everything of fd00::/8 but one /9 is taken: the pick lands in the free half
    chosen = choose_subnet6(["fd00::/9", "10.0.0.0/8", "garbage"], tries=400)
    assert ipaddress.IPv6Network(chosen).subnet_of(ipaddress.IPv6Network("fd80::/9"))
    with pytest.raises(Exhausted, match="explicit IPv6 --subnet"):
        choose_subnet6(["fd00::/8"])


def test_overlap_is_checked_within_a_family() -> None:
    in_use = {"fd00:1::/64": "network 'a'", "10.0.0.0/8": "network 'b'", "fd00::/16": "a route"}
    assert find_overlap("fd00:1::/80", {"fd00:1::/64": "network 'a'"}) == "network 'a'"
    assert find_overlap("fd00:1::/64", in_use) == "network 'a'"
    assert find_overlap("fd01::/64", in_use) is None
    assert find_overlap("10.1.0.0/16", {"fd00::/8": "x"}) is None


@pytest.mark.parametrize(
    "subnets,gateways,ipv6,expected",
    [
        (["10.0.0.0/24", "fd00::/64"], [], True, ("10.0.0.0/24", None, "fd00::/64", None)),
        (["fd00::/64", "10.0.0.0/24"], ["fd00::9", "10.0.0.9"], True, ("10.0.0.0/24", "10.0.0.9", "fd00::/64", "fd00::9")),
        ([], [], True, (None, None, None, None)),
    ],
)
def test_split_families(subnets: list[str], gateways: list[str], ipv6: bool, expected: tuple[object, ...]) -> None:
    assert split_families(subnets, gateways, ipv6) == expected


@pytest.mark.parametrize(
    "subnets,gateways,ipv6,message",
    [
        (["fd00::/64", "fd01::/64"], [], True, "IPv6 subnet given twice"),
        (["10.0.0.0/24", "10.1.0.0/24"], [], True, "IPv4 subnet given twice"),
        (["fd00::/64"], [], False, "add --ipv6"),
        (["10.0.0.0/24"], ["fd00::1"], True, "needs an IPv6 --subnet"),
        (["10.0.0.0/24"], ["10.0.0.1", "10.0.0.2"], False, "two gateways"),
    ],
)
def test_split_families_refuses(subnets: list[str], gateways: list[str], ipv6: bool, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        split_families(subnets, gateways, ipv6)


def test_a_v6_ip_range_is_where_v6_addresses_come_from(tmp_path: object) -> None:
    from tether.controller import Controller
    from tether.testing.datapath import RecordingDatapath

    ctl = Controller(MemoryStore(), RecordingDatapath(), str(tmp_path), netns_prefix="u-")
    net = ctl.create_network(
        "d", subnet="10.3.0.0/24", ipv6=True, subnet6="fd00:3::/64", ip_range6="fd00:3::100/120"
    )
    assert net.ip_range6 == "fd00:3::100/120"
    c = ctl.create_container(["true"], name="a", net="d").value
    assert ctl._endpoints(c.id)[0].address6 == "fd00:3::100"
    ctl.create_container(["true"], name="b", net="d", ip6="fd00:3::5")  # --ip6 may lie outside it, as --ip
    for kwargs, says in [
        ({"ipv6": True, "ip_range6": "fd00:4::/120"}, "needs the IPv6 --subnet"),
        ({"ipv6": True, "subnet6": "fd00:5::/64", "ip_range6": "fd00:6::/120"}, "not inside the subnet fd00:5::/64"),
        ({"ipv6": True, "subnet6": "fd00:5::/64", "ip_range6": "10.0.0.0/24"}, "is IPv4 where an IPv6"),
    ]:
        with pytest.raises(InvalidInput, match=says):
            ctl.create_network("bad", subnet="10.9.0.0/24", **kwargs)  # type: ignore[arg-type]
    assert ctl.find_network("bad") is None


def test_ip_ranges_split_by_family() -> None:
    from tether.validate import split_ranges

    assert split_ranges(["10.0.0.0/25", "fd00::/120"], True) == ("10.0.0.0/25", "fd00::/120")
    assert split_ranges([], False) == (None, None)
    with pytest.raises(InvalidInput, match="is IPv6: add --ipv6"):
        split_ranges(["fd00::/120"], False)
    with pytest.raises(InvalidInput, match="two ranges of one family"):
        split_ranges(["10.0.0.0/25", "10.0.0.128/25"], True)
