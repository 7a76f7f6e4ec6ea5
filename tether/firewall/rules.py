"""Pure rendering of tether's nftables ruleset: input values in, nft text out, no I/O.

The ruleset has a constant number of rules. What changes when a network or a published
port comes or goes is the *elements* of a few sets and maps, so every change is one
small ``add element`` / ``delete element`` transaction, and a full resync is ``flush`` +
``add element`` in one transaction (never a delete-and-recreate of the table, which
refuses a few new connections under load).

Everything lives in one table, ``ip <table>`` (default ``tether``)::

    set bridges           ifname                  every tether bridge
    set masq_subnets      ipv4_addr, interval     subnets of networks with masquerade (not internal)
    set icc_pairs         ifname . ifname         (br, br) for every network with icc
    set internal_bridges  ifname                  bridges of internal networks
    set bridge_subnets    ifname . ipv4_addr, interval   (br, subnet) of every network (hairpin)
    map ports             inet_proto . inet_service : ipv4_addr . inet_service
                          ports published on every local address of the host
    map ports_ip          ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service
                          ports published on one host address (possibly 127.0.0.1)

Chains, in the order a packet meets them (lower priority first on the same hook):

    guard        filter prerouting  priority raw (-300)
        Drops packets from a tether bridge with a 127.0.0.0/8 source or destination. The
        bridges need ``route_localnet=1`` (see below), which would otherwise let a
        container reach the host's loopback-only services (CVE-2020-8558).
    prerouting   nat prerouting     priority dstnat (-100)
    output       nat output         priority -100
        Both: ``fib daddr type local dnat ip to <key> map @ports_ip`` then ``... @ports``.
        One rule per map serves any number of ports. The same two rules in ``output``
        publish ports to the host itself (127.0.0.1 included) without a userland proxy.
        ``fib daddr type local`` keeps a port bound to a host address from capturing
        traffic that is only routed through the host. DNAT keeps the client's address.
    forward      filter forward     priority filter (0), policy accept
        jump user                               the admin's chain, created empty, never touched again
        ct state established,related accept
        iifname . oifname @icc_pairs accept     same bridge, icc on (internal networks too)
        iifname @internal_bridges drop          internal: no way out...
        oifname @internal_bridges drop          ...and nothing in (the host itself does not forward)
        ct status dnat accept                   published ports, from outside or from other bridges
        iifname @bridges oifname @bridges drop  isolation between networks, and icc off
        ip daddr @routed_subnets accept         overlay subnets: any cluster host is a way in
        ip daddr @masq_subnets drop             no direct routing into a NAT'ed network
    postrouting  nat postrouting    priority srcnat (100)
        ip saddr @masq_subnets oifname != @bridges masquerade        outbound NAT
        oifname @bridges ip saddr 127.0.0.0/8 ct status dnat masquerade   host via 127.0.0.1
        ct status dnat oifname . ip saddr @bridge_subnets masquerade  hairpin: back out the
                                                 bridge the client sits on (includes a container
                                                 reaching its own published port)

Order in ``forward``: icc accept comes before the internal drops (containers of one
internal network still talk to each other); the internal drops come before ``ct status
dnat accept`` (a port published from an internal network is reachable only from the host,
whose own connections are not forwarded); ``ct status dnat accept`` comes before the
isolation drop, so a container of another network, or a neighbour on an icc=false
network, reaches a published port through a host address, as with Docker's userland
proxy (the DNAT'ed packet then keeps its source address).

Findings behind the rules (nft 1.0.6, kernel 6.18, br_netfilter on):
- Bridged frames between two ports of one bridge do pass the IPv4 forward hook, and there
  ``iifname``/``oifname`` are the *bridge* device, not the veth ports (measured with
  counters). So ``(br . br)`` in ``icc_pairs`` covers bridged and routed same-bridge
  traffic alike. ``meta ibrname``/``obrname`` parse but the kernel refuses them in the ip
  family ("Operation not supported"): no port-level key is available there.
- ``dnat ip to meta l4proto . th dport map @ports`` (concatenated key *and* data) works in
  text syntax; nft 1.0.6 has no ``destroy``, and ``delete element`` of an absent element
  fails the whole transaction, so removal renders ``add element`` followed by ``delete
  element`` of the same elements in one transaction: adding an existing identical element
  is a no-op, so the pair always succeeds and always leaves the element absent. (It
  fails only on a clash: a map key holding other data, an overlapping interval; then the
  Firewall reads the set and deletes exactly the elements present.)
- ``dstnat`` is rejected as a priority name on the nat output hook: ``-100`` is used.
- On one hook, the first NAT rule that matches (any table) decides: a DNAT in another
  table's chain of lower priority, or registered earlier at the same priority, wins.
- Only tether's table is governed here. An ``accept`` ends evaluation in this table only:
  a ``drop`` in another table on the same hook (a host firewall, Docker's FORWARD policy)
  still applies to published ports. Published ports are forwarded traffic, so the host's
  *input* policy does not cover them: restrict them in the ``user`` chain, which sees
  DNAT'ed addresses (match the published port with ``meta l4proto tcp ct original
  proto-dst 8080``; nft 1.0.6 needs the protocol stated first).

What the caller must set in the host namespace (measured; the firewall sets none of it):
- forwarding: ``net.ipv4.ip_forward=1``, or per interface ``net.ipv4.conf.X.forwarding=1``
  on the bridges AND on the uplink(s). IPv4 checks forwarding on the *input* device, so
  with the bridges alone neither published ports (in on the uplink) nor the replies to
  outbound traffic get through. An internal bridge may keep forwarding=0: the host still
  reaches its containers (127.0.0.1 published ports included) and icc still works.
- ``net.ipv4.conf.<bridge>.route_localnet=1`` on every bridge: without it the kernel
  refuses to route a 127.0.0.1-sourced packet out of the bridge before masquerade can
  rewrite it, so ports are unreachable on the host's 127.0.0.1.
- hairpin mode on every container's bridge port (``IFLA_BRPORT_MODE``, ``ip link set VETH
  type bridge_slave hairpin on``) for a container to reach its *own* published port via
  a host address: br_netfilter bridges (does not route) a packet DNAT'ed back onto the
  bridge it came from, so the frame must go back out of the port it came in on. Between
  two containers of one bridge this works without hairpin mode.
- ``bridge-nf-call-iptables=1`` (built in and on here) for icc=false to hold between
  containers of one bridge.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import Conflict, InvalidInput

__all__ = [
    "BASE_CHAINS",
    "CHAINS",
    "SETS",
    "USER_CHAIN",
    "Elements",
    "NetworkRules",
    "PortRule",
    "desired_elements",
    "element_repair",
    "elements_from_json",
    "merge_elements",
    "network_candidates",
    "network_elements",
    "port_elements",
    "render_add",
    "render_delete",
    "render_install",
    "render_remove",
    "render_sync",
    "validate_table",
]

_IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
_TABLE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
PROTOCOLS = ("tcp", "udp")
USER_CHAIN = "user"

# Set name -> (keyword, declaration body). Order is the order of rendering everywhere.
SETS: dict[str, tuple[str, str]] = {
    "bridges": ("set", "type ifname;"),
    "masq_subnets": ("set", "type ipv4_addr; flags interval;"),
    "icc_pairs": ("set", "type ifname . ifname;"),
    "internal_bridges": ("set", "type ifname;"),
    "bridge_subnets": ("set", "type ifname . ipv4_addr; flags interval;"),
    "routed_subnets": ("set", "type ipv4_addr; flags interval;"),
    "ports": ("map", "type inet_proto . inet_service : ipv4_addr . inet_service;"),
    "ports_ip": ("map", "type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service;"),
}

_DNAT_RULES = (
    "fib daddr type local dnat ip to ip daddr . meta l4proto . th dport map @ports_ip",
    "fib daddr type local dnat ip to meta l4proto . th dport map @ports",
)


@dataclass(frozen=True)
class ChainSpec:
    """A base chain tether owns: its hook, and the rules it holds (replaced as a whole)."""

    type: str
    hook: str
    priority: int
    rules: tuple[str, ...]

    @property
    def declaration(self) -> str:
        return f"type {self.type} hook {self.hook} priority {self.priority}; policy accept;"


CHAINS: dict[str, ChainSpec] = {
    "guard": ChainSpec("filter", "prerouting", -300, (
        "iifname @bridges ip saddr 127.0.0.0/8 drop",
        "iifname @bridges ip daddr 127.0.0.0/8 drop",
    )),
    "prerouting": ChainSpec("nat", "prerouting", -100, _DNAT_RULES),
    "output": ChainSpec("nat", "output", -100, _DNAT_RULES),
    "postrouting": ChainSpec("nat", "postrouting", 100, (
        "ip saddr @masq_subnets oifname != @bridges masquerade",
        "oifname @bridges ip saddr 127.0.0.0/8 ct status dnat masquerade",
        "ct status dnat oifname . ip saddr @bridge_subnets masquerade",
    )),
    "forward": ChainSpec("filter", "forward", 0, (
        f"jump {USER_CHAIN}",
        "ct state established,related accept",
        "iifname . oifname @icc_pairs accept",
        "iifname @internal_bridges drop",
        "oifname @internal_bridges drop",
        "ct status dnat accept",
        "iifname @bridges oifname @bridges drop",
        "ip daddr @routed_subnets accept",
        "ip daddr @masq_subnets drop",
    )),
}
BASE_CHAINS = tuple(CHAINS)

# Set name -> canonical element texts (see network_elements / port_elements).
Elements = dict[str, list[str]]


def _ifname(name: str) -> str:
    if not isinstance(name, str) or not _IFNAME_RE.match(name):
        raise InvalidInput(f"invalid interface name {name!r} for the firewall")
    return name


def _ipv4(address: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(address))
    except (ipaddress.AddressValueError, ValueError) as exc:
        raise InvalidInput(f"invalid IPv4 {what} {address!r}") from exc


def _subnet(subnet: str) -> str:
    try:
        return str(ipaddress.IPv4Network(subnet, strict=False))
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError) as exc:
        raise InvalidInput(f"invalid IPv4 subnet {subnet!r}") from exc


def _port(port: int, what: str) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidInput(f"invalid {what} {port!r}: use 1-65535")
    return port


@dataclass(frozen=True)
class NetworkRules:
    """One bridge network on this host, as the firewall sees it."""

    bridge: str  # bridge device name
    subnet: str  # e.g. "10.210.0.0/24"
    masquerade: bool  # outbound NAT for traffic leaving the host (not to other tether bridges)
    internal: bool  # no way out, nothing in except from the host itself
    icc: bool  # containers on the same bridge may talk to each other
    routed: bool = False  # reachable by routing from outside the host (overlay: any host is a way in)


@dataclass(frozen=True)
class PortRule:
    """One published port (the caller expands ranges into single ports)."""

    protocol: str  # "tcp" | "udp"
    host_ip: str | None  # None (or "0.0.0.0") = every local address; else exactly that address
    host_port: int
    container_ip: str
    container_port: int


def validate_table(table: str) -> str:
    if not isinstance(table, str) or not _TABLE_RE.match(table):
        raise InvalidInput(f"invalid nftables table name {table!r}: use [A-Za-z][A-Za-z0-9_]{{0,31}}")
    return table


def _empty() -> Elements:
    return {name: [] for name in SETS}


def network_elements(net: NetworkRules) -> Elements:
    """The elements one network contributes to each set, in canonical text form."""
    bridge = f'"{_ifname(net.bridge)}"'
    subnet = _subnet(net.subnet)
    out = _empty()
    out["bridges"].append(bridge)
    out["bridge_subnets"].append(f"{bridge} . {subnet}")
    if net.masquerade and not net.internal:
        out["masq_subnets"].append(subnet)
    if net.icc:
        out["icc_pairs"].append(f"{bridge} . {bridge}")
    if net.internal:
        out["internal_bridges"].append(bridge)
    if net.routed and not net.internal:
        out["routed_subnets"].append(subnet)
    return out


def network_candidates(net: NetworkRules) -> Elements:
    """Every element ``net`` could have contributed under any flags: what removal deletes."""
    return network_elements(NetworkRules(net.bridge, net.subnet, True, False, True, True)) | {
        "internal_bridges": [f'"{_ifname(net.bridge)}"'],
    }


def _port_key_value(port: PortRule) -> tuple[str, str, str]:
    if port.protocol not in PROTOCOLS:
        raise InvalidInput(f"invalid protocol {port.protocol!r}: use tcp or udp")
    key = f"{port.protocol} . {_port(port.host_port, 'host port')}"
    target = f"{_ipv4(port.container_ip, 'container address')} . {_port(port.container_port, 'container port')}"
    if port.host_ip is None or port.host_ip == "0.0.0.0":
        return "ports", key, target
    return "ports_ip", f"{_ipv4(port.host_ip, 'host address')} . {key}", target


def port_elements(ports: Iterable[PortRule]) -> Elements:
    """Map elements ``key : target`` for ``ports``; a host port given twice with two
    different targets is a Conflict, the same mapping twice counts once."""
    out = _empty()
    seen: dict[tuple[str, str], str] = {}
    for port in ports:
        name, key, target = _port_key_value(port)
        previous = seen.get((name, key))
        if previous is None:
            seen[(name, key)] = target
            out[name].append(f"{key} : {target}")
        elif previous != target:
            where = "every host address" if port.host_ip is None else port.host_ip
            raise Conflict(
                f"host port {port.protocol}/{port.host_port} on {where} is published twice "
                f"(to {previous.replace(' . ', ':')} and {target.replace(' . ', ':')})"
            )
    return out


def merge_elements(parts: Iterable[Mapping[str, Sequence[str]]]) -> Elements:
    """Concatenate element lists set by set, dropping repeats (first one wins)."""
    seen: dict[str, dict[str, None]] = {name: {} for name in SETS}  # ordered sets
    for part in parts:
        for name, items in part.items():
            seen[name].update(dict.fromkeys(items))
    return {name: list(items) for name, items in seen.items()}


def desired_elements(networks: Iterable[NetworkRules], ports: Iterable[PortRule]) -> Elements:
    """Every element of the desired state, as ``render_sync`` writes it, for the healer to
    compare with the kernel. Unlike ``port_elements``, a host port given twice with two
    targets keeps the first instead of raising: the healer restores what it can."""
    published = _empty()
    taken: set[tuple[str, str]] = set()
    for port in ports:
        name, key, target = _port_key_value(port)
        if (name, key) not in taken:
            taken.add((name, key))
            published[name].append(f"{key} : {target}")
    return merge_elements([*(network_elements(n) for n in networks), published])


def _map_key(element: str) -> str:
    return element.partition(" : ")[0]


def element_repair(
    want: Mapping[str, Iterable[str]],
    have: Mapping[str, Iterable[str]],
    recent: Mapping[tuple[str, str], bool] | None = None,
    skip: Collection[tuple[str, str]] = (),
) -> tuple[Elements, Elements]:
    """(to delete, to add): what makes each set named in ``have`` (its elements as read
    from the kernel, in canonical text) hold exactly what belongs there.

    An element belongs if ``recent`` says so -- ``(set, element) -> present``: what tether
    itself did to it lately, which the desired state, written by the caller before or
    after its firewall call, may not show yet -- and otherwise if ``want`` (the desired
    state) has it. In a map, a key tether set lately keeps that target over another one
    ``want`` gives it. Elements in ``skip`` (changed by tether after ``have`` was read)
    are left as they are. Sets not in ``have`` are not compared; both results name every
    set, elements sorted.
    """
    recent = recent or {}
    fresh: dict[str, set[str]] = {}
    for (name, element), present in recent.items():
        if present:
            fresh.setdefault(name, set()).add(element)
    delete, add = _empty(), _empty()
    for name, found in have.items():
        own = fresh.get(name, set())
        belongs = {e for e in want.get(name, ()) if recent.get((name, e), True)}
        if SETS[name][0] == "map" and own:
            keys = {_map_key(e) for e in own}
            belongs = {e for e in belongs if _map_key(e) not in keys}
        belongs |= own
        present_now = set(found)
        delete[name] = sorted(e for e in present_now - belongs if (name, e) not in skip)
        add[name] = sorted(e for e in belongs - present_now if (name, e) not in skip)
    return delete, add


def _element_lines(verb: str, table: str, elements: Mapping[str, Sequence[str]]) -> list[str]:
    return [
        f"{verb} element ip {table} {name} {{ {', '.join(elements[name])} }}"
        for name in SETS
        if elements.get(name)
    ]


def render_install(table: str) -> str:
    """Create-if-missing for the table, sets, maps and the user chain; (re)fill tether's
    base chains. One transaction; never touches the ``user`` chain's rules or elements."""
    validate_table(table)
    lines = [f"add table ip {table}"]
    lines += [f"add {kind} ip {table} {name} {{ {decl} }}" for name, (kind, decl) in SETS.items()]
    lines.append(f"add chain ip {table} {USER_CHAIN}")
    lines += [f"add chain ip {table} {name} {{ {spec.declaration} }}" for name, spec in CHAINS.items()]
    lines += [f"flush chain ip {table} {name}" for name in CHAINS]
    lines += [f"add rule ip {table} {name} {rule}" for name, spec in CHAINS.items() for rule in spec.rules]
    return "\n".join(lines) + "\n"


def render_sync(table: str, networks: Iterable[NetworkRules], ports: Iterable[PortRule]) -> str:
    """The full desired state: flush every set and map, then add all elements."""
    validate_table(table)
    elements = merge_elements([*(network_elements(n) for n in networks), port_elements(ports)])
    lines = [f"flush {kind} ip {table} {name}" for name, (kind, _) in SETS.items()]
    lines += _element_lines("add", table, elements)
    return "\n".join(lines) + "\n"


def render_add(table: str, elements: Mapping[str, Sequence[str]]) -> str:
    """Add ``elements``; adding an identical existing element is a no-op. "" if nothing."""
    validate_table(table)
    lines = _element_lines("add", table, elements)
    return "\n".join(lines) + "\n" if lines else ""


def render_delete(table: str, elements: Mapping[str, Sequence[str]]) -> str:
    """Plain ``delete element``: fails if any element is absent."""
    validate_table(table)
    lines = _element_lines("delete", table, elements)
    return "\n".join(lines) + "\n" if lines else ""


def render_remove(table: str, elements: Mapping[str, Sequence[str]]) -> str:
    """Idempotent removal in one transaction: add (no-op if present) then delete.

    nft 1.0.6 has no ``destroy``. This fails only when an element conflicts with a
    present one (a map key with other data, an overlapping interval); the caller then
    reads the set and deletes exactly the elements present (``render_delete``).
    """
    validate_table(table)
    lines = _element_lines("add", table, elements) + _element_lines("delete", table, elements)
    return "\n".join(lines) + "\n" if lines else ""


def _json_atom(value: Any) -> str:
    if isinstance(value, dict):
        if "concat" in value:
            return " . ".join(_json_atom(v) for v in value["concat"])
        if "prefix" in value:
            return f"{value['prefix']['addr']}/{value['prefix']['len']}"
        if "range" in value:
            low, high = value["range"]
            return f"{_json_atom(low)}-{_json_atom(high)}"
        if "elem" in value:  # an element with options (timeout, comment)
            return _json_atom(value["elem"]["val"])
    return str(value)


def elements_from_json(name: str, obj: Mapping[str, Any]) -> set[str]:
    """Canonical element texts of a set or map as nft lists it in JSON (``list set``).

    Interface names come back unquoted, and a /32 in an interval set as a bare address;
    both are normalised to the form ``network_elements``/``port_elements`` render.
    """
    kind = SETS[name][0]
    types = obj.get("type")
    type_list = types if isinstance(types, list) else [types]
    interval = "interval" in obj.get("flags", [])
    out: set[str] = set()
    for item in obj.get("elem", []):
        if isinstance(item, dict) and "elem" in item:  # an element with a comment or timeout
            item = item["elem"]["val"]
        if kind == "map":
            key, data = item
            out.add(f"{_json_atom(key)} : {_json_atom(data)}")
            continue
        parts = item["concat"] if isinstance(item, dict) and "concat" in item else [item]
        texts = []
        for typ, part in zip(type_list, parts):
            text = _json_atom(part)
            if typ == "ifname":
                text = f'"{text}"'
            elif typ == "ipv4_addr" and interval and "/" not in text and "-" not in text:
                text += "/32"
            texts.append(text)
        out.add(" . ".join(texts))
    return out
