#!/usr/bin/env python3
"""macvlan attach benchmark: tether's API attach against the CNI reference ``macvlan`` plugin.

Run as root from the repository:  python bench/macvlan.py [--quick] [--samples N] [--fill N]

Same conventions as bench/attach.py, whose Bench (the daemon started with ``nsenter --net``
in a throwaway host namespace ``tbench<hex>host``, failure and crash bookkeeping, the
cleanup that kills by pid whatever runs in our namespaces and unbinds every
``tbench<hex>*`` namespace) and HostWorker this script reuses, and bench/common.py's
helpers. The host namespace gets a LAN: a veth ``lan0`` whose other end is in
``tbench<hex>lan`` (10.214.0.1, the "router"). ``lan0`` is the parent of everything
measured, so every method makes the same kind of child on the same link:

* tether API attach, macvlan      POST /networks/mv/connect of a created (not started)
                                  ``--net none`` container: the daemon's share of an attach
                                  (as attach.py's bridge row), on ``-d macvlan -o parent=lan0``
* tether API attach, host_access  the same on a second macvlan network on lan0 with
                                  ``-o host_access=true`` (adds the host route via the shim)
* tether API attach, bridge       the same on a bridge network: the bridge row of attach.py,
                                  in this run, for comparison
* tether API create+attach        POST /containers ``{"net": "mv", "detach": false}``
* CNI macvlan ADD                 /usr/lib/cni/macvlan (``master: lan0``, bridge mode,
                                  host-local IPAM) on a namespace made beforehand (not timed)
* raw floor                       pyroute2 in-process: one ``link add`` of the macvlan child
                                  made directly in the namespace (name, MAC, MTU), then from
                                  inside: address, up, default route
* API GET /ping, nsenter          the transport floor, and the nsenter wrapper around CNI

Samples are interleaved, the order rotated every sample; each sample's endpoint is removed
right after it (untimed). ``--fill N`` attaches N endpoints of each method first (default
10, as attach.py's first level). Target: tether API attach on macvlan / CNI macvlan ADD at
most 0.25 (CNI without its nsenter wrapper, as attach.py judges). When it is missed the
daemon is restarted under a per-thread cProfile (``--profile`` forces this, ``--no-profile``
skips it) for ``--profile-samples`` more attaches, and where the time goes is reported.
Results: bench/results/macvlan-<date>[-quick].json and .md (and the profile's text).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pstats
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The daemon under cProfile is this file run as `macvlan.py --profiled-daemon OUT tether-args...`:
# nothing but the profiler may be set up before tether is imported (see profiled_daemon).
if __name__ == "__main__" and sys.argv[1:2] == ["--profiled-daemon"]:
    PROFILED_DAEMON = True
else:
    PROFILED_DAEMON = False
    import attach  # its Bench (daemon, namespaces, bookkeeping, cleanup) and HostWorker are reused
    from common import (CNI_DIR, NETNS_DIR, REPO, check_host, crash_and_failures_md, git_commit, log, machine_brief,
                        machine_info, machine_md, md_head, median_p95, now, parse_args, parser, quick_defaults,
                        result_head, rss_mb, run_bench, summary, tree_digest, write_results)
    from pyroute2 import IPRoute  # type: ignore[import-untyped]

PARENT = "lan0"  # in the bench host namespace; its peer is the lan namespace's eth0
LAN_ROUTER = "10.214.0.1"
# One LAN subnet, split: tether's --ip-range, CNI's host-local range, the raw floor's addresses.
MV = {"name": "mv", "subnet": "10.214.0.0/16", "gateway": LAN_ROUTER, "ip_range": "10.214.0.0/20"}
CNI_RANGE = ("10.214.16.2", "10.214.31.254")
RAW_NET = "10.214.32"  # .2 ... : a /16 address each
# host_access needs its own subnet on the same parent (one subnet per parent); the bridge row its own.
MVH = {"name": "mvh", "subnet": "10.215.0.0/16", "gateway": "10.215.0.1", "ip_range": "10.215.0.0/20"}
BR = {"name": "br", "subnet": "10.216.0.0/22"}
TARGET = 0.25  # tether API attach on macvlan / CNI macvlan ADD (minus nsenter), at most

METRICS = {
    "tether_api_ping": "tether API GET /ping (transport floor)",
    "tether_api_attach_macvlan": "tether API attach (connect), macvlan",
    "tether_api_attach_macvlan_host_access": "tether API attach (connect), macvlan + host_access",
    "tether_api_attach_bridge": "tether API attach (connect), bridge",
    "tether_api_create_attach_macvlan": "tether API create+attach, macvlan",
    "cni_macvlan_add": "CNI macvlan+host-local ADD",
    "cni_macvlan_del": "CNI macvlan+host-local DEL",
    "raw_floor_macvlan": "raw floor (pyroute2 inline macvlan child)",
    "nsenter_exec_true": "nsenter --net=HOST /bin/true",
    "exec_true": "/bin/true",
}


# ---------------------------------------------------------------------------- the profiled daemon
def profiled_daemon(out: str, argv: list[str]) -> None:
    """Run ``tether ARGV`` (the daemon) with a cProfile in every thread, merged on demand.

    cProfile sees only the thread that enabled it, and the daemon's work runs in its request
    workers, the netlink host worker and short-lived namespace threads: so every
    ``threading.Thread`` runs under a profiler of its own, the main thread too. SIGUSR1
    clears them all (the start of the window), SIGUSR2 writes their merged stats to ``out``
    (pstats format; calls still open are left out). Wall-clock timer: a thread waiting on a
    lock is charged for the wait, in the lock's ``acquire``."""
    import cProfile
    import threading

    profilers: list[cProfile.Profile] = []
    guard = threading.Lock()

    def profiler() -> cProfile.Profile:
        p = cProfile.Profile()
        with guard:
            profilers.append(p)
        return p

    run = threading.Thread.run

    def profiled_run(self: threading.Thread) -> None:
        p = profiler()
        p.enable()
        try:
            run(self)
        finally:
            p.disable()

    threading.Thread.run = profiled_run  # type: ignore[method-assign]

    class Snapshot:  # what pstats.Stats loads: no create_stats() (it would disable the profiler)
        def __init__(self, stats: dict[Any, Any]) -> None:
            self.stats = stats

        def create_stats(self) -> None:
            pass

    def clear(signum: int, frame: Any) -> None:
        with guard:
            for p in profilers:
                p.clear()

    def dump(signum: int, frame: Any) -> None:
        merged: pstats.Stats | None = None
        with guard:
            every = list(profilers)
        for p in every:
            p.snapshot_stats()
            if not p.stats:  # type: ignore[attr-defined]
                continue
            one = Snapshot(dict(p.stats))  # type: ignore[attr-defined]
            merged = pstats.Stats(one) if merged is None else merged.add(one)  # type: ignore[arg-type]
        if merged is not None:
            merged.dump_stats(out + ".tmp")
            os.replace(out + ".tmp", out)

    signal.signal(signal.SIGUSR1, clear)
    signal.signal(signal.SIGUSR2, dump)
    profiler().enable()
    from tether.cli import main

    main(argv)


# ---------------------------------------------------------------------------- the bench
if not PROFILED_DAEMON:

    class MacvlanBench(attach.Bench):
        """attach.Bench's daemon, host namespace, failure bookkeeping and cleanup; own rows."""

        TETHER_SAMPLERS = {"sample_attach", "sample_create", "sample_ping"}

        def __init__(self, args: argparse.Namespace) -> None:
            args.counts = [1]  # attach.Bench sizes its (unused here) fill networks from this
            super().__init__(args)
            self.lan = f"{self.prefix}lan"
            self.raw_count = 0
            self.profile: dict[str, Any] | None = None
            self.networks: dict[str, Any] = {}

        # -- setup ------------------------------------------------------------------------
        def setup(self) -> None:
            log(f"prefix {self.prefix}: host netns {self.host} (parent {PARENT}), lan netns {self.lan}, "
                f"temp dir {self.tmp}")
            run = lambda *c: subprocess.run(list(c), check=True, capture_output=True)  # noqa: E731
            for ns in (self.host, self.lan):
                run("ip", "netns", "add", ns)
                run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "link", "add", PARENT, "netns", self.host, "type", "veth", "peer", "name", "eth0", "netns",
                self.lan)
            run("ip", "-n", self.lan, "addr", "add", f"{LAN_ROUTER}/16", "dev", "eth0")
            run("ip", "-n", self.host, "link", "set", PARENT, "up")
            run("ip", "-n", self.lan, "link", "set", "eth0", "up")
            os.makedirs(self.state_dir)
            os.makedirs(self.cni_data)
            self.worker = attach.HostWorker(self.host_path)
            self.start_daemon()
            self.networks = {
                "mv": self.client.post("/networks", {**MV, "driver": "macvlan", "options": {"parent": PARENT}}),
                "mvh": self.client.post("/networks", {**MVH, "driver": "macvlan",
                                                      "options": {"parent": PARENT, "host_access": "true"}}),
                "br": self.client.post("/networks", BR),
            }

        # -- tether ---------------------------------------------------------------------------
        def sample_attach(self, level: int, net: str) -> None:
            metric = {"mv": "tether_api_attach_macvlan", "mvh": "tether_api_attach_macvlan_host_access",
                      "br": "tether_api_attach_bridge"}[net]
            name = self.name("a")
            self.tether_create(name, "none")  # created, not started: own netns with only lo
            t0 = now()
            ep = self.client.post(f"/networks/{net}/connect", {"container": name})
            self.record(metric, level, now() - t0)
            self.tether_remove(name, ep.get("host_ifname") if net == "br" else None)

        def sample_create(self, level: int) -> None:
            name = self.name("c")
            t0 = now()
            self.tether_create(name, "mv")
            self.record("tether_api_create_attach_macvlan", level, now() - t0)
            self.tether_remove(name, None)

        def sample_ping(self, level: int) -> None:
            t0 = now()
            self.client.get("/ping")
            self.record("tether_api_ping", level, now() - t0)

        def tether_fill(self, target: int) -> None:
            for _ in range(target):
                self.tether_create(self.name("f"), "mv")

        # -- CNI --------------------------------------------------------------------------------
        def cni_conf(self) -> bytes:
            return json.dumps({
                "cniVersion": "1.0.0",
                "name": f"{self.prefix}-mv",
                "type": "macvlan",
                "master": PARENT,
                "mode": "bridge",
                "ipam": {"type": "host-local", "subnet": MV["subnet"], "rangeStart": CNI_RANGE[0],
                         "rangeEnd": CNI_RANGE[1], "gateway": LAN_ROUTER, "routes": [{"dst": "0.0.0.0/0"}],
                         "dataDir": self.cni_data},
            }).encode()

        def cni_macvlan(self, command: str, netns: str) -> tuple[float, dict[str, Any]]:
            env = {
                "CNI_COMMAND": command,
                "CNI_CONTAINERID": netns,
                "CNI_NETNS": f"{NETNS_DIR}/{netns}",
                "CNI_IFNAME": "eth0",
                "CNI_PATH": CNI_DIR,
                "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            }
            t0 = now()
            res = subprocess.run([*self.enter(), f"{CNI_DIR}/macvlan"], input=self.cni_conf(), env=env,
                                 capture_output=True, timeout=60)
            elapsed = now() - t0
            if res.returncode != 0:
                raise RuntimeError(f"CNI macvlan {command} failed ({res.returncode}): {res.stdout!r} {res.stderr!r}")
            return elapsed, (json.loads(res.stdout) if res.stdout.strip() else {})

        def cni_fill(self, target: int) -> None:
            assert self.worker is not None
            for _ in range(target):
                netns = f"{self.prefix}c-{self.name('f')}"
                self.worker.create_netns(netns)
                self.cni_macvlan("ADD", netns)

        def sample_cni(self, level: int) -> None:
            assert self.worker is not None
            netns = f"{self.prefix}c-{self.name('s')}"
            self.worker.create_netns(netns)  # not timed
            elapsed, result = self.cni_macvlan("ADD", netns)
            self.record("cni_macvlan_add", level, elapsed)
            if not any(i.get("sandbox") for i in result.get("interfaces", [])):
                raise RuntimeError(f"CNI macvlan ADD returned no interface in the sandbox: {result}")
            elapsed, _ = self.cni_macvlan("DEL", netns)
            self.record("cni_macvlan_del", level, elapsed)
            self.worker.delete_netns(netns)

        # -- raw floor ----------------------------------------------------------------------------
        def raw_attach(self, netns: str, address: str) -> float:
            """What the datapath's attach_macvlan does, inline: the child made in the namespace
            with its name, MAC and MTU, then address, up and default route from inside."""
            assert self.worker is not None
            worker = self.worker
            mac = "02:42:" + ":".join(f"{int(b):02x}" for b in address.split("."))

            def work() -> float:
                t0 = now()
                fd = os.open(f"{NETNS_DIR}/{netns}", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    worker.ipr.link("add", ifname="eth0", kind="macvlan", link=socket.if_nametoindex(PARENT),
                                    macvlan_mode="bridge", address=mac, mtu=1500, net_ns_fd=fd)
                    attach.setns(fd)
                    try:
                        inner = IPRoute(groups=0)
                        try:
                            index = socket.if_nametoindex("eth0")
                            inner.addr("add", index=index, address=address, prefixlen=16)
                            inner.link("set", index=index, state="up")
                            inner.route("add", dst="0.0.0.0/0", gateway=LAN_ROUTER, oif=index)
                        finally:
                            inner.close()
                    finally:
                        attach.setns(worker.host_fd)
                finally:
                    os.close(fd)
                return now() - t0

            return worker.call(work)

        def raw_one(self) -> tuple[float, str]:
            assert self.worker is not None
            netns = f"{self.prefix}r-{self.name('r')}"
            self.worker.create_netns(netns)  # not timed
            self.raw_count += 1
            address = f"{RAW_NET}.{self.raw_count % 250 + 2}" if self.raw_count < 250 else \
                f"10.214.{33 + self.raw_count // 250}.{self.raw_count % 250 + 2}"
            return self.raw_attach(netns, address), netns

        def sample_raw(self, level: int) -> None:
            assert self.worker is not None
            elapsed, netns = self.raw_one()
            self.record("raw_floor_macvlan", level, elapsed)
            self.worker.delete_netns(netns)

        # -- profile ------------------------------------------------------------------------------
        def start_profiled_daemon(self, out: str) -> None:
            """Stop the daemon (SIGTERM: containers stay) and start it again on the same state
            under ``profiled_daemon``."""
            assert self.daemon is not None
            self.daemon.terminate()
            self.daemon.wait(timeout=30)
            if os.path.exists(self.socket):
                os.unlink(self.socket)
            logf = open(os.path.join(self.tmp, "daemon.log"), "ab")
            self.daemon = subprocess.Popen(
                [*self.enter(), sys.executable, str(Path(__file__).resolve()), "--profiled-daemon", out, "daemon",
                 "--state-dir", self.state_dir, "--socket", self.socket, "--netns-prefix", f"{self.prefix}t-"],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True, env=self.env(),
                cwd=str(REPO),
            )
            logf.close()
            deadline = time.monotonic() + 30
            while not self.client.alive():
                if self.daemon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the profiled daemon did not answer:\n" + self.daemon_log())
                time.sleep(0.05)
            self.daemon_pid = int(self.client.get("/ping")["pid"])

        def run_profile(self) -> dict[str, Any]:
            """``--profile-samples`` attaches under the profiled daemon; the window holds only
            the connects (their ``--net none`` containers are made before it, removed after)."""
            n = self.args.profile_samples
            out = os.path.join(self.tmp, "attach.pstats")
            log(f"profile: the daemon restarted under cProfile, {n} macvlan attaches")
            self.start_profiled_daemon(out)
            for _ in range(3):  # warm-up under the profiler: first use of every path
                self.sample_attach(-1, "mv")
            names = [self.name("p") for _ in range(n)]
            for name in names:
                self.tether_create(name, "none")
            os.kill(self.daemon_pid, signal.SIGUSR1)
            time.sleep(0.2)
            took = []
            for name in names:
                t0 = now()
                self.client.post("/networks/mv/connect", {"container": name})
                took.append(now() - t0)
            os.kill(self.daemon_pid, signal.SIGUSR2)
            deadline = time.monotonic() + 30
            while not os.path.exists(out):
                if time.monotonic() > deadline:
                    raise RuntimeError("the profiled daemon wrote no stats:\n" + self.daemon_log())
                time.sleep(0.05)
            for name in names:
                self.tether_remove(name, None)
            return summarise_profile(pstats.Stats(out), n, statistics.median(took) * 1000)

        # -- the run --------------------------------------------------------------------------------
        def run(self) -> dict[str, Any]:  # type: ignore[override]
            a = self.args
            started = dt.datetime.now()
            self.tree_digest = tree_digest()
            self.setup()
            assert self.worker is not None
            log("warm-up")
            for net in ("mv", "mvh", "br"):
                self.sample_attach(0, net)
            self.sample_create(0)
            self.sample_cni(0)
            self.sample_raw(0)
            self.samples.clear()
            if a.fill:
                log(f"fill: {a.fill} endpoints of tether (on mv) and of CNI macvlan on {PARENT}")
                self.tether_fill(a.fill)
                self.cni_fill(a.fill)
            level = a.fill
            samplers: list[tuple[Any, tuple[Any, ...]]] = [
                (self.sample_attach, ("mv",)), (self.sample_cni, ()), (self.sample_attach, ("mvh",)),
                (self.sample_attach, ("br",)), (self.sample_raw, ()), (self.sample_create, ()),
            ]
            log(f"{a.samples} samples of each row, interleaved")
            for i in range(a.samples):
                k = i % len(samplers)
                for fn, args in samplers[k:] + samplers[:k]:
                    self.guard(level, fn, *args)
                self.guard(level, self.sample_ping)
                self.guard(level, self.sample_nsenter)
            self.check_daemon(level, "sampling")
            rss = rss_mb(self.daemon_pid) if self.daemon_alive() else float("nan")
            res = self.results(started, dt.datetime.now(), level, rss)
            missed = any(not v["met"] for v in res["targets"])
            if self.daemon_alive() and (a.profile or (missed and not a.no_profile)):
                try:
                    self.profile = self.run_profile()
                except Exception as exc:  # noqa: BLE001
                    self.note_failure(-1, "profile", exc)
                    self.profile = {"error": f"{type(exc).__name__}: {exc}"[:1500]}
            res["profile"] = self.profile
            res["finished"] = dt.datetime.now().isoformat(timespec="seconds")
            return res

        def med(self, metric: str, level: int) -> float:  # type: ignore[override]
            v = self.samples.get(metric, {}).get(level, [])
            return statistics.median(v) * 1000 if v else float("nan")

        def results(self, started: dt.datetime, finished: dt.datetime, level: int,  # type: ignore[override]
                    rss: float) -> dict[str, Any]:
            table = {m: summary(self.samples.get(m, {}).get(level, [])) for m in METRICS}
            attach_ms = self.med("tether_api_attach_macvlan", level)
            cni = self.med("cni_macvlan_add", level)
            ns_overhead = self.med("nsenter_exec_true", level) - self.med("exec_true", level)
            raw = self.med("raw_floor_macvlan", level)
            ratios = {
                "attach_over_cni": round(attach_ms / cni, 3),
                "attach_over_cni_minus_nsenter": round(attach_ms / (cni - ns_overhead), 3),
                "nsenter_overhead_ms": round(ns_overhead, 3),
                "attach_over_raw": round(attach_ms / raw, 2),
                "cni_over_raw": round(cni / raw, 2),
                "host_access_over_plain": round(self.med("tether_api_attach_macvlan_host_access", level) / attach_ms, 3),
                "macvlan_over_bridge_attach": round(attach_ms / self.med("tether_api_attach_bridge", level), 3),
                "create_attach_over_cni": round(self.med("tether_api_create_attach_macvlan", level) / cni, 3),
                "attach_minus_ping_ms": round(attach_ms - self.med("tether_api_ping", level), 3),
            }
            verdicts = [{
                "what": f"tether API attach on macvlan / CNI macvlan ADD at N={level} (CNI without its nsenter wrapper)",
                "value": ratios["attach_over_cni_minus_nsenter"], "target": f"<= {TARGET} ratio",
                "met": ratios["attach_over_cni_minus_nsenter"] <= TARGET,
                "note": f"{attach_ms:.2f} vs {cni:.2f} ms (nsenter {ns_overhead:.2f} ms); with nsenter counted in "
                        f"CNI: {ratios['attach_over_cni']}" + ("; quick run: few samples" if self.args.quick else ""),
            }]
            return {
                **result_head("macvlan", started, finished),
                "duration_s": round((finished - started).total_seconds(), 1),
                "quick": bool(self.args.quick),
                "machine": machine_info(),
                "git_commit": git_commit(),
                "tether_tree_sha256": self.tree_digest,
                "config": {"samples": self.args.samples, "fill": level, "profile_samples": self.args.profile_samples,
                           "parent": PARENT, "networks": {"mv": MV, "mvh": MVH, "br": BR},
                           "cni": json.loads(self.cni_conf())},
                "labels": METRICS,
                "results": table,
                "ratios": ratios,
                "daemon_rss_mb": round(rss, 1),
                "targets": verdicts,
                "failed_samples": self.failures,
                "daemon_crash": self.daemon_crash,
                "raw_samples_ms": {m: [round(x * 1000, 3) for x in per.get(level, [])]
                                   for m, per in self.samples.items()},
            }


# ---------------------------------------------------------------------------- the profile's summary
def _where(func: tuple[str, int, str]) -> str:
    path, line, name = func
    if path == "~":
        return name  # a builtin, e.g. <method 'acquire' of '_thread.lock' objects>
    short = path.split("site-packages/")[-1].split("/work/main/")[-1]
    for marker in ("/lib/python3.11/",):
        short = short.split(marker)[-1]
    return f"{short}:{line}({name})"


# The roots of the call trees reported: the request handler, and the two kinds of thread
# the datapath hands work to (the host worker, and a throwaway thread inside a namespace).
_ROOTS = (
    ("api/server.py", "networks_connect", "the request handler (its thread)"),
    ("datapath/workers.py", "_on_worker", "the host worker thread (host-namespace netlink)"),
    ("datapath/nsutil.py", "body", "the throwaway threads inside the container's namespace"),
)
_WAITS = ("acquire", "'get' of '_queue", "select", "poll", "sleep")  # a thread waiting, not working


def summarise_profile(stats: pstats.Stats, n: int, median_ms: float) -> dict[str, Any]:
    """Where the daemon's time per attach goes: call trees from ``_ROOTS`` (cumulative ms per
    attach, children of 0.05 ms or more), and the top functions by own and by cumulative
    time, every thread. cProfile keeps caller -> callee totals, not whole paths: below a
    function called from several places, its children are scaled by the share of its time
    that this caller accounts for."""
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    children: dict[Any, dict[Any, float]] = {}
    for func, (_cc, _nc, _tt, _ct, callers) in raw.items():
        for caller, (_c, _n, _t, ct) in callers.items():
            children.setdefault(caller, {})[func] = ct
    trees: dict[str, list[str]] = {}

    def walk(lines: list[str], func: Any, ms: float, depth: int, seen: frozenset[Any]) -> None:
        lines.append(f"{'  ' * depth}{ms:7.3f} ms  {_where(func)}")
        total = raw[func][3] * 1000 / n
        share = ms / total if total > 0 else 0.0
        if depth >= 10:
            return
        for kid, ct in sorted(children.get(func, {}).items(), key=lambda kv: -kv[1]):
            per = ct * 1000 / n * share
            if per >= 0.05 and kid not in seen:
                walk(lines, kid, per, depth + 1, seen | {kid})

    for suffix, name, label in _ROOTS:
        for root in (f for f in raw if f[2] == name and f[0].endswith(suffix)):
            trees[label] = lines = []
            walk(lines, root, raw[root][3] * 1000 / n, 0, frozenset({root}))
    own = sorted(((f, v[2]) for f, v in raw.items()), key=lambda kv: -kv[1])
    top_own = [{"ms_per_attach": round(t * 1000 / n, 3), "calls_per_attach": round(raw[f][1] / n, 1),
                "function": _where(f)} for f, t in own if not any(w in f[2] for w in _WAITS)][:25]
    top_cum = sorted(((f, v[3]) for f, v in raw.items() if ("tether/" in f[0] or "pyroute2" in f[0])),
                     key=lambda kv: -kv[1])
    return {
        "attaches": n,
        "median_ms_under_profile": round(median_ms, 3),
        "trees": trees,
        "top_own_time": top_own,
        "top_cumulative_tether_pyroute2": [{"ms_per_attach": round(c * 1000 / n, 3), "function": _where(f)}
                                           for f, c in top_cum[:30]],
    }


# ---------------------------------------------------------------------------- reports
def print_summary(res: dict[str, Any]) -> None:
    print(f"\n# macvlan attach benchmark {res['started']}  {machine_brief(res['machine'])}")
    print(f"{'median / p95 (ms), N=' + str(res['config']['fill']):<58}")
    for metric, label in METRICS.items():
        s = res["results"][metric]
        print(f"  {label:<56} {median_p95(s):>20}  (n={s['n']})")
    print("\nratios (of medians)")
    for k, v in res["ratios"].items():
        print(f"  {k:<40} {v}")
    print(f"  daemon RSS {res['daemon_rss_mb']} MB")
    prof = res.get("profile")
    if prof and "trees" in prof:
        print(f"\nprofile ({prof['attaches']} attaches under cProfile, median {prof['median_ms_under_profile']} ms each)")
        for label, lines in prof["trees"].items():
            print(f"-- {label}:")
            print("\n".join(lines[:40]))
    elif prof:
        print(f"\nprofile failed: {prof.get('error')}")
    if res["failed_samples"]:
        print(f"\nFAILED SAMPLES ({len(res['failed_samples'])}, not timed):")
        for f in res["failed_samples"]:
            print(f"  {f['sample']}: {f['error']}")
    print("\ntargets")
    for v in res["targets"]:
        print(f"  [{'MET' if v['met'] else 'MISSED':<6}] {v['what']}: {v['value']} (target {v['target']})  -- {v['note']}")


def markdown(res: dict[str, Any]) -> str:
    m, cfg = res["machine"], res["config"]
    lines = [
        f"# macvlan attach benchmark, {res['date']}{' (quick)' if res['quick'] else ''}",
        "",
        machine_md(m) + f", containernetworking-plugins {m['cni_plugins']}. tether {res['git_commit']} "
        f"(tree sha256 {res['tether_tree_sha256']}). Run {res['started']} - {res['finished']} "
        f"({res['duration_s']} s of samples); {cfg['samples']} samples per row, interleaved, the order rotated "
        f"every sample, with {cfg['fill']} endpoints of each method attached beforehand.",
        "",
        f"Everything in one host namespace with a LAN: parent `{PARENT}`, a veth to a lan namespace "
        f"({LAN_ROUTER}). tether: `mv` = `-d macvlan -o parent={PARENT} --subnet {MV['subnet']} --ip-range "
        f"{MV['ip_range']}`; `mvh` = the same on {MVH['subnet']} with `-o host_access=true`; `br` = a bridge "
        f"network {BR['subnet']}. CNI: `/usr/lib/cni/macvlan`, `master: {PARENT}`, bridge mode, host-local "
        f"{CNI_RANGE[0]}-{CNI_RANGE[1]}, through `nsenter --net` into the host namespace.",
        "",
        "Median / p95 in ms:",
        "",
        *md_head([f"N={cfg['fill']}"]),
    ]
    for metric, label in METRICS.items():
        lines.append(f"| {label} | {median_p95(res['results'][metric])} |")
    lines += ["", "Ratios of medians:", "", *md_head(["value"])]
    lines += [f"| {k} | {v} |" for k, v in res["ratios"].items()]
    lines += ["", f"Daemon RSS after the samples: {res['daemon_rss_mb']} MB.", "", "Targets:", ""]
    for v in res["targets"]:
        lines.append(f"- **{'met' if v['met'] else 'MISSED'}**: {v['what']} = {v['value']} (target {v['target']})"
                     + (f"; {v['note']}" if v["note"] else ""))
    prof = res.get("profile")
    if prof and "trees" in prof:
        lines += ["", f"## Where the daemon's time goes ({prof['attaches']} attaches under cProfile)", "",
                  f"The daemon restarted under a cProfile per thread (`macvlan.py --profiled-daemon`); "
                  f"{prof['attaches']} `POST /networks/mv/connect` of containers made before the window, after 3 "
                  f"of warm-up; median {prof['median_ms_under_profile']} ms each under the profiler (cProfile's own "
                  "cost inflates every call: read the shares, not the absolute figures). Call trees, cumulative ms "
                  "per attach, children of 0.05 ms or more (a thread waiting for another is charged the wait, in "
                  "`acquire` or `join`):", ""]
        for label, tree in prof["trees"].items():
            lines += [f"{label}:", "", "```", *tree[:60], "```", ""]
        lines += ["Top own time per attach, every thread (waits on locks, queues and selectors left out):", "",
                  "| ms per attach | calls per attach | function |", "|---:|---:|---|"]
        lines += [f"| {r['ms_per_attach']} | {r['calls_per_attach']} | `{r['function']}` |" for r in prof["top_own_time"]]
        lines += ["", "Top cumulative time per attach in tether and pyroute2, every thread:", "",
                  "| ms per attach | function |", "|---:|---|"]
        lines += [f"| {r['ms_per_attach']} | `{r['function']}` |" for r in prof["top_cumulative_tether_pyroute2"]]
    elif prof:
        lines += ["", f"The profile failed: {prof.get('error')}"]
    lines += crash_and_failures_md(res)
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--quick", action="store_true", help="fewer samples (about half a minute)")
    p.add_argument("--samples", type=int, default=None, help="samples per row (default 40; quick 10)")
    p.add_argument("--fill", type=int, default=None, help="endpoints of each method attached first (default 10)")
    p.add_argument("--profile", action="store_true", help="profile the daemon even if the target is met")
    p.add_argument("--no-profile", action="store_true", help="never profile")
    p.add_argument("--profile-samples", type=int, default=None, help="attaches under the profiler (default 100; quick 30)")
    args = parse_args(p)
    quick_defaults(args, samples=(40, 10), profile_samples=(100, 30))
    if args.fill is None:
        args.fill = 10
    if args.samples < 1 or args.fill < 0 or args.profile_samples < 1:
        p.error("--samples and --profile-samples must be positive, --fill not negative")
    check_host(p, ("nsenter", "ip"), ("macvlan", "host-local"))
    bench = MacvlanBench(args)
    res = run_bench(bench, failure_log=bench.daemon_log)
    print_summary(res)
    write_results(args.results_dir, f"macvlan-{res['date']}{'-quick' if args.quick else ''}", res, markdown(res))
    return 0


if __name__ == "__main__":
    if PROFILED_DAEMON:
        profiled_daemon(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(main())
