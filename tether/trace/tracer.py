"""``tether trace SRC DST``: walk the path a packet from SRC would take, hop by hop, and
check each against tether's records and the kernel. Runs in the daemon.

Order of the hops (each a ``Step``, ``checks.py`` decides): SRC's state; its interface,
route and neighbour entry (read inside its namespace); its veth's host end on the
network's bridge; on an overlay to another host, this host's VXLAN entries for DST, DST's
host alive, and DST's host having programmed SRC (from the cluster store's ``/applied/``
revisions); the firewall (tether's rules from its model, then one probe packet traced by
nftables when DST is inside a namespace tether made); DST's state, and with a port
whether something listens (DST's socket table, or the probe's answer on a remote host).

Reads go through the controller's records and the Datapath/Firewall protocols only. The
one probe goes from SRC's namespace to an address inside a tether container (directly,
or through a port published to one); an external IP or the host itself is never probed.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..control import keys as ckeys
from ..errors import DatapathError, NotFound, SystemFailure
from ..firewall.nftrace import TraceEvent, TraceMatch
from ..model import Network
from . import checks
from .model import Step, Target, Trace, parse_target

if TYPE_CHECKING:
    from ..controller import Controller

__all__ = ["Destination", "trace"]

_RECENT_REPAIR = 300.0  # seconds during which a repair by the overlay agent is worth saying


@dataclass
class Destination:
    """Where the packet goes, once resolved: a local or remote container's endpoint, the
    host, or an address outside."""

    kind: str  # container | remote | host | external
    label: str
    address: str | None = None
    name: str | None = None
    state: str | None = None
    netns: str | None = None
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)  # network -> {address, mac, node, vtep, ...}
    network: str | None = None  # the network asked for (NAME.NETWORK)
    port: int | None = None  # the port to check inside the destination (after DNAT)
    dnat: bool = False  # reached through a published port
    node: str | None = None
    host_ip: str | None = None  # with ``dnat``: the host address the port is published on (None: every one)


def trace(c: Controller, source: str, destination: str, port: int | None = None,
          protocol: str | None = None, probe: bool = True) -> Trace:
    """The trace from container ``source`` to ``destination`` (see ``parse_target``);
    NotFound for an unknown container, InvalidInput for a bad destination."""
    target = parse_target(destination, port, protocol)
    src = c.inspect_container(source)
    result = Trace(source=src["name"], destination=str(target))
    if not _source_state(result, src):
        return result
    dst = _resolve(c, target, src)
    if dst.kind in ("container", "remote") and dst.state != "running":
        result.add(checks.destination_step(dst.label, dst.state))
        return result
    if dst.kind == "host" and target.port is not None and dst.name is None:
        result.add(_host_port_step(c, target))
        return result
    path_net, src_ep = _path(c, src, dst)
    if src_ep is None:
        result.add(Step("interface", "fail", f"{src['name']} is on no network", "model",
                        f"tether network connect NETWORK {src['name']}"))
        return result
    _source_hops(c, result, src, src_ep, dst, path_net)
    if path_net is not None and dst.kind == "remote" and c.cluster is not None:
        _overlay_hops(c, result, src, src_ep, dst, path_net)
    events_outcome = _firewall(c, result, src, src_ep, dst, path_net, target, probe)
    _destination_hops(c, result, dst, target, events_outcome)
    return result


# ---------------------------------------------------------------------- the source
def _source_state(result: Trace, src: dict[str, Any]) -> bool:
    name = src["name"]
    if src.get("state") != "running":
        result.add(Step("source", "fail", f"{name} is {src.get('state')}", "model", f"tether start {name}"))
        return False
    if not src.get("netns") or src.get("net_mode") in ("host", "none"):
        result.add(Step("source", "fail", f"{name} has no network of its own (--net {src.get('net_mode')})", "model",
                        f"tether network connect NETWORK {name}"))
        return False
    result.add(Step("source", "ok", f"{name} running (pid {src.get('pid')}), net {src.get('net_mode')}", "model"))
    return True


def _path(c: Controller, src: dict[str, Any], dst: Destination) -> tuple[str | None, dict[str, Any] | None]:
    """The network the packet travels on (one SRC and DST share), and SRC's endpoint that
    sends it: on a shared network that one, else the one holding SRC's default route."""
    mine: dict[str, dict[str, Any]] = src.get("networks") or {}
    shared = [n for n in mine if n in dst.networks]
    if dst.network in shared:
        shared = [dst.network]
    if shared and not dst.dnat:
        return shared[0], dict(mine[shared[0]], network=shared[0])
    try:
        routes = c.ctx.datapath.container_routes(src["netns"])
    except DatapathError:
        routes = []
    default = checks.route_for(routes, "0.0.0.0") if routes else None
    for name, ep in mine.items():
        if default is not None and ep.get("ifname") == default.get("dev"):
            return None, dict(ep, network=name)
    first = next(iter(mine.items()), None)
    return None, (dict(first[1], network=first[0]) if first else None)


def _source_hops(c: Controller, result: Trace, src: dict[str, Any], ep: dict[str, Any], dst: Destination,
                 path_net: str | None) -> None:
    dp = c.ctx.datapath
    netns, name = src["netns"], src["name"]
    to = _dst_address(dst, path_net, ep) or ep["gateway"]
    try:
        result.add(checks.interface_step(dp.container_interfaces(netns), ep["ifname"], ep["address"], name))
        routes = dp.container_routes(netns, 6 if ":" in to else 4)
        network = c._network(ep["network"])
        result.add(checks.route_step(routes, to, name, network.name if network.internal else None))
        route = checks.route_for(routes, to)
        if route is not None:
            result.add(checks.neighbour_step(dp.container_neighbours(netns), checks.next_hop(route, to),
                                             route.get("dev")))
    except DatapathError as exc:
        result.add(Step("interface", "fail", f"cannot read {name}'s namespace: {exc}", "kernel", f"tether restart {name}"))
        return
    driver = c._driver(network)
    if not driver.host_link:  # a macvlan child: nothing of it on the host
        result.add(Step("parent", "info", f"{ep['ifname']} is a {network.driver} child of {network.bridge} "
                        "(no host side)", "model"))
        return
    bridge = driver.port_bridge(c.ctx, network)  # type: ignore[attr-defined]
    result.add(checks.bridge_port_step(dp.link_state(ep["host_ifname"]), dp.link_state(bridge),
                                       ep["host_ifname"], bridge, name))


def _dst_address(dst: Destination, path_net: str | None, src_ep: dict[str, Any]) -> str | None:
    if dst.kind == "host" or dst.dnat:
        return str(src_ep["gateway"])
    if path_net is not None and path_net in dst.networks:
        return str(dst.networks[path_net]["address"])
    return dst.address


# ---------------------------------------------------------------------- the overlay
def _overlay_hops(c: Controller, result: Trace, src: dict[str, Any], src_ep: dict[str, Any], dst: Destination,
                  path_net: str) -> None:
    assert c.cluster is not None
    network = c._network(path_net)
    if network.driver != "overlay":
        return
    record = dst.networks[path_net]
    here = c.cluster.node
    vxlan = f"tvx-{network.options.get('vni', '0')}"
    try:
        entries = c.ctx.datapath.peer_entries(vxlan)
    except DatapathError as exc:
        entries = {"neighbours": [], "fdb": []}
        result.add(Step("overlay entries", "info", f"cannot read {vxlan}: {exc}", "kernel"))
    result.add(checks.overlay_entries_step(entries, vxlan, record["address"], record["mac"], record["vtep"], here))
    restored = getattr(c.agent, "repaired", {}).get((vxlan, record["address"]))
    if restored is not None and time.time() - restored < _RECENT_REPAIR:
        result.add(Step("overlay entries", "info", f"the overlay agent on {here} restored the entries for "
                        f"{record['address']} {time.time() - restored:.0f} s ago (they had been deleted)", "kernel"))
    live = c.cluster.live_nodes()
    node = str(record.get("node"))
    if node not in live:
        result.add(Step("remote host", "fail", f"{node} is down (no heartbeat in the cluster store)", "cluster",
                        f"start tether's daemon on {node}; after the grace period its containers are withdrawn"))
        return
    result.add(Step("remote host", "ok", f"{node} up at {live[node]}", "cluster"))
    result.add(_reverse_step(c, src, src_ep, network, node))


def _reverse_step(c: Controller, src: dict[str, Any], src_ep: dict[str, Any], network: Network, node: str) -> Step:
    """Whether ``node`` has programmed SRC's endpoint: its ``/applied/`` revision against the
    revision of SRC's record (what the local daemon can know of the remote kernel)."""
    assert c.cluster is not None
    store = c.cluster.store
    mine = next((kv for kv in store.list(f"{ckeys.ENDPOINTS}{network.id}/")
                 if kv.value.get("container") == src["name"] and kv.value.get("node") == c.cluster.node), None)
    if mine is None:
        return Step("reverse entries", "fail", f"{src['name']}'s endpoint on {network.name} is not in the cluster store",
                    "cluster", f"tether network disconnect {network.name} {src['name']} && "
                    f"tether network connect {network.name} {src['name']}")
    applied = store.get(ckeys.applied_key(node))
    revision = int(applied.value.get("revision", 0)) if applied else 0
    if revision >= mine.mod_revision:
        return Step("reverse entries", "ok", f"{node} has programmed {src['name']} (applied {revision} >= "
                    f"{mine.mod_revision})", "cluster")
    return Step("reverse entries", "fail", f"{node} has not programmed {src['name']} yet (applied {revision} < "
                f"{mine.mod_revision})", "cluster", f"wait for {node}'s overlay agent, or restart its tether daemon")


# ---------------------------------------------------------------------- the firewall
def _rules(c: Controller, network_name: str | None) -> tuple[Any, Network | None]:
    if network_name is None:
        return None, None
    network = c._network(network_name)
    return c._driver(network).rules(network), network


def _firewall(c: Controller, result: Trace, src: dict[str, Any], src_ep: dict[str, Any], dst: Destination,
              path_net: str | None, target: Target, probe: bool) -> tuple[list[TraceEvent], str] | None:
    """The firewall step; the probe's events and outcome when one was sent."""
    src_rules, _ = _rules(c, src_ep["network"])
    dst_net = path_net or (next(iter(dst.networks)) if dst.networks else None)
    dst_rules, _ = _rules(c, dst_net) if dst.kind in ("container", "remote") else (None, None)
    if dst.kind == "host" and not dst.dnat:
        result.add(Step("firewall", "ok", "to the host itself: tether filters no input", "model"))
        return None
    model = checks.model_firewall_step(src_rules, dst_rules, dnat=dst.dnat, source=src["name"],
                                       src_net=src_ep["network"], dst_net=dst_net, destination=dst.name or dst.label)
    if dst.kind == "external" or not probe or c.firewall is None or not _probe_stays_inside(c, src_ep, dst, path_net):
        result.add(model)
        return None
    address = (dst.host_ip or src_ep["gateway"]) if dst.dnat else _dst_address(dst, path_net, src_ep)
    if address is None:
        result.add(model)
        return None
    protocol = target.protocol if target.port else "icmp"
    outcome: list[str] = []
    match = TraceMatch(src_ep["address"], address, protocol, target.port)
    try:
        events = c.firewall.trace(match, lambda: outcome.append(
            c.ctx.datapath.probe(src["netns"], address, protocol, target.port)))
    except (SystemFailure, DatapathError) as exc:
        result.add(Step(model.hop, model.status, f"{model.detail} (probe failed: {exc})", "model", model.fix))
        return None
    said = outcome[0] if outcome else "not sent"
    result.add(checks.probe_firewall_step(events, said, model, getattr(c.firewall, "table", "tether")))
    return events, said


def _probe_stays_inside(c: Controller, src_ep: dict[str, Any], dst: Destination, path_net: str | None) -> bool:
    """Whether a probe from SRC can only end in a namespace tether made: on a network both
    share, or routed by the host through a bridge or overlay of tether's (a macvlan
    endpoint's gateway is the LAN's router, a machine outside: no probe goes there)."""
    if path_net is not None and not dst.dnat:
        return True
    if not c._driver(c._network(src_ep["network"])).host_link:
        return False
    if dst.dnat:  # to the host's own address (of SRC's family), DNATed to a container's
        return dst.host_ip is None or (":" in dst.host_ip) == (":" in str(src_ep["address"]))
    return all(c._driver(c._network(name)).host_link for name in dst.networks if c.find_network(name) is not None)


# ---------------------------------------------------------------------- the destination
def _destination_hops(c: Controller, result: Trace, dst: Destination, target: Target,
                      probed: tuple[list[TraceEvent], str] | None) -> None:
    if dst.kind == "external":
        result.add(Step("destination", "info", f"{dst.address} is outside tether: not probed", "model"))
        return
    if dst.kind == "host" and not dst.dnat:
        result.add(Step("destination", "ok", "the host (the network's gateway address)", "model"))
        return
    result.add(checks.destination_step(dst.label, dst.state))
    port = dst.port or target.port
    if port is None:
        if probed is not None and probed[1] not in ("answered", "open"):
            result.add(Step("answer", "info", f"the echo request got {probed[1]}", "probe"))
        return
    address = next((ep["address"] for ep in dst.networks.values()), dst.address or "")
    if dst.kind == "container" and dst.netns:
        try:
            listeners = c.ctx.datapath.listening(dst.netns, target.protocol)
        except DatapathError as exc:
            result.add(Step("listening", "info", f"cannot read {dst.label}'s sockets: {exc}", "kernel"))
            return
        result.add(checks.listening_step(listeners, port, target.protocol, address, dst.label))
    elif probed is not None and probed[1] == "refused":
        result.add(Step("listening", "fail", f"{dst.label} refused {port}/{target.protocol}: nothing listens", "probe",
                        f"start the service in {dst.label} on port {port}, listening on 0.0.0.0"))
    elif probed is not None and probed[1] == "open":
        result.add(Step("listening", "ok", f"{dst.label} accepted {port}/{target.protocol}", "probe"))
    else:
        said = probed[1] if probed else "not probed"
        result.add(Step("listening", "info", f"{dst.label}'s sockets are on {dst.node}: probe {said}", "probe"))


# ---------------------------------------------------------------------- resolving DST
def _resolve(c: Controller, target: Target, src: dict[str, Any]) -> Destination:
    if target.kind == "container":
        return _resolve_container(c, target)
    if target.kind == "host":
        return _resolve_host(c, target)
    assert target.address is not None
    for ctr in c.list_containers(all_=False):
        for net, ep in (c.inspect_container(ctr["name"]).get("networks") or {}).items():
            if target.address in (ep.get("address"), ep.get("address6")):
                return _local(c.inspect_container(ctr["name"]), net)
    remote = _remote_where(c, lambda rec: target.address in (rec.get("address"), rec.get("address6")))
    if remote is not None:
        return remote
    if target.address in c.ctx.datapath.host_addresses():
        return Destination("host", "host", address=target.address)
    return Destination("external", target.address, address=target.address)


def _local(info: dict[str, Any], network: str | None = None) -> Destination:
    networks = info.get("networks") or {}
    address = (networks.get(network) or next(iter(networks.values()), {})).get("address") if networks else None
    return Destination("container", info["name"], address=address, name=info["name"], state=info.get("state"),
                       netns=info.get("netns"), networks=networks, network=network)


def _resolve_container(c: Controller, target: Target) -> Destination:
    whole = f"{target.name}.{target.network}" if target.network else str(target.name)
    for ref, network in ((whole, None), (target.name, target.network)) if target.network else ((whole, None),):
        try:
            info = c.inspect_container(str(ref))
        except NotFound:
            continue
        if network is not None and network not in (info.get("networks") or {}) and info.get("state") == "running":
            raise NotFound(f"container {ref} is not on network {network}: see `tether inspect {ref}`")
        return _local(info, network)
    remote = _remote_where(c, lambda rec: rec.get("container") == target.name)
    if remote is not None:
        remote.network = target.network
        return remote
    raise NotFound(f"container {whole!r} not found here or in the cluster: list containers with `tether ps -a`")


def _remote_where(c: Controller, wanted: Any) -> Destination | None:
    """A container on another host of the cluster, from its overlay endpoint records."""
    if c.cluster is None:
        return None
    found: Destination | None = None
    names = {n.id: n.name for n in c._all_networks()}
    for kv in c.cluster.store.list(ckeys.ENDPOINTS):
        rec = kv.value
        if rec.get("kind") != "container" or rec.get("node") == c.cluster.node or not wanted(rec):
            continue
        if found is None:
            found = Destination("remote", f"{rec.get('container')} on {rec.get('node')}", address=rec.get("address"),
                                name=rec.get("container"), state="running", node=rec.get("node"))
        found.networks[names.get(rec.get("network_id", ""), rec.get("network_id", ""))] = rec
    return found


def _resolve_host(c: Controller, target: Target) -> Destination:
    """``host``, or ``host:PORT``: the local container the port is published to, if any."""
    if target.port is None:
        return Destination("host", "host")
    for ctr in c.list_containers(all_=True):
        info = c.inspect_container(ctr["name"])
        for p in info.get("ports") or []:
            if p.get("host_port") == target.port and p.get("protocol") == target.protocol and _reachable_ip(p):
                dst = _local(info, p.get("network"))
                dst.dnat, dst.port, dst.label = True, int(p["container_port"]), f"{info['name']} (published)"
                dst.host_ip = p.get("host_ip") if p.get("host_ip") not in (None, "0.0.0.0", "::") else None
                return dst
    return Destination("host", "host")


def _reachable_ip(port: dict[str, Any]) -> bool:
    host_ip = port.get("host_ip")
    return not host_ip or not ipaddress.ip_address(host_ip).is_loopback


def _host_port_step(c: Controller, target: Target) -> Step:
    """``host:PORT`` that no container publishes: a host process may still hold it."""
    assert target.port is not None
    holder = c.ctx.datapath.host_ports().holder(target.protocol, target.port, None)
    what = f"host port {target.port}/{target.protocol}"
    if holder:
        return Step("published port", "ok", f"{what} is not published, but {holder} on the host listens on it",
                    "kernel")
    return Step("published port", "fail", f"{what} is not published by any container, and nothing on the host "
                "listens on it", "model",
                f"publish it when the container is created: tether run -p {target.port}:CONTAINER_PORT "
                f"[--net NETWORK] ... (a running container cannot gain a port: recreate it)")

