"""Dual stack on bridge networks with real packets: container to container and host to
container over IPv6 the moment `run` returns, NAT66 to an "internet", published ports on
the host's v6 addresses, isolation, --internal and icc=false for v6, AAAA and PTR from the
embedded resolver, bad input, and a daemon restart that keeps every v6 address.

The world (conftest.World) gets v6 addresses on documentation prefixes only:

    host 2001:db8:1::2 --- lan 2001:db8:1::1 (router) | lan 2001:db8:2::1 --- inet 2001:db8:2::10

Container networks are ULA (fd00::/8). Nothing outside these namespaces is addressed."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Host, World, sh
from probes import RESOLVE, RESOLVE6, REVERSE, TCP_WHO6, ask, until

HOST6, LAN6, LAN6_INET, INET6 = "2001:db8:1::2", "2001:db8:1::1", "2001:db8:2::1", "2001:db8:2::10"

Runner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def world6(world: World) -> World:
    """The world with IPv6 on every link (documentation prefixes), routed like its v4."""
    host, lan, inet = world.host.name, world.lan, world.inet
    for ns, dev, addr in ((host, "twup0", f"{HOST6}/64"), (lan, "twlan0", f"{LAN6}/64"),
                          (lan, "twlan1", f"{LAN6_INET}/64"), (inet, "twinet0", f"{INET6}/64")):
        sh("ip", "-n", ns, "-6", "addr", "add", addr, "dev", dev, "nodad")
    sh("ip", "-n", host, "-6", "route", "add", "default", "via", LAN6)
    sh("ip", "-n", inet, "-6", "route", "add", "2001:db8:1::/64", "via", LAN6_INET)
    sh("ip", "netns", "exec", lan, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
    return world


def _serve6(host: Host, name: str, net: str, *extra: str, port: int = 8000) -> dict[str, Any]:
    host.tether("run", "-d", "--name", name, "--net", net, *extra, "--", "python3", "-c", TCP_WHO6, str(port))
    assert until(lambda: ask(lambda *c, **k: host.in_container(name, *c, **k), "::1", port))
    return dict(host.inspect(name)["networks"][net])


def _in(host: Host, name: str) -> Runner:
    return lambda *c, **k: host.in_container(name, *c, **k)


def test_dual_stack_network_containers_and_host(host: Host) -> None:
    created = host.tether("network", "create", "--ipv6", "--subnet", "10.231.0.0/24", "dual").stdout.strip()
    net = host.json("network", "inspect", "dual")[0]
    assert net["id"] == created and net["subnet"] == "10.231.0.0/24"
    assert net["subnet6"].startswith("fd") and net["subnet6"].endswith("/64")  # a ULA picked for it
    host.tether("run", "-d", "--name", "a", "--net", "dual", "--", "sleep", "600")
    # the first packet right after run returns: no tentative (DAD) window on either side
    host.tether("run", "-d", "--name", "b", "--net", "dual", "--", "sleep", "600")
    b = host.inspect("b")["networks"]["dual"]
    assert host.in_container("a", "ping", "-6", "-c1", "-W1", b["address6"]).returncode == 0
    a = host.inspect("a")["networks"]["dual"]
    assert a["gateway6"] == net["gateway6"] and a["prefixlen6"] == 64
    # the host reaches a container's v6 address directly (the bridge holds the v6 gateway)
    assert host.in_host("ping", "-6", "-c1", "-W1", a["address6"]).returncode == 0
    # inside: the v6 address (not tentative), a link-local one, the v6 default route, no RAs accepted
    addrs = host.in_container("a", "ip", "-6", "-o", "addr", "show", "dev", "eth0").stdout
    assert a["address6"] in addrs and "fe80::" in addrs and "tentative" not in addrs
    routes = host.in_container("a", "ip", "-6", "route", "show", "default").stdout
    assert f"via {net['gateway6']}" in routes
    assert host.in_container("a", "cat", "/proc/sys/net/ipv6/conf/eth0/accept_ra").stdout.strip() == "0"
    # TCP over v6 between containers, the client's address kept
    _serve6(host, "srv", "dual")
    srv = host.inspect("srv")["networks"]["dual"]
    assert ask(_in(host, "a"), srv["address6"], 8000) == a["address6"]
    # ps and --format json carry both addresses
    assert a["address6"] in host.tether("ps").stdout
    listed = json.loads(host.tether("ps", "--format", "{{json .}}").stdout.splitlines()[0])
    assert any(n.get("address6") for n in listed["networks"].values())


def test_requested_addresses_and_connect(host: Host) -> None:
    host.tether("network", "create", "--ipv6", "--subnet", "10.231.1.0/24", "--subnet", "fd00:231:1::/64",
                "--gateway", "fd00:231:1::fe", "fixed")
    net = host.json("network", "inspect", "fixed")[0]
    assert (net["subnet6"], net["gateway6"]) == ("fd00:231:1::/64", "fd00:231:1::fe")
    host.tether("run", "-d", "--name", "p", "--net", "fixed", "--ip", "10.231.1.50", "--ip6", "fd00:231:1::50",
                "--", "sleep", "600")
    p = host.inspect("p")["networks"]["fixed"]
    assert (p["address"], p["address6"]) == ("10.231.1.50", "fd00:231:1::50")
    # connect a v4-only container to the dual-stack network with a chosen v6 address
    host.tether("network", "create", "--subnet", "10.231.2.0/24", "only4")
    host.tether("run", "-d", "--name", "q", "--net", "only4", "--", "sleep", "600")
    host.tether("network", "connect", "--ip6", "fd00:231:1::77", "fixed", "q")
    q = host.inspect("q")["networks"]
    assert q["fixed"]["address6"] == "fd00:231:1::77" and q["only4"]["address6"] is None
    assert host.in_container("q", "ping", "-6", "-c1", "-W1", "fd00:231:1::50").returncode == 0
    # disconnect frees both leases: the same v6 address can be asked for again
    host.tether("network", "disconnect", "fixed", "q")
    host.tether("network", "connect", "--ip6", "fd00:231:1::77", "fixed", "q")
    # --ip-range once per family: each family's addresses come from its own range
    host.tether("network", "create", "--ipv6", "--subnet", "10.231.3.0/24", "--subnet", "fd00:231:3::/64",
                "--ip-range", "10.231.3.64/28", "--ip-range", "fd00:231:3::100/124", "ranged")
    host.tether("run", "-d", "--name", "r", "--net", "ranged", "--", "sleep", "600")
    r = host.inspect("r")["networks"]["ranged"]
    assert (r["address"], r["address6"]) == ("10.231.3.64", "fd00:231:3::100")
    assert host.in_container("r", "ping", "-6", "-c1", "-W1", "fd00:231:3::1").returncode == 0


def test_nat66_to_the_internet_and_masquerade_off(world6: World) -> None:
    host = world6.host
    inet = subprocess.Popen(["ip", "netns", "exec", world6.inet, "python3", "-c", TCP_WHO6, "7000"])
    try:
        host.tether("network", "create", "--ipv6", "--subnet", "10.232.1.0/24", "--subnet", "fd00:232:1::/64", "out6")
        host.tether("network", "create", "--ipv6", "--subnet", "10.232.2.0/24", "--subnet", "fd00:232:2::/64",
                    "-o", "masquerade=false", "routed6")
        host.tether("run", "-d", "--name", "c", "--net", "out6", "--", "sleep", "600")
        host.tether("run", "-d", "--name", "d", "--net", "routed6", "--", "sleep", "600")
        # the internet sees the host's v6 address, not the container's ULA
        assert until(lambda: ask(_in(host, "c"), INET6, 7000)) == HOST6
        # without masquerade the packet is routed with its own source: the internet has no way back
        assert ask(_in(host, "d"), INET6, 7000) == ""
    finally:
        inet.kill()


def test_published_ports_over_v6(world6: World) -> None:
    host = world6.host
    host.tether("network", "create", "--ipv6", "--subnet", "10.232.3.0/24", "--subnet", "fd00:232:3::/64", "app6")
    _serve6(host, "web", "app6", "-p", "8080:8000", "-p", "[::1]:9090:8000", "-p", f"[{HOST6}]:9191:8000")
    lan = world6.in_lan
    # -p 8080:80 listens on both families; the LAN client's own address is kept
    assert until(lambda: ask(lan, HOST6, 8080)) == LAN6
    assert until(lambda: ask(lan, world6.host_ip, 8080)) == world6.lan_ip
    assert ask(lan, HOST6, 9191) == LAN6
    # from the host itself, and [::1] reachable from the host only
    assert ask(host.in_host, HOST6, 8080) != ""
    assert ask(host.in_host, "::1", 9090) != ""
    assert ask(lan, HOST6, 9090) == ""
    # hairpin: a container through the host's v6 address, and the server through its own port
    host.tether("run", "-d", "--name", "peer", "--net", "app6", "--", "sleep", "600")
    assert ask(_in(host, "peer"), HOST6, 8080) != ""
    assert ask(_in(host, "web"), HOST6, 8080) != ""
    ports = host.tether("port", "web").stdout
    assert "8000/tcp -> 0.0.0.0:8080" in ports and "8000/tcp -> [::]:8080" in ports and "[::1]:9090" in ports
    # no proxy on the host's addresses: the only listener on 8080 is the daemon's relay on
    # [::1], which kernel NAT cannot serve (tether/firewall/loopback6.py)
    listening = [line.split()[3] for line in host.in_host("ss", "-ltnH").stdout.splitlines()]
    assert [address for address in listening if address.endswith(":8080")] == ["[::1]:8080"]


def test_isolation_internal_and_icc_hold_for_v6(world6: World) -> None:
    host = world6.host
    host.tether("network", "create", "--ipv6", "--subnet", "10.233.1.0/24", "--subnet", "fd00:233:1::/64", "one")
    host.tether("network", "create", "--ipv6", "--subnet", "10.233.2.0/24", "--subnet", "fd00:233:2::/64", "two")
    host.tether("network", "create", "--ipv6", "--internal", "--subnet", "10.233.3.0/24",
                "--subnet", "fd00:233:3::/64", "inner")
    host.tether("network", "create", "--ipv6", "-o", "icc=false", "--subnet", "10.233.4.0/24",
                "--subnet", "fd00:233:4::/64", "noicc")
    one = _serve6(host, "s1", "one")
    _serve6(host, "s3", "inner")
    s4 = _serve6(host, "s4", "noicc")
    host.tether("run", "-d", "--name", "c2", "--net", "two", "--", "sleep", "600")
    host.tether("run", "-d", "--name", "c3", "--net", "inner", "--", "sleep", "600")
    host.tether("run", "-d", "--name", "c4", "--net", "noicc", "--", "sleep", "600")
    inet = subprocess.Popen(["ip", "netns", "exec", world6.inet, "python3", "-c", TCP_WHO6, "7001"])
    try:
        assert until(lambda: ask(_in(host, "s1"), INET6, 7001))  # the way out works...
        assert ask(_in(host, "c2"), one["address6"], 8000) == ""  # ...but not across networks
        assert ask(_in(host, "c3"), INET6, 7001) == ""  # internal: no way out
        s3 = host.inspect("s3")["networks"]["inner"]["address6"]
        assert ask(_in(host, "c3"), s3, 8000) != ""  # but its containers talk
        assert ask(_in(host, "c4"), s4["address6"], 8000) == ""  # icc=false
        assert ask(host.in_host, one["address6"], 8000) == one["gateway6"]  # the host, from its bridge
    finally:
        inet.kill()
    # the admin's v6 rules go in the ip6 table's user chain, and see container traffic
    table = json.loads(host.in_host("nft", "-j", "list", "chain", "ip6", "tether", "user").stdout)
    assert any("chain" in item for item in table["nftables"])


def test_names_answer_aaaa_and_ptr_locally(world6: World) -> None:
    host = world6.host
    host.tether("network", "create", "--ipv6", "--subnet", "10.234.1.0/24", "--subnet", "fd00:234:1::/64", "named")
    host.tether("run", "-d", "--name", "db", "--net", "named", "--network-alias", "store", "--", "sleep", "600")
    host.tether("run", "-d", "--name", "app", "--net", "named", "--", "sleep", "600")
    db = host.inspect("db")["networks"]["named"]

    def app(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return host.tether("exec", "app", "--", *cmd, check=check)  # its own /etc/resolv.conf: 127.0.0.11

    assert app("python3", "-c", RESOLVE6, "db").stdout.split() == [db["address6"]]
    assert app("python3", "-c", RESOLVE6, "store").stdout.split() == [db["address6"]]
    assert app("python3", "-c", RESOLVE, "db").stdout.strip() == db["address"]
    # PTR of container addresses of both families, answered at once by the resolver itself
    # (the upstream is the internet's port 53, where nothing answers)
    for address in (db["address"], db["address6"]):
        name, seconds = app("python3", "-c", REVERSE, address).stdout.split()[-2:]
        assert name.split(".")[0] == "db" and float(seconds) < 0.5
    # an unknown address of the network: NXDOMAIN at once, never forwarded
    out = app("python3", "-c", REVERSE, "fd00:234:1::9999").stdout.split()
    assert out[0] == "FAIL" and float(out[-1]) < 0.5


@pytest.mark.parametrize(
    "args,message",
    [
        (["network", "create", "--ipv6", "--subnet", "fd00:240::/47", "x"], "too large"),
        (["network", "create", "--ipv6", "--subnet", "fd00:240::/127", "x"], "too small"),
        (["network", "create", "--ipv6", "--subnet", "fd00:240::/129", "x"], "invalid IPv6 subnet"),
        (["network", "create", "--ipv6", "--subnet", "fd00:240::/64", "--subnet", "fd00:241::/64", "x"], "given twice"),
        (["network", "create", "--subnet", "fd00:240::/64", "x"], "add --ipv6"),
        (["network", "create", "--ipv6", "--subnet", "fd00:235:1::/80", "x"], "overlaps network 'base'"),
        (["run", "--net", "base", "--ip6", "fd00:999::5", "--", "true"], "outside network"),
        (["run", "--net", "four", "--ip6", "fd00:235:1::5", "--", "true"], "no IPv6 subnet"),
        (["run", "--net", "four", "-p", "[::1]:8080:80", "--", "true"], "no IPv6 subnet"),
        (["run", "--net", "base", "--ip6", "10.235.1.5", "--", "true"], "IPv6 address"),
        (["run", "--net", "base", "--ip", "fd00:235:1::5", "--", "true"], "IPv4 address"),
        (["network", "connect", "--ip6", "fd00:235:1::1", "base", "c"], "gateway"),
        (["network", "create", "--ip-range", "fd00:240::/120", "x"], "add --ipv6"),
        (["network", "create", "--ipv6", "--subnet", "10.240.0.0/24", "--ip-range", "fd00:240::/120", "x"],
         "needs the IPv6 --subnet"),
        (["network", "create", "--ipv6", "--subnet", "10.240.0.0/24", "--subnet", "fd00:240::/64",
          "--ip-range", "fd00:241::/120", "x"], "not inside the subnet"),
    ],
)
def test_bad_v6_input_changes_nothing(host: Host, args: list[str], message: str) -> None:
    host.tether("network", "create", "--ipv6", "--subnet", "10.235.1.0/24", "--subnet", "fd00:235:1::/64", "base")
    host.tether("network", "create", "--subnet", "10.235.2.0/24", "four")
    host.tether("run", "-d", "--name", "c", "--net", "four", "--", "sleep", "600")
    before = host.snapshot()
    r = host.tether(*args, check=False)
    assert r.returncode != 0
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert host.snapshot() == before


def test_restart_keeps_v6_and_removal_leaks_nothing(host: Host) -> None:
    host.tether("network", "create", "--ipv6", "--subnet", "10.236.1.0/24", "--subnet", "fd00:236:1::/64", "keep")
    host.tether("run", "-d", "--name", "k1", "--net", "keep", "--", "sleep", "600")
    host.tether("run", "-d", "--name", "k2", "--net", "keep", "--", "sleep", "600")
    k2 = host.inspect("k2")["networks"]["keep"]["address6"]
    host.kill_daemon(signal.SIGKILL)
    host.start_daemon()
    assert host.inspect("k2")["networks"]["keep"]["address6"] == k2
    assert host.in_container("k1", "ping", "-6", "-c1", "-W1", k2).returncode == 0
    # a v6 address taken away behind tether's back is put back by reconcile at the next start
    host.in_container("k2", "ip", "-6", "addr", "del", f"{k2}/64", "dev", "eth0")
    host.kill_daemon(signal.SIGKILL)
    host.start_daemon()
    assert until(lambda: host.in_container("k1", "ping", "-6", "-c1", "-W1", k2, check=False).returncode == 0)
    host.tether("rm", "-f", "k1", "k2")
    # every lease of both families is free again: the same addresses can be handed out
    host.tether("run", "-d", "--name", "k3", "--net", "keep", "--ip6", k2, "--", "sleep", "600")


def test_daemon_ipv6_makes_the_default_network_dual_stack(bare_host: Host) -> None:
    bare_host.daemon_args = ["--ipv6"]
    bare_host.start_daemon()
    bare_host.tether("run", "-d", "--name", "d1", "--", "sleep", "600")
    bare_host.tether("run", "-d", "--name", "d2", "--", "sleep", "600")
    net = bare_host.json("network", "inspect", "bridge")[0]
    assert net["subnet6"] and net["gateway6"]
    d2 = bare_host.inspect("d2")["networks"]["bridge"]
    assert d2["address6"] and bare_host.in_container("d1", "ping", "-6", "-c1", "-W1", d2["address6"]).returncode == 0
