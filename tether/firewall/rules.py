"""Pure rendering of tether's nftables ruleset: input values in, nft text out, no I/O.

The ruleset itself -- two tables, ``ip <table>`` and ``ip6 <table>``, their sets, maps
and chains, and what the caller must set -- is in ``chains.py``. Here: the inputs
(``NetworkRules``, ``PortRule``), the elements they contribute to each set (named by key:
``"ports"`` in the ip table, ``"ip6 ports"`` in the ip6 table), and the transactions that
install the tables or change elements. Every rendered transaction covers both tables.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import Conflict, InvalidInput
from .chains import BASE_CHAINS, CHAINS, FAMILIES, SETS, USER_CHAIN, qualified, split_key

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
_WILDCARD = {"ip": "0.0.0.0", "ip6": "::"}

# Set key -> canonical element texts (see network_elements / port_elements).
Elements = dict[str, list[str]]

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ifname(name: str) -> str:
    if not isinstance(name, str) or not _IFNAME_RE.match(name):
        raise InvalidInput(f"invalid interface name {name!r} for the firewall")
    return name


def _address(address: str, what: str) -> _Address:
    """An IPv4 or IPv6 address; an IPv4-mapped v6 address or one with a zone is refused
    (nft would take the one for another family's key, and cannot take the other)."""
    try:
        parsed = ipaddress.ip_address(address)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"invalid {what} {address!r}: not an IPv4 or IPv6 address") from exc
    if isinstance(parsed, ipaddress.IPv6Address) and (parsed.ipv4_mapped is not None or parsed.scope_id):
        raise InvalidInput(f"invalid {what} {address!r}: give an IPv4 address as such, and no zone")
    return parsed


def _subnet(subnet: str, version: int) -> str:
    try:
        network = ipaddress.ip_network(subnet, strict=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"invalid IPv{version} subnet {subnet!r}") from exc
    if network.version != version:
        raise InvalidInput(f"invalid IPv{version} subnet {subnet!r}")
    return str(network)


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
    subnet6: str | None = None  # dual stack: e.g. "fd12:3456:789a::/64"; None: IPv4 only


@dataclass(frozen=True)
class PortRule:
    """One published port (the caller expands ranges into single ports). Its family is the
    container address's: a dual-stack ``-p 8080:80`` is two PortRules, one per family."""

    protocol: str  # "tcp" | "udp"
    host_ip: str | None  # None ("0.0.0.0"/"::") = every local address of that family; else exactly that one
    host_port: int
    container_ip: str  # IPv4 or IPv6
    container_port: int


def validate_table(table: str) -> str:
    if not isinstance(table, str) or not _TABLE_RE.match(table):
        raise InvalidInput(f"invalid nftables table name {table!r}: use [A-Za-z][A-Za-z0-9_]{{0,31}}")
    return table


def _empty() -> Elements:
    return {key: [] for key in SETS}


def _subnet_elements(out: Elements, family: str, net: NetworkRules, bridge: str, subnet: str) -> None:
    out[qualified(family, "bridge_subnets")].append(f"{bridge} . {subnet}")
    if net.masquerade and not net.internal:
        out[qualified(family, "masq_subnets")].append(subnet)
    if net.routed and not net.internal:
        out[qualified(family, "routed_subnets")].append(subnet)


def network_elements(net: NetworkRules) -> Elements:
    """The elements one network contributes to each set, in canonical text form. The
    interface-name sets of both tables get its bridge; each table's address sets its
    subnet of that family."""
    bridge = f'"{_ifname(net.bridge)}"'
    subnets = {"ip": _subnet(net.subnet, 4)}
    if net.subnet6 is not None:
        subnets["ip6"] = _subnet(net.subnet6, 6)
    out = _empty()
    for family in FAMILIES:
        out[qualified(family, "bridges")].append(bridge)
        if net.icc:
            out[qualified(family, "icc_pairs")].append(f"{bridge} . {bridge}")
        if net.internal:
            out[qualified(family, "internal_bridges")].append(bridge)
        if family in subnets:
            _subnet_elements(out, family, net, bridge, subnets[family])
    return out


def network_candidates(net: NetworkRules) -> Elements:
    """Every element ``net`` could have contributed under any flags: what removal deletes."""
    every = NetworkRules(net.bridge, net.subnet, True, False, True, True, net.subnet6)
    bridge = f'"{_ifname(net.bridge)}"'
    return network_elements(every) | {qualified(family, "internal_bridges"): [bridge] for family in FAMILIES}


def _port_key_value(port: PortRule) -> tuple[str, str, str]:
    """(map key, element key, target) of one port, in the table of its container's family."""
    if port.protocol not in PROTOCOLS:
        raise InvalidInput(f"invalid protocol {port.protocol!r}: use tcp or udp")
    container = _address(port.container_ip, "container address")
    family = "ip" if container.version == 4 else "ip6"
    key = f"{port.protocol} . {_port(port.host_port, 'host port')}"
    target = f"{container} . {_port(port.container_port, 'container port')}"
    if port.host_ip is None or port.host_ip == _WILDCARD[family]:
        return qualified(family, "ports"), key, target
    host = _address(port.host_ip, "host address")
    if host.version != container.version:
        raise InvalidInput(
            f"host address {port.host_ip} is IPv{host.version} but container address "
            f"{port.container_ip} is IPv{container.version}: publish each family to its own"
        )
    return qualified(family, "ports_ip"), f"{host} . {key}", target


def _show(target: str) -> str:
    """``10.0.0.2 . 80`` -> ``10.0.0.2:80``, ``fd00::2 . 80`` -> ``[fd00::2]:80``."""
    address, _, port = target.partition(" . ")
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


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
            family = "IPv6" if split_key(name)[0] == "ip6" else "IPv4"
            where = f"every {family} host address" if name.endswith("ports") else port.host_ip
            raise Conflict(
                f"host port {port.protocol}/{port.host_port} on {where} is published twice "
                f"(to {_show(previous)} and {_show(target)})"
            )
    return out


def merge_elements(parts: Iterable[Mapping[str, Sequence[str]]]) -> Elements:
    """Concatenate element lists set by set, dropping repeats (first one wins)."""
    seen: dict[str, dict[str, None]] = {key: {} for key in SETS}  # ordered sets
    for part in parts:
        for key, items in part.items():
            seen[key].update(dict.fromkeys(items))
    return {key: list(items) for key, items in seen.items()}


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
        if SETS[name].kind == "map" and own:
            keys = {_map_key(e) for e in own}
            belongs = {e for e in belongs if _map_key(e) not in keys}
        belongs |= own
        present_now = set(found)
        delete[name] = sorted(e for e in present_now - belongs if (name, e) not in skip)
        add[name] = sorted(e for e in belongs - present_now if (name, e) not in skip)
    return delete, add


def _element_lines(verb: str, table: str, elements: Mapping[str, Sequence[str]]) -> list[str]:
    return [
        f"{verb} element {spec.family} {table} {spec.name} {{ {', '.join(elements[key])} }}"
        for key, spec in SETS.items()
        if elements.get(key)
    ]


def _install_lines(table: str, family: str) -> list[str]:
    sets = [spec for spec in SETS.values() if spec.family == family]
    chains = [(split_key(key)[1], spec) for key, spec in CHAINS.items() if split_key(key)[0] == family]
    lines = [f"add table {family} {table}"]
    lines += [f"add {s.kind} {family} {table} {s.name} {{ {s.declaration} }}" for s in sets]
    lines.append(f"add chain {family} {table} {USER_CHAIN}")
    lines += [f"add chain {family} {table} {name} {{ {spec.declaration} }}" for name, spec in chains]
    lines += [f"flush chain {family} {table} {name}" for name, _ in chains]
    lines += [f"add rule {family} {table} {name} {rule}" for name, spec in chains for rule in spec.rules]
    return lines


def render_install(table: str) -> str:
    """Create-if-missing for both tables, their sets, maps and user chains; (re)fill
    tether's base chains. One transaction; never touches a ``user`` chain's rules or any
    element."""
    validate_table(table)
    return "\n".join(line for family in FAMILIES for line in _install_lines(table, family)) + "\n"


def render_sync(table: str, networks: Iterable[NetworkRules], ports: Iterable[PortRule]) -> str:
    """The full desired state: flush every set and map of both tables, then add all elements."""
    validate_table(table)
    elements = merge_elements([*(network_elements(n) for n in networks), port_elements(ports)])
    lines = [f"flush {spec.kind} {spec.family} {table} {spec.name}" for spec in SETS.values()]
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


def _json_atom(value: Any, typ: str | None = None, interval: bool = False) -> str:
    """One part of an element as nft lists it in JSON, in canonical text. ``typ`` is the
    part's nft type when known: interface names get quoted, addresses canonical (a bare
    address in an interval set is a /32 or /128)."""
    if isinstance(value, dict):
        if "concat" in value:
            return " . ".join(_json_atom(v) for v in value["concat"])
        if "prefix" in value:
            return _canonical(f"{value['prefix']['addr']}/{value['prefix']['len']}", typ)
        if "range" in value:
            low, high = value["range"]
            return f"{_json_atom(low, typ)}-{_json_atom(high, typ)}"
        if "elem" in value:  # an element with options (timeout, comment)
            return _json_atom(value["elem"]["val"], typ, interval)
    text = str(value)
    if typ == "ifname":
        return f'"{text}"'
    if typ in ("ipv4_addr", "ipv6_addr"):
        text = _canonical(text, typ)
        if interval:
            text += "/32" if typ == "ipv4_addr" else "/128"
    return text


def _canonical(text: str, typ: str | None) -> str:
    """An address or prefix as ``ipaddress`` writes it (nft and Python agree on v4; for v6
    this settles any spelling nft may use, e.g. of IPv4-mapped addresses)."""
    if typ != "ipv6_addr":
        return text
    try:
        return str(ipaddress.ip_network(text, strict=False) if "/" in text else ipaddress.ip_address(text))
    except ValueError:
        return text


def _types(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return str(value).split(" . ") if value else []


def _concat(value: Any, types: list[str], interval: bool) -> str:
    if isinstance(value, dict) and "elem" in value:  # an element with a comment or timeout
        value = value["elem"]["val"]
    parts = value["concat"] if isinstance(value, dict) and "concat" in value else [value]
    padded = types + [""] * (len(parts) - len(types))
    return " . ".join(_json_atom(part, typ or None, interval) for typ, part in zip(padded, parts))


def elements_from_json(name: str, obj: Mapping[str, Any]) -> set[str]:
    """Canonical element texts of set or map ``name`` (a key) as nft lists it in JSON
    (``list set``).

    Interface names come back unquoted, a /32 or /128 in an interval set as a bare
    address; both are normalised to the form ``network_elements``/``port_elements``
    render, and v6 addresses to ``ipaddress``'s spelling.
    """
    kind = SETS[name].kind
    keys = _types(obj.get("type"))
    data = _types(obj.get("map"))
    interval = "interval" in obj.get("flags", [])
    out: set[str] = set()
    for item in obj.get("elem", []):
        if kind == "map":
            key, value = item
            out.add(f"{_concat(key, keys, False)} : {_concat(value, data, False)}")
        else:
            out.add(_concat(item, keys, interval))
    return out
