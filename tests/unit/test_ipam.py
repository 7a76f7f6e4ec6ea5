"""IPAM policy against both Store backends, and the pure subnet helpers."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tether.errors import Conflict, Exhausted, InvalidInput
from tether.ipam import (
    DEFAULT_POOLS,
    IPAM,
    choose_subnet,
    default_gateway,
    find_overlap,
    validate_network_cidrs,
)
from tether.model import Network
from tether.store import SqliteStore, Store
from tether.testing import MemoryStore


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    backend: Store = SqliteStore(str(tmp_path / "state.db")) if request.param == "sqlite" else MemoryStore()
    yield backend
    backend.close()


@pytest.fixture
def ipam(store: Store) -> IPAM:
    return IPAM(store)


def network(subnet: str, gateway: str | None = None, ip_range: str | None = None, id: str = "n1") -> Network:
    return Network(
        id=id,
        name=f"net-{id}",
        driver="bridge",
        subnet=subnet,
        gateway=gateway if gateway is not None else default_gateway(subnet),
        bridge="tbr-" + id,
        ip_range=ip_range,
    )


def allocate_all(ipam: IPAM, net: Network, owner: str = "c") -> list[str]:
    got: list[str] = []
    while True:
        try:
            got.append(ipam.allocate(net, f"{owner}{len(got)}"))
        except Exhausted:
            return got


# -- what is never handed out ------------------------------------------------------------


def test_first_allocation_is_the_first_host_after_the_gateway(ipam: IPAM) -> None:
    assert ipam.allocate(network("10.1.0.0/24"), "c1") == "10.1.0.2"


def test_never_network_broadcast_or_gateway(ipam: IPAM) -> None:
    net = network("10.1.0.0/28", gateway="10.1.0.7")
    got = allocate_all(ipam, net)
    assert len(got) == 13  # 16 - network - broadcast - gateway
    assert len(set(got)) == 13
    assert not {"10.1.0.0", "10.1.0.15", "10.1.0.7"} & set(got)
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network("10.1.0.0/28") for a in got)


def test_leases_are_persisted_with_their_owner(ipam: IPAM, store: Store) -> None:
    net = network("10.1.0.0/24")
    address = ipam.allocate(net, "endpoint-1")
    kv = store.get(f"/ipam/n1/{address}")
    assert kv is not None and kv.value == {"owner": "endpoint-1"}
    assert ipam.leases("n1") == {address: "endpoint-1"}


def test_ip_range_is_honoured(ipam: IPAM) -> None:
    net = network("10.2.0.0/24", ip_range="10.2.0.128/29")
    got = allocate_all(ipam, net)
    assert got == [f"10.2.0.{n}" for n in range(128, 136)]


def test_ip_range_at_the_subnet_edges_skips_network_and_broadcast(ipam: IPAM) -> None:
    low = network("10.3.0.0/24", gateway="10.3.0.254", ip_range="10.3.0.0/30", id="low")
    assert allocate_all(ipam, low) == ["10.3.0.1", "10.3.0.2", "10.3.0.3"]
    high = network("10.3.0.0/24", ip_range="10.3.0.252/30", id="high")
    assert allocate_all(ipam, high) == ["10.3.0.252", "10.3.0.253", "10.3.0.254"]


def test_ip_range_including_the_gateway_skips_it(ipam: IPAM) -> None:
    net = network("10.3.0.0/24", gateway="10.3.0.130", ip_range="10.3.0.128/30")
    assert allocate_all(ipam, net) == ["10.3.0.128", "10.3.0.129", "10.3.0.131"]


# -- requested addresses -----------------------------------------------------------------


def test_requested_address_is_granted(ipam: IPAM) -> None:
    net = network("10.4.0.0/24")
    assert ipam.allocate(net, "c1", requested="10.4.0.50") == "10.4.0.50"
    assert ipam.leases("n1") == {"10.4.0.50": "c1"}


def test_empty_requested_means_any(ipam: IPAM) -> None:
    assert ipam.allocate(network("10.4.0.0/24"), "c1", requested="") == "10.4.0.2"


def test_requested_address_may_lie_outside_ip_range(ipam: IPAM) -> None:
    net = network("10.4.0.0/24", ip_range="10.4.0.128/25")
    assert ipam.allocate(net, "c1", requested="10.4.0.9") == "10.4.0.9"


def test_requested_outside_subnet_is_invalid(ipam: IPAM) -> None:
    net = network("10.4.0.0/24")
    with pytest.raises(InvalidInput, match=r"outside the subnet 10\.4\.0\.0/24"):
        ipam.allocate(net, "c1", requested="10.5.0.9")
    assert ipam.leases("n1") == {}


def test_requested_garbage_is_invalid(ipam: IPAM) -> None:
    with pytest.raises(InvalidInput, match="invalid address"):
        ipam.allocate(network("10.4.0.0/24"), "c1", requested="10.4.0.300")


def test_requested_network_or_broadcast_is_invalid(ipam: IPAM) -> None:
    net = network("10.4.0.0/24")
    with pytest.raises(InvalidInput, match="network address"):
        ipam.allocate(net, "c1", requested="10.4.0.0")
    with pytest.raises(InvalidInput, match="broadcast address"):
        ipam.allocate(net, "c1", requested="10.4.0.255")


def test_requested_taken_names_the_holder(ipam: IPAM) -> None:
    net = network("10.4.0.0/24")
    ipam.allocate(net, "web-endpoint", requested="10.4.0.7")
    with pytest.raises(Conflict, match="in use by web-endpoint"):
        ipam.allocate(net, "db-endpoint", requested="10.4.0.7")
    assert ipam.leases("n1") == {"10.4.0.7": "web-endpoint"}


def test_requested_gateway_is_a_conflict(ipam: IPAM) -> None:
    net = network("10.4.0.0/24")
    with pytest.raises(Conflict, match="gateway of network net-n1"):
        ipam.allocate(net, "c1", requested="10.4.0.1")


def test_dynamic_allocation_skips_requested_addresses(ipam: IPAM) -> None:
    net = network("10.4.0.0/29")
    ipam.allocate(net, "static", requested="10.4.0.3")
    assert allocate_all(ipam, net) == ["10.4.0.2", "10.4.0.4", "10.4.0.5", "10.4.0.6"]


# -- exhaustion --------------------------------------------------------------------------


def test_exhaustion_on_a_slash_30(ipam: IPAM) -> None:
    net = network("10.5.0.0/30")  # hosts .1 (gateway) and .2
    assert ipam.allocate(net, "c1") == "10.5.0.2"
    with pytest.raises(Exhausted) as caught:
        ipam.allocate(net, "c2")
    message = str(caught.value)
    assert "net-n1" in message and "10.5.0.0/30" in message and "larger subnet" in message
    assert "\n" not in message


def test_exhaustion_on_a_slash_29(ipam: IPAM) -> None:
    net = network("10.5.0.0/29")
    assert allocate_all(ipam, net) == [f"10.5.0.{n}" for n in range(2, 7)]
    with pytest.raises(Exhausted, match="net-n1"):
        ipam.allocate(net, "late")


def test_exhaustion_of_an_ip_range_names_it(ipam: IPAM) -> None:
    net = network("10.5.0.0/24", ip_range="10.5.0.8/31")
    allocate_all(ipam, net)
    with pytest.raises(Exhausted, match=r"range 10\.5\.0\.8/31"):
        ipam.allocate(net, "late")


def test_networks_are_independent(ipam: IPAM) -> None:
    one = network("10.5.0.0/30", id="one")
    two = network("10.5.0.0/30", id="two")
    assert ipam.allocate(one, "a") == "10.5.0.2"
    assert ipam.allocate(two, "b") == "10.5.0.2"


# -- the cursor --------------------------------------------------------------------------


def test_freed_address_is_not_reused_at_once(ipam: IPAM) -> None:
    net = network("10.6.0.0/24")
    first = ipam.allocate(net, "c1")
    ipam.allocate(net, "c2")
    ipam.release("n1", first)
    assert ipam.allocate(net, "c3") == "10.6.0.4"
    assert first not in ipam.leases("n1")


def test_cursor_wraps_around(ipam: IPAM) -> None:
    net = network("10.6.0.0/29")  # .2 .. .6 allocatable
    got = allocate_all(ipam, net)
    assert got == ["10.6.0.2", "10.6.0.3", "10.6.0.4", "10.6.0.5", "10.6.0.6"]
    ipam.release("n1", "10.6.0.3")
    ipam.release("n1", "10.6.0.5")
    # The last one handed out was .6: continue after it, wrapping to the start.
    assert ipam.allocate(net, "again") == "10.6.0.3"
    assert ipam.allocate(net, "again2") == "10.6.0.5"
    with pytest.raises(Exhausted):
        ipam.allocate(net, "none-left")


def test_cursor_is_kept_in_the_store(store: Store) -> None:
    net = network("10.6.0.0/24")
    IPAM(store).allocate(net, "c1")
    IPAM(store).allocate(net, "c2")
    IPAM(store).release("n1", "10.6.0.2")
    # A fresh IPAM over the same store (another process) continues from the cursor.
    assert IPAM(store).allocate(net, "c3") == "10.6.0.4"
    assert store.get("/ipam-cursor/n1") is not None


def test_requested_address_does_not_move_the_cursor(ipam: IPAM) -> None:
    net = network("10.6.0.0/24")
    ipam.allocate(net, "c1")  # .2
    ipam.allocate(net, "static", requested="10.6.0.100")
    assert ipam.allocate(net, "c2") == "10.6.0.3"


# -- release -----------------------------------------------------------------------------


def test_release_is_idempotent(ipam: IPAM) -> None:
    net = network("10.7.0.0/24")
    address = ipam.allocate(net, "c1")
    ipam.release("n1", address)
    ipam.release("n1", address)
    ipam.release("unknown-network", "10.9.9.9")
    assert ipam.leases("n1") == {}


def test_release_owner_frees_every_network(ipam: IPAM) -> None:
    one, two = network("10.7.0.0/24", id="one"), network("10.8.0.0/24", id="two")
    a = ipam.allocate(one, "container-a")
    b = ipam.allocate(two, "container-a")
    keep = ipam.allocate(one, "container-b")
    released = ipam.release_owner("container-a")
    assert sorted(released) == [("one", a), ("two", b)]
    assert ipam.leases("one") == {keep: "container-b"}
    assert ipam.leases("two") == {}
    assert ipam.release_owner("container-a") == []


def test_leases_are_in_address_order(ipam: IPAM) -> None:
    net = network("10.7.0.0/24")
    for address in ["10.7.0.10", "10.7.0.9", "10.7.0.100"]:
        ipam.allocate(net, f"c-{address}", requested=address)
    assert list(ipam.leases("n1")) == ["10.7.0.9", "10.7.0.10", "10.7.0.100"]


def test_drop_network_removes_leases_and_cursor(ipam: IPAM, store: Store) -> None:
    net = network("10.7.0.0/24")
    other = network("10.7.0.0/24", id="n10")  # an id sharing a prefix with n1
    ipam.allocate(net, "c1")
    ipam.allocate(other, "c2")
    ipam.drop_network("n1")
    assert ipam.leases("n1") == {}
    assert store.get("/ipam-cursor/n1") is None
    assert ipam.leases("n10") == {"10.7.0.2": "c2"}
    assert ipam.allocate(net, "fresh") == "10.7.0.2"  # the cursor starts over


# -- concurrency -------------------------------------------------------------------------


def test_concurrent_allocation_from_threads_is_unique(store: Store) -> None:
    net = network("10.9.0.0/23")
    results: list[list[str]] = [[] for _ in range(8)]
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(index: int) -> None:
        ipam = IPAM(store)  # one allocator per thread, as separate processes would have
        try:
            start.wait()
            for n in range(50):
                results[index].append(ipam.allocate(net, f"t{index}-{n}"))
        except BaseException as exc:  # noqa: BLE001  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    addresses = [a for got in results for a in got]
    assert len(addresses) == 400
    assert len(set(addresses)) == 400
    assert "10.9.0.1" not in addresses and "10.9.0.0" not in addresses
    leases = IPAM(store).leases("n1")
    assert len(leases) == 400
    for index, got in enumerate(results):
        assert all(leases[a].startswith(f"t{index}-") for a in got)


# -- validate_network_cidrs --------------------------------------------------------------


def test_validate_normalises_and_defaults_the_gateway() -> None:
    assert validate_network_cidrs("10.10.0.0/16", None, None) == ("10.10.0.0/16", "10.10.0.1", None)
    assert validate_network_cidrs(" 10.10.0.0/255.255.0.0 ", "", "") == ("10.10.0.0/16", "10.10.0.1", None)
    assert validate_network_cidrs("10.10.0.0/16", "10.10.255.254", "10.10.8.0/21") == (
        "10.10.0.0/16",
        "10.10.255.254",
        "10.10.8.0/21",
    )


@pytest.mark.parametrize(
    ("subnet", "gateway", "ip_range", "message"),
    [
        ("10.0.0.5/24", None, None, r"did you mean 10\.0\.0\.0/24\?"),
        ("10.0.0.0", None, None, r"needs a prefix length, as in 10\.0\.0\.0/24"),
        ("banana", None, None, "invalid subnet 'banana'"),
        ("10.0.0.0/33", None, None, "invalid subnet"),
        ("fd00::/64", None, None, "is IPv6: give it with --ipv6"),
        ("10.0.0.0/31", None, None, "prefix length of 30 or less"),
        ("10.0.0.0/32", None, None, "prefix length of 30 or less"),
        ("10.0.0.0/24", "10.0.1.1", None, r"gateway 10\.0\.1\.1 is outside the subnet 10\.0\.0\.0/24"),
        ("10.0.0.0/24", "10.0.0.0", None, "network address"),
        ("10.0.0.0/24", "10.0.0.255", None, "broadcast address"),
        ("10.0.0.0/24", "10.0.0.1/24", None, "invalid gateway"),
        ("10.0.0.0/24", "gw", None, "invalid gateway"),
        ("10.0.0.0/24", None, "10.0.1.0/25", r"ip range 10\.0\.1\.0/25 is not inside the subnet"),
        ("10.0.0.0/24", None, "10.0.0.0/23", "not inside the subnet"),
        ("10.0.0.0/24", None, "10.0.0.130/25", r"did you mean 10\.0\.0\.128/25\?"),
    ],
)
def test_validate_rejects_with_one_helpful_line(
    subnet: str, gateway: str | None, ip_range: str | None, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message) as caught:
        validate_network_cidrs(subnet, gateway, ip_range)
    assert "\n" not in str(caught.value)


def test_default_gateway() -> None:
    assert default_gateway("172.17.0.0/16") == "172.17.0.1"
    assert default_gateway("10.0.0.4/30") == "10.0.0.5"
    with pytest.raises(InvalidInput):
        default_gateway("10.0.0.4/31")


# -- find_overlap / choose_subnet --------------------------------------------------------


def test_find_overlap_returns_the_first_owner() -> None:
    in_use = {
        "192.168.1.0/24": "host route on eth0",
        "10.0.0.0/8": "network big",
        "10.1.0.0/16": "network small",
    }
    assert find_overlap("10.1.2.0/24", in_use) == "network big"
    assert find_overlap("10.0.0.0/7", in_use) == "network big"
    assert find_overlap("192.168.0.0/16", in_use) == "host route on eth0"
    assert find_overlap("172.16.0.0/12", in_use) is None
    assert find_overlap("10.1.0.0/16", {}) is None


def test_find_overlap_accepts_host_addresses_and_ignores_noise() -> None:
    in_use = {
        "0.0.0.0/0": "default route",
        "fe80::/64": "link-local v6",
        "not-a-cidr": "garbage",
        "192.168.1.17/24": "address of eth0",
    }
    assert find_overlap("192.168.1.0/28", in_use) == "address of eth0"
    assert find_overlap("10.0.0.0/24", in_use) is None


def test_default_pools_are_dockers() -> None:
    assert DEFAULT_POOLS[0] == ("172.17.0.0/16", 16)
    assert DEFAULT_POOLS[14] == ("172.31.0.0/16", 16)
    assert DEFAULT_POOLS[-1] == ("192.168.0.0/16", 20)
    assert len(DEFAULT_POOLS) == 16


def test_choose_subnet_takes_the_first_free_pool() -> None:
    assert choose_subnet([]) == "172.17.0.0/16"
    assert choose_subnet(["10.0.0.0/8", "0.0.0.0/0"]) == "172.17.0.0/16"


def test_choose_subnet_skips_used_pools() -> None:
    in_use = ["172.17.0.0/16", "172.18.0.1/24", "172.19.200.0/30"]
    assert choose_subnet(in_use) == "172.20.0.0/16"


def test_choose_subnet_moves_on_to_192_168_in_slash_20s() -> None:
    in_use = ["172.16.0.0/12", "192.168.0.5/24"]
    assert choose_subnet(in_use) == "192.168.16.0/20"


def test_choose_subnet_with_custom_pools() -> None:
    pools = [("10.200.0.0/16", 24)]
    assert choose_subnet(["10.200.0.0/24", "10.200.1.0/24"], pools) == "10.200.2.0/24"


def test_choose_subnet_exhausted() -> None:
    with pytest.raises(Exhausted, match="remove unused networks"):
        choose_subnet(["172.16.0.0/12", "192.168.0.0/16"])
