"""200 `tether run -d` at once on one network: all succeed, no address twice."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys

from conftest import Host


def test_200_parallel_runs_get_unique_addresses(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.222.0.0/24", "many")
    env = dict(os.environ, TETHER_NO_AUTOSTART="1")
    procs = [
        subprocess.Popen(
            [*host.enter(), sys.executable, "-m", "tether.cli", "--socket", host.socket, "run", "-d",
             "--name", f"p{i}", "--net", "many", "--", "sleep", "600"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for i in range(200)
    ]
    failures = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        if p.returncode != 0:
            failures.append(err.strip())
    assert failures == []
    running = host.json("ps", "--format", "json")
    assert len(running) == 200
    addrs = [c["networks"]["many"]["address"] for c in running]
    assert len(set(addrs)) == 200
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network("10.222.0.0/24") for a in addrs)
    assert "10.222.0.1" not in addrs
    # every one of them really has its address on its interface: spot-check by pinging a few
    for c in running[::40]:
        addr = c["networks"]["many"]["address"]
        assert host.in_host("ping", "-c1", "-W2", addr, check=False).returncode == 0
