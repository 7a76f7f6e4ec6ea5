#!/usr/bin/env python3
"""Docker benchmark: tether's Docker network driver beside Docker's own ``bridge`` driver.

Run as root from the repository:  python bench/docker.py [--samples 20] [--warmup 3] [--quick]

One dockerd (Debian's docker.io) runs in a bench host namespace of its own, confined as
the e2e tests confine it (its own data and exec roots, API socket and containerd
namespace, ``--bridge=none --iptables=false``, vfs), next to a tether daemon that serves
Docker's network and IPAM driver under a per-run name. Two networks: one of Docker's
built-in ``bridge`` driver, one of tether's driver. Per sample, wall time of the docker
CLI: ``run --rm ... true``, ``start`` of a created container (the network is attached at
start) and ``network connect`` of a running container; ``--net none`` is the floor of the
first two (the runtime without any network). The networks alternate which goes first
every sample, after untimed warm-up rounds. Containers only run ``true`` and ``sleep``: no
packet is sent.

Everything carries the prefix ``tdkb<hex>`` and is removed at the end, also on failure
or Ctrl-C. Results: bench/results/docker-<date>[-quick].json and .md (see bench/README.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (NETNS_DIR, REPO, busybox_tarball, check_host, git_commit, log, machine_brief, machine_info,
                    machine_md, md_head, our_netns, parse_args, parser, print_failures, print_targets, quick_defaults,
                    result_head, rss_mb, run_bench, summary, tree_digest, verdict, write_results)

from tether.api.client import Client

DOCKER = "/usr/bin/docker"
BUSYBOX = "/bin/busybox"
IMAGE = "tbb:latest"
APPLETS = ("sh", "true", "sleep", "ping")
BRIDGE_SUBNET = "10.216.0.0/24"
TETHER_SUBNET = "10.217.0.0/24"
TARGET = 1.5  # tether's network share of `docker run` over the bridge driver's, at most
NETS = ("bridge", "none", "tether")  # the order of a sample; reversed every other one

OPS = {
    "run": "docker run --rm --net X tbb true",
    "start": "docker start (of a container created with --net X)",
    "connect": "docker network connect X (running container, no network)",
}


class DockerFailed(RuntimeError):
    pass


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        prefix = self.prefix = f"tdkb{secrets.token_hex(3)}"
        self.tmp = tempfile.mkdtemp(prefix=f"{prefix}-")
        self.host, self.plugin = f"{prefix}host", f"{prefix}d"
        self.api_socket, self.docker_socket = (os.path.join(self.tmp, f) for f in ("api.sock", "docker.sock"))
        self.plugin_socket = f"/run/docker/plugins/{self.plugin}.sock"
        self.net_name = {"bridge": "dbr", "tether": "tnet", "none": "none"}
        self.daemon: subprocess.Popen[bytes] | None = None
        self.dockerd: subprocess.Popen[bytes] | None = None
        self.parked = f"{self.prefix}-parked"  # the container that `network connect` samples attach
        self.samples: dict[str, list[float]] = {f"{op}_{net}": [] for op in OPS for net in NETS
                                                if not (op == "connect" and net == "none")}
        self.failures: list[str] = []
        self.count = 0
        self.addresses: dict[str, str] = {}
        self.tether_leftovers: list[str] = []  # what tether's daemon left on exit (the bench removes it)

    # ---------------------------------------------------------------- processes
    def in_host(self, *cmd: str) -> list[str]:
        return ["nsenter", f"--net={NETNS_DIR}/{self.host}", "--", *cmd]

    def spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        """``cmd`` in the bench host namespace, its own session, output to ``<tmp>/<name>.log``."""
        with open(os.path.join(self.tmp, f"{name}.log"), "ab") as out:
            return subprocess.Popen(self.in_host(*cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True, cwd=REPO)

    def log_tail(self, name: str, size: int = 2000) -> str:
        try:
            return Path(self.tmp, f"{name}.log").read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def logs(self) -> str:
        return "\n".join(f"--- {name}.log\n{self.log_tail(name)}" for name in ("tether", "dockerd"))

    def await_ready(self, what: str, proc: subprocess.Popen[bytes], ready: Callable[[], bool], limit: float) -> None:
        give_up = time.monotonic() + limit
        while not ready():
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited ({proc.returncode}):\n{self.log_tail(what)}")
            if time.monotonic() > give_up:
                raise RuntimeError(f"{what} not ready after {limit:.0f} s:\n{self.log_tail(what)}")
            time.sleep(0.1)

    def docker(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DOCKER, "-H", f"unix://{self.docker_socket}", *args], capture_output=True, text=True,
                              timeout=timeout, check=False)

    def must(self, *args: str) -> str:
        r = self.docker(*args)
        if r.returncode:
            raise DockerFailed(f"docker {' '.join(args)}: exit {r.returncode}: {(r.stderr or r.stdout).strip()[-400:]}")
        return r.stdout

    def timed(self, *args: str) -> float:
        t0 = time.perf_counter()
        self.must(*args)
        return time.perf_counter() - t0

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        subprocess.run(["ip", "netns", "add", self.host], check=True, capture_output=True)
        subprocess.run(["ip", "-n", self.host, "link", "set", "lo", "up"], check=True, capture_output=True)
        self.daemon = self.spawn("tether", [
            sys.executable, "-m", "tether.cli", "daemon", "--state-dir", os.path.join(self.tmp, "state"),
            "--socket", self.api_socket, "--netns-prefix", f"{self.prefix}t-", "--docker-plugin", self.plugin])
        client = Client(self.api_socket)
        self.await_ready("tether", self.daemon, lambda: client.alive() and os.path.exists(self.plugin_socket), 30)
        self.dockerd = self.spawn("dockerd", [
            "dockerd", "--data-root", os.path.join(self.tmp, "data"), "--exec-root", os.path.join(self.tmp, "exec"),
            "-H", f"unix://{self.docker_socket}", "--pidfile", os.path.join(self.tmp, "dockerd.pid"),
            "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
            "--userland-proxy=false", "--storage-driver", "vfs", "--containerd-namespace", self.prefix,
            "--containerd-plugins-namespace", f"{self.prefix}p"])
        self.await_ready("dockerd", self.dockerd, lambda: self.docker("version", timeout=20).returncode == 0, 60)
        self.must("import", busybox_tarball(self.tmp, APPLETS), IMAGE)
        self.must("network", "create", "-d", "bridge", "--subnet", BRIDGE_SUBNET,
                  "-o", f"com.docker.network.bridge.name={self.prefix}b", self.net_name["bridge"])
        self.must("network", "create", "-d", self.plugin, "--ipam-driver", self.plugin, "--subnet", TETHER_SUBNET,
                  "-o", f"tether.network={self.prefix}tn", self.net_name["tether"])
        # Docker attaches a container started with --net none to another network only once it
        # has left `none`; it then has no network at all between samples
        self.must("run", "-d", "--name", self.parked, "--net", "none", IMAGE, "sleep", "3600")
        self.must("network", "disconnect", "none", self.parked)
        # the real thing: a connect gives the container an address of the network's subnet
        for net, subnet in (("bridge", BRIDGE_SUBNET), ("tether", TETHER_SUBNET)):
            self.must("network", "connect", self.net_name[net], self.parked)
            address = self.must("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                                self.parked).strip()
            self.must("network", "disconnect", self.net_name[net], self.parked)
            if not address.startswith(subnet.rsplit(".", 1)[0] + "."):
                raise RuntimeError(f"a container connected to {self.net_name[net]} has address {address!r}, "
                                   f"not one of {subnet}")
            self.addresses[net] = address

    # ---------------------------------------------------------------- samples
    def keep(self, key: str, seconds: float, record: bool) -> None:
        if record:
            self.samples[key].append(seconds)

    def failed(self, key: str, exc: Exception) -> None:
        self.failures.append(f"{key}: {exc}")
        log(f"failed sample {key}: {exc}")

    def sample_run(self, net: str, record: bool) -> None:
        self.keep(f"run_{net}", self.timed("run", "--rm", "--net", self.net_name[net], IMAGE, "true"), record)

    def sample_start(self, net: str, record: bool) -> None:
        self.count += 1
        name = f"{self.prefix}-s{self.count}"
        try:
            self.must("create", "--name", name, "--net", self.net_name[net], IMAGE, "sleep", "60")
            self.keep(f"start_{net}", self.timed("start", name), record)
        finally:
            self.docker("rm", "-f", name)

    def sample_connect(self, net: str, record: bool) -> None:
        seconds = self.timed("network", "connect", self.net_name[net], self.parked)
        self.must("network", "disconnect", self.net_name[net], self.parked)
        self.keep(f"connect_{net}", seconds, record)

    def check_alive(self) -> None:
        for what, proc in (("tether", self.daemon), ("dockerd", self.dockerd)):
            if proc is None or proc.poll() is not None:
                raise RuntimeError(f"{what} died (exit {proc.returncode if proc else None}):\n{self.log_tail(what)}")

    def round(self, i: int, record: bool) -> None:
        self.check_alive()
        nets = NETS if i % 2 == 0 else NETS[::-1]
        for op, sample in (("run", self.sample_run), ("start", self.sample_start), ("connect", self.sample_connect)):
            for net in nets:
                if f"{op}_{net}" not in self.samples:
                    continue
                try:
                    sample(net, record)
                except (DockerFailed, subprocess.TimeoutExpired) as exc:
                    self.failed(f"{op}_{net}", exc)

    def run(self) -> dict[str, Any]:
        started = dt.datetime.now()
        self.setup()
        log(f"bench host {self.host}, driver {self.plugin}; {self.args.warmup} warm-up rounds, {self.args.samples} samples")
        for i in range(self.args.warmup):
            self.round(i, record=False)
        for i in range(self.args.samples):
            self.round(i, record=True)
            if (i + 1) % 5 == 0:
                log(f"{i + 1}/{self.args.samples} rounds")
        self.check_alive()
        assert self.daemon is not None
        rss = round(rss_mb(self.daemon.pid), 1)
        return self.results(started, dt.datetime.now(), rss)

    # ---------------------------------------------------------------- results
    def median(self, key: str) -> float:
        values = self.samples.get(key) or []
        return statistics.median(values) * 1000 if values else float("nan")

    def results(self, started: dt.datetime, finished: dt.datetime, rss: float) -> dict[str, Any]:
        rows = {key: {"label": f"{OPS[key.split('_')[0]]}, X = {key.split('_')[1]}", **summary(values),
                      "raw_samples_ms": [round(v * 1000, 3) for v in values]} for key, values in self.samples.items()}
        ratios: dict[str, Any] = {}
        for op in OPS:
            tether, bridge = rows[f"{op}_tether"], rows[f"{op}_bridge"]
            if tether["n"] and bridge["n"]:
                ratios[f"{op}_median"] = round(tether["median_ms"] / bridge["median_ms"], 3)
                ratios[f"{op}_p95"] = round(tether["p95_ms"] / bridge["p95_ms"], 3)
        shares: dict[str, Any] = {}
        for op in ("run", "start"):
            none = self.median(f"{op}_none")
            t, b = self.median(f"{op}_tether") - none, self.median(f"{op}_bridge") - none
            shares[op] = {"tether_ms": round(t, 2), "bridge_ms": round(b, 2), "ratio": round(t / b, 3) if b > 0 else None}
        share = shares["run"]["ratio"]
        target = verdict("tether's network share of docker run / the bridge driver's, (tether - none) / (bridge - none)",
                         share if share is not None else float("inf"), TARGET, "x",
                         note=f"{shares['run']['tether_ms']} ms / {shares['run']['bridge_ms']} ms of medians; "
                              f"docker start: {shares['start']['ratio']}x")
        return {
            **result_head("docker", started, finished),
            "quick": bool(self.args.quick),
            "machine": machine_info(),
            "commit": git_commit(),
            "tether_tree_sha256": tree_digest(),
            "config": {"samples": self.args.samples, "warmup": self.args.warmup, "prefix": self.prefix,
                       "bridge_subnet": BRIDGE_SUBNET, "tether_subnet": TETHER_SUBNET, "versions": versions(),
                       "addresses_seen": self.addresses},
            "rows": rows,
            "ratios_tether_over_bridge": ratios,
            "network_share": shares,
            "tether_daemon_rss_mb": rss,
            "targets": [target],
            "failures": self.failures,
        }

    # ---------------------------------------------------------------- cleanup
    def mentioning_us(self) -> list[str]:
        """Live processes whose command line names the temp dir or the prefix (a shim names
        its containerd namespace, the prefix)."""
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if int(pid) == os.getpid():
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
            except OSError:
                continue
            if state != "Z" and (self.tmp in cmdline or self.prefix in cmdline):
                found.append(f"{pid}: {cmdline.strip()[:200]}")
        return found

    def our_mounts(self) -> list[str]:
        with open("/proc/mounts") as f:
            points = [line.split()[1] for line in f]
        return [p for p in points if p == self.tmp or p.startswith(self.tmp + "/")]

    @staticmethod
    def stop(proc: subprocess.Popen[bytes] | None, grace: float) -> None:
        """SIGTERM, then SIGKILL to its process group after ``grace`` seconds."""
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def cleanup(self) -> list[str]:
        problems: list[str] = []
        if self.dockerd is not None and self.dockerd.poll() is None:
            ids = self.docker("ps", "-aq", timeout=30).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, timeout=120)
            for net in ("dbr", "tnet"):  # tnet while tether runs: tether removes the network it made
                self.docker("network", "rm", net, timeout=60)
        self.stop(self.dockerd, 40)
        self.stop(self.daemon, 20)
        left = self.mentioning_us()
        if left:
            problems.append(f"processes left after dockerd and tether stopped (killed): {left}")
            for entry in left:
                try:
                    os.kill(int(entry.split(":")[0]), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for point in sorted(self.our_mounts(), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        for name in our_netns(self.prefix):
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False).stdout
            for pid in pids.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for name in sorted(our_netns(self.prefix), key=lambda n: n == self.host):  # the host last
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        if os.path.exists(self.plugin_socket):  # tether's daemon exits without removing it
            self.tether_leftovers.append(f"Docker plugin socket {self.plugin_socket}")
            log(f"removing what the tether daemon left: {self.plugin_socket}")
            os.unlink(self.plugin_socket)
        shutil.rmtree(self.tmp, ignore_errors=True)
        time.sleep(0.2)
        for what, left in (("processes", self.mentioning_us()), ("mounts", self.our_mounts()),
                           ("namespaces", our_netns(self.prefix)), ("temp dir", [self.tmp] * os.path.exists(self.tmp))):
            if left:
                problems.append(f"{what} left: {left[:5]}")
        log("cleanup: done" + (f"; PROBLEMS: {problems}" if problems else ", nothing left"))
        return problems


def versions() -> dict[str, str]:
    out = {}
    for name, cmd in (("dockerd", ["dockerd", "--version"]), ("docker_cli", [DOCKER, "--version"]),
                      ("containerd", ["containerd", "--version"]), ("runc", ["runc", "--version"])):
        r = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=20)
        out[name] = (r.stdout.splitlines() or ["unknown"])[0].strip()
    return out


# ---------------------------------------------------------------------------- output
COLUMNS = ("bridge median", "bridge p95", "tether median", "tether p95", "none median", "none p95",
           "tether/bridge median", "tether/bridge p95", "network share tether/bridge")


def table(res: dict[str, Any]) -> list[tuple[str, ...]]:
    out = []
    for op, label in OPS.items():
        cells = []
        for net in ("bridge", "tether", "none"):
            row = res["rows"].get(f"{op}_{net}")
            for stat in ("median_ms", "p95_ms"):
                cells.append(f"{row[stat]:.1f}" if row and row.get("n") else "-")
        ratios = res["ratios_tether_over_bridge"]
        cells += [f"{ratios[k]:.2f}" if k in ratios else "-" for k in (f"{op}_median", f"{op}_p95")]
        share = res["network_share"].get(op, {}).get("ratio")
        cells.append(f"{share:.2f}" if share is not None else "-")
        out.append((label, *cells))
    return out


def print_summary(res: dict[str, Any]) -> None:
    print(f"\n# Docker network driver benchmark {res['started']}  {machine_brief(res['machine'])}")
    print(f"{res['config']['samples']} samples per cell, ms; network share = (X - none) / (bridge - none)\n")
    print(f"{'':<56}" + "".join(f"{c.replace('tether/bridge', 't/b').replace('network share', 'share'):>15}"
                                for c in COLUMNS))
    for label, *cells in table(res):
        print(f"{label:<56}" + "".join(f"{c:>15}" for c in cells))
    for op, s in res["network_share"].items():
        print(f"network share of {op}: tether {s['tether_ms']} ms, bridge {s['bridge_ms']} ms -> {s['ratio']}x")
    print(f"tether daemon RSS after the samples: {res['tether_daemon_rss_mb']} MB")
    print_failures(res["failures"])
    if res["tether_left_on_exit"]:
        print(f"left by tether's daemon on exit (removed): {res['tether_left_on_exit']}")
    print(f"cleanup problems: {res['cleanup_problems'] or 'none'}")
    print_targets(res["targets"], 6)


def markdown(res: dict[str, Any]) -> str:
    c = res["config"]
    software = "; ".join(c["versions"][k] for k in ("dockerd", "containerd", "runc"))
    run = (f"Run {res['started']} - {res['finished']}; {c['samples']} samples per cell after {c['warmup']} "
           "warm-up rounds.")
    title = "# Docker network driver benchmark, " + res["date"] + (" (quick)" if res["quick"] else "")
    lines = [
        title, "",
        f"{machine_md(res['machine'])}. {software}; client {c['versions']['docker_cli']}. tether {res['commit']} "
        f"(tree sha256 {res['tether_tree_sha256']}). {run}",
        "",
        "Wall time of the docker CLI in ms, X = Docker's `bridge` driver, tether's driver, or `none`. "
        "Network share = (X - none) / (bridge - none), of medians.",
        "",
        *md_head(COLUMNS),
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in table(res)]
    lines += [""]
    for op, s in res["network_share"].items():
        lines.append(f"- network share of `docker {op}`: tether {s['tether_ms']} ms, bridge {s['bridge_ms']} ms: "
                     f"**{s['ratio']}x**")
    lines += [f"- tether daemon RSS after the samples: {res['tether_daemon_rss_mb']} MB", ""]
    for t in res["targets"]:
        lines.append(f"**Target**: {t['what']} {t['target']}: **{t['value']}, {'MET' if t['met'] else 'MISSED'}** "
                     f"({t['note']}).")
    if res["failures"]:
        lines += ["", f"Failed samples ({len(res['failures'])}):", *[f"- {f}" for f in res["failures"][:10]]]
    if res.get("tether_left_on_exit"):
        lines += ["", "Left by tether's daemon when it exited (removed by the bench): "
                  + "; ".join(res["tether_left_on_exit"]) + "."]
    lines += ["", "Cleanup: " + ("; ".join(res["cleanup_problems"]) if res["cleanup_problems"] else
                                 "nothing left (no process naming the temp dir or prefix, no mount, no namespace).")]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--quick", action="store_true", help="5 samples after 1 warm-up round")
    p.add_argument("--samples", type=int, default=None, help="samples per cell (default 20; quick 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 3; quick 1)")
    args = parse_args(p)
    quick_defaults(args, samples=(20, 5), warmup=(3, 1))
    check_host(p, ("nsenter", "ip", "dockerd", "containerd", "runc"), install="apt-get install docker.io")
    for path in (DOCKER, BUSYBOX):
        if not os.access(path, os.X_OK):
            p.error(f"{path} is missing (apt-get install docker.io busybox-static)")
    bench = Bench(args)
    res = run_bench(bench, failure_log=bench.logs)
    res["tether_left_on_exit"] = bench.tether_leftovers
    print_summary(res)
    write_results(args.results_dir, f"docker-{res['date']}{'-quick' if args.quick else ''}", res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
