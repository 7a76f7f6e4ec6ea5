"""Bridge networks meet the world: outbound NAT, published ports, isolation, --internal,
icc=false, embedded DNS and a firewall that heals. Real packets between namespaces the
test builds (see conftest.World); nothing else is ever addressed."""

from __future__ import annotations

import signal
import subprocess
import time

from conftest import Host, World
from probes import FAKE_DNS, RESOLVE, TCP_WHO, UDP_WHO, ask, until


def serve(host: Host, name: str, net: str, *extra: str, port: int = 8000) -> str:
    host.tether("run", "-d", "--name", name, "--net", net, *extra, "--", "python3", "-c", TCP_WHO, str(port))
    addr = host.inspect(name)["networks"][net]["address"] if net not in ("none", "host") else ""
    assert until(lambda: ask(lambda *c, **k: host.in_container(name, *c, **k), "127.0.0.1", port))
    return addr


def test_outbound_nat_and_masquerade_off(world: World) -> None:
    host = world.host
    inet = subprocess.Popen(["ip", "netns", "exec", world.inet, "python3", "-c", TCP_WHO, "7000"])
    try:
        host.tether("network", "create", "--subnet", "10.230.1.0/24", "out")
        host.tether("network", "create", "--subnet", "10.230.2.0/24", "-o", "masquerade=false", "nomasq")
        host.tether("run", "-d", "--name", "c", "--net", "out", "--", "sleep", "600")
        host.tether("run", "-d", "--name", "d", "--net", "nomasq", "--", "sleep", "600")
        runner = lambda *c, **k: host.in_container("c", *c, **k)  # noqa: E731
        # the internet sees the host's address, not the container's
        assert until(lambda: ask(runner, world.inet_ip, 7000)) == world.host_ip
        # without masquerade the internet has no way back to 10.230.2.0/24
        assert ask(lambda *c, **k: host.in_container("d", *c, **k), world.inet_ip, 7000) == ""
    finally:
        inet.kill()


def test_published_ports_from_lan_host_loopback_and_hairpin(world: World) -> None:
    host = world.host
    host.tether("network", "create", "--subnet", "10.230.3.0/24", "appnet")
    host.tether("run", "-d", "--name", "web", "--net", "appnet", "-p", "8080:8000",
                "-p", "127.0.0.1:9090:8000", "--", "python3", "-c", TCP_WHO, "8000")
    host.tether("run", "-d", "--name", "dns", "--net", "appnet", "-p", "5353:53/udp",
                "--", "python3", "-c", UDP_WHO, "53")
    lan = world.in_lan
    # from another machine: reached, and the server sees the LAN machine's own address
    assert until(lambda: ask(lan, world.host_ip, 8080)) == world.lan_ip
    assert until(lambda: ask(lan, world.host_ip, 5353, udp=True)) == world.lan_ip
    # from the host itself, on its LAN address and on 127.0.0.1, with no proxy process
    assert ask(host.in_host, world.host_ip, 8080) == world.host_ip or ask(host.in_host, world.host_ip, 8080)
    assert ask(host.in_host, "127.0.0.1", 8080) != ""
    assert ask(host.in_host, "127.0.0.1", 9090) != ""
    # a port bound to 127.0.0.1 is not reachable from the LAN
    assert ask(lan, world.host_ip, 9090) == ""
    # hairpin: a container on the same network through the host's address
    host.tether("run", "-d", "--name", "peer", "--net", "appnet", "--", "sleep", "600")
    assert ask(lambda *c, **k: host.in_container("peer", *c, **k), world.host_ip, 8080) != ""
    # the web container itself, through its own published port
    assert ask(lambda *c, **k: host.in_container("web", *c, **k), world.host_ip, 8080) != ""
    # no proxy: nothing in the host listens on 8080
    assert ":8080 " not in host.in_host("ss", "-ltnH").stdout
    # rule count does not grow with published ports
    before = _rules(host)
    host.tether("run", "-d", "--name", "many", "--net", "appnet", "-p", "20000-20099:20000-20099",
                "--", "sleep", "600")
    assert _rules(host) == before
    host.tether("rm", "-f", "many")
    # removing a container removes exactly its map elements
    host.tether("rm", "-f", "web")
    assert "8080" not in _maps(host) and "5353" in _maps(host)
    assert ask(lan, world.host_ip, 8080) == ""


def _rules(host: Host) -> int:
    out = host.in_host("nft", "-a", "list", "table", "ip", "tether").stdout
    return sum(1 for line in out.splitlines() if "# handle" in line and not line.strip().startswith(("chain", "table", "set", "map")))


def _maps(host: Host) -> str:
    return host.in_host("nft", "list", "table", "ip", "tether").stdout


def test_isolation_internal_and_icc(world: World) -> None:
    host = world.host
    host.tether("network", "create", "--subnet", "10.230.4.0/24", "n1")
    host.tether("network", "create", "--subnet", "10.230.5.0/24", "n2")
    host.tether("network", "create", "--subnet", "10.230.6.0/24", "--internal", "sealed")
    host.tether("network", "create", "--subnet", "10.230.7.0/24", "-o", "icc=false", "quiet")
    a = serve(host, "a", "n1")
    b = serve(host, "b", "n2")
    host.tether("run", "-d", "--name", "both", "--net", "n1", "--", "sleep", "600")
    host.tether("network", "connect", "n2", "both")
    runner = lambda n: (lambda *c, **k: host.in_container(n, *c, **k))  # noqa: E731
    # different networks cannot reach each other
    assert ask(runner("a"), b, 8000) == "" and ask(runner("b"), a, 8000) == ""
    # a container on both reaches both
    assert ask(runner("both"), a, 8000) and ask(runner("both"), b, 8000)
    # internal: no way out, but members talk
    s1 = serve(host, "s1", "sealed")
    host.tether("run", "-d", "--name", "s2", "--net", "sealed", "--", "sleep", "600")
    inet = subprocess.Popen(["ip", "netns", "exec", world.inet, "python3", "-c", TCP_WHO, "7000"])
    try:
        time.sleep(0.3)
        assert ask(runner("s2"), s1, 8000) != ""
        assert ask(runner("s2"), world.inet_ip, 7000) == ""
        assert ask(runner("a"), world.inet_ip, 7000) == world.host_ip
        assert "default" not in host.in_container("s2", "ip", "route").stdout
    finally:
        inet.kill()
    # icc=false: members of one network do not reach each other, but the host reaches them
    q1 = serve(host, "q1", "quiet")
    host.tether("run", "-d", "--name", "q2", "--net", "quiet", "--", "sleep", "600")
    assert ask(runner("q2"), q1, 8000) == ""
    assert ask(host.in_host, q1, 8000) != ""


def test_embedded_dns_names_aliases_upstream(world: World) -> None:
    host = world.host
    upstream = subprocess.Popen(["ip", "netns", "exec", world.inet, "python3", "-c", FAKE_DNS])
    try:
        host.tether("network", "create", "--subnet", "10.230.8.0/24", "appnet")
        host.tether("network", "create", "--subnet", "10.230.9.0/24", "other")
        host.tether("run", "-d", "--name", "db", "--net", "appnet", "--network-alias", "database",
                    "--", "sleep", "600")
        db = host.inspect("db")["networks"]["appnet"]["address"]
        host.tether("run", "-d", "--name", "app", "--net", "appnet", "--", "sleep", "600")
        host.tether("run", "-d", "--name", "stranger", "--net", "other", "--", "sleep", "600")
        res = lambda n, name: host.tether("exec", n, "--", "python3", "-c", RESOLVE, name, check=False).stdout.strip()  # noqa: E731
        assert res("app", "db") == db
        assert res("app", "database") == db
        assert res("app", "db.appnet") == db
        # a name resolves the moment `run -d` returns
        host.tether("run", "-d", "--name", "late", "--net", "appnet", "--", "sleep", "600")
        assert res("app", "late") == host.inspect("late")["networks"]["appnet"]["address"]
        # other networks' names are not visible (the name goes upstream, which answers
        # everything with 203.0.113.99)
        assert res("stranger", "db") == "203.0.113.99"
        # other names go upstream
        assert res("app", "www.example.test") == "203.0.113.99"
        # resolv.conf inside points at the embedded resolver
        assert "127.0.0.11" in host.tether("exec", "app", "--", "cat", "/etc/resolv.conf").stdout
        # the default bridge network has no names
        host.tether("run", "-d", "--name", "plain", "--", "sleep", "600")
        host.tether("run", "-d", "--name", "plain2", "--", "sleep", "600")
        assert res("plain2", "plain") == "203.0.113.99"
        # removal: the name goes away at once
        host.tether("rm", "-f", "late")
        assert res("app", "late") == "203.0.113.99"
    finally:
        upstream.kill()


def test_firewall_heals_and_restart_restores(world: World) -> None:
    host = world.host
    host.tether("network", "create", "--subnet", "10.230.10.0/24", "appnet")
    host.tether("run", "-d", "--name", "web", "--net", "appnet", "-p", "8080:8000", "--",
                "python3", "-c", TCP_WHO, "8000")
    assert until(lambda: ask(world.in_lan, world.host_ip, 8080)) == world.lan_ip
    host.in_host("nft", "flush", "ruleset")
    t0 = time.monotonic()
    assert until(lambda: ask(world.in_lan, world.host_ip, 8080), timeout=5, every=0.05) == world.lan_ip
    assert time.monotonic() - t0 < 2.5  # restored within 1 s (plus the probe's own time)
    host.in_host("nft", "delete", "table", "ip", "tether")
    assert until(lambda: ask(world.in_lan, world.host_ip, 8080), timeout=5, every=0.05) == world.lan_ip
    # daemon down, ruleset gone: the restart restores every rule
    host.kill_daemon(signal.SIGKILL)
    host.in_host("nft", "flush", "ruleset")
    assert ask(world.in_lan, world.host_ip, 8080) == ""
    host.start_daemon()
    assert until(lambda: ask(world.in_lan, world.host_ip, 8080)) == world.lan_ip


def test_port_conflicts_and_bad_publish(world: World) -> None:
    host = world.host
    host.tether("network", "create", "--subnet", "10.230.11.0/24", "appnet")
    host.tether("network", "create", "--subnet", "10.230.12.0/24", "--internal", "sealed")
    host.tether("run", "-d", "--name", "web", "--net", "appnet", "-p", "8080:8000", "--", "sleep", "600")
    holder = subprocess.Popen([*host.enter(), "python3", "-c", TCP_WHO, "7777"])
    try:
        assert until(lambda: ":7777 " in host.in_host("ss", "-ltnH").stdout)
        before = host.snapshot()
        for args, needle in [
            (["-p", "8080:9000"], "web"),
            (["-p", "7777:9000"], "python3"),
            (["-p", "192.0.2.77:80:80"], "not an address of this host"),
            (["-p", "70000:80"], "out of range"),
            (["-p", "80-81:80-82"], "same length"),
            (["-p", "80:80/sctp"], "unknown protocol"),
            (["--net", "none", "-p", "80:80"], "-p"),
            (["--net", "host", "-p", "80:80"], "-p"),
            (["--net", "container:web", "-p", "80:80"], "-p"),
            (["--net", "sealed", "-p", "80:80"], "internal"),
            (["--network-alias", "web"], "web"),
        ]:
            net = [] if "--net" in args else ["--net", "appnet"]
            r = host.tether("run", "-d", *net, *args, "--", "sleep", "1", check=False)
            assert r.returncode != 0, args
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, (args, r.stderr)
        assert host.snapshot() == before
    finally:
        holder.kill()

