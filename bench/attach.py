#!/usr/bin/env python3
"""Attach benchmark: tether side by side with the CNI reference plugins and a raw floor.

Run as root from the repository:  python bench/attach.py [--counts 10,100,500,1000] [--quick]

Everything happens inside one "host" network namespace this script creates (name prefix
``tbench<random>``) and removes at the end, even on failure: a tether daemon runs in it
(``nsenter --net``), the CNI ``bridge`` plugin runs in it, and the raw floor's netlink
socket lives in it. The machine's own namespace is only used to create and delete
namespaces; no packet is sent anywhere.

At each endpoint count N (the endpoints already attached, per method, when a sample is
taken) it measures, interleaved sample by sample so drift hits every method alike:

* tether API attach         POST /networks/NET/connect of a created (not started)
                            ``--net none`` container (its netns exists, only lo)
* tether API create+attach  POST /containers with ``"net": NET`` (netns + endpoint)
* CNI bridge ADD            /usr/lib/cni/bridge (+ host-local IPAM) on a fresh netns
* raw floor                 pyroute2 in-process: one veth pair, peer made in the netns,
                            host end on the bridge and up, address + up + default route
* tether CLI                ``tether run -d --net NET -- sleep 3600`` (a process each),
                            and ``tether run --rm --net bridge|host -- true``
* daemon RSS                VmRSS of the daemon at each level

Each sample's endpoint is removed right after it (untimed) and the bench waits until its
host-side veth is gone, so every sample sees exactly N endpoints of its own kind and no
kernel teardown of the previous sample overlaps it. Results go to
bench/results/attach-<date>[-quick].json and .md; see bench/README.md.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import json
import math
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from common import (CNI_DIR, NETNS_DIR, REPO, check_host, git_commit, ints, log, machine_brief, machine_info,
                    machine_md, md_head, median_p95, now, our_netns, parse_args, parser, print_failures,
                    print_targets, quick_defaults, result_head, rss_mb, run_bench, summary, tree_digest,
                    verdict, write_results)
from pyroute2 import IPRoute  # type: ignore[import-untyped]

from tether.api.client import Client
from tether.datapath import Datapath, NetlinkDatapath

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
MNT_DETACH = 2
PER_NETWORK = 250  # endpoints per network/bridge (a Linux bridge takes at most 1024 ports)
MTU = 1500

# Subnets (a /22 per network: 250 endpoints + samples fit): one 10.X.0.0/16 per method.
TETHER_NET = 211
CNI_NET = 212
RAW_NET = 213

TARGETS = {
    "attach_vs_cni": 0.25,  # tether API attach / CNI ADD, at most
    "growth": 1.2,  # tether API attach median at 1000 / at 10, at most
    "bridge_vs_host_ms": 10.0,  # run --rm --net bridge minus --net host, at most
    "rss_mb": 60.0,  # daemon VmRSS at 1000 endpoints, at most
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


def unbind_netns(name: str) -> None:
    """What `ip netns del` does: lazy unmount and unlink the bind file."""
    path = f"{NETNS_DIR}/{name}"
    _libc.umount2(path.encode(), MNT_DETACH)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------------------- host netns
class HostWorker:
    """One thread living in the bench host namespace; netlink work is handed to it.

    It owns a request-only pyroute2 socket in the host netns (the raw floor's) and a
    tether Datapath (used only to create and delete the CNI and raw namespaces, untimed).
    """

    def __init__(self, host_path: str) -> None:
        self._ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-host")
        self.host_fd = os.open(host_path, os.O_RDONLY | os.O_CLOEXEC)
        self.ipr: Any = None
        self.datapath: Datapath | None = None

        def init() -> None:
            setns(self.host_fd)
            self.ipr = IPRoute(groups=0)
            self.datapath = NetlinkDatapath(NETNS_DIR)

        self.call(init)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        return self._ex.submit(fn, *args).result()

    def link_gone(self, ifname: str) -> bool:
        def check() -> bool:
            try:
                socket.if_nametoindex(ifname)
                return False
            except OSError:
                return True

        return self.call(check)

    def wait_link_gone(self, ifname: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.link_gone(ifname):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ifname} still exists {timeout}s after its endpoint was removed")
            time.sleep(0.002)

    def link_count(self) -> int:
        return self.call(lambda: len(self.ipr.link("dump")))

    def make_bridge(self, name: str, address: str, prefixlen: int) -> None:
        def work() -> None:
            self.ipr.link("add", ifname=name, kind="bridge", mtu=MTU)
            index = socket.if_nametoindex(name)
            self.ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
            self.ipr.link("set", index=index, state="up")

        self.call(work)

    def create_netns(self, name: str) -> None:
        assert self.datapath is not None
        self.datapath.create_netns(name)

    def delete_netns(self, name: str) -> None:
        assert self.datapath is not None
        self.datapath.delete_netns(name)

    def raw_attach(self, netns: str, host_ifname: str, bridge: str, address: str, prefixlen: int, gateway: str) -> float:
        """The floor: what tether's Datapath.attach_veth does, inline, minus alias and checks.

        Timed inside the worker thread (no queue hand-off). The container side is done by
        this same thread after setns into the container netns, then it setns-es back.
        """
        octets = [int(x) for x in address.split(".")]
        mac = "02:42:" + ":".join(f"{b:02x}" for b in octets)

        def work() -> float:
            t0 = now()
            bridge_index = socket.if_nametoindex(bridge)
            fd = os.open(f"{NETNS_DIR}/{netns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                self.ipr.link(
                    "add",
                    ifname=host_ifname,
                    kind="veth",
                    mtu=MTU,
                    master=bridge_index,
                    state="up",
                    peer={"ifname": "eth0", "net_ns_fd": fd, "address": mac, "mtu": MTU},
                )
                setns(fd)
                try:
                    inner = IPRoute(groups=0)
                    try:
                        index = socket.if_nametoindex("eth0")
                        inner.addr("add", index=index, address=address, prefixlen=prefixlen)
                        inner.link("set", index=index, state="up")
                        inner.route("add", dst="0.0.0.0/0", gateway=gateway, oif=index)
                    finally:
                        inner.close()
                finally:
                    setns(self.host_fd)
            finally:
                os.close(fd)
            return now() - t0

        return self.call(work)

    def close(self) -> None:
        def shut() -> None:
            if self.ipr is not None:
                self.ipr.close()
                self.ipr = None
            if self.datapath is not None:
                self.datapath.close()
                self.datapath = None

        try:
            self.call(shut)
        finally:
            self._ex.shutdown(wait=True)
            os.close(self.host_fd)


# ---------------------------------------------------------------------------- the bench
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tag = secrets.token_hex(2)
        self.prefix = f"tbench{self.tag}"  # every netns and bridge of ours starts with this
        self.host = f"{self.prefix}host"
        self.host_path = f"{NETNS_DIR}/{self.host}"
        self.tmp = tempfile.mkdtemp(prefix=f"{self.prefix}-")
        self.state_dir = os.path.join(self.tmp, "state")
        self.socket = os.path.join(self.tmp, "tether.sock")
        self.cni_data = os.path.join(self.tmp, "cni-ipam")
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_pid = 0
        self.worker: HostWorker | None = None
        self.client = Client(self.socket, timeout=120)
        self.counter = 0
        # per-method fill bookkeeping
        self.tether_count = 0
        self.cni_count = 0
        self.raw_count = 0
        self.levels = sorted(set(args.counts))
        self.nets = max(1, math.ceil(max(self.levels) / PER_NETWORK))
        self.samples: dict[str, dict[int, list[float]]] = {}
        self.rss: dict[int, float] = {}
        self.extra: dict[str, Any] = {}
        self.failures: list[dict[str, Any]] = []
        self.daemon_crash: dict[str, Any] | None = None
        self.daemon_fds: dict[int, int] = {}

    # -- helpers ------------------------------------------------------------------
    def name(self, kind: str) -> str:
        self.counter += 1
        return f"{kind}{self.counter}"

    def record(self, metric: str, level: int, seconds: float) -> None:
        self.samples.setdefault(metric, {}).setdefault(level, []).append(seconds)

    def enter(self) -> list[str]:
        return ["nsenter", f"--net={self.host_path}", "--"]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        env["TETHER_NO_AUTOSTART"] = "1"
        return env

    def cli(self, *args: str, check: bool = True) -> tuple[float, subprocess.CompletedProcess[str]]:
        cmd = [*self.enter(), sys.executable, "-m", "tether.cli", "--socket", self.socket,
               "--state-dir", self.state_dir, *args]
        t0 = now()
        res = subprocess.run(cmd, capture_output=True, text=True, env=self.env(), cwd=str(REPO), timeout=120)
        elapsed = now() - t0
        if check and res.returncode != 0:
            raise RuntimeError(f"tether {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
        return elapsed, res

    def net_for(self, index: int) -> int:
        """The network the ``index``-th endpoint (0-based) of a method goes on."""
        return min(index // PER_NETWORK, self.nets - 1)

    def sample_net(self, level: int) -> int:
        """Samples at level N go on the network holding the N-th endpoint (the fullest one)."""
        return self.net_for(max(level - 1, 0))

    # -- setup --------------------------------------------------------------------
    def setup(self) -> None:
        log(f"prefix {self.prefix}: host netns {self.host}, temp dir {self.tmp}")
        subprocess.run(["ip", "netns", "add", self.host], check=True, capture_output=True)
        subprocess.run(["ip", "-n", self.host, "link", "set", "lo", "up"], check=True, capture_output=True)
        os.makedirs(self.state_dir)
        os.makedirs(self.cni_data)
        self.worker = HostWorker(self.host_path)
        self.start_daemon()
        for i in range(self.nets):
            self.client.post("/networks", {"name": f"bn{i}", "subnet": f"10.{TETHER_NET}.{4 * i}.0/22"})
            self.worker.make_bridge(f"{self.prefix}r{i}", f"10.{RAW_NET}.{4 * i}.1", 22)

    def start_daemon(self) -> None:
        logf = open(os.path.join(self.tmp, "daemon.log"), "ab")
        self.daemon = subprocess.Popen(
            [*self.enter(), sys.executable, "-m", "tether.cli", "daemon", "--state-dir", self.state_dir,
             "--socket", self.socket, "--netns-prefix", f"{self.prefix}t-"],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True,
            env=self.env(), cwd=str(REPO),
        )
        logf.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                raise RuntimeError("the tether daemon exited:\n" + self.daemon_log())
            if self.client.alive():
                self.daemon_pid = int(self.client.get("/ping")["pid"])
                return
            time.sleep(0.05)
        raise RuntimeError("the tether daemon did not answer:\n" + self.daemon_log())

    def daemon_log(self) -> str:
        try:
            return Path(self.tmp, "daemon.log").read_text()[-4000:]
        except OSError:
            return ""

    # -- tether ---------------------------------------------------------------------
    def tether_create(self, name: str, net: str) -> dict[str, Any]:
        return self.client.post("/containers", {"name": name, "net": net, "cmd": ["sleep", "3600"], "detach": False})

    def tether_remove(self, name: str, host_ifname: str | None) -> None:
        self.client.delete(f"/containers/{name}?force=1")
        if host_ifname:
            assert self.worker is not None
            self.worker.wait_link_gone(host_ifname)

    def tether_fill(self, target: int) -> None:
        while self.tether_count < target:
            self.tether_create(self.name("f"), f"bn{self.net_for(self.tether_count)}")
            self.tether_count += 1

    def sample_tether_attach(self, level: int) -> None:
        name = self.name("a")
        self.tether_create(name, "none")  # created, not started: own netns with only lo
        t0 = now()
        ep = self.client.post(f"/networks/bn{self.sample_net(level)}/connect", {"container": name})
        self.record("tether_api_attach", level, now() - t0)
        self.tether_remove(name, ep["host_ifname"])

    def sample_tether_ping(self, level: int) -> None:
        t0 = now()
        self.client.get("/ping")
        self.record("tether_api_ping", level, now() - t0)

    def sample_tether_create(self, level: int) -> None:
        name = self.name("c")
        net = f"bn{self.sample_net(level)}"
        t0 = now()
        out = self.tether_create(name, net)
        self.record("tether_api_create_attach", level, now() - t0)
        self.tether_remove(name, out["networks"][net]["host_ifname"])

    # -- CNI ----------------------------------------------------------------------
    def cni_conf(self, net: int) -> bytes:
        return json.dumps({
            "cniVersion": "1.0.0",
            "name": f"{self.prefix}-c{net}",
            "type": "bridge",
            "bridge": f"{self.prefix}c{net}",
            "isGateway": True,
            "ipMasq": False,
            "ipam": {"type": "host-local", "subnet": f"10.{CNI_NET}.{4 * net}.0/22", "dataDir": self.cni_data},
        }).encode()

    def cni(self, command: str, netns: str, net: int) -> tuple[float, dict[str, Any]]:
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": netns,
            "CNI_NETNS": f"{NETNS_DIR}/{netns}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": CNI_DIR,
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        }
        conf = self.cni_conf(net)
        t0 = now()
        res = subprocess.run([*self.enter(), f"{CNI_DIR}/bridge"], input=conf, env=env, capture_output=True, timeout=60)
        elapsed = now() - t0
        if res.returncode != 0:
            raise RuntimeError(f"CNI {command} failed ({res.returncode}): {res.stdout!r} {res.stderr!r}")
        return elapsed, (json.loads(res.stdout) if res.stdout.strip() else {})

    def cni_fill(self, target: int) -> None:
        assert self.worker is not None
        while self.cni_count < target:
            netns = f"{self.prefix}c-{self.name('f')}"
            self.worker.create_netns(netns)
            self.cni("ADD", netns, self.net_for(self.cni_count))
            self.cni_count += 1

    def sample_cni(self, level: int) -> None:
        assert self.worker is not None
        netns = f"{self.prefix}c-{self.name('s')}"
        net = self.sample_net(level)
        self.worker.create_netns(netns)  # not timed
        elapsed, result = self.cni("ADD", netns, net)
        self.record("cni_bridge_add", level, elapsed)
        host_if = next((i["name"] for i in result.get("interfaces", []) if not i.get("sandbox") and i["name"].startswith("veth")), None)
        self.cni("DEL", netns, net)  # releases the lease, deletes the veth pair
        self.worker.delete_netns(netns)
        if host_if:
            self.worker.wait_link_gone(host_if)

    # -- raw floor ------------------------------------------------------------------
    def raw_one(self, index: int, net: int) -> tuple[float, str, str]:
        assert self.worker is not None
        netns = f"{self.prefix}r-{self.name('r')}"
        self.worker.create_netns(netns)  # not timed
        host_if = f"{self.prefix}v{self.counter:x}"
        # addresses: .2 onwards within the /22; index keeps them unique per network
        offset = 2 + index
        address = f"10.{RAW_NET}.{4 * net + offset // 256}.{offset % 256}"
        elapsed = self.worker.raw_attach(netns, host_if, f"{self.prefix}r{net}", address, 22, f"10.{RAW_NET}.{4 * net}.1")
        return elapsed, netns, host_if

    def raw_fill(self, target: int) -> None:
        while self.raw_count < target:
            net = self.net_for(self.raw_count)
            self.raw_one(self.raw_count % PER_NETWORK, net)
            self.raw_count += 1

    def sample_raw(self, level: int, i: int) -> None:
        assert self.worker is not None
        net = self.sample_net(level)
        # sample addresses after the filled ones in that network: .2+PER_NETWORK+i
        elapsed, netns, host_if = self.raw_one(PER_NETWORK + 10 + i, net)
        self.record("raw_floor", level, elapsed)
        self.worker.delete_netns(netns)
        self.worker.wait_link_gone(host_if)

    # -- CLI ----------------------------------------------------------------------
    def sample_cli_run_d(self, level: int) -> None:
        name = self.name("d")
        net = f"bn{self.sample_net(level)}"
        elapsed, _ = self.cli("run", "-d", "--name", name, "--net", net, "--", "sleep", "3600")
        self.record("tether_cli_run_d", level, elapsed)
        info = self.client.get(f"/containers/{name}")
        self.tether_remove(name, info["networks"][net]["host_ifname"])

    def sample_api_run_d(self, level: int) -> None:
        """The daemon's share of `run -d`: create + attach + start under a shim, over the API."""
        name = self.name("e")
        net = f"bn{self.sample_net(level)}"
        t0 = now()
        out = self.client.post("/containers", {"name": name, "net": net, "cmd": ["sleep", "3600"], "detach": True})
        self.record("tether_api_run_d", level, now() - t0)
        self.tether_remove(name, out["networks"][net]["host_ifname"])

    def sample_cli_floor(self, level: int) -> None:
        elapsed, _ = self.cli("--help")
        self.record("tether_cli_help", level, elapsed)

    def sample_run_rm(self, level: int, mode: str) -> None:
        elapsed, _ = self.cli("run", "--rm", "--net", mode, "--", "true")
        self.record(f"tether_cli_run_rm_{mode}", level, elapsed)

    def sample_nsenter(self, level: int) -> None:
        t0 = now()
        subprocess.run(["/bin/true"], check=True)
        plain = now() - t0
        t0 = now()
        subprocess.run([*self.enter(), "/bin/true"], check=True)
        wrapped = now() - t0
        self.record("exec_true", level, plain)
        self.record("nsenter_exec_true", level, wrapped)

    # -- the run ----------------------------------------------------------------------
    TETHER_SAMPLERS = {
        "sample_tether_attach", "sample_tether_create", "sample_tether_ping", "sample_cli_run_d",
        "sample_api_run_d", "sample_run_rm",
    }

    def daemon_alive(self) -> bool:
        return self.daemon is not None and self.daemon.poll() is None

    def guard(self, level: int, fn: Callable[..., None], *args: Any) -> None:
        """Take one sample; a failed one is recorded (and reported), not timed.

        If the daemon died, tether samples are skipped from then on (the crash is
        reported) while CNI and the raw floor go on.
        """
        if fn.__name__ in self.TETHER_SAMPLERS and not self.daemon_alive():
            return
        try:
            fn(level, *args)
        except Exception as exc:  # noqa: BLE001
            what = fn.__name__.removeprefix("sample_") + "".join(f" {a}" for a in args if isinstance(a, str))
            self.note_failure(level, what, exc)

    def note_failure(self, level: int, what: str, exc: BaseException) -> None:
        self.failures.append({"sample": what, "level": level, "error": str(exc)[:500]})
        log(f"level {level}: {what} FAILED: {exc}")
        # a daemon that aborts takes a moment to exit: give it that before judging
        self.check_daemon(level, what, wait=5.0 if "daemon" in str(exc).lower() else 0.0)
        if len(self.failures) > 100:
            raise RuntimeError("more than 100 failed samples: giving up") from exc

    def check_daemon(self, level: int, during: str, wait: float = 0.0) -> None:
        """Record (once) that the daemon has died, with its exit status and log tail."""
        if self.daemon is None or self.daemon_crash is not None:
            return
        if self.daemon.poll() is None and wait > 0:
            try:
                self.daemon.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass
        if self.daemon.poll() is None:
            return
        tail = self.daemon_log()
        self.daemon_crash = {
            "level": level,
            "during": during,
            "exit_status": self.daemon.returncode,
            "log_tail": tail[-1500:],
        }
        log(f"THE TETHER DAEMON DIED (exit status {self.daemon.returncode}) during {during} at N={level}; "
            f"tether samples stop here, CNI and raw go on. Log tail:\n{tail[-1500:]}")

    def run(self) -> dict[str, Any]:
        a = self.args
        started = dt.datetime.now()
        self.tree_digest = tree_digest()
        self.setup()
        assert self.worker is not None
        # warm-up: first use of every path (imports, default network, caches) is not a sample
        log("warm-up")
        self.sample_tether_attach(0)
        self.sample_tether_create(0)
        self.sample_cni(0)
        self.sample_raw(0, 0)
        self.sample_run_rm(0, "bridge")
        self.sample_run_rm(0, "host")
        self.sample_cli_run_d(0)
        self.sample_api_run_d(0)
        self.samples.clear()
        for level in self.levels:
            t_fill = now()
            if self.daemon_alive():
                try:
                    self.tether_fill(level)
                except Exception as exc:  # noqa: BLE001
                    self.note_failure(level, f"tether fill to {level}", exc)
            self.cni_fill(level)
            self.raw_fill(level)
            log(f"level {level}: filled in {now() - t_fill:.1f} s; host netns has {self.worker.link_count()} links")
            samplers: list[Callable[[int], None]] = [
                self.sample_tether_attach,
                self.sample_tether_create,
                self.sample_cni,
            ]
            for i in range(a.samples):
                order = samplers[i % len(samplers):] + samplers[: i % len(samplers)]
                for fn in order:
                    self.guard(level, fn)
                self.guard(level, self.sample_raw, i)
                self.guard(level, self.sample_tether_ping)
                self.guard(level, self.sample_nsenter)
            for i in range(a.cli_samples):
                self.guard(level, self.sample_cli_run_d)
                self.guard(level, self.sample_api_run_d)
                self.guard(level, self.sample_cli_floor)
            for i in range(a.run_samples):
                first, second = ("bridge", "host") if i % 2 == 0 else ("host", "bridge")
                self.guard(level, self.sample_run_rm, first)
                self.guard(level, self.sample_run_rm, second)
            tether_endpoints: int | None = None
            self.check_daemon(level, "sampling")
            if self.daemon_alive():
                self.rss[level] = rss_mb(self.daemon_pid)
                self.daemon_fds[level] = len(os.listdir(f"/proc/{self.daemon_pid}/fd"))
                try:
                    tether_endpoints = len([c for c in self.client.get("/containers?all=1") if c["networks"]])
                except Exception as exc:  # noqa: BLE001
                    self.note_failure(level, "GET /containers", exc)
            else:
                self.rss[level] = float("nan")
            log(f"level {level}: done, daemon RSS {self.rss[level]:.1f} MB, "
                f"fds {self.daemon_fds.get(level)}, tether containers with endpoints {tether_endpoints}")
            self.extra.setdefault("endpoints_at_level", {})[level] = {
                "tether": tether_endpoints, "cni": self.cni_count, "raw": self.raw_count,
            }
            self.print_level(level)
        finished = dt.datetime.now()
        return self.results(started, finished)

    # -- reporting ----------------------------------------------------------------------
    def med(self, metric: str, level: int) -> float:
        v = self.samples.get(metric, {}).get(level, [])
        return statistics.median(v) * 1000 if v else float("nan")

    def print_level(self, level: int) -> None:
        print(f"\n== N = {level} ==", flush=True)
        for metric in METRICS:
            s = summary(self.samples.get(metric, {}).get(level, []))
            if s["n"]:
                print(f"  {LABELS[metric]:<40} n={s['n']:<3} median {s['median_ms']:8.2f} ms   p95 {s['p95_ms']:8.2f} ms", flush=True)
        print(f"  {'daemon RSS':<40} {self.rss[level]:.1f} MB", flush=True)

    def results(self, started: dt.datetime, finished: dt.datetime) -> dict[str, Any]:
        levels = self.levels
        table: dict[str, dict[str, Any]] = {}
        for metric in METRICS:
            table[metric] = {str(lv): summary(self.samples.get(metric, {}).get(lv, [])) for lv in levels}
        ratios: dict[str, dict[str, Any]] = {}
        verdicts: list[dict[str, Any]] = []
        for lv in levels:
            attach = self.med("tether_api_attach", lv)
            cni = self.med("cni_bridge_add", lv)
            ns_overhead = self.med("nsenter_exec_true", lv) - self.med("exec_true", lv)
            cni_adj = cni - ns_overhead
            raw = self.med("raw_floor", lv)
            bridge = self.med("tether_cli_run_rm_bridge", lv)
            host = self.med("tether_cli_run_rm_host", lv)
            ratios[str(lv)] = {
                "attach_over_cni": round(attach / cni, 3),
                "attach_over_cni_minus_nsenter": round(attach / cni_adj, 3),
                "nsenter_overhead_ms": round(ns_overhead, 3),
                "attach_over_raw": round(attach / raw, 2),
                "create_attach_over_cni": round(self.med("tether_api_create_attach", lv) / cni, 3),
                "cni_over_raw": round(cni / raw, 2),
                "bridge_minus_host_ms": round(bridge - host, 2),
                "daemon_rss_mb": round(self.rss[lv], 1),
            }
            verdicts.append(verdict(
                f"tether API attach / CNI ADD at N={lv} (CNI without its nsenter wrapper)",
                attach / cni_adj, TARGETS["attach_vs_cni"], "ratio",
                note=f"with nsenter counted in CNI: {attach / cni:.3f}",
            ))
            failed = [f for f in self.failures if f["level"] == lv and f["sample"].startswith("run_rm")]
            verdicts.append(verdict(
                f"run --rm --net bridge minus --net host at N={lv}", bridge - host,
                TARGETS["bridge_vs_host_ms"], "ms",
                note=f"{len(failed)} run --rm sample(s) failed, see failed_samples" if failed else "",
            ))
        lo, hi = levels[0], levels[-1]
        growth_note = "" if (lo, hi) == (10, 1000) else f"target is defined for 1000/10; this run has {hi}/{lo}"
        for metric in ("tether_api_attach", "tether_api_create_attach", "cni_bridge_add", "raw_floor"):
            ratios.setdefault("growth", {})[metric] = round(self.med(metric, hi) / self.med(metric, lo), 3)
        verdicts.append(verdict(
            f"tether API attach median at N={hi} / at N={lo}",
            self.med("tether_api_attach", hi) / self.med("tether_api_attach", lo),
            TARGETS["growth"], "ratio", note=growth_note,
        ))
        verdicts.append(verdict(
            f"daemon RSS at N={hi}", self.rss[hi], TARGETS["rss_mb"], "MB",
            note="" if hi >= 1000 else "target is defined at 1000 endpoints",
        ))
        for v in verdicts:
            if isinstance(v["value"], float) and math.isnan(v["value"]):
                why = (f"no tether sample: the daemon crashed at N={self.daemon_crash['level']} "
                       f"during {self.daemon_crash['during']}") if self.daemon_crash else "no successful sample"
                v["note"] = "; ".join(x for x in (why, v["note"]) if x)
        return {
            **result_head("attach", started, finished),
            "duration_s": round((finished - started).total_seconds(), 1),
            "quick": bool(self.args.quick),
            "machine": machine_info(),
            "git_commit": git_commit(),
            "tether_tree_sha256": self.tree_digest,
            "config": {
                "counts": levels,
                "samples": self.args.samples,
                "cli_samples": self.args.cli_samples,
                "run_samples": self.args.run_samples,
                "endpoints_per_network": PER_NETWORK,
                "networks_per_method": self.nets,
            },
            "endpoints_at_level": self.extra.get("endpoints_at_level", {}),
            "labels": LABELS,
            "results": table,
            "daemon_rss_mb": {str(k): round(v, 1) for k, v in self.rss.items()},
            "ratios": ratios,
            "targets": verdicts,
            "failed_samples": self.failures,
            "daemon_crash": self.daemon_crash,
            "daemon_open_fds": {str(k): v for k, v in self.daemon_fds.items()},
            "raw_samples_ms": {
                m: {str(lv): [round(x * 1000, 3) for x in v] for lv, v in per.items()}
                for m, per in self.samples.items()
            },
        }

    # -- cleanup ------------------------------------------------------------------------
    def cleanup(self) -> list[str]:
        problems: list[str] = []
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
            try:
                self.daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                problems.append(f"daemon {self.daemon.pid} did not die")
        if self.worker is not None:
            try:
                self.worker.close()
            except Exception as exc:  # noqa: BLE001
                problems.append(f"closing the host worker: {exc}")
            self.worker = None
        ours = self.our_netns()
        # processes left in any of our namespaces (shims, detached sleeps): ours, by pid
        inodes = set()
        for n in ours:
            try:
                inodes.add(os.stat(f"{NETNS_DIR}/{n}").st_ino)
            except OSError:
                pass
        killed = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes:
                    os.kill(int(entry), signal.SIGKILL)
                    killed += 1
            except (OSError, ProcessLookupError):
                pass
        if killed:
            log(f"cleanup: killed {killed} leftover process(es) in our namespaces")
        for n in ours:
            if n != self.host:
                unbind_netns(n)
        unbind_netns(self.host)
        shutil.rmtree(self.tmp, ignore_errors=True)
        left = self.our_netns()
        if left:
            problems.append(f"namespaces left: {left[:5]}")
        if os.path.exists(self.tmp):
            problems.append(f"temp dir left: {self.tmp}")
        log(f"cleanup: removed {len(ours)} namespaces and {self.tmp}" + (f"; PROBLEMS: {problems}" if problems else ""))
        return problems

    def our_netns(self) -> list[str]:
        return our_netns(self.prefix)


METRICS = [
    "tether_api_ping",
    "tether_api_attach",
    "tether_api_create_attach",
    "cni_bridge_add",
    "raw_floor",
    "tether_api_run_d",
    "tether_cli_run_d",
    "tether_cli_help",
    "tether_cli_run_rm_bridge",
    "tether_cli_run_rm_host",
    "nsenter_exec_true",
    "exec_true",
]
LABELS = {
    "tether_api_ping": "tether API GET /ping (transport floor)",
    "tether_api_attach": "tether API attach (connect)",
    "tether_api_create_attach": "tether API create+attach",
    "cni_bridge_add": "CNI bridge+host-local ADD",
    "raw_floor": "raw floor (pyroute2 inline)",
    "tether_api_run_d": "tether API create+attach+start (detach)",
    "tether_cli_run_d": "tether CLI run -d --net NET",
    "tether_cli_help": "tether CLI --help (startup floor)",
    "tether_cli_run_rm_bridge": "tether CLI run --rm --net bridge true",
    "tether_cli_run_rm_host": "tether CLI run --rm --net host true",
    "nsenter_exec_true": "nsenter --net=HOST /bin/true",
    "exec_true": "/bin/true",
}


def print_summary(res: dict[str, Any]) -> None:
    levels = [str(x) for x in res["config"]["counts"]]
    m = res["machine"]
    print(f"\n# attach benchmark {res['started']}  {machine_brief(m)}")
    head = f"{'median / p95 (ms)':<40}" + "".join(f"{'N=' + lv:>20}" for lv in levels)
    print(head)
    print("-" * len(head))
    for metric in METRICS:
        row = f"{LABELS[metric]:<40}"
        for lv in levels:
            s = res["results"][metric][lv]
            row += f"{(str(s['median_ms']) + ' / ' + str(s['p95_ms'])) if s['n'] else '-':>20}"
        print(row)
    print(f"{'daemon RSS (MB)':<40}" + "".join(f"{res['daemon_rss_mb'][lv]:>20}" for lv in levels))
    print("\nratios (of medians)")
    keys = list(res["ratios"][levels[0]].keys())
    for k in keys:
        print(f"  {k:<36}" + "".join(f"{res['ratios'][lv][k]:>12}" for lv in levels))
    print("  growth N=%s/N=%s: %s" % (levels[-1], levels[0], ", ".join(f"{k} {v}" for k, v in res["ratios"]["growth"].items())))
    print(f"{'daemon open fds':<40}" + "".join(f"{res['daemon_open_fds'].get(lv, '-'):>20}" for lv in levels))
    if res["daemon_crash"]:
        c = res["daemon_crash"]
        print(f"\nTHE TETHER DAEMON CRASHED at N={c['level']} during {c['during']} (exit status {c['exit_status']}); "
              f"tether has no samples from there on. Daemon log tail:\n{c['log_tail']}")
    print_failures(res["failed_samples"], ", not timed", lambda f: f"N={f['level']} {f['sample']}: {f['error']}")
    print_targets(res["targets"], 6)


def markdown(res: dict[str, Any]) -> str:
    levels = [str(x) for x in res["config"]["counts"]]
    m = res["machine"]
    lines = [
        f"# attach benchmark, {res['date']}{' (quick)' if res['quick'] else ''}",
        "",
        machine_md(m) + f", containernetworking-plugins {m['cni_plugins']}. "
        f"tether {res['git_commit']} (tree sha256 {res['tether_tree_sha256']}). Run {res['started']} - {res['finished']} ({res['duration_s']} s); "
        f"{res['config']['samples']} samples per level (CLI run -d: {res['config']['cli_samples']}, "
        f"run --rm bridge/host: {res['config']['run_samples']} each).",
        "",
        "Median / p95 in ms, N = endpoints already attached (per method) when the sample is taken.",
        "",
        *md_head(f"N={lv}" for lv in levels),
    ]
    for metric in METRICS:
        lines.append(f"| {LABELS[metric]} | " + " | ".join(median_p95(res["results"][metric][lv]) for lv in levels) + " |")
    lines.append("| daemon RSS (MB) | " + " | ".join(str(res["daemon_rss_mb"][lv]) for lv in levels) + " |")
    lines += ["", "Ratios of medians:", "", *md_head(f"N={lv}" for lv in levels)]
    for k in res["ratios"][levels[0]]:
        lines.append(f"| {k} | " + " | ".join(str(res["ratios"][lv][k]) for lv in levels) + " |")
    lines += ["", f"Growth N={levels[-1]} / N={levels[0]}: "
              + ", ".join(f"{k} {v}" for k, v in res["ratios"]["growth"].items()), "", "Targets:", ""]
    for v in res["targets"]:
        lines.append(f"- **{'met' if v['met'] else 'MISSED'}**: {v['what']} = {v['value']} (target {v['target']})"
                     + (f"; {v['note']}" if v["note"] else ""))
    lines.insert(lines.index("Ratios of medians:") - 1,
                 "| daemon open fds | " + " | ".join(str(res["daemon_open_fds"].get(lv, "-")) for lv in levels) + " |")
    if res["daemon_crash"]:
        c = res["daemon_crash"]
        lines += ["", f"**The tether daemon crashed** at N={c['level']} during {c['during']} "
                  f"(exit status {c['exit_status']}); no tether samples from there on. Log tail:", "",
                  "```", c["log_tail"].strip(), "```"]
    if res["failed_samples"]:
        lines += ["", f"Failed samples ({len(res['failed_samples'])}, not timed, not in the medians):", ""]
        for f in res["failed_samples"]:
            lines.append(f"- N={f['level']} {f['sample']}: `{f['error']}`")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--counts", default=None, help="endpoint counts, comma-separated (default 10,100,500,1000)")
    p.add_argument("--quick", action="store_true", help="counts 10,100 and fewer samples")
    p.add_argument("--samples", type=int, default=None, help="samples per level for API/CNI/raw (default 25; quick 10)")
    p.add_argument("--cli-samples", type=int, default=None, help="tether run -d samples per level (default 10; quick 5)")
    p.add_argument("--run-samples", type=int, default=None, help="run --rm bridge/host samples each per level (default 20; quick 10)")
    args = parse_args(p)
    quick_defaults(args, counts=("10,100,500,1000", "10,100"), samples=(25, 10), cli_samples=(10, 5), run_samples=(20, 10))
    args.counts = ints(args.counts)
    if any(c < 1 for c in args.counts):
        p.error("counts must be positive")
    check_host(p, ("nsenter", "ip"), ("bridge", "host-local"))
    bench = Bench(args)
    res = run_bench(bench, failure_log=bench.daemon_log)
    print_summary(res)
    write_results(args.results_dir, f"attach-{res['date']}{'-quick' if args.quick else ''}", res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
