"""End to end: the four single-host modes, driven through the CLI, checked with real packets."""

from __future__ import annotations

import os
import signal
import time

from conftest import Host, sh

PY_GET = "import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=5).status)"


def wait_http(host: Host, container: str, url: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if host.in_container(container, "python3", "-c", PY_GET, url, check=False).returncode == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


def test_bridge_network_containers_talk(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.210.0.0/24", "appnet")
    host.tether("run", "-d", "--name", "web", "--net", "appnet", "--", "python3", "-m", "http.server", "8000")
    web = host.inspect("web")
    assert web["networks"]["appnet"]["address"] == "10.210.0.2"
    wait_http(host, "web", "http://10.210.0.2:8000/")
    # a second container fetches from the first over the bridge
    r = host.tether("run", "--rm", "--net", "appnet", "--", "python3", "-c", PY_GET, "http://10.210.0.2:8000/")
    assert r.stdout.strip() == "200"
    # interface, address, MAC and default route as promised
    addr = host.in_container("web", "ip", "-o", "-4", "addr", "show", "eth0").stdout
    assert "10.210.0.2/24" in addr
    link = host.in_container("web", "ip", "-o", "link", "show", "eth0").stdout
    assert web["networks"]["appnet"]["mac"] in link
    route = host.in_container("web", "ip", "route", "show", "default").stdout
    assert "via 10.210.0.1 dev eth0" in route
    # the host reaches the container on its address (no published port needed)
    assert host.in_host("ping", "-c1", "-W2", "10.210.0.2", check=False).returncode == 0
    # the --rm container is gone, its address free again
    names = [c["name"] for c in host.json("ps", "-a", "--format", "json")]
    assert names == ["web"]


def test_none_has_only_lo(host: Host) -> None:
    r = host.tether("run", "--rm", "--net", "none", "--", "ip", "-o", "link")
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and ": lo:" in lines[0] and "UP" in lines[0]


def test_host_mode_sees_host_interfaces(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.211.0.0/24", "n1")
    r = host.tether("run", "--rm", "--net", "host", "--", "ip", "-o", "-4", "addr")
    assert "10.211.0.1/24" in r.stdout  # the bridge of n1 lives in this host's namespace
    # still its own UTS and PID namespace
    r = host.tether("run", "--rm", "--net", "host", "--name", "hh", "--", "sh", "-c", "hostname; echo $$")
    assert r.stdout.split() == ["hh", "1"]


def test_container_mode_shares_netns_only(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.212.0.0/24", "appnet")
    host.tether("run", "-d", "--name", "web", "--net", "appnet", "--", "python3", "-m", "http.server",
                "8000", "--bind", "127.0.0.1")
    wait_http(host, "web", "http://127.0.0.1:8000/")
    host.tether("run", "-d", "--name", "side", "--net", "container:web", "--", "sleep", "600")
    side = host.inspect("side")
    web = host.inspect("web")
    assert side["netns_path"] == web["netns_path"]
    assert side["networks"]["appnet"]["address"] == "10.212.0.2"
    # side reaches web's loopback-only server
    r = host.tether("exec", "side", "--", "python3", "-c", PY_GET, "http://127.0.0.1:8000/")
    assert r.stdout.strip() == "200"
    # same addresses, different hostname and PID namespace
    r = host.tether("exec", "side", "--", "sh", "-c", "hostname; ip -o -4 addr show eth0")
    assert r.stdout.startswith("side\n") and "10.212.0.2/24" in r.stdout
    ps = host.tether("exec", "side", "--", "ps", "-e", "-o", "comm=").stdout.split()
    assert "python3" not in ps and "sleep" in ps
    # removing web while side runs is refused, with -f it works
    host.tether("stop", "-t", "0", "web")
    r = host.tether("rm", "web", check=False)
    assert r.returncode != 0 and "side" in r.stderr and "Traceback" not in r.stderr
    host.tether("rm", "-f", "web", "side")
    assert host.json("ps", "-a", "--format", "json") == []


def test_connect_disconnect(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.213.0.0/24", "a")
    host.tether("network", "create", "--subnet", "10.214.0.0/24", "b")
    host.tether("run", "-d", "--name", "x", "--net", "a", "--", "sleep", "600")
    host.tether("run", "-d", "--name", "y", "--net", "b", "--", "sleep", "600")
    host.tether("network", "connect", "--ip", "10.214.0.50", "b", "x")
    x = host.inspect("x")
    assert x["networks"]["b"] == {**x["networks"]["b"], "ifname": "eth1", "address": "10.214.0.50"}
    y_addr = host.inspect("y")["networks"]["b"]["address"]
    assert host.in_container("x", "ping", "-c1", "-W2", "-I", "eth1", y_addr, check=False).returncode == 0
    # default route stays on the first network
    assert "dev eth0" in host.in_container("x", "ip", "route", "show", "default").stdout
    host.tether("network", "disconnect", "b", "x")
    assert "eth1" not in host.in_container("x", "ip", "-o", "link").stdout
    assert "x" not in host.json("network", "inspect", "b")[0]["containers"]
    # the address is free again
    host.tether("network", "connect", "--ip", "10.214.0.50", "b", "x")
    # a none container gets a default route from its first network
    host.tether("run", "-d", "--name", "n", "--net", "none", "--", "sleep", "600")
    host.tether("network", "connect", "a", "n")
    assert "via 10.213.0.1 dev eth0" in host.in_container("n", "ip", "route", "show", "default").stdout


def test_ps_inspect_ls_and_ip_netns(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.215.0.0/24", "--ip-range", "10.215.0.128/25", "appnet")
    host.tether("run", "-d", "--name", "web", "--net", "appnet", "--hostname", "www", "--", "sleep", "600")
    ps = host.json("ps", "--format", "json")
    assert [c["name"] for c in ps] == ["web"] and ps[0]["state"] == "running"
    info = host.inspect("web")
    assert info["pid"] > 0 and info["netns_path"].endswith(host.prefix + "web")
    assert info["networks"]["appnet"]["address"] == "10.215.0.128"
    assert host.tether("exec", "web", "--", "hostname").stdout.strip() == "www"
    assert host.prefix + "web" in sh("ip", "netns", "list").stdout
    nets = {n["name"]: n for n in host.json("network", "ls", "--format", "json")}
    assert nets["appnet"]["containers"] == 1 and nets["appnet"]["subnet"] == "10.215.0.0/24"
    net = host.json("network", "inspect", "appnet")[0]
    assert net["containers"]["web"]["address"] == "10.215.0.128/24"
    table = host.tether("ps").stdout
    assert "web" in table and "10.215.0.128" in table
    # stop, then ps -a shows the exit
    host.tether("stop", "-t", "1", "web")
    assert host.json("ps", "--format", "json") == []
    assert host.json("ps", "-a", "--format", "json")[0]["state"] == "exited"
    host.tether("rm", "web")
    host.tether("network", "rm", "appnet")
    assert host.prefix + "web" not in sh("ip", "netns", "list").stdout
    assert "appnet" not in host.tether("network", "ls").stdout


def test_foreground_run_stdio_exit_code_and_namespaces(host: Host) -> None:
    r = host.tether("run", "--rm", "--net", "none", "--", "sh", "-c", "exit 7", check=False)
    assert r.returncode == 7
    r = host.tether("run", "--rm", "--net", "none", "--", "cat", input="hello through stdin\n")
    assert r.stdout == "hello through stdin\n"
    r = host.tether("run", "--rm", "--name", "pidns", "--net", "none", "--", "sh", "-c", "echo $$; hostname; ps -e -o pid=")
    lines = r.stdout.split()
    assert lines[0] == "1" and lines[1] == "pidns"
    assert len(lines[2:]) <= 2  # sh and ps only
    # without --rm the container stays, exited, with its code
    host.tether("run", "--name", "kept", "--net", "none", "--", "sh", "-c", "exit 3", check=False)
    kept = host.inspect("kept")
    assert kept["state"] == "exited" and kept["exit_code"] == 3


def test_logs_and_detached_rm(host: Host) -> None:
    host.tether("run", "-d", "--name", "talker", "--net", "none", "--", "sh", "-c", "echo out; echo err >&2; sleep 600")
    deadline = time.monotonic() + 5
    while "err" not in host.tether("logs", "talker").stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    assert host.tether("logs", "talker").stdout.split() == ["out", "err"]
    host.tether("run", "-d", "--rm", "--name", "brief", "--", "sleep", "0.2")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if "brief" not in [c["name"] for c in host.json("ps", "-a", "--format", "json")]:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("--rm container was not removed after it exited")
    assert not any(n.endswith("brief") for n in sh("ip", "netns", "list").stdout.split())


def test_default_bridge_network_avoids_host_routes(host: Host) -> None:
    # the host already uses 172.17.0.0/16 (a route on a veth in its namespace): the default
    # network must pick something else, as Docker does
    host.in_host("ip", "link", "add", "tup0", "type", "veth", "peer", "name", "tup1")
    host.in_host("ip", "addr", "add", "172.17.5.1/16", "dev", "tup0")
    host.in_host("ip", "link", "set", "tup0", "up")
    host.tether("run", "-d", "--name", "d1", "--", "sleep", "600")
    nets = {n["name"]: n for n in host.json("network", "ls", "--format", "json")}
    assert nets["bridge"]["bridge"] == "tether0"
    assert nets["bridge"]["subnet"] == "172.18.0.0/16"
    addr = host.inspect("d1")["networks"]["bridge"]["address"]
    assert host.in_host("ping", "-c1", "-W2", addr, check=False).returncode == 0
    r = host.tether("network", "rm", "bridge", check=False)
    assert r.returncode != 0 and "predefined" in r.stderr


def test_cli_starts_a_daemon_when_none_answers(bare_host: Host) -> None:
    env = {"TETHER_NO_AUTOSTART": "", "TETHER_NETNS_PREFIX": bare_host.prefix}
    r = bare_host.tether("network", "create", "--subnet", "10.216.0.0/24", "auto", env=env)
    assert r.returncode == 0
    assert bare_host.tether("network", "ls", "--format", "json", env=env).stdout.count('"auto"') == 1
    # exactly one daemon was started, and it serves this socket; stop it
    pids = sh("pgrep", "-f", f"tether.cli daemon --state-dir {bare_host.state_dir}").stdout.split()
    assert len(pids) == 1
    bare_host.tether("network", "rm", "auto", env=env)
    os.kill(int(pids[0]), signal.SIGTERM)
