"""macvlan across simulated hosts: containers of two `tether lab` hosts meet on the LAN.

One lab per module: two hosts (``tt<hex>h1``, ``h2``), each with its daemon, joined by the
lab's fabric bridge through their ``eth0`` (the lab's LAN parent, ``tether.lab.LAN_PARENT``).
On each host a macvlan network ``lan`` on parent ``eth0``, with the same LAN subnet
198.51.100.0/24 (TEST-NET-2, which the underlay 10.99.0.0/24 does not use) and a disjoint
``--ip-range`` per host (h1 .32/28, h2 .48/28), so the two daemons never hand out the same
address; h1's with ``-o host_access=true``. One container on each serves TCP_WHO.

What is checked, with real packets: ping and TCP between the containers both ways, the
server seeing the other container's own address (no NAT, no overlay: no VXLAN device on
either host, and the fabric bridge learns each container's own MAC on its host's port);
h1 reaching its own container through the shim and back, which h2 (no host access)
cannot. Packets only travel between the lab's own namespaces.

Whatever happens, the module fixture takes the lab down and checks that nothing is left:
no namespace with the prefix, no process mentioning the lab's paths.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import processes_mentioning, sh
from probes import TCP_ASK, TCP_WHO

from tether import lab as tlab
from tether.api.client import Client
from tether.lab import LabHost, LabInfo, lab_down, lab_up

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root"),
    pytest.mark.skipif(shutil.which("etcd") is None, reason="the lab needs etcd (apt-get install etcd-server)"),
]

NETNS_DIR = "/var/run/netns"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUBNET, GATEWAY = "198.51.100.0/24", "198.51.100.1"  # the LAN's; its "router" is nowhere in the lab
RANGES = {1: "198.51.100.32/28", 2: "198.51.100.48/28"}  # disjoint: two daemons, one LAN
HOST_ADDRESS = "198.51.100.250"  # h1's side of its host access
SUBNET6 = "2001:db8:100::/64"  # the dual-stack network's v6 half (documentation prefix)
PORT = 7000


def lab_netns(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def in_range(address: str, cidr: str) -> bool:
    import ipaddress

    return ipaddress.ip_address(address) in ipaddress.ip_network(cidr)


@dataclass
class Lab:
    info: LabInfo
    root: str
    state_root: str

    def host(self, i: int) -> LabHost:
        return self.info.hosts[i - 1]

    def tether(self, i: int, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``tether ARGS`` inside host ``i`` against its daemon."""
        host = self.host(i)
        r = subprocess.run(host.tether_argv(*args), capture_output=True, text=True, env=host.cli_env(),
                           timeout=60, check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"h{i}: tether {' '.join(args)} failed ({r.returncode}): {r.stderr}{r.stdout}")
        return r

    def json(self, i: int, *args: str) -> Any:
        return json.loads(self.tether(i, *args).stdout)

    def net(self, i: int, name: str) -> dict[str, Any]:
        """``network inspect NAME`` on host ``i``."""
        return dict(self.json(i, "network", "inspect", name)[0])

    def in_host(self, i: int, *cmd: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return sh(*self.host(i).enter(), *cmd, check=check, timeout=30)

    def ctr_ns(self, i: int, name: str) -> str:
        return self.host(i).container_netns_prefix + name

    def in_ctr(self, i: int, name: str, *cmd: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.ctr_ns(i, name), *cmd, check=check, timeout=30)

    def serve(self, i: int, name: str, net: str) -> dict[str, Any]:
        """A container on ``net`` serving TCP_WHO on PORT; its endpoint on ``net`` once it listens."""
        self.tether(i, "run", "-d", "--name", name, "--net", net, "--", "python3", "-c", TCP_WHO, str(PORT))
        deadline = time.monotonic() + 10
        while not self.in_ctr(i, name, "ss", "-Hltn", f"sport = :{PORT}").stdout.strip():
            assert time.monotonic() < deadline, f"nothing listens on {PORT} in {self.ctr_ns(i, name)}"
            time.sleep(0.05)
        return dict(self.json(i, "inspect", name)[0]["networks"][net])


def ping(r: subprocess.CompletedProcess[str]) -> str:
    """'answered', or what ping said (for the assertion message)."""
    return "answered" if r.returncode == 0 else " ".join((r.stdout + r.stderr).split())[-200:]


def tcp_seen(r: subprocess.CompletedProcess[str]) -> str:
    """The source address a TCP_WHO server saw, or what went wrong."""
    return r.stdout.strip() if r.returncode == 0 else f"FAILED: {(r.stdout + r.stderr).strip()[-200:]}"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    prefix = "tt" + uuid.uuid4().hex[:6]
    base = tempfile.mkdtemp(prefix=f"tether-mvl-{prefix}-")
    root, state_root = os.path.join(base, "run"), os.path.join(base, "state")
    try:
        info = lab_up(2, grace=10.0, root=root, state_root=state_root, name_prefix=prefix)
        yield Lab(info, root, state_root)
    finally:
        inside = tlab.pids_in_namespaces(lab_netns(prefix))
        errors = lab_down(root, state_root=state_root, name_prefix=prefix)
        shutil.rmtree(base, ignore_errors=True)
        left = lab_netns(prefix) + processes_mentioning(root, state_root, f"{prefix}h", f"{prefix}-")
        left += [f"pid {pid} (was in the lab)" for pid in sorted(inside) if tlab.process_alive(pid)]
        assert not errors and not left, f"the lab left things behind: {errors} {left}"


@pytest.fixture(scope="module")
def pair(lab: Lab) -> dict[int, dict[str, Any]]:
    """The network ``lan`` on each host (h1 with host access) and a TCP_WHO container on it:
    host index -> the container's endpoint."""
    for i in (1, 2):
        access = ["-o", "host_access=true", "-o", f"host_address={HOST_ADDRESS}"] if i == 1 else []
        lab.tether(i, "network", "create", "-d", "macvlan", "-o", f"parent={tlab.LAN_PARENT}", "--subnet", SUBNET,
                   "--gateway", GATEWAY, "--ip-range", RANGES[i], *access, "lan")
    return {i: lab.serve(i, f"c{i}", "lan") for i in (1, 2)}


# ---------------------------------------------------------------------- the lab's side
def test_lab_status_names_the_lan_parent(lab: Lab) -> None:
    assert tlab.LAN_PARENT == "eth0"
    assert tlab.lab_status(lab.root)["lan"] == {"parent": "eth0", "subnet": "10.99.0.0/24"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(TETHER_LAB_ROOT=lab.root, TETHER_LAB_STATE_ROOT=lab.state_root,
               PYTHONPATH=os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p))
    table = subprocess.run([sys.executable, "-m", "tether.cli", "lab", "status"], capture_output=True, text=True,
                           env=env, timeout=60, cwd=REPO, check=True).stdout
    assert "LAN parent eth0" in table and "-o parent=eth0" in table, table
    for i in (1, 2):  # each host's eth0 is a plain Ethernet veth on the fabric: fit to be a parent
        shown = lab.in_host(i, "ip", "-d", "-o", "link", "show", "eth0", check=True).stdout
        assert "veth" in shown and "mtu 1400" in shown, shown


# ---------------------------------------------------------------------- across hosts
def test_networks_are_local_and_on_eth0(lab: Lab, pair: dict[int, dict[str, Any]]) -> None:
    for i in (1, 2):
        net = lab.net(i, "lan")
        assert net["driver"] == "macvlan" and net["subnet"] == SUBNET, net
        assert net["options"]["parent"] == "eth0" and net["options"]["macvlan_mode"] == "bridge", net
        assert in_range(pair[i]["address"], RANGES[i]), (i, pair[i])
        nets = {n["name"]: n for n in lab.json(i, "network", "ls", "--format", "json")}
        assert nets["lan"]["scope"] == "local", nets["lan"]
    assert pair[1]["address"] != pair[2]["address"]


def test_containers_talk_across_hosts_both_ways(lab: Lab, pair: dict[int, dict[str, Any]]) -> None:
    failures = []
    for src, dst in ((1, 2), (2, 1)):
        target = pair[dst]["address"]
        if (said := ping(lab.in_ctr(src, f"c{src}", "ping", "-c1", "-W2", target))) != "answered":
            failures.append(f"ping c{src}@h{src} -> c{dst}@h{dst} ({target}): {said}")
        seen = tcp_seen(lab.in_ctr(src, f"c{src}", "python3", "-c", TCP_ASK, target, str(PORT)))
        if seen != pair[src]["address"]:  # straight over the LAN: the server sees the client itself
            failures.append(f"tcp c{src} -> c{dst}: server saw {seen!r}, expected {pair[src]['address']}")
    assert failures == [], "\n".join(failures)


def test_the_path_is_the_lan_not_an_overlay(lab: Lab, pair: dict[int, dict[str, Any]]) -> None:
    """One interface per container, a macvlan child; no VXLAN anywhere; the fabric bridge has
    learnt each container's own MAC on the port of its host."""
    for i in (1, 2):
        links = lab.in_ctr(i, f"c{i}", "ip", "-d", "-o", "link", check=True).stdout
        names = sorted(line.split(":")[1].strip().split("@")[0] for line in links.splitlines() if line.strip())
        assert names == ["eth0", "lo"], links
        assert "macvlan mode bridge" in links, links
        # the parent's MTU (the lab's LAN is 1400, as this machine's eth0): a child may not exceed it
        assert int(lab.in_ctr(i, f"c{i}", "cat", "/sys/class/net/eth0/mtu", check=True).stdout) == 1400
        host_links = lab.in_host(i, "ip", "-d", "-o", "link", check=True).stdout
        assert "vxlan" not in host_links, host_links
    # make sure both MACs were seen recently, then read the fabric's forwarding table
    lab.in_ctr(1, "c1", "ping", "-c1", "-W2", pair[2]["address"])
    fdb = sh("ip", "netns", "exec", lab.info.fabric, "bridge", "fdb", "show", "br", "underlay").stdout
    for i in (1, 2):
        mac = pair[i]["mac"].lower()
        learnt = [line for line in fdb.splitlines() if line.startswith(mac)]
        assert learnt and f"dev h{i} " in learnt[0] + " ", f"c{i}'s MAC {mac} on the fabric: {learnt or fdb}"


def test_host_access_on_h1_reaches_its_own_container(lab: Lab, pair: dict[int, dict[str, Any]]) -> None:
    c1 = pair[1]["address"]
    net = lab.net(1, "lan")
    shim = net.get("host_interface")
    assert shim and net["options"]["host_access"] == "true", net
    addrs = lab.in_host(1, "ip", "-o", "-4", "addr", "show", "dev", shim, check=True).stdout
    assert f"{HOST_ADDRESS}/32" in addrs, addrs
    assert ping(lab.in_host(1, "ping", "-c1", "-W2", c1)) == "answered"
    # TCP from the host: the container sees the host's side of the LAN, not the underlay
    assert tcp_seen(lab.in_host(1, "python3", "-c", TCP_ASK, c1, str(PORT))) == HOST_ADDRESS
    # and the other way: the container reaches its host's address on the LAN
    assert ping(lab.in_ctr(1, "c1", "ping", "-c1", "-W2", HOST_ADDRESS)) == "answered"
    # the host's route to the container is one /32 via the shim
    route = lab.in_host(1, "ip", "-4", "route", "show", c1, check=True).stdout
    assert re.search(rf"^{re.escape(c1)} dev {shim}\b", route), route


def test_without_host_access_h2_cannot_reach_its_container(lab: Lab, pair: dict[int, dict[str, Any]]) -> None:
    """The contrast: no shim on h2, so its own macvlan container is out of its reach."""
    net = lab.net(2, "lan")
    assert "host_interface" not in net and net["options"]["host_access"] == "false", net
    assert ping(lab.in_host(2, "ping", "-c1", "-W1", pair[2]["address"])) != "answered"


def test_dual_stack_across_hosts(lab: Lab, pair: dict[int, dict[str, Any]]) -> None:
    """A second macvlan network on the same parent with another LAN subnet and a v6 one:
    v6 neighbour discovery crosses the fabric too. ``--ip-range`` is IPv4 only, so each
    container's v6 address is given (``--ip6``): two daemons would both start at ::2."""
    ranges = {1: "192.0.2.32/28", 2: "192.0.2.48/28"}
    ip6 = {1: "2001:db8:100::32", 2: "2001:db8:100::48"}
    made = []
    try:
        eps = {}
        for i in (1, 2):
            lab.tether(i, "network", "create", "-d", "macvlan", "-o", "parent=eth0", "--ipv6", "--subnet",
                       "192.0.2.0/24", "--subnet", SUBNET6, "--ip-range", ranges[i], "lan6")
            lab.tether(i, "run", "-d", "--name", f"d{i}", "--net", "lan6", "--ip6", ip6[i], "--", "sleep", "600")
            made.append(i)
            eps[i] = lab.json(i, "inspect", f"d{i}")[0]["networks"]["lan6"]
            assert eps[i].get("address6") == ip6[i] and in_range(eps[i]["address"], ranges[i]), eps[i]
        for src, dst in ((1, 2), (2, 1)):
            r = lab.in_ctr(src, f"d{src}", "ping", "-6", "-c1", "-W2", eps[dst]["address6"])
            assert ping(r) == "answered", f"d{src} -> d{dst} over v6"
            r = lab.in_ctr(src, f"d{src}", "ping", "-c1", "-W2", eps[dst]["address"])
            assert ping(r) == "answered", f"d{src} -> d{dst} over v4"
    finally:
        for i in made:
            lab.tether(i, "rm", "-f", f"d{i}", check=False)
        for i in (1, 2):
            lab.tether(i, "network", "rm", "lan6", check=False)


def test_removing_the_network_takes_the_shim_and_routes(lab: Lab, pair: dict[int, dict[str, Any]]) -> None:
    shim = lab.net(1, "lan")["host_interface"]
    for i in (1, 2):
        lab.tether(i, "rm", "-f", f"c{i}")
    assert lab.in_host(1, "ip", "-4", "route", "show", "dev", shim, check=True).stdout.strip() == ""
    for i in (1, 2):
        lab.tether(i, "network", "rm", "lan")
        assert "lan" not in {n["name"] for n in lab.json(i, "network", "ls", "--format", "json")}
    links = lab.in_host(1, "ip", "-o", "link", check=True).stdout
    assert shim not in links, links
    eth0 = lab.in_host(1, "ip", "-o", "addr", "show", "dev", "eth0", check=True).stdout
    assert lab.host(1).underlay_ip in eth0, eth0  # the parent itself is untouched
    assert Client(lab.host(1).socket).alive()
