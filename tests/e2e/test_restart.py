"""Live restore and reconcile: the daemon can die at any moment; containers keep running
with their network, and a restart repairs or removes whatever was half done."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from conftest import Host, sh


def _ping(host: Host, src: str, dst: str) -> bool:
    return host.in_container(src, "ping", "-c1", "-W2", dst, check=False).returncode == 0


def test_sigkill_keeps_containers_and_restart_adopts_them(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.217.0.0/24", "appnet")
    host.tether("run", "-d", "--name", "a", "--net", "appnet", "--", "sleep", "600")
    host.tether("run", "-d", "--name", "b", "--net", "appnet", "--", "sleep", "600")
    b_addr = host.inspect("b")["networks"]["appnet"]["address"]
    before = host.snapshot()
    # a ping flood across the daemon's death: no packet may be lost
    flood = subprocess.Popen(["ip", "netns", "exec", host.prefix + "a", "ping", "-q", "-i", "0.01", "-c", "300", b_addr],
                             stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    host.kill_daemon(signal.SIGKILL)
    assert _ping(host, "a", b_addr)
    host.start_daemon()
    out, _ = flood.communicate(timeout=30)
    assert " 0% packet loss" in out, out
    after = host.snapshot()
    assert [c["name"] for c in after["containers"]] == ["a", "b"]
    assert all(c["state"] == "running" for c in after["containers"])
    assert after["links"] == before["links"] and after["netns"] == before["netns"]
    assert after["networks"] == before["networks"]


def test_restart_removes_orphans_and_half_created_containers(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.218.0.0/24", "appnet")
    host.tether("run", "-d", "--name", "keep", "--net", "appnet", "--", "sleep", "600")
    net = host.json("network", "inspect", "appnet")[0]
    clean = host.snapshot()
    host.kill_daemon(signal.SIGKILL)
    # what a daemon killed mid-way can leave: a marked veth on the bridge that no record owns,
    # a lease with no owner, a container record still 'creating' with its namespace made
    mark = f"tether:{host.prefix}"
    host.in_host("ip", "link", "add", "vtorphan0", "type", "veth", "peer", "name", "vtorphan1")
    host.in_host("ip", "link", "set", "vtorphan0", "alias", mark, "master", net["bridge"])
    sh("ip", "netns", "add", host.prefix + "half")
    script = f"""
import sys, time
sys.path.insert(0, {os.getcwd()!r})
from tether.store import SqliteStore
s = SqliteStore({os.path.join(host.state_dir, 'tether.db')!r})
s.put('/ipam/{net['id']}/10.218.0.77', {{'owner': 'gone'}})
s.put('/containers/half', {{'id': 'f' * 32, 'name': 'half', 'hostname': 'half', 'net_mode': 'none',
      'netns': {host.prefix + 'half'!r}, 'cmd': ['true'], 'state': 'creating', 'created': time.time()}})
"""
    subprocess.run([sys.executable, "-c", script], check=True)
    host.start_daemon()
    assert host.snapshot() == clean
    assert "10.218.0.77" not in json.dumps(host.json("network", "inspect", "appnet"))
    # the lease really is free: it can be asked for
    host.tether("run", "-d", "--name", "again", "--net", "appnet", "--ip", "10.218.0.77", "--", "sleep", "600")


def test_restart_repairs_deleted_bridge_and_veth(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.219.0.0/24", "appnet")
    host.tether("run", "-d", "--name", "a", "--net", "appnet", "--", "sleep", "600")
    host.tether("run", "-d", "--name", "b", "--net", "appnet", "--", "sleep", "600")
    bridge = host.json("network", "inspect", "appnet")[0]["bridge"]
    b_addr = host.inspect("b")["networks"]["appnet"]["address"]
    a_veth = host.inspect("a")["networks"]["appnet"]["host_ifname"]
    host.kill_daemon(signal.SIGKILL)
    host.in_host("ip", "link", "del", a_veth)
    host.in_host("ip", "link", "del", bridge)
    assert not _ping(host, "a", b_addr)
    host.start_daemon()
    assert _ping(host, "a", b_addr)
    assert host.in_container("a", "ip", "-o", "link", "show", "eth0").returncode == 0
