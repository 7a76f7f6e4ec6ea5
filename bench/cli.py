#!/usr/bin/env python3
"""CLI benchmark: the ``tether`` front door and ``tether-cni`` side by side with the
interpreter's own floor and the CNI reference ``bridge`` plugin.

Run as root from the repository:  python bench/cli.py [--samples 30] [--tag baseline]

Every command is a new process, as a user or a runtime starts it: the console scripts
``tether`` and ``tether-cni`` next to the interpreter running this bench (what ``pip
install`` made of ``[project.scripts]``). Samples are interleaved, one of each command
per round, the order rotating every round, so drift hits all alike; each row is the
median over its samples. Measured:

* floor               ``python -c pass`` (the same interpreter, its site and .pth files),
                      and for reference ``python -I -c pass``, ``python -S -E -c pass``
* read verbs          ``tether network ls``, ``ps``, ``inspect C``, ``network inspect N``
* help                ``tether --help``
* connect/disconnect  ``tether network connect N C`` / ``disconnect`` end to end (a
                      container created with ``--net none``: its netns exists, only lo)
* CNI                 ``bridge`` (+ ``host-local``) ADD and DEL on a fresh namespace, and
                      ``tether-cni`` ADD and DEL the same way, on a tether bridge network
* run                 ``tether run --rm --net none|host|bridge -- true`` and ``tether run -d
                      --net N -- sleep 3600`` (nsenter); ``--net none`` is the floor of a run
                      that does nothing with the network. Each ``run -d`` container is removed
                      after its sample, untimed. Beside them ``podman run --rm`` (nsenter) on
                      a CNI network as the CNI tests set Podman up (runc, cgroupfs, vfs, its
                      own root; the network's one plugin is ``tether-cni``), and on a network
                      of the reference ``bridge`` plugin, for reference; skipped without
                      podman, runc and busybox-static
* own venv            the floor, ``network ls`` and connect/disconnect once more with the
                      interpreter of a virtualenv of its own (``venv --without-pip``: only
                      the stdlib's site, no .pth files, no editable-install finder; a
                      wrapper puts the checkout on sys.path, as bench/cni.py does): what a
                      regular ``pip install`` costs, against what ``pip install -e`` costs

The daemon runs as in the other benches: ``nsenter --net=<bench host>`` into a namespace
this script makes (prefix ``tclib<hex>``), with its own state dir and socket. Commands
that make links (connect, disconnect, both plugins) run through ``nsenter --net`` into
that namespace, and ``nsenter /bin/true`` is measured for reference; the read verbs only
talk to the socket and run directly. The tree is byte-compiled first (an installed
package is; a checkout with PYTHONDONTWRITEBYTECODE is not).

After the rounds, each hot verb runs once more under ``python -X importtime``: the report
lists the imports that cost the most (where the remaining start-up time goes).

Results: bench/results/cli-<date>[-TAG].json and .md; a run without ``--tag`` shows the
``-baseline`` run of the same date beside it when there is one.
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
from pathlib import Path
from typing import Any

from common import (CNI_DIR, NETNS_DIR, REPO, await_daemon, bridge_netconf, busybox_tarball, check_host, git_commit, log,
                    machine_brief, machine_info, machine_md, md_head, median_p95, now, our_netns, parse_args, parser,
                    print_targets, result_head, run_bench, spawn_daemon, summary, tree_digest, verdict, write_results)

from tether.api.client import Client
from tether.errors import NotFound

TETHER_SUBNET = "10.221.0.0/22"
BRIDGE_SUBNET = "10.222.0.0/22"
PODMAN_TETHER_SUBNET = "10.223.0.0/24"  # the tether network behind Podman's tether-cni network
PODMAN_BRIDGE_SUBNET = "10.224.0.0/24"  # Podman's network of the reference bridge plugin
PODMAN_IMAGE = "localhost/tclibbb:latest"
PODMAN_ULIMITS = ["nofile=20000:20000", "nproc=4096:4096"]  # as the CNI tests: Podman's defaults fail here
READ_TARGET = 2.0  # a read verb / python -c pass, at most
CONNECT_TARGET = 3.0  # network connect / bridge ADD (disconnect / DEL), at most
CNI_TARGET = 1.0  # tether-cni ADD / bridge ADD (DEL / DEL), at most
RUN_PODMAN_TARGET = 1 / 3  # run --rm --net bridge / podman run --rm on a CNI network, at most
RUN_FLOOR_TARGET = 1.3  # run -d, run --net host / run --net none (a run that does nothing with the network), at most

ROWS = {
    "python_pass": "python -c pass (the floor)",
    "python_isolated": "python -I -c pass",
    "python_bare": "python -S -E -c pass (no site)",
    "network_ls": "tether network ls",
    "ps": "tether ps",
    "inspect": "tether inspect C",
    "network_inspect": "tether network inspect N",
    "help": "tether --help",
    "connect": "tether network connect N C (nsenter)",
    "disconnect": "tether network disconnect N C (nsenter)",
    "bridge_add": "CNI bridge+host-local ADD (nsenter)",
    "bridge_del": "CNI bridge+host-local DEL (nsenter)",
    "tether_cni_add": "tether-cni ADD (nsenter)",
    "tether_cni_del": "tether-cni DEL (nsenter)",
    "nsenter_true": "nsenter --net=HOST /bin/true",
    "run_none": "tether run --rm --net none -- true (nsenter; run floor)",
    "run_host": "tether run --rm --net host -- true (nsenter)",
    "run_bridge": "tether run --rm --net bridge -- true (nsenter)",
    "run_d": "tether run -d --net N -- sleep 3600 (nsenter)",
    "podman_run": "podman run --rm, CNI network of tether-cni (nsenter)",
    "podman_run_bridge": "podman run --rm, CNI network of bridge+host-local (nsenter)",
    "python_pass_own": "own venv: python -c pass",
    "network_ls_own": "own venv: tether network ls",
    "connect_own": "own venv: tether network connect (nsenter)",
    "disconnect_own": "own venv: tether network disconnect (nsenter)",
}
HOT_VERBS = ("network_ls", "ps", "inspect", "network_inspect")


def sh(*cmd: str) -> None:
    subprocess.run(list(cmd), check=True, capture_output=True, timeout=60)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.prefix = f"tclib{secrets.token_hex(3)}"
        self.host = f"{self.prefix}host"
        self.tmp = tempfile.mkdtemp(prefix=f"{self.prefix}-")
        self.socket = os.path.join(self.tmp, "tether.sock")
        self.state_dir = os.path.join(self.tmp, "state")
        self.daemon: subprocess.Popen[bytes] | None = None
        self.samples: dict[str, list[float]] = {k: [] for k in ROWS}
        self.failures: list[str] = []
        self.counter = 0
        bindir = Path(sys.executable).parent
        self.tether = str(bindir / "tether")
        self.tether_cni = str(bindir / "tether-cni")
        self.own_python = os.path.join(self.tmp, "venv", "bin", "python")
        self.tether_own = os.path.join(self.tmp, "tether-own")
        self.client = Client(self.socket)
        self.podman_base = os.path.join(self.tmp, "podman")
        self.has_podman = all(shutil.which(t) for t in ("podman", "runc")) and os.path.exists("/bin/busybox")

    def enter(self) -> list[str]:
        return ["nsenter", f"--net={NETNS_DIR}/{self.host}", "--"]

    def verb(self, *args: str, own: bool = False) -> list[str]:
        return [self.tether_own if own else self.tether, "--socket", self.socket, "--state-dir", self.state_dir, *args]

    def own_venv(self) -> None:
        """A virtualenv of its own and a ``tether`` wrapper for it (the fast path needs no
        third-party package; anything else would fail here for want of Typer)."""
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", os.path.join(self.tmp, "venv")], check=True)
        with open(self.tether_own, "w") as f:
            f.write(f"#!{self.own_python}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
                    "from tether.cli import main\nsys.exit(main())\n")
        os.chmod(self.tether_own, 0o755)

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "tether")], check=True)
        self.own_venv()
        sh("ip", "netns", "add", self.host)
        sh("ip", "-n", self.host, "link", "set", "lo", "up")
        os.makedirs(self.state_dir)
        self.daemon = spawn_daemon(self.enter(), self.state_dir, self.socket, f"{self.prefix}t-", self.tmp)
        await_daemon(self.daemon, self.client.alive, self.tmp)
        self.client.post("/networks", {"name": "bn", "subnet": TETHER_SUBNET})
        self.client.post("/containers", {"name": "c1", "net": "bn", "cmd": ["sleep", "3600"], "detach": True})
        self.client.post("/containers", {"name": "cc", "net": "none", "cmd": ["sleep", "3600"], "detach": False})
        self.tether_conf = json.dumps({"cniVersion": "1.0.0", "name": "bn", "type": "tether", "socket": self.socket})
        self.bridge_conf = bridge_netconf(self.prefix, BRIDGE_SUBNET, self.tmp)
        if self.has_podman:
            self.setup_podman()
        else:
            log("no podman, runc or /bin/busybox: the podman rows and the run target against Podman are skipped")

    def setup_podman(self) -> None:
        """Podman as tests/e2e/test_cni.py ``build_podman`` sets it up: runc, cgroupfs, its own
        root, runroot, tmpdir and CNI config dir, a busybox image imported. Two networks:
        ``pt`` (one plugin, ``tether-cni`` on the tether network ``pt``, the tests' setup) and
        ``pb`` (the reference ``bridge`` + ``host-local``)."""
        base = Path(self.podman_base)
        plugins, confdir = base / "plugins", base / "net.d"
        for d in (plugins, confdir, base / "tmp"):
            d.mkdir(parents=True)
        plugin = plugins / "tether"  # tether-cni, named as the config's type
        plugin.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
                          "from tether.cni import main\nsys.exit(main())\n")
        plugin.chmod(0o755)
        (base / "containers.conf").write_text(
            '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
            f'[network]\nnetwork_backend = "cni"\ncni_plugin_dirs = ["{plugins}", "{CNI_DIR}"]\n'
            f'network_config_dir = "{confdir}"\n'
            f"[containers]\ndefault_ulimits = {json.dumps(PODMAN_ULIMITS)}\n")
        self.client.post("/networks", {"name": "pt", "subnet": PODMAN_TETHER_SUBNET})
        (confdir / "pt.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "pt",
            "plugins": [{"type": "tether", "network": "pt", "socket": self.socket,
                         "capabilities": {"portMappings": True, "ips": True, "mac": True, "aliases": True}}]}))
        (confdir / "pb.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "pb",
            "plugins": [{"type": "bridge", "bridge": f"{self.prefix}pb", "isGateway": True, "ipMasq": False,
                         "ipam": {"type": "host-local", "subnet": PODMAN_BRIDGE_SUBNET,
                                  "dataDir": str(base / "host-local")}}]}))
        subprocess.run(self.podman("import", busybox_tarball(str(base), ("true", "sh")), PODMAN_IMAGE),
                       env=self.podman_env(), check=True, capture_output=True, timeout=120)

    def podman(self, *args: str) -> list[str]:
        base = self.podman_base
        return [*self.enter(), "podman", "--root", f"{base}/root", "--runroot", f"{base}/runroot",
                "--tmpdir", f"{base}/tmp", "--storage-driver", "vfs", *args]

    def podman_env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": os.path.join(self.podman_base, "containers.conf")}

    # ---------------------------------------------------------------- samples
    def timed(self, key: str, cmd: list[str], record: bool, env: dict[str, str] | None = None,
              stdin: bytes = b"") -> None:
        start = now()
        proc = subprocess.run(cmd, input=stdin, env=env, capture_output=True, timeout=60, check=False)
        elapsed = now() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{key}: exit {proc.returncode}: {(proc.stdout + proc.stderr).decode()[-300:].strip()}")
        if record:
            self.samples[key].append(elapsed)

    def sample_connect(self, record: bool, own: bool = False) -> None:
        suffix = "_own" if own else ""
        self.timed(f"connect{suffix}", [*self.enter(), *self.verb("network", "connect", "bn", "cc", own=own)], record)
        host_ifname = self.client.get("/containers/cc")["networks"]["bn"]["host_ifname"]
        self.timed(f"disconnect{suffix}", [*self.enter(), *self.verb("network", "disconnect", "bn", "cc", own=own)], record)
        self.wait_link_gone(host_ifname)

    def wait_link_gone(self, ifname: str) -> None:
        deadline = time.monotonic() + 10
        while subprocess.run(["ip", "-n", self.host, "link", "show", ifname], capture_output=True).returncode == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ifname} still exists 10 s after disconnect")
            time.sleep(0.005)

    def sample_plugin(self, key: str, binary: str, conf: str, record: bool) -> None:
        """ADD then DEL on a fresh namespace (made and removed untimed)."""
        self.counter += 1
        name = f"{self.prefix}s{self.counter}"
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")  # a runtime does this before ADD
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_CONTAINERID": f"{self.prefix}-{self.counter}",
               "CNI_NETNS": f"{NETNS_DIR}/{name}", "CNI_IFNAME": "eth0", "CNI_PATH": CNI_DIR}
        try:
            for command in ("ADD", "DEL"):
                self.timed(f"{key}_{command.lower()}", [*self.enter(), binary], record,
                           {**env, "CNI_COMMAND": command}, conf.encode())
        finally:
            sh("ip", "netns", "del", name)

    def sample_run_d(self, record: bool) -> None:
        """``run -d`` timed; the container removed after it, untimed, until its veth is gone."""
        self.counter += 1
        name = f"d{self.counter}"
        try:
            self.timed("run_d", [*self.enter(), *self.verb("run", "-d", "--name", name, "--net", "bn", "--",
                                                          "sleep", "3600")], record)
        finally:
            try:
                info = self.client.get(f"/containers/{name}")
            except NotFound:  # the run failed before the container existed
                info = None
            if info is not None:
                self.client.delete(f"/containers/{name}?force=1")
                ifname = (info.get("networks", {}).get("bn") or {}).get("host_ifname")
                if ifname:
                    self.wait_link_gone(ifname)

    def round(self, i: int, record: bool) -> None:
        py = sys.executable
        steps: list[tuple[str, Any]] = [
            ("python_pass", lambda: self.timed("python_pass", [py, "-c", "pass"], record)),
            ("python_isolated", lambda: self.timed("python_isolated", [py, "-I", "-c", "pass"], record)),
            ("python_bare", lambda: self.timed("python_bare", [py, "-S", "-E", "-c", "pass"], record)),
            ("network_ls", lambda: self.timed("network_ls", self.verb("network", "ls"), record)),
            ("ps", lambda: self.timed("ps", self.verb("ps"), record)),
            ("inspect", lambda: self.timed("inspect", self.verb("inspect", "c1"), record)),
            ("network_inspect", lambda: self.timed("network_inspect", self.verb("network", "inspect", "bn"), record)),
            ("help", lambda: self.timed("help", [self.tether, "--help"], record)),
            ("connect", lambda: self.sample_connect(record)),
            ("bridge", lambda: self.sample_plugin("bridge", f"{CNI_DIR}/bridge", self.bridge_conf, record)),
            ("tether_cni", lambda: self.sample_plugin("tether_cni", self.tether_cni, self.tether_conf, record)),
            ("nsenter_true", lambda: self.timed("nsenter_true", [*self.enter(), "/bin/true"], record)),
            ("python_pass_own", lambda: self.timed("python_pass_own", [self.own_python, "-c", "pass"], record)),
            ("network_ls_own", lambda: self.timed("network_ls_own", self.verb("network", "ls", own=True), record)),
            ("connect_own", lambda: self.sample_connect(record, own=True)),
            *[(f"run_{mode}", lambda mode=mode: self.timed(f"run_{mode}", [*self.enter(), *self.verb(
                "run", "--rm", "--net", mode, "--", "true")], record)) for mode in ("none", "host", "bridge")],
            ("run_d", lambda: self.sample_run_d(record)),
        ]
        if self.has_podman:
            steps += [(key, lambda key=key, net=net: self.timed(key, self.podman(
                "run", "--rm", "--network", net, PODMAN_IMAGE, "true"), record, self.podman_env()))
                for key, net in (("podman_run", "pt"), ("podman_run_bridge", "pb"))]
        shift = i % len(steps)
        for key, step in steps[shift:] + steps[:shift]:
            try:
                step()
            except RuntimeError as exc:
                self.failures.append(str(exc))
                log(f"failed sample ({key}): {exc}")

    def importtimes(self) -> dict[str, list[dict[str, Any]]]:
        """Each hot verb once under ``-X importtime``: the ten imports with the most self time."""
        verbs = {"python_pass": [sys.executable, "-X", "importtime", "-c", "pass"]}
        for key, args in (("network_ls", ("network", "ls")), ("ps", ("ps",)), ("inspect", ("inspect", "c1")),
                          ("network_inspect", ("network", "inspect", "bn")), ("help", ("--help",))):
            verbs[key] = [sys.executable, "-X", "importtime", *self.verb(*args)]
        out: dict[str, list[dict[str, Any]]] = {}
        for key, cmd in verbs.items():
            err = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stderr
            rows = []
            for line in err.splitlines():
                if line.startswith("import time:") and "|" in line and "self" not in line:
                    own, cumulative, name = line[len("import time:"):].split("|")
                    rows.append({"module": name.strip(), "self_us": int(own), "cumulative_us": int(cumulative),
                                 "top_level": not name.startswith("  ")})
            total = sum(r["cumulative_us"] for r in rows if r["top_level"])
            out[key] = [{"module": "(all imports)", "self_us": total, "cumulative_us": total, "top_level": True},
                        *sorted(rows, key=lambda r: -r["self_us"])[:10]]
        return out

    def run(self) -> dict[str, Any]:
        started = dt.datetime.now()
        self.setup()
        log(f"bench host {self.host}, tether {self.tether}; {self.args.warmup} warm-up rounds, {self.args.samples} samples")
        for i in range(self.args.warmup):  # the bridge plugin makes its bridge on the first ADD; caches warm
            self.round(i, record=False)
        for i in range(self.args.samples):
            self.round(i, record=True)
            if (i + 1) % 10 == 0:
                log(f"{i + 1}/{self.args.samples} rounds")
        imports = self.importtimes()
        return self.results(started, dt.datetime.now(), imports)

    # ---------------------------------------------------------------- results
    def results(self, started: dt.datetime, finished: dt.datetime, imports: dict[str, Any]) -> dict[str, Any]:
        rows = {key: {"label": ROWS[key], **summary(values), "raw_samples_ms": [round(v * 1000, 3) for v in values]}
                for key, values in self.samples.items()}

        def med(key: str) -> float:
            values = self.samples[key]
            return statistics.median(values) * 1000 if values else float("nan")

        floor = med("python_pass")
        targets = [verdict(f"{ROWS[k]} / python -c pass", med(k) / floor, READ_TARGET, "x") for k in HOT_VERBS]
        targets += [
            verdict("network connect / bridge ADD", med("connect") / med("bridge_add"), CONNECT_TARGET, "x"),
            verdict("network disconnect / bridge DEL", med("disconnect") / med("bridge_del"), CONNECT_TARGET, "x"),
            verdict("tether-cni ADD / bridge ADD", med("tether_cni_add") / med("bridge_add"), CNI_TARGET, "x"),
            verdict("tether-cni DEL / bridge DEL", med("tether_cni_del") / med("bridge_del"), CNI_TARGET, "x"),
        ]
        targets += self.run_targets(med)
        for v in targets:
            if v["met"] is None:
                continue
            limit = float(v["target"].split()[1])
            if not v["met"]:
                v["note"] = f"missed by {v['value'] - limit:.2f}x ({(v['value'] / limit - 1) * 100:.0f}%)"
        # where connect's time goes: the process (nsenter, the interpreter with the shared
        # venv's site, of which the .pth files and the editable finder are the part an own
        # venv does not pay), and the rest: tether's imports, the request, the daemon's attach
        breakdown = {"connect_ms": med("connect"), "nsenter_ms": med("nsenter_true"), "interpreter_ms": floor,
                     "of_which_pth_and_editable_finder_ms": floor - med("python_pass_own"),
                     "imports_request_and_attach_ms": med("connect") - med("nsenter_true") - floor,
                     "connect_own_venv_over_bridge_add": med("connect_own") / med("bridge_add"),
                     "bare_interpreter_and_nsenter_over_bridge_add": (med("python_bare") + med("nsenter_true")) / med("bridge_add")}
        return {
            **result_head("cli", started, finished),
            "connect_breakdown": {k: round(v, 2) for k, v in breakdown.items()},
            "tag": self.args.tag,
            "machine": machine_info(),
            "commit": git_commit(),
            "tether_tree_sha256": tree_digest(),
            "config": {"samples": self.args.samples, "warmup": self.args.warmup, "python": sys.executable,
                       "tether": self.tether, "tether_cni": self.tether_cni},
            "rows": rows,
            "targets": targets,
            "importtime_top": imports,
            "failures": self.failures,
        }

    def run_targets(self, med: Any) -> list[dict[str, Any]]:
        """``run --net bridge`` against Podman's ``run --rm`` (NOT RUN without Podman); ``run -d``
        and ``run --net host`` against ``run --net none``, the run that does nothing with the network."""
        floor = med("run_none")
        out = [verdict(f"{ROWS['run_d']} / run --net none", med("run_d") / floor, RUN_FLOOR_TARGET, "x"),
               verdict(f"{ROWS['run_host']} / run --net none", med("run_host") / floor, RUN_FLOOR_TARGET, "x")]
        what = f"{ROWS['run_bridge']} / {ROWS['podman_run']}"
        if self.samples["podman_run"]:
            out.append(verdict(what, med("run_bridge") / med("podman_run"), round(RUN_PODMAN_TARGET, 3), "x"))
        else:
            out.append({"what": what, "value": None, "target": f"<= {round(RUN_PODMAN_TARGET, 3)} x", "met": None,
                        "note": "no podman sample (podman, runc or busybox-static missing)"})
        return out

    # ---------------------------------------------------------------- cleanup
    def cleanup(self) -> list[str]:
        problems: list[str] = []
        if self.has_podman and os.path.exists(os.path.join(self.podman_base, "containers.conf")):
            # Podman's own teardown (CNI DEL, its netns) while the daemon still answers
            rm = subprocess.run(self.podman("rm", "-af", "-t", "0"), env=self.podman_env(), capture_output=True,
                                text=True, timeout=120, check=False)
            if rm.returncode != 0:
                problems.append(f"podman rm -af: {rm.stderr.strip()[-200:]}")
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait(timeout=20)
        for name in our_netns(self.prefix):
            for pid in subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for name in [n for n in our_netns(self.prefix) if n != self.host] + [self.host]:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)  # the host last
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                  if line.split()[1].startswith(self.tmp + "/")]
        for mount in sorted(mounts, reverse=True):  # Podman's shm and overlay mounts, if any are left
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)
        if our_netns(self.prefix):
            problems.append(f"namespaces left: {our_netns(self.prefix)[:5]}")
        log("cleanup: done" + (f"; PROBLEMS: {problems}" if problems else ""))
        return problems


# ---------------------------------------------------------------------------- output
def ratio_to(res: dict[str, Any], key: str) -> str:
    """A row's median against its reference: the floor, or the bridge plugin's ADD / DEL."""
    rows = res["rows"]
    ref = {"connect": "bridge_add", "tether_cni_add": "bridge_add", "disconnect": "bridge_del",
           "tether_cni_del": "bridge_del", "nsenter_true": "", "bridge_add": "", "bridge_del": "",
           "connect_own": "bridge_add", "disconnect_own": "bridge_del", "python_pass_own": "python_pass",
           "network_ls_own": "python_pass_own", "run_none": "python_pass", "run_host": "run_none",
           "run_d": "run_none", "run_bridge": "podman_run", "podman_run": "", "podman_run_bridge": "podman_run"}.get(
               key, "python_pass")
    if not ref or key not in rows or ref not in rows or not rows[key].get("n") or not rows[ref].get("n"):
        return ""
    name = {"python_pass": "floor", "python_pass_own": "own floor", "run_none": "run --net none",
            "podman_run": "podman run"}.get(ref, ref.split("_")[-1].upper())
    return f"{rows[key]['median_ms'] / rows[ref]['median_ms']:.2f}x {name}"


def markdown(res: dict[str, Any], before: dict[str, Any] | None) -> str:
    m = res["machine"]
    cols = ["median / p95 ms", "ratio"] + (["before: median ms", "before: ratio"] if before else [])
    lines = [
        f"# CLI start-up: the front door side by side ({res['date']}{', ' + res['tag'] if res['tag'] else ''})",
        "",
        f"{machine_md(m)}, CNI plugins {m['cni_plugins']}.",
        f"Commit {res['commit']}, tether tree {res['tether_tree_sha256']}; {res['config']['samples']} interleaved "
        f"rounds after {res['config']['warmup']} warm-up; interpreter {res['config']['python']}.",
        "",
        *md_head(cols, "command"),
    ]
    for key, row in res["rows"].items():
        cells = [median_p95(row), ratio_to(res, key)]
        if before:
            old = before["rows"].get(key, {})
            cells += [f"{old['median_ms']:.2f}" if old.get("n") else "-", ratio_to(before, key) if old.get("n") else "-"]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    lines += ["", "## Targets", ""]
    for v in res["targets"]:
        mark = "NOT RUN" if v["met"] is None else ("met" if v["met"] else "MISSED")
        lines.append(f"- {v['what']}: {v['value']}x (target {v['target']}): {mark}" + (f", {v['note']}" if v["note"] else ""))
    if "connect_breakdown" in res:
        lines += ["", "## Where connect's time goes (ms, from the medians)", "",
                  ", ".join(f"{k} {v}" for k, v in res["connect_breakdown"].items())]
    lines += ["", "## Where the start-up goes: `-X importtime`, top self times (µs)", ""]
    for verb, rows in res["importtime_top"].items():
        lines.append(f"- {verb}: " + ", ".join(f"{r['module']} {r['self_us']}" for r in rows))
    if res["failures"]:
        lines += ["", f"Failed samples: {len(res['failures'])}", *[f"- {f}" for f in res["failures"][:10]]]
    return "\n".join(lines) + "\n"


def print_summary(res: dict[str, Any]) -> None:
    print(f"\nCLI start-up {machine_brief(res['machine'])}, medians of {res['config']['samples']} rounds")
    for key, row in res["rows"].items():
        if row.get("n"):
            print(f"  {row['label']:<44} {row['median_ms']:8.2f} ms  {ratio_to(res, key)}")
    print_targets(res["targets"], 6)


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--samples", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--tag", default="", help="a suffix for the result files, e.g. baseline")
    args = parse_args(p)
    check_host(p, ("nsenter", "ip"), ("bridge", "host-local"))
    res = run_bench(Bench(args))
    name = f"cli-{res['date']}" + (f"-{args.tag}" if args.tag else "")
    before_path = Path(args.results_dir, f"cli-{res['date']}-baseline.json")
    before = json.loads(before_path.read_text()) if not args.tag and before_path.exists() else None
    if before:
        res["baseline"] = {"file": before_path.name, "medians_ms": {k: r.get("median_ms") for k, r in before["rows"].items()},
                           "targets": before["targets"]}
    print_summary(res)
    write_results(args.results_dir, name, res, markdown(res, before))
    return 0 if all(v["met"] for v in res["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
