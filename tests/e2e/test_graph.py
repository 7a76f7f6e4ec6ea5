"""``tether graph`` end to end: a real daemon (and a two-host lab for an overlay), the
picture rendered by Graphviz's ``dot``, the SVG parsed back and searched for every object
the daemon knows: hosts, networks, subnets, containers, addresses, ports."""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import sys
import tempfile
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Cni, Host, netconf

from tether.lab import LabInfo, lab_down, lab_up

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root"),
    pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed (make deps)"),
]


def svg_texts(path: str | None = None, data: str | None = None) -> str:
    """Every piece of text drawn in an SVG (node and edge labels, cluster titles), one a line
    (parsed: Graphviz writes a ``-`` as ``&#45;``)."""
    root = ET.parse(path).getroot() if path is not None else ET.fromstring(data.encode() if data else b"")
    return "\n".join("".join(el.itertext()) for el in root.iter() if el.tag.endswith("}text"))


def one_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def build_one_host(host: Host, cni: Cni) -> dict[str, Any]:
    """Every kind of object one host can hold; returns the names and addresses to look for."""
    host.tether("network", "create", "--subnet", "10.231.0.0/24", "front")
    host.tether("network", "create", "--ipv6", "--subnet", "10.232.0.0/24", "--subnet", "fd00:232::/64", "dual")
    host.tether("run", "-d", "--name", "web", "--net", "front", "-p", "18080:80", "--", "sleep", "600")
    host.tether("network", "connect", "dual", "web")
    host.tether("run", "-d", "--name", "db", "--net", "dual", "--", "sleep", "600")
    host.tether("run", "-d", "--name", "side", "--net", "container:web", "--", "sleep", "600")
    host.tether("run", "-d", "--name", "hostie", "--net", "host", "--", "sleep", "600")
    host.tether("run", "-d", "--name", "lonely", "--net", "none", "--", "sleep", "600")
    ports = [{"hostPort": 18081, "containerPort": 8000, "protocol": "tcp"}]
    cni.add(netconf("front", runtimeConfig={"portMappings": ports}), "graphpod", cni.netns())
    web, db = host.inspect("web")["networks"], host.inspect("db")["networks"]
    cni_address = host.inspect("cni-graphpod")["networks"]["front"]["address"]
    return {
        "names": ["web", "db", "side", "hostie", "lonely", "cni-graphpod", "front", "dual", os.uname().nodename],
        "addresses": [f"{web['front']['address']}/24", f"{web['dual']['address']}/24", f"{web['dual']['address6']}/64",
                      f"{db['dual']['address']}/24", f"{db['dual']['address6']}/64", f"{cni_address}/24"],
        "facts": ["10.231.0.0/24", "fd00:232::/64", "gw 10.231.0.1", "0.0.0.0:18080->80/tcp",
                  "0.0.0.0:18081->8000/tcp", "shares netns", "host network", "net none", "cni sandbox"],
    }


def test_one_host_svg_text_dot_png(host: Host, cni: Cni, tmp_path: Any) -> None:
    want = build_one_host(host, cni)
    svg = str(tmp_path / "topology.svg")
    host.tether("graph", "--format", "svg", "-o", svg)
    drawn = svg_texts(svg)
    for needle in want["names"] + want["addresses"] + want["facts"]:
        assert needle in drawn, (needle, drawn)

    # the extension picks the format; svg and png go to a pipe when asked
    png = str(tmp_path / "topology.png")
    host.tether("graph", "-o", png)
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    piped = host.tether("graph", "--format", "svg").stdout
    assert "cni-graphpod" in svg_texts(data=piped)

    dot = host.tether("graph", "--format", "dot").stdout
    assert dot.startswith("digraph tether {")
    for needle in want["names"] + want["addresses"]:
        assert needle in dot, needle

    text = host.tether("graph", "--format", "text").stdout
    assert host.tether("graph").stdout == text  # text is the default
    for needle in want["names"] + want["addresses"] + ["port 0.0.0.0:18080->80/tcp", "side  -> web",
                                                       "hostie  net host", "lonely  net none"]:
        assert needle in text, (needle, text)
    assert max(len(line) for line in text.splitlines()) > 80  # piped: never wrapped


def test_stopped_containers_with_all(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.233.0.0/24", "quiet")
    host.tether("run", "-d", "--name", "napper", "--net", "quiet", "--", "sleep", "600")
    host.tether("stop", "-t", "0", "napper")
    assert "napper" not in host.tether("graph", "--format", "text").stdout
    shown = host.tether("graph", "--all", "--format", "text").stdout
    assert "napper  exited" in shown, shown


def test_errors_are_one_line(host: Host, tmp_path: Any) -> None:
    bad = host.tether("graph", "--format", "jpeg", check=False)  # a usage error: exit 2, and where the help is
    assert bad.returncode == 2 and "jpeg" in bad.stderr and "svg, png, dot or text" in bad.stderr, bad.stderr
    assert bad.stderr.splitlines()[1:] == ["See 'tether graph --help'."], bad.stderr
    one_error(host.tether("graph", "-o", str(tmp_path / "no" / "such" / "dir.svg"), check=False), "cannot write")
    # without Graphviz: the package to install, in one line (dot and text still work)
    bare = tmp_path / "bin"
    bare.mkdir()
    os.symlink(shutil.which("nsenter") or "/usr/bin/nsenter", bare / "nsenter")
    env = {"PATH": str(bare)}
    one_error(host.tether("graph", "--format", "svg", "-o", str(tmp_path / "x.svg"), check=False, env=env),
              "graphviz")
    assert host.tether("graph", "--format", "dot", env=env).stdout.startswith("digraph")
    # a picture never goes onto a terminal
    leader, follower = pty.openpty()
    try:
        r = subprocess.run([*host.enter(), sys.executable, "-m", "tether.cli", "--socket", host.socket, "graph",
                            "--format", "png"], stdout=follower, stderr=subprocess.PIPE, text=True, timeout=60,
                           env={**os.environ, "TETHER_NO_AUTOSTART": "1"})
    finally:
        os.close(leader)
        os.close(follower)
    assert r.returncode == 1 and r.stderr.startswith("Error: PNG does not go to a terminal: use -o FILE"), r.stderr


# ---------------------------------------------------------------------- a cluster
@pytest.fixture(scope="module")
def lab() -> Iterator[LabInfo]:
    prefix = "tt" + uuid.uuid4().hex[:6]
    base = tempfile.mkdtemp(prefix=f"tether-graph-{prefix}-")
    root, state_root = os.path.join(base, "run"), os.path.join(base, "state")
    try:
        yield lab_up(2, grace=6.0, root=root, state_root=state_root, name_prefix=prefix)
    finally:
        lab_down(root, state_root=state_root, name_prefix=prefix)
        shutil.rmtree(base, ignore_errors=True)


def on(host: Any, *args: str) -> str:
    r = subprocess.run(host.tether_argv(*args), capture_output=True, text=True, env=host.cli_env(), timeout=60)
    assert r.returncode == 0, f"{host.name}: tether {' '.join(args)}: {r.stderr}{r.stdout}"
    return r.stdout


def test_overlay_cluster_draws_every_host(lab: LabInfo, tmp_path: Any) -> None:
    h1, h2 = lab.hosts
    on(h1, "network", "create", "-d", "overlay", "--subnet", "10.221.0.0/16", "ovg")
    on(h1, "network", "create", "--subnet", "10.234.0.0/24", "local1")
    on(h1, "run", "-d", "--name", "alpha", "--net", "ovg", "-p", "18082:80", "--", "sleep", "600")
    on(h1, "network", "connect", "local1", "alpha")
    on(h2, "run", "-d", "--name", "bravo", "--net", "ovg", "--", "sleep", "600")
    model = on(h1, "network", "inspect", "ovg", "--format", "{{.options.vni}}").strip()
    addresses = {name: on(h, "inspect", name, "--format", "{{.networks.ovg.address}}").strip()
                 for h, name in ((h1, "alpha"), (h2, "bravo"))}

    svg = str(tmp_path / "cluster.svg")
    on(h1, "graph", "-o", svg)
    drawn = svg_texts(svg)
    for needle in (h1.name, h2.name, "this host", "alpha", "bravo", "ovg", "local1", "10.221.0.0/16",
                   f"VNI {model}", f"tvx-{model}", f"{addresses['alpha']}/16", f"{addresses['bravo']}/16",
                   "0.0.0.0:18082->80/tcp", "remote", "VXLAN segment"):
        assert needle in drawn, (needle, drawn)

    # seen from the other host: the same containers, its own box marked
    text = on(h2, "graph", "--format", "text")
    lines = text.splitlines()
    assert lines[0] == f"tether topology (as {h2.name} sees it)"
    assert any(line.startswith(f"├── {h2.name}") and "this host" in line for line in lines), text
    assert f"bravo  eth0 {addresses['bravo']}/16" in text and f"alpha  {addresses['alpha']}/16 · remote" in text
    assert "local1" not in text  # h1's bridge network lives on h1 only
