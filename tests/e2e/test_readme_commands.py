"""Every command of the README's walk-throughs runs as written and exits 0.

The shell blocks under "Using it", "Bridge networks and the outside world", "Dual stack
(IPv6)", "Overlay networks across hosts", "macvlan networks" and "macvlan across hosts, in
the lab" are read from README.md itself, so an edit there is tested here.
Each line runs as ``bash -e -o pipefail -c LINE`` (so in ``a ; b`` a failing ``a`` counts),
in the order of the README, one test per line; a block's lines share one setup:

- the single-host blocks run inside a fresh test host (``conftest._new_host``: its own
  network namespace and daemon), with ``TETHER_SOCKET``, ``TETHER_STATE_DIR`` and
  ``TETHER_NETNS_PREFIX`` pointing at that daemon and ``TETHER_NO_AUTOSTART`` set (a
  failure must not start a daemon elsewhere); ``tether`` on the PATH is this checkout's.
- the macvlan block's host also has the LAN its ``-o parent=eth0`` names: a veth ``eth0``
  whose other end is in a namespace of the test's holding the LAN's router, 192.0.2.1/24.
- the lab blocks (overlay, macvlan) run from this machine's own namespace, as a user would,
  each with its own lab's files (``TETHER_LAB_ROOT``, ``TETHER_LAB_STATE_ROOT``) in a
  temporary directory.

What isolation requires, and nothing else, is rewritten (``isolate``):

1. ``ip netns exec NAME`` becomes ``ip netns exec PREFIXNAME``: namespace names are
   machine-wide, so the test's daemon (``--netns-prefix``) and lab (``--prefix``) give
   theirs a unique prefix, and the README's ``web`` or ``h3`` is found under it.
2. ``tether lab up ...`` gets the hidden ``--prefix PREFIX`` for the same reason (a real
   ``h1`` or a user's lab is never touched).

The README's subnets stay as they are: each test host is its own network namespace, so its
routes, bridges and nftables table meet nothing else. Between lines a person takes a
moment; the one place that matters is a server started with ``run -d ... http.server
PORT``, which the next line fetches from: the test waits (up to 15 s) until it listens.

A line that is expected to fail today (a feature another change is adding) goes in
``KNOWN_FAILING`` with the reason; it is an xfail that must fail (strict), so it is
noticed when it starts to work.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import Host, _new_host

REPO = Path(__file__).resolve().parents[2]
BLOCKS = {
    "using": "## Using it",
    "bridge": "### Bridge networks and the outside world",
    "dual": "### Dual stack (IPv6)",
    "overlay": "### Overlay networks across hosts",
    "macvlan": "### macvlan networks",
    "macvlan-lab": "#### macvlan across hosts, in the lab",
}
SINGLE_HOST = ("using", "bridge", "dual", "macvlan")
LAN_ROUTER = "192.0.2.1/24"  # the macvlan block's LAN: its --gateway, behind the host's eth0

# README line (exactly as written) -> why it cannot pass yet. Keep it empty when all pass.
KNOWN_FAILING: dict[str, str] = {}


def readme_block(heading: str) -> list[str]:
    """The lines of the first ```sh block after ``heading`` in README.md (blank ones dropped)."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = lines.index(heading)
    opening = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == "```sh")
    closing = next(i for i in range(opening + 1, len(lines)) if lines[i].strip() == "```")
    return [line for line in lines[opening + 1 : closing] if line.strip()]


def isolate(line: str, prefix: str) -> str:
    """The README line with the two rewrites the module docstring lists."""
    line = re.sub(r"\bip netns exec (\S+)", lambda m: f"ip netns exec {prefix}{m.group(1)}", line)
    return re.sub(r"\btether lab up((?: --\S+ \S+)*)", lambda m: f"tether lab up{m.group(1)} --prefix {prefix}", line)


def _cases() -> list[Any]:
    cases = []
    for block, heading in BLOCKS.items():
        for number, line in enumerate(readme_block(heading), 1):
            marks = []
            if line in KNOWN_FAILING:
                marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_FAILING[line]))
            cases.append(pytest.param(block, line, id=f"{block}-{number}", marks=marks))
    return cases


@dataclass
class Place:
    """Where a block's lines run: the command prefix (enter a host, or nothing), the
    environment, and the namespace prefix of what they make."""

    enter: list[str]
    env: dict[str, str]
    prefix: str


def _tether_on_path(base: str) -> str:
    """A directory with a ``tether`` that is this checkout's CLI under this interpreter."""
    bindir = os.path.join(base, "bin")
    os.makedirs(bindir, exist_ok=True)
    script = os.path.join(bindir, "tether")
    with open(script, "w") as f:
        f.write(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m tether.cli \"$@\"\n")
    os.chmod(script, 0o755)
    return bindir


def _base_env(bindir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env["PATH"] = f"{bindir}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


@pytest.fixture(scope="module")
def places() -> Iterator[dict[str, Place]]:
    """One place per block, made when its first line runs, removed at the end of the module."""
    base = tempfile.mkdtemp(prefix="tether-readme-")
    bindir = _tether_on_path(base)
    cleanups: list[Any] = []

    class Places(dict):  # type: ignore[type-arg]
        def __missing__(self, block: str) -> Place:
            if block in SINGLE_HOST:
                self[block] = _single_host(bindir, cleanups, lan=block == "macvlan")
            else:
                self[block] = _lab(base, bindir, cleanups)
            return self[block]

    try:
        yield Places()
    finally:
        for cleanup in reversed(cleanups):
            cleanup()
        shutil.rmtree(base, ignore_errors=True)


def _single_host(bindir: str, cleanups: list[Any], lan: bool = False) -> Place:
    host: Host = _new_host()
    cleanups.append(host.cleanup)
    if lan:  # eth0, the macvlan parent, on a LAN whose router is a namespace of ours
        router = host.prefix + "lan"
        host.extra_netns.append(router)
        for cmd in (["ip", "netns", "add", router],
                    ["ip", "link", "add", "eth0", "netns", host.name, "type", "veth", "peer", "name", "eth0",
                     "netns", router],
                    ["ip", "-n", router, "addr", "add", LAN_ROUTER, "dev", "eth0"],
                    ["ip", "-n", router, "link", "set", "eth0", "up"],
                    ["ip", "-n", host.name, "link", "set", "eth0", "up"]):
            subprocess.run(cmd, check=True, capture_output=True)
    host.start_daemon()
    env = _base_env(bindir)
    env.update(TETHER_SOCKET=host.socket, TETHER_STATE_DIR=host.state_dir, TETHER_NETNS_PREFIX=host.prefix,
               TETHER_NO_AUTOSTART="1")
    return Place(host.enter(), env, host.prefix)


def _lab(base: str, bindir: str, cleanups: list[Any]) -> Place:
    if shutil.which("etcd") is None:
        pytest.skip("the overlay walk-through needs etcd (apt-get install etcd-server)")
    from tether.lab import lab_down

    prefix = "tt" + uuid.uuid4().hex[:6]
    root, state_root = os.path.join(base, f"lab-run-{prefix}"), os.path.join(base, f"lab-state-{prefix}")
    cleanups.append(lambda: lab_down(root, state_root=state_root, name_prefix=prefix))
    env = _base_env(bindir)
    env.update(TETHER_LAB_ROOT=root, TETHER_LAB_STATE_ROOT=state_root)
    return Place([], env, prefix)


def _wait_for_server(place: Place, line: str) -> None:
    """After ``run -d --name N ... http.server [--bind ADDR] PORT``: wait until N listens on PORT."""
    words = shlex.split(line, comments=True)
    if "-d" not in words or "http.server" not in words or "--name" not in words:
        return
    name = words[words.index("--name") + 1]
    port = next(w for w in words[words.index("http.server") + 1 :] if w.isdigit())  # after any --bind ADDR
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        listening = subprocess.run(
            ["ip", "netns", "exec", place.prefix + name, "ss", "-Hltn", f"sport = :{port}"],
            capture_output=True, text=True, check=False,
        ).stdout
        if listening.strip():
            return
        time.sleep(0.1)


def test_blocks_are_found() -> None:
    for block, heading in BLOCKS.items():
        lines = readme_block(heading)
        assert lines and all("tether" in line or line.startswith("ip ") for line in lines), (block, lines)
    stale = set(KNOWN_FAILING) - {line for heading in BLOCKS.values() for line in readme_block(heading)}
    assert not stale, f"KNOWN_FAILING names lines the README no longer has: {stale}"


def test_isolate_rewrites_only_namespace_names() -> None:
    assert isolate("ip netns list ; ip netns exec web ip addr   # by name", "p-") == (
        "ip netns list ; ip netns exec p-web ip addr   # by name"
    )
    assert isolate("tether lab up --hosts 3    # three", "p") == "tether lab up --hosts 3 --prefix p    # three"
    line = "tether run --rm --net appnet -- python3 -c \"print(1)\""
    assert isolate(line, "p-") == line


@pytest.mark.parametrize("block,line", _cases())
def test_readme_line_runs(places: dict[str, Place], block: str, line: str) -> None:
    place = places[block]
    command = isolate(line, place.prefix)
    r = subprocess.run(
        [*place.enter, "bash", "-e", "-o", "pipefail", "-c", command],
        capture_output=True, text=True, env=place.env, timeout=180, cwd=str(REPO), stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, f"{command}\nexit {r.returncode}\nstdout: {r.stdout[-1500:]}\nstderr: {r.stderr[-1500:]}"
    assert "Traceback" not in r.stderr, r.stderr
    _wait_for_server(place, line)
