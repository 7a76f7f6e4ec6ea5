"""Datapath against the real kernel: namespaces, bridges, veths, and packets between them.

Every test gets a unique prefix (``tdp`` + 4 hex digits) for everything it names. The
Datapath under test is bound to a throwaway "host" namespace, never the machine's own:
the fixture creates it with ``ip netns add`` and constructs the Datapath in a short-lived
thread that has ``setns``-ed into it (``nsutil.run_in_netns``); the Datapath captures that
namespace and keeps all its host-side links there, whichever thread calls it later.
Container namespaces are bound under the real /var/run/netns so ``ip netns exec`` works
on them. The tests check the kernel's state with ``ip``, independently of the code under
test. Cleanup deletes every namespace with the prefix (which takes their veths and
bridges along), even when a test fails, and then checks that nothing is left.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import assert_nothing_left, remove_prefixed, root_links_with

from tether.datapath import Datapath, NetlinkDatapath, nsutil
from tether.errors import DatapathError

pytestmark = pytest.mark.e2e

NETNS_DIR = "/var/run/netns"


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd), capture_output=True, text=True, check=check, timeout=30
    )


def ip_json(*args: str) -> Any:
    return json.loads(sh("ip", "-j", *args).stdout or "[]")


@dataclass
class Env:
    prefix: str
    host: str  # name of the netns the Datapath is bound to
    dp: Datapath

    def ns(self, suffix: str) -> str:
        return f"{self.prefix}{suffix}"

    def in_host(
        self, *cmd: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        # nsenter --net keeps our mount namespace (ip netns exec would make a private one)
        return sh("nsenter", f"--net={NETNS_DIR}/{self.host}", "--", *cmd, check=check)

    def host_links(self) -> dict[str, Any]:
        out = self.in_host("ip", "-j", "-d", "link").stdout
        return {link["ifname"]: link for link in json.loads(out)}

    def in_ns(
        self, netns: str, *cmd: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", netns, *cmd, check=check)

    def attach(
        self, netns: str, n: int, *, subnet: str = "10.251.0", **overrides: Any
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "netns": netns,
            "host_ifname": f"{self.prefix}v{n}",
            "ifname": "eth0",
            "bridge": f"{self.prefix}br",
            "mac": f"02:42:0a:fb:00:{n + 2:02x}",
            "cidr": f"{subnet}.{n + 2}/24",
            "gateway": f"{subnet}.1",
            "mtu": 1400,
            "mark": f"{self.prefix}-mark",
        }
        spec.update(overrides)
        self.dp.attach_veth(**spec)
        return spec


@pytest.fixture
def env() -> Iterator[Env]:
    prefix = f"tdp{uuid.uuid4().hex[:4]}"
    host = f"{prefix}h"
    sh("ip", "netns", "add", host)
    dp: Datapath | None = None
    try:
        sh("ip", "-n", host, "link", "set", "lo", "up")
        dp = nsutil.run_in_netns(f"{NETNS_DIR}/{host}", NetlinkDatapath)
        yield Env(prefix=prefix, host=host, dp=dp)
    finally:
        if dp is not None:
            dp.close()
        remove_prefixed(prefix)
    assert_nothing_left(prefix)


def bridge_up(env: Env, gateway_cidr: str = "10.251.0.1/24") -> str:
    bridge = f"{env.prefix}br"
    env.dp.ensure_bridge(bridge, gateway_cidr, 1400, f"{env.prefix}-mark")
    return bridge


# ---------------------------------------------------------------------- namespaces


def test_netns_lifecycle(env: Env) -> None:
    dp, name = env.dp, env.ns("a")
    assert not dp.netns_exists(name)
    path = dp.create_netns(name)
    assert path == f"{NETNS_DIR}/{name}" == dp.netns_path(name)
    assert dp.netns_exists(name)
    assert name in dp.list_netns()
    assert name in sh("ip", "netns", "list").stdout.split()

    links = env.in_ns(name, "ip", "-o", "link").stdout.splitlines()
    assert len(links) == 1 and links[0].split(":")[1].strip() == "lo"
    assert ",UP," in links[0] or "<LOOPBACK,UP" in links[0]
    env.in_ns(name, "ping", "-c1", "-W1", "127.0.0.1")

    with pytest.raises(DatapathError, match="already exists"):
        dp.create_netns(name)

    dp.delete_netns(name)
    assert not dp.netns_exists(name)
    assert not os.path.exists(path)
    assert name not in dp.list_netns()
    assert name not in sh("ip", "netns", "list").stdout.split()
    dp.delete_netns(name)  # idempotent
    dp.delete_netns(env.ns("never"))


def test_netns_names_are_checked(env: Env) -> None:
    for bad in ("", ".", "..", "a/b", "../etc"):
        with pytest.raises(DatapathError):
            env.dp.netns_path(bad)


def test_list_netns_skips_a_stale_file(env: Env) -> None:
    stale = f"{NETNS_DIR}/{env.ns('stale')}"
    open(stale, "w").close()  # a half-made namespace: file without mount
    try:
        assert not env.dp.netns_exists(env.ns("stale"))
        assert env.ns("stale") not in env.dp.list_netns()
    finally:
        env.dp.delete_netns(env.ns("stale"))
    assert not os.path.exists(stale)


def test_custom_netns_dir_becomes_a_shared_mount(env: Env, tmp_path: Any) -> None:
    netns_dir = str(tmp_path / "netns")
    dp = nsutil.run_in_netns(f"{NETNS_DIR}/{env.host}", lambda: NetlinkDatapath(netns_dir))
    try:
        dp.create_netns(env.ns("c"))
        assert dp.list_netns() == [env.ns("c")]
        found = json.loads(
            sh("findmnt", "-J", "-o", "TARGET,PROPAGATION", netns_dir).stdout
        )
        assert found["filesystems"][0]["propagation"] == "shared"
        dp.delete_netns(env.ns("c"))
        assert dp.list_netns() == []
    finally:
        dp.close()
        sh("umount", "-l", f"{netns_dir}/{env.ns('c')}", check=False)
        sh("umount", "-l", netns_dir, check=False)


def test_closed_datapath_refuses_work(env: Env) -> None:
    dp = nsutil.run_in_netns(f"{NETNS_DIR}/{env.host}", NetlinkDatapath)
    dp.close()
    dp.close()  # idempotent
    with pytest.raises(DatapathError, match="closed"):
        dp.link_exists("lo")


# ---------------------------------------------------------------------- bridges


def test_bridge_is_idempotent_and_stays_in_its_host(env: Env) -> None:
    bridge = bridge_up(env)
    bridge_up(env)  # again: no error, no second address
    assert env.dp.link_exists(bridge)
    assert not env.dp.link_exists(f"{env.prefix}nope")

    link = env.host_links()[bridge]
    assert link["linkinfo"]["info_kind"] == "bridge"
    assert link["mtu"] == 1400
    assert "UP" in link["flags"]
    assert link["ifalias"] == f"{env.prefix}-mark"
    addrs = ip_json("-n", env.host, "-4", "addr", "show", "dev", bridge)[0]["addr_info"]
    assert [(a["local"], a["prefixlen"]) for a in addrs] == [("10.251.0.1", 24)]
    assert bridge not in root_links_with(env.prefix)

    env.dp.delete_bridge(bridge)
    assert bridge not in env.host_links()
    env.dp.delete_bridge(bridge)  # idempotent


def test_bridge_keeps_its_mac_as_ports_come(env: Env) -> None:
    # A bridge whose MAC was never set takes its lowest port's MAC; ours must not move.
    bridge = bridge_up(env)
    before = env.host_links()[bridge]["address"]
    env.dp.create_netns(env.ns("a"))
    env.attach(env.ns("a"), 0)
    assert env.host_links()[bridge]["address"] == before


def test_ensure_bridge_refuses_a_non_bridge(env: Env) -> None:
    name = f"{env.prefix}x"
    env.in_host(
        "ip", "link", "add", name, "type", "veth", "peer", "name", f"{env.prefix}y"
    )
    with pytest.raises(DatapathError, match="as a bridge"):
        env.dp.ensure_bridge(name, "10.251.0.1/24", 1400, "m")


# ---------------------------------------------------------------------- endpoints


def test_two_containers_talk_through_the_bridge(env: Env) -> None:
    bridge_up(env)
    a, b = env.ns("a"), env.ns("b")
    env.dp.create_netns(a)
    env.dp.create_netns(b)
    spec_a = env.attach(a, 0)
    spec_b = env.attach(b, 1)

    env.in_ns(a, "ping", "-c1", "-W1", "10.251.0.3")
    env.in_ns(b, "ping", "-c1", "-W1", "10.251.0.2")
    env.in_ns(a, "ping", "-c1", "-W1", "10.251.0.1")

    # what the kernel says, through ip
    eth0 = ip_json("-n", a, "addr", "show", "dev", "eth0")[0]
    assert eth0["address"] == spec_a["mac"]
    assert eth0["mtu"] == 1400
    assert "UP" in eth0["flags"]
    assert [
        (x["local"], x["prefixlen"]) for x in eth0["addr_info"] if x["family"] == "inet"
    ] == [("10.251.0.2", 24)]
    routes = ip_json("-n", a, "-4", "route")
    assert {"dst": "default", "gateway": "10.251.0.1", "dev": "eth0"}.items() <= routes[
        0
    ].items()

    host_end = env.host_links()[spec_b["host_ifname"]]
    assert host_end["master"] == f"{env.prefix}br"
    assert host_end["mtu"] == 1400
    assert host_end["ifalias"] == spec_b["mark"]
    assert "UP" in host_end["flags"]

    # and what the Datapath reports
    ifaces = {i["ifname"]: i for i in env.dp.container_interfaces(b)}
    assert ifaces["lo"]["state"] == "up" and ifaces["lo"]["addresses"] == [
        "127.0.0.1/8"
    ]
    assert ifaces["eth0"] == {
        "ifname": "eth0",
        "mac": spec_b["mac"],
        "mtu": 1400,
        "state": "up",
        "addresses": ["10.251.0.3/24"],
        "addresses6": [],  # a v4-only attach: its link-local fe80:: is left out
    }
    assert sorted(env.dp.container_routes(b), key=str) == sorted(
        [
            {"dst": "default", "gateway": "10.251.0.1", "dev": "eth0"},
            {"dst": "10.251.0.0/24", "gateway": None, "dev": "eth0"},
        ],
        key=str,
    )
    assert env.dp.has_default_route(b)


def test_a_second_interface_keeps_the_existing_default_route(env: Env) -> None:
    bridge_up(env)
    a = env.ns("a")
    env.dp.create_netns(a)
    first = env.attach(a, 0)
    assert env.dp.has_default_route(a)
    second = dict(first, host_ifname=f"{env.prefix}v1", ifname="eth1", mac="02:42:0a:fb:00:10",
                  cidr="10.251.0.16/24", gateway="10.251.0.9")
    # a second interface with a gateway: refused, and nothing of it is left ...
    with pytest.raises(DatapathError):
        env.dp.attach_veth(**second)
    assert "eth1" not in env.in_ns(a, "ip", "-o", "link").stdout
    assert not env.dp.link_exists(f"{env.prefix}v1")
    # ... unless the existing default may stay: then eth1 comes up without one
    assert env.dp.attach_veth(**second, keep_existing_default=True) is False
    assert "10.251.0.16/24" in env.in_ns(a, "ip", "-o", "-4", "addr", "show", "eth1").stdout
    routes = env.in_ns(a, "ip", "-4", "route", "show", "default").stdout
    assert "via 10.251.0.1 dev eth0" in routes and "10.251.0.9" not in routes, routes
    # and in a namespace without one, the route is installed and reported
    b = env.ns("b")
    env.dp.create_netns(b)
    third = dict(first, netns=b, host_ifname=f"{env.prefix}v2", mac="02:42:0a:fb:00:11", cidr="10.251.0.17/24")
    assert env.dp.attach_veth(**third, keep_existing_default=True) is True
    assert env.dp.has_default_route(b)


def test_default_route_added_later(env: Env) -> None:
    bridge_up(env)
    a = env.ns("a")
    env.dp.create_netns(a)
    env.attach(a, 0, gateway=None)
    assert not env.dp.has_default_route(a)
    assert env.dp.container_routes(a) == [
        {"dst": "10.251.0.0/24", "gateway": None, "dev": "eth0"}
    ]

    env.dp.add_default_route(a, "10.251.0.1")
    assert env.dp.has_default_route(a)
    env.dp.add_default_route(a, "10.251.0.1")  # same route again: fine
    with pytest.raises(DatapathError):
        env.dp.add_default_route(a, "10.251.0.9")  # a different default is a conflict
    assert "default via 10.251.0.1 dev eth0" in env.in_ns(a, "ip", "-4", "route").stdout


def test_second_interface_in_one_container(env: Env) -> None:
    bridge_up(env)
    env.dp.ensure_bridge(
        f"{env.prefix}br2", "10.252.0.1/24", 1400, f"{env.prefix}-mark"
    )
    a = env.ns("a")
    env.dp.create_netns(a)
    env.attach(a, 0)
    env.attach(
        a, 1, ifname="eth1", bridge=f"{env.prefix}br2", subnet="10.252.0", gateway=None
    )
    names = [i["ifname"] for i in env.dp.container_interfaces(a)]
    assert names == ["lo", "eth0", "eth1"]
    env.in_ns(a, "ping", "-c1", "-W1", "10.252.0.1")


def assert_no_new_links(
    env: Env, before: set[str], netns: str, netns_before: set[str]
) -> None:
    assert set(env.host_links()) == before
    names = {link["ifname"] for link in ip_json("-n", netns, "link")}
    assert names == netns_before


def test_failed_attach_leaves_nothing_behind(env: Env) -> None:
    bridge_up(env)
    a = env.ns("a")
    env.dp.create_netns(a)
    env.attach(a, 0)
    host_before = set(env.host_links())
    ns_before = {"lo", "eth0"}
    taken = f"{env.prefix}v0"

    cases: list[tuple[str, str, dict[str, Any]]] = [
        # refused before anything is made
        ("does not exist", a, {"bridge": f"{env.prefix}nobr"}),
        ("does not exist", env.ns("missing"), {"ifname": "eth1"}),
        ("invalid MAC", a, {"ifname": "eth1", "mac": "nonsense"}),
        ("invalid address", a, {"ifname": "eth1", "cidr": "10.251.0.300/24"}),
        # the kernel refuses the pair: host name taken, container name taken, bad MTU
        ("already exists", a, {"host_ifname": taken, "ifname": "eth1"}),
        ("already exists", a, {"ifname": "eth0"}),
        ("cannot attach", a, {"ifname": "eth1", "mtu": 100_000}),
        # the pair exists, then the last step inside fails: it must be undone
        ("unreachable", a, {"ifname": "eth1", "gateway": "10.99.0.1"}),
        ("File exists", a, {"ifname": "eth1"}),  # a second default route
    ]
    for message, netns, overrides in cases:
        with pytest.raises(DatapathError, match=message) as info:
            env.attach(netns, 5, **overrides)
        assert "\n" not in str(info.value)
        assert_no_new_links(env, host_before, a, ns_before)
    # the link whose name was taken is untouched
    assert env.host_links()[taken]["master"] == f"{env.prefix}br"
    env.in_ns(a, "ping", "-c1", "-W1", "10.251.0.1")


def test_detach_is_idempotent(env: Env) -> None:
    bridge_up(env)
    a, b = env.ns("a"), env.ns("b")
    env.dp.create_netns(a)
    env.dp.create_netns(b)
    spec_a = env.attach(a, 0)
    spec_b = env.attach(b, 1)

    env.dp.detach_veth(spec_a["host_ifname"])
    assert spec_a["host_ifname"] not in env.host_links()
    assert [i["ifname"] for i in env.dp.container_interfaces(a)] == ["lo"]
    env.dp.detach_veth(spec_a["host_ifname"])

    env.dp.detach_in_netns(b, "eth0")
    assert [i["ifname"] for i in env.dp.container_interfaces(b)] == ["lo"]
    assert spec_b["host_ifname"] not in env.host_links()
    env.dp.detach_in_netns(b, "eth0")
    env.dp.detach_in_netns(env.ns("missing"), "eth0")


def test_deleting_the_netns_removes_its_veth(env: Env) -> None:
    bridge_up(env)
    a = env.ns("a")
    env.dp.create_netns(a)
    spec = env.attach(a, 0)
    env.dp.delete_netns(a)
    deadline = time.monotonic() + 5  # the kernel frees a namespace asynchronously
    while env.dp.link_exists(spec["host_ifname"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not env.dp.link_exists(spec["host_ifname"])
    env.dp.detach_in_netns(a, "eth0")  # gone with its namespace: success


def test_links_with_mark(env: Env) -> None:
    bridge = bridge_up(env)
    a = env.ns("a")
    env.dp.create_netns(a)
    spec = env.attach(a, 0)
    env.attach(a, 1, ifname="eth1", gateway=None, mark="someone-else")
    assert sorted(env.dp.links_with_mark(spec["mark"])) == [
        (bridge, "bridge"),
        (spec["host_ifname"], "veth"),
    ]
    assert env.dp.links_with_mark("someone-else") == [(f"{env.prefix}v1", "veth")]
    assert env.dp.links_with_mark("nobody") == []


def test_host_networks(env: Env) -> None:
    bridge_up(env)
    env.in_host("ip", "route", "add", "10.253.0.0/16", "via", "10.251.0.254")
    env.in_host("ip", "route", "add", "default", "via", "10.251.0.254")
    env.in_host(
        "ip", "route", "add", "10.254.1.0/24", "via", "10.251.0.254", "table", "100"
    )
    assert env.dp.host_networks() == [
        "10.251.0.0/24",
        "10.253.0.0/16",
        "10.254.1.0/24",
        "127.0.0.0/8",
    ]


def test_concurrent_callers(env: Env) -> None:
    bridge_up(env)
    errors: list[BaseException] = []

    def one(n: int) -> None:
        try:
            name = env.ns(f"c{n}")
            env.dp.create_netns(name)
            env.attach(name, n)
            assert env.dp.has_default_route(name)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ports = [
        n
        for n, link in env.host_links().items()
        if link.get("master") == f"{env.prefix}br"
    ]
    assert len(ports) == 12
    env.in_ns(env.ns("c0"), "ping", "-c1", "-W1", "10.251.0.13")


def test_attach_timing(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """Not an assertion on speed: prints the medians for the record."""
    bridge_up(env, "10.251.0.1/16")
    count = 50
    names = [env.ns(f"t{n}") for n in range(count)]
    create, attach = [], []
    for n, name in enumerate(names):
        start = time.perf_counter()
        env.dp.create_netns(name)
        create.append(time.perf_counter() - start)
        start = time.perf_counter()
        env.attach(name, n, cidr=f"10.251.0.{n + 2}/16", gateway="10.251.0.1")
        attach.append(time.perf_counter() - start)
    start = time.perf_counter()
    for name in names:
        env.dp.delete_netns(name)
    delete = (time.perf_counter() - start) / count
    with capsys.disabled():
        print(
            f"\n[datapath timing, {count} endpoints] create_netns median "
            f"{statistics.median(create) * 1000:.2f} ms, attach_veth median "
            f"{statistics.median(attach) * 1000:.2f} ms (p90 "
            f"{sorted(attach)[int(count * 0.9)] * 1000:.2f} ms), delete_netns "
            f"{delete * 1000:.2f} ms each"
        )


# ---------------------------------------------------------------------- IPv6 (dual stack)
# ULA addresses inside namespaces the test made: nothing outside them is ever addressed.

V6 = "fd12:3456:789a"  # containers' v6 subnet fd12:3456:789a::/64, gateway ::1


def dual_bridge_up(env: Env, **kw: Any) -> str:
    bridge = f"{env.prefix}br"
    env.dp.ensure_bridge(bridge, "10.251.0.1/24", 1400, f"{env.prefix}-mark", gateway_cidr6=f"{V6}::1/64", **kw)
    return bridge


def attach_dual(env: Env, netns: str, n: int, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"cidr6": f"{V6}::{n + 2:x}/64", "gateway6": f"{V6}::1"}
    spec.update(overrides)
    return env.attach(netns, n, **spec)


def addr_info(netns_args: list[str], dev: str) -> list[dict[str, Any]]:
    """``ip -6 addr`` entries of ``dev`` (netns_args: ["-n", NS] or [] for the machine)."""
    found = ip_json(*netns_args, "-6", "addr", "show", "dev", dev)
    return list(found[0]["addr_info"]) if found else []


def sysctl6(env: Env, netns: str | None, ifname: str, key: str) -> str:
    path = f"/proc/sys/net/ipv6/conf/{ifname}/{key}"
    run = env.in_host if netns is None else (lambda *cmd: env.in_ns(netns, *cmd))
    return str(run("cat", path).stdout.strip())


def solicited_node_groups(netns: str) -> list[str]:
    """The multicast groups eth0 in ``netns`` has joined, read in-process at once (no
    subprocess start-up between the attach and the look)."""

    def read() -> list[str]:
        with open("/proc/thread-self/net/igmp6") as fh:
            return [line.split()[2] for line in fh if line.split()[1] == "eth0"]

    return nsutil.run_in_netns(f"{NETNS_DIR}/{netns}", read)


def test_dual_stack_containers_talk_at_once(env: Env) -> None:
    bridge = dual_bridge_up(env)
    a, b = env.ns("a"), env.ns("b")
    env.dp.create_netns(a)
    env.dp.create_netns(b)
    attach_dual(env, a, 0)
    attach_dual(env, b, 1)
    # when attach returns the kernel has finished the address: b takes solicitations for it
    assert "ff0200000000000000000001ff000003" in solicited_node_groups(b)
    # right after attach returns: no tentative window on either side, nothing to wait for
    env.in_ns(a, "ping", "-6", "-c1", "-W1", f"{V6}::3")
    env.in_ns(b, "ping", "-6", "-c1", "-W1", f"{V6}::2")
    env.in_ns(a, "ping", "-6", "-c1", "-W1", f"{V6}::1")  # the gateway on the bridge
    env.in_host("ping", "-6", "-c1", "-W1", f"{V6}::2")  # and the host to a container
    env.in_ns(a, "ping", "-c1", "-W1", "10.251.0.3")  # v4 beside it, as ever

    # what the kernel says, through ip: global with nodad, link-local there, nothing tentative
    info = addr_info(["-n", b], "eth0")
    assert [(x["local"], x["prefixlen"], x["scope"]) for x in info] == [
        (f"{V6}::3", 64, "global"), (next(x["local"] for x in info if x["scope"] == "link"), 64, "link"),
    ]  # fmt: skip
    assert info[0].get("nodad") is True
    assert not any(x.get("tentative") or x.get("dadfailed") for x in info), info
    for key in ("accept_ra", "accept_dad"):
        assert sysctl6(env, b, "eth0", key) == "0"
    routes = ip_json("-n", b, "-6", "route", "show", "default")
    assert [(r["gateway"], r["dev"]) for r in routes] == [(f"{V6}::1", "eth0")]
    gateway = addr_info(["-n", env.host], bridge)
    assert (f"{V6}::1", 64, True) in [(x["local"], x["prefixlen"], x.get("nodad")) for x in gateway]
    assert sysctl6(env, None, bridge, "accept_ra") == "0"

    # and what the Datapath reports
    eth0 = {i["ifname"]: i for i in env.dp.container_interfaces(b)}["eth0"]
    assert (eth0["addresses"], eth0["addresses6"]) == (["10.251.0.3/24"], [f"{V6}::3/64"])
    lo = {i["ifname"]: i for i in env.dp.container_interfaces(b)}["lo"]
    assert lo["addresses6"] == []  # ::1 is host scope: left out
    assert env.dp.container_routes(b, family=6) == [
        {"dst": f"{V6}::/64", "gateway": None, "dev": "eth0"},
        {"dst": "default", "gateway": f"{V6}::1", "dev": "eth0"},
    ]
    assert env.dp.has_default_route(b, family=6) and env.dp.has_default_route(b)
    assert all(":" not in r["dst"] for r in env.dp.container_routes(b))  # family 4 stays v4
    with pytest.raises(DatapathError, match="family"):
        env.dp.container_routes(b, family=5)


def test_a_namespace_made_elsewhere_gets_its_interface_quiet(env: Env) -> None:
    """A runtime's namespace (CNI, Docker) keeps its defaults; the interface gets the
    settings itself, before it comes up, so its link-local address is not tentative."""
    dual_bridge_up(env)
    a = env.ns("a")
    sh("ip", "netns", "add", a)  # not create_netns
    attach_dual(env, a, 0)
    env.in_ns(a, "ping", "-6", "-c1", "-W1", f"{V6}::1")
    assert (sysctl6(env, a, "eth0", "accept_ra"), sysctl6(env, a, "eth0", "accept_dad")) == ("0", "0")
    assert sysctl6(env, a, "default", "accept_dad") == "1"  # the runtime's own defaults stay
    assert not any(x.get("tentative") for x in addr_info(["-n", a], "eth0"))


def test_a_v4_only_attach_leaves_ipv6_as_the_kernel_has_it(env: Env) -> None:
    # (no sysctl written on the v4-only path: it costs what it did before dual stack)
    bridge_up(env)
    a = env.ns("a")
    env.dp.create_netns(a)
    env.attach(a, 0)
    assert sysctl6(env, a, "eth0", "accept_dad") == "1"
    assert ip_json("-n", a, "-6", "route", "show", "default") == []
    assert not env.dp.has_default_route(a, family=6)
    assert [i["addresses6"] for i in env.dp.container_interfaces(a)] == [[], []]


def test_dual_stack_default_routes_per_family(env: Env) -> None:
    dual_bridge_up(env)
    env.dp.ensure_bridge(f"{env.prefix}br2", "10.252.0.1/24", 1400, f"{env.prefix}-mark",
                         gateway_cidr6="fd12:3456:789b::1/64")  # fmt: skip
    a = env.ns("a")
    env.dp.create_netns(a)
    assert attach_dual(env, a, 0) and env.dp.has_default_route(a, family=6)
    second = dict(host_ifname=f"{env.prefix}v1", ifname="eth1", bridge=f"{env.prefix}br2",
                  subnet="10.252.0", cidr6="fd12:3456:789b::2/64", gateway6="fd12:3456:789b::1")  # fmt: skip
    # a second v6 default route is refused like a v4 one, and nothing of it is left
    with pytest.raises(DatapathError, match="File exists"):
        env.attach(a, 1, **dict(second, gateway=None))
    assert "eth1" not in env.in_ns(a, "ip", "-o", "link").stdout
    assert not env.dp.link_exists(f"{env.prefix}v1")
    # unless the existing ones may stay: then eth1 comes up without either
    assert env.dp.attach_veth(**dict(env_attach_spec(env, a, 1, **second)), keep_existing_default=True) is False
    routes = env.in_ns(a, "ip", "-6", "route", "show", "default").stdout
    assert f"via {V6}::1 dev eth0" in routes and "789b" not in routes, routes
    env.in_ns(a, "ping", "-6", "-c1", "-W1", "fd12:3456:789b::1")

    # a namespace with only a v4 default: the v6 one is installed beside it, the v4 one kept
    b = env.ns("b")
    env.dp.create_netns(b)
    env.attach(b, 2, host_ifname=f"{env.prefix}v2", bridge=f"{env.prefix}br2", subnet="10.252.0")
    spec = env_attach_spec(env, b, 3, ifname="eth1", cidr6=f"{V6}::5/64", gateway6=f"{V6}::1")
    assert env.dp.attach_veth(**spec, keep_existing_default=True) is False  # (the v4 route's answer)
    assert env.dp.container_routes(b, family=6)[-1] == {"dst": "default", "gateway": f"{V6}::1", "dev": "eth1"}
    assert "via 10.252.0.1 dev eth0" in env.in_ns(b, "ip", "-4", "route", "show", "default").stdout


def env_attach_spec(env: Env, netns: str, n: int, subnet: str = "10.251.0", **overrides: Any) -> dict[str, Any]:
    """The arguments ``Env.attach`` would pass, without attaching."""
    spec: dict[str, Any] = {
        "netns": netns, "host_ifname": f"{env.prefix}v{n}", "ifname": "eth0", "bridge": f"{env.prefix}br",
        "mac": f"02:42:0a:fb:00:{n + 2:02x}", "cidr": f"{subnet}.{n + 2}/24", "gateway": f"{subnet}.1",
        "mtu": 1400, "mark": f"{env.prefix}-mark",
    }  # fmt: skip
    spec.update(overrides)
    return spec


def test_v6_default_route_added_later(env: Env) -> None:
    dual_bridge_up(env)
    a = env.ns("a")
    env.dp.create_netns(a)
    attach_dual(env, a, 0, gateway=None, gateway6=None)
    assert not env.dp.has_default_route(a, family=6) and not env.dp.has_default_route(a)
    env.dp.add_default_route(a, f"{V6}::1")
    env.dp.add_default_route(a, "fd12:3456:789a:0::1")  # the same route, spelt otherwise: fine
    assert env.dp.has_default_route(a, family=6) and not env.dp.has_default_route(a)
    with pytest.raises(DatapathError):
        env.dp.add_default_route(a, f"{V6}::9")  # another v6 default is a conflict
    env.dp.add_default_route(a, "10.251.0.1")  # the v4 one is its own
    assert env.dp.has_default_route(a)
    with pytest.raises(DatapathError, match="invalid gateway"):
        env.dp.add_default_route(a, "nonsense")
    env.in_ns(a, "ping", "-6", "-c1", "-W1", f"{V6}::1")


def test_failed_dual_stack_attach_leaves_nothing_behind(env: Env) -> None:
    dual_bridge_up(env)
    a = env.ns("a")
    env.dp.create_netns(a)
    attach_dual(env, a, 0)
    host_before = set(env.host_links())
    cases: list[tuple[str, dict[str, Any]]] = [
        ("invalid address", {"cidr6": "10.251.0.9/24"}),  # v4 where v6 is expected
        ("invalid address", {"cidr6": f"{V6}::1:2:3:4:5:6:7/64"}),
        ("invalid address", {"cidr6": f"{V6}::9"}),  # no prefix length
        ("invalid IPv6 gateway", {"gateway6": "10.251.0.1"}),
        ("invalid IPv6 gateway", {"cidr6": None}),  # a v6 gateway without a v6 address
        ("No route to host", {"gateway": None, "gateway6": "fd99::1"}),  # the pair exists, the route fails
        ("File exists", {"gateway": None}),  # a second v6 default route
    ]
    for message, overrides in cases:
        with pytest.raises(DatapathError, match=message) as info:
            attach_dual(env, a, 5, ifname="eth1", **overrides)
        assert "\n" not in str(info.value)
        assert_no_new_links(env, host_before, a, {"lo", "eth0"})
    env.in_ns(a, "ping", "-6", "-c1", "-W1", f"{V6}::1")


def test_bridge_v6_gateway_is_idempotent_and_exclusive(env: Env) -> None:
    bridge = dual_bridge_up(env)
    dual_bridge_up(env)  # again: no second address
    a = env.ns("a")
    env.dp.create_netns(a)
    attach_dual(env, a, 0)  # a port: the bridge has a carrier, so a link-local address too

    def globals_and_links() -> tuple[list[str], int]:
        info = addr_info(["-n", env.host], bridge)
        return sorted(f"{x['local']}/{x['prefixlen']}" for x in info if x["scope"] == "global"), sum(
            x["scope"] == "link" for x in info)  # fmt: skip

    deadline = time.monotonic() + 5
    while globals_and_links()[1] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert globals_and_links() == ([f"{V6}::1/64"], 1)
    env.dp.add_address(bridge, "fd12:3456:789c::1/64")
    env.dp.add_address(bridge, "fd12:3456:789c::1/64")  # idempotent
    assert globals_and_links() == ([f"{V6}::1/64", "fd12:3456:789c::1/64"], 1)
    assert all(x.get("nodad") for x in addr_info(["-n", env.host], bridge) if x["scope"] == "global")
    dual_bridge_up(env)  # not exclusive: other addresses stay
    assert globals_and_links()[0] == [f"{V6}::1/64", "fd12:3456:789c::1/64"]
    dual_bridge_up(env, exclusive=True)  # the gateway only; the link-local address stays
    assert globals_and_links() == ([f"{V6}::1/64"], 1)
    env.dp.add_address(bridge, "fd12:3456:789c::1/64")
    env.dp.remove_address(bridge, "fd12:3456:789c::1/64")
    env.dp.remove_address(bridge, "fd12:3456:789c::1/64")  # idempotent
    assert globals_and_links() == ([f"{V6}::1/64"], 1)
    # exclusive without a v6 gateway: no global v6 address at all
    env.dp.ensure_bridge(bridge, "10.251.0.1/24", 1400, f"{env.prefix}-mark", exclusive=True)
    assert globals_and_links() == ([], 1)
    with pytest.raises(DatapathError, match="not an IPv6 address"):
        env.dp.ensure_bridge(bridge, "10.251.0.1/24", 1400, "m", gateway_cidr6="10.251.0.1/24")


def test_host_view_includes_global_ipv6(env: Env) -> None:
    bridge = dual_bridge_up(env)
    a = env.ns("a")
    env.dp.create_netns(a)
    attach_dual(env, a, 0)
    env.in_host("ip", "-6", "route", "add", "2001:db8:5::/48", "via", f"{V6}::2")
    env.in_host("ip", "-6", "route", "add", "default", "via", f"{V6}::2")
    env.in_host("ip", "-6", "route", "add", "2001:db8:6::/48", "via", f"{V6}::2", "table", "100")
    assert env.dp.host_addresses() == ["10.251.0.1", "127.0.0.1", f"{V6}::1"]  # no fe80::, no ::1
    assert env.dp.host_networks() == [
        "10.251.0.0/24", "127.0.0.0/8", "2001:db8:5::/48", "2001:db8:6::/48", f"{V6}::/64",
    ]  # fmt: skip
    assert env.dp.link_exists(bridge)


def test_ipv6_sysctls_and_forwarding_stay_in_the_host(env: Env) -> None:
    machine_forwarding = open("/proc/sys/net/ipv6/conf/all/forwarding").read()
    bridge = dual_bridge_up(env)
    learner, quiet = f"{env.prefix}d1", f"{env.prefix}d2"
    env.in_host("ip", "link", "add", learner, "type", "veth", "peer", "name", quiet)  # (no dummy module here)
    assert sysctl6(env, None, learner, "accept_ra") == "1"
    env.dp.set_interface_sysctl(quiet, "accept_ra", "0", family=6)
    env.dp.set_interface_sysctl(quiet, "accept_ra", "0", family=6)  # already: success
    env.dp.set_interface_sysctl(bridge, "forwarding", "1")  # family 4, in the Datapath's host too
    assert env.in_host("cat", f"/proc/sys/net/ipv4/conf/{bridge}/forwarding").stdout.strip() == "1"
    with pytest.raises(DatapathError, match="cannot set accept_ra=0 on nope"):
        env.dp.set_interface_sysctl("nope", "accept_ra", "0", family=6)
    with pytest.raises(DatapathError, match="invalid interface name"):
        env.dp.set_interface_sysctl("../all", "forwarding", "1", family=6)

    env.dp.enable_ipv6_forwarding()
    assert sysctl6(env, None, "all", "forwarding") == "1"
    assert sysctl6(env, None, learner, "accept_ra") == "2"  # still takes its router's advertisements
    assert (sysctl6(env, None, quiet, "accept_ra"), sysctl6(env, None, bridge, "accept_ra")) == ("0", "0")
    env.in_host("sysctl", "-qw", f"net.ipv6.conf.{learner}.accept_ra=1")
    env.dp.enable_ipv6_forwarding()  # already on: success, and an administrator's change stands
    assert sysctl6(env, None, learner, "accept_ra") == "1"
    assert open("/proc/sys/net/ipv6/conf/all/forwarding").read() == machine_forwarding


def test_dual_stack_attach_timing(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """Not an assertion on speed: prints v4-only and dual-stack attach medians, interleaved
    on one bridge so the machine's load falls on both alike (the issue's target: dual
    stack at most 1.15x)."""
    env.dp.ensure_bridge(f"{env.prefix}br", "10.251.0.1/16", 1400, f"{env.prefix}-mark", gateway_cidr6=f"{V6}::1/64")
    count = 80
    attach: dict[str, list[float]] = {"v4": [], "dual": []}
    for n in range(count):
        kind = "dual" if n % 2 else "v4"
        name = env.ns(f"t{n}")
        env.dp.create_netns(name)
        v6 = {"cidr6": f"{V6}::{n + 2:x}/64", "gateway6": f"{V6}::1"} if kind == "dual" else {}
        start = time.perf_counter()
        env.attach(name, n, cidr=f"10.251.0.{n + 2}/16", gateway="10.251.0.1", **v6)
        attach[kind].append(time.perf_counter() - start)
    v4, dual = (statistics.median(attach[k]) * 1000 for k in ("v4", "dual"))
    with capsys.disabled():
        print(f"\n[datapath timing, {count} endpoints] attach_veth median v4-only {v4:.2f} ms, "
              f"dual stack {dual:.2f} ms ({dual / v4:.2f}x)")  # fmt: skip
