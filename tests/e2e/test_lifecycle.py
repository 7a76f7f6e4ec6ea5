"""A container's life after ``run``, against a real daemon with real packets: every verb
takes a name, a full ID or a unique ID prefix; ``stop`` (or an exit of its own) frees the
address, the veth, the published port and the names, and ``start`` brings them back;
restart policies restart a crashing container with back-off and outlive the daemon;
a joiner whose namespace owner was removed says so. Bad input is one line and changes
nothing."""

from __future__ import annotations

import itertools
import os
import re
import signal
import time
from collections.abc import Callable
from typing import Any

from conftest import Host
from probes import RESOLVE, TCP_ASK

# a TCP server that answers every connection with its own name (argv[1]) on port argv[2]
NAMED = (
    "import socket,sys\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', int(sys.argv[2]))); s.listen(16)\n"
    "while True:\n"
    "    c, a = s.accept(); c.sendall(sys.argv[1].encode()); c.close()\n"
)


def until(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def one_line_error(r: Any, *needles: str) -> str:
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def state(host: Host, name: str) -> dict[str, Any]:
    return host.inspect(name)


def ask_host_port(host: Host, port: int) -> str:
    r = host.in_host("python3", "-c", TCP_ASK, "127.0.0.1", str(port), check=False)
    return r.stdout.strip() if r.returncode == 0 else ""


def ping_from(host: Host, name: str, dst: str) -> bool:
    return host.in_container(name, "ping", "-c1", "-W2", dst, check=False).returncode == 0


def host_links(host: Host) -> set[str]:
    out = host.in_host("ip", "-o", "link").stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


# ---------------------------------------------------------------------------- IDs
def test_every_verb_takes_the_id_that_ps_shows_a_full_id_or_a_prefix(host: Host) -> None:
    net_id = host.tether("network", "create", "--subnet", "10.241.0.0/24", "appnet").stdout.strip()
    other_id = host.tether("network", "create", "--subnet", "10.241.1.0/24", "other").stdout.strip()
    # run --net <network ID prefix>; the record names the network
    web_id = host.tether(
        "run", "-d", "--name", "web", "--net", net_id[:12], "--", "sh", "-c", "echo hello; sleep 600"
    ).stdout.strip()
    ps = host.json("ps", "--format", "json")
    assert [(c["id"], c["name"], c["net_mode"]) for c in ps] == [(web_id, "web", "appnet")]
    shown = web_id[:12]  # what `ps` shows in its CONTAINER ID column (on a terminal)
    assert shown in host.tether("ps").stdout
    assert host.inspect(shown)["name"] == "web"
    assert host.json("inspect", web_id)[0]["name"] == "web"
    until(lambda: "hello" in host.tether("logs", web_id[:6]).stdout, "the log")
    assert host.tether("exec", web_id[:8], "--", "hostname").stdout.strip() == "web"
    assert host.json("network", "inspect", net_id[:6])[0]["name"] == "appnet"
    host.tether("network", "connect", other_id[:12], shown)
    assert set(host.inspect("web")["networks"]) == {"appnet", "other"}
    assert ping_from(host, "web", "10.241.1.1")
    host.tether("network", "disconnect", other_id, web_id)
    assert set(host.inspect("web")["networks"]) == {"appnet"}
    side = host.tether("run", "-d", "--name", "side", "--net", f"container:{shown}", "--", "sleep", "600").stdout
    assert host.inspect(side.strip()[:12])["net_mode"] == "container:web"
    host.tether("rm", "-f", "side")
    host.tether("stop", "-t", "0", web_id)
    assert host.inspect(shown)["state"] == "exited"
    host.tether("start", shown)
    host.tether("restart", "-t", "0", web_id[:5])
    assert host.inspect("web")["state"] == "running"
    # the first line: `tether rm <the ID that ps shows>`
    assert host.tether("rm", "-f", shown).stdout.strip() == shown
    assert host.json("ps", "-a", "--format", "json") == []
    host.tether("network", "rm", other_id[:12], net_id)
    assert [n["name"] for n in host.json("network", "ls", "--format", "json")] in ([], ["bridge"])


def test_an_ambiguous_prefix_is_one_line_naming_the_candidates_and_changes_nothing(host: Host) -> None:
    by_first: dict[str, str] = {}
    pair: tuple[str, str] | None = None
    while pair is None:  # containers until two IDs share their first character (at most 17)
        name = f"c{len(by_first)}"
        cid = host.tether("run", "-d", "--name", name, "--net", "none", "--", "sleep", "600").stdout.strip()
        if cid[0] in by_first:
            pair = (by_first[cid[0]], name)
        by_first[cid[0]] = name
        prefix = cid[0]
    before = host.snapshot()
    for args in (["rm", "-f", prefix], ["stop", prefix], ["start", prefix], ["inspect", prefix],
                 ["logs", prefix], ["network", "connect", "bridge", prefix],
                 ["run", "-d", "--net", f"container:{prefix}", "--", "true"]):
        r = host.tether(*args, check=False)
        one_line_error(r, f"container ID prefix {prefix!r} is ambiguous", pair[0], pair[1], "give more of the ID")
    assert host.snapshot() == before
    # the same for networks
    nets: dict[str, str] = {}
    while True:
        name = f"n{len(nets)}"
        nid = host.tether("network", "create", "--subnet", f"10.244.{len(nets)}.0/24", name).stdout.strip()
        if nid[0] in nets:
            break
        nets[nid[0]] = name
    before = host.snapshot()
    for args in (["network", "rm", nid[0]], ["network", "inspect", nid[0]], ["run", "-d", "--net", nid[0], "--", "true"]):
        one_line_error(host.tether(*args, check=False), f"network ID prefix {nid[0]!r} is ambiguous", name, nets[nid[0]])
    assert host.snapshot() == before


def test_an_unnamed_container_gets_a_docker_like_name(host: Host) -> None:
    cid = host.tether("run", "-d", "--net", "none", "--", "sleep", "600").stdout.strip()
    info = host.inspect(cid[:12])
    assert re.fullmatch(r"[a-z]+_[a-z]+\d*", info["name"]), info["name"]
    assert host.tether("exec", info["name"], "--", "hostname").stdout.strip() == cid[:12]
    assert host.prefix + info["name"] in os.listdir("/var/run/netns")


# ---------------------------------------------------------------------------- stop and start
def test_stop_frees_address_port_and_names_and_start_brings_them_back(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.242.0.0/24", "appnet")
    host.tether("run", "-d", "--name", "a", "--net", "appnet", "--ip", "10.242.0.50", "-p", "8080:8000",
                "--network-alias", "alpha", "--", "python3", "-c", NAMED, "a", "8000")
    host.tether("run", "-d", "--name", "probe", "--net", "appnet", "--", "sleep", "600")
    until(lambda: ask_host_port(host, 8080) == "a", "a's published port")
    a_veth = host.inspect("a")["networks"]["appnet"]["host_ifname"]
    assert ping_from(host, "a", "10.242.0.1")
    resolve = ["exec", "probe", "--", "python3", "-c", RESOLVE, "alpha"]
    assert host.tether(*resolve).stdout.strip() == "10.242.0.50"

    host.tether("stop", "-t", "1", "a")
    info = host.inspect("a")
    assert info["state"] == "exited" and info["networks"] == {} and info["ports"] == []
    assert info["attachments"] == [{"network": "appnet", "ip": "10.242.0.50", "aliases": ["alpha"]}]
    assert a_veth not in host_links(host)  # the veth is gone, the namespace stays with only lo
    assert host.prefix + "a" in os.listdir("/var/run/netns")
    links = host.in_container("a", "ip", "-o", "link").stdout.splitlines()
    assert [line.split(":")[1].strip() for line in links] == ["lo"]
    assert host.tether(*resolve, check=False).stdout.strip().startswith("FAIL")  # its name is gone
    assert ask_host_port(host, 8080) == ""
    # the address and the port are free: b takes both, and gets the packets
    host.tether("run", "-d", "--name", "b", "--net", "appnet", "--ip", "10.242.0.50", "-p", "8080:8000",
                "--", "python3", "-c", NAMED, "b", "8000")
    until(lambda: ask_host_port(host, 8080) == "b", "b on the freed port")
    assert ping_from(host, "b", "10.242.0.1")

    before = host.snapshot()
    r = host.tether("start", "a", check=False)
    one_line_error(r, "address 10.242.0.50 on network 'appnet' is in use by container 'b'")
    assert host.snapshot() == before

    host.tether("rm", "-f", "b")
    host.tether("start", "a")
    info = host.inspect("a")
    assert info["state"] == "running" and info["networks"]["appnet"]["address"] == "10.242.0.50"
    # its static address reaches the gateway again, the port and the name are back
    assert ping_from(host, "a", "10.242.0.1")
    src = host.in_container("a", "ip", "-o", "-4", "route", "get", "10.242.0.1").stdout
    assert "src 10.242.0.50" in src
    until(lambda: ask_host_port(host, 8080) == "a", "a's port again")
    assert host.tether(*resolve).stdout.strip() == "10.242.0.50"


def test_an_exit_of_its_own_frees_the_address_without_any_request(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.243.0.0/24", "appnet")
    host.tether("run", "-d", "--name", "brief", "--net", "appnet", "--ip", "10.243.0.9", "--", "sleep", "3")
    veth = host.inspect("brief")["networks"]["appnet"]["host_ifname"]
    assert veth in host_links(host)
    # no tether command until the veth is gone: the daemon's monitor acts on the exit itself
    until(lambda: veth not in host_links(host), "the veth of the exited container to go")
    host.tether("run", "-d", "--name", "next", "--net", "appnet", "--ip", "10.243.0.9", "--", "sleep", "600")
    assert ping_from(host, "next", "10.243.0.1")
    assert host.inspect("brief")["state"] == "exited"


def test_start_of_a_running_container_is_one_line_and_changes_nothing(host: Host) -> None:
    host.tether("run", "-d", "--name", "web", "--net", "none", "--", "sleep", "600")
    before = host.snapshot()
    one_line_error(host.tether("start", "web", check=False), "container 'web' is already running")
    assert host.snapshot() == before


def test_restart_gives_a_new_process_on_the_same_network(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.245.0.0/24", "appnet")
    host.tether("run", "-d", "--name", "web", "--net", "appnet", "--ip", "10.245.0.5", "--", "sleep", "600")
    pid = host.inspect("web")["pid"]
    assert host.tether("restart", "-t", "1", "web").stdout.strip() == "web"
    info = host.inspect("web")
    assert info["state"] == "running" and info["pid"] != pid
    assert ping_from(host, "web", "10.245.0.1")


# ---------------------------------------------------------------------------- restart policies
def test_restart_policies_restart_a_crashing_container_with_backoff(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.246.0.0/24", "appnet")
    runs = os.path.join(host.state_dir, "runs")  # each run appends when it started (the host's clock)
    host.tether("run", "-d", "--name", "crash", "--restart", "on-failure:3", "--net", "appnet", "--ip",
                "10.246.0.7", "--", "sh", "-c", f"date +%s.%N >> {runs}; echo run; exit 3")
    until(lambda: host.inspect("crash")["restart_count"] == 3 and host.inspect("crash")["state"] == "exited",
          "three restarts", timeout=15)
    assert host.tether("logs", "crash").stdout.split() == ["run"] * 4
    time.sleep(1.0)
    info = host.inspect("crash")
    assert info["restart_count"] == 3 and info["state"] == "exited" and info["exit_code"] == 3
    assert info["networks"] == {}
    with open(runs) as fh:
        started = [float(line) for line in fh.read().split()]
    gaps = [b - a for a, b in itertools.pairwise(started)]
    assert len(gaps) == 3 and gaps[0] >= 0.1 and gaps[1] >= 0.2 and gaps[2] >= 0.4, gaps  # 100 ms, doubled
    # always: a process that exits comes back, with its address (here: fails twice, then stays up)
    tries = os.path.join(host.state_dir, "tries")
    host.tether("run", "-d", "--name", "loop", "--restart", "always", "--net", "appnet", "--ip", "10.246.0.8",
                "--", "sh", "-c", f"echo x >> {tries}; [ $(wc -l < {tries}) -ge 3 ] && exec sleep 600; exit 1")
    until(lambda: host.inspect("loop")["restart_count"] == 2 and host.inspect("loop")["state"] == "running",
          "always to restart twice", timeout=15)
    assert ping_from(host, "loop", "10.246.0.1")
    assert host.inspect("loop")["networks"]["appnet"]["address"] == "10.246.0.8"
    host.tether("stop", "-t", "0", "loop")
    stopped = host.inspect("loop")
    time.sleep(1.5)
    held = host.inspect("loop")
    assert held["state"] == "exited" and held["restart_count"] == stopped["restart_count"] and held["manually_stopped"]
    host.tether("start", "loop")
    assert host.inspect("loop")["restart_count"] == 0


def test_bad_restart_input_is_one_line_and_changes_nothing(host: Host) -> None:
    host.tether("run", "-d", "--name", "held", "--net", "none", "--", "sleep", "600")
    before = host.snapshot()
    cases = [
        (["run", "-d", "--restart", "sometimes", "--", "true"], "invalid --restart 'sometimes'"),
        (["run", "-d", "--restart", "always:3", "--", "true"], "only on-failure takes a maximum retry count"),
        (["run", "-d", "--restart", "on-failure:x", "--", "true"], "must be a whole number"),
        (["run", "-d", "--rm", "--restart", "always", "--", "true"], "--rm and --restart always contradict"),
        (["start", "held"], "already running"),
        (["start", "nosuch"], "not found"),
        (["restart", "-t", "abc", "held"], "-t"),
    ]
    for args, needle in cases:
        one_line_error(host.tether(*args, check=False), needle)
    assert host.snapshot() == before


def test_restart_policies_survive_a_daemon_restart(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.247.0.0/24", "appnet")
    host.tether("run", "-d", "--name", "keeper", "--restart", "always", "--net", "appnet", "--ip", "10.247.0.9",
                "--", "sleep", "600")
    host.tether("run", "-d", "--name", "unless", "--restart", "unless-stopped", "--net", "appnet", "--", "sleep", "600")
    host.tether("run", "-d", "--name", "held", "--restart", "unless-stopped", "--net", "appnet", "--", "sleep", "600")
    host.tether("run", "-d", "--name", "plain", "--net", "appnet", "--", "sleep", "600")
    host.tether("stop", "-t", "0", "held")
    pids = {name: host.inspect(name)["pid"] for name in ("keeper", "unless", "plain")}
    host.kill_daemon(signal.SIGKILL)
    for pid in pids.values():  # their processes die while no daemon runs
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.3)
    host.start_daemon()
    until(lambda: host.inspect("keeper")["state"] == "running", "keeper back")
    until(lambda: host.inspect("unless")["state"] == "running", "unless back")
    keeper = host.inspect("keeper")
    assert keeper["pid"] != pids["keeper"] and keeper["networks"]["appnet"]["address"] == "10.247.0.9"
    assert ping_from(host, "keeper", "10.247.0.1")
    time.sleep(0.5)
    assert host.inspect("held")["state"] == "exited" and host.inspect("plain")["state"] == "exited"
    assert host.inspect("plain")["networks"] == {}
    # the policy is still there after the restart: another death, another restart
    os.kill(keeper["pid"], signal.SIGKILL)
    until(lambda: host.inspect("keeper")["pid"] != keeper["pid"] and host.inspect("keeper")["state"] == "running",
          "keeper back once more")


# ---------------------------------------------------------------------------- container:NAME
def test_a_joiner_whose_owner_was_removed_says_what_it_has(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.248.0.0/24", "appnet")
    host.tether("run", "-d", "--name", "web", "--net", "appnet", "--", "sleep", "600")
    host.tether("run", "-d", "--name", "side", "--net", "container:web", "--", "sleep", "600")
    assert host.tether("exec", "side", "--", "ip", "-o", "-4", "addr").stdout.count("10.248.0.") == 1
    host.tether("rm", "-f", "web")
    side = host.inspect("side")
    assert side["state"] == "running" and side["net_mode"] == "container:web (removed)"
    assert side["networks"] == {} and side["netns_path"] == f"/proc/{side['pid']}/ns/net"
    assert "container:web (removed)" in host.tether("ps").stdout
    links = host.tether("exec", "side", "--", "ip", "-o", "link").stdout.splitlines()
    assert [line.split(":")[1].strip() for line in links] == ["lo"]
    one_line_error(host.tether("run", "-d", "--net", "container:side", "--", "true", check=False), "was removed")
    host.tether("stop", "-t", "0", "side")
    assert host.inspect("side")["netns_path"] is None
    one_line_error(host.tether("start", "side", check=False), "cannot start again; remove it")
