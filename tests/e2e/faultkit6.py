"""The IPv6 half of the fault-injection invariants (``test_fault_injection.py``), and the
published-port check written once for both families.

One of the suite's two bridge networks is dual stack (``NETWORKS6``); every container on
it holds a v6 address beside its v4 one, some of them asked for with ``--ip6`` from a
small pool (``IP6_POOL``), so requests collide on purpose, and every ``-p`` publishes on
both families. After a SIGKILL and the daemon's restart, ``check_round6`` holds the v6
side of the kernel against the records, as ``check_round`` does for v4:

- every recorded v6 address is on its interface inside the container's namespace, not
  tentative (DAD is off: no tentative window), and the namespace holds no other global v6
  address; a namespace with a v6 endpoint has one v6 default route, via the gateway6 of
  one of its endpoints, out of that endpoint's interface;
- no v6 address is held twice (records, namespaces, the host's own interfaces);
- every v6 lease has a live owner whose record holds that address, and every recorded v6
  address its lease; the dual-stack bridge holds its gateway6;
- acknowledged ``--ip6`` requests got their address, refused ones left nothing, and a
  probe's fresh allocation on the dual-stack network has a v6 address;
- the elements of the ``ip6 tether`` table's ``ports`` and ``ports_ip`` maps are exactly
  the records' published ports aimed at the containers' v6 addresses
  (``check_ports``, which also serves the ``ip tether`` table); and the daemon's [::1]
  relay (kernel NAT cannot serve ::1) listens on exactly the ports of running containers
  published there or on every address.

Violation kinds carry a ``6`` where they have a v4 twin (``dup-address6``), so the report
tells the families apart. Nothing here changes the kernel or the daemon's state.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "IP6_POOL",
    "NETWORKS6",
    "Element",
    "KernelView6",
    "check_ports",
    "check_round6",
    "element_text",
    "kernel_view6",
]

NETWORKS6 = {"fb": "fd00:242::/64"}  # the dual-stack network's v6 subnet (a ULA, inside the test's host only)
IP6_POOL = (0xC8, 0xC9, 0xCA, 0xCB)  # host parts handed to --ip6: small, so requests collide

# A port map element: (host address or None for every address of the family, protocol,
# host port, container address, container port).
Element = tuple[str | None, str, int, str, int]
Add = Callable[[str, str], None]  # RoundLog.add: (kind, detail)
_WILDCARDS = {"0.0.0.0": 4, "::": 6}


class _Op(Protocol):  # test_fault_injection.Op, as far as the v6 checks read it
    kind: str
    target: str
    network: str | None
    ip6: str | None
    refused: bool

    @property
    def ok(self) -> bool: ...

    def describe(self) -> str: ...


def _ip_json(cmd: list[str], timeout: float = 10) -> Any:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip() or f"rc {r.returncode}")
    return json.loads(r.stdout or "[]")


# ---------------------------------------------------------------------- the kernel's view
@dataclass
class KernelView6:
    ns_addrs: dict[str, list[tuple[str, str, list[str]]]]  # netns -> [(ifname, global v6 address, DAD flags)]
    ns_defaults: dict[str, list[tuple[str | None, str | None]]]  # netns -> v6 default routes [(dev, gateway)]
    ns_errors: dict[str, str]
    host_addrs: dict[str, list[str]]  # ifname -> global v6 addresses in the host netns
    ports: list[Element] | None  # the ip6 table's map elements; None: no table
    nft_error: str = ""
    loopback: set[tuple[str, int]] | None = None  # (protocol, port) listening on [::1] in the host netns


def _global6(data: list[dict[str, Any]]) -> list[tuple[str, str, list[str]]]:
    """(ifname, address, flags) of every global-scope v6 address (link-local and ::1 are
    the kernel's own), lo excluded; flags: which of tentative/dadfailed/deprecated are set."""
    return [
        (i["ifname"], a["local"], [f for f in ("tentative", "dadfailed", "deprecated") if a.get(f)])
        for i in data
        if i.get("ifname") != "lo"
        for a in i.get("addr_info", [])
        if a.get("family") == "inet6" and a.get("scope") == "global"
    ]


def kernel_view6(host_enter: list[str], netns: list[str], ports: list[Element] | None, nft_error: str) -> KernelView6:
    """The v6 side of the host (entered with ``host_enter``) and of the namespaces ``netns``;
    ``ports``: the ip6 table's elements, read by the caller with the v4 ones."""
    ns_addrs: dict[str, list[tuple[str, str, list[str]]]] = {}
    ns_defaults: dict[str, list[tuple[str | None, str | None]]] = {}
    ns_errors: dict[str, str] = {}
    for ns in netns:
        try:
            ns_addrs[ns] = _global6(_ip_json(["ip", "-n", ns, "-j", "-6", "addr", "show"]))
            routes = _ip_json(["ip", "-n", ns, "-j", "-6", "route", "show", "default"])
        except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
            ns_errors[ns] = str(exc)
            continue
        ns_defaults[ns] = [(r.get("dev"), r.get("gateway")) for r in routes]
    host_addrs: dict[str, list[str]] = {}
    for ifname, address, _ in _global6(_ip_json([*host_enter, "ip", "-j", "-6", "addr", "show"])):
        host_addrs.setdefault(ifname, []).append(address)
    return KernelView6(ns_addrs, ns_defaults, ns_errors, host_addrs, ports, nft_error, _loopback_listeners(host_enter))


def _loopback_listeners(host_enter: list[str]) -> set[tuple[str, int]] | None:
    """(protocol, port) of every socket listening on [::1] in the host netns (None: ss failed)."""
    r = subprocess.run([*host_enter, "ss", "-Hlntu"], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        return None
    found = set()
    for line in r.stdout.splitlines():  # netid state recv-q send-q local peer
        fields = line.split()
        if len(fields) >= 5 and fields[4].startswith("[::1]:"):
            found.add((fields[0], int(fields[4].rpartition(":")[2])))
    return found


# ---------------------------------------------------------------------- published ports, both families
def element_text(e: Element) -> str:
    host = "*" if e[0] is None else f"[{e[0]}]" if ":" in e[0] else e[0]
    target = f"[{e[3]}]" if ":" in e[3] else e[3]
    return f"{host}:{e[2]}/{e[1]} -> {target}:{e[4]}"


def _targets(host_ip: str | None, ep: dict[str, Any], family: int) -> list[tuple[str | None, str]]:
    """(element host address, container address) a port published on ``host_ip`` gives in
    ``family``'s map: as the README says, ``-p 8080:80`` both families the endpoint has,
    ``0.0.0.0``/``::`` every address of one family, an address its own family only."""
    address = ep.get("address") if family == 4 else ep.get("address6")
    if address is None:
        return []
    if host_ip is None:
        return [(None, address)]
    if (_WILDCARDS.get(host_ip) or ipaddress.ip_address(host_ip).version) != family:
        return []
    return [(None if host_ip in _WILDCARDS else host_ip, address)]


def _port_elements(records: list[dict[str, Any]], family: int) -> tuple[set[Element], set[Element], set[str | None]]:
    """What ``family``'s maps may hold (every container's published ports), what they must
    hold (running containers'), and the addresses of that family the records hold."""
    expected: set[Element] = set()
    wanted: set[Element] = set()
    held: set[str | None] = set()
    for c in records:
        for ep in c["networks"].values():
            held.add(ep.get("address") if family == 4 else ep.get("address6"))
        ep = c["networks"].get(c["net_mode"])
        for p in c.get("ports", []) if ep is not None else []:
            for host_ip, address in _targets(p["host_ip"], ep, family):
                element = (host_ip, p["protocol"], p["host_port"], address, p["container_port"])
                expected.add(element)
                if c["state"] == "running":
                    wanted.add(element)
    return expected, wanted, held


def check_ports(add: Add, family: int, records: list[dict[str, Any]], elements: list[Element] | None, nft_error: str) -> None:
    """Every element of ``family``'s ``ports``/``ports_ip`` maps aims at a container's
    published port on its address; every running container's ports are in the maps."""
    suffix = "" if family == 4 else "6"
    if elements is None:
        add(f"nft{suffix}-table-missing", nft_error)
        return
    expected, wanted, held = _port_elements(records, family)
    for element in elements:
        if element not in expected:
            why = "an address no container holds" if element[3] not in held else "no container's published port"
            add(f"nft{suffix}-stale-element", f"port element {element_text(element)} points at {why}")
    for element in sorted(wanted - set(elements), key=str):
        add(f"nft{suffix}-missing-port", f"port {element_text(element)} of a running container is not in the map")


# ---------------------------------------------------------------------- the v6 invariants
def check_round6(
    add: Add,
    ops: list[_Op],
    records: list[dict[str, Any]],
    networks: dict[str, dict[str, Any]],
    view: KernelView6,
    store: dict[str, Any],
) -> None:
    """The v6 invariants of a host after a crash and a restart (see the module docstring).
    The namespaces' own existence and their v4 side are ``check_round``'s."""
    ids = {c["id"]: c for c in records}
    net_by_id = {n["id"]: n for n in networks.values()}
    endpoints6 = [(c, net, ep) for c in records for net, ep in c["networks"].items() if ep.get("address6")]

    # records: no v6 address recorded twice
    seen: dict[str, str] = {}
    for c, net, ep in endpoints6:
        other = seen.setdefault(ep["address6"], c["name"])
        if other != c["name"]:
            add("dup-address6", f"records: {other} and {c['name']} both hold {ep['address6']} (on {net})")

    # namespaces: their global v6 addresses are exactly the records', usable, each in one place
    owner_of_ns = {c["netns"]: c for c in records if c.get("netns")}
    holders: dict[str, list[str]] = {}
    for ns, addrs in view.ns_addrs.items():
        c = owner_of_ns.get(ns)
        recorded = {(ep["ifname"], ep["address6"]) for ep in (c or {}).get("networks", {}).values() if ep.get("address6")}
        for ifname, address, flags in addrs:
            holders.setdefault(address, []).append(ns)
            if flags:
                add("addr6-tentative", f"{ns}: {ifname} holds {address} {' '.join(flags)}")
            if c is not None and (ifname, address) not in recorded:
                add("addr6-without-record",
                    f"{ns}: {ifname} holds {address}, but {c['name']}'s records say {sorted(recorded) or 'no v6 endpoint'}")
    for address, nss in holders.items():
        if len(nss) > 1:
            add("dup-address6", f"kernel: {address} is held by namespaces {sorted(nss)}")
    for ifname, addrs in view.host_addrs.items():
        for address in addrs:
            if address in holders:
                add("dup-address6", f"kernel: {address} is on the host's {ifname} and in {holders[address]}")

    # every record's v6 address on its interface; one v6 default route via one of its gateways
    for c in records:
        ns = c.get("netns")
        if not ns or c["state"] == "creating" or ns not in view.ns_addrs:
            if ns in view.ns_errors:
                add("netns-unreadable", f"{ns} of {c['name']} (v6): {view.ns_errors[ns]}")
            continue  # a namespace that is gone is check_round's record-without-netns
        have = {(ifname, address) for ifname, address, _ in view.ns_addrs[ns]}
        mine = [(net, ep) for net, ep in c["networks"].items() if ep.get("address6")]
        for net, ep in mine:
            if (ep["ifname"], ep["address6"]) not in have:
                add("record-without-addr6",
                    f"{c['name']} ({c['state']}) records {ep['ifname']} {ep['address6']} on {net}; "
                    f"its namespace has {sorted(have) or 'no global v6 address'}")
        defaults = view.ns_defaults.get(ns, [])
        allowed = {(ep["ifname"], ep["gateway6"]) for net, ep in mine
                   if ep.get("gateway6") and not networks.get(net, {}).get("internal")}  # internal: no way out
        if allowed and not any(route in allowed for route in defaults):
            add("route6-missing", f"{c['name']} ({c['state']}, {ns}) has no v6 default route via "
                f"{' or '.join(f'{gw} dev {dev}' for dev, gw in sorted(allowed))}; its v6 default routes: {defaults or 'none'}")
        for route in defaults:
            if route not in allowed:
                add("route6-stray", f"{c['name']} ({ns}) has a v6 default route via {route[1]} dev {route[0]}, "
                    f"which no endpoint of its records gives ({sorted(allowed) or 'none'})")

    # the dual-stack bridges hold their v6 gateways
    for net in networks.values():
        if net.get("gateway6") and net["gateway6"] not in view.host_addrs.get(net["bridge"], []):
            add("network-without-bridge", f"network {net['name']}: bridge {net['bridge']} lacks {net['gateway6']}")

    # leases: each v6 lease a live owner holding that address; each recorded v6 address its lease
    leases: dict[tuple[str, str], str | None] = {}
    for key, value in store.items():
        if key.startswith("/ipam/"):
            _, _, net_id, address = key.split("/", 3)
            if ":" in address:
                leases[(net_id, address)] = value.get("owner")
    for (net_id, address), owner in leases.items():
        c = ids.get(owner or "")
        net = net_by_id.get(net_id, {}).get("name", f"<network id {net_id}>")
        if c is None:
            add("lease6-without-owner", f"lease {address} on {net} is owned by {owner}, which is no container")
        elif c["networks"].get(net, {}).get("address6") != address:
            add("lease6-without-owner", f"lease {address} on {net} is owned by {c['name']}, whose records say {c['networks'].get(net)}")
    for c, net, ep in endpoints6:
        owner = leases.get((ep["network_id"], ep["address6"]))
        if owner != c["id"]:
            holder = ids[owner]["name"] if owner in ids else owner
            add("endpoint-without-lease6", f"{c['name']} holds {ep['address6']} on {net} without a lease (lease owner: {holder})")

    # the [::1] relay: a listener for every v6 port of a running container on ::1 or every address
    if view.loopback is not None:
        expected, wanted, _ = _port_elements(records, 6)
        relayed = {(e[1], e[2]) for e in wanted if e[0] in (None, "::1")}
        for proto, port in sorted(relayed - view.loopback):
            add("relay6-missing", f"nothing listens on [::1]:{port}/{proto}, published by a running container")
        for proto, port in sorted(view.loopback - {(e[1], e[2]) for e in expected if e[0] in (None, "::1")}):
            add("relay6-stale", f"[::1]:{port}/{proto} listens in the host, but no container publishes it")

    # --ip6 requests: acknowledged ones got their address, refused ones left nothing; a probe
    # on a dual-stack network got a v6 address (that it collides with nothing is the above)
    by_name = {c["name"]: c for c in records}
    for op in ops:
        c = by_name.get(op.target)
        ep = (c or {}).get("networks", {}).get(op.network or "")
        if c is None or ep is None:
            continue
        if op.ok and op.ip6 and op.kind in ("base", "run", "connect") and ep.get("address6") != op.ip6:
            add("ack-lost", f"{op.describe()} but {op.target} holds {ep.get('address6')} on {op.network}")
        elif op.refused and op.ip6 and op.kind == "connect" and ep.get("address6") == op.ip6:
            add("refused-op-left-state", f"{op.describe()} yet {op.target} holds {op.ip6} on {op.network}")
        if op.ok and op.kind == "probe" and networks.get(op.network or "", {}).get("subnet6") and not ep.get("address6"):
            add("probe-without-v6", f"{op.describe()} but it has no v6 address on {op.network}: {ep}")
