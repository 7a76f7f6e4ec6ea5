"""End to end: ``tether-cni`` against a real daemon, with real packets.

The plugin runs as its own process, exactly as a runtime runs it: ``CNI_*`` variables,
the network configuration on stdin, under ``nsenter --net=<test host>`` (a runtime runs
plugins in the host's namespace; here the test's host namespace holds the daemon). The
container namespaces are made by the test with ``ip netns add`` (``tt<tag>c<n>``) and
deleted afterwards with any process in them; the last test drives Debian's Podman, with
its CNI backend, through the same plugin.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Cni, Host, busybox_image, netconf, sh
from probes import RESOLVE, TCP_ASK, TCP_WHO, TCP_WHO6

pytestmark = pytest.mark.e2e


def address_of(result: dict[str, Any]) -> str:
    return str(result["ips"][-1]["address"]).split("/")[0]


def endpoints(host: Host, network: str) -> dict[str, Any]:
    return dict(host.json("network", "inspect", network)[0]["containers"])


def host_veths(host: Host) -> list[str]:
    links = host.in_host("ip", "-o", "link").stdout.splitlines()
    return [line.split(":")[1].strip().split("@")[0] for line in links if "@" in line.split(":")[1]]


def ping(cni: Cni, netns: str, address: str) -> bool:
    return cni.in_ns(netns, "ping", "-c1", "-W2", address, check=False).returncode == 0


def wait_tcp(host: Host, address: str, port: int, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while True:
        r = host.in_host("python3", "-c", TCP_ASK, address, str(port), check=False)
        if r.returncode == 0 or time.monotonic() > deadline:
            return r.stdout.strip()
        time.sleep(0.1)


# ---------------------------------------------------------------------------- ADD and packets
def test_add_connects_cni_namespaces_and_tether_containers(host: Host, cni: Cni) -> None:
    host.tether("network", "create", "--subnet", "10.241.0.0/24", "cninet")
    ns1, ns2 = cni.netns(), cni.netns()
    r1 = cni.add(netconf("cninet"), "ctr-one", ns1)
    r2 = cni.add(netconf("cninet", runtimeConfig={"aliases": ["db", "primary"]}), "ctr-two", ns2)

    # the spec's result, in the config's version
    assert r1["cniVersion"] == "1.0.0"
    assert r1["interfaces"][1]["name"] == "eth0" and r1["interfaces"][1]["sandbox"] == ns1
    assert "sandbox" not in r1["interfaces"][0] or not r1["interfaces"][0]["sandbox"]  # the host end
    assert r1["ips"] == [{"address": "10.241.0.2/24", "gateway": "10.241.0.1", "interface": 1}]
    assert r1["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.241.0.1"}]
    a1, a2 = address_of(r1), address_of(r2)
    assert "10.241.0.2/24" in cni.in_ns(ns1, "ip", "-o", "-4", "addr", "show", "eth0").stdout
    assert r1["interfaces"][1]["mac"] in cni.in_ns(ns1, "ip", "-o", "link", "show", "eth0").stdout
    assert "via 10.241.0.1 dev eth0" in cni.in_ns(ns1, "ip", "route", "show", "default").stdout

    # CNI namespace <-> CNI namespace, and both ways with a container `tether run` made
    assert ping(cni, ns1, a2) and ping(cni, ns2, a1)
    host.tether("run", "-d", "--name", "web", "--net", "cninet", "--", "sleep", "600")
    web = host.inspect("web")["networks"]["cninet"]["address"]
    assert ping(cni, ns1, web)
    r = host.tether("run", "--rm", "--net", "cninet", "--", "ping", "-c1", "-W2", a1, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    # the aliases capability: tether's containers resolve them
    r = host.tether("run", "--rm", "--net", "cninet", "--", "python3", "-c", RESOLVE, "db")
    assert r.stdout.strip() == a2
    # the result names the embedded resolver; a resolv.conf made from it (what a runtime
    # writes) resolves tether's names from inside the CNI namespace
    assert r1["dns"] == {"nameservers": ["127.0.0.11"]}
    etc = f"/etc/netns/{os.path.basename(ns1)}"  # `ip netns exec` mounts its resolv.conf
    os.makedirs(etc, exist_ok=True)
    try:
        with open(f"{etc}/resolv.conf", "w") as f:
            f.write("nameserver 127.0.0.11\n")
        assert cni.in_ns(ns1, "python3", "-c", RESOLVE, "web").stdout.strip() == web
        assert cni.in_ns(ns1, "python3", "-c", RESOLVE, "primary").stdout.strip() == a2
    finally:
        shutil.rmtree(etc, ignore_errors=True)

    # tether sees the attachments like any endpoint
    eps = endpoints(host, "cninet")
    assert {e["address"] for e in eps.values()} == {"10.241.0.2/24", a2 + "/24", web + "/24"}


def test_requested_address_and_mac(host: Host, cni: Cni) -> None:
    host.tether("network", "create", "--subnet", "10.242.0.0/24", "reqnet")
    ns1, ns2 = cni.netns(), cni.netns()
    r = cni.add(netconf("reqnet"), "req-one", ns1, args="IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.242.0.50;MAC=02:00:00:aa:bb:01")
    assert address_of(r) == "10.242.0.50" and r["interfaces"][1]["mac"] == "02:00:00:aa:bb:01"
    assert "02:00:00:aa:bb:01" in cni.in_ns(ns1, "ip", "-o", "link", "show", "eth0").stdout
    rc = {"ips": ["10.242.0.60/24"], "mac": "02:00:00:aa:bb:02"}
    r = cni.add(netconf("reqnet", "0.4.0", runtimeConfig=rc), "req-two", ns2, ifname="net1")
    assert r["cniVersion"] == "0.4.0"
    assert r["ips"] == [{"version": "4", "address": "10.242.0.60/24", "gateway": "10.242.0.1", "interface": 1}]
    assert "10.242.0.60/24" in cni.in_ns(ns2, "ip", "-o", "-4", "addr", "show", "net1").stdout
    assert ping(cni, ns2, "10.242.0.50")


def test_chained_after_another_plugin_keeps_its_result(host: Host, cni: Cni) -> None:
    host.tether("network", "create", "--subnet", "10.243.0.0/24", "chainnet")
    ns = cni.netns()
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "lo", "sandbox": ns}],
            "ips": [{"address": "127.0.0.1/8", "interface": 0}], "routes": [], "dns": {"nameservers": ["192.0.2.53"]}}
    r = cni.add(netconf("chainnet", prevResult=prev), "chain-one", ns)
    assert [i["name"] for i in r["interfaces"]][:1] == ["lo"] and r["interfaces"][2]["name"] == "eth0"
    assert r["ips"][0] == prev["ips"][0] and r["ips"][1]["interface"] == 2
    assert r["dns"] == {"nameservers": ["192.0.2.53"]}


# ---------------------------------------------------------------------------- published ports
def test_port_mappings_are_published_on_the_host(host: Host, cni: Cni) -> None:
    host.tether("network", "create", "--subnet", "10.244.0.0/24", "pubnet")
    ns = cni.netns()
    ports = [{"hostPort": 18080, "containerPort": 8000, "protocol": "tcp"}]
    r = cni.add(netconf("pubnet", runtimeConfig={"portMappings": ports}), "pub-one", ns)
    cni.serve(ns, "python3", "-c", TCP_WHO, "8000")
    # from the host's own namespace, on loopback: the server sees a connection arrive
    seen = wait_tcp(host, "127.0.0.1", 18080)
    assert seen and not seen.startswith("FAIL"), seen
    assert ports[0]["hostPort"] == 18080 and address_of(r).startswith("10.244.0.")
    # a second attachment asking for the same host port is refused, naming the holder
    clash = cni.call("ADD", netconf("pubnet", runtimeConfig={"portMappings": ports}), "pub-two", cni.netns())
    assert clash.rc == 1 and clash.out is not None and clash.out["code"] == 999 and "18080" in clash.out["msg"]
    # DEL unpublishes
    assert cni.call("DEL", netconf("pubnet"), "pub-one", ns).rc == 0
    after = host.in_host("python3", "-c", TCP_ASK, "127.0.0.1", "18080", check=False)
    assert after.returncode != 0


# ---------------------------------------------------------------------------- CHECK, DEL, GC
def test_check_passes_then_fails_when_the_interface_is_gone(host: Host, cni: Cni) -> None:
    host.tether("network", "create", "--subnet", "10.245.0.0/24", "chknet")
    ns = cni.netns()
    result = cni.add(netconf("chknet"), "chk-one", ns)
    ok = cni.call("CHECK", netconf("chknet", prevResult=result), "chk-one", ns)
    assert (ok.rc, ok.out) == (0, None)
    sh("ip", "-n", os.path.basename(ns), "link", "del", "eth0")
    bad = cni.call("CHECK", netconf("chknet", prevResult=result), "chk-one", ns)
    assert bad.rc == 1 and bad.out is not None
    assert bad.out["code"] == 999 and "eth0" in bad.out["msg"]
    # CHECK needs cniVersion 0.4.0 or later
    old = cni.call("CHECK", netconf("chknet", "0.3.1", prevResult=result), "chk-one", ns)
    assert old.out is not None and old.out["code"] == 1


def test_del_is_idempotent(host: Host, cni: Cni) -> None:
    host.tether("network", "create", "--subnet", "10.246.0.0/24", "delnet")
    ns1, ns2 = cni.netns(), cni.netns()
    cni.add(netconf("delnet"), "del-one", ns1)
    cni.add(netconf("delnet"), "del-two", ns2)
    assert len(host_veths(host)) == 2
    for _ in range(2):  # DEL, and DEL again
        assert cni.call("DEL", netconf("delnet"), "del-one", ns1).rc == 0
    assert [e for e in endpoints(host, "delnet")] == ["cni-del-two"]
    assert "eth0" not in cni.in_ns(ns1, "ip", "-o", "link").stdout
    # the runtime deleted the namespace first: DEL still cleans up (twice, without CNI_NETNS too)
    sh("ip", "netns", "del", os.path.basename(ns2))
    assert cni.call("DEL", netconf("delnet"), "del-two", ns2).rc == 0
    assert cni.call("DEL", netconf("delnet"), "del-two").rc == 0
    assert endpoints(host, "delnet") == {}
    assert host_veths(host) == []
    # never added, unknown network: still success
    assert cni.call("DEL", netconf("delnet"), "never-added", ns1).rc == 0
    assert cni.call("DEL", netconf("nosuchnet"), "del-one", ns1).rc == 0
    # and the addresses are free again
    assert address_of(cni.add(netconf("delnet", runtimeConfig={"ips": ["10.246.0.2"]}), "del-three", ns1)) == "10.246.0.2"


def test_gc_removes_attachments_not_in_the_valid_list(host: Host, cni: Cni) -> None:
    host.tether("network", "create", "--subnet", "10.247.0.0/24", "gcnet")
    nss = [cni.netns() for _ in range(3)]
    for i, ns in enumerate(nss):
        cni.add(netconf("gcnet", "1.1.0"), f"gc-{i}", ns)
    host.tether("run", "-d", "--name", "keepme", "--net", "gcnet", "--", "sleep", "600")
    valid = [{"containerID": "gc-0", "ifname": "eth0"}, {"containerID": "gc-2", "ifname": "eth0"}]
    r = cni.call("GC", netconf("gcnet", "1.1.0", **{"cni.dev/valid-attachments": valid}))
    assert (r.rc, r.out) == (0, None)
    assert sorted(endpoints(host, "gcnet")) == ["cni-gc-0", "cni-gc-2", "keepme"]  # tether's own untouched
    assert "eth0" not in cni.in_ns(nss[1], "ip", "-o", "link").stdout
    assert ping(cni, nss[0], address_of({"ips": [{"address": endpoints(host, "gcnet")["cni-gc-2"]["address"]}]}))
    # GC needs cniVersion 1.1.0; without any list it removes nothing
    assert cni.call("GC", netconf("gcnet", "1.0.0", **{"cni.dev/valid-attachments": []})).out["code"] == 1  # type: ignore[index]
    assert cni.call("GC", netconf("gcnet", "1.1.0")).rc == 0
    assert sorted(endpoints(host, "gcnet")) == ["cni-gc-0", "cni-gc-2", "keepme"]


# ---------------------------------------------------------------------------- STATUS and errors
def test_add_twice_and_a_daemon_restart_in_the_middle(host: Host, cni: Cni) -> None:
    host.tether("network", "create", "--subnet", "10.247.0.0/24", "rsnet")
    ns1, ns2, ns3 = cni.netns(), cni.netns(), cni.netns()
    r1 = cni.add(netconf("rsnet"), "rs-1", ns1)
    assert cni.add(netconf("rsnet"), "rs-1", ns1) == r1  # ADD again: the same result, nothing new
    assert len(endpoints(host, "rsnet")) == 1
    a2 = address_of(cni.add(netconf("rsnet"), "rs-2", ns2))
    assert cni.add(netconf("rsnet"), "rs-3", ns3)["ips"]
    # the daemon dies; meanwhile the runtime deletes rs-3's namespace (its DEL would fail)
    host.kill_daemon()
    assert ping(cni, ns1, a2)  # the data plane does not need the daemon
    sh("ip", "netns", "del", os.path.basename(ns3))
    host.start_daemon()
    assert cni.call("CHECK", netconf("rsnet", prevResult=r1), "rs-1", ns1).rc == 0
    assert ping(cni, ns1, a2)
    assert sorted(endpoints(host, "rsnet")) == ["cni-rs-1", "cni-rs-2"]  # rs-3 reconciled away
    assert cni.call("DEL", netconf("rsnet"), "rs-3", ns3).rc == 0  # and its late DEL is fine
    for cid, ns in (("rs-1", ns1), ("rs-2", ns2)):
        assert cni.call("DEL", netconf("rsnet"), cid, ns).rc == 0
    assert endpoints(host, "rsnet") == {} and host_veths(host) == []


def test_version(host: Host, cni: Cni) -> None:
    r = cni.call("VERSION", {"cniVersion": "1.0.0"})
    assert r.rc == 0 and r.out == {"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


def test_errors_are_one_line_with_the_spec_codes(host: Host, cni: Cni) -> None:
    host.tether("network", "create", "--subnet", "10.248.0.0/30", "tiny")  # room for one container
    ns = cni.netns()
    cases = [
        (cni.call("ADD", netconf("nosuch"), "e-1", ns), 7, "network 'nosuch' not found"),
        (cni.call("ADD", "{not json", "e-1", ns), 6, "not valid JSON"),
        (cni.call("ADD", netconf("tiny"), "e-1", ""), 4, "CNI_NETNS"),
        (cni.call("ADD", netconf("tiny"), "e-1", ns + "-gone"), 4, "does not exist"),
        (cni.call("ADD", netconf("tiny", "0.2.0"), "e-1", ns), 1, "cniVersion 0.2.0"),
        (cni.call("ADD", netconf("tiny", ipam={"type": "host-local"}), "e-1", ns), 2, '"ipam"'),
        (cni.call("ADD", netconf("tiny"), "e-1", ns, args="IP=10.99.0.5"), 7, "outside network"),
        (cni.call("ADD", netconf("tiny", runtimeConfig={"mac": "zz"}), "e-1", ns), 7, "invalid mac"),
    ]
    for call, code, text in cases:
        assert call.rc == 1 and call.out is not None, call
        assert call.out["code"] == code and text in call.out["msg"], call.out
    assert cni.add(netconf("tiny"), "e-1", ns)["ips"][0]["address"] == "10.248.0.2/30"
    full = cni.call("ADD", netconf("tiny"), "e-2", cni.netns())
    assert full.out is not None and full.out["code"] == 999 and "no free address" in full.out["msg"]
    # nothing half-made is left by the failures
    assert list(endpoints(host, "tiny")) == ["cni-e-1"] and len(host_veths(host)) == 1


def test_status_and_a_stopped_daemon(host: Host, cni: Cni) -> None:
    host.tether("network", "create", "--subnet", "10.249.0.0/24", "stnet")
    ns = cni.netns()
    up = cni.call("STATUS", netconf("stnet", "1.1.0"))
    assert (up.rc, up.out) == (0, None)
    assert cni.call("STATUS", netconf("stnet", "1.0.0")).out["code"] == 1  # type: ignore[index]
    host.kill_daemon()
    down = cni.call("STATUS", netconf("stnet", "1.1.0"))
    assert down.rc == 1 and down.out is not None and down.out["code"] == 50
    assert host.socket in down.out["msg"]
    for command in ("ADD", "DEL", "CHECK"):
        r = cni.call(command, netconf("stnet", prevResult={"interfaces": [{"name": "eth0"}]}), "st-1", ns)
        assert r.rc == 1 and r.out is not None and r.out["code"] == 11, (command, r)
        assert r.out["msg"].startswith("no tether daemon answers on") or "failed" in r.out["msg"]
    # the plugin never starts a daemon of its own
    time.sleep(0.3)
    probe = subprocess.run([*host.enter(), "python3", "-c",
                            f"import socket; s=socket.socket(socket.AF_UNIX); s.connect({host.socket!r})"],
                           capture_output=True, text=True, check=False)
    assert probe.returncode != 0
    # a socket path from the config wins over TETHER_SOCKET
    other = cni.call("STATUS", netconf("stnet", "1.1.0", socket="/nonexistent/t.sock"))
    assert other.out is not None and "/nonexistent/t.sock" in other.out["msg"]


# ---------------------------------------------------------------------------- dual stack
def ping6(cni: Cni, netns: str, address: str) -> bool:
    return cni.in_ns(netns, "ping", "-6", "-c1", "-W2", address, check=False).returncode == 0


def test_dual_stack_add_check_del_with_real_packets(host: Host, cni: Cni) -> None:
    host.tether("network", "create", "--ipv6", "--subnet", "10.241.6.0/24", "--subnet", "fd00:241:6::/64", "dual")
    ns1, ns2 = cni.netns(), cni.netns()
    r1 = cni.add(netconf("dual"), "ds-one", ns1)
    # both addresses on the container's interface, each with its gateway; both default routes
    assert r1["ips"] == [{"address": "10.241.6.2/24", "gateway": "10.241.6.1", "interface": 1},
                         {"address": "fd00:241:6::2/64", "gateway": "fd00:241:6::1", "interface": 1}]
    assert r1["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.241.6.1"}, {"dst": "::/0", "gw": "fd00:241:6::1"}]
    rc = {"ips": ["fd00:241:6::50/64", "10.241.6.50/24"]}  # the ips capability, one address per family
    r2 = cni.add(netconf("dual", runtimeConfig=rc), "ds-two", ns2)
    assert [i["address"] for i in r2["ips"]] == ["10.241.6.50/24", "fd00:241:6::50/64"]
    inside = cni.in_ns(ns1, "ip", "-6", "-o", "addr", "show", "dev", "eth0").stdout
    assert "fd00:241:6::2/64" in inside and "tentative" not in inside
    assert "via fd00:241:6::1 dev eth0" in cni.in_ns(ns1, "ip", "-6", "route", "show", "default").stdout
    # real packets over v6: namespace to namespace both ways, and to the host's v6 gateway
    assert ping6(cni, ns1, "fd00:241:6::50") and ping6(cni, ns2, "fd00:241:6::2")
    assert ping6(cni, ns1, "fd00:241:6::1")
    assert ping(cni, ns1, "10.241.6.50")  # and v4 beside it
    # CHECK verifies both families: it passes, then names the v6 address or route gone
    assert cni.call("CHECK", netconf("dual", prevResult=r1), "ds-one", ns1).rc == 0
    cni.in_ns(ns1, "ip", "-6", "route", "del", "default")
    bad = cni.call("CHECK", netconf("dual", prevResult=r1), "ds-one", ns1)
    assert bad.rc == 1 and bad.out is not None and "IPv6 default route via fd00:241:6::1" in bad.out["msg"]
    cni.in_ns(ns1, "ip", "-6", "addr", "del", "fd00:241:6::2/64", "dev", "eth0")
    bad = cni.call("CHECK", netconf("dual", prevResult=r1), "ds-one", ns1)
    assert bad.rc == 1 and bad.out is not None and "address fd00:241:6::2/64 is missing on eth0" in bad.out["msg"]
    # DEL frees both leases: the same addresses can be asked for again at once
    assert cni.call("DEL", netconf("dual"), "ds-two", ns2).rc == 0
    assert cni.call("DEL", netconf("dual"), "ds-one", ns1).rc == 0
    assert endpoints(host, "dual") == {} and host_veths(host) == []
    again = cni.add(netconf("dual", runtimeConfig=rc), "ds-three", cni.netns())
    assert [i["address"] for i in again["ips"]] == ["10.241.6.50/24", "fd00:241:6::50/64"]
    eps = endpoints(host, "dual")
    assert [(e["address"], e["address6"]) for e in eps.values()] == [("10.241.6.50/24", "fd00:241:6::50/64")]


def test_dual_stack_requests_and_bad_input(host: Host, cni: Cni) -> None:
    host.tether("network", "create", "--subnet", "10.241.7.0/24", "v4only")
    host.tether("network", "create", "--ipv6", "--subnet", "10.241.8.0/24", "--subnet", "fd00:241:8::/64", "dual")
    ns = cni.netns()
    before = host.snapshot()
    cases = [
        (cni.call("ADD", netconf("v4only", runtimeConfig={"ips": ["fd00:241:7::5"]}), "b-1", ns), 7,
         "IPv6 address fd00:241:7::5 asked for on network 'v4only', which has no IPv6 subnet"),
        (cni.call("ADD", netconf("dual", runtimeConfig={"ips": ["fd00:241:8::5", "fd00:241:8::6"]}), "b-1", ns), 7,
         "two IPv6 addresses"),
        (cni.call("ADD", netconf("dual"), "b-1", ns, args="IP=10.241.8.5,10.241.8.6"), 7, "two IPv4 addresses"),
        (cni.call("ADD", netconf("dual", runtimeConfig={"ips": ["fd00:999::5"]}), "b-1", ns), 7, "outside network"),
        (cni.call("ADD", netconf("dual", runtimeConfig={"ips": ["fd00:241:8::zz"]}), "b-1", ns), 7, "IPv6 address"),
        (cni.call("ADD", netconf("v4only", runtimeConfig={"portMappings": [
            {"hostPort": 18093, "containerPort": 80, "protocol": "tcp", "hostIP": "::1"}]}), "b-1", ns), 7,
         "has no IPv6 subnet"),
    ]
    for call, code, text in cases:
        assert call.rc == 1 and call.out is not None, call
        assert call.out["code"] == code and text in call.out["msg"], call.out
    assert host.snapshot() == before  # nothing half-made
    # CNI_ARGS may list one address per family
    r = cni.add(netconf("dual"), "b-2", ns, args="IgnoreUnknown=1;IP=10.241.8.9,fd00:241:8::9")
    assert [i["address"] for i in r["ips"]] == ["10.241.8.9/24", "fd00:241:8::9/64"]


@pytest.mark.parametrize("host_ip", ["::1", "fd00:241:9::1"])  # loopback, and a global v6 address of the host
def test_dual_stack_port_mapping_on_a_v6_host_address(host: Host, cni: Cni, host_ip: str) -> None:
    host.tether("network", "create", "--ipv6", "--subnet", "10.241.9.0/24", "--subnet", "fd00:241:9::/64", "pub6")
    ns = cni.netns()
    ports = [{"hostPort": 18094, "containerPort": 8000, "protocol": "tcp", "hostIP": host_ip}]
    r = cni.add(netconf("pub6", runtimeConfig={"portMappings": ports}), "p6-one", ns)
    assert address_of(r) == "fd00:241:9::2"
    published = host.inspect("cni-p6-one")["ports"]
    assert [(p["host_ip"], p["host_port"]) for p in published] == [(host_ip, 18094)]
    cni.serve(ns, "python3", "-c", TCP_WHO6, "8000")
    seen = wait_tcp(host, host_ip, 18094)
    assert seen and not seen.startswith("FAIL"), seen
    assert cni.call("DEL", netconf("pub6"), "p6-one", ns).rc == 0
    assert host.in_host("python3", "-c", TCP_ASK, host_ip, "18094", check=False).returncode != 0


# ---------------------------------------------------------------------------- a real runtime
PODMAN_ULIMITS = ["nofile=20000:20000", "nproc=4096:4096"]


@dataclass
class Podman:
    """Debian's Podman with its CNI backend, every directory of its own under ``base``,
    run inside the test host's namespace (it makes the container namespaces itself)."""

    host: Host
    base: Path

    def __call__(self, *args: str, check: bool = True, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        cmd = [*self.host.enter(), "podman", "--root", str(self.base / "root"), "--runroot", str(self.base / "runroot"),
               "--tmpdir", str(self.base / "tmp"), "--storage-driver", "vfs", *args]
        env = {**os.environ, "CONTAINERS_CONF": str(self.base / "containers.conf")}
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({r.returncode}): {r.stderr}{r.stdout}")
        return r

    def ip(self, name: str, network: str) -> str:
        template = f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}'
        return self("inspect", "-f", template, name).stdout.strip()


def build_podman(host: Host, base: Path, network: str) -> Podman:
    plugins, confdir = base / "plugins", base / "net.d"
    for d in (plugins, confdir, base / "tmp"):
        d.mkdir(parents=True)
    # what `pip install` makes of [project.scripts] tether-cni, named as the config's type
    plugin = plugins / "tether"
    plugin.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
                      "from tether.cni import main\nsys.exit(main())\n")
    plugin.chmod(0o755)
    (base / "containers.conf").write_text(
        '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
        f'[network]\nnetwork_backend = "cni"\ncni_plugin_dirs = ["{plugins}", "/usr/lib/cni"]\n'
        f'network_config_dir = "{confdir}"\n'
        f"[containers]\ndefault_ulimits = {json.dumps(PODMAN_ULIMITS)}\n"
    )
    (confdir / f"{network}.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0",
        "name": network,
        "plugins": [{"type": "tether", "network": network, "socket": host.socket,
                     "capabilities": {"portMappings": True, "ips": True, "mac": True, "aliases": True}}],
    }, indent=2))
    podman = Podman(host, base)
    podman("import", str(busybox_image(base, "hello from podman\n")), "localhost/tetherbb:latest")
    return podman


def test_podman_cni_backend(host: Host) -> None:
    if shutil.which("podman") is None or shutil.which("runc") is None or not os.path.exists("/bin/busybox"):
        pytest.skip("needs podman, runc and busybox-static (apt-get install podman runc busybox-static)")
    network = f"{host.prefix}pod"
    host.tether("network", "create", "--subnet", "10.250.0.0/24", network)
    base = Path(tempfile.mkdtemp(prefix=f"{host.prefix}podman-"))
    podman = build_podman(host, base, network)
    sandboxes: list[str] = []
    try:
        run = ["run", "-d", "--network", network, "--cap-add", "NET_RAW"]
        podman(*run, "--name", "pa", "localhost/tetherbb", "sleep", "600")
        podman(*run, "--name", "pb", "--network-alias", "pbee", "localhost/tetherbb", "sleep", "600")
        podman(*run, "--name", "pweb", "-p", "18090:8000", "localhost/tetherbb", "httpd", "-f", "-p", "8000", "-h", "/www")
        for name in ("pa", "pb", "pweb"):
            sandboxes.append(podman("inspect", "-f", "{{.NetworkSettings.SandboxKey}}", name).stdout.strip())
        a, b = podman.ip("pa", network), podman.ip("pb", network)
        assert a.startswith("10.250.0.") and b.startswith("10.250.0.") and a != b

        # podman containers reach each other; a `tether run` container reaches them
        r = podman("exec", "pa", "ping", "-c1", "-W2", b, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        r = host.tether("run", "--rm", "--net", network, "--", "ping", "-c1", "-W2", a, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        # Podman's network alias arrives through the aliases capability
        r = host.tether("run", "--rm", "--net", network, "--", "python3", "-c", RESOLVE, "pbee")
        assert r.stdout.strip() == b
        # podman run -p goes through tether's port map: reachable from the host namespace
        got = ""
        deadline = time.monotonic() + 10
        fetch = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:18090/index.html', timeout=2).read().decode())"
        while time.monotonic() < deadline and "hello from podman" not in got:
            got = host.in_host("python3", "-c", fetch, check=False).stdout
            time.sleep(0.1)
        assert "hello from podman" in got
        assert set(endpoints(host, network)) == {f"cni-{podman('inspect', '-f', '{{.Id}}', n).stdout.strip()}"[:63]
                                                 for n in ("pa", "pb", "pweb")}

        # podman rm leaves nothing behind: no endpoint, no veth, no namespace, no CNI cache entry
        podman("rm", "-f", "-t", "0", "pa", "pb", "pweb")
        assert endpoints(host, network) == {}
        assert host_veths(host) == []
        assert not [s for s in sandboxes if os.path.exists(s)]
        assert not [f for f in os.listdir("/var/lib/cni/results") if f.startswith(network)] \
            if os.path.isdir("/var/lib/cni/results") else True
        assert host.in_host("python3", "-c", TCP_ASK, "127.0.0.1", "18090", check=False).returncode != 0
    finally:
        podman("rm", "-a", "-f", "-t", "0", check=False)
        for sandbox in sandboxes:
            if os.path.exists(sandbox):
                sh("umount", sandbox, check=False)
                try:
                    os.unlink(sandbox)
                except OSError:
                    pass
        podman("rmi", "-a", "-f", check=False)
        sh("umount", "-R", str(base / "root"), check=False)
        shutil.rmtree(base, ignore_errors=True)



def test_podman_cni_backend_dual_stack(host: Host) -> None:
    if shutil.which("podman") is None or shutil.which("runc") is None or not os.path.exists("/bin/busybox"):
        pytest.skip("needs podman, runc and busybox-static (apt-get install podman runc busybox-static)")
    network = f"{host.prefix}pod6"
    host.tether("network", "create", "--ipv6", "--subnet", "10.250.6.0/24", "--subnet", "fd00:250:6::/64", network)
    base = Path(tempfile.mkdtemp(prefix=f"{host.prefix}podman-"))
    podman = build_podman(host, base, network)
    try:
        run = ["run", "-d", "--network", network, "--cap-add", "NET_RAW"]
        podman(*run, "--name", "pa", "localhost/tetherbb", "sleep", "600")
        # --ip/--ip6 arrive through the ips capability, one address per family
        podman(*run, "--name", "pb", "--ip", "10.250.6.20", "--ip6", "fd00:250:6::20", "localhost/tetherbb",
               "sleep", "600")
        template = f'{{{{(index .NetworkSettings.Networks "{network}").GlobalIPv6Address}}}}'
        a6 = podman("inspect", "-f", template, "pa").stdout.strip()
        assert a6.startswith("fd00:250:6::") and podman.ip("pb", network) == "10.250.6.20"
        assert podman("inspect", "-f", template, "pb").stdout.strip() == "fd00:250:6::20"
        # ping -6 both ways between Podman's containers, and to the host's v6 gateway
        for name, peer in (("pa", "fd00:250:6::20"), ("pb", a6), ("pa", "fd00:250:6::1")):
            r = podman("exec", name, "ping", "-6", "-c1", "-W2", peer, check=False)
            assert r.returncode == 0, (name, peer, r.stdout + r.stderr)
        # a `tether run` container on the same network reaches them over v6 too
        r = host.tether("run", "--rm", "--net", network, "--", "ping", "-6", "-c1", "-W2", a6, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        eps = endpoints(host, network)
        assert sorted(e["address6"] for e in eps.values()) == sorted([f"{a6}/64", "fd00:250:6::20/64"])
        # podman rm frees both leases of each
        podman("rm", "-f", "-t", "0", "pa", "pb")
        assert endpoints(host, network) == {} and host_veths(host) == []
        podman(*run, "--name", "pc", "--ip", "10.250.6.20", "--ip6", "fd00:250:6::20", "localhost/tetherbb",
               "sleep", "600")
        assert podman("inspect", "-f", template, "pc").stdout.strip() == "fd00:250:6::20"
    finally:
        podman("rm", "-a", "-f", "-t", "0", check=False)
        podman("rmi", "-a", "-f", check=False)
        sh("umount", "-R", str(base / "root"), check=False)
        shutil.rmtree(base, ignore_errors=True)
