"""macvlan networks through the doors: tether-cni (by hand and under Podman) and Docker's
remote driver, with real packets to the LAN's router.

The LAN is test_macvlan's: a veth pair whose host end ``tmvp0`` is the parent, whose other
end sits in a LAN namespace the test owns with the router 192.0.2.1 and 2001:db8:21::1
(documentation prefixes; nothing outside the test's namespaces is addressed). The CNI
runner is conftest's (Podman's setup test_cni's), Docker's dockerkit's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Cni, Host, netconf, sh
from dockerkit import Docker, docker_engine
from test_cni import address_of, build_podman
from test_macvlan import ROUTER, ROUTER6, SUBNET, SUBNET6, make_lan

pytestmark = pytest.mark.e2e


def macvlans_on_host(host: Host) -> str:
    return host.in_host("ip", "-o", "link", "show", "type", "macvlan").stdout


def test_cni_add_check_del_on_a_macvlan_network(host: Host, cni: Cni) -> None:
    lan = make_lan(host)
    host.tether("network", "create", "-d", "macvlan", "-o", "parent=tmvp0", "--subnet", SUBNET, "--gateway", ROUTER,
                "--ipv6", "--subnet", SUBNET6, "--gateway", ROUTER6, "--ip-range", "192.0.2.64/26", "mvcni")
    host.tether("run", "-d", "--name", "web", "--net", "mvcni", "--", "sleep", "600")
    web = host.inspect("web")["networks"]["mvcni"]
    ns1, ns2 = cni.netns(), cni.netns()
    r1 = cni.add(netconf("mvcni"), "mv-one", ns1)
    assert r1["ips"][0]["address"].startswith("192.0.2.") and r1["ips"][0]["gateway"] == ROUTER
    assert r1["ips"][1]["address"].startswith("2001:db8:21::") and r1["ips"][1]["gateway"] == ROUTER6
    assert {"dst": "0.0.0.0/0", "gw": ROUTER} in r1["routes"] and {"dst": "::/0", "gw": ROUTER6} in r1["routes"]
    mac = r1["interfaces"][-1]["mac"]
    link = cni.in_ns(ns1, "ip", "-d", "-o", "link", "show", "eth0").stdout
    assert "macvlan mode bridge" in link and mac in link
    a1 = address_of({"ips": [r1["ips"][0]]})
    # real packets: to the router (which sees the namespace's own MAC), both families, and
    # to a `tether run` container on the same network
    assert cni.in_ns(ns1, "ping", "-c1", "-W2", ROUTER, check=False).returncode == 0
    assert cni.in_ns(ns1, "ping", "-6", "-c1", "-W2", ROUTER6, check=False).returncode == 0
    assert mac in sh("ip", "-n", lan.ns, "neigh", "show", a1).stdout
    assert cni.in_ns(ns1, "ping", "-c1", "-W2", web["address"], check=False).returncode == 0
    # a requested address and MAC
    r2 = cni.add(netconf("mvcni"), "mv-two", ns2, args="IgnoreUnknown=1;IP=192.0.2.100;MAC=02:00:00:aa:bb:21")
    assert address_of({"ips": [r2["ips"][0]]}) == "192.0.2.100" and r2["interfaces"][-1]["mac"] == "02:00:00:aa:bb:21"
    assert cni.in_ns(ns2, "ping", "-c1", "-W2", a1, check=False).returncode == 0
    # CHECK passes; published ports are refused in one line (the container is on the LAN)
    assert cni.call("CHECK", netconf("mvcni", prevResult=r1), "mv-one", ns1).rc == 0
    ports = [{"hostPort": 18021, "containerPort": 80, "protocol": "tcp"}]
    refused = cni.call("ADD", netconf("mvcni", runtimeConfig={"portMappings": ports}), "mv-three", cni.netns())
    assert refused.rc == 1 and refused.out is not None and "macvlan" in refused.out["msg"], refused
    # DEL (twice) removes the child and frees the address; nothing is ever left on the host
    for _ in range(2):
        assert cni.call("DEL", netconf("mvcni"), "mv-one", ns1).rc == 0
    assert "eth0" not in cni.in_ns(ns1, "ip", "-o", "link").stdout
    assert sorted(host.json("network", "inspect", "mvcni")[0]["containers"]) == ["cni-mv-two", "web"]
    sh("ip", "netns", "del", os.path.basename(ns2))  # the runtime deleted the namespace first
    assert cni.call("DEL", netconf("mvcni"), "mv-two", ns2).rc == 0
    assert sorted(host.json("network", "inspect", "mvcni")[0]["containers"]) == ["web"]
    again = cni.add(netconf("mvcni", runtimeConfig={"ips": ["192.0.2.100/24"]}), "mv-four", ns1)
    assert address_of({"ips": [again["ips"][0]]}) == "192.0.2.100"
    assert macvlans_on_host(host) == ""


def test_podman_on_a_macvlan_network(host: Host) -> None:
    if shutil.which("podman") is None or shutil.which("runc") is None or not os.path.exists("/bin/busybox"):
        pytest.skip("needs podman, runc and busybox-static (apt-get install podman runc busybox-static)")
    lan = make_lan(host)
    network = f"{host.prefix}mvpod"
    host.tether("network", "create", "-d", "macvlan", "-o", "parent=tmvp0", "--subnet", SUBNET, "--gateway", ROUTER,
                network)
    base = Path(tempfile.mkdtemp(prefix=f"{host.prefix}podman-"))
    podman = build_podman(host, base, network)
    try:
        run = ["run", "-d", "--network", network, "--cap-add", "NET_RAW"]
        podman(*run, "--name", "pa", "localhost/tetherbb", "sleep", "600")
        podman(*run, "--name", "pb", "--ip", "192.0.2.77", "localhost/tetherbb", "sleep", "600")
        a = podman.ip("pa", network)
        assert a.startswith("192.0.2.") and podman.ip("pb", network) == "192.0.2.77"
        for name, peer in (("pa", ROUTER), ("pa", "192.0.2.77"), ("pb", a)):
            r = podman("exec", name, "ping", "-c1", "-W2", peer, check=False)
            assert r.returncode == 0, (name, peer, r.stdout + r.stderr)
        assert "lladdr" in sh("ip", "-n", lan.ns, "neigh", "show", a).stdout  # the router saw it itself
        podman("rm", "-f", "-t", "0", "pa", "pb")
        assert host.json("network", "inspect", network)[0]["containers"] == {}
        assert macvlans_on_host(host) == ""
    finally:
        podman("rm", "-a", "-f", "-t", "0", check=False)
        podman("rmi", "-a", "-f", check=False)
        sh("umount", "-R", str(base / "root"), check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def docker(bare_host: Host) -> Iterator[Docker]:
    with docker_engine(bare_host, "hello from docker on macvlan\n") as d:
        yield d


def test_docker_door_macvlan_network(bare_host: Host, docker: Docker) -> None:
    host, d = bare_host, docker
    lan = make_lan(host)  # the host has no address on the LAN: it does not route 192.0.2.0/24
    net = f"{host.prefix}dmv"
    d("network", "create", "-d", d.plugin, "--ipam-driver", d.plugin, "-o", "tether.driver=macvlan",
      "-o", "parent=tmvp0", "--subnet", SUBNET, "--gateway", ROUTER, "-o", f"tether.network={net}", net)
    tnet = host.json("network", "inspect", net)[0]
    assert (tnet["driver"], tnet["parent"], tnet["gateway"]) == ("macvlan", "tmvp0", ROUTER)
    d("run", "-d", "--name", "da", "--net", net, "tbb", "sleep", "600")
    a = d.ip("da")
    assert a.startswith("192.0.2.")
    # a macvlan child inside Docker's sandbox (seen through tether's `ip netns` name for it)
    (name,) = host.json("network", "inspect", net)[0]["containers"]
    assert "macvlan mode bridge" in sh("ip", "netns", "exec", host.prefix + name, "ip", "-d", "-o", "link").stdout
    assert f"default via {ROUTER} dev eth0" in d("exec", "da", "ip", "route").stdout
    r = d("exec", "da", "ping", "-c1", "-W2", ROUTER, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    mac = d("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.MacAddress}}{{end}}", "da").stdout.strip()
    assert mac and mac in sh("ip", "-n", lan.ns, "neigh", "show", a).stdout
    r = d("run", "--rm", "--net", net, "tbb", "ping", "-c1", "-W2", a, check=False)  # a sibling on the LAN
    assert r.returncode == 0, r.stdout + r.stderr
    # -p makes no sense on macvlan: refused
    r = d("run", "--rm", "--net", net, "-p", "18221:80", "tbb", "sleep", "0", check=False)
    assert r.returncode != 0 and "macvlan" in r.stderr, r.stderr
    d("rm", "-f", "da")
    assert host.json("network", "inspect", net)[0]["containers"] == {}
    d("network", "rm", net)
    assert net not in host.tether("network", "ls").stdout
    assert macvlans_on_host(host) == ""
