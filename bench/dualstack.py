#!/usr/bin/env python3
"""Dual-stack benchmark: attach and published-port throughput, IPv6 beside IPv4, in one run.

Run as root from the repository:  python bench/dualstack.py [--quick] [--samples N]

Same conventions as bench/attach.py, whose Bench (the daemon started with ``nsenter --net``
in a throwaway host namespace, failure and crash bookkeeping, the cleanup that kills by pid
whatever runs in our namespaces and unbinds every ``tbench<hex>*`` namespace) this script
imports, and bench/common.py's helpers. Two namespaces of ours: the "host"
``tbench<hex>host`` (the daemon, its bridges, nftables tables and every container) and a
"lan" ``tbench<hex>lan`` joined to it by a veth, with addresses on documentation prefixes
only (host 198.51.100.2 and 2001:db8:1::2, lan 198.51.100.1 and 2001:db8:1::1, v6 with
``nodad``). Packets only travel between these namespaces and the containers'.

Two parts, in this order (see bench/README.md):

1. attach   ``POST /containers`` (``detach``, ``sleep``) on a dual-stack network
            (``{"ipv6": true, "subnet": V4, "subnet6": V6}``) against a v4-only one,
            interleaved sample by sample; and ``tether run -d`` (the CLI, a process each)
            the same way. Target: dual / v4 at most 1.15x (medians of the API samples).
2. iperf3   a container on a dual-stack network runs ``iperf3 -s``, published with
            ``-p 5201:5201``; from the lan, ``iperf3 -4 -c 198.51.100.2`` and
            ``iperf3 -6 -c 2001:db8:1::2`` alternately, several rounds. Target: v6 / v4 at
            least 0.95x (medians, Gbit/s). Beside them, the floor: the same over a plain
            namespace ``tbench<hex>floor`` routed by the host (192.0.2.2, 2001:db8:2::2),
            which no tether rule or DNAT touches: the kernel's own v6 / v4.

Results: bench/results/dualstack-<date>[-quick].json and .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import attach  # its Bench (daemon, namespaces, bookkeeping, cleanup) and HostWorker are reused
from common import (NETNS_DIR, check_host, crash_and_failures_md, git_commit, iperf3, log, machine_info, machine_md,
                    md_head, median_p95, now, parse_args, parser, quick_defaults, result_head, rss_mb, run_bench,
                    summary, tree_digest, write_results)

# Container networks live in our host namespace only (10.211-219 are the other benches',
# 10.230-234 the tests'). ULA for the v6 halves, as the e2e tests use.
V4_ONLY = ("n4", "10.227.0.0/24", None)
DUAL = ("n46", "10.228.0.0/24", "fd00:228::/64")
TPUT = ("tp46", "10.229.0.0/24", "fd00:229::/64")
# The lan link: documentation prefixes only (TEST-NET-2 and 2001:db8::/32).
HOST_IP, LAN_IP = "198.51.100.2", "198.51.100.1"
HOST_IP6, LAN_IP6 = "2001:db8:1::2", "2001:db8:1::1"
# The floor: a plain namespace routed by the host, no tether in its path but the host's hooks
# (TEST-NET-1 and another 2001:db8 /64).
FLOOR_GW, FLOOR_IP = "192.0.2.1", "192.0.2.2"
FLOOR_GW6, FLOOR_IP6 = "2001:db8:2::1", "2001:db8:2::2"
IPERF_PORT = 5201

TARGETS = {
    "attach_dual_over_v4": 1.15,  # POST /containers on dual-stack / on v4-only, medians, at most
    "v6_over_v4": 0.95,  # published-port throughput over v6 / over v4, medians, at least
}
FAMILIES = ("v4", "dual")
LABELS = {
    "api_v4": "POST /containers -d, v4-only network",
    "api_dual": "POST /containers -d, dual-stack network",
    "cli_v4": "tether run -d (CLI), v4-only network",
    "cli_dual": "tether run -d (CLI), dual-stack network",
}


class DualStackBench(attach.Bench):
    """attach.Bench's daemon, host namespace, failure bookkeeping and cleanup; own parts."""

    TETHER_SAMPLERS = {"sample_api", "sample_cli"}

    def __init__(self, args: argparse.Namespace) -> None:
        args.counts = [1]  # attach.Bench sizes its (unused here) fill networks from this
        super().__init__(args)
        self.lan = f"{self.prefix}lan"
        self.lan_path = f"{NETNS_DIR}/{self.lan}"
        self.floor = f"{self.prefix}floor"
        self.floor_path = f"{NETNS_DIR}/{self.floor}"
        self.bg: list[subprocess.Popen[bytes]] = []  # processes we started in the background
        self.nets = {"v4": V4_ONLY, "dual": DUAL}
        self.sections: dict[str, Any] = {}
        self.load: list[tuple[str, str]] = []
        self.checks: dict[str, Any] = {}

    # -- plumbing ------------------------------------------------------------------------
    def note_load(self, when: str) -> None:
        self.load.append((when, " ".join(Path("/proc/loadavg").read_text().split()[:3])))

    def host_run(self, *cmd: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A command in the bench host netns, forked from the worker thread that setns-ed there."""
        assert self.worker is not None
        res = self.worker.call(lambda: subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout))
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stdout.strip()} {res.stderr.strip()}")
        return res

    def setup(self) -> None:
        log(f"prefix {self.prefix}: host netns {self.host}, lan netns {self.lan}, temp dir {self.tmp}")
        run = lambda *c: subprocess.run(list(c), check=True, capture_output=True)  # noqa: E731
        for ns in (self.host, self.lan, self.floor):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        # The world of tests/e2e (conftest.py, test_ipv6.py's world6), before the daemon
        # starts: the default routes make the veth the uplink.
        up, down = f"{self.prefix}u", f"{self.prefix}l"
        run("ip", "link", "add", up, "netns", self.host, "type", "veth", "peer", "name", down, "netns", self.lan)
        run("ip", "-n", self.host, "addr", "add", f"{HOST_IP}/24", "dev", up)
        run("ip", "-n", self.lan, "addr", "add", f"{LAN_IP}/24", "dev", down)
        run("ip", "-n", self.host, "-6", "addr", "add", f"{HOST_IP6}/64", "dev", up, "nodad")
        run("ip", "-n", self.lan, "-6", "addr", "add", f"{LAN_IP6}/64", "dev", down, "nodad")
        run("ip", "-n", self.host, "link", "set", up, "up")
        run("ip", "-n", self.lan, "link", "set", down, "up")
        run("ip", "-n", self.host, "route", "add", "default", "via", LAN_IP)
        run("ip", "-n", self.host, "-6", "route", "add", "default", "via", LAN_IP6)
        # The floor's namespace hangs off the host as a container would, without tether: a
        # veth, addresses on both ends, routes in the lan to it via the host. Its host end
        # forwards (v4 is switched per interface; v6 by tether's global switch).
        fh, fl = f"{self.prefix}f", f"{self.prefix}g"
        run("ip", "link", "add", fh, "netns", self.host, "type", "veth", "peer", "name", fl, "netns", self.floor)
        run("ip", "-n", self.host, "addr", "add", f"{FLOOR_GW}/24", "dev", fh)
        run("ip", "-n", self.host, "-6", "addr", "add", f"{FLOOR_GW6}/64", "dev", fh, "nodad")
        run("ip", "-n", self.floor, "addr", "add", f"{FLOOR_IP}/24", "dev", fl)
        run("ip", "-n", self.floor, "-6", "addr", "add", f"{FLOOR_IP6}/64", "dev", fl, "nodad")
        run("ip", "-n", self.host, "link", "set", fh, "up")
        run("ip", "-n", self.floor, "link", "set", fl, "up")
        run("ip", "-n", self.floor, "route", "add", "default", "via", FLOOR_GW)
        run("ip", "-n", self.floor, "-6", "route", "add", "default", "via", FLOOR_GW6)
        run("ip", "-n", self.lan, "route", "add", "192.0.2.0/24", "via", HOST_IP)
        run("ip", "-n", self.lan, "-6", "route", "add", "2001:db8:2::/64", "via", HOST_IP6)
        run("ip", "netns", "exec", self.host, "sysctl", "-qw", f"net.ipv4.conf.{fh}.forwarding=1")
        os.makedirs(self.state_dir)
        self.worker = attach.HostWorker(self.host_path)
        self.start_daemon()

    def create_net(self, spec: tuple[str, str, str | None], **options: str) -> dict[str, Any]:
        name, subnet, subnet6 = spec
        body: dict[str, Any] = {"name": name, "subnet": subnet, "options": options}
        if subnet6 is not None:
            body.update(ipv6=True, subnet6=subnet6)
        net = self.client.post("/networks", body)
        if net.get("subnet6") != subnet6:
            raise RuntimeError(f"network {name}: asked for subnet6 {subnet6}, the daemon made {net.get('subnet6')!r}")
        return net

    @staticmethod
    def check_families(what: str, endpoint: dict[str, Any], dual: bool) -> None:
        """A dual-stack sample must have a v6 address (else it measured v4 twice); a v4-only one none."""
        if dual and not endpoint.get("address6"):
            raise RuntimeError(f"{what}: no IPv6 address on the dual-stack network: {endpoint}")
        if not dual and endpoint.get("address6"):
            raise RuntimeError(f"{what}: an IPv6 address on the v4-only network: {endpoint}")

    def nft_tables(self) -> dict[str, int]:
        """Rules per nftables table in the host netns ("family name": count)."""
        out = json.loads(self.host_run("nft", "-j", "list", "ruleset").stdout)["nftables"]
        tables: dict[str, int] = {}
        for item in out:
            for kind in ("table", "rule"):
                if kind in item:
                    key = f"{item[kind]['family']} {item[kind]['table' if kind == 'rule' else 'name']}"
                    tables[key] = tables.get(key, 0) + (kind == "rule")
        return tables

    # -- part 1: attach -------------------------------------------------------------------
    def sample_api(self, level: int, family: str) -> None:
        net = self.nets[family][0]
        name = self.name("a" if family == "v4" else "d")
        t0 = now()
        out = self.client.post("/containers", {"name": name, "net": net, "cmd": ["sleep", "3600"], "detach": True})
        elapsed = now() - t0
        ep = out["networks"][net]
        try:
            self.check_families(f"POST /containers on {net}", ep, family == "dual")
            if level == 0:  # the warm-up: what the kernel holds in the container, once per network
                self.checks[net] = self.inside(out["netns_path"], ep)
        finally:
            self.tether_remove(name, ep["host_ifname"])
        self.record(f"api_{family}", level, elapsed)

    def inside(self, netns_path: str, ep: dict[str, Any]) -> dict[str, Any]:
        """The container's eth0 as the kernel has it when POST /containers returned: its v6
        addresses and default route. A dual-stack sample whose v6 address is missing or
        still tentative there did not do the v6 work the row claims."""
        enter = ["nsenter", f"--net={netns_path}", "--"]
        addrs = subprocess.run([*enter, "ip", "-6", "-o", "addr", "show", "dev", "eth0"], capture_output=True,
                               text=True).stdout
        route = subprocess.run([*enter, "ip", "-6", "route", "show", "default"], capture_output=True, text=True).stdout
        found = {"ipv6_addresses": [" ".join(line.split("\\")[0].split()[3:]) for line in addrs.splitlines()],
                 "ipv6_default_route": route.strip()}
        if ep.get("address6"):
            mine = [a for a in found["ipv6_addresses"] if a.startswith(f"{ep['address6']}/")]
            if not mine or "tentative" in mine[0] or ep.get("gateway6", "") not in route:
                raise RuntimeError(f"the container's eth0 does not hold {ep['address6']} ready, or no v6 default "
                                   f"route via {ep.get('gateway6')}, when POST /containers returned: {found}")
        return found

    def sample_cli(self, level: int, family: str) -> None:
        net = self.nets[family][0]
        name = self.name("c" if family == "v4" else "e")
        elapsed, _ = self.cli("run", "-d", "--name", name, "--net", net, "--", "sleep", "3600")
        ep = self.client.get(f"/containers/{name}")["networks"][net]
        try:
            self.check_families(f"tether run -d --net {net}", ep, family == "dual")
        finally:
            self.tether_remove(name, ep["host_ifname"])
        self.record(f"cli_{family}", level, elapsed)

    def part_attach(self) -> dict[str, Any]:
        a = self.args
        nets = {fam: self.create_net(spec) for fam, spec in self.nets.items()}
        log("part 1 warm-up")
        for fam in FAMILIES:  # first use of every path, and proof that each network is what it says
            self.sample_api(0, fam)
            self.sample_cli(0, fam)
        self.samples.clear()
        log(f"part 1: {a.samples} API samples per network, interleaved")
        for i in range(a.samples):
            for fam in (FAMILIES if i % 2 == 0 else FAMILIES[::-1]):
                self.guard(1, self.sample_api, fam)
        log(f"part 1: {a.cli_samples} CLI samples per network, interleaved")
        for i in range(a.cli_samples):
            for fam in (FAMILIES if i % 2 == 0 else FAMILIES[::-1]):
                self.guard(1, self.sample_cli, fam)
        self.check_daemon(1, "part 1 sampling")
        table = {m: summary(self.samples.get(m, {}).get(1, [])) for m in LABELS}
        ratios: dict[str, Any] = {}
        for kind in ("api", "cli"):
            v4, dual = table[f"{kind}_v4"], table[f"{kind}_dual"]
            if v4["n"] and dual["n"]:
                ratios[kind] = {"median": round(dual["median_ms"] / v4["median_ms"], 3),
                                "p95": round(dual["p95_ms"] / v4["p95_ms"], 3),
                                "median_diff_ms": round(dual["median_ms"] - v4["median_ms"], 2)}
        for kind in ("api", "cli"):
            s = table.get(f"{kind}_v4"), table.get(f"{kind}_dual")
            if all(x and x["n"] for x in s):
                log(f"part 1: {kind} v4 {s[0]['median_ms']} ms, dual {s[1]['median_ms']} ms (medians): "
                    f"{ratios[kind]['median']}x")
        return {
            "networks": {fam: {k: n.get(k) for k in ("name", "subnet", "gateway", "subnet6", "gateway6", "bridge")}
                         for fam, n in nets.items()},
            "inside_at_return": self.checks,
            "results": table,
            "ratios": ratios,
            "daemon_rss_mb": round(rss_mb(self.daemon_pid), 1) if self.daemon_alive() else None,
            "nft_rules_per_table": self.nft_tables(),
            "raw_samples_ms": {m: [round(x * 1000, 3) for x in per.get(1, [])] for m, per in self.samples.items()},
        }

    # -- part 2: throughput ---------------------------------------------------------------
    def iperf(self, family: int, server: str, seconds: float) -> dict[str, Any]:
        return iperf3(self.lan_path, server, IPERF_PORT, seconds, [f"-{family}"])

    def wait_listening(self, netns_path: str, what: str, why: Any) -> str:
        """Wait until iperf3 listens in ``netns_path``; its listening address (``ss``)."""
        deadline = time.monotonic() + 10
        while True:
            ss = subprocess.run(["nsenter", f"--net={netns_path}", "--", "ss", "-Hltn", f"sport = :{IPERF_PORT}"],
                                capture_output=True, text=True)
            if ss.stdout.strip():
                return " ".join(ss.stdout.split()[3:4])
            if time.monotonic() > deadline:
                raise RuntimeError(f"iperf3 -s did not listen in {what}: {why()}")
            time.sleep(0.05)

    def part_throughput(self) -> dict[str, Any]:
        a = self.args
        net = self.create_net(TPUT)
        name = TPUT[0] + "-srv"
        srv = self.client.post("/containers", {"name": name, "net": TPUT[0], "publish": [f"{IPERF_PORT}:{IPERF_PORT}"],
                                               "cmd": ["iperf3", "-s", "-p", str(IPERF_PORT)], "detach": True})
        ep = srv["networks"][TPUT[0]]
        self.check_families("the iperf3 server", ep, True)
        listen = self.wait_listening(srv["netns_path"], "its container", lambda: str(
            self.client.get(f"/containers/{name}/logs").get("log", ""))[-500:])
        floor = subprocess.Popen(["nsenter", f"--net={self.floor_path}", "--", "iperf3", "-s", "-p", str(IPERF_PORT)],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 start_new_session=True)
        self.bg.append(floor)
        self.wait_listening(self.floor_path, "the floor namespace",
                            lambda: floor.stderr.read().decode()[-500:] if floor.poll() is not None and floor.stderr else "")
        paths = {"v4": (4, HOST_IP), "v6": (6, HOST_IP6), "floor_v4": (4, FLOOR_IP), "floor_v6": (6, FLOOR_IP6)}
        proof = {}
        for path, (family, server) in paths.items():  # warm-up, and proof that each path works
            r = self.iperf(family, server, 1)
            proof[path] = {"local": r["local"], "remote": r["remote"], "gbps": round(r["gbps"], 2)}
        runs: dict[str, list[dict[str, Any]]] = {path: [] for path in paths}
        pairs: dict[str, list[float]] = {"published": [], "floor": []}
        for rnd in range(a.rounds):
            got: dict[str, float] = {}
            for path in (list(paths) if rnd % 2 == 0 else list(paths)[::-1]):
                family, server = paths[path]
                try:
                    r = self.iperf(family, server, a.iperf_seconds)
                except Exception as exc:  # noqa: BLE001
                    self.note_failure(2, f"iperf3 {path} round {rnd + 1}", exc)
                    continue
                r["round"] = rnd + 1
                runs[path].append(r)
                got[path] = r["gbps"]
                log(f"part 2 round {rnd + 1}: {path} {r['gbps']:.2f} Gbit/s, {r['retransmits']} retransmits")
            for key, (v4, v6) in (("published", ("v4", "v6")), ("floor", ("floor_v4", "floor_v6"))):
                if v4 in got and v6 in got:
                    pairs[key].append(round(got[v6] / got[v4], 3))
        table = {}
        for path, rs in runs.items():
            g = [r["gbps"] for r in rs]
            table[path] = {"n": len(g)} if not g else {
                "n": len(g), "median_gbps": round(statistics.median(g), 3), "min_gbps": round(min(g), 3),
                "max_gbps": round(max(g), 3), "gbps": [round(x, 3) for x in g],
                "retransmits": [r["retransmits"] for r in rs], "sender_cpu_pct": [r["sender_cpu"] for r in rs],
                "receiver_cpu_pct": [r["receiver_cpu"] for r in rs], "mss": rs[0]["mss"]}

        def ratio(v6: str, v4: str) -> float:
            if not (table[v4]["n"] and table[v6]["n"]):
                return float("nan")
            return round(table[v6]["median_gbps"] / table[v4]["median_gbps"], 3)

        nft = self.nft_tables()
        self.client.delete(f"/containers/{name}?force=1")
        floor.kill()
        floor.wait(timeout=10)
        self.bg.remove(floor)
        published, kernel = ratio("v6", "v4"), ratio("floor_v6", "floor_v4")
        return {"network": {k: net.get(k) for k in ("name", "subnet", "subnet6", "gateway6", "bridge")},
                "server": {"address": ep.get("address"), "address6": ep.get("address6"), "listen": listen},
                "proof": proof, "seconds": a.iperf_seconds, "rounds": a.rounds, "results": table,
                "v6_over_v4": published, "floor_v6_over_v4": kernel,
                "published_over_floor_ratio": round(published / kernel, 3) if kernel == kernel and published == published
                else float("nan"),
                "per_round_v6_over_v4": pairs["published"], "per_round_floor_v6_over_v4": pairs["floor"],
                "median_per_round_v6_over_v4": round(statistics.median(pairs["published"]), 3) if pairs["published"]
                else float("nan"),
                "median_per_round_floor_v6_over_v4": round(statistics.median(pairs["floor"]), 3) if pairs["floor"]
                else float("nan"),
                "nft_rules_per_table": nft, "runs": runs}

    def cleanup(self) -> list[str]:
        for proc in self.bg:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        return super().cleanup()

    # -- the run --------------------------------------------------------------------------
    def part(self, key: str, label: str, fn: Any) -> None:
        """One part; a part that fails is recorded (its target MISSED) and the next one runs."""
        log(label)
        try:
            self.sections[key] = fn()
        except Exception as exc:  # noqa: BLE001
            self.note_failure(-1, f"part {key}", exc)
            self.sections[key] = {"error": f"{type(exc).__name__}: {exc}"[:1500]}
        self.note_load(f"after {key}")

    def run(self) -> dict[str, Any]:  # type: ignore[override]
        started = dt.datetime.now()
        self.tree_digest = tree_digest()
        self.note_load("start")
        self.setup()
        self.part("attach", "part 1: attach, dual-stack against v4-only", self.part_attach)
        self.part("throughput", "part 2: published-port throughput, v6 against v4", self.part_throughput)
        self.check_daemon(-1, "the end")
        return self.results(started, dt.datetime.now())

    def results(self, started: dt.datetime, finished: dt.datetime) -> dict[str, Any]:  # type: ignore[override]
        at, tp = self.sections["attach"], self.sections["throughput"]
        quick = " (quick run: few samples)" if self.args.quick else ""
        targets: list[dict[str, Any]] = []
        r = at.get("ratios", {}).get("api")
        if r:
            res = at["results"]
            targets.append({
                "what": "attach: POST /containers on dual-stack / on v4-only (medians)", "value": r["median"],
                "target": f"<= {TARGETS['attach_dual_over_v4']} ratio", "met": r["median"] <= TARGETS["attach_dual_over_v4"],
                "note": f"{res['api_dual']['median_ms']} vs {res['api_v4']['median_ms']} ms; p95 ratio {r['p95']}"
                        + (f"; tether run -d (CLI) {at['ratios']['cli']['median']}x" if "cli" in at["ratios"] else "")
                        + quick})
        else:
            targets.append({"what": "attach: POST /containers on dual-stack / on v4-only (medians)", "value": "-",
                            "target": f"<= {TARGETS['attach_dual_over_v4']} ratio", "met": False,
                            "note": at.get("error", "no successful sample of one of the networks")})
        ratio = tp.get("v6_over_v4")
        if isinstance(ratio, float) and not math.isnan(ratio):
            targets.append({
                "what": "throughput: published port over v6 / over v4 (medians)", "value": ratio,
                "target": f">= {TARGETS['v6_over_v4']} ratio", "met": ratio >= TARGETS["v6_over_v4"],
                "note": f"{tp['results']['v6']['median_gbps']} vs {tp['results']['v4']['median_gbps']} Gbit/s; "
                        f"median of the per-round ratios {tp['median_per_round_v6_over_v4']}; the floor's v6/v4 "
                        f"(no tether rule or DNAT in the path) {tp['floor_v6_over_v4']}" + quick})
        else:
            targets.append({"what": "throughput: published port over v6 / over v4 (medians)", "value": "-",
                            "target": f">= {TARGETS['v6_over_v4']} ratio", "met": False,
                            "note": tp.get("error", "no successful run of one of the families")})
        return {
            **result_head("dualstack", started, finished),
            "duration_s": round((finished - started).total_seconds(), 1),
            "quick": bool(self.args.quick),
            "machine": machine_info(),
            "iperf3": subprocess.run(["iperf3", "--version"], capture_output=True, text=True).stdout.splitlines()[:1],
            "load": self.load,
            "git_commit": git_commit(),
            "tether_tree_sha256": self.tree_digest,
            "config": {k: v for k, v in vars(self.args).items() if k not in ("results_dir", "counts")},
            "labels": LABELS,
            "attach": at,
            "throughput": tp,
            "targets": targets,
            "failed_samples": self.failures,
            "daemon_crash": self.daemon_crash,
        }


# ---------------------------------------------------------------------------- reports
def markdown(res: dict[str, Any]) -> str:
    m, cfg, at, tp = res["machine"], res["config"], res["attach"], res["throughput"]
    lines = [
        f"# dual-stack benchmark, {res['date']}{' (quick)' if res['quick'] else ''}",
        "",
        machine_md(m) + f", {(res['iperf3'] or ['iperf3 ?'])[0]}. tether {res['git_commit']} "
        f"(tree sha256 {res['tether_tree_sha256']}). Run {res['started']} - {res['finished']} ({res['duration_s']} s). "
        "Load average (1/5/15 min): " + "; ".join(f"{w}: {v}" for w, v in res["load"]) + ".",
        "",
        f"## 1. Attach: dual-stack against v4-only ({cfg['samples']} API and {cfg['cli_samples']} CLI samples "
        "per network, interleaved, the order swapped every sample)",
        "",
    ]
    if "error" in at:
        lines += [f"**Part 1 failed**: {at['error']}", ""]
    else:
        nets = at["networks"]
        lines += [f"Networks: `{nets['v4']['name']}` {nets['v4']['subnet']}; `{nets['dual']['name']}` "
                  f"{nets['dual']['subnet']} + {nets['dual']['subnet6']}. Median / p95 in ms.", "",
                  *md_head(["v4-only", "dual-stack", "dual / v4 (median, p95)"])]
        for kind, label in (("api", "POST /containers (detach, sleep)"), ("cli", "tether run -d -- sleep (CLI)")):
            rr = at["ratios"].get(kind)
            lines.append(f"| {label} | {median_p95(at['results'][f'{kind}_v4'])} | "
                         f"{median_p95(at['results'][f'{kind}_dual'])} | "
                         + (f"{rr['median']}x, {rr['p95']}x ({rr['median_diff_ms']:+} ms)" if rr else "-") + " |")
        lines.append("")
        for net, found in at.get("inside_at_return", {}).items():
            lines.append(f"In the warm-up's container on `{net}` when POST /containers returned: v6 addresses "
                         + (", ".join(f"`{a}`" for a in found["ipv6_addresses"]) or "none")
                         + f"; v6 default route `{found['ipv6_default_route'] or 'none'}`.")
            lines.append("")
        lines += [f"Daemon RSS after the samples: {at['daemon_rss_mb']} MB. Rules per nftables table: "
                  + ", ".join(f"`{k}` {v}" for k, v in at["nft_rules_per_table"].items()) + ".", ""]
    lines += [f"## 2. Published-port throughput, v6 against v4 (iperf3, 1 stream, {cfg['iperf_seconds']} s per run, "
              f"{cfg['rounds']} round(s), the order swapped every round)", ""]
    if "error" in tp:
        lines += [f"**Part 2 failed**: {tp['error']}", ""]
    else:
        lines += [f"Server: `iperf3 -s` in a container on `{tp['network']['name']}` ({tp['network']['subnet']} + "
                  f"{tp['network']['subnet6']}; {tp['server']['address']}, {tp['server']['address6']}; listening on "
                  f"`{tp['server']['listen']}`), `-p {IPERF_PORT}:{IPERF_PORT}`. Client in the lan namespace: "
                  f"`iperf3 -4 -c {HOST_IP}` and `iperf3 -6 -c {HOST_IP6}`.", "",
                  "| path | Gbit/s median (min-max) | runs (Gbit/s) | retransmits | sender / receiver CPU % | MSS |",
                  "|---|---:|---:|---:|---:|---:|"]
        for path, label in (("v4", f"published: lan -> {HOST_IP}:{IPERF_PORT} -> container"),
                            ("v6", f"published: lan -> [{HOST_IP6}]:{IPERF_PORT} -> container"),
                            ("floor_v4", f"floor: lan -> {FLOOR_IP}, routed by the host"),
                            ("floor_v6", f"floor: lan -> {FLOOR_IP6}, routed by the host")):
            r = tp["results"][path]
            if not r["n"]:
                lines.append(f"| {label} | - | - | - | - | - |")
                continue
            cpu = ", ".join(f"{s}/{c}" for s, c in zip(r["sender_cpu_pct"], r["receiver_cpu_pct"]))
            lines.append(f"| {label} | {r['median_gbps']} ({r['min_gbps']}-{r['max_gbps']}) | "
                         f"{', '.join(str(x) for x in r['gbps'])} | {r['retransmits']} | {cpu} | {r['mss']} |")
        lines += ["", f"v6 / v4 of medians, published port: **{tp['v6_over_v4']}** (per round: "
                  f"{tp['per_round_v6_over_v4']}, their median {tp['median_per_round_v6_over_v4']}); floor: "
                  f"{tp['floor_v6_over_v4']} (per round: {tp['per_round_floor_v6_over_v4']}, their median "
                  f"{tp['median_per_round_floor_v6_over_v4']}); published over floor: {tp['published_over_floor_ratio']}. "
                  f"Warm-up (1 s, proof of each path): "
                  + "; ".join(f"{k} {v['local']} -> {v['remote']} {v['gbps']} Gbit/s" for k, v in tp["proof"].items())
                  + ". Rules per nftables table: "
                  + ", ".join(f"`{k}` {v}" for k, v in tp["nft_rules_per_table"].items()) + ".", ""]
    lines += ["## Targets", ""]
    for v in res["targets"]:
        lines.append(f"- **{'met' if v['met'] else 'MISSED'}**: {v['what']} = {v['value']} (target {v['target']})"
                     + (f"; {v['note']}" if v["note"] else ""))
    lines += crash_and_failures_md(res, "part")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--quick", action="store_true", help="fewer samples, one short iperf3 round (under a minute)")
    p.add_argument("--samples", type=int, default=None, help="part 1: API samples per network (default 40; quick 8)")
    p.add_argument("--cli-samples", type=int, default=None, help="part 1: CLI samples per network (default 10; quick 3)")
    p.add_argument("--rounds", type=int, default=None, help="part 2: iperf3 rounds, one run of each of the 4 paths each (default 15; quick 1)")
    p.add_argument("--iperf-seconds", type=float, default=None, help="part 2: seconds per iperf3 run (default 3; quick 2)")
    args = parse_args(p)
    quick_defaults(args, samples=(40, 8), cli_samples=(10, 3), rounds=(15, 1), iperf_seconds=(3, 2))
    if args.samples < 1 or args.cli_samples < 0 or args.rounds < 1 or args.iperf_seconds <= 0:
        p.error("--samples and --rounds must be positive, --cli-samples not negative, --iperf-seconds above 0")
    check_host(p, ("nsenter", "ip", "nft", "iperf3", "ss"), install="apt-get install iperf3 nftables iproute2 util-linux")
    if not os.path.isdir("/proc/sys/net/ipv6"):
        p.error("this kernel has no IPv6 (/proc/sys/net/ipv6 is missing)")
    bench = DualStackBench(args)
    res = run_bench(bench, failure_log=bench.daemon_log)
    print(markdown(res))
    write_results(args.results_dir, f"dualstack-{res['date']}{'-quick' if args.quick else ''}", res, markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
