"""tether's nftables ruleset: its two tables, their sets, maps and chains. Constants, no I/O.

The ruleset has a constant number of rules. What changes when a network or a published
port comes or goes is the *elements* of a few sets and maps (``rules.py`` renders them),
so every change is one small ``add element`` / ``delete element`` transaction, and a full
resync is ``flush`` + ``add element`` in one transaction (never a delete-and-recreate of a
table, which refuses a few new connections under load).

Two tables of one name (default ``tether``): ``ip <table>`` for IPv4 and ``ip6 <table>``
for IPv6, with the same set, map and chain names. Every change that touches both is ONE
transaction covering both. Design note: one ``table inet`` would hold both families in
one set of chains, but every address set and map is typed by family anyway, so it would
carry two of each under different names and twice the rules in each chain (every packet
walks the rules of both families); and the v4 table stays exactly as it was, so hosts
upgrading keep their ``ip tether`` rules and the admin's ``user`` chain in it. The cost of
the second table, measured: see ``nft.py``.

Keys. A set, map or chain is named by its *key*: the bare name for the ip table
(``"ports"``), ``"ip6 "`` + the name for the ip6 table (``"ip6 ports"``), as nft spells the
family before the table. ``split_key`` and ``qualified`` convert.

Sets and maps of each table (``T`` = ``ipv4_addr`` in ``ip``, ``ipv6_addr`` in ``ip6``)::

    set bridges           ifname              every tether bridge (both tables: all of them)
    set masq_subnets      T, interval         subnets of networks with masquerade (not internal)
    set icc_pairs         ifname . ifname     (br, br) for every network with icc (both tables)
    set internal_bridges  ifname              bridges of internal networks (both tables)
    set bridge_subnets    ifname . T, interval   (br, subnet) of every network (hairpin)
    set routed_subnets    T, interval         subnets routed from outside (overlay)
    map ports             inet_proto . inet_service : T . inet_service
                          ports published on every local address of the family
    map ports_ip          T . inet_proto . inet_service : T . inet_service
                          ports published on one host address (possibly 127.0.0.1)

The interface-name sets hold every bridge in both tables, whether the network has a v6
subnet or not: isolation, ``--internal`` and icc=false hold for v6 traffic (link-local
addresses included) exactly as for v4.

Chains, in the order a packet meets them (lower priority first on the same hook); each
table has its own, the v6 ones with ``ip6`` matches:

    guard        filter prerouting  priority raw (-300)
        Drops packets from a tether bridge with a loopback source or destination
        (127.0.0.0/8; ::1). The bridges need ``route_localnet=1`` for v4 (see below), which
        would otherwise let a container reach the host's loopback-only services
        (CVE-2020-8558). For v6 the kernel drops such packets itself (RFC 4291, in
        ip6_rcv): the v6 guard is a second fence.
    prerouting   nat prerouting     priority dstnat (-100)
    output       nat output         priority -100
        Both: ``fib daddr type local dnat ip to <key> map @ports_ip`` then ``... @ports``.
        One rule per map serves any number of ports. The same two rules in ``output``
        publish ports to the host itself (127.0.0.1 included) without a userland proxy.
        ``fib daddr type local`` keeps a port bound to a host address from capturing
        traffic that is only routed through the host. DNAT keeps the client's address.
        v6: the output rules skip ``::1`` (see "IPv6 and ::1" below): a port on [::1] is
        refused at once instead of hanging, and a userland proxy may listen there.
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
        ip saddr @masq_subnets oifname != @bridges masquerade        outbound NAT (NAT66 for v6)
        oifname @bridges ip saddr 127.0.0.0/8 ct status dnat masquerade   host via 127.0.0.1 (v4 only)
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
- Bridged frames between two ports of one bridge do pass the IPv4 (and, with
  ``bridge-nf-call-ip6tables=1``, IPv6) forward hook, and there ``iifname``/``oifname``
  are the *bridge* device, not the veth ports (measured with counters). So ``(br . br)``
  in ``icc_pairs`` covers bridged and routed same-bridge traffic alike. ``meta
  ibrname``/``obrname`` parse but the kernel refuses them in the ip family ("Operation not
  supported"): no port-level key is available there.
- ``dnat ip to meta l4proto . th dport map @ports`` (concatenated key *and* data) works in
  text syntax, for ``dnat ip6`` over ``ipv6_addr`` data as well; nft 1.0.6 has no
  ``destroy``, and ``delete element`` of an absent element fails the whole transaction,
  so removal renders ``add element`` followed by ``delete element`` of the same elements
  in one transaction (see ``rules.render_remove``).
- ``dstnat`` is rejected as a priority name on the nat output hook: ``-100`` is used.
- On one hook, the first NAT rule that matches (any table) decides: a DNAT in another
  table's chain of lower priority, or registered earlier at the same priority, wins.
- Only tether's tables are governed here. An ``accept`` ends evaluation in this table
  only: a ``drop`` in another table on the same hook (a host firewall, Docker's FORWARD
  policy) still applies to published ports. Published ports are forwarded traffic, so the
  host's *input* policy does not cover them: restrict them in the ``user`` chain of each
  table, which sees DNAT'ed addresses (match the published port with ``meta l4proto tcp
  ct original proto-dst 8080``; nft 1.0.6 needs the protocol stated first).

IPv6 and ::1 (measured in throwaway namespaces, kernel 6.18): a port published on [::1]
cannot reach a container through kernel NAT. Output-chain DNAT of ::1 -> the container
plus masquerade out of the bridge does deliver the SYN (from the bridge's address), but
the SYN-ACK, un-NAT'ed to ``daddr ::1`` in prerouting, dies twice over: (1) the input
route lookup of a loopback destination is strict on the input device (``::1`` lives on
``lo``, Ip6InNoRoutes), which a policy route could fix (``ip -6 rule add iif BR to ::1
lookup T``, ``ip -6 route add local ::1 dev BR table T``); (2) with
``bridge-nf-call-ip6tables=1`` br_netfilter hands the un-NAT'ed packet up again as a frame
for the bridge and ip6_rcv drops it (RFC 4291: no loopback address on a non-loopback
interface, Ip6InHdrErrors), with no sysctl to lift it (v6 has no ``route_localnet``).
With ``bridge-nf-call-ip6tables=0`` and the policy route it works (10/10), but then
bridged v6 between containers of one bridge skips the ip6 forward hook (icc=false for v6
would need a bridge-family table). So the v6 output chain leaves ``::1`` alone and the
postrouting chain has no ``::1`` rule; ``::1`` keys in ``ports_ip`` stay in the map,
unused by the kernel, for whatever serves [::1] (a userland proxy).

What the caller must set in the host namespace (measured; the firewall sets none of it):
- forwarding: ``net.ipv4.ip_forward=1``, or per interface ``net.ipv4.conf.X.forwarding=1``
  on the bridges AND on the uplink(s). IPv4 checks forwarding on the *input* device, so
  with the bridges alone neither published ports (in on the uplink) nor the replies to
  outbound traffic get through. An internal bridge may keep forwarding=0: the host still
  reaches its containers (127.0.0.1 published ports included) and icc still works.
  IPv6: ``net.ipv6.conf.all.forwarding=1`` (the kernel checks the global switch); it
  turns off router advertisements on every interface unless ``accept_ra=2`` there.
- ``net.ipv4.conf.<bridge>.route_localnet=1`` on every bridge: without it the kernel
  refuses to route a 127.0.0.1-sourced packet out of the bridge before masquerade can
  rewrite it, so ports are unreachable on the host's 127.0.0.1. (No v6 counterpart.)
- hairpin mode on every container's bridge port (``IFLA_BRPORT_MODE``, ``ip link set VETH
  type bridge_slave hairpin on``) for a container to reach its *own* published port via
  a host address: br_netfilter bridges (does not route) a packet DNAT'ed back onto the
  bridge it came from, so the frame must go back out of the port it came in on. Between
  two containers of one bridge this works without hairpin mode. Both families.
- ``bridge-nf-call-iptables=1`` and ``bridge-nf-call-ip6tables=1`` (built in and on here)
  for icc=false to hold between containers of one bridge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "BASE_CHAINS",
    "CHAINS",
    "FAMILIES",
    "SETS",
    "USER_CHAIN",
    "ChainSpec",
    "SetSpec",
    "qualified",
    "split_key",
]

FAMILIES = ("ip", "ip6")  # nft's names; the ip table comes first everywhere
USER_CHAIN = "user"
_ADDR_TYPE = {"ip": "ipv4_addr", "ip6": "ipv6_addr"}


def qualified(family: str, name: str) -> str:
    """The key of set, map or chain ``name`` in the ``family`` table."""
    return name if family == "ip" else f"{family} {name}"


def split_key(key: str) -> tuple[str, str]:
    """(family, name) of a key: ``"ports"`` -> ("ip", "ports"), ``"ip6 ports"`` -> ("ip6", "ports")."""
    family, _, name = key.rpartition(" ")
    return family or "ip", name


class SetSpec(NamedTuple):
    """A set or map tether owns: ``kind`` is "set" or "map"; ``declaration`` its body."""

    kind: str
    declaration: str
    family: str
    name: str


def _sets(family: str) -> dict[str, SetSpec]:
    addr = _ADDR_TYPE[family]
    bodies = {
        "bridges": ("set", "type ifname;"),
        "masq_subnets": ("set", f"type {addr}; flags interval;"),
        "icc_pairs": ("set", "type ifname . ifname;"),
        "internal_bridges": ("set", "type ifname;"),
        "bridge_subnets": ("set", f"type ifname . {addr}; flags interval;"),
        "routed_subnets": ("set", f"type {addr}; flags interval;"),
        "ports": ("map", f"type inet_proto . inet_service : {addr} . inet_service;"),
        "ports_ip": ("map", f"type {addr} . inet_proto . inet_service : {addr} . inet_service;"),
    }
    return {qualified(family, name): SetSpec(kind, decl, family, name) for name, (kind, decl) in bodies.items()}


# Key -> spec, every set of the ip table, then every one of the ip6 table. Order is the
# order of rendering everywhere. ``SETS[key][0]`` is the kind.
SETS: dict[str, SetSpec] = {key: spec for family in FAMILIES for key, spec in _sets(family).items()}


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


def _chains(family: str) -> dict[str, ChainSpec]:
    ip, loopback = ("ip", "127.0.0.0/8") if family == "ip" else ("ip6", "::1")
    # v6: never DNAT what the host sends to ::1 (the kernel cannot carry it to a container)
    local = "" if family == "ip" else "ip6 daddr != ::1 "
    dnat = (
        f"fib daddr type local dnat {ip} to {ip} daddr . meta l4proto . th dport map @ports_ip",
        f"fib daddr type local dnat {ip} to meta l4proto . th dport map @ports",
    )
    via_loopback = (f"oifname @bridges {ip} saddr {loopback} ct status dnat masquerade",) if family == "ip" else ()
    chains = {
        "guard": ChainSpec("filter", "prerouting", -300, (
            f"iifname @bridges {ip} saddr {loopback} drop",
            f"iifname @bridges {ip} daddr {loopback} drop",
        )),
        "prerouting": ChainSpec("nat", "prerouting", -100, dnat),
        "output": ChainSpec("nat", "output", -100, tuple(local + rule for rule in dnat)),
        "postrouting": ChainSpec("nat", "postrouting", 100, (
            f"{ip} saddr @masq_subnets oifname != @bridges masquerade",
            *via_loopback,
            f"ct status dnat oifname . {ip} saddr @bridge_subnets masquerade",
        )),
        "forward": ChainSpec("filter", "forward", 0, (
            f"jump {USER_CHAIN}",
            "ct state established,related accept",
            "iifname . oifname @icc_pairs accept",
            "iifname @internal_bridges drop",
            "oifname @internal_bridges drop",
            "ct status dnat accept",
            "iifname @bridges oifname @bridges drop",
            f"{ip} daddr @routed_subnets accept",
            f"{ip} daddr @masq_subnets drop",
        )),
    }
    return {qualified(family, name): spec for name, spec in chains.items()}


# Key -> spec of every base chain, the ip table's, then the ip6 table's.
CHAINS: dict[str, ChainSpec] = {key: spec for family in FAMILIES for key, spec in _chains(family).items()}
BASE_CHAINS = tuple(CHAINS)
