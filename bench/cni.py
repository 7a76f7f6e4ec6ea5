#!/usr/bin/env python3
"""CNI benchmark: ``tether-cni`` ADD side by side with the reference ``bridge`` plugin.

Run as root from the repository:  python bench/cni.py [--samples 30]

Both plugins are executed the way a runtime executes them: a new process, the ``CNI_*``
environment, the configuration on stdin, through ``nsenter --net=<bench host>`` (so the
bridges land in the bench's own host namespace), each ADD on a namespace created just
before it (not timed). tether-cni talks to a tether daemon running in that host namespace
on a bridge network; ``bridge`` uses its own bridge, ``isGateway``, no masquerade, and
``host-local`` IPAM with its ``dataDir`` in the temp dir. Samples are interleaved and
the order flips every sample, so drift hits both alike; every attachment is removed with
DEL right after its sample (DEL is timed too) and its namespace deleted.

To show where tether-cni's time goes, the same run also measures: the daemon's share
(``POST /cni/add`` from this process over the socket, no plugin process), the plugin's
process floor (``CNI_COMMAND=VERSION``: interpreter and imports, no request), the
interpreter alone (``python -c pass`` and ``python -I -S -c pass``) and ``nsenter``.

Everything carries the prefix ``tcnib<hex>`` and is removed at the end, also on failure
or Ctrl-C. Results: bench/results/cni-<date>.json and .md (see bench/README.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from common import (CNI_DIR, NETNS_DIR, REPO, await_daemon, bridge_netconf, check_host, daemon_log, git_commit, log,
                    machine_brief, machine_info, machine_md, our_netns, parse_args, parser, result_head, run_bench,
                    spawn_daemon, summary, tree_digest, write_results)

from tether.api.client import Client

TETHER_SUBNET = "10.218.0.0/22"
BRIDGE_SUBNET = "10.219.0.0/22"
TARGET = 1.0  # tether-cni ADD / bridge ADD, at most: no slower than the reference plugin

ROWS = {
    "tether_cni_add": "tether-cni ADD",
    "bridge_add": "CNI bridge+host-local ADD",
    "tether_cni_del": "tether-cni DEL",
    "bridge_del": "CNI bridge+host-local DEL",
    "tether_cni_shared_python_add": "tether-cni ADD, run by the shared interpreter",
    "api_cni_add": "tether API POST /cni/add (daemon's share, no plugin process)",
    "tether_cni_version": "tether-cni VERSION (process floor: interpreter + imports)",
    "python_pass": "python -c pass (the plugin's interpreter)",
    "python_pass_shared": "python -c pass (the shared interpreter, with its site)",
    "python_bare": "python -I -S -c pass (no site at all)",
    "nsenter_true": "nsenter --net=HOST /bin/true",
}


def sh(*cmd: str) -> None:
    subprocess.run(list(cmd), check=True, capture_output=True, timeout=60)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.prefix = f"tcnib{secrets.token_hex(3)}"
        self.host = f"{self.prefix}host"
        self.tmp = tempfile.mkdtemp(prefix=f"{self.prefix}-")
        self.socket = os.path.join(self.tmp, "tether.sock")
        self.daemon: subprocess.Popen[bytes] | None = None
        self.samples: dict[str, list[float]] = {k: [] for k in ROWS}
        self.failures: list[str] = []
        self.counter = 0
        self.venv_python = os.path.join(self.tmp, "venv", "bin", "python")
        self.plugin = args.plugin or os.path.join(self.tmp, "tether-cni")
        self.plugin_shared = os.path.join(self.tmp, "tether-cni-shared")

    # ---------------------------------------------------------------- setup
    def _plugin_wrappers(self) -> None:
        """What pip makes of [project.scripts] ``tether-cni``, twice: for a virtualenv of
        its own (what ``make deps`` or ``pip install`` in a venv gives: only the stdlib's
        site, no other .pth files) and for the interpreter running this bench, whose
        site-packages may carry .pth files that run code at every start-up."""
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", os.path.join(self.tmp, "venv")], check=True)
        for path, python in ((self.plugin, self.venv_python), (self.plugin_shared, sys.executable)):
            if path == self.args.plugin:
                continue
            with open(path, "w") as f:
                f.write(f"#!{python}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
                        "from tether.cni import main\nsys.exit(main())\n")
            os.chmod(path, 0o755)

    def enter(self) -> list[str]:
        return ["nsenter", f"--net={NETNS_DIR}/{self.host}", "--"]

    def setup(self) -> None:
        self._plugin_wrappers()
        # an installed package has its bytecode compiled (pip does it); a checkout may not
        # (PYTHONDONTWRITEBYTECODE), and compiling cni.py at every call is not start-up cost
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "tether")], check=True)
        sh("ip", "netns", "add", self.host)
        sh("ip", "-n", self.host, "link", "set", "lo", "up")
        self.daemon = spawn_daemon(self.enter(), os.path.join(self.tmp, "state"), self.socket, f"{self.prefix}t-",
                                   self.tmp)
        client = Client(self.socket)
        await_daemon(self.daemon, client.alive, self.tmp)
        client.post("/networks", {"name": "benchnet", "subnet": TETHER_SUBNET})
        self.tether_conf = json.dumps({"cniVersion": "1.0.0", "name": "benchnet", "type": "tether", "socket": self.socket})
        self.bridge_conf = bridge_netconf(self.prefix, BRIDGE_SUBNET, self.tmp)

    def daemon_log(self) -> str:
        return daemon_log(self.tmp)

    # ---------------------------------------------------------------- one sample
    def new_netns(self) -> tuple[str, str]:
        self.counter += 1
        name = f"{self.prefix}s{self.counter}"
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")  # a runtime does this before ADD
        return name, f"{NETNS_DIR}/{name}"

    def exec_plugin(self, binary: str, command: str, conf: str, cid: str, netns: str) -> float:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
               "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": CNI_DIR}
        start = time.perf_counter()
        proc = subprocess.run([*self.enter(), binary], input=conf.encode(), env=env, capture_output=True, timeout=60, check=False)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{os.path.basename(binary)} {command}: {proc.stdout.decode().strip()} {proc.stderr.decode().strip()}")
        return elapsed

    def sample_plugin(self, key: str, binary: str, conf: str, record: bool) -> None:
        """ADD then DEL on a fresh namespace; records ``<key>_add`` (and ``<key>_del``)."""
        name, path = self.new_netns()
        cid = f"{self.prefix}-{self.counter}"
        try:
            add = self.exec_plugin(binary, "ADD", conf, cid, path)
            delete = self.exec_plugin(binary, "DEL", conf, cid, path)
            if record:
                self.samples[f"{key}_add"].append(add)
                if f"{key}_del" in self.samples:
                    self.samples[f"{key}_del"].append(delete)
        except RuntimeError as exc:
            self.failures.append(str(exc))
            log(f"failed sample: {exc}")
        finally:
            sh("ip", "netns", "del", name)

    def sample_api(self, record: bool) -> None:
        name, path = self.new_netns()
        cid = f"{self.prefix}-api-{self.counter}"
        client = Client(self.socket)
        try:
            start = time.perf_counter()
            client.post("/cni/add", {"container_id": cid, "netns": path, "ifname": "eth0", "network": "benchnet"})
            elapsed = time.perf_counter() - start
            client.post("/cni/del", {"container_id": cid, "ifname": "eth0", "network": "benchnet"})
            if record:
                self.samples["api_cni_add"].append(elapsed)
        except Exception as exc:  # noqa: BLE001  # recorded, the bench goes on
            self.failures.append(f"API /cni/add: {exc}")
        finally:
            sh("ip", "netns", "del", name)

    def sample_process(self, key: str, cmd: list[str], record: bool, stdin: bytes = b"") -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": "VERSION"}
        start = time.perf_counter()
        proc = subprocess.run(cmd, input=stdin, env=env, capture_output=True, timeout=60, check=False)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            self.failures.append(f"{key}: exit {proc.returncode} {proc.stderr.decode()[-200:]}")
        elif record:
            self.samples[key].append(elapsed)

    def round(self, i: int, record: bool) -> None:
        plugins = [("tether_cni", self.plugin, self.tether_conf), ("bridge", f"{CNI_DIR}/bridge", self.bridge_conf)]
        if i % 2:
            plugins.reverse()
        for key, binary, conf in plugins:
            self.sample_plugin(key, binary, conf, record)
        self.sample_plugin("tether_cni_shared_python", self.plugin_shared, self.tether_conf, record)
        self.sample_api(record)
        self.sample_process("tether_cni_version", [*self.enter(), self.plugin], record, b'{"cniVersion": "1.0.0"}')
        self.sample_process("python_pass", [self.venv_python, "-c", "pass"], record)
        self.sample_process("python_pass_shared", [sys.executable, "-c", "pass"], record)
        self.sample_process("python_bare", [sys.executable, "-I", "-S", "-c", "pass"], record)
        self.sample_process("nsenter_true", [*self.enter(), "/bin/true"], record)

    def run(self) -> dict[str, Any]:
        started = dt.datetime.now()
        self.setup()
        log(f"bench host {self.host}, plugin {self.plugin}; {self.args.warmup} warm-up rounds, {self.args.samples} samples")
        for i in range(self.args.warmup):  # the bridge plugin makes its bridge on the first ADD; caches warm
            self.round(i, record=False)
        for i in range(self.args.samples):
            self.round(i, record=True)
            if (i + 1) % 10 == 0:
                log(f"{i + 1}/{self.args.samples} rounds")
        finished = dt.datetime.now()
        return self.results(started, finished)

    # ---------------------------------------------------------------- results
    def results(self, started: dt.datetime, finished: dt.datetime) -> dict[str, Any]:
        rows = {key: {"label": ROWS[key], **summary(values), "raw_samples_ms": [round(v * 1000, 3) for v in values]}
                for key, values in self.samples.items()}

        def med(key: str) -> float:
            values = self.samples[key]
            return statistics.median(values) * 1000 if values else float("nan")

        ratio = med("tether_cni_add") / med("bridge_add")
        ratios = {
            "tether_cni_add_over_bridge_add": round(ratio, 3),
            "tether_cni_del_over_bridge_del": round(med("tether_cni_del") / med("bridge_del"), 3),
            "api_cni_add_over_bridge_add": round(med("api_cni_add") / med("bridge_add"), 3),
        }
        # where tether-cni's ADD goes: the plugin process (interpreter, site, imports) and
        # the daemon's work; the remainder is the request itself and noise
        breakdown = {
            "nsenter_ms": round(med("nsenter_true"), 2),
            "interpreter_ms": round(med("python_pass"), 2),
            "plugin_imports_ms": round(med("tether_cni_version") - med("nsenter_true") - med("python_pass"), 2),
            "daemon_cni_add_ms": round(med("api_cni_add"), 2),
        }
        breakdown["rest_ms"] = round(med("tether_cni_add") - sum(breakdown.values()), 2)
        ratios["shared_python_site_ms"] = round(med("python_pass_shared") - med("python_pass"), 2)
        return {
            **result_head("cni", started, finished),
            "machine": machine_info(),
            "commit": git_commit(),
            "tether_tree_sha256": tree_digest(),
            "config": {"samples": self.args.samples, "warmup": self.args.warmup, "plugin": self.plugin,
                       "plugin_python": self.venv_python if not self.args.plugin else "(given)",
                       "shared_python": sys.executable, "tether_subnet": TETHER_SUBNET, "bridge_subnet": BRIDGE_SUBNET},
            "rows": rows,
            "ratios": ratios,
            "tether_cni_add_breakdown": breakdown,
            "target": {"what": "tether-cni ADD / bridge ADD (medians)", "value": round(ratio, 3),
                       "target": f"<= {TARGET}", "met": ratio <= TARGET},
            "failures": self.failures,
        }

    # ---------------------------------------------------------------- cleanup
    def our_netns(self) -> list[str]:
        return our_netns(self.prefix)

    def cleanup(self) -> list[str]:
        problems: list[str] = []
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait(timeout=20)
        for name in self.our_netns():
            for pid in subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for name in [n for n in self.our_netns() if n != self.host] + [self.host]:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)  # the host last: its bridges go with it
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.our_netns():
            problems.append(f"namespaces left: {self.our_netns()[:5]}")
        if os.path.exists(self.tmp):
            problems.append(f"temp dir left: {self.tmp}")
        log("cleanup: done" + (f"; PROBLEMS: {problems}" if problems else ""))
        return problems


# ---------------------------------------------------------------------------- output
def table(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    bridge = res["rows"]["bridge_add"].get("median_ms")
    out = []
    for key, row in res["rows"].items():
        if not row.get("n"):
            out.append((row["label"], "-", "-", "no sample"))
            continue
        vs = f"{row['median_ms'] / bridge:.2f}" if bridge and key != "bridge_add" else ("1.00" if key == "bridge_add" else "")
        out.append((row["label"], f"{row['median_ms']:.2f}", f"{row['p95_ms']:.2f}", vs))
    return out


def print_summary(res: dict[str, Any]) -> None:
    m = res["machine"]
    print(f"\n# CNI ADD benchmark {res['started']}  {machine_brief(m)}")
    print(f"{res['config']['samples']} samples each, medians and p95 in ms; last column: median / bridge ADD median\n")
    print(f"{'':<62}{'median':>10}{'p95':>10}{'x bridge':>10}")
    for label, median, p95, vs in table(res):
        print(f"{label:<62}{median:>10}{p95:>10}{vs:>10}")
    t = res["target"]
    print(f"\ntarget: {t['what']} = {t['value']} (target {t['target']}): {'met' if t['met'] else 'MISSED'}")
    print("tether-cni ADD, where the time goes (ms):", ", ".join(f"{k} {v}" for k, v in res["tether_cni_add_breakdown"].items()))
    if res["failures"]:
        print(f"failed samples ({len(res['failures'])}): {res['failures'][:3]}")


def markdown(res: dict[str, Any]) -> str:
    m, t = res["machine"], res["target"]
    lines = [
        f"# CNI ADD benchmark, {res['date']}",
        "",
        (machine_md(m) + f", containernetworking-plugins {m['cni_plugins']}. tether {res['commit']} "
         f"(tree sha256 {res['tether_tree_sha256']}). Run {res['started']} - {res['finished']}; "
         f"{res['config']['samples']} samples per row after {res['config']['warmup']} warm-up rounds."),
        "",
        "Medians and p95 in ms; each plugin call is a process run through `nsenter --net=HOST` on a fresh namespace.",
        "",
        "| | median | p95 | x bridge ADD |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {label} | {median} | {p95} | {vs} |" for label, median, p95, vs in table(res)]
    lines += [
        "",
        f"**Target**: {t['what']} {t['target']}: **{t['value']}, {'met' if t['met'] else 'MISSED'}**.",
        "",
        "Where tether-cni's ADD goes (ms, from the medians above): "
        + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in res["tether_cni_add_breakdown"].items()) + ".",
        "",
        "Other ratios: " + ", ".join(f"{k} {v}" for k, v in res["ratios"].items()) + ".",
    ]
    if res["failures"]:
        lines += ["", f"Failed samples ({len(res['failures'])}):", *[f"- {f}" for f in res["failures"][:10]]]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--samples", type=int, default=30, help="samples per row (default 30)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    p.add_argument("--plugin", default=None, help="a tether-cni executable to measure instead of the console "
                                                  "script made in a fresh venv")
    args = parse_args(p)
    check_host(p, ("nsenter", "ip"), ("bridge", "host-local"))
    bench = Bench(args)
    res = run_bench(bench, failure_log=bench.daemon_log)
    print_summary(res)
    # unlike the other scripts', this JSON has always kept NaN (a row with no sample) as NaN
    write_results(args.results_dir, f"cni-{res['date']}", res, markdown(res), nan_as_null=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
