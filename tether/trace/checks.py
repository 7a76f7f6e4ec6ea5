"""The verdict logic of ``tether trace``: facts in, ``Step`` values out. No I/O.

Each function takes what was read (from tether's records, the kernel or one probe) and
says whether that hop holds, why not, and what fixes it. ``forward_verdict`` evaluates
tether's own ``forward`` chain (``firewall/chains.py``) from the networks' inputs, in the
chain's order; what the admin's ``user`` chain or another table does only a probe can
tell (``probe_firewall_step``).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from ..firewall.nftrace import TraceEvent, first_drop
from ..firewall.rules import NetworkRules
from .model import Step

__all__ = [
    "Forward",
    "bridge_port_step",
    "destination_step",
    "forward_verdict",
    "interface_step",
    "listening_step",
    "model_firewall_step",
    "neighbour_step",
    "next_hop",
    "overlay_entries_step",
    "probe_firewall_step",
    "route_for",
    "route_step",
]

_GOOD_NEIGHBOUR = ("reachable", "stale", "delay", "probe", "permanent", "noarp")


def route_for(routes: list[dict[str, Any]], address: str) -> dict[str, Any] | None:
    """The route the kernel would pick for ``address`` among main-table ``routes`` (longest
    prefix; ``default`` is /0), or None."""
    target = ipaddress.ip_address(address)
    best: tuple[int, dict[str, Any]] | None = None
    for route in routes:
        dst = route.get("dst") or "default"
        net = ipaddress.ip_network("0.0.0.0/0" if target.version == 4 else "::/0") if dst == "default" else (
            ipaddress.ip_network(dst, strict=False)
        )
        if net.version == target.version and target in net and (best is None or net.prefixlen > best[0]):
            best = (net.prefixlen, route)
    return None if best is None else best[1]


def next_hop(route: dict[str, Any], address: str) -> str:
    """Whom the packet goes to first: the gateway, or ``address`` itself on a link."""
    return str(route.get("gateway") or address)


def interface_step(interfaces: list[dict[str, Any]], ifname: str, address: str, source: str) -> Step:
    link = next((i for i in interfaces if i.get("ifname") == ifname), None)
    fix = f"tether restart {source}"
    if link is None:
        return Step("interface", "fail", f"{source} has no {ifname} (tether's record says it should)", "kernel", fix)
    if link.get("state") != "up":
        return Step("interface", "fail", f"{ifname} in {source} is down", "kernel", fix)
    held = [a.split("/")[0] for a in link.get("addresses", []) + link.get("addresses6", [])]
    if address not in held:
        return Step("interface", "fail", f"{ifname} in {source} lacks its address {address}", "kernel", fix)
    return Step("interface", "ok", f"{source} {ifname} {address} up", "kernel")


def route_step(routes: list[dict[str, Any]], address: str, source: str, internal: str | None = None) -> Step:
    """The route ``source`` takes to ``address``; ``internal`` names its network when that is
    --internal (which has no default route: that is why)."""
    route = route_for(routes, address)
    if route is None and internal is not None:
        return Step(
            "route", "fail", f"{internal} is --internal: {source} has no route out of it to {address}", "kernel",
            f"tether network connect bridge {source}  (a network that is not --internal)",
        )
    if route is None:
        return Step(
            "route", "fail", f"{source} has no route to {address}", "kernel",
            f"tether network connect NETWORK {source} (a network that reaches {address})",
        )
    how = f"via {route['gateway']}" if route.get("gateway") else "on link"
    return Step("route", "ok", f"{address} {how} dev {route.get('dev')} ({route.get('dst')})", "kernel")


def neighbour_step(neighbours: list[dict[str, Any]], hop: str, dev: str | None) -> Step:
    """The neighbour entry for the next hop: only informative (ARP/NDP resolves on the
    first packet), unless it is resolved to nothing."""
    entry = next((n for n in neighbours if n.get("address") == hop and (dev is None or n.get("dev") == dev)), None)
    if entry is None:
        return Step("neighbour", "info", f"no entry for {hop} yet (resolved at the first packet)", "kernel")
    if entry.get("state") in _GOOD_NEIGHBOUR:
        return Step("neighbour", "ok", f"{hop} at {entry.get('mac')} ({entry.get('state')})", "kernel")
    return Step("neighbour", "info", f"{hop}: {entry.get('state')} (the last resolution got no answer)", "kernel")


def bridge_port_step(port: dict[str, Any] | None, bridge: dict[str, Any] | None, host_ifname: str,
                     bridge_name: str, source: str) -> Step:
    fix = f"tether restart {source}"
    if port is None:
        return Step("bridge port", "fail", f"the host end {host_ifname} of {source}'s veth is missing", "kernel", fix)
    if port.get("master") != bridge_name:
        where = port.get("master") or "no bridge"
        return Step("bridge port", "fail", f"{host_ifname} is on {where}, not on {bridge_name}", "kernel", fix)
    if not port.get("up"):
        return Step("bridge port", "fail", f"{host_ifname} on {bridge_name} is down", "kernel", fix)
    if bridge is None or not bridge.get("up"):
        state = "missing" if bridge is None else "down"
        return Step("bridge port", "fail", f"bridge {bridge_name} is {state}", "kernel",
                    "restart the tether daemon (reconcile rebuilds the bridge)")
    return Step("bridge port", "ok", f"{host_ifname} on {bridge_name}, both up", "kernel")


def overlay_entries_step(entries: dict[str, list[tuple[str, str]]], vxlan: str, ip: str, mac: str, vtep: str,
                         here: str) -> Step:
    """The permanent neighbour entry (ip -> mac) and the FDB entry (mac -> vtep) for a remote
    endpoint on this host's VXLAN device."""
    missing = []
    if (ip, mac) not in entries.get("neighbours", []):
        missing.append(f"neighbour entry {ip} -> {mac}")
    if (mac, vtep) not in entries.get("fdb", []):
        missing.append(f"FDB entry {mac} -> {vtep}")
    if not missing:
        return Step("overlay entries", "ok", f"{vxlan} on {here}: {ip} at {mac} behind {vtep}", "kernel")
    return Step(
        "overlay entries", "fail", f"{vxlan} on {here} lacks the {' and the '.join(missing)}", "kernel",
        f"nothing to type: the overlay agent on {here} restores it within 2 s (its peer check); "
        f"if it stays missing, restart the tether daemon on {here}",
    )


class Forward:
    """The verdicts of tether's forward chain, by the rule that decides."""

    ICC = "iifname . oifname @icc_pairs accept"
    INTERNAL_IN = "iifname @internal_bridges drop"
    INTERNAL_OUT = "oifname @internal_bridges drop"
    DNAT = "ct status dnat accept"
    ISOLATION = "iifname @bridges oifname @bridges drop"
    OUT = "(no rule: policy accept, out of the host)"


def forward_verdict(src: NetworkRules, dst: NetworkRules | None, dnat: bool = False) -> tuple[bool, str]:
    """(accepted, deciding rule) of tether's forward chain for a packet from a container on
    ``src`` to one on ``dst`` (None: out of the host), DNAT'ed by a published port or not.
    The ``user`` chain is left out (the admin's: only a probe tells)."""
    same = dst is not None and dst.bridge == src.bridge
    if same and src.icc:
        return True, Forward.ICC
    if src.internal:
        return False, Forward.INTERNAL_IN
    if dst is not None and dst.internal:
        return False, Forward.INTERNAL_OUT
    if dnat:
        return True, Forward.DNAT
    if dst is not None:
        return False, Forward.ISOLATION
    return True, Forward.OUT


def model_firewall_step(src: NetworkRules, dst: NetworkRules | None, *, dnat: bool, source: str,
                        src_net: str, dst_net: str | None, destination: str) -> Step:
    """tether's own rules, evaluated from its model: the reason and the fix in words."""
    accepted, rule = forward_verdict(src, dst, dnat)
    if accepted:
        why = {Forward.ICC: f"same network {src_net}", Forward.DNAT: "a published port (DNAT)",
               Forward.OUT: "out of the host"}[rule]
        return Step("firewall", "ok", f"tether's rules accept: {why}", "model")
    if rule == Forward.INTERNAL_IN:
        where = "out of the network" if dst is None else f"into {dst_net}"
        return Step("firewall", "fail", f"{src_net} is --internal: nothing leaves it ({where})", "model",
                    f"tether network connect {dst_net or 'bridge'} {source}  (a network that is not --internal)")
    if rule == Forward.INTERNAL_OUT:
        return Step("firewall", "fail", f"{dst_net} is --internal: only its own members reach {destination}", "model",
                    f"tether network connect {dst_net} {source}")
    if dst is not None and dst.bridge == src.bridge:
        pair = f"{source}-{destination}"[:40]
        return Step("firewall", "fail", f"{src_net} has icc=false: its members cannot talk to each other", "model",
                    f"tether network create {pair} && tether network connect {pair} {source} && "
                    f"tether network connect {pair} {destination}  (or publish the port and use host:PORT)")
    return Step("firewall", "fail", f"different networks: {source} is not on {dst_net} (isolation)", "model",
                f"tether network connect {dst_net} {source}")


def probe_firewall_step(events: list[TraceEvent], outcome: str, model: Step, own_table: str) -> Step:
    """The probe's account of the firewall: the first rule or policy that dropped it in any
    table, weighed against tether's model (``own_table``: "tether")."""
    drop = first_drop(events)
    seen = f"probe {outcome}, {len(events)} trace events"
    if drop is None:
        if not events and outcome not in ("open", "answered", "refused"):
            return Step(model.hop, model.status, f"{model.detail} (the probe was not seen by the trace)",
                        "model", model.fix)
        if model.status == "fail" and outcome in ("open", "answered", "refused"):
            # the kernel let it through where the model says no: say both
            return Step("firewall", "info", f"{model.detail}, yet the probe got through ({seen})", "probe")
        if model.status == "fail":  # lost without a rule's verdict (routing: no forwarding there)
            return Step("firewall", "fail", f"{model.detail} (probe: {outcome}, no table's rule saw it dropped)",
                        "probe", model.fix)
        return Step("firewall", "ok", f"{model.detail}; no table drops the probe ({seen})", "probe")
    where = f"{drop.table} chain {drop.chain}"
    text = f"rule `{drop.rule}`" if drop.rule else f"policy {drop.verdict}"
    family, _, table = drop.table.partition(" ")
    if table == own_table and drop.chain == "user":
        fix = (f"nft delete rule {drop.table} user handle {drop.handle}" if drop.handle is not None
               else f"nft -a list chain {drop.table} user  # then: nft delete rule {drop.table} user handle N")
        return Step("firewall", "fail", f"the admin's {text} in {where} drops it", "probe", fix)
    if table == own_table and model.status == "fail":
        return Step("firewall", "fail", f"{model.detail} (probe: dropped by {text} in {where})", "probe", model.fix)
    if table == own_table:
        return Step("firewall", "fail", f"{text} in {where} drops it", "probe",
                    "restart the tether daemon (reconcile rewrites tether's table)")
    return Step("firewall", "fail", f"{text} in {where} drops it (not tether's table: its accept cannot "
                f"override another table's drop)", "probe",
                f"allow it in that table: nft -a list chain {drop.table} {drop.chain}")


def listening_step(listeners: list[tuple[str, int]], port: int, protocol: str, address: str, name: str) -> Step:
    """Whether a socket inside the destination takes ``port`` on ``address``."""
    wildcard = ("0.0.0.0", "::")
    found = [(a, p) for a, p in listeners if p == port and (a == address or a in wildcard)]
    if found:
        return Step("listening", "ok", f"{name} listens on {found[0][0]}:{port}/{protocol}", "kernel")
    loopback = [(a, p) for a, p in listeners if p == port and ipaddress.ip_address(a).is_loopback]
    why = f"{name} listens on {port}/{protocol} only on {loopback[0][0]}" if loopback else (
        f"nothing in {name} listens on {port}/{protocol}")
    return Step("listening", "fail", why, "kernel",
                f"start the service in {name} on port {port}, listening on 0.0.0.0 (or {address})")


def destination_step(name: str, state: str | None, exists: bool = True) -> Step:
    if not exists:
        return Step("destination", "fail", f"{name} is gone (no such container here or in the cluster)", "model",
                    f"tether run --name {name} ...")
    if state != "running":
        return Step("destination", "fail", f"{name} is {state}: it holds no address while stopped", "model",
                    f"tether start {name}")
    return Step("destination", "ok", f"{name} running", "model")
