"""tether/graph.py: the /graph model drawn as DOT and as a Rich tree (pure: no daemon,
no dot). When Graphviz is installed, the DOT is also checked to parse (``dot -Tcanon``)."""

from __future__ import annotations

import io
import shutil
import subprocess
from typing import Any

import pytest
from rich.console import Console

from tether.graph import DRIVER_COLOURS, dot_quote, html_text, to_dot, to_tree


def ep(network: str, ifname: str | None, address: str, address6: str | None = None) -> dict[str, Any]:
    return {"network": network, "ifname": ifname, "address": address, "address6": address6,
            "mac": "02:42:00:00:00:01", "host_ifname": None}


def ctr(name: str, host: str = "h1", mode: str = "network", endpoints: list[dict[str, Any]] | None = None,
        **extra: Any) -> dict[str, Any]:
    base = {"name": name, "id": name * 4, "host": host, "state": "running", "mode": mode, "runtime": "tether",
            "joined": None, "ports": [], "endpoints": endpoints or []}
    return {**base, **extra}


def model() -> dict[str, Any]:
    """Two hosts: h1 with a bridge, a dual-stack bridge, an overlay, every container mode and
    a CNI sandbox; h2 with a remote container on the overlay."""
    return {
        "version": 1, "host": "h1", "cluster": True,
        "hosts": [{"name": "h1", "address": "10.99.0.1", "up": True, "self": True},
                  {"name": "h2", "address": "10.99.0.2", "up": False, "self": False}],
        "networks": [
            {"name": "front", "id": "f" * 32, "driver": "bridge", "scope": "local", "host": "h1",
             "subnets": ["10.77.0.0/24"], "gateways": ["10.77.0.1"], "bridge": "tbr-front", "vxlan": None,
             "vni": None, "internal": False, "mtu": 1500, "options": {}, "hosts": {}},
            {"name": "dual", "id": "d" * 32, "driver": "bridge", "scope": "local", "host": "h1",
             "subnets": ["10.78.0.0/24", "fd00:78::/64"], "gateways": ["10.78.0.1", "fd00:78::1"],
             "bridge": "tbr-dual", "vxlan": None, "vni": None, "internal": True, "mtu": 1500, "options": {},
             "hosts": {}},
            {"name": "ov1", "id": "o" * 32, "driver": "overlay", "scope": "global", "host": None,
             "subnets": ["10.220.0.0/16"], "gateways": ["10.220.0.1"], "bridge": "tov-4096", "vxlan": "tvx-4096",
             "vni": 4096, "internal": False, "mtu": 1350, "options": {},
             "hosts": {"h1": {"address": "10.220.0.2", "address6": None, "vtep": "10.99.0.1"},
                       "h2": {"address": "10.220.0.3", "address6": None, "vtep": "10.99.0.2"}}},
        ],
        "containers": [
            ctr("web", endpoints=[ep("front", "eth0", "10.77.0.2/24"), ep("dual", "eth1", "10.78.0.2/24", "fd00:78::2/64")],
                ports=[{"protocol": "tcp", "host_ip": None, "host_port": 8080, "container_port": 80},
                       {"protocol": "udp", "host_ip": "::1", "host_port": 5353, "container_port": 53}]),
            ctr("side", mode="container", joined="web"),
            ctr("hostie", mode="host"),
            ctr("lonely", mode="none"),
            ctr("a1", endpoints=[ep("ov1", "eth0", "10.220.0.4/16")]),
            ctr("cni-abc123", mode="external", runtime="cni", state="external",
                endpoints=[ep("front", "eth0", "10.77.0.9/24")]),
            ctr("stopped", state="exited"),
            ctr("b1", host="h2", state="remote", endpoints=[ep("ov1", None, "10.220.0.6/16")]),
        ],
    }


def tree_text(m: dict[str, Any]) -> str:
    buf = io.StringIO()
    Console(file=buf, width=1000, color_system=None, highlight=False).print(to_tree(m))
    return buf.getvalue()


def test_dot_has_every_object() -> None:
    text = to_dot(model())
    assert text.startswith("digraph tether {") and text.rstrip().endswith("}")
    for needle in ("h1", "h2", "10.99.0.1", "front", "dual", "ov1", "10.77.0.0/24", "fd00:78::/64",
                   "VNI 4096", "tov-4096", "tvx-4096", "vtep 10.99.0.2", "tbr-front", "web", "side", "hostie",
                   "lonely", "a1", "cni-abc123", "cni sandbox", "b1", "10.77.0.2/24", "fd00:78::2/64",
                   "10.220.0.6/16", "0.0.0.0:8080-&gt;80/tcp", "[::1]:5353-&gt;53/udp", "shares netns",
                   "host network", "DOWN", "internal", "gw 10.77.0.1"):
        assert needle in text, needle


def test_overlay_is_drawn_per_host_and_once_as_a_segment() -> None:
    text = to_dot(model())
    assert '"net/h1/ov1" [' in text and '"net/h2/ov1" [' in text
    assert sum(line.strip().startswith('"segment/ov1" [') for line in text.splitlines()) == 1
    assert '"net/h1/ov1" -> "segment/ov1"' in text and '"net/h2/ov1" -> "segment/ov1"' in text
    assert '"ctr/h2/b1" -> "net/h2/ov1"' in text  # the remote container on its own host's side
    assert '"net/h1/front"' in text and '"net/h2/front"' not in text  # local networks stay home


def test_each_node_is_declared_once_and_clusters_per_host() -> None:
    text = to_dot(model())
    declarations = [line.strip().split(" [", 1)[0] for line in text.splitlines()
                    if line.strip().startswith('"') and " -> " not in line]
    assert len(declarations) == len(set(declarations))
    assert 'subgraph "cluster_host_h1"' in text and 'subgraph "cluster_host_h2"' in text


def test_driver_colours_are_consistent() -> None:
    text = to_dot(model())
    bridge, overlay = DRIVER_COLOURS["bridge"][1], DRIVER_COLOURS["overlay"][1]
    assert f'"ctr/h1/web" -> "net/h1/front" [color="{bridge}"' in text
    assert f'"ctr/h1/a1" -> "net/h1/ov1" [color="{overlay}"' in text


def test_quoting() -> None:
    assert dot_quote('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    assert html_text('<b>&"x"') == "&lt;b&gt;&amp;&quot;x&quot;"


def test_hostile_names_stay_inside_their_strings() -> None:
    m = model()
    evil = 'x"; evil [label="pwned"]; "<b>'
    m["containers"].append(ctr(evil, endpoints=[ep("front", "eth0", "10.77.0.50/24")]))
    m["networks"][0]["options"] = {"note": "a&b<c>"}
    text = to_dot(m)
    assert '"ctr/h1/x\\"; evil [label=\\"pwned\\"]; \\"<b>" [' in text  # one ID, its quotes escaped
    assert "<b>x&quot;; evil [label=&quot;pwned&quot;]; &quot;&lt;b&gt;</b>" in text  # HTML-escaped label
    assert "note=a&amp;b&lt;c&gt;" in text
    canon = _dot_parses(text)
    assert not any(line.strip().startswith("evil") for line in canon.splitlines())  # no node named evil


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_dot_parses_with_graphviz() -> None:
    _dot_parses(to_dot(model()))


def _dot_parses(text: str) -> str:
    """Graphviz's canonical form of ``text`` ("" without Graphviz): it must parse cleanly."""
    if shutil.which("dot") is None:
        return ""
    done = subprocess.run(["dot", "-Tcanon"], input=text, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    return done.stdout


def test_missing_network_and_host_are_drawn_bare() -> None:
    m = model()
    m["containers"].append(ctr("ghost", host="h9", endpoints=[ep("gone", "eth0", "10.1.1.2/24")]))
    text = to_dot(m)
    assert 'subgraph "cluster_host_h9"' in text and '"ctr/h9/ghost" -> "net/h9/gone"' in text
    _dot_parses(text)


def test_text_tree() -> None:
    text = tree_text(model())
    lines = text.splitlines()
    assert lines[0] == "tether topology (as h1 sees it)"
    assert any(line.startswith("├── h1  10.99.0.1 · this host · up") for line in lines)
    assert any(line.startswith("└── h2  10.99.0.2 · DOWN") for line in lines)
    for needle in ("front  bridge · 10.77.0.0/24  gw 10.77.0.1 · tbr-front",
                   "dual  bridge · 10.78.0.0/24  gw 10.78.0.1 · fd00:78::/64  gw fd00:78::1 · tbr-dual · internal",
                   "ov1  overlay · 10.220.0.0/16 · VNI 4096 · host 10.220.0.2 · tov-4096 + tvx-4096",
                   "web  eth0 10.77.0.2/24 · port 0.0.0.0:8080->80/tcp · port [::1]:5353->53/udp",
                   "web  eth1 10.78.0.2/24 fd00:78::2/64", "cni-abc123  eth0 10.77.0.9/24 · cni sandbox",
                   "host network", "hostie  net host", "no network", "lonely  net none", "side  -> web",
                   "on no network now", "stopped  exited", "b1  10.220.0.6/16 · remote"):
        assert needle in text, (needle, text)


def test_text_tree_escapes_markup() -> None:
    m = model()
    m["containers"].append(ctr("[bold]x[/]", mode="none"))
    assert "[bold]x[/]  net none" in tree_text(m)


def test_single_host_without_cluster() -> None:
    m = model()
    m.update(cluster=False, hosts=[{"name": "box", "address": None, "up": True, "self": True}],
             networks=m["networks"][:1])
    m["containers"] = [dict(c, host="box") for c in m["containers"][:4]]
    m["networks"][0]["host"] = "box"
    text = to_dot(m)
    assert 'label="tether topology"' in text and "segment" not in text
    assert tree_text(m).splitlines()[1].startswith("└── box  this host · up")
    _dot_parses(text)
