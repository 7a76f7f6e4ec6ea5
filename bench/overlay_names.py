#!/usr/bin/env python3
"""Overlay names benchmark: a name on another host against a name on this host, one run.

Run as root from the repository:  python bench/overlay_names.py [--quick] [--samples N]

One throwaway two-host lab (``tether.lab.lab_up``, prefix ``on<hex>``, files in a temp
dir, always taken down with ``lab_down``, also on failure or Ctrl-C). On a dual-stack
overlay ``names`` (10.237.0.0/16 + fd00:237::/64): ``far`` on h1, and ``near`` and the
asker ``asker`` on h2. Every lookup is made inside the asker, by one measuring process
started with ``tether exec asker -- python3 -c ...`` (so in the container's namespace,
through its /etc/resolv.conf: the embedded resolver at 127.0.0.11). The only packets are
those DNS queries inside the asker's namespace.

Measured, interleaved sample by sample (the order swapped every sample), after a warm-up:

* dns A      one UDP query for the A record, to the nameserver of the asker's
             resolv.conf, timed from send to the parsed answer (rcode 0, one address)
* dns AAAA   the same for AAAA
* getaddrinfo  glibc's ``getaddrinfo(NAME, AF_INET)``: what an application pays

for ``far`` (an overlay name from another host: put into h2's resolver by h2's agent) and
``near`` (a local name: put there by h2's controller). Target: far / near at most 1.2x
(medians of dns A). Then once more with etcd frozen (SIGSTOP, always SIGCONT-ed): the
same lookups while the store hangs, which must not wait on it. And a readiness check: a
container started on h1, looked up from the asker the moment ``run`` returns.

Results: bench/results/overlay-names-<date>[-quick].json and .md.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from typing import Any

from common import (check_host, git_commit, log, machine_info, machine_md, md_head, parse_args, parser,
                    quick_defaults, result_head, run_bench, summary, tree_digest, verdict, write_results)

NET = "names"
SUBNET, SUBNET6 = "10.237.0.0/16", "fd00:237::/64"  # inside the lab's hosts only
GRACE = 300.0  # --node-grace: nobody is reclaimed while etcd is frozen
TARGET = 1.2  # far / near, medians of dns A, at most
KINDS = ("dns_a", "dns_aaaa", "getaddrinfo")
LABELS = {"dns_a": "DNS A query (UDP, raw)", "dns_aaaa": "DNS AAAA query (UDP, raw)",
          "getaddrinfo": "getaddrinfo(NAME, AF_INET) (glibc)"}

# Runs inside the asker: argv[1] = JSON {"names": [...], "samples": N, "warmup": W}.
# Prints JSON {kind: {name: [seconds...]}}. Each sample asks every name once per kind, the
# order of the names swapped every sample.
MEASURE = r"""
import json, random, socket, struct, sys, time
cfg = json.loads(sys.argv[1])
server = next(l.split()[1] for l in open('/etc/resolv.conf') if l.startswith('nameserver'))
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.connect((server, 53))
sock.settimeout(2)

def query(name, qtype):
    ident = random.getrandbits(16)
    packet = struct.pack('!HHHHHH', ident, 0x0100, 1, 0, 0, 0)
    packet += b''.join(bytes([len(p)]) + p.encode() for p in name.split('.')) + b'\0' + struct.pack('!HH', qtype, 1)
    started = time.perf_counter()
    sock.send(packet)
    while True:
        reply = sock.recv(512)
        if reply[:2] == packet[:2]:
            break
    took = time.perf_counter() - started
    rcode, answers = reply[3] & 15, struct.unpack('!H', reply[6:8])[0]
    if rcode != 0 or answers != 1:
        raise SystemExit(f'{name} type {qtype}: rcode {rcode}, {answers} answers')
    return took

def gai(name):
    started = time.perf_counter()
    found = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    took = time.perf_counter() - started
    if len({i[4][0] for i in found}) != 1:
        raise SystemExit(f'{name}: {found}')
    return took

kinds = {'dns_a': lambda n: query(n, 1), 'dns_aaaa': lambda n: query(n, 28), 'getaddrinfo': gai}
out = {k: {n: [] for n in cfg['names']} for k in kinds}
for i in range(cfg['warmup'] + cfg['samples']):
    names = cfg['names'] if i % 2 == 0 else cfg['names'][::-1]
    for kind, ask in kinds.items():
        for name in names:
            took = ask(name)
            if i >= cfg['warmup']:
                out[kind][name].append(took)
print(json.dumps(out))
"""

FIRST = r"""
import socket, sys
try:
    print(socket.gethostbyname(sys.argv[1]))
except OSError as e:
    print('FAIL', e)
"""


class NamesBench:
    def __init__(self, samples: int, frozen_samples: int, readiness: int) -> None:
        self.samples, self.frozen_samples, self.readiness = samples, frozen_samples, readiness
        self.tag = secrets.token_hex(2)
        self.tmp = tempfile.mkdtemp(prefix=f"tether-onbench-{self.tag}-")
        self.info: Any = None
        self.etcd_frozen = False

    # -- plumbing -------------------------------------------------------------------
    def tether(self, i: int, *args: str, timeout: float = 300) -> str:
        host = self.info.hosts[i - 1]
        r = subprocess.run(host.tether_argv(*args), capture_output=True, text=True, env=host.cli_env(),
                           timeout=timeout, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"h{i}: tether {' '.join(args[:4])} ... failed ({r.returncode}): {r.stderr.strip()}")
        return r.stdout

    def measure(self, samples: int) -> dict[str, dict[str, list[float]]]:
        cfg = json.dumps({"names": ["far", "near"], "samples": samples, "warmup": max(20, samples // 10)})
        out: dict[str, dict[str, list[float]]] = json.loads(
            self.tether(2, "exec", "asker", "--", "python3", "-c", MEASURE, cfg))
        return out

    # -- the run --------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from tether.lab import lab_up

        started = dt.datetime.now()
        prefix = f"on{self.tag}"
        self.info = lab_up(2, GRACE, root=os.path.join(self.tmp, "run"), state_root=os.path.join(self.tmp, "state"),
                           name_prefix=prefix)
        log(f"lab of 2 hosts up (prefix {prefix})")
        self.tether(1, "network", "create", "-d", "overlay", "--ipv6", "--subnet", SUBNET, "--subnet", SUBNET6, NET)
        for i, name in ((1, "far"), (2, "near"), (2, "asker")):
            self.tether(i, "run", "-d", "--name", name, "--net", NET, "--", "sleep", "3600")
        addresses = {name: json.loads(self.tether(i, "inspect", name))[0]["networks"][NET]["address"]
                     for i, name in ((1, "far"), (2, "near"))}
        load = [" ".join(open("/proc/loadavg").read().split()[:3])]
        log(f"measuring {self.samples} samples per name and kind")
        normal = self.measure(self.samples)
        load.append(" ".join(open("/proc/loadavg").read().split()[:3]))
        log(f"etcd frozen: {self.frozen_samples} samples")
        os.kill(self.info.etcd_pid, signal.SIGSTOP)
        self.etcd_frozen = True
        try:
            time.sleep(0.5)
            frozen = self.measure(self.frozen_samples)
        finally:
            os.kill(self.info.etcd_pid, signal.SIGCONT)
            self.etcd_frozen = False
        log(f"readiness: {self.readiness} containers on h1, each looked up from h2 as `run` returns")
        ready = []
        for n in range(self.readiness):
            name = f"ready{n}"
            self.tether(1, "run", "-d", "--name", name, "--net", NET, "--", "sleep", "3600")
            got = self.tether(2, "exec", "asker", "--", "python3", "-c", FIRST, name).strip()
            want = json.loads(self.tether(1, "inspect", name))[0]["networks"][NET]["address"]
            ready.append({"name": name, "answer": got, "address": want, "ok": got == want})
            self.tether(1, "rm", "-f", name)
        finished = dt.datetime.now()
        return self.results(started, finished, normal, frozen, ready, addresses, load)

    def results(self, started: dt.datetime, finished: dt.datetime, normal: Any, frozen: Any, ready: list[Any],
                addresses: dict[str, str], load: list[str]) -> dict[str, Any]:
        table = {phase: {kind: {name: summary(data[kind][name], p99=True) for name in ("far", "near")}
                         for kind in KINDS} for phase, data in (("normal", normal), ("etcd_frozen", frozen))}
        ratios = {phase: {kind: round(by_kind[kind]["far"]["median_ms"] / by_kind[kind]["near"]["median_ms"], 3)
                          for kind in KINDS} for phase, by_kind in table.items()}
        per_sample = {kind: round(statistics.median(far / near for far, near in zip(normal[kind]["far"],
                                                                                    normal[kind]["near"])), 3)
                      for kind in KINDS}
        a = table["normal"]["dns_a"]
        targets = [verdict("overlay name from another host / local name, DNS A (medians)", ratios["normal"]["dns_a"],
                           TARGET, "ratio", f"{a['far']['median_ms']} vs {a['near']['median_ms']} ms; "
                           f"median of per-sample ratios {per_sample['dns_a']}")]
        return {
            **result_head("overlay-names", started, finished),
            "machine": machine_info(), "commit": git_commit(), "tether_tree_sha256": tree_digest(),
            "samples": self.samples, "frozen_samples": self.frozen_samples, "addresses": addresses,
            "loadavg": load, "summary": table, "ratios": ratios, "per_sample_ratio_median": per_sample,
            "readiness": ready, "targets": targets,
            "raw_us": {phase: {kind: {name: [round(x * 1e6) for x in values] for name, values in by_name.items()}
                               for kind, by_name in data.items()}
                       for phase, data in (("normal", normal), ("etcd_frozen", frozen))},
        }

    def cleanup(self) -> list[str]:
        from tether.lab import lab_down

        problems: list[str] = []
        if self.info is not None:
            if self.etcd_frozen:
                os.kill(self.info.etcd_pid, signal.SIGCONT)
            problems += lab_down(self.info.root, state_root=self.info.state_root, name_prefix=self.info.prefix)
            left = [n for n in os.listdir("/var/run/netns") if n.startswith(self.info.prefix)]
            if left:
                problems.append(f"namespaces left: {left[:5]}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        log("cleanup: " + ("; ".join(problems) if problems else "nothing left"))
        return problems


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        f"# overlay names benchmark, {res['date']}", "",
        f"{machine_md(m)}. tether {res['commit']} (tree sha256 {res['tether_tree_sha256']}). "
        f"Run {res['started']} - {res['finished']}. Load average (1/5/15 min): start {res['loadavg'][0]}; "
        f"after the samples {res['loadavg'][1]}.", "",
        f"Two-host lab; dual-stack overlay `{NET}` ({SUBNET} + {SUBNET6}). `far` ({res['addresses']['far']}) on h1, "
        f"`near` ({res['addresses']['near']}) and the asker on h2. Every lookup from inside the asker "
        "(`tether exec asker -- python3 ...`, its resolv.conf: 127.0.0.11), far and near interleaved, "
        "the order swapped every sample.", "",
    ]
    for phase, title in (("normal", f"{res['samples']} samples per name and kind"),
                         ("etcd_frozen", f"etcd frozen (SIGSTOP), {res['frozen_samples']} samples per name and kind")):
        lines += [f"## {'1. ' if phase == 'normal' else '2. '}{title}", "",
                  "Median / p99 in ms.", ""]
        lines += md_head(["near: local name (h2)", "far: overlay name on h1", "far / near (medians)"])
        for kind in KINDS:
            s = res["summary"][phase][kind]
            cells = [f"{s[n]['median_ms']:.3f} / {s[n]['p99_ms']:.3f}" for n in ("near", "far")]
            lines.append(f"| {LABELS[kind]} | {cells[0]} | {cells[1]} | {res['ratios'][phase][kind]}x |")
        lines.append("")
    ok = sum(r["ok"] for r in res["readiness"])
    lines += ["## 3. Readiness", "",
              f"{ok} of {len(res['readiness'])} containers started on h1 were answered by name in the asker on h2 "
              "by the first lookup made after `run` returned.", "", "## Targets", ""]
    for v in res["targets"]:
        lines.append(f"- **{'met' if v['met'] else 'MISSED'}**: {v['what']} = {v['value']} (target {v['target']}); "
                     f"{v['note']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--quick", action="store_true", help="fewer samples")
    p.add_argument("--samples", type=int, default=0, help="samples per name and kind (default 2000; quick 300)")
    p.add_argument("--frozen-samples", type=int, default=0, help="the same with etcd frozen (default 500; quick 100)")
    p.add_argument("--readiness", type=int, default=0, help="containers for the readiness check (default 10; quick 3)")
    args = parse_args(p)
    quick_defaults(args, samples=(2000, 300), frozen_samples=(500, 100), readiness=(10, 3))
    check_host(p, ["etcd", "nsenter", "ip"], install="apt-get install etcd-server")
    bench = NamesBench(args.samples, args.frozen_samples, args.readiness)
    res = run_bench(bench)
    name = f"overlay-names-{res['date']}" + ("-quick" if args.quick else "")
    text = markdown(res)
    print(text)
    write_results(args.results_dir, name, res, text)


if __name__ == "__main__":
    main()
