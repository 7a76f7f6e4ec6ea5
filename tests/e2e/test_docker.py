"""A real Docker engine uses tether as its network and IPAM driver.

Debian's dockerd runs inside the test host's namespace, confined as ``dockerkit`` says;
the host's tether daemon serves the plugin socket under a per-test name, which is the
driver name Docker is given. The image is a busybox rootfs imported offline.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Host, sh
from dockerkit import Docker, docker_engine
from probes import TCP_ASK

PAGE = "hello from docker\n"


@pytest.fixture
def docker(bare_host: Host) -> Iterator[Docker]:
    with docker_engine(bare_host, PAGE) as d:
        yield d


def endpoints(host: Host, network: str) -> list[str]:
    return sorted(host.json("network", "inspect", network)[0].get("containers", {}))


def host_veths(host: Host) -> list[str]:
    out = host.in_host("ip", "-o", "link", "show", "type", "veth").stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def fetch(host: Host, port: int) -> str:
    ask = f"import urllib.request as u; print(u.urlopen('http://127.0.0.1:{port}/index.html', timeout=2).read().decode())"
    got = ""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and PAGE not in got:
        got = host.in_host("python3", "-c", ask, check=False).stdout
        time.sleep(0.1)
    return got


def fails(d: Docker, *args: str, says: str) -> None:
    """A docker command refused in one line (besides the CLI's hints) that says ``says``."""
    r = d(*args, check=False)
    assert r.returncode != 0
    line = [x for x in r.stderr.splitlines() if x.strip() and not x.startswith(("Run '", "See '", "WARNING:"))]
    assert len(line) == 1 and says in line[0] and "Traceback" not in r.stderr, r.stderr


def test_docker_containers_on_a_tether_network(bare_host: Host, docker: Docker) -> None:
    host, d = bare_host, docker
    net = f"{host.prefix}dn"
    d("network", "create", "-d", d.plugin, "--ipam-driver", d.plugin, "--subnet", "10.252.0.0/24",
      "-o", f"tether.network={net}", net)
    tnet = host.json("network", "inspect", net)[0]
    assert tnet["subnet"] == "10.252.0.0/24" and tnet["driver"] == "bridge"

    d("run", "-d", "--name", "da", "--net", net, "tbb", "sleep", "600")
    d("run", "-d", "--name", "db", "--net", net, "tbb", "sleep", "600")
    a, b = d.ip("da"), d.ip("db")
    assert a.startswith("10.252.0.") and b.startswith("10.252.0.") and a != b
    # one interface besides lo, the default route via tether's bridge: no extra gateway NIC
    links = d("exec", "da", "ip", "-o", "link").stdout
    assert [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()] == ["lo", "eth0"]
    assert "default via 10.252.0.1 dev eth0" in d("exec", "da", "ip", "route").stdout

    # each Docker endpoint's namespace is visible to `ip netns` under tether's name for it
    eps = host.json("network", "inspect", net)[0]["containers"]
    name_a = next(n for n, e in eps.items() if e["address"] == f"{a}/24")
    assert name_a.startswith("docker-") and host.prefix + name_a in sh("ip", "netns", "list").stdout
    assert {c["name"]: c["state"] for c in host.json("ps", "--format", "json")}[name_a] == "external"
    assert f"{a}/24" in sh("ip", "netns", "exec", host.prefix + name_a, "ip", "-o", "-4", "addr").stdout

    # Docker containers reach each other, and a `tether run` container reaches them
    r = d("exec", "da", "ping", "-c1", "-W2", b, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    r = host.tether("run", "--rm", "--net", net, "--", "ping", "-c1", "-W2", a, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    # ... and the other way, with one IPAM: the tether container's address is not Docker's
    host.tether("run", "-d", "--name", "tr", "--net", net, "sleep", "600")
    t = host.inspect("tr")["networks"][net]["address"]
    assert t not in (a, b)
    r = d("exec", "db", "ping", "-c1", "-W2", t, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    # the host reaches a container's own address (no published port needed)
    assert host.in_host("ping", "-c1", "-W2", a, check=False).returncode == 0

    # docker run -p publishes through tether's port map
    d("run", "-d", "--name", "dweb", "--net", net, "-p", "18191:8000", "tbb", "httpd", "-f", "-p", "8000", "-h", "/www")
    assert PAGE in fetch(host, 18191)
    assert len(endpoints(host, net)) == 4  # da, db, dweb and tr

    # docker rm leaves nothing: no endpoint, no veth, no lease, no published port
    d("rm", "-f", "da", "db", "dweb")
    assert endpoints(host, net) == ["tr"]
    assert not os.path.lexists(f"/var/run/netns/{host.prefix}{name_a}")
    assert len(host_veths(host)) == 1  # tr's
    assert host.in_host("python3", "-c", TCP_ASK, "127.0.0.1", "18191", check=False).returncode != 0

    # restarting dockerd: the network is still there and works
    d.stop()
    d.start()
    r = d("run", "--rm", "--net", net, "tbb", "ping", "-c1", "-W2", t, check=False)
    assert r.returncode == 0, r.stdout + r.stderr

    # the tether daemon killed while Docker's containers run: they keep their network, and
    # the restarted daemon serves Docker again (its veths carry tether's mark, so a restart
    # would sweep one no record owns)
    d("run", "-d", "--name", "dc", "--net", net, "tbb", "sleep", "600")
    c = d.ip("dc")
    veth = next(v for v in host_veths(host) if v != host.inspect("tr")["networks"][net]["host_ifname"])
    assert host.in_host("ip", "-o", "link", "show", veth).stdout.count("alias tether:") == 1
    host.kill_daemon(signal.SIGKILL)
    host.start_daemon()
    r = d("exec", "dc", "ping", "-c1", "-W2", t, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    r = d("run", "--rm", "--net", net, "tbb", "ping", "-c1", "-W2", c, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    d("rm", "-f", "dc")
    assert endpoints(host, net) == ["tr"]

    # docker network rm: a network tether made for Docker goes; one it adopted stays
    host.tether("rm", "-f", "tr")
    d("network", "rm", net)
    assert host.tether("network", "inspect", net, check=False).returncode != 0
    assert host_veths(host) == []
    assert host.in_host("ip", "-o", "link", "show", tnet["bridge"], check=False).returncode != 0


def test_docker_adopts_a_tether_network_and_tether_ipam_picks_subnets(bare_host: Host, docker: Docker) -> None:
    host, d = bare_host, docker
    net = f"{host.prefix}shared"
    host.tether("network", "create", "--subnet", "10.253.0.0/24", net)
    host.tether("run", "-d", "--name", "tr", "--net", net, "sleep", "600")
    t = host.inspect("tr")["networks"][net]["address"]
    # the same tether network, seen from Docker (its subnet and gateway come from tether)
    d("network", "create", "-d", d.plugin, "--ipam-driver", d.plugin, "--subnet", "10.253.0.0/24",
      "-o", f"tether.network={net}", "dshared")
    assert "10.253.0.0/24" in d("network", "inspect", "-f", "{{json .IPAM.Config}}", "dshared").stdout
    r = d("run", "--rm", "--net", "dshared", "tbb", "ping", "-c1", "-W2", t, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    d("network", "rm", "dshared")
    assert host.json("network", "inspect", net)[0]["subnet"] == "10.253.0.0/24"  # adopted: kept

    # --internal: a tether internal network; the container gets no default route and no
    # second NIC to reach out with
    d("network", "create", "-d", d.plugin, "--ipam-driver", d.plugin, "--internal", "--subnet", "10.253.1.0/24",
      "-o", f"tether.network={net}i", "dint")
    assert host.json("network", "inspect", f"{net}i")[0]["internal"] is True
    d("run", "-d", "--name", "di", "--net", "dint", "tbb", "sleep", "600")
    assert "default" not in d("exec", "di", "ip", "route").stdout
    links = d("exec", "di", "ip", "-o", "link").stdout
    assert [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()] == ["lo", "eth0"]
    d("rm", "-f", "di")
    d("network", "rm", "dint")

    # no --subnet: tether's IPAM picks one that overlaps nothing
    d("network", "create", "-d", d.plugin, "--ipam-driver", d.plugin, "dauto")
    subnet = d("network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}", "dauto").stdout.strip()
    nid = d("network", "inspect", "-f", "{{.Id}}", "dauto").stdout.strip()
    assert host.json("network", "inspect", f"docker-{nid[:12]}")[0]["subnet"] == subnet != "10.253.0.0/24"
    d("network", "rm", "dauto")
    assert host.tether("network", "inspect", f"docker-{nid[:12]}", check=False).returncode != 0


def test_docker_errors_are_one_line_and_change_nothing(bare_host: Host, docker: Docker) -> None:
    host, d = bare_host, docker
    net = f"{host.prefix}e"
    d("network", "create", "-d", d.plugin, "--ipam-driver", d.plugin, "--subnet", "10.254.0.0/30",
      "-o", f"tether.network={net}", net)
    before = host.snapshot()
    fails(d, "network", "create", "-d", d.plugin, "--ipam-driver", d.plugin, "--subnet", "10.254.0.0/24", "x1",
          says="overlaps network")
    fails(d, "network", "create", "-d", d.plugin, "--ipam-driver", d.plugin, "-o", "colour=blue", "x2",
          says="unknown option -o colour")
    fails(d, "network", "create", "-d", d.plugin, "--ipam-driver", d.plugin, "--ipv6", "--subnet", "fd00::/40", "x3",
          says="is too large for one network")
    fails(d, "network", "create", "-d", d.plugin, "--ipam-driver", d.plugin, "-o", "tether.driver=magic", "x4",
          says="use bridge, overlay or macvlan")
    fails(d, "network", "create", "-d", d.plugin, "--ipam-driver", d.plugin, "-o", "tether.mtu=big", "x6",
          says="invalid mtu")
    fails(d, "network", "create", "-d", d.plugin, "--ipam-driver", d.plugin, "--subnet", "10.254.1.0/33", "x7",
          says="invalid")
    assert host.snapshot() == before
    # a /30 holds one container: the second gets tether's "no free address" line
    d("run", "-d", "--name", "one", "--net", net, "tbb", "sleep", "600")
    fails(d, "run", "-d", "--name", "two", "--net", net, "tbb", "sleep", "600", says="no free address left")
    d("rm", "-f", "one")
    d("rm", "-f", "two", check=False)
    assert host.snapshot() == before

    # the tether network removed behind Docker's back: a run says so, in one line
    gone = f"{host.prefix}gone"
    d("network", "create", "-d", d.plugin, "--ipam-driver", d.plugin, "--subnet", "10.254.2.0/24",
      "-o", f"tether.network={gone}", gone)
    host.tether("network", "rm", gone)
    # (-d: an attached `docker run` whose start fails may add the CLI's own "context
    # canceled" line, a race inside the docker client)
    fails(d, "run", "-d", "--name", "g1", "--net", gone, "tbb", "true", says="no tether network has subnet 10.254.2.0/24")
    d("rm", "-f", "g1", check=False)
    d("network", "rm", gone)

    # the daemon not running: dockerd reports that the plugin cannot be found
    host.kill_daemon(signal.SIGTERM)
    r = d("network", "create", "-d", d.plugin, "--ipam-driver", d.plugin, "x5", check=False, timeout=120)
    assert r.returncode != 0 and d.plugin in r.stderr and "Traceback" not in r.stderr
    host.start_daemon()
    d("network", "rm", net)


def test_a_driver_name_is_served_once(bare_host: Host, docker: Docker, tmp_path: Path) -> None:
    """A second daemon asked for a driver name another daemon serves: one line, exit 1."""
    other = f"{bare_host.prefix[:-1]}o"
    sh("ip", "netns", "add", other)
    bare_host.extra_netns.append(other)  # deleted by the host fixture, even on failure
    r = sh("nsenter", f"--net=/var/run/netns/{other}", "--", sys.executable, "-m", "tether.cli", "daemon",
           "--state-dir", str(tmp_path / "state"), "--socket", str(tmp_path / "api.sock"),
           "--netns-prefix", f"{other}-", "--docker-plugin", docker.plugin, check=False, timeout=60)
    lines = [x for x in r.stderr.splitlines() if x.strip() and " INFO " not in x and " WARNING " not in x]
    assert r.returncode != 0 and len(lines) == 1 and "already serves" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    # and the first daemon still serves Docker
    docker("network", "create", "-d", docker.plugin, "--ipam-driver", docker.plugin, "still")
    docker("network", "rm", "still")


def test_docker_flags_a_user_reaches_for(bare_host: Host, docker: Docker) -> None:
    """--gateway, --ip-range, run --ip and --mac-address, network connect/disconnect."""
    host, d = bare_host, docker
    net = f"{host.prefix}fl"
    d("network", "create", "-d", d.plugin, "--ipam-driver", d.plugin, "--subnet", "10.249.0.0/24",
      "--gateway", "10.249.0.254", "--ip-range", "10.249.0.128/28", "-o", f"tether.network={net}", net)
    tnet = host.json("network", "inspect", net)[0]
    assert tnet["gateway"] == "10.249.0.254" and tnet["ip_range"] == "10.249.0.128/28"
    d("run", "-d", "--name", "auto", "--net", net, "tbb", "sleep", "600")
    auto = d("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "auto").stdout.strip()
    assert ipaddress.ip_address(auto) in ipaddress.ip_network("10.249.0.128/28"), auto  # from --ip-range
    assert "default via 10.249.0.254 dev eth0" in d("exec", "auto", "ip", "route").stdout
    d("run", "-d", "--name", "fixed", "--net", net, "--ip", "10.249.0.7", "--mac-address", "02:42:0a:f9:00:77",
      "tbb", "sleep", "600")
    link = d("exec", "fixed", "ip", "-o", "addr", "show", "eth0").stdout
    assert "10.249.0.7/24" in link
    assert "02:42:0a:f9:00:77" in d("exec", "fixed", "ip", "-o", "link", "show", "eth0").stdout
    r = d("exec", "auto", "ping", "-c1", "-W2", "10.249.0.7", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    # the same --ip twice: one line from tether's IPAM
    r = d("run", "-d", "--name", "dup", "--net", net, "--ip", "10.249.0.7", "tbb", "sleep", "600", check=False)
    assert r.returncode != 0 and "already in use" in r.stderr, r.stderr
    d("rm", "-f", "dup", check=False)

    # docker network connect/disconnect: a second interface, no second default route
    other = f"{host.prefix}fl2"
    d("network", "create", "-d", d.plugin, "--ipam-driver", d.plugin, "--subnet", "10.249.1.0/24",
      "-o", f"tether.network={other}", other)
    d("network", "connect", other, "fixed")
    names = d("exec", "fixed", "ip", "-o", "link").stdout
    assert sorted(line.split(":")[1].strip().split("@")[0] for line in names.splitlines()) == ["eth0", "eth1", "lo"]
    assert d("exec", "fixed", "ip", "route").stdout.count("default") == 1
    d("run", "-d", "--name", "peer", "--net", other, "tbb", "sleep", "600")
    peer = d("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "peer").stdout.strip()
    r = d("exec", "fixed", "ping", "-c1", "-W2", peer, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    d("network", "disconnect", other, "fixed")
    assert "eth1" not in d("exec", "fixed", "ip", "-o", "link").stdout
    assert len(endpoints(host, other)) == 1  # only peer's: fixed's endpoint went with disconnect
    d("rm", "-f", "auto", "fixed", "peer")
    d("network", "rm", net, other)
    assert host.tether("network", "ls", "--format", "json").stdout.count(host.prefix) == 0


def test_docker_dual_stack_network(bare_host: Host, docker: Docker) -> None:
    """docker network create --ipv6 with tether's driver and IPAM: both families, real packets."""
    host, d = bare_host, docker
    net = f"{host.prefix}d6"
    d("network", "create", "--ipv6", "-d", d.plugin, "--ipam-driver", d.plugin, "--subnet", "10.252.6.0/24",
      "--subnet", "fd00:252:6::/64", "-o", f"tether.network={net}", net)
    tnet = host.json("network", "inspect", net)[0]
    assert (tnet["subnet"], tnet["subnet6"], tnet["gateway6"]) == ("10.252.6.0/24", "fd00:252:6::/64", "fd00:252:6::1")
    ipam = d("network", "inspect", "-f", "{{.EnableIPv6}} {{range .IPAM.Config}}{{.Subnet}} {{end}}", net).stdout.split()
    assert ipam == ["true", "10.252.6.0/24", "fd00:252:6::/64"]

    d("run", "-d", "--name", "da", "--net", net, "tbb", "sleep", "600")
    d("run", "-d", "--name", "db", "--net", net, "--ip6", "fd00:252:6::30", "tbb", "sleep", "600")
    v6 = "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}/{{.GlobalIPv6PrefixLen}} {{.IPv6Gateway}}{{end}}"
    a6, gw6 = d("inspect", "-f", v6, "da").stdout.split()
    assert a6.startswith("fd00:252:6::") and a6.endswith("/64") and gw6 == "fd00:252:6::1"
    assert d("inspect", "-f", v6, "db").stdout.split()[0] == "fd00:252:6::30/64"
    a6 = a6.split("/")[0]
    # inside: the v6 address on eth0 and the v6 default route via tether's bridge
    assert f"{a6}/64" in d("exec", "da", "ip", "-6", "-o", "addr", "show", "dev", "eth0").stdout
    assert "default via fd00:252:6::1 dev eth0" in d("exec", "da", "ip", "-6", "route").stdout
    # ping -6 between Docker's containers both ways, to the host's v6 gateway, from a tether container
    for name, peer in (("da", "fd00:252:6::30"), ("db", a6), ("da", "fd00:252:6::1")):
        r = d("exec", name, "ping", "-6", "-c1", "-W2", peer, check=False)
        assert r.returncode == 0, (name, peer, r.stdout + r.stderr)
    r = host.tether("run", "--rm", "--net", net, "--", "ping", "-6", "-c1", "-W2", a6, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    eps = host.json("network", "inspect", net)[0]["containers"]
    assert sorted(e["address6"] for e in eps.values()) == sorted([f"{a6}/64", "fd00:252:6::30/64"])

    # bad v6 input: one line each, nothing changed
    before = host.snapshot()
    fails(d, "run", "-d", "--name", "dx", "--net", net, "--ip6", "fd00:252:6::30", "tbb", "sleep", "600",
          says="already in use")
    d("rm", "-f", "dx", check=False)
    fails(d, "network", "create", "--ipv6", "-d", d.plugin, "--ipam-driver", d.plugin, "--subnet", "10.252.7.0/24",
          "--subnet", "fd00:252:6::/80", "x1", says="overlaps network")
    fails(d, "network", "create", "--ipv6", "-d", d.plugin, "--ipam-driver", d.plugin, "--subnet", "10.252.7.0/24",
          "--subnet", "fd00:252:7::/130", "x2", says="invalid")
    assert host.snapshot() == before

    # docker rm frees both leases: the same --ip6 can be had again at once
    d("rm", "-f", "da", "db")
    assert endpoints(host, net) == [] and host_veths(host) == []
    d("run", "-d", "--name", "dc", "--net", net, "--ip6", "fd00:252:6::30", "tbb", "sleep", "600")
    assert d("inspect", "-f", v6, "dc").stdout.split()[0] == "fd00:252:6::30/64"
    d("rm", "-f", "dc")
    d("network", "rm", net)
    assert host.tether("network", "inspect", net, check=False).returncode != 0

    # --ipv6 without an IPv6 subnet: tether's IPAM picks a free ULA /64
    d("network", "create", "--ipv6", "-d", d.plugin, "--ipam-driver", d.plugin, "--subnet", "10.252.8.0/24", "dauto6")
    nid = d("network", "inspect", "-f", "{{.Id}}", "dauto6").stdout.strip()
    subnet6 = host.json("network", "inspect", f"docker-{nid[:12]}")[0]["subnet6"]
    assert ipaddress.ip_network(subnet6).prefixlen == 64 and subnet6.startswith("fd")
    assert subnet6 in d("network", "inspect", "-f", "{{json .IPAM.Config}}", "dauto6").stdout
    d("run", "-d", "--name", "dd", "--net", "dauto6", "tbb", "sleep", "600")
    d("run", "-d", "--name", "de", "--net", "dauto6", "tbb", "sleep", "600")
    e6 = d("inspect", "-f", v6, "de").stdout.split()[0].split("/")[0]
    assert ipaddress.ip_address(e6) in ipaddress.ip_network(subnet6)
    r = d("exec", "dd", "ping", "-6", "-c1", "-W2", e6, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    d("rm", "-f", "dd", "de")
    d("network", "rm", "dauto6")
