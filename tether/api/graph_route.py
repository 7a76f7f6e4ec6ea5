"""``GET /graph``: the topology as one plain dict, for ``tether graph`` (drawn by
``tether/graph.py``, which does no I/O).

It is gathered with the controller's public verbs only (``list_networks``,
``list_containers``, ``inspect_network``, ``nodes``), so it shows exactly what ``network
ls``, ``ps``, ``network inspect`` and ``node ls`` show, in one request. Local networks
(bridge, macvlan ...) are this host's: other hosts' are not in the cluster store. Overlay
networks come with every host's own address on them and every container attached from
any host (the cluster store's endpoint records), so a cluster is drawn whole.

The model (``?all=1`` adds containers that are not running)::

    {"version": 1,
     "host": NAME,                                   the host that answered
     "cluster": bool,                                whether it has a cluster store
     "hosts": [{"name", "address", "up", "self"}],   every host (one without a cluster)
     "networks": [{"name", "id", "driver", "scope", "host" (a local one's host, else None),
                   "subnets": [v4, v6?], "gateways": [...], "bridge", "vxlan", "vni",
                   "internal", "mtu", "options",
                   "hosts": {NAME: {"address", "address6", "vtep"}}}],   (overlay: per host)
     "containers": [{"name", "id", "host", "state", "mode", "runtime", "joined", "ports",
                     "endpoints": [{"network", "ifname", "address", "address6", "mac",
                                    "host_ifname"}]}]}

``mode`` is network, host, none, container (``joined``: whose namespace) or external
(``runtime``: cni or docker, the other runtime's sandbox); addresses carry their prefix
length; a remote container's ``state`` is ``remote`` and its ``ifname`` is None (its
host's daemon knows it, this one only knows the cluster's record).
"""

from __future__ import annotations

import os
from typing import Any

from ..controller import Controller
from .schema import Empty
from .server import Query, _flag, route

__all__ = ["graph", "topology"]

GRAPH_VERSION = 1


@route("GET", "/graph")
def graph(c: Controller, p: dict[str, str], body: Empty, q: Query) -> Any:
    return topology(c, all_=_flag(q, "all"))


def topology(c: Controller, all_: bool = False) -> dict[str, Any]:
    """The whole picture as plain data (see the module docstring)."""
    here = c.cluster.node if c.cluster is not None else os.uname().nodename
    hosts = _hosts(c, here)
    networks = [_network(c, n, here) for n in sorted(c.list_networks(), key=lambda n: n["name"])]
    containers = [_container(ctr, here) for ctr in c.list_containers(all_=all_)]
    _resolve_joins(containers)
    containers.extend(_remote_containers(networks))
    containers.sort(key=lambda ctr: (ctr["host"] != here, ctr["host"], ctr["name"]))
    return {
        "version": GRAPH_VERSION, "host": here, "cluster": c.cluster is not None,
        "hosts": hosts, "networks": networks, "containers": containers,
    }


def _hosts(c: Controller, here: str) -> list[dict[str, Any]]:
    if c.cluster is None:
        return [{"name": here, "address": None, "up": True, "self": True}]
    hosts = [
        {"name": n["name"], "address": n.get("address"), "up": bool(n["up"]), "self": n["name"] == here}
        for n in c.nodes()
    ]
    if not any(h["self"] for h in hosts):  # not registered yet: it answers, so it is up
        hosts.append({"name": here, "address": c.cluster.advertise, "up": True, "self": True})
    return sorted(hosts, key=lambda h: (not h["self"], h["name"]))


def _network(c: Controller, n: dict[str, Any], here: str) -> dict[str, Any]:
    vni = n.get("options", {}).get("vni") if n["driver"] == "overlay" else None
    out = {
        "name": n["name"], "id": n["id"], "driver": n["driver"], "scope": n.get("scope", "local"),
        "host": here if n.get("scope", "local") == "local" else None,
        "subnets": [s for s in (n["subnet"], n.get("subnet6")) if s],
        "gateways": [g for g in (n.get("gateway"), n.get("gateway6")) if g],
        "bridge": n.get("bridge"), "vxlan": f"tvx-{vni}" if vni else None, "vni": int(vni) if vni else None,
        "internal": bool(n.get("internal")), "mtu": n.get("mtu"),
        "options": {k: v for k, v in n.get("options", {}).items() if k != "vni"},
        "hosts": {}, "remote": [],
    }
    if n["driver"] == "overlay":
        described = c.inspect_network(n["name"])
        out["hosts"] = described.get("hosts", {})
        out["remote"] = [
            dict(v, name=name) for name, v in sorted(described.get("containers", {}).items())
            if v.get("node") and v.get("node") != here
        ]
    return out


def _container(ctr: dict[str, Any], here: str) -> dict[str, Any]:
    net_mode = ctr.get("net_mode", "")
    if ctr.get("external"):
        mode = "external"
    elif net_mode in ("host", "none"):
        mode = net_mode
    elif net_mode.startswith("container:"):
        mode = "container"
    else:
        mode = "network"
    runtime = ctr["name"].split("-", 1)[0] if mode == "external" else "tether"
    endpoints = [] if mode == "container" else [
        {
            "network": net, "ifname": ep.get("ifname"),
            "address": f"{ep['address']}/{ep['prefixlen']}" if ep.get("address") else None,
            "address6": f"{ep['address6']}/{ep['prefixlen6']}" if ep.get("address6") else None,
            "mac": ep.get("mac"), "host_ifname": ep.get("host_ifname"),
        }
        for net, ep in sorted(ctr.get("networks", {}).items(), key=lambda kv: kv[1].get("ifname") or "")
    ]
    ports = [
        {"protocol": p["protocol"], "host_ip": p.get("host_ip"), "host_port": p["host_port"],
         "container_port": p["container_port"]}
        for p in ctr.get("ports", [])
    ]
    return {
        "name": ctr["name"], "id": ctr["id"], "host": here, "state": ctr.get("state"), "mode": mode,
        "runtime": runtime, "joined": ctr.get("joined") if mode == "container" else None,
        "net_mode": net_mode, "ports": ports, "endpoints": endpoints,
    }


def _resolve_joins(containers: list[dict[str, Any]]) -> None:
    """``joined`` holds the owner's ID in the record: give its name (or what ``net_mode``
    says when the owner is gone: ``container:web (removed)``)."""
    names = {ctr["id"]: ctr["name"] for ctr in containers}
    for ctr in containers:
        if ctr["mode"] == "container":
            target = ctr["net_mode"].partition(":")[2]
            ctr["joined"] = names.get(ctr["joined"] or "", target)
        del ctr["net_mode"]


def _remote_containers(networks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Containers of other hosts, from the overlays' cluster records: one per (host, name),
    with an endpoint per overlay network it is on."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for net in networks:
        for rec in net.pop("remote"):
            key = (rec["node"], rec["name"])
            ctr = found.setdefault(key, {
                "name": rec["name"], "id": None, "host": rec["node"], "state": "remote", "mode": "network",
                "runtime": "tether", "joined": None, "ports": [], "endpoints": [],
            })
            ctr["endpoints"].append({
                "network": net["name"], "ifname": None, "address": rec.get("address"),
                "address6": rec.get("address6"), "mac": rec.get("mac"), "host_ifname": None,
            })
    return list(found.values())
