"""What the bench scripts share: paths, logging, statistics, machine and commit info,
and the frame of every ``main()`` (options, checks, SIGTERM, cleanup, result files).

Importing it puts the repository first on ``sys.path``, so ``tether`` is the checkout's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
NETNS_DIR = "/var/run/netns"
CNI_DIR = "/usr/lib/cni"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def now() -> float:
    return time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def our_netns(prefix: str) -> list[str]:
    """The named network namespaces whose name starts with ``prefix``, sorted."""
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


# ---------------------------------------------------------------------------- stats
def pct(values: list[float], q: float) -> float:
    """Percentile with linear interpolation between closest ranks."""
    s = sorted(values)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary(values_s: list[float], *, p99: bool = False) -> dict[str, Any]:
    """Samples in seconds -> n, median, p95 (and p99), min, max in ms."""
    ms = [v * 1000 for v in values_s]
    if not ms:
        return {"n": 0}
    out: dict[str, Any] = {"n": len(ms), "median_ms": round(statistics.median(ms), 3), "p95_ms": round(pct(ms, 0.95), 3)}
    if p99:
        out["p99_ms"] = round(pct(ms, 0.99), 3)
    out["min_ms"] = round(min(ms), 3)
    out["max_ms"] = round(max(ms), 3)
    return out


def verdict(what: str, value: float, target: float, unit: str, note: str = "") -> dict[str, Any]:
    """A target of the form "at most": ``value <= target``."""
    met = value <= target
    return {"what": what, "value": round(value, 3), "target": f"<= {target} {unit}", "met": met, "note": note}


def no_nan(x: Any) -> Any:
    """NaN (a metric with no successful sample) as JSON null."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: no_nan(v) for k, v in x.items()}
    if isinstance(x, list):
        return [no_nan(v) for v in x]
    return x


# ---------------------------------------------------------------------------- machine
def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {
        "kernel": platform.release(),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "debian": _read_first("/etc/debian_version"),
        "cni_plugins": _dpkg_version("containernetworking-plugins"),
    }


def machine_md(m: dict[str, Any]) -> str:
    """The start of a report's "Machine:" line, from ``machine_info()``."""
    return (f"Machine: kernel {m['kernel']}, {m['nproc']} CPU ({m['cpu']}), {m['memory_gb']} GB RAM, "
            f"Python {m['python']}, Debian {m['debian']}")


def machine_brief(m: dict[str, Any]) -> str:
    """The machine in a console summary's title."""
    return f"({m['kernel']}, {m['nproc']} CPU {m['cpu']}, {m['memory_gb']} GB)"


def _read_first(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "unknown"


def _dpkg_version(pkg: str) -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tree_digest() -> str:
    """A digest of tether/ as run (the working tree may differ from the commit)."""
    h = hashlib.sha256()
    for path in sorted((REPO / "tether").rglob("*.py")):
        h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "tether"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+dirty(tether/)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def result_head(benchmark: str, started: dt.datetime, finished: dt.datetime) -> dict[str, Any]:
    """The first keys of every results JSON: which benchmark, and when it ran."""
    return {
        "benchmark": benchmark,
        "date": started.strftime("%Y-%m-%d"),
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------------------- reports
def md_head(columns: Iterable[str], corner: str = "") -> list[str]:
    """A markdown table's header and rule: a first column headed ``corner``, then ``columns``
    aligned right."""
    cols = list(columns)
    return [(f"| {corner} | " if corner else "| | ") + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]


def median_p95(s: dict[str, Any]) -> str:
    """A ``summary()`` as a table cell: "median / p95" in ms, or "-" without samples."""
    return f"{s['median_ms']:.2f} / {s['p95_ms']:.2f}" if s["n"] else "-"


def print_failures(failures: list[Any], note: str = "", line: Callable[[Any], str] = str) -> None:
    """The failed samples in a console summary, if any, one ``line(f)`` each."""
    if failures:
        print(f"\nFAILED SAMPLES ({len(failures)}{note}):")
        for f in failures:
            print(f"  {line(f)}")


def print_targets(targets: list[dict[str, Any]], width: int) -> None:
    """The targets at the end of a console summary, the mark padded to ``width``."""
    print("\ntargets")
    for v in targets:
        mark = "NOT RUN" if v["met"] is None else ("MET" if v["met"] else "MISSED")
        print(f"  [{mark:<{width}}] {v['what']}: {v['value']} (target {v['target']})" + (f"  -- {v['note']}" if v["note"] else ""))


# ---------------------------------------------------------------------------- the daemon, CNI
def spawn_daemon(enter: list[str], state_dir: str, socket: str, netns_prefix: str, tmp: str) -> subprocess.Popen[bytes]:
    """``tether daemon`` started through ``enter`` (``nsenter --net=HOST --``), logging to
    ``tmp/daemon.log``. Keep the Popen before ``await_daemon``: the cleanup kills it."""
    with open(os.path.join(tmp, "daemon.log"), "ab") as log_file:
        return subprocess.Popen(
            [*enter, sys.executable, "-m", "tether.cli", "daemon", "--state-dir", state_dir,
             "--socket", socket, "--netns-prefix", netns_prefix],
            stdout=log_file, stderr=log_file, start_new_session=True, cwd=REPO,
        )


def await_daemon(daemon: subprocess.Popen[bytes], alive: Callable[[], bool], tmp: str, timeout: float = 30) -> None:
    """Until ``alive()`` (the API answers); RuntimeError with the log's tail if the daemon
    exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not alive():
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the tether daemon did not come up: {daemon_log(tmp)}")
        time.sleep(0.05)


def daemon_log(tmp: str, tail: int = 2000) -> str:
    """The last ``tail`` characters of ``tmp/daemon.log`` ("" if there is none)."""
    try:
        return Path(tmp, "daemon.log").read_text()[-tail:]
    except OSError:
        return ""


def bridge_netconf(prefix: str, subnet: str, tmp: str) -> str:
    """The reference ``bridge`` + ``host-local`` plugins' configuration the CNI rows run:
    bridge ``<prefix>b`` as gateway, no masquerade, the leases under ``tmp``."""
    return json.dumps({
        "cniVersion": "1.0.0", "name": "benchbr", "type": "bridge", "bridge": f"{prefix}b",
        "isGateway": True, "ipMasq": False,
        "ipam": {"type": "host-local", "subnet": subnet, "dataDir": os.path.join(tmp, "host-local")},
    })


def crash_and_failures_md(res: dict[str, Any], level: str = "") -> list[str]:
    """A report's closing markdown: the daemon's crash with its log tail, the failed samples
    (each with its ``level``, named so, when given) and the cleanup's problems."""
    lines: list[str] = []
    if res["daemon_crash"]:
        cr = res["daemon_crash"]
        lines += ["", f"**The tether daemon crashed** during {cr['during']} (exit status {cr['exit_status']}). Log tail:",
                  "", "```", cr["log_tail"].strip(), "```"]
    if res["failed_samples"]:
        lines += ["", f"Failed samples ({len(res['failed_samples'])}, not timed):", ""]
        for f in res["failed_samples"]:
            where = f" ({level} {f['level']})" if level else ""
            lines.append(f"- {f['sample']}{where}: `{f['error']}`")
    if res.get("cleanup_problems"):
        lines += ["", f"Cleanup problems: {res['cleanup_problems']}"]
    return lines


def busybox_tarball(base: str, applets: Iterable[str]) -> str:
    """An image without a registry, for Podman or Docker to import: a rootfs of Debian's
    static busybox (``/bin/busybox``) with ``applets`` linked to it, as ``base/rootfs.tar``."""
    rootfs = Path(base, "rootfs")
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in applets:
        (rootfs / "bin" / applet).symlink_to("busybox")
    path = os.path.join(base, "rootfs.tar")
    with tarfile.open(path, "w") as tar:
        tar.add(rootfs, arcname=".")
    return path


# ---------------------------------------------------------------------------- main()
def parser(doc: str | None) -> argparse.ArgumentParser:
    """A script's parser, described by the first paragraph of its docstring."""
    return argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])


def parse_args(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Add the options every script has (``--results-dir``) and parse."""
    p.add_argument("--results-dir", default=str(RESULTS_DIR))
    return p.parse_args()


def quick_defaults(args: argparse.Namespace, **defaults: tuple[Any, Any]) -> None:
    """Give each option left unset (None, 0 or empty) its default: ``name=(full, quick)``,
    the second with ``--quick``."""
    for name, (full, quick) in defaults.items():
        if not getattr(args, name):
            setattr(args, name, quick if args.quick else full)


def ints(text: str) -> list[int]:
    """A comma-separated list of integers, as ``--counts 1,50`` takes."""
    return [int(x) for x in text.split(",") if x.strip()]


def check_host(p: argparse.ArgumentParser, tools: Iterable[str], cni_plugins: Iterable[str] = (),
               install: str = "") -> None:
    """Exit with a usage error unless we are root and the tools and CNI plugins are there."""
    if os.geteuid() != 0:
        p.error("run as root: the benchmark creates network namespaces")
    for tool in tools:
        if shutil.which(tool) is None:
            p.error(f"{tool} is missing" + (f" ({install})" if install else ""))
    for plugin in cni_plugins:
        if not os.access(f"{CNI_DIR}/{plugin}", os.X_OK):
            p.error(f"{CNI_DIR}/{plugin} is missing: apt-get install containernetworking-plugins")


class Runnable(Protocol):
    def run(self) -> dict[str, Any]: ...

    def cleanup(self) -> list[str]: ...


def _on_term(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def run_bench(bench: Runnable, failure_log: Callable[[], str] | None = None) -> dict[str, Any]:
    """``bench.run()``, then ``bench.cleanup()`` whatever happens.

    SIGTERM becomes SystemExit (Ctrl-C is KeyboardInterrupt already), so the cleanup runs
    on either. On failure the tail of ``failure_log()`` (the daemon's log) is logged. The
    cleanup's problems go into the results as ``cleanup_problems``.
    """
    signal.signal(signal.SIGTERM, _on_term)
    res: dict[str, Any] | None = None
    try:
        res = bench.run()
    except BaseException:
        tail = failure_log() if failure_log is not None else ""
        if tail:
            log("daemon log tail:\n" + tail)
        raise
    finally:
        problems = bench.cleanup()
        if res is not None:
            res["cleanup_problems"] = problems
    assert res is not None
    return res


def write_results(results_dir: str, name: str, res: dict[str, Any], markdown: str, *, nan_as_null: bool = True,
                  extra: dict[str, str] | None = None, also: str = "") -> Path:
    """Write ``<results_dir>/<name>.json`` and ``.md`` (and ``<name><suffix>`` for each of
    ``extra``), say so on stdout (``also`` ends the sentence), and return the stem."""
    os.makedirs(results_dir, exist_ok=True)
    stem = Path(results_dir, name)
    stem.with_suffix(".json").write_text(json.dumps(no_nan(res) if nan_as_null else res, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown)
    for suffix, text in (extra or {}).items():
        Path(f"{stem}{suffix}").write_text(text)
    print(f"\nwrote {stem}.json and {stem}.md{also}")
    return stem


def iperf3(netns_path: str, server: str, port: int, seconds: float, extra: Iterable[str] = ()) -> dict[str, Any]:
    """One ``iperf3 -c`` run from inside ``netns_path`` (its JSON report boiled down): Gbit/s
    received, retransmits, CPU of both ends, MSS, the two addresses. Retried twice when the
    server is still busy with the previous run; RuntimeError after that."""
    cmd = ["nsenter", f"--net={netns_path}", "--", "iperf3", *extra, "-c", server, "-p", str(port),
           "-t", str(seconds), "-J"]
    if seconds >= 3:
        cmd += ["-O", "1"]  # leave slow start out
    last = ""
    for _attempt in range(3):
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
        try:
            out = json.loads(res.stdout)
        except ValueError:
            out = {"error": (res.stdout[-300:] + res.stderr[-300:]).strip()}
        if "error" not in out and res.returncode == 0:
            end = out["end"]
            conn = (out.get("start", {}).get("connected") or [{}])[0]
            return {"gbps": end["sum_received"]["bits_per_second"] / 1e9,
                    "retransmits": end["sum_sent"].get("retransmits"),
                    "sender_cpu": round(end["cpu_utilization_percent"]["host_total"], 1),
                    "receiver_cpu": round(end["cpu_utilization_percent"]["remote_total"], 1),
                    "mss": out.get("start", {}).get("tcp_mss_default"),
                    "local": conn.get("local_host"), "remote": conn.get("remote_host")}
        last = str(out.get("error"))
        time.sleep(0.5)  # "the server is busy": the previous test is still closing
    raise RuntimeError(f"iperf3 {' '.join(extra)} to {server}:{port} failed: {last}")
