"""Drawing the topology: the model of ``GET /graph`` (``api/graph_route.py``) as Graphviz
DOT text, or as a Rich tree for a terminal. Pure: no I/O, no subprocess; the CLI
(``cli/graph.py``) asks the daemon for the model and runs ``dot`` on what this returns.

The picture, top to bottom inside a box per host: containers (name, state, published
ports), the networks they are on (driver, subnets and gateways, the bridge device; an
overlay's VXLAN device and VNI), and the host's own namespace at the bottom, which holds
every network's gateway and every published port. An overlay is drawn once per host, as
that host's bridge + VXLAN device, and those meet outside the host boxes in one node for
the VXLAN segment, the edges labelled with each host's VTEP: the picture says which host
carries which container and how they reach each other. Graphviz does the layout (no
coordinates here); colours follow the driver (networks, and the edges into them) and the
runtime (containers: tether's, CNI's, Docker's).

Names come from users and other runtimes: every DOT ID and label is quoted here
(``dot_quote``, ``html_text``), never pasted raw.
"""

from __future__ import annotations

from typing import Any

TYPE_CHECKING = False
if TYPE_CHECKING:
    from rich.tree import Tree

__all__ = ["to_dot", "to_tree", "dot_quote", "html_text", "DRIVER_COLOURS"]

Model = dict[str, Any]

# (fill, line) per network driver; edges into a network take its line colour
DRIVER_COLOURS: dict[str, tuple[str, str]] = {
    "bridge": ("#E3F2FD", "#1E88E5"),
    "overlay": ("#E8F5E9", "#2E7D32"),
    "macvlan": ("#FFF3E0", "#EF6C00"),
    "ipvlan": ("#FCE4EC", "#AD1457"),
}
OTHER_DRIVER = ("#ECEFF1", "#546E7A")
# (fill, line) per container runtime, and for what is not running
RUNTIME_COLOURS: dict[str, tuple[str, str]] = {
    "tether": ("#FFFFFF", "#37474F"),
    "cni": ("#F3E5F5", "#7B1FA2"),
    "docker": ("#E1F5FE", "#0277BD"),
}
STOPPED = ("#F5F5F5", "#9E9E9E")
HOST_COLOURS = ("#FAFAFA", "#757575")
DOWN = "#C62828"
MUTED = "#616161"
FONT = "Helvetica"


# ------------------------------------------------------------------------- quoting
def dot_quote(text: str) -> str:
    """``text`` as a DOT quoted string: backslashes and quotes escaped, line breaks as
    ``\\n`` (so no name can end the string or add a statement)."""
    body = str(text).replace("\\", "\\\\").replace('"', '\\"')
    body = body.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n")
    return f'"{body}"'


def html_text(text: str) -> str:
    """``text`` for a DOT HTML-like label: ``& < > "`` as entities (a name with ``<`` must
    not open a tag)."""
    return (
        str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


def _node_id(kind: str, *parts: str | None) -> str:
    return dot_quote("/".join([kind, *(p or "" for p in parts)]))


def _attrs(**attrs: str | None) -> str:
    """``[k="v", ...]``; a value given as ``<...>`` is an HTML label and stays unquoted."""
    out = []
    for key, value in attrs.items():
        if value is None:
            continue
        out.append(f"{key}={value}" if value.startswith("<") and value.endswith(">") else f"{key}={dot_quote(value)}")
    return "[" + ", ".join(out) + "]"


def _label(title: str, *lines: str, colour: str = MUTED) -> str:
    """An HTML label: a bold title and small lines under it (already escaped)."""
    rows = [f"<tr><td><b>{title}</b></td></tr>"]
    rows += [f'<tr><td><font point-size="9" color="{colour}">{line}</font></td></tr>' for line in lines if line]
    return '<<table border="0" cellborder="0" cellspacing="0" cellpadding="1">' + "".join(rows) + "</table>>"


# ------------------------------------------------------------------------- text pieces
def port_text(port: dict[str, Any]) -> str:
    host_ip = port.get("host_ip")
    where = f"[{host_ip}]" if host_ip and ":" in host_ip else host_ip or "0.0.0.0"
    return f"{where}:{port['host_port']}->{port['container_port']}/{port['protocol']}"


def _addresses(endpoint: dict[str, Any]) -> list[str]:
    return [a for a in (endpoint.get("address"), endpoint.get("address6")) if a]


def _subnet_lines(net: dict[str, Any]) -> list[str]:
    subnets, gateways = net.get("subnets") or [], net.get("gateways") or []
    lines = []
    for i, subnet in enumerate(subnets):
        gateway = gateways[i] if i < len(gateways) and net.get("driver") != "overlay" else None
        lines.append(subnet + (f"  gw {gateway}" if gateway else ""))
    return lines


def _network_facts(net: dict[str, Any], host: str | None, own_address: bool = True) -> list[str]:
    """Devices, VNI and flags of one network (on ``host`` for an overlay, with the host's
    own address on it if ``own_address``)."""
    facts = []
    if net.get("driver") == "overlay":
        facts.append(f"VNI {net.get('vni')}")
        mine = (net.get("hosts") or {}).get(host or "", {})
        own = [a for a in (mine.get("address"), mine.get("address6")) if a]
        if own and own_address:
            facts.append("host " + ", ".join(own))
        facts.append(f"{net.get('bridge')} + {net.get('vxlan')}")
    elif net.get("bridge"):
        facts.append(str(net["bridge"]))
    for key, value in sorted((net.get("options") or {}).items()):
        facts.append(f"{key}={value}")
    if net.get("internal"):
        facts.append("internal")
    return facts


def _container_facts(ctr: dict[str, Any]) -> list[str]:
    facts = []
    if ctr.get("mode") == "external":
        facts.append(f"{ctr.get('runtime')} sandbox")
    elif ctr.get("mode") in ("host", "none"):
        facts.append(f"net {ctr['mode']}")
    elif ctr.get("mode") == "container":
        facts.append(f"net container:{ctr.get('joined')}")
    if ctr.get("state") not in (None, "running", "external"):
        facts.append(str(ctr["state"]))
    return facts


def _colours(ctr: dict[str, Any]) -> tuple[str, str]:
    if ctr.get("state") not in ("running", "external", "remote"):
        return STOPPED
    return RUNTIME_COLOURS.get(ctr.get("runtime") or "", RUNTIME_COLOURS["tether"])


# ------------------------------------------------------------------------- DOT
class _Dot:
    """The DOT text under construction: statements, and the ids already declared."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.lines: list[str] = []
        self.networks = {n["name"]: n for n in model.get("networks", [])}
        self.declared: set[str] = set()

    def add(self, line: str, indent: int = 1) -> None:
        self.lines.append("  " * indent + line)

    def node(self, node_id: str, indent: int = 2, **attrs: str | None) -> None:
        if node_id not in self.declared:
            self.declared.add(node_id)
            self.add(f"{node_id} {_attrs(**attrs)};", indent)

    def edge(self, tail: str, head: str, **attrs: str | None) -> None:
        self.add(f"{tail} -> {head} {_attrs(**attrs)};")


def to_dot(model: Model) -> str:
    """The whole topology as one DOT digraph (for ``dot -Tsvg`` / ``-Tpng``)."""
    dot = _Dot(model)
    title = "tether topology" + (f" (as {model.get('host')} sees it)" if model.get("cluster") else "")
    dot.lines += [
        "digraph tether {",
        f"  graph {_attrs(rankdir='TB', fontname=FONT, fontsize='16', label=title, labelloc='t', nodesep='0.35', ranksep='0.8', newrank='true', compound='true', pad='0.3')};",
        f"  node {_attrs(fontname=FONT, fontsize='11', shape='box', style='rounded,filled', penwidth='1.4')};",
        f"  edge {_attrs(fontname=FONT, fontsize='9', arrowhead='none', penwidth='1.3', fontcolor=MUTED)};",
    ]
    hosts = list(model.get("hosts") or [])
    known = {h["name"] for h in hosts}
    for ctr in model.get("containers", []):  # a container on a host the node list lacks
        if ctr.get("host") not in known:
            known.add(ctr["host"])
            hosts.append({"name": ctr["host"], "address": None, "up": True, "self": False})
    for host in hosts:
        _host_cluster(dot, host)
    _segments(dot)
    _container_edges(dot)
    dot.lines.append("}")
    return "\n".join(dot.lines) + "\n"


def _host_networks(model: Model, host: str) -> list[dict[str, Any]]:
    """The networks drawn in ``host``'s box: its local ones, and each overlay it has an
    address on or a container on."""
    used = {
        ep["network"] for c in model.get("containers", []) if c.get("host") == host for ep in c.get("endpoints", [])
    }
    out = []
    for net in model.get("networks", []):
        if net.get("scope") == "global":
            if host in (net.get("hosts") or {}) or net["name"] in used:
                out.append(net)
        elif net.get("host") in (host, None):
            out.append(net)
    return out


def _net_id(net: dict[str, Any], host: str) -> str:
    """A network's node in ``host``'s box (an overlay has one in each host's box: its bridge there)."""
    return _node_id("net", host, net["name"])


def _host_cluster(dot: _Dot, host: dict[str, Any]) -> None:
    name = host["name"]
    fill, line = HOST_COLOURS
    status = [host.get("address") or "", "this host" if host.get("self") else "", "up" if host.get("up") else "DOWN"]
    dot.add(f"subgraph {dot_quote('cluster_host_' + name)} {{")
    dot.add(f"graph {_attrs(label=' · '.join(s for s in [name, *status] if s), style='rounded,filled', fillcolor=fill, color=DOWN if not host.get('up') else line, fontsize='13', margin='14')};", 2)
    host_node = _node_id("host", name)
    dot.node(host_node, label=_label(html_text(name) + " netns", *_host_lines(dot.model, name)),
             shape="box", style="filled", fillcolor="#EEEEEE", color=line)
    for net in _host_networks(dot.model, name):
        fill, line = DRIVER_COLOURS.get(net.get("driver", ""), OTHER_DRIVER)
        facts = _network_facts(net, name, own_address=False)  # the edge to the host says it
        head = [net.get("driver", "?"), *(facts[:1] if net.get("driver") == "overlay" else [])]
        lines = [html_text(" · ".join(head)), *(html_text(s) for s in _subnet_lines(net))]
        lines.append(html_text(" · ".join(facts[1:] if net.get("driver") == "overlay" else facts)))
        node = _net_id(net, name)
        dot.node(node, label=_label(html_text(net["name"]), *lines), fillcolor=fill, color=line,
                 style="rounded,filled,dashed" if net.get("internal") else None)
        dot.edge(node, host_node, color=line, label=_gateway_label(net, name),
                 style="dashed" if net.get("internal") else None)
    for ctr in dot.model.get("containers", []):
        if ctr.get("host") == name:
            _container_node(dot, ctr)
    dot.add("}")


def _host_lines(model: Model, host: str) -> list[str]:
    """What the host's own namespace holds for the picture: its published ports."""
    ports = []
    for ctr in model.get("containers", []):
        if ctr.get("host") == host:
            ports += [html_text(f"{port_text(p)} -> {ctr['name']}") for p in ctr.get("ports", [])]
    return ports or []


def _gateway_label(net: dict[str, Any], host: str) -> str:
    if net.get("driver") == "overlay":
        mine = (net.get("hosts") or {}).get(host, {})
        return "\n".join(a for a in (mine.get("address"), mine.get("address6")) if a)
    if net.get("options", {}).get("parent"):
        return f"parent {net['options']['parent']}"
    return "\n".join(f"gw {g}" for g in net.get("gateways") or [])


def _container_node(dot: _Dot, ctr: dict[str, Any]) -> None:
    fill, line = _colours(ctr)
    lines = [html_text(f) for f in _container_facts(ctr)]
    lines += [html_text(port_text(p)) for p in ctr.get("ports", [])]
    style = "rounded,filled,dashed" if ctr.get("state") not in ("running", "external", "remote") else None
    dot.node(_node_id("ctr", ctr["host"], ctr["name"]), label=_label(html_text(ctr["name"]), *lines, colour=line),
             fillcolor=fill, color=line, style=style)


def _segments(dot: _Dot) -> None:
    """One node per overlay network for its VXLAN segment, an edge from each host's side."""
    for net in dot.model.get("networks", []):
        if net.get("driver") != "overlay":
            continue
        fill, line = DRIVER_COLOURS["overlay"]
        segment = _node_id("segment", net["name"])
        lines = [html_text(f"VXLAN segment · VNI {net.get('vni')}"), *(html_text(s) for s in net.get("subnets") or [])]
        dot.node(segment, indent=1, label=_label(html_text(net["name"]), *lines), shape="box",
                 style="filled", fillcolor=fill, color=line, penwidth="2")
        for host in dot.model.get("hosts") or []:
            if net in _host_networks(dot.model, host["name"]):
                vtep = (net.get("hosts") or {}).get(host["name"], {}).get("vtep") or host.get("address")
                dot.edge(_net_id(net, host["name"]), segment, color=line, penwidth="2.2",
                         label=f"{net.get('vxlan')}" + (f"\nvtep {vtep}" if vtep else ""))


def _container_edges(dot: _Dot) -> None:
    """Endpoints (container -> network), joins, and host-mode containers."""
    for ctr in dot.model.get("containers", []):
        me = _node_id("ctr", ctr["host"], ctr["name"])
        for ep in ctr.get("endpoints", []):
            net = dot.networks.get(ep["network"])
            if net is None:  # gone between the daemon's reads: drawn bare
                net = {"name": ep["network"], "driver": "?", "host": ctr["host"]}
                dot.node(_net_id(net, ctr["host"]), indent=1, label=_label(html_text(ep["network"])))
            line = DRIVER_COLOURS.get(net.get("driver", ""), OTHER_DRIVER)[1]
            text = [ep["ifname"]] if ep.get("ifname") else []
            dot.edge(me, _net_id(net, ctr["host"]), color=line, label="\n".join(text + _addresses(ep)))
        if ctr.get("mode") == "container" and ctr.get("joined"):
            owner = _node_id("ctr", ctr["host"], ctr["joined"])
            dot.node(owner, indent=1, label=_label(html_text(str(ctr["joined"])), "not listed"), fillcolor=STOPPED[0],
                     color=STOPPED[1])
            dot.edge(me, owner, style="dashed", color=MUTED, label="shares netns", arrowhead="normal")
        elif ctr.get("mode") == "host":
            dot.edge(me, _node_id("host", ctr["host"]), style="dashed", color=MUTED, label="host network")


# ------------------------------------------------------------------------- text
def to_tree(model: Model) -> Tree:
    """The topology as a Rich tree: host > network > container, then the containers
    that are on no network of theirs (host, none, ``container:`` joins, stopped)."""
    from rich.markup import escape
    from rich.tree import Tree

    title = "tether topology" + (f" (as {model.get('host')} sees it)" if model.get("cluster") else "")
    root = Tree(f"[bold]{escape(title)}[/]")
    networks = {n["name"]: n for n in model.get("networks", [])}
    hosts = list(model.get("hosts") or [])
    for host in hosts:
        status = [host.get("address") or "", "this host" if host.get("self") else "", "up" if host.get("up") else "DOWN"]
        style = "bold" if host.get("up") else "bold red"
        branch = root.add(f"[{style}]{escape(host['name'])}[/]  " + escape(" · ".join(s for s in status if s)))
        _tree_host(branch, model, host["name"], networks)
    return root


def _tree_host(branch: Any, model: Model, host: str, networks: dict[str, Any]) -> None:
    from rich.markup import escape

    mine = [c for c in model.get("containers", []) if c.get("host") == host]
    for net in _host_networks(model, host):
        colour = DRIVER_COLOURS.get(net.get("driver", ""), OTHER_DRIVER)[1]
        facts = [net.get("driver", "?"), *_subnet_lines(net), *_network_facts(net, host)]
        node = branch.add(f"[bold {colour}]{escape(net['name'])}[/]  " + escape(" · ".join(facts)))
        for ctr in mine:
            for ep in ctr.get("endpoints", []):
                if ep["network"] == net["name"]:
                    node.add(_tree_container(ctr, ep))
    unknown = sorted({ep["network"] for c in mine for ep in c.get("endpoints", [])} - set(networks))
    for name in unknown:
        node = branch.add(f"[bold]{escape(name)}[/]  (not listed)")
        for ctr in mine:
            for ep in ctr.get("endpoints", []):
                if ep["network"] == name:
                    node.add(_tree_container(ctr, ep))
    groups = (("host", "host network"), ("none", "no network"), ("container", "shared namespaces (container:)"))
    for mode, title in groups:
        members = [c for c in mine if c.get("mode") == mode]
        if members:
            node = branch.add(f"[italic]{title}[/]")
            for ctr in members:
                node.add(_tree_container(ctr, None))
    loose = [c for c in mine if c.get("mode") in ("network", "external") and not c.get("endpoints")]
    if loose:
        node = branch.add("[italic]on no network now[/]")
        for ctr in loose:
            node.add(_tree_container(ctr, None))


def _tree_container(ctr: dict[str, Any], ep: dict[str, Any] | None) -> str:
    from rich.markup import escape

    parts = []
    if ep is not None:
        parts.append(" ".join([*([ep["ifname"]] if ep.get("ifname") else []), *_addresses(ep)]))
    parts += _container_facts(ctr)
    if ctr.get("mode") == "container":
        parts = [p for p in parts if not p.startswith("net container:")] + [f"-> {ctr.get('joined')}"]
    parts += [f"port {port_text(p)}" for p in ctr.get("ports", [])]
    colour = _colours(ctr)[1]
    return f"[bold {colour}]{escape(ctr['name'])}[/]  " + escape(" · ".join(p for p in parts if p))
