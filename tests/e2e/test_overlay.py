"""Overlay (multi-host) networks end to end, with real packets, in a `tether lab`.

One lab per module: three simulated hosts (``tt<hex>h1`` .. ``h3``, network namespaces on
an underlay bridge), etcd in the lab's fabric namespace, a tether daemon per host joined
to the cluster with a short ``--node-grace``. Every name carries a unique prefix and every
path lives in a temp dir, so the lab never meets a user's lab or another test's. Packets
only travel between the lab's own namespaces (its "internet" is the lab's inet netns).

The tests run in file order and share the containers ``c1``/``c2``/``c3`` (one per host on
``ov1``, each serving TCP_WHO); everything else a test makes it removes again. The
destructive ones come last: etcd killed and restarted, a daemon killed and restarted
(twice: once with nothing changing meanwhile, once while the cluster changes), and
finally a host that stays dead until it is reclaimed. Only pauses and kills of the lab's
own etcd and daemons are used to make hosts lag or fail: SIGSTOP for a short freeze,
SIGKILL and a restart with the lab's very command line for a crash.

Beyond packets, the tests compare what each host's kernel holds with the cluster's
records: the static neighbour entries on a network's VXLAN device must be exactly the
remote endpoints (no stale one, none missing), and its flood list the other hosts.

Whatever happens, the module fixture takes the lab down (containers through their
daemons, then every process in the lab's namespaces, the namespaces and the files) and
then checks that nothing is left: no namespace with the prefix, no process mentioning the
lab's paths, no background helper of ours.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import Host, processes_mentioning, sh
from dockerkit import Docker, have_docker
from probes import TCP_ASK, TCP_WHO

from tether import lab as tlab
from tether.api.client import Client
from tether.lab import LabHost, LabInfo, daemon_argv, lab_down, lab_up

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root"),
]

NETNS_DIR = "/var/run/netns"
GRACE = 6.0  # the daemons' --node-grace
OV1_SUBNET = "10.220.0.0/16"
PORT = 7000  # every long-running test container serves TCP_WHO on it


# ---------------------------------------------------------------------- helpers
def lab_netns(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Until ``pid`` is gone (reaped if it is the lab's child, or a zombie)."""
    deadline = time.monotonic() + timeout
    while tlab.process_alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} did not exit"
        time.sleep(0.02)


def link_names(text: str) -> list[str]:
    """Device names from ``ip -o link`` (without the ``@peer`` part)."""
    return sorted(line.split(":")[1].strip().split("@")[0] for line in text.splitlines() if line.strip())


PING_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")


def ping_summary(out: str) -> tuple[int, int]:
    m = PING_SUMMARY.search(out)
    assert m, f"no ping summary in {out!r}"
    return int(m.group(1)), int(m.group(2))


def one_error_line(r: subprocess.CompletedProcess[str], needle: str) -> str:
    """A refusal as the CLI must print it: non-zero, one ``Error:`` line, no traceback."""
    assert r.returncode != 0, f"succeeded: {r.stdout}{r.stderr}"
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {r.stderr!r}"
    assert lines[0].startswith("Error: "), lines[0]
    assert needle.lower() in lines[0].lower(), lines[0]
    return lines[0]


class Pinged:
    """One ``ping -c1``: true if answered; its repr (shown by a failed assert) says what
    ping said, e.g. "sendmsg: No buffer space available" when the machine drops packets."""

    def __init__(self, r: subprocess.CompletedProcess[str]) -> None:
        self.ok = r.returncode == 0
        self.said = " ".join((r.stdout + r.stderr).split())

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return f"<ping {'answered' if self.ok else 'UNANSWERED'}: ...{self.said[-150:]}>"


@dataclass
class Lab:
    info: LabInfo
    root: str
    state_root: str
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)  # our background helpers

    # --- hosts
    def host(self, i: int) -> LabHost:
        return self.info.hosts[i - 1]

    def name(self, i: int) -> str:
        return self.host(i).name

    def tether(self, i: int, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``tether ARGS`` run inside host ``i`` against its daemon."""
        host = self.host(i)
        r = subprocess.run(host.tether_argv(*args), capture_output=True, text=True, env=host.cli_env(),
                           timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"h{i}: tether {' '.join(args)} failed ({r.returncode}): {r.stderr}{r.stdout}")
        return r

    def tether_bg(self, i: int, *args: str) -> subprocess.Popen[str]:
        host = self.host(i)
        proc = subprocess.Popen(host.tether_argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=host.cli_env())
        self.procs.append(proc)
        return proc

    def json(self, i: int, *args: str) -> Any:
        return json.loads(self.tether(i, *args).stdout)

    def api(self, i: int, path: str) -> Any:
        """A GET on host i's daemon API (fast: for polls and snapshots; the CLI is tested elsewhere)."""
        return Client(self.host(i).socket, timeout=60).get(path)

    def node_up(self, observer: int, i: int) -> bool | None:
        """Whether host i is up in ``observer``'s node list (None: not listed at all)."""
        return next((n["up"] for n in self.api(observer, "/nodes") if n["name"] == self.name(i)), None)

    def in_host(self, i: int, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return sh(*self.host(i).enter(), *cmd, check=check, timeout=timeout)

    # --- containers
    def ctr_ns(self, i: int, name: str) -> str:
        return self.host(i).container_netns_prefix + name

    def in_ctr(self, i: int, name: str, *cmd: str, check: bool = True,
               timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.ctr_ns(i, name), *cmd, check=check, timeout=timeout)

    def run(self, i: int, name: str, net: str, *cmd: str, ip: str | None = None) -> subprocess.CompletedProcess[str]:
        extra = ["--ip", ip] if ip else []
        return self.tether(i, "run", "-d", "--name", name, "--net", net, *extra, "--", *(cmd or ("sleep", "600")))

    def serve(self, i: int, name: str, net: str, ip: str | None = None) -> str:
        """A container serving TCP_WHO on PORT; returns its address on ``net`` once it listens."""
        r = self.run(i, name, net, "python3", "-c", TCP_WHO, str(PORT), ip=ip)
        assert "Warning" not in r.stderr, r.stderr
        wait_listening(self.ctr_ns(i, name), PORT)
        return self.address(i, name, net)

    def address(self, i: int, name: str, net: str) -> str:
        return self.json(i, "inspect", name)[0]["networks"][net]["address"]

    def ping_ctr(self, i: int, name: str, address: str, wait: str = "2") -> Pinged:
        return Pinged(self.in_ctr(i, name, "ping", "-c1", "-W", wait, address, check=False))

    def ping_host(self, i: int, address: str, wait: str = "2") -> Pinged:
        return Pinged(self.in_host(i, "ping", "-c1", "-W", wait, address, check=False))

    def tcp_ctr(self, i: int, name: str, address: str, port: int = PORT) -> str | None:
        """What a TCP_WHO server at address:port saw as our source, or None if no answer."""
        r = self.in_ctr(i, name, "python3", "-c", TCP_ASK, address, str(port), check=False)
        return r.stdout.strip() if r.returncode == 0 else None

    # --- networks
    def inspect_net(self, i: int, net: str) -> dict[str, Any]:
        return self.api(i, f"/networks/{net}")

    def host_addr(self, net: str, i: int) -> str:
        """Host i's own address on overlay ``net``."""
        return self.inspect_net(1, net)["hosts"][self.name(i)]["address"]

    def links(self, i: int) -> list[str]:
        return link_names(sh("ip", "-n", self.host(i).netns, "-o", "link").stdout)

    # --- processes
    def spawn(self, argv: list[str], log: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                    start_new_session=True, close_fds=True)
        self.procs.append(proc)
        return proc

    def save(self) -> None:
        """Record changed pids in lab.json, so that `lab down` knows them."""
        with open(self.info.path + ".tmp", "w") as f:
            json.dump(self.info.to_json(), f, indent=2, sort_keys=True)
        os.replace(self.info.path + ".tmp", self.info.path)

    def restart_daemon(self, i: int, **extra_env: str) -> None:
        """Start host i's daemon again with exactly the lab's command line and environment
        (plus ``extra_env``, e.g. TETHER_DOCKER_PLUGIN)."""
        host = self.host(i)
        env = tlab.with_pythonpath(dict(os.environ))
        for key in ("TETHER_HOST", "TETHER_SOCKET", "TETHER_STATE_DIR", "TETHER_NETNS_PREFIX"):
            env.pop(key, None)
        env.update(extra_env)
        try:
            os.unlink(host.socket)
        except FileNotFoundError:
            pass
        proc = self.spawn(daemon_argv(self.info, host), host.log, env)
        host.daemon_pid = proc.pid
        self.save()
        deadline = time.monotonic() + 30
        while not (os.path.exists(host.socket) and Client(host.socket, timeout=2).alive()):
            assert proc.poll() is None, f"restarted daemon exited: {tlab.log_tail(host.log, 8)}"
            assert time.monotonic() < deadline, f"restarted daemon does not answer: {tlab.log_tail(host.log, 8)}"
            time.sleep(0.05)

    def kill_daemon(self, i: int) -> None:
        pid = self.host(i).daemon_pid
        assert pid and tlab.is_daemon_of(pid, self.host(i)), f"h{i} has no daemon running"
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid)
        for proc in self.procs:  # reap it if we started it
            if proc.pid == pid:
                proc.wait(timeout=10)


def wait_listening(netns: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        out = sh("ip", "netns", "exec", netns, "ss", "-Hltn", f"sport = :{port}", check=False).stdout
        if out.strip():
            return
        assert time.monotonic() < deadline, f"nothing listens on {port} in {netns}"
        time.sleep(0.05)


def wait_for(what: str, check: Any, timeout: float, every: float = 0.1) -> float:
    """Poll ``check()`` until true; returns the seconds it took."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout:.0f} s"
        time.sleep(every)
    return time.monotonic() - start


class Flood:
    """``ping -i 0.01`` from a container until stopped; the summary says what was lost."""

    def __init__(self, lab: Lab, i: int, name: str, address: str) -> None:
        self.what = f"{lab.ctr_ns(i, name)} -> {address}"
        self.proc = subprocess.Popen(["ip", "netns", "exec", lab.ctr_ns(i, name), "ping", "-i", "0.01", "-W", "1",
                                      address], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lab.procs.append(self.proc)

    def stop(self) -> tuple[int, list[int]]:
        """(packets sent, sequence numbers never answered). The one packet possibly still in
        flight when ping is interrupted is not counted as lost."""
        self.proc.send_signal(signal.SIGINT)  # `ip netns exec` execs ping: the signal is ping's
        out, _ = self.proc.communicate(timeout=10)
        sent, _received = ping_summary(out)
        answered = {int(m) for m in re.findall(r"icmp_seq=(\d+) ttl=", out)}
        lost = sorted(set(range(1, sent + 1)) - answered - {sent})
        return sent, lost


def backlog_drops() -> int:
    """Packets this machine dropped because a CPU's input backlog was full (all namespaces
    together: /proc/net/softnet_stat, second column)."""
    try:
        with open("/proc/net/softnet_stat") as f:
            return sum(int(line.split()[1], 16) for line in f if line.strip())
    except OSError:
        return 0


@pytest.fixture(autouse=True)
def report_machine_congestion() -> Iterator[None]:
    """Packets tests expect may also be lost to the machine itself: every namespace shares
    the per-CPU input backlog, so another workload flooding veths (iperf3, say) makes the
    kernel drop ours too. Printed, so a failing test shows it next to its assertion."""
    before = backlog_drops()
    yield
    dropped = backlog_drops() - before
    if dropped:
        print(f"NOTE: the kernel dropped {dropped} packets machine-wide (full per-CPU input backlog, "
              f"/proc/net/softnet_stat) during this test: another workload is saturating the machine, "
              f"and a lost packet here may be that, not tether")


# ---------------------------------------------------------------------- the lab
@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    prefix = "tt" + uuid.uuid4().hex[:6]
    base = tempfile.mkdtemp(prefix=f"tether-ovl-{prefix}-")
    root, state_root = os.path.join(base, "run"), os.path.join(base, "state")
    the_lab: Lab | None = None
    inside: set[int] = set()
    try:
        info = lab_up(3, grace=GRACE, root=root, state_root=state_root, name_prefix=prefix)
        the_lab = Lab(info, root, state_root)
        yield the_lab
    finally:
        # every process living in one of the lab's namespaces: containers, shims, daemons, etcd
        inside = tlab.pids_in_namespaces(lab_netns(prefix))
        errors = lab_down(root, state_root=state_root, name_prefix=prefix)
        for proc in the_lab.procs if the_lab else []:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                errors.append(f"helper {proc.pid} did not exit")
        shutil.rmtree(base, ignore_errors=True)
        left = lab_netns(prefix) + processes_mentioning(root, state_root, f"{prefix}h", f"{prefix}-")
        left += [f"pid {pid} (was in the lab)" for pid in sorted(inside) if tlab.process_alive(pid)]
        assert not errors and not left, f"the lab left things behind: {errors} {left}"


@pytest.fixture(scope="module")
def ov1(lab: Lab) -> subprocess.CompletedProcess[str]:
    """`network create -d overlay --subnet 10.220.0.0/16 ov1`, on h1."""
    return lab.tether(1, "network", "create", "-d", "overlay", "--subnet", OV1_SUBNET, "ov1", check=False)


@pytest.fixture(scope="module")
def trio(lab: Lab, ov1: subprocess.CompletedProcess[str]) -> dict[int, str]:
    """c1, c2, c3: one TCP_WHO container per host on ov1; host index -> address."""
    assert ov1.returncode == 0, ov1.stderr
    return {i: lab.serve(i, f"c{i}", "ov1") for i in (1, 2, 3)}


# ---------------------------------------------------------------------- 1. create, seen everywhere
def test_overlay_created_on_one_host_is_listed_on_all(lab: Lab, ov1: subprocess.CompletedProcess[str]) -> None:
    assert ov1.returncode == 0 and "Traceback" not in ov1.stderr, ov1.stderr
    net_id = ov1.stdout.strip()
    for i in (1, 2, 3):
        nets = {n["name"]: n for n in lab.json(i, "network", "ls", "--format", "json")}
        assert "ov1" in nets, f"h{i}: {sorted(nets)}"
        assert nets["ov1"]["scope"] == "global" and nets["ov1"]["driver"] == "overlay"
        assert nets["ov1"]["subnet"] == OV1_SUBNET and nets["ov1"]["id"] == net_id
        table = lab.tether(i, "network", "ls").stdout
        row = next(line for line in table.splitlines() if " ov1 " in f" {line} ")
        assert "global" in row.split() and "overlay" in row.split(), row
    # every host built its side: bridge and VXLAN device named by the VNI, an address each
    vni = lab.inspect_net(2, "ov1")["options"]["vni"]
    hosts = lab.inspect_net(3, "ov1")["hosts"]
    assert sorted(hosts) == sorted(lab.name(i) for i in (1, 2, 3))
    assert len({h["address"] for h in hosts.values()}) == 3
    for i in (1, 2, 3):
        assert {f"tov-{vni}", f"tvx-{vni}"} <= set(lab.links(i)), f"h{i}: {lab.links(i)}"
        assert hosts[lab.name(i)]["vtep"] == lab.host(i).underlay_ip


# ---------------------------------------------------------------------- 2. cross-host traffic
def test_cross_host_ping_and_tcp_between_every_pair(lab: Lab, trio: dict[int, str]) -> None:
    assert len(set(trio.values())) == 3
    failures = []
    for src in (1, 2, 3):
        for dst in (1, 2, 3):
            if src == dst:
                continue
            if not (p := lab.ping_ctr(src, f"c{src}", trio[dst])):
                failures.append(f"ping c{src} -> c{dst} ({trio[dst]}): {p!r}")
            seen = lab.tcp_ctr(src, f"c{src}", trio[dst])
            if seen != trio[src]:  # no NAT inside the overlay: the server sees the container
                failures.append(f"tcp c{src} -> c{dst}: server saw {seen!r}, expected {trio[src]}")
    assert failures == [], "\n".join(failures)


def test_full_size_packets_cross_without_fragmentation(lab: Lab, trio: dict[int, str]) -> None:
    """The container MTU leaves room for VXLAN on the 1400-byte underlay."""
    mtu = int(lab.in_ctr(1, "c1", "cat", "/sys/class/net/eth0/mtu").stdout)
    assert mtu == 1350
    r = lab.in_ctr(1, "c1", "ping", "-c1", "-W2", "-M", "do", "-s", str(mtu - 28), trio[2], check=False)
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------------- 3. the barrier
def first_packet_diagnosis(lab: Lab, source: int, target: int, address: str) -> str:
    """What the hosts held when a first ping went unanswered (the failure is already
    recorded: nothing here is a retry)."""
    vni = lab.inspect_net(1, "ov1")["options"]["vni"]
    ns = lab.host(source).netns
    neigh = sh("ip", "-n", ns, "neigh", "show", address, "dev", f"tvx-{vni}").stdout.strip()
    mac = "02:42:" + ":".join(f"{int(o):02x}" for o in address.split("."))  # tether's mac_for
    fdb = [line.strip() for line in sh("ip", "netns", "exec", ns, "bridge", "fdb", "show", "dev",
                                       f"tvx-{vni}").stdout.splitlines() if line.startswith(mac)]
    in_ctr = lab.in_ctr(source, f"c{source}", "ip", "neigh", "show", address, check=False)
    links = lab.in_ctr(source, f"c{source}", "ip", "-br", "addr", check=False)
    applied = {n["name"]: n["applied_revision"] for n in lab.api(1, "/nodes")}
    again = lab.in_ctr(source, f"c{source}", "ping", "-c1", "-W1", address, check=False)
    return (f"source host neigh: {neigh!r}; source container neigh: {(in_ctr.stdout + in_ctr.stderr).strip()!r}; "
            f"source container links: {(links.stdout + links.stderr).strip()!r}; applied revisions: {applied}; "
            f"source host fdb: {fdb}; a second ping: {(again.stdout + again.stderr).strip()[-160:]!r}")


def test_first_packet_reaches_a_new_container_50_times(lab: Lab, trio: dict[int, str]) -> None:
    """`run -d` returns only once every live host has programmed the endpoint: the very
    first ping from another host gets an answer, without a single retry.

    Every other round, the pinging host's daemon is frozen (SIGSTOP) for 0.8 s while the
    container starts, as a host that lags would be (a pause shorter than its 2 s lease:
    it stays live). Unfrozen rounds alone could not tell a barrier from luck: an
    idle agent programs an endpoint within a millisecond or two of its publication."""
    started: dict[int, list[str]] = {1: [], 2: [], 3: []}
    failures: list[str] = []
    frozen: set[int] = set()
    FREEZE = 0.8  # seconds; the CLI itself takes ~0.3 s to start and send its request

    def thaw(pid: int) -> None:
        os.kill(pid, signal.SIGCONT)
        frozen.discard(pid)

    try:
        for n in range(50):
            target = n % 3 + 1
            source = (n + 1) % 3 + 1
            name, address = f"fp{n}", f"10.220.1.{n + 1}"
            timer = None
            if n % 2:
                pid = lab.host(source).daemon_pid
                assert pid and tlab.is_daemon_of(pid, lab.host(source))
                os.kill(pid, signal.SIGSTOP)
                frozen.add(pid)
                timer = threading.Timer(FREEZE, thaw, (pid,))
                timer.start()
            r = lab.run(target, name, "ov1", ip=address)
            started[target].append(name)
            ping = lab.in_ctr(source, f"c{source}", "ping", "-c1", "-W1", address, check=False)
            first = (ping.stdout + ping.stderr).strip()[-160:]
            if timer:
                timer.join()
            if r.stderr.strip():
                failures.append(f"#{n} run on h{target}: {r.stderr.strip()}")
            if ping.returncode != 0:
                failures.append(f"#{n}: c{source} (h{source}{', lagging' if timer else ''}) -> {name} {address} "
                                f"(h{target}): no answer ({first!r}); {first_packet_diagnosis(lab, source, target, address)}")
    finally:
        for pid in list(frozen):
            thaw(pid)
        for i, names in started.items():
            if names:
                lab.tether(i, "rm", "-f", *names, check=False)
    assert failures == [], f"{len(failures)} of 50 failed:\n" + "\n".join(failures)
    # and every removal was withdrawn everywhere: no host keeps a peer entry of them
    for i in (1, 2, 3):
        wait_for(f"h{i}'s peers on ov1 match the cluster", lambda i=i: not peer_drift(lab, i, "ov1"), timeout=5)


# ---------------------------------------------------------------------- 4. one interface, every way out
def test_container_has_one_interface_and_reaches_hosts_and_the_outside(lab: Lab, trio: dict[int, str]) -> None:
    inet_port = 8000
    server = subprocess.Popen(["ip", "netns", "exec", lab.info.inet, "python3", "-c", TCP_WHO, str(inet_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.procs.append(server)
    try:
        wait_listening(lab.info.inet, inet_port)
        failures = []
        for i in (1, 2, 3):
            c = f"c{i}"
            assert link_names(lab.in_ctr(i, c, "ip", "-o", "link").stdout) == ["eth0", "lo"]
            routes = lab.in_ctr(i, c, "ip", "-4", "route").stdout
            own = lab.host_addr("ov1", i)
            assert f"default via {own} dev eth0" in routes, routes  # its own host is its gateway
            for j in (1, 2, 3):
                for target in (lab.host(j).underlay_ip, lab.host_addr("ov1", j)):
                    if not (p := lab.ping_ctr(i, c, target)):
                        failures.append(f"c{i} -> h{j} at {target}: {p!r}")
            seen = lab.tcp_ctr(i, c, tlab.INET_IP, inet_port)
            if seen != lab.host(i).underlay_ip:  # NAT: the internet sees the host, not the container
                failures.append(f"c{i} -> internet: the server saw {seen!r}, not {lab.host(i).underlay_ip}")
        assert failures == [], "\n".join(failures)
    finally:
        server.kill()
        server.wait(timeout=10)


# ---------------------------------------------------------------------- 5. hosts reach containers
def test_every_host_reaches_every_container_directly(lab: Lab, trio: dict[int, str]) -> None:
    lab.tether(2, "network", "create", "-d", "overlay", "--subnet", "10.225.0.0/16", "ov5")
    try:
        solo = lab.serve(1, "solo", "ov5")  # h2 and h3 have no container on ov5
        failures = []
        for i in (1, 2, 3):
            for label, address in [*((f"c{j}", a) for j, a in trio.items()), ("solo", solo)]:
                if not (p := lab.ping_host(i, address)):
                    failures.append(f"h{i} -> {label} ({address}): {p!r}")
            seen = lab.in_host(i, "python3", "-c", TCP_ASK, solo, str(PORT), check=False).stdout.strip()
            if seen != lab.host_addr("ov5", i):  # the host speaks from its own overlay address
                failures.append(f"h{i} -> solo tcp: the server saw {seen!r}")
        assert failures == [], "\n".join(failures)
    finally:
        lab.tether(1, "rm", "-f", "solo", check=False)
        lab.tether(1, "network", "rm", "ov5", check=False)


# ---------------------------------------------------------------------- 6. isolation
def test_overlays_are_isolated_from_each_other(lab: Lab, trio: dict[int, str]) -> None:
    lab.tether(3, "network", "create", "-d", "overlay", "--subnet", "10.221.0.0/16", "ov2")
    try:
        x = {1: lab.serve(1, "x1", "ov2"), 2: lab.serve(2, "x2", "ov2")}
        assert lab.inspect_net(1, "ov2")["options"]["vni"] != lab.inspect_net(1, "ov1")["options"]["vni"]
        # the control: ov2 itself works, across hosts
        assert lab.ping_ctr(1, "x1", x[2]) and lab.tcp_ctr(1, "x1", x[2]) == x[1]
        assert lab.ping_ctr(2, "x2", x[1]) and lab.tcp_ctr(2, "x2", x[1]) == x[2]
        probes = []  # (what, host, container, address): each must get no answer at all
        for i, xa in x.items():
            for j, ca in trio.items():
                where = "same host" if i == j else "across hosts"
                probes.append((f"x{i} (ov2) reaches c{j} (ov1), {where}", i, f"x{i}", ca))
                probes.append((f"c{j} (ov1) reaches x{i} (ov2), {where}", j, f"c{j}", xa))

        def leaks(probe: tuple[str, int, str, str]) -> list[str]:
            what, i, name, address = probe
            return [f"{what} by {kind}" for kind, reached in (
                ("ping", lab.ping_ctr(i, name, address, wait="1")),
                ("tcp", lab.tcp_ctr(i, name, address) is not None),
            ) if reached]

        with ThreadPoolExecutor(max_workers=len(probes)) as pool:  # every probe waits for its timeout
            found = [leak for result in pool.map(leaks, probes) for leak in result]
        assert found == [], "\n".join(found)
    finally:
        lab.tether(1, "rm", "-f", "x1", check=False)
        lab.tether(2, "rm", "-f", "x2", check=False)
        lab.tether(3, "network", "rm", "ov2", check=False)


# ---------------------------------------------------------------------- 7. connect, disconnect, rm
def test_connect_and_disconnect_an_overlay_on_a_bridge_container(lab: Lab, trio: dict[int, str]) -> None:
    lab.tether(2, "network", "create", "--subnet", "10.230.0.0/24", "br7")
    try:
        b7_bridge = lab.serve(2, "b7", "br7")
        peer = lab.serve(2, "b7peer", "br7")
        r = lab.tether(2, "network", "connect", "ov1", "b7")
        assert "Warning" not in r.stderr, r.stderr
        nets = lab.json(2, "inspect", "b7")[0]["networks"]
        assert sorted(nets) == ["br7", "ov1"]
        assert nets["br7"]["ifname"] == "eth0" and nets["ov1"]["ifname"] == "eth1"
        b7_ov = nets["ov1"]["address"]
        assert link_names(lab.in_ctr(2, "b7", "ip", "-o", "link").stdout) == ["eth0", "eth1", "lo"]
        assert "b7" in lab.inspect_net(1, "ov1")["containers"]
        # both networks at once: the bridge peer, and containers on the other hosts
        assert lab.ping_ctr(2, "b7", peer) and lab.tcp_ctr(2, "b7", peer) == b7_bridge
        for j in (1, 3):
            assert lab.ping_ctr(2, "b7", trio[j]), f"b7 -> c{j}"
            assert lab.tcp_ctr(2, "b7", trio[j]) == b7_ov, f"b7 -> c{j} tcp"
            assert lab.tcp_ctr(j, f"c{j}", b7_ov) == trio[j], f"c{j} -> b7 tcp"

        lab.tether(2, "network", "disconnect", "ov1", "b7")
        assert sorted(lab.json(2, "inspect", "b7")[0]["networks"]) == ["br7"]
        assert link_names(lab.in_ctr(2, "b7", "ip", "-o", "link").stdout) == ["eth0", "lo"]
        assert "b7" not in lab.inspect_net(3, "ov1")["containers"]
        assert not lab.ping_ctr(1, "c1", b7_ov, wait="1")
        assert lab.tcp_ctr(2, "b7", peer) == b7_bridge  # still on its bridge network
        # its overlay address was released: another host's container can take it
        lab.run(1, "b7heir", "ov1", ip=b7_ov)
        assert lab.ping_ctr(3, "c3", b7_ov)
    finally:
        lab.tether(1, "rm", "-f", "b7heir", check=False)
        lab.tether(2, "rm", "-f", "b7", "b7peer", check=False)
        lab.tether(2, "network", "rm", "br7", check=False)


def test_overlay_with_endpoints_cannot_be_removed_until_they_are_gone(lab: Lab, trio: dict[int, str]) -> None:
    lab.tether(3, "network", "create", "-d", "overlay", "--subnet", "10.223.0.0/16", "ov7")
    vni = lab.inspect_net(1, "ov7")["options"]["vni"]
    devices = {f"tov-{vni}", f"tvx-{vni}"}
    try:
        lab.run(1, "r1", "ov7")
        lab.run(3, "r3", "ov7")
        for i in (2, 1):  # h2 has no container on it; h1 has one
            line = one_error_line(lab.tether(i, "network", "rm", "ov7", check=False), "r1")
            for needle in ("ov7", "r3", lab.name(1), lab.name(3)):
                assert needle in line, f"{needle!r} not in {line!r}"
        for i in (1, 2, 3):
            assert "ov7" in {n["name"] for n in lab.api(i, "/networks")}
            assert devices <= set(lab.links(i))

        lab.tether(1, "rm", "-f", "r1")
        lab.tether(3, "rm", "-f", "r3")
        lab.tether(2, "network", "rm", "ov7")
        for i in (1, 2, 3):
            wait_for(f"ov7's devices gone from h{i}", lambda i=i: not devices & set(lab.links(i)), timeout=5)
            assert "ov7" not in {n["name"] for n in lab.json(i, "network", "ls", "--format", "json")}
        # its VNI was released with it
        lab.tether(1, "network", "create", "-d", "overlay", "--subnet", "10.223.0.0/16", "-o", f"vni={vni}", "ov7b")
        lab.tether(1, "network", "rm", "ov7b")
    finally:
        lab.tether(1, "rm", "-f", "r1", check=False)
        lab.tether(3, "rm", "-f", "r3", check=False)
        lab.tether(2, "network", "rm", "ov7", check=False)


# ---------------------------------------------------------------------- 11. bad input (lab part)
OVERLAY_BAD_INPUT = [
    ("overlapping overlay subnet", ["network", "create", "-d", "overlay", "--subnet", "10.220.128.0/17", "ovbad"],
     "overlaps"),
    ("overlay overlapping the underlay", ["network", "create", "-d", "overlay", "--subnet", "10.99.0.0/16", "ovbad"],
     "overlaps"),
    ("invalid vni", ["network", "create", "-d", "overlay", "--subnet", "10.229.0.0/16", "-o", "vni=7", "ovbad"],
     "vni"),
    ("taken overlay name", ["network", "create", "-d", "overlay", "--subnet", "10.229.0.0/16", "ov1"],
     "already exists"),
    ("--ip outside the overlay", ["run", "-d", "--net", "ov1", "--ip", "10.1.1.1", "--", "true"], "outside"),
]


def cluster_snapshot(lab: Lab) -> dict[str, Any]:
    snap: dict[str, Any] = {}
    for i in (1, 2, 3):
        snap[f"h{i} networks"] = sorted(
            (n["name"], n["subnet"], n.get("options", {}).get("vni")) for n in lab.api(i, "/networks")
        )
        snap[f"h{i} links"] = lab.links(i)
        snap[f"h{i} containers"] = sorted(c["name"] for c in lab.api(i, "/containers?all=1"))
    snap["ov1"] = lab.inspect_net(1, "ov1")
    return snap


@pytest.mark.parametrize("label,args,needle", OVERLAY_BAD_INPUT, ids=[c[0] for c in OVERLAY_BAD_INPUT])
def test_bad_overlay_input_changes_nothing(lab: Lab, trio: dict[int, str], label: str, args: list[str],
                                           needle: str) -> None:
    before = cluster_snapshot(lab)
    one_error_line(lab.tether(2, *args, check=False), needle)
    assert cluster_snapshot(lab) == before


def test_vni_clash_is_refused_and_changes_nothing(lab: Lab, trio: dict[int, str]) -> None:
    lab.tether(1, "network", "create", "-d", "overlay", "--subnet", "10.224.0.0/16", "-o", "vni=5000", "ovv1")
    try:
        before = cluster_snapshot(lab)
        line = one_error_line(lab.tether(3, "network", "create", "-d", "overlay", "--subnet", "10.226.0.0/16",
                                         "-o", "vni=5000", "ovv2", check=False), "5000")
        assert "ovv1" in line, line
        assert cluster_snapshot(lab) == before
        # the clash left no half-made network behind: its subnet and name are free again
        lab.tether(3, "network", "create", "-d", "overlay", "--subnet", "10.226.0.0/16", "ovv2")
        lab.tether(3, "network", "rm", "ovv2")
    finally:
        lab.tether(1, "network", "rm", "ovv1", check=False)


def test_docker_containers_on_an_overlay_reach_other_hosts_at_once(lab: Lab, trio: dict[int, str]) -> None:
    """`docker network create -d tether -o tether.driver=overlay` on h1: Docker's
    containers there and tether's on h2 reach each other with the first packet, over one
    interface each, and h3 reaches the Docker container's own address. A second dockerd,
    on h3, joins the same overlay by name and subnet; its containers reach h1's at once."""
    if not have_docker():
        pytest.skip("needs Debian's docker.io and busybox-static (apt-get install docker.io busybox-static)")
    prefix = lab.name(1)[: -len("h1")]
    plugin, plugin3 = f"{prefix}dkr", f"{prefix}dkr3"
    lab.kill_daemon(1)
    lab.restart_daemon(1, TETHER_DOCKER_PLUGIN=plugin)
    lab.kill_daemon(3)
    lab.restart_daemon(3, TETHER_DOCKER_PLUGIN=plugin3)
    base, base3 = (Path(tempfile.mkdtemp(prefix=f"{prefix}dk{i}-")) for i in (1, 3))
    docker = Docker(lab.host(1).enter, base, plugin)
    docker3 = Docker(lab.host(3).enter, base3, plugin3)
    try:
        docker.start()
        docker.load_image("overlay\n")
        docker("network", "create", "-d", plugin, "--ipam-driver", plugin, "--subnet", "10.227.0.0/16",
               "-o", "tether.driver=overlay", "-o", "tether.network=ovd", "ovd")
        assert lab.inspect_net(2, "ovd")["driver"] == "overlay"  # the cluster has it
        t2 = lab.serve(2, "td2", "ovd")
        for n in range(5):  # the very first packet, from a container that has just started
            docker("run", "-d", "--name", f"dk{n}", "--net", "ovd", "tbb", "sleep", "600")
            r = docker("exec", f"dk{n}", "ping", "-c1", "-W2", t2, check=False)
            assert r.returncode == 0, f"dk{n}: {r.stdout}{r.stderr}"
            ip = docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                        f"dk{n}").stdout.strip()
            assert lab.ping_ctr(2, "td2", ip, wait="2"), f"h2 -> dk{n} {ip}"
        links = docker("exec", "dk0", "ip", "-o", "link").stdout
        assert link_names(links) == ["eth0", "lo"]
        assert lab.ping_host(3, ip), f"h3 -> {ip}"

        docker3.start()
        docker3.load_image("overlay\n")
        docker3("network", "create", "-d", plugin3, "--ipam-driver", plugin3, "--subnet", "10.227.0.0/16",
                "-o", "tether.driver=overlay", "-o", "tether.network=ovd", "ovd")
        docker3("run", "-d", "--name", "e0", "--net", "ovd", "tbb", "sleep", "600")
        r = docker3("exec", "e0", "ping", "-c1", "-W2", ip, check=False)
        assert r.returncode == 0, f"h3 e0 -> dk4 {ip}: {r.stdout}{r.stderr}"
        e0 = docker3("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "e0").stdout.strip()
        assert e0 not in (ip, t2)  # one IPAM across the cluster
        r = docker("exec", "dk0", "ping", "-c1", "-W2", e0, check=False)
        assert r.returncode == 0, f"h1 dk0 -> h3 e0 {e0}: {r.stdout}{r.stderr}"
        docker3("rm", "-f", "e0")
        docker3("network", "rm", "ovd")  # h3's dockerd joined it: the overlay stays
        assert lab.inspect_net(1, "ovd")["driver"] == "overlay"

        docker("rm", "-f", *[f"dk{n}" for n in range(5)])
        assert sorted(lab.inspect_net(1, "ovd")["containers"]) == ["td2"]
        lab.tether(2, "rm", "-f", "td2")
        docker("network", "rm", "ovd")
        assert lab.tether(2, "network", "inspect", "ovd", check=False).returncode != 0
    finally:
        docker3.cleanup()
        docker.cleanup()
        lab.tether(2, "rm", "-f", "td2", check=False)
        lab.tether(1, "network", "rm", "ovd", check=False)


def test_overlay_on_a_daemon_without_cluster_store(host: Host) -> None:
    before = host.snapshot()
    r = host.tether("network", "create", "-d", "overlay", "--subnet", "10.220.0.0/16", "ov", check=False)
    one_error_line(r, "cluster store")
    assert host.snapshot() == before


def test_unreachable_etcd_at_daemon_start_is_one_line_and_retried(bare_host: Host) -> None:
    log_path = os.path.join(bare_host.state_dir, "daemon.log")
    with open(log_path, "ab") as log:
        bare_host.daemon = subprocess.Popen(
            [*bare_host.enter(), sys.executable, "-m", "tether.cli", "daemon", "--state-dir", bare_host.state_dir,
             "--socket", bare_host.socket, "--netns-prefix", bare_host.prefix,
             "--cluster-store", "etcd://127.0.0.1:1", "--cluster-advertise", "10.99.9.9", "--node-name", "lonely"],
            stdout=log, stderr=log, start_new_session=True,
        )
    time.sleep(3.5)
    with open(log_path, errors="replace") as f:
        text = f.read()
    assert bare_host.daemon.poll() is None, f"the daemon exited ({bare_host.daemon.returncode}): {text}"
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "the daemon logged nothing"
    for line in lines:
        assert "127.0.0.1:1" in line and "retrying" in line, f"not a clear one-line message: {line!r}"
    assert len(lines) >= 2, f"no retry in 3.5 s: {lines}"
    assert not os.path.exists(bare_host.socket)  # it does not serve before it has a store


# ---------------------------------------------------------------------- 8. etcd down
@pytest.mark.parametrize("how", ["frozen", "killed"])
def test_data_plane_survives_etcd_down_and_late_run_converges(lab: Lab, trio: dict[int, str], how: str) -> None:
    """etcd gone for 10 s, frozen (SIGSTOP/SIGCONT) or killed and restarted with the lab's
    command line on the same data dir: a ping flood across hosts loses nothing, and a `run`
    made meanwhile completes once etcd is back and is reachable everywhere soon after."""
    info = lab.info
    with open(f"/proc/{info.etcd_pid}/cmdline", "rb") as f:
        etcd_argv = [a.decode() for a in f.read().split(b"\0") if a]
    assert os.path.basename(etcd_argv[0]) == "etcd" and info.etcd_data_dir in etcd_argv
    name, address = f"late{how}", "10.220.8.8" if how == "frozen" else "10.220.8.9"
    flood = Flood(lab, 1, "c1", trio[2])
    late = None
    frozen = None
    try:
        time.sleep(1)
        if how == "frozen":
            frozen = info.etcd_pid
            os.kill(frozen, signal.SIGSTOP)
        else:
            os.kill(info.etcd_pid, signal.SIGKILL)
            wait_gone(info.etcd_pid)
        down_at = time.monotonic()
        time.sleep(1)
        late = lab.tether_bg(3, "run", "-d", "--name", name, "--net", "ov1", "--ip", address, "--", "sleep", "600")
        time.sleep(max(0.0, 10 - (time.monotonic() - down_at)))
        if frozen:
            os.kill(frozen, signal.SIGCONT)
            frozen = None
        else:
            etcd = lab.spawn(["nsenter", f"--net={NETNS_DIR}/{info.fabric}", "--", *etcd_argv], info.etcd_log)
            info.etcd_pid = etcd.pid
            lab.save()
        wait_for("etcd healthy again", lambda: tlab.etcd_healthy(info, timeout=0.5), timeout=20, every=0.05)
        back = time.monotonic()
        time.sleep(1)
    finally:
        if frozen:
            os.kill(frozen, signal.SIGCONT)
        sent, lost = flood.stop()
    assert sent > 400 and lost == [], f"ping flood {flood.what}: {len(lost)} of {sent} lost: {lost[:20]}..."

    assert late is not None
    wait_for(f"the `run` made while etcd was {how} returns", lambda: late.poll() is not None, timeout=40, every=0.05)
    _, err = late.communicate(timeout=10)
    assert late.returncode == 0 and "Traceback" not in err, f"late run: {late.returncode} {err}"
    assert lab.json(3, "inspect", name)[0]["state"] == "running"
    checks = {
        "h1": lambda: lab.ping_host(1, address, wait="1"),
        "h2": lambda: lab.ping_host(2, address, wait="1"),
        "c1": lambda: lab.ping_ctr(1, "c1", address, wait="1"),
        "c2": lambda: lab.ping_ctr(2, "c2", address, wait="1"),
    }
    for who, check in checks.items():
        wait_for(f"{who} -> {name} ({address}) within 6 s of etcd's return", check,
                 timeout=max(0.5, 6 - (time.monotonic() - back)))
    assert lab.inspect_net(1, "ov1")["containers"][name]["node"] == lab.name(3)
    # nobody was taken for dead: every host is up, every endpoint still published
    wait_for("every host up again", lambda: all(lab.node_up(1, i) is True for i in (1, 2, 3)), timeout=5)
    assert {"c1", "c2", "c3"} <= set(lab.inspect_net(2, "ov1")["containers"])
    for i in (1, 2, 3):
        assert not peer_drift(lab, i, "ov1"), f"h{i}: {peer_drift(lab, i, 'ov1')}"
    lab.tether(3, "rm", "-f", name)


# ---------------------------------------------------------------------- 9. daemon killed and restarted
def host_snapshot(lab: Lab, i: int) -> dict[str, Any]:
    host = lab.host(i)
    overlays = [n["name"] for n in lab.api(i, "/networks") if n.get("scope") == "global"]
    return {
        "links": lab.links(i),
        "netns": lab_netns(host.container_netns_prefix),
        "containers": sorted((c["name"], c["pid"], c["state"]) for c in lab.api(i, "/containers?all=1")),
        "overlays": {name: lab.inspect_net(i, name) for name in overlays},
    }


def test_daemon_killed_and_restarted_loses_nothing(lab: Lab, trio: dict[int, str]) -> None:
    victim = 2
    before = host_snapshot(lab, victim)
    all_netns = lab_netns(lab.info.prefix)
    with open(lab.host(victim).log, errors="replace") as f:
        log_mark = len(f.read())
    floods = [Flood(lab, 1, "c1", trio[2]), Flood(lab, 2, "c2", trio[3])]
    try:
        time.sleep(0.5)
        lab.kill_daemon(victim)
        # the others see it down (its lease expired) ...
        wait_for("h2 down in h1's node list", lambda: lab.node_up(1, victim) is False, timeout=4)
        time.sleep(0.5)
        # ... yet withdraw nothing before the grace period: c2 is still everywhere
        assert "c2" in lab.inspect_net(3, "ov1")["containers"]
        lab.restart_daemon(victim)
        wait_for("h2 up again", lambda: lab.node_up(1, victim) is True, timeout=5)
        time.sleep(1)
    finally:
        results = [(f.what, *f.stop()) for f in floods]
    for what, sent, lost in results:
        assert sent > 150 and lost == [], f"ping flood {what}: {len(lost)} of {sent} lost: {lost[:20]}..."

    after = host_snapshot(lab, victim)
    assert after["links"] == before["links"]
    assert after["netns"] == before["netns"]
    assert lab_netns(lab.info.prefix) == all_netns
    assert after["containers"] == before["containers"]
    assert after["overlays"] == before["overlays"]
    with open(lab.host(victim).log, errors="replace") as f:
        new_log = f.read()[log_mark:]
    assert "Traceback" not in new_log, new_log
    # h2's endpoints were never withdrawn elsewhere: everyone still reaches c2
    for i in (1, 3):
        assert lab.ping_host(i, trio[2]), f"h{i} -> c2"
        assert lab.tcp_ctr(i, f"c{i}", trio[2]) == trio[i], f"c{i} -> c2"
    assert lab.tcp_ctr(2, "c2", trio[1]) == trio[2]
    # and the restarted daemon works: a new container there is reachable at once
    lab.run(victim, "again", "ov1", ip="10.220.9.9")
    assert lab.ping_ctr(1, "c1", "10.220.9.9", wait="1") and lab.ping_ctr(3, "c3", "10.220.9.9", wait="1")
    lab.tether(victim, "rm", "-f", "again")


def peer_drift(lab: Lab, i: int, net: str) -> dict[str, list[str]]:
    """How host i's neighbour entries on the network's VXLAN device differ from the
    remote endpoints the cluster records (empty: no difference)."""
    record = lab.inspect_net(i, net)
    me = lab.name(i)
    want = {e["address"].split("/")[0] for e in record["containers"].values() if e["node"] != me}
    want |= {h["address"] for node, h in record["hosts"].items() if node != me}
    out = sh("ip", "-n", lab.host(i).netns, "-4", "neigh", "show", "dev", f"tvx-{record['options']['vni']}").stdout
    have = {line.split()[0] for line in out.splitlines() if "PERMANENT" in line}
    drift = {"stale": sorted(have - want), "missing": sorted(want - have)}
    return {k: v for k, v in drift.items() if v}


def floods(lab: Lab, i: int, net: str) -> list[str]:
    """The VTEPs host i floods broadcast and unknown unicast to on ``net``."""
    vni = lab.inspect_net(i, net)["options"]["vni"]
    out = sh("ip", "netns", "exec", lab.host(i).netns, "bridge", "fdb", "show", "dev", f"tvx-{vni}").stdout
    return sorted(line.split()[2] for line in out.splitlines() if line.startswith("00:00:00:00:00:00 dst "))


def test_daemon_down_while_the_cluster_changes_converges_on_restart(lab: Lab, trio: dict[int, str]) -> None:
    """While h2's daemon is dead, h1 removes a container and two overlays and h3 creates
    another overlay with a container on it; the restarted daemon withdraws the container's
    peer entry, tears down the removed overlays and builds the new one. The new network gets the lowest free VNI, which is that of a removed one (``ov8``):
    same device names, new subnet, and nothing of the old network may linger on them."""
    victim = 2
    lab.run(1, "gone1", "ov1", ip="10.220.7.7")  # removed while h2 is down
    lab.tether(1, "network", "create", "-d", "overlay", "--subnet", "10.227.0.0/16", "ov8")
    lab.tether(1, "network", "create", "-d", "overlay", "--subnet", "10.229.0.0/16", "-o", "vni=6008", "ov8b")
    vni8 = lab.inspect_net(1, "ov8")["options"]["vni"]
    gone = {"tov-6008", "tvx-6008"}
    wait_for("ov8 and ov8b built on h2", lambda: gone | {f"tov-{vni8}"} <= set(lab.links(victim)), timeout=5)
    try:
        lab.kill_daemon(victim)
        killed = time.monotonic()
        lab.tether(1, "rm", "-f", "gone1")
        lab.tether(1, "network", "rm", "ov8", "ov8b")
        lab.tether(3, "network", "create", "-d", "overlay", "--subnet", "10.228.0.0/16", "ov9")
        z1 = lab.serve(1, "z1", "ov9")
        assert time.monotonic() - killed < GRACE - 1, "too slow: h2 would be reclaimed"
        lab.restart_daemon(victim)
        vni9 = lab.inspect_net(1, "ov9")["options"]["vni"]
        assert vni9 == vni8  # the premise: the lowest free VNI is ov8's
        wait_for("ov9 built on h2", lambda: {f"tov-{vni9}", f"tvx-{vni9}"} <= set(lab.links(victim)), timeout=5)
        wait_for("h2 reaches z1", lambda: lab.ping_host(victim, z1, wait="1"), timeout=5)
        assert lab.run(victim, "z2", "ov9").stderr.strip() == ""
        assert lab.tcp_ctr(victim, "z2", z1) == lab.address(victim, "z2", "ov9")
        names = {n["name"] for n in lab.api(victim, "/networks")}
        assert "ov8" not in names and "ov8b" not in names and "ov9" in names
        time.sleep(2)  # what follows has had time to converge
        problems = []
        if gone & set(lab.links(victim)):
            problems.append(f"devices of the removed ov8b left: {sorted(gone & set(lab.links(victim)))}")
        addrs = sh("ip", "-n", lab.host(victim).netns, "-4", "-o", "addr").stdout
        problems += [f"address of a removed overlay left: {' '.join(line.split()[1:4])}"
                     for line in addrs.splitlines() if " 10.227." in line or " 10.229." in line]
        routes = sh("ip", "-n", lab.host(victim).netns, "-4", "route").stdout
        problems += [f"route of a removed overlay left: {line}"
                     for line in routes.splitlines() if line.startswith(("10.227.", "10.229."))]
        if f"10.228.0.0/16 dev tov-{vni9}" not in routes:
            problems.append(f"no route to ov9: {routes}")
        # the peers h2 programs are exactly the remote endpoints of today's records
        problems += [f"peers on {net}: {drift}" for net in ("ov1", "ov9") if (drift := peer_drift(lab, victim, net))]
        assert problems == [], "h2 did not converge after its restart:\n" + "\n".join(problems)
    finally:
        lab.tether(1, "rm", "-f", "gone1", check=False)
        lab.tether(victim, "rm", "-f", "z2", check=False)
        lab.tether(1, "rm", "-f", "z1", check=False)
        lab.tether(3, "network", "rm", "ov9", check=False)
        lab.tether(1, "network", "rm", "ov8", "ov8b", check=False)


# ---------------------------------------------------------------------- 10. a host that stays down
def test_dead_host_is_reported_down_then_reclaimed(lab: Lab, trio: dict[int, str]) -> None:
    dead = 3
    dead_name = lab.name(dead)
    c3_address = trio[dead]
    lab.kill_daemon(dead)
    killed = time.monotonic()

    took = wait_for(f"{dead_name} down in h1's node list", lambda: lab.node_up(1, dead) is not True, timeout=3,
                    every=0.05)
    assert lab.node_up(1, dead) is False, f"{dead_name} vanished from the node list {took:.1f} s after the kill"
    table = lab.tether(2, "node", "ls").stdout
    row = next(line for line in table.splitlines() if dead_name in line)
    assert "down" in row.split(), row
    # not reclaimed yet: the grace period has barely begun
    assert "c3" in lab.inspect_net(1, "ov1")["containers"], f"reclaimed {took:.1f} s after the kill"

    def reclaimed() -> bool:
        net = lab.inspect_net(2, "ov1")
        return "c3" not in net["containers"] and dead_name not in net["hosts"]

    dead_ov1 = lab.inspect_net(1, "ov1")["hosts"][dead_name]["address"]
    wait_for("c3 and h3 withdrawn from ov1", reclaimed, timeout=GRACE + 8, every=0.25)
    gone_after = time.monotonic() - killed
    assert gone_after >= GRACE, f"reclaimed after {gone_after:.1f} s, before the {GRACE:g} s grace period"
    # the survivors unprogrammed it: no peer entry for its endpoints, no flooding to it
    time.sleep(1)
    for i in (1, 2):
        drift = peer_drift(lab, i, "ov1")
        assert not {c3_address, dead_ov1} & set(drift.get("stale", [])), f"h{i} still has peers of {dead_name}: {drift}"
        assert not drift.get("missing"), f"h{i} lacks peers: {drift}"
        assert floods(lab, i, "ov1") == [lab.host(3 - i).underlay_ip], f"h{i} floods to {floods(lab, i, 'ov1')}"
    # its address is free: a container on h1 takes it, and the others reach it there
    r = lab.run(1, "taker", "ov1", ip=c3_address)
    assert not r.stderr.strip(), r.stderr
    assert lab.inspect_net(2, "ov1")["containers"]["taker"]["node"] == lab.name(1)
    assert lab.ping_host(2, c3_address, wait="1")
    assert lab.tcp_ctr(2, "c2", trio[1]) == trio[2]
    assert lab.ping_ctr(2, "c2", c3_address, wait="1")
