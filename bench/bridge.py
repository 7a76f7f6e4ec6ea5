#!/usr/bin/env python3
"""Bridge benchmark: published ports, throughput and names, tether beside a CNI chain.

Run as root from the repository:  python bench/bridge.py [--quick]

Same conventions as bench/attach.py, whose Bench (setup of the daemon, failure
bookkeeping, cleanup) this script imports, with bench/common.py's helpers: one process;
one throwaway "host" network namespace ``tbench<random>host`` holding a tether daemon
(``nsenter --net``), the CNI plugins' bridge and iptables rules, and every container;
plus a "lan" namespace ``tbench<random>lan`` (198.51.100.1) joined to the host
(198.51.100.2) by a veth, as in tests/e2e/conftest.py. Packets only flow between these
namespaces. Everything carrying the prefix is removed at the end, also on failure.

Four parts, in this order (see bench/README.md):

3. 1000 published ports  10 containers x ``-p A-B:30000-30099`` on a fresh daemon: time
                         to publish, rule count of ``table ip tether``, daemon RSS
1. attach with 2 ports   ``POST /containers`` with two published ports, against the CNI
                         chain bridge + firewall + portmap run by hand per the CNI spec,
                         at 1, 50, 100, 500 endpoints of each already attached
2. throughput            iperf3, 1 and 4 streams: container to container; lan to a
                         container through a published port and directly (routed)
4. DNS                   lookups per second at 127.0.0.11 from inside a container, and
                         failed lookups of a stable name while 100 containers churn

Results: bench/results/bridge-<date>[-quick].json and .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import attach  # the colleague's bench: its Bench and HostWorker are reused, not copied
from attach import unbind_netns
from common import (CNI_DIR, NETNS_DIR, check_host, git_commit, ints, iperf3, log, machine_info, machine_md, md_head,
                    median_p95, now, parse_args, parser, quick_defaults, result_head, rss_mb, run_bench,
                    summary, tree_digest, verdict, write_results)

# Subnets, all inside our own namespaces (10.211-213 are attach.py's, 10.210/10.220 the tests').
ATTACH_SUBNET = "10.215.0.0/22"  # tether network of part 1 (500 endpoints + samples)
CNI_SUBNET = "10.216.0.0/22"  # the CNI chain's host-local range
PORTS_SUBNET = "10.217.0.0/24"  # part 3
TPUT_SUBNET = "10.218.0.0/24"  # part 2 (masquerade=false: routable from the lan)
DNS_SUBNET = "10.219.0.0/24"  # part 4
HOST_IP, LAN_IP = "198.51.100.2", "198.51.100.1"  # TEST-NET-2, as in tests/e2e/conftest.py

# Host ports (distinct per container; each part's ranges are disjoint).
TETHER_FILL_PORT = 20000  # + 2i (tcp), + 2i + 1 (udp)
TETHER_SAMPLE_PORT = 22000
CNI_FILL_PORT = 24000
CNI_SAMPLE_PORT = 26000
MANY_PORTS_BASE = 30000  # part 3: container j publishes 30000+100j .. 30099+100j
IPERF_PORT, IPERF_PUBLISHED = 5201, 15201
PROFILE_RATE = 200  # py-spy samples per second
ALL_PARTS = ["1", "2", "3", "4"]

TARGETS = {
    "attach_vs_chain": 1 / 8,  # tether create+attach+2 ports / CNI chain ADD, at most
    "flat": 1.2,  # tether median at N=500 / at N=1, at most (attach.py's growth target)
    "published_vs_direct": 0.9,  # throughput through a published port / routed directly, at least
    "dns_failures": 0,  # failed lookups of a stable name during churn, at most
}

DNS_CLIENT = r"""
import json, os, random, socket, struct, sys, time
name, expect, duration, stopfile = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("127.0.0.11", 53))
s.settimeout(1.0)
lat, fails, kinds, first_fail = [], 0, {}, []
start = time.monotonic()
deadline = start + duration if duration > 0 else float("inf")
print("ready", flush=True)
def skip_name(buf, i):
    while True:
        n = buf[i]
        if n == 0: return i + 1
        if n & 0xC0 == 0xC0: return i + 2
        i += n + 1
while True:
    t = time.monotonic()
    if t >= deadline or (stopfile != "-" and os.path.exists(stopfile)):
        break
    ident = random.getrandbits(16)
    s.send(struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1))
    err = None
    try:
        while True:
            r = s.recv(4096)
            if struct.unpack("!H", r[:2])[0] == ident:
                break
        rcode = r[3] & 0xF
        an = struct.unpack("!H", r[6:8])[0]
        if rcode:
            err = f"rcode {rcode}"
        elif not an:
            err = "no answer"
        else:
            i = skip_name(r, 12) + 4
            got = []
            for _ in range(an):
                i = skip_name(r, i)
                typ, _c, _ttl, ln = struct.unpack("!HHIH", r[i:i + 10]); i += 10
                if typ == 1 and ln == 4: got.append(socket.inet_ntoa(r[i:i + 4]))
                i += ln
            if expect not in got:
                err = f"wrong answer {got}"
    except socket.timeout:
        err = "timeout (1 s)"
    except OSError as exc:
        err = f"error {exc}"
    el = time.monotonic() - t
    if err:
        fails += 1
        kinds[err] = kinds.get(err, 0) + 1
        if len(first_fail) < 5: first_fail.append([round(t - start, 3), err])
    else:
        lat.append(el)
total = time.monotonic() - start
lat.sort()
q = lambda p: round(lat[min(len(lat) - 1, int(p * (len(lat) - 1) + 0.5))] * 1000, 3) if lat else None
print(json.dumps({"lookups": len(lat) + fails, "ok": len(lat), "failed": fails, "kinds": kinds,
                  "first_failures": first_fail, "seconds": round(total, 3),
                  "per_second": round((len(lat) + fails) / total, 1) if total else 0,
                  "median_ms": q(0.5), "p95_ms": q(0.95), "p99_ms": q(0.99),
                  "max_ms": round(lat[-1] * 1000, 3) if lat else None}), flush=True)
"""


def not_run(what: str) -> dict[str, Any]:
    return {"what": what, "value": "-", "target": "-", "met": None, "note": "not run (--parts)"}


class BridgeBench(attach.Bench):
    """attach.Bench's daemon, host namespace, failure bookkeeping and cleanup; own parts."""

    TETHER_SAMPLERS = {"sample_tether_ports", "sample_tether_noports", "sample_tether_ping"}

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.lan = f"{self.prefix}lan"
        self.lan_path = f"{NETNS_DIR}/{self.lan}"
        self.cni_bridge = f"{self.prefix}cb"
        self.sample_no = 0
        self.cni_sample_no = 0
        self.cni_netns: list[str] = []  # filled CNI endpoints' namespaces
        self.tether_filled: list[str] = []  # filled tether containers (part 1)
        self.level_info: dict[int, dict[str, Any]] = {}
        self.sections: dict[str, Any] = {}
        self.load: list[tuple[str, str]] = []
        self.bg: list[subprocess.Popen[str]] = []  # background processes we started
        self.probe: Any = None  # tether's Firewall on a table of our own, in the host netns
        self.probe_no = 0
        self.profiles: dict[str, Any] = {}

    # -- plumbing ------------------------------------------------------------------------
    def host_run(self, *cmd: str, input: str | bytes | None = None, env: dict[str, str] | None = None,
                 timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[Any]:
        """Run a command in the bench host netns: forked from the worker thread that has
        setns-ed there (a child inherits its thread's namespaces), so no nsenter exec."""
        assert self.worker is not None
        text = not isinstance(input, bytes)
        res = self.worker.call(lambda: subprocess.run(list(cmd), input=input, env=env, capture_output=True,
                                                      text=text, timeout=timeout))
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stdout!r} {res.stderr!r}")
        return res

    def note_load(self, when: str) -> None:
        self.load.append((when, " ".join(Path("/proc/loadavg").read_text().split()[:3])))

    def setup(self) -> None:
        log(f"prefix {self.prefix}: host netns {self.host}, lan netns {self.lan}, temp dir {self.tmp}")
        run = lambda *c: subprocess.run(list(c), check=True, capture_output=True)
        for ns in (self.host, self.lan):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        # The world of tests/e2e/conftest.py, before the daemon starts: the default route
        # makes the veth the uplink, which tether switches forwarding on for.
        up, down = f"{self.prefix}u", f"{self.prefix}l"
        run("ip", "link", "add", up, "netns", self.host, "type", "veth", "peer", "name", down, "netns", self.lan)
        run("ip", "-n", self.host, "addr", "add", f"{HOST_IP}/24", "dev", up)
        run("ip", "-n", self.lan, "addr", "add", f"{LAN_IP}/24", "dev", down)
        run("ip", "-n", self.host, "link", "set", up, "up")
        run("ip", "-n", self.lan, "link", "set", down, "up")
        run("ip", "-n", self.host, "route", "add", "default", "via", LAN_IP)
        os.makedirs(self.state_dir)
        os.makedirs(self.cni_data)
        self.worker = attach.HostWorker(self.host_path)
        self.start_daemon()

    def tether_net(self, name: str, subnet: str, **options: str) -> None:
        self.client.post("/networks", {"name": name, "subnet": subnet, "options": options})

    def tether_rule_count(self) -> tuple[int, dict[str, int]]:
        """Rules in ``table ip tether`` and elements of its port maps, read with nft."""
        out = json.loads(self.host_run("nft", "-j", "list", "table", "ip", "tether").stdout)["nftables"]
        rules = sum(1 for item in out if "rule" in item)
        elems = {obj["name"]: len(obj.get("elem", [])) for item in out for k, obj in item.items()
                 if k == "map" and obj.get("name") in ("ports", "ports_ip")}
        return rules, elems

    def iptables_counts(self) -> dict[str, int]:
        """Rules and chains the CNI plugins hold in the host netns (iptables-save)."""
        text = self.host_run("iptables-save").stdout
        return {"rules": sum(1 for line in text.splitlines() if line.startswith("-A ")),
                "chains": sum(1 for line in text.splitlines() if line.startswith(":"))}

    def remove_tether(self, names: list[str]) -> float:
        t0 = now()
        for n in names:
            try:
                self.client.delete(f"/containers/{n}?force=1")
            except Exception as exc:
                self.note_failure(-1, f"remove {n}", exc)
        return now() - t0

    # -- part 1: tether ------------------------------------------------------------------
    @staticmethod
    def two_ports(base: int) -> list[str]:
        return [f"{base}:80", f"{base + 1}:81/udp"]

    def tether_create(self, name: str, publish: list[str], net: str = "bp", detach: bool = False,
                      cmd: list[str] | None = None) -> dict[str, Any]:
        return self.client.post("/containers", {"name": name, "net": net, "publish": publish,
                                                "cmd": cmd or ["sleep", "3600"], "detach": detach})

    def fill_tether(self, target: int) -> None:
        while len(self.tether_filled) < target:
            name = self.name("f")
            self.tether_create(name, self.two_ports(TETHER_FILL_PORT + 2 * len(self.tether_filled)))
            self.tether_filled.append(name)

    def sample_tether_ports(self, level: int) -> None:
        name = self.name("s")
        ports = self.two_ports(TETHER_SAMPLE_PORT + 2 * (self.sample_no % 1000))
        self.sample_no += 1
        t0 = now()
        out = self.tether_create(name, ports)
        self.record("tether_ports", level, now() - t0)
        self.tether_remove(name, out["networks"]["bp"]["host_ifname"])

    def sample_tether_noports(self, level: int) -> None:
        name = self.name("n")
        t0 = now()
        out = self.tether_create(name, [])
        self.record("tether_noports", level, now() - t0)
        self.tether_remove(name, out["networks"]["bp"]["host_ifname"])

    # -- part 1: the CNI chain -------------------------------------------------------------
    def conflist(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": f"{self.prefix}-chain",
            "plugins": [
                {"type": "bridge", "bridge": self.cni_bridge, "isGateway": True, "ipMasq": True,
                 "hairpinMode": True,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": CNI_SUBNET}]],
                          "routes": [{"dst": "0.0.0.0/0"}], "dataDir": self.cni_data}},
                {"type": "firewall", "backend": "iptables"},
                {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
            ],
        }

    def chain(self, command: str, netns: str, host_port: int, prev: dict[str, Any] | None = None
              ) -> tuple[float, dict[str, float], dict[str, Any]]:
        """The conflist by hand, per the CNI spec, from the worker thread (in the host netns).

        ADD: each plugin in order, its config = the plugin's entry + cniVersion + name
        (+ prevResult = the previous plugin's result, + runtimeConfig for the capabilities it
        declares). DEL: in reverse order, each given the ADD's final result as prevResult.
        Returns (total seconds, seconds per plugin, final result)."""
        conf = self.conflist()
        mappings = [{"hostPort": host_port, "containerPort": 80, "protocol": "tcp"},
                    {"hostPort": host_port + 1, "containerPort": 81, "protocol": "udp"}]
        env = {
            "CNI_COMMAND": command, "CNI_CONTAINERID": netns, "CNI_NETNS": f"{NETNS_DIR}/{netns}",
            "CNI_IFNAME": "eth0", "CNI_PATH": CNI_DIR,
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        }
        plugins = conf["plugins"] if command == "ADD" else list(reversed(conf["plugins"]))

        def work() -> tuple[float, dict[str, float], dict[str, Any]]:
            result = prev
            times: dict[str, float] = {}
            t_all = now()
            for plugin in plugins:
                net = dict(plugin, cniVersion=conf["cniVersion"], name=conf["name"])
                if result is not None:
                    net["prevResult"] = result
                if plugin.get("capabilities", {}).get("portMappings"):
                    net["runtimeConfig"] = {"portMappings": mappings}
                t0 = now()
                res = subprocess.run([f"{CNI_DIR}/{plugin['type']}"], input=json.dumps(net).encode(), env=env,
                                     capture_output=True, timeout=60)
                times[plugin["type"]] = now() - t0
                if res.returncode != 0:
                    raise RuntimeError(f"CNI {plugin['type']} {command} failed ({res.returncode}): "
                                       f"{res.stdout[:300]!r} {res.stderr[:300]!r}")
                if command == "ADD":
                    result = json.loads(res.stdout)
            return now() - t_all, times, result or {}

        assert self.worker is not None
        return self.worker.call(work)

    def fill_cni(self, target: int) -> None:
        assert self.worker is not None
        while len(self.cni_netns) < target:
            netns = f"{self.prefix}c-{self.name('f')}"
            self.worker.create_netns(netns)
            self.chain("ADD", netns, CNI_FILL_PORT + 2 * len(self.cni_netns))
            self.cni_netns.append(netns)

    def sample_cni(self, level: int) -> None:
        assert self.worker is not None
        netns = f"{self.prefix}c-{self.name('s')}"
        port = CNI_SAMPLE_PORT + 2 * (self.cni_sample_no % 1000)
        self.cni_sample_no += 1
        t0 = now()
        self.worker.create_netns(netns)
        t_netns = now() - t0
        total, times, result = self.chain("ADD", netns, port)
        self.record("cni_chain", level, total)
        self.record("cni_chain_netns", level, total + t_netns)
        for plugin, seconds in times.items():
            self.record(f"cni_{plugin}", level, seconds)
        host_if = next((i["name"] for i in result.get("interfaces", [])
                        if not i.get("sandbox") and i["name"].startswith("veth")), None)
        self.chain("DEL", netns, port, result)
        self.worker.delete_netns(netns)
        if host_if:
            self.worker.wait_link_gone(host_if)

    def sample_tether_ping(self, level: int) -> None:
        t0 = now()
        self.client.get("/ping")
        self.record("tether_ping", level, now() - t0)

    def sample_nft_probe(self, level: int) -> None:
        """tether's own nft path without the daemon: its Firewall class, in-process in the
        host netns, on a table of our own (``ip tbprobe``): add then remove 2 map elements.
        Shows what the nftables call costs as the host's other rulesets (here: the CNI
        chain's iptables-nft rules) grow, apart from the daemon's locks and store."""
        from tether.firewall.nft import Firewall
        from tether.firewall.rules import PortRule

        assert self.worker is not None
        k = self.probe_no % 1000
        self.probe_no += 1
        rules = [PortRule("tcp", None, 50000 + 2 * k, "10.215.3.250", 80),
                 PortRule("udp", None, 50001 + 2 * k, "10.215.3.250", 81)]

        def work() -> tuple[float, float]:
            if self.probe is None:
                self.probe = Firewall("tbprobe")
                self.probe.ensure()
            t0 = now()
            self.probe.add_ports(rules)
            t1 = now()
            self.probe.remove_ports(rules)
            return t1 - t0, now() - t1

        add, remove = self.worker.call(work)
        self.record("nft_probe_add", level, add)
        self.record("nft_probe_remove", level, remove)

    def healer_check_cost(self) -> dict[str, float]:
        """What the daemon's firewall healer pays per check (tether/firewall/nft.py): the
        quick one (``list chains ip``, every 0.2 s) and the full one (``list ruleset ip``
        terse, every 2 s), with libnftables in-process in the host netns; median of 3, ms.
        Both list the whole ip family, other tables (iptables-nft's) included."""
        from tether.firewall.libnft import Nft

        assert self.worker is not None

        def work() -> dict[str, float]:
            nft = Nft()
            try:
                out = {}
                for key, cmd in (("list_chains_ip_ms", "list chains ip"), ("list_ruleset_ip_ms", "list ruleset ip")):
                    times = []
                    for _ in range(3):
                        t0 = now()
                        nft.run_json(cmd, terse=True)
                        times.append(now() - t0)
                    out[key] = round(statistics.median(times) * 1000, 2)
                return out
            finally:
                nft.close()

        return self.worker.call(work)

    def close_probe(self) -> None:
        if self.probe is not None and self.worker is not None:
            probe, self.probe = self.probe, None
            self.worker.call(lambda: (probe.delete(), probe.close()))

    # -- profiling (optional) ------------------------------------------------------------------
    def profile_start(self, what: str) -> None:
        if not self.args.profile or not self.daemon_alive():
            return
        out = os.path.join(self.tmp, f"profile-{what}.txt")
        p = subprocess.Popen(["py-spy", "record", "--pid", str(self.daemon_pid), "--format", "raw", "--function",
                              "--idle", "--nonblocking", "--rate", str(PROFILE_RATE), "--output", out],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.bg.append(p)
        time.sleep(1.0)  # py-spy attaches
        self.profiles[what] = {"proc": p, "out": out, "t0": now()}

    def profile_stop(self, what: str) -> None:
        entry = self.profiles.get(what)
        if not entry or "proc" not in entry:
            return
        p = entry.pop("proc")
        window = now() - entry.pop("t0")
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        self.bg.remove(p)
        try:
            text = Path(entry.pop("out")).read_text()
        except OSError as exc:
            self.profiles[what] = {"error": f"py-spy wrote nothing: {exc}"}
            return
        self.profiles[what] = summarise_profile(text, window, PROFILE_RATE)
        self.profiles[what]["collapsed"] = text

    def part_attach(self) -> dict[str, Any]:
        a = self.args
        self.tether_net("bp", ATTACH_SUBNET)
        log("part 1 warm-up")
        self.sample_tether_ports(0)
        self.sample_tether_noports(0)
        self.sample_cni(0)
        self.sample_nft_probe(0)
        backend = self.host_run("iptables", "-V").stdout.strip()
        assert self.worker is not None
        if self.worker.link_gone(self.cni_bridge):
            raise RuntimeError(f"the CNI bridge {self.cni_bridge} is not in the bench host netns")
        for key in [k for k in self.samples]:
            self.samples[key].pop(0, None)
        for level in self.levels:
            t_fill = now()
            if self.daemon_alive():
                try:
                    self.fill_tether(level)
                except Exception as exc:
                    self.note_failure(level, f"tether fill to {level}", exc)
            self.fill_cni(level)
            log(f"part 1, N={level}: filled in {now() - t_fill:.1f} s")
            samplers = [self.sample_tether_ports, self.sample_cni, self.sample_tether_noports]
            top = level == self.levels[-1]
            if top:
                self.profile_start("attach")
            for i in range(a.samples):
                order = samplers[i % len(samplers):] + samplers[: i % len(samplers)]
                for fn in order:
                    self.guard(level, fn)
                self.guard(level, self.sample_tether_ping)
                self.guard(level, self.sample_nft_probe)
            if top:
                self.profile_stop("attach")
            self.check_daemon(level, "part 1 sampling")
            info: dict[str, Any] = {"iptables": self.iptables_counts(), "host_links": self.worker.link_count(),
                                    "healer_check": self.healer_check_cost()}
            if self.daemon_alive():
                info["rss_mb"] = round(rss_mb(self.daemon_pid), 1)
                info["tether_rules"], info["tether_port_elements"] = self.tether_rule_count()
            self.level_info[level] = info
            self.print_level_attach(level)
        return {"iptables_backend": backend}

    def teardown_attach(self) -> dict[str, Any]:
        """Untimed for the targets: tether's 500 removals (timed, for the record), then the
        CNI side without 500 DELs: its namespaces, its bridge and the iptables tables."""
        self.close_probe()
        log(f"part 1 teardown: removing {len(self.tether_filled)} tether containers")
        seconds = self.remove_tether(self.tether_filled)
        n = len(self.tether_filled)
        self.tether_filled = []
        for netns in self.cni_netns:
            unbind_netns(netns)
        self.cni_netns = []
        assert self.worker is not None
        if not self.worker.link_gone(self.cni_bridge):
            self.host_run("ip", "link", "del", self.cni_bridge)
        tables = json.loads(self.host_run("nft", "-j", "list", "tables").stdout)["nftables"]
        dropped = []
        for item in tables:
            t = item.get("table")
            if t and not (t["family"] == "ip" and t["name"] == "tether"):
                self.host_run("nft", "delete", "table", t["family"], t["name"])
                dropped.append(f"{t['family']} {t['name']}")
        log(f"part 1 teardown: {n} removals in {seconds:.1f} s; dropped the plugins' tables {dropped}")
        return {"tether_removals": n, "tether_removal_seconds": round(seconds, 2),
                "tether_removal_ms_each": round(seconds / n * 1000, 2) if n else None, "dropped_tables": dropped}

    def print_level_attach(self, level: int) -> None:
        print(f"\n== part 1, N = {level} ==", flush=True)
        for metric in ATTACH_METRICS:
            s = summary(self.samples.get(metric, {}).get(level, []))
            if s["n"]:
                print(f"  {ATTACH_LABELS[metric]:<44} n={s['n']:<3} median {s['median_ms']:8.2f} ms   "
                      f"p95 {s['p95_ms']:8.2f} ms", flush=True)
        print(f"  {self.level_info[level]}", flush=True)

    # -- part 3: 1000 published ports ---------------------------------------------------------
    def part_ports(self) -> dict[str, Any]:
        self.tether_net("pp", PORTS_SUBNET)
        times: list[float] = []
        rules_after: list[int] = []
        names: list[str] = []
        try:
            return self._part_ports(names, times, rules_after)
        finally:
            self.profile_stop("ports")
            self.remove_tether(names)

    def _part_ports(self, names: list[str], times: list[float], rules_after: list[int]) -> dict[str, Any]:
        a = self.args
        rules0, elems0 = self.tether_rule_count()
        rss0 = rss_mb(self.daemon_pid)
        self.profile_start("ports")
        for j in range(a.port_containers):
            lo = MANY_PORTS_BASE + 100 * j
            name = self.name("p")
            t0 = now()
            self.tether_create(name, [f"{lo}-{lo + 99}:30000-30099"], net="pp")
            times.append(now() - t0)
            names.append(name)
            rules_after.append(self.tether_rule_count()[0])
        total = sum(times)  # the rule counts read in between are not publishing time
        self.profile_stop("ports")
        rules1, elems1 = self.tether_rule_count()
        rss1 = rss_mb(self.daemon_pid)
        # one more 2-port container with the ports in place: publish cost at 1000 vs 0 ports
        one = []
        for k in range(a.samples):
            name = self.name("q")
            t0 = now()
            out = self.tether_create(name, self.two_ports(TETHER_SAMPLE_PORT + 1990 - 2 * k), net="pp")
            one.append(now() - t0)
            self.tether_remove(name, out["networks"]["pp"]["host_ifname"])
        removal = self.remove_tether(names)
        names.clear()
        rules2, elems2 = self.tether_rule_count()
        ports = 100 * a.port_containers
        res = {
            "containers": a.port_containers, "ports": ports,
            "create_ms": summary(times), "create_raw_ms": [round(x * 1000, 2) for x in times],
            "total_s": round(total, 3), "ms_per_port": round(total / ports * 1000, 3),
            "two_port_create_with_ports_present_ms": summary(one),
            "rules_before": rules0, "rules_after_each": rules_after, "rules_after": rules1,
            "rules_after_removal": rules2,
            "map_elements_before": elems0, "map_elements_after": elems1, "map_elements_after_removal": elems2,
            "rss_before_mb": round(rss0, 1), "rss_after_mb": round(rss1, 1),
            "removal_s": round(removal, 3),
        }
        print(f"\n== part 3: {ports} published ports ==\n  {json.dumps(res)}", flush=True)
        return res

    # -- part 2: throughput -----------------------------------------------------------------
    def iperf(self, netns_path: str, server: str, port: int, streams: int, seconds: float) -> dict[str, Any]:
        return iperf3(netns_path, server, port, seconds, ["-P", str(streams)])

    def part_throughput(self) -> dict[str, Any]:
        a = self.args
        self.tether_net("tp", TPUT_SUBNET, masquerade="false")
        srv = self.tether_create("iperf-srv", [f"{IPERF_PUBLISHED}:{IPERF_PORT}"], net="tp", detach=True,
                                 cmd=["iperf3", "-s", "-p", str(IPERF_PORT)])
        cli = self.tether_create("iperf-cli", [], net="tp", detach=True)
        srv_ip = srv["networks"]["tp"]["address"]
        subprocess.run(["ip", "-n", self.lan, "route", "add", TPUT_SUBNET, "via", HOST_IP], check=True,
                       capture_output=True)
        deadline = time.monotonic() + 10
        while True:
            ss = subprocess.run(["nsenter", f"--net={srv['netns_path']}", "--", "ss", "-Hltn", f"sport = :{IPERF_PORT}"],
                                capture_output=True, text=True)
            if ss.stdout.strip():
                break
            if time.monotonic() > deadline:
                raise RuntimeError("iperf3 -s did not listen in its container: " + self.client.get("/containers/iperf-srv/logs")["log"])
            time.sleep(0.05)
        paths = {
            "c2c": (cli["netns_path"], srv_ip, IPERF_PORT),
            "lan_published": (self.lan_path, HOST_IP, IPERF_PUBLISHED),
            "lan_direct": (self.lan_path, srv_ip, IPERF_PORT),
        }
        for path, (ns, server, port) in paths.items():  # warm-up, and proof that each path works
            self.iperf(ns, server, port, 1, 1)
        runs: dict[str, list[dict[str, Any]]] = {}
        configs = [(p, s) for s in (1, 4) for p in paths]
        for rep in range(a.iperf_reps):
            order = configs[rep % len(configs):] + configs[: rep % len(configs)]
            for path, streams in order:
                ns, server, port = paths[path]
                try:
                    r = self.iperf(ns, server, port, streams, a.iperf_seconds)
                except Exception as exc:
                    self.note_failure(-2, f"iperf3 {path} -P {streams}", exc)
                    continue
                runs.setdefault(f"{path}_P{streams}", []).append(r)
                log(f"part 2 rep {rep + 1}: {path} -P {streams}: {r['gbps']:.2f} Gbit/s")
        table = {}
        for key, rs in runs.items():
            g = [r["gbps"] for r in rs]
            table[key] = {"n": len(g), "median_gbps": round(statistics.median(g), 2), "min_gbps": round(min(g), 2),
                          "max_gbps": round(max(g), 2), "retransmits": [r["retransmits"] for r in rs],
                          "sender_cpu_pct": [r["sender_cpu"] for r in rs]}
        self.remove_tether(["iperf-srv", "iperf-cli"])
        subprocess.run(["ip", "-n", self.lan, "route", "del", TPUT_SUBNET], capture_output=True)
        return {"server": srv_ip, "network": "tp (-o masquerade=false)", "seconds": a.iperf_seconds,
                "reps": a.iperf_reps, "results": table}

    # -- part 4: DNS ------------------------------------------------------------------------
    def dns_client(self, netns_path: str, name: str, expect: str, duration: float, stopfile: str = "-"
                   ) -> subprocess.Popen[str]:
        p = subprocess.Popen(["nsenter", f"--net={netns_path}", "--", sys.executable, "-c", DNS_CLIENT, name, expect,
                              str(duration), stopfile], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.bg.append(p)
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the DNS client did not start: {p.stderr.read() if p.stderr else ''}")
        return p

    def dns_result(self, p: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
        out, err = p.communicate(timeout=timeout)
        self.bg.remove(p)
        if p.returncode != 0:
            raise RuntimeError(f"the DNS client failed ({p.returncode}): {err[-500:]}")
        return json.loads(out.strip().splitlines()[-1])

    def part_dns(self) -> dict[str, Any]:
        a = self.args
        self.tether_net("dn", DNS_SUBNET)
        stable = self.tether_create("stable", [], net="dn", detach=True)
        asker = self.tether_create("asker", [], net="dn", detach=True)
        expect = stable["networks"]["dn"]["address"]
        ns = asker["netns_path"]
        self.dns_result(self.dns_client(ns, "stable", expect, 0.5), 30)  # warm-up
        quiet = self.dns_result(self.dns_client(ns, "stable", expect, a.dns_seconds), a.dns_seconds + 30)
        log(f"part 4: {quiet['per_second']} lookups/s, {quiet['failed']} failed")
        stopfile = os.path.join(self.tmp, "dns-stop")
        proc = self.dns_client(ns, "stable", expect, 0, stopfile)
        starts, stops, alive = [], [], []
        window = 10
        t_churn = now()
        for k in range(a.churn):
            name = f"k{k}"
            try:
                t0 = now()
                self.tether_create(name, [], net="dn", detach=True)
                starts.append(now() - t0)
                alive.append(name)
            except Exception as exc:
                self.note_failure(-4, f"churn start {name}", exc)
            if len(alive) > window:
                old = alive.pop(0)
                t0 = now()
                self.remove_tether([old])
                stops.append(now() - t0)
        while alive:
            old = alive.pop(0)
            t0 = now()
            self.remove_tether([old])
            stops.append(now() - t0)
        churn_s = now() - t_churn
        Path(stopfile).touch()
        during = self.dns_result(proc, 60)
        log(f"part 4: churn of {a.churn} in {churn_s:.1f} s; {during['lookups']} lookups, {during['failed']} failed")
        self.remove_tether(["stable", "asker"])
        return {"quiet": quiet, "churn": during, "churn_containers": a.churn, "churn_window": window,
                "churn_seconds": round(churn_s, 2), "churn_start_ms": summary(starts), "churn_stop_ms": summary(stops)}

    # -- the run ----------------------------------------------------------------------------
    def part(self, key: str, label: str, fn: Any, number: str) -> None:
        """Run one part; a part that fails is recorded (its targets become MISSED) and the
        run goes on with the next one. A part left out with --parts is recorded as not run."""
        if number not in self.args.parts:
            self.sections[key] = {"not_run": True}
            return
        log(label)
        try:
            self.sections[key] = fn()
        except Exception as exc:
            self.note_failure(-1, f"part {key}", exc)
            self.sections[key] = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
        self.note_load(f"after {key}")

    def run(self) -> dict[str, Any]:  # type: ignore[override]
        started = dt.datetime.now()
        self.tree_digest = tree_digest()
        self.note_load("start")
        self.setup()
        self.part("ports", "part 3: published ports", self.part_ports, "3")
        self.part("attach", "part 1: attach with two published ports", self.part_attach, "1")
        self.part("attach_teardown", "part 1 teardown", self.teardown_attach, "1")  # even if part 1 failed
        self.part("throughput", "part 2: throughput", self.part_throughput, "2")
        self.part("dns", "part 4: DNS", self.part_dns, "4")
        self.check_daemon(-1, "the end")
        return self.results(started, dt.datetime.now())

    def med(self, metric: str, level: int) -> float:
        v = self.samples.get(metric, {}).get(level, [])
        return statistics.median(v) * 1000 if v else float("nan")

    def results(self, started: dt.datetime, finished: dt.datetime) -> dict[str, Any]:  # type: ignore[override]
        levels = self.levels
        lo, hi = levels[0], levels[-1]
        table = {m: {str(lv): summary(self.samples.get(m, {}).get(lv, [])) for lv in levels} for m in ATTACH_METRICS}
        verdicts: list[dict[str, Any]] = []
        ratios: dict[str, dict[str, Any]] = {}
        for lv in levels if "1" in self.args.parts else []:
            t, c = self.med("tether_ports", lv), self.med("cni_chain", lv)
            ratios[str(lv)] = {
                "tether_over_chain": round(t / c, 3),
                "tether_over_chain_incl_netns": round(t / self.med("cni_chain_netns", lv), 3),
                "publish_cost_ms": round(t - self.med("tether_noports", lv), 2),
                "portmap_share_of_chain": round(self.med("cni_portmap", lv) / c, 3),
                "nft_probe_add_ms": round(self.med("nft_probe_add", lv), 2),
            }
            verdicts.append(verdict(f"part 1: tether create+attach+2 ports / CNI chain ADD at N={lv}", t / c,
                                    round(TARGETS["attach_vs_chain"], 4), "ratio",
                                    note=f"tether {t:.1f} ms, chain {c:.1f} ms (netns creation: tether includes it, "
                                         f"the chain does not; with it the ratio is {t / self.med('cni_chain_netns', lv):.3f})"))
        growth = {} if "1" not in self.args.parts else {m: round(self.med(m, hi) / self.med(m, lo), 3)
                  for m in ("tether_ports", "tether_noports", "cni_chain", "cni_bridge", "cni_firewall", "cni_portmap",
                            "nft_probe_add")}
        if growth:
            verdicts.append(verdict(f"part 1: tether median at N={hi} / at N={lo} (flat)", growth["tether_ports"],
                                    TARGETS["flat"], "ratio",
                                    note="; ".join(x for x in (
                                        "" if (lo, hi) == (1, 500) else f"target is defined for 500/1; this run has {hi}/{lo}",
                                        f"the chain grows {growth['cni_chain']}x") if x)))
        else:
            verdicts.append(not_run("part 1: tether / CNI chain, and tether flat"))
        if self.sections["throughput"].get("not_run"):
            verdicts.append(not_run("part 2: published / direct throughput"))
        else:
            tput = self.sections["throughput"].get("results", {})
            for s in (1, 4):
                pub, direct = tput.get(f"lan_published_P{s}"), tput.get(f"lan_direct_P{s}")
                value = pub["median_gbps"] / direct["median_gbps"] if pub and direct else float("nan")
                verdicts.append({"what": f"part 2: lan -> published port / lan -> container routed, {s} stream(s)",
                                 "value": round(value, 3), "target": f">= {TARGETS['published_vs_direct']} ratio",
                                 "met": bool(value >= TARGETS["published_vs_direct"]),
                                 "note": f"{pub['median_gbps'] if pub else '-'} vs "
                                         f"{direct['median_gbps'] if direct else '-'} Gbit/s (medians)"})
        ports = self.sections["ports"]
        if ports.get("not_run"):
            verdicts.append(not_run("part 3: constant rule count"))
        elif "error" in ports:
            verdicts.append({"what": "part 3: rules in table ip tether with 1000 published ports", "value": float("nan"),
                             "target": "constant", "met": False, "note": ports["error"]})
        else:
            constant = ports["rules_before"] == ports["rules_after"] and all(
                r == ports["rules_before"] for r in ports["rules_after_each"])
            verdicts.append({"what": f"part 3: rules in table ip tether with {ports['ports']} published ports",
                             "value": ports["rules_after"], "target": f"== {ports['rules_before']} (the count with none)",
                             "met": constant,
                             "note": f"map elements {ports['map_elements_before']} -> {ports['map_elements_after']}; "
                                     f"daemon RSS {ports['rss_before_mb']} -> {ports['rss_after_mb']} MB"})
        dns = self.sections["dns"].get("churn")
        if self.sections["dns"].get("not_run"):
            verdicts.append(not_run("part 4: no failed lookup during churn"))
        elif dns is None:
            verdicts.append({"what": "part 4: failed lookups of a stable name during the churn", "value": float("nan"),
                             "target": "<= 0 lookups", "met": False, "note": self.sections["dns"].get("error", "")})
        else:
            verdicts.append(verdict(f"part 4: failed lookups of a stable name during a churn of {self.args.churn}",
                                    dns["failed"], TARGETS["dns_failures"], "lookups",
                                    note=f"of {dns['lookups']}; {dns['kinds']}" if dns["failed"] else f"of {dns['lookups']}"))
        for key, sec in self.sections.items():
            if "error" in sec:
                verdicts.append({"what": f"part {key} ran to the end", "value": "no", "target": "yes", "met": False,
                                 "note": sec["error"]})
        for v in verdicts:
            if isinstance(v["value"], float) and math.isnan(v["value"]):
                v["met"] = False
                v["note"] = "no successful sample; " + v["note"]
        return {
            **result_head("bridge", started, finished),
            "duration_s": round((finished - started).total_seconds(), 1),
            "quick": bool(self.args.quick),
            "machine": machine_info(),
            "load": self.load,
            "git_commit": git_commit(),
            "tether_tree_sha256": self.tree_digest,
            "config": {k: v for k, v in vars(self.args).items() if k != "results_dir"},
            "labels": ATTACH_LABELS,
            "attach": {"results": table, "ratios": ratios, "growth": growth,
                       "levels": {str(k): v for k, v in self.level_info.items()}, **self.sections["attach"],
                       "teardown": self.sections["attach_teardown"]},
            "parts": self.args.parts,
            "ports": ports,
            "throughput": self.sections["throughput"],
            "dns": self.sections["dns"],
            "profiles": {k: {kk: vv for kk, vv in v.items() if kk != "collapsed"} for k, v in self.profiles.items()},
            "targets": verdicts,
            "failed_samples": self.failures,
            "daemon_crash": self.daemon_crash,
            "raw_samples_ms": {m: {str(lv): [round(x * 1000, 3) for x in v] for lv, v in per.items()}
                               for m, per in self.samples.items()},
        }

    def cleanup(self) -> list[str]:
        try:
            self.close_probe()
        except Exception as exc:
            log(f"cleanup: closing the nft probe: {exc}")
        for p in self.bg:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        return super().cleanup()


ATTACH_METRICS = ["tether_ping", "tether_ports", "tether_noports", "cni_chain", "cni_chain_netns",
                  "cni_bridge", "cni_firewall", "cni_portmap", "nft_probe_add", "nft_probe_remove"]
ATTACH_LABELS = {
    "tether_ping": "tether API GET /ping (transport floor)",
    "tether_ports": "tether POST /containers, net + 2 ports",
    "tether_noports": "tether POST /containers, net, no ports",
    "cni_chain": "CNI chain ADD (bridge+firewall+portmap)",
    "cni_chain_netns": "CNI chain ADD + netns creation",
    "cni_bridge": "  of which bridge (+host-local)",
    "cni_firewall": "  of which firewall",
    "cni_portmap": "  of which portmap",
    "nft_probe_add": "tether Firewall.add_ports, 2 ports, in-process",
    "nft_probe_remove": "tether Firewall.remove_ports, 2 ports, in-process",
}


def summarise_profile(text: str, window_s: float, rate: int, top: int = 14) -> dict[str, Any]:
    """py-spy's collapsed stacks of the daemon (``--idle``: waiting threads are sampled
    too) -> where API requests spent their wall time, and how busy the firewall healer was.

    A stack is an API request's if it holds ``_handle`` of tether/api/server.py (pool
    threads waiting for work do not). Inclusive: samples with the function anywhere on the
    stack; self: at the top. A Python frame at the top while its thread waits in C (a lock,
    a syscall) is counted as that frame's self time: ``_add`` of firewall/nft.py at the top
    is its ``with self._lock``."""
    from collections import Counter

    roles: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    own: Counter[str] = Counter()
    healer_busy: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if any(f.startswith("_handle (tether/api/server.py") for f in frames):
            roles["api request"] += n
            for f in set(frames):
                incl[f] += n
            own[frames[-1]] += n
        elif any(f.startswith("_heal_loop (") for f in frames):
            if frames[-1].startswith("wait (threading.py"):
                roles["firewall healer, sleeping"] += n
            else:
                roles["firewall healer, working"] += n
                i = next(k for k, f in enumerate(frames) if f.startswith("_heal_loop ("))
                healer_busy[" > ".join(f.split(" (")[0] for f in frames[i + 1:i + 4])] += n
        else:
            roles["other threads (idle or not)"] += n
    req = roles["api request"] or 1
    work = roles["firewall healer, working"]
    return {
        "window_s": round(window_s, 1), "rate_hz": rate, "samples_by_role": dict(roles),
        "api_request_s": round(roles["api request"] / rate, 2),
        "healer_working_s": round(work / rate, 2),
        "healer_busy_share_of_window": round(work / rate / window_s, 3) if window_s else None,
        "healer_working_in": [[k, round(v / rate, 2)] for k, v in healer_busy.most_common(5)],
        "api_request_inclusive_top": [[f, n, round(100 * n / req, 1)] for f, n in incl.most_common(60)
                                      if "tether/" in f or "libnft" in f][:top],
        "api_request_self_top": [[f, n, round(100 * n / req, 1)] for f, n in own.most_common(top)],
    }


def print_summary(res: dict[str, Any]) -> None:
    print(markdown(res))


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    at = res["attach"]
    levels = [str(x) for x in res["config"]["counts"]]
    cfg = res["config"]
    lines = [
        f"# bridge benchmark, {res['date']}{' (quick)' if res['quick'] else ''}"
        + ("" if res["parts"] == ALL_PARTS else f" (parts {', '.join(res['parts'])} only)"),
        "",
        machine_md(m) + f", containernetworking-plugins {m['cni_plugins']}, {at.get('iptables_backend', 'iptables: not reached')}. "
        f"tether {res['git_commit']} (tree sha256 {res['tether_tree_sha256']}). Run {res['started']} - "
        f"{res['finished']} ({res['duration_s']} s). Load average (1/5/15 min): "
        + "; ".join(f"{w}: {v}" for w, v in res["load"]) + ".",
        "",
        f"## 1. Attach with two published ports ({cfg['samples']} samples per level)",
        "",
        "Median / p95 in ms; N = endpoints of that method already attached, each with 2 published ports.",
        "",
        *md_head(f"N={lv}" for lv in levels),
    ]
    if at.get("not_run"):
        lines = lines[:lines.index(f"## 1. Attach with two published ports ({cfg['samples']} samples per level)")]
        lines += ["## 1. Attach with two published ports: not run", ""]
    for metric in ATTACH_METRICS if not at.get("not_run") else []:
        lines.append(f"| {res['labels'][metric]} | " + " | ".join(median_p95(at["results"][metric][lv]) for lv in levels) + " |")
    for key, label in [] if at.get("not_run") else (("rss_mb", "daemon RSS (MB)"), ("tether_rules", "rules in table ip tether"),
                       ("iptables", "CNI iptables rules / chains"), ("host_links", "links in the host netns"),
                       ("healer_check", "healer's checks: list chains ip / list ruleset ip (ms)")):
        cells = []
        for lv in levels:
            v = at["levels"].get(lv, {}).get(key, "-")
            if isinstance(v, dict) and "rules" in v:
                cells.append(f"{v['rules']} / {v['chains']}")
            elif isinstance(v, dict):
                cells.append(f"{v['list_chains_ip_ms']} / {v['list_ruleset_ip_ms']}")
            else:
                cells.append(str(v))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if not at.get("not_run"):
        lines += ["", *md_head((f"N={lv}" for lv in levels), corner="ratios of medians")]
        for k in at["ratios"][levels[0]]:
            lines.append(f"| {k} | " + " | ".join(str(at["ratios"][lv][k]) for lv in levels) + " |")
        lines += ["", f"Growth N={levels[-1]} / N={levels[0]}: "
                  + ", ".join(f"{k} {v}" for k, v in at["growth"].items()),
                  "", f"Teardown (not a target): {at['teardown']}", ""]
    if "error" in at:
        lines += [f"**Part 1 failed**: {at['error']}", ""]
    lines += part_md("3", "Published ports", res["ports"], ports_md)
    lines += part_md("2", "Throughput", res["throughput"], throughput_md)
    lines += part_md("4", "DNS", res["dns"], dns_md)
    lines += profiles_md(res)
    lines += ["## Targets", ""]
    for v in res["targets"]:
        mark = "NOT RUN" if v["met"] is None else "met" if v["met"] else "MISSED"
        lines.append(f"- **{mark}**: {v['what']} = {v['value']} (target {v['target']})"
                     + (f"; {v['note']}" if v["note"] else ""))
    if res["daemon_crash"]:
        cr = res["daemon_crash"]
        lines += ["", f"**The tether daemon crashed** during {cr['during']} (exit status {cr['exit_status']}). Log tail:",
                  "", "```", cr["log_tail"].strip(), "```"]
    if res["failed_samples"]:
        lines += ["", f"Failed samples ({len(res['failed_samples'])}, not timed):", ""]
        lines += [f"- {f['sample']} (level {f['level']}): `{f['error']}`" for f in res["failed_samples"]]
    lines.append("")
    return "\n".join(lines)


def part_md(part: str, title: str, sec: dict[str, Any], body: Callable[[dict[str, Any]], list[str]]) -> list[str]:
    """A part's section of the report: ``body(sec)``, or that the part was not run or failed."""
    if sec.get("not_run"):
        return [f"## {part}. {title}: not run", ""]
    if "error" in sec:
        return [f"## {part}. {title}", "", f"**Part {part} failed**: {sec['error']}", ""]
    return body(sec)


def ports_md(p: dict[str, Any]) -> list[str]:
    return [
        f"## 3. {p['ports']} published ports ({p['containers']} containers x 100)", "",
        f"- time to publish: {p['total_s']} s in all, {p['ms_per_port']} ms per port; per 100-port container "
        f"median {p['create_ms']['median_ms']} ms, p95 {p['create_ms']['p95_ms']} ms (raw {p['create_raw_ms']})",
        f"- a 2-port container with the {p['ports']} ports in place: median "
        f"{p['two_port_create_with_ports_present_ms']['median_ms']} ms, p95 {p['two_port_create_with_ports_present_ms']['p95_ms']} ms",
        f"- rules in `table ip tether`: {p['rules_before']} with no port, {p['rules_after']} with {p['ports']} "
        f"(after each container: {p['rules_after_each']}), {p['rules_after_removal']} after removal",
        f"- map elements: {p['map_elements_before']} -> {p['map_elements_after']} -> {p['map_elements_after_removal']}",
        f"- daemon RSS: {p['rss_before_mb']} MB before, {p['rss_after_mb']} MB with {p['ports']} ports",
        "",
    ]


def throughput_md(t: dict[str, Any]) -> list[str]:
    lines = [f"## 2. Throughput (iperf3, {t['seconds']} s per run, {t['reps']} run(s) each, interleaved; "
              f"server in a container on {t['network']}, Gbit/s)", "",
              "| path | 1 stream median (min-max) | 4 streams median (min-max) |", "|---|---:|---:|"]
    for path, label in (("c2c", "container -> container, same network"),
                        ("lan_published", "lan -> host:15201 published -> container"),
                        ("lan_direct", "lan -> container address, routed via host")):
        cells = []
        for s in (1, 4):
            r = t["results"].get(f"{path}_P{s}")
            cells.append(f"{r['median_gbps']} ({r['min_gbps']}-{r['max_gbps']})" if r else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def dns_md(d: dict[str, Any]) -> list[str]:
    q, c = d["quiet"], d["churn"]
    lines = ["## 4. DNS (embedded resolver, 127.0.0.11 from inside a container, one query at a time)", "",
              "| | lookups | per second | failed | median ms | p95 ms | p99 ms | max ms |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, r in (("quiet", q), (f"during churn of {d['churn_containers']}", c)):
        lines.append(f"| {label} | {r['lookups']} | {r['per_second']} | {r['failed']} | {r['median_ms']} | "
                     f"{r['p95_ms']} | {r['p99_ms']} | {r['max_ms']} |")
    lines += ["", f"Churn: {d['churn_containers']} containers started (POST /containers, detach) and removed "
              f"(DELETE ?force=1), at most {d['churn_window']} alive at once, in {d['churn_seconds']} s; start median "
              f"{d['churn_start_ms'].get('median_ms')} ms, stop median {d['churn_stop_ms'].get('median_ms')} ms."
              + (f" Failures: {c['kinds']}, first: {c['first_failures']}" if c["failed"] else ""), ""]
    return lines


def profiles_md(res: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for what, prof in res.get("profiles", {}).items():
        lines += [f"## Profile of the daemon during {what} (py-spy --idle --nonblocking, {PROFILE_RATE} Hz)", ""]
        if "error" in prof:
            lines += [prof["error"], ""]
            continue
        lines += [f"Window {prof['window_s']} s. Samples by thread role: {prof['samples_by_role']}. "
                  f"API requests in flight {prof['api_request_s']} s; the firewall healer working "
                  f"{prof['healer_working_s']} s ({100 * (prof['healer_busy_share_of_window'] or 0):.0f}% of the window), in "
                  + ", ".join(f"{k} {v} s" for k, v in prof["healer_working_in"]) + ".", "",
                  "API requests, wall time inclusive (share of request samples):", ""]
        lines += [f"- {pct_}% {f}" for f, _n, pct_ in prof["api_request_inclusive_top"]]
        lines += ["", "API requests, self (top of stack; a frame waiting in C counts here):", ""]
        lines += [f"- {pct_}% {f}" for f, _n, pct_ in prof["api_request_self_top"]]
        lines.append("")
    return lines


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--quick", action="store_true", help="N = 1, 50; fewer samples, shorter runs, smaller churn")
    p.add_argument("--counts", default=None, help="part 1 endpoint counts (default 1,50,100,500; quick 1,50)")
    p.add_argument("--samples", type=int, default=None, help="part 1 samples per level (default 15; quick 5)")
    p.add_argument("--port-containers", type=int, default=None, help="part 3: containers of 100 ports (default 10; quick 3)")
    p.add_argument("--iperf-seconds", type=float, default=None, help="part 2: seconds per iperf3 run (default 5; quick 2)")
    p.add_argument("--iperf-reps", type=int, default=None, help="part 2: runs per path and stream count (default 5; quick 1)")
    p.add_argument("--dns-seconds", type=float, default=None, help="part 4: quiet lookup loop (default 5; quick 2)")
    p.add_argument("--churn", type=int, default=None, help="part 4: containers to churn (default 100; quick 20)")
    p.add_argument("--parts", default=",".join(ALL_PARTS),
                   help="which parts to run, of 1 (attach), 2 (throughput), 3 (1000 ports), 4 (DNS); default all")
    p.add_argument("--profile", action="store_true",
                   help="py-spy the daemon (--nonblocking) during part 3 and the top level of part 1")
    args = parse_args(p)
    args.parts = sorted({x.strip() for x in args.parts.split(",") if x.strip()})
    if not args.parts or any(x not in ALL_PARTS for x in args.parts):
        p.error(f"--parts takes some of {','.join(ALL_PARTS)}")
    quick_defaults(args, counts=("1,50,100,500", "1,50"), samples=(15, 5), port_containers=(10, 3), iperf_seconds=(5, 2),
                   iperf_reps=(5, 1), dns_seconds=(5, 2), churn=(100, 20))
    args.counts = ints(args.counts)
    if any(c < 1 for c in args.counts):
        p.error("counts must be positive")
    check_host(p, ("nsenter", "ip", "nft", "iperf3", "iptables", "iptables-save", "ss") + (("py-spy",) if args.profile else ()),
               ("bridge", "host-local", "firewall", "portmap"),
               install="apt-get install iptables iperf3 nftables iproute2 util-linux")
    bench = BridgeBench(args)
    res = run_bench(bench, failure_log=bench.daemon_log)
    print_summary(res)
    partial = "" if args.parts == ALL_PARTS else "-parts" + "".join(args.parts)
    write_results(args.results_dir, f"bridge-{res['date']}{'-quick' if args.quick else ''}{partial}", res, markdown(res),
                  extra={f"-profile-{what}.txt": prof["collapsed"] for what, prof in bench.profiles.items() if "collapsed" in prof},
                  also=" and the profiles' collapsed stacks" if bench.profiles else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
