"""RecordingDatapath: an in-memory ``tether.datapath.Datapath`` for unit tests of the
controller. It keeps the kernel objects it was asked for as plain dicts and sets, records
every verb that would change the kernel, and can be told to fail any verb, so undo paths
can be checked without root. End-to-end tests never use it.

It has exactly the methods of the protocol, with the same signatures
(``tests/unit/test_datapath_protocol.py`` checks), and mirrors the guarantees the
protocol's docstrings give: removals of what is gone succeed, ``ensure_*`` is idempotent,
a name taken by another kind of link is a DatapathError. It does not validate addresses
or MACs as the kernel would.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

from ..datapath.base import VXLAN_OVERHEAD
from ..datapath.macvlan import MACVLAN_MODES, STUB_PEER_SUFFIX
from ..errors import DatapathError

__all__ = ["HeldPorts", "RecordingDatapath"]

UNDERLAY_MTU = 1500  # what underlay_mtu answers for an address not in ``underlay_mtus``


class HeldPorts:
    """What ``RecordingDatapath.host_ports`` returns: the ports held when it was called."""

    def __init__(self, held: dict[tuple[str, int], str]) -> None:
        self._held = dict(held)

    def holder(self, protocol: str, port: int, host_ip: str | None) -> str | None:
        return self._held.get((protocol, port))


class RecordingDatapath:
    """The kernel as dicts. ``calls`` lists, in order, every verb that changes something
    (``set_interface_sysctl`` as ``"sysctl IFNAME KEY=VALUE"``, with family 6 as
    ``"sysctl6 IFNAME KEY=VALUE"``); a verb named in ``fail``,
    reads included, raises DatapathError before it does anything (a change is still
    recorded). Tests may read and seed every public attribute."""

    def __init__(self, host_networks: list[str] | None = None) -> None:
        self.netns: set[str] = set()
        self.aliases: dict[str, str] = {}  # netns alias name -> target path
        self.bridges: dict[str, str] = {}  # name -> gateway cidr
        self.bridges6: dict[str, str] = {}  # name -> IPv6 gateway cidr (dual stack)
        self.bridge_macs: dict[str, str] = {}  # bridge -> MAC given by set_bridge_mac
        self.veths: dict[str, dict[str, Any]] = {}  # host ifname -> attach args (netns None: peer on the host)
        self.vxlans: dict[str, dict[str, Any]] = {}  # name -> ensure_vxlan args
        self.peers: dict[str, set[tuple[str, str, str]]] = {}  # vxlan -> {(ip, mac, vtep)}
        self.floods: dict[str, set[str]] = {}  # vxlan -> VTEPs
        self.addresses: dict[str, set[str]] = {}  # host ifname -> cidrs from add_address
        self.default_routes: dict[str, str] = {}  # netns -> gateway from add_default_route
        self.default_routes6: dict[str, str] = {}  # netns -> IPv6 gateway from add_default_route
        self.sysctls: dict[tuple[int, str, str], str] = {}  # (family, ifname, key) -> value
        self.ipv6_forwarding = False  # set by enable_ipv6_forwarding
        self.marks: dict[str, str] = {}  # host link -> its alias
        self.underlay_mtus: dict[str, int] = {}  # local IP -> MTU of the interface holding it
        self.held_ports: dict[tuple[str, int], str] = {}  # (protocol, port) -> holder
        self.calls: list[str] = []
        self.fail: set[str] = set()
        self._host_networks = list(host_networks or [])
        # tether trace's reads (seed them in tests): see the inspection section below
        self.down_links: set[str] = set()  # host links whose admin state is down
        self.neighbours: dict[str, list[dict[str, Any]]] = {}  # netns -> neighbour entries
        self.listeners: dict[tuple[str, str], list[tuple[str, int]]] = {}  # (netns, protocol) -> sockets
        self.missing_entries: set[tuple[str, str]] = set()  # (vxlan, ip) neighbour or (vxlan, mac) FDB deleted
        self.probe_results: dict[tuple[str, str], str] = {}  # (netns, address) -> what probe answers
        self.probes: list[tuple[str, str, str, int | None]] = []  # every probe sent
        # macvlan: seed ``nics`` with the host interfaces tether did not make (parents)
        self.nics: dict[str, int] = {}  # host interface -> its MTU
        self.macvlans: dict[str, dict[str, Any]] = {}  # host-side macvlan -> {parent, mode, mac, mtu}
        self.macvlan_endpoints: dict[tuple[str, str], dict[str, Any]] = {}  # (netns, ifname) -> attach args
        self.stubs: set[str] = set()  # LAN stubs; each has a peer end, name + "p"
        self.routes_via: dict[str, set[str]] = {}  # host link -> addresses add_host_route routes via it

    # ------------------------------------------------------------------ bookkeeping

    def _check(self, verb: str) -> None:
        if verb in self.fail:
            raise DatapathError(f"injected failure in {verb}")

    def _change(self, verb: str, record: str | None = None) -> None:
        self.calls.append(record or verb)
        self._check(verb)

    def _links(self) -> Iterator[tuple[str, str]]:
        """(name, kind) of every host link."""
        yield from ((name, "bridge") for name in self.bridges)
        yield from ((name, "veth") for name in self.veths)
        yield from ((name, "vxlan") for name in self.vxlans)
        yield from ((name, "") for name in self.nics)
        yield from ((name, "macvlan") for name in self.macvlans)
        yield from ((end, "veth") for name in sorted(self.stubs) for end in (name, name + STUB_PEER_SUFFIX))

    def _kind(self, ifname: str) -> str | None:
        return dict(self._links()).get(ifname)

    def _delete_link(self, ifname: str) -> None:
        # Like the kernel: a link of any kind goes, with what hangs off it.
        tables: tuple[dict[str, Any], ...] = (
            self.bridges, self.bridges6, self.bridge_macs, self.veths, self.vxlans, self.peers, self.floods,
            self.addresses, self.marks,
        )  # fmt: skip
        for table in tables:
            table.pop(ifname, None)
        for table in (self.nics, self.macvlans, self.routes_via):
            table.pop(ifname, None)
        self.down_links.discard(ifname)
        stub = ifname[: -len(STUB_PEER_SUFFIX)] if ifname.endswith(STUB_PEER_SUFFIX) else ifname
        if stub in self.stubs:  # either end takes the other
            self.stubs.discard(stub)
            self._delete_link(stub if ifname != stub else stub + STUB_PEER_SUFFIX)
        # and a parent takes its macvlan children, in every namespace
        for child in [name for name, m in self.macvlans.items() if m["parent"] == ifname]:
            self._delete_link(child)
        for key in [key for key, e in self.macvlan_endpoints.items() if e["parent"] == ifname]:
            del self.macvlan_endpoints[key]

    def _vxlan(self, name: str, what: str) -> str:
        """``name`` if it is a VXLAN device, else the DatapathError the real one raises."""
        kind = self._kind(name)
        if kind is None:
            raise DatapathError(f"{what}: {name} does not exist")
        if kind != "vxlan":
            raise DatapathError(f"{what}: {name} is a {kind}, not vxlan")
        return name

    def _check_new_veth(self, host_ifname: str, bridge: str) -> None:
        if bridge not in self.bridges:
            raise DatapathError(f"no bridge {bridge}")
        if self._kind(host_ifname) is not None:
            raise DatapathError(f"{host_ifname} already exists")

    def _in_netns(self, netns: str) -> list[dict[str, Any]]:
        """The container ends in ``netns``: veth peers, then macvlan children."""
        veths = [v for v in self.veths.values() if v["netns"] == netns]
        return veths + [e for (ns, _), e in self.macvlan_endpoints.items() if ns == netns]

    def _wanted_defaults(
        self, netns: str, gateway: str | None, gateway6: str | None, keep_existing_default: bool, cidr6: str | None
    ) -> dict[int, str | None]:
        """family -> the gateway of the default route an attach installs (None: none), as the
        real one decides: an existing default route fails it, or with ``keep_existing_default`` stays."""
        if gateway6 and not cidr6:
            raise DatapathError(f"invalid IPv6 gateway {gateway6!r}: an IPv6 address, with cidr6")
        wanted = {4: gateway, 6: gateway6}
        for family, via in wanted.items():
            if via and self._has_default(netns, family):
                if not keep_existing_default:
                    raise DatapathError(f"{netns} has an IPv{family} default route already")
                wanted[family] = None  # the namespace's first network keeps the default route
        return wanted

    def _routes(self, netns: str, family: int = 4) -> list[dict[str, Any]]:
        veths = self._in_netns(netns)
        gateway, cidr, added = ("gateway", "cidr", self.default_routes) if family == 4 else (
            "gateway6", "cidr6", self.default_routes6)  # fmt: skip
        routes = [{"dst": "default", "gateway": v[gateway], "dev": v["ifname"]} for v in veths if v.get(gateway)]
        if netns in added:
            routes.append({"dst": "default", "gateway": added[netns], "dev": None})
        return routes + [{"dst": _net(v[cidr]), "gateway": None, "dev": v["ifname"]} for v in veths if v.get(cidr)]

    def _has_default(self, netns: str, family: int) -> bool:
        return any(r["dst"] == "default" for r in self._routes(netns, family))

    def close(self) -> None:
        self._check("close")

    # ------------------------------------------------------------------ namespaces

    def netns_path(self, name: str) -> str:
        self._check("netns_path")
        return name if name.startswith("/") else f"/var/run/netns/{name}"

    def create_netns(self, name: str) -> str:
        self._change("create_netns")
        if name in self.netns:
            raise DatapathError(f"network namespace {name} already exists")
        self.netns.add(name)
        return self.netns_path(name)

    def delete_netns(self, name: str) -> None:
        self._change("delete_netns")
        self.netns.discard(name)
        self.default_routes.pop(name, None)
        self.default_routes6.pop(name, None)
        for ifname in [k for k, v in self.veths.items() if v["netns"] == name]:
            self._delete_link(ifname)
        for key in [key for key in self.macvlan_endpoints if key[0] == name]:
            del self.macvlan_endpoints[key]

    def alias_netns(self, name: str, target: str) -> None:
        self._change("alias_netns")
        if name in self.netns:
            raise DatapathError(f"network namespace {name} already exists")
        self.aliases[name] = target

    def unalias_netns(self, name: str) -> None:
        self._change("unalias_netns")
        self.aliases.pop(name, None)

    def netns_aliases(self, prefix: str) -> dict[str, str]:
        self._check("netns_aliases")
        return {n: t for n, t in self.aliases.items() if n.startswith(prefix)}

    def netns_exists(self, name: str) -> bool:
        self._check("netns_exists")
        return name in self.netns

    def list_netns(self) -> list[str]:
        self._check("list_netns")
        return sorted(self.netns)

    # ------------------------------------------------------------------ bridges and links

    def ensure_bridge(
        self,
        name: str,
        gateway_cidr: str,
        mtu: int,
        mark: str,
        exclusive: bool = False,
        *,
        gateway_cidr6: str | None = None,
    ) -> None:
        self._change("ensure_bridge")
        kind = self._kind(name)
        if kind not in (None, "bridge"):
            raise DatapathError(f"cannot use {name} as a bridge: it is a {kind}")
        self.bridges[name] = gateway_cidr  # the fake keeps one gateway address per bridge and family
        if gateway_cidr6 is not None:
            self.bridges6[name] = gateway_cidr6
        self.marks[name] = mark
        self.sysctls[(6, name, "accept_ra")] = "0"
        if exclusive:
            self.addresses.pop(name, None)
            if gateway_cidr6 is None:
                self.bridges6.pop(name, None)

    def delete_bridge(self, name: str) -> None:
        self._change("delete_bridge")
        self._delete_link(name)  # its ports stay, unenslaved

    def link_exists(self, ifname: str) -> bool:
        self._check("link_exists")
        return self._kind(ifname) is not None

    def link_master(self, ifname: str) -> str | None:
        self._check("link_master")
        link = self.veths.get(ifname) or self.vxlans.get(ifname)
        return str(link["bridge"]) if link and link["bridge"] in self.bridges else None

    def links_with_mark(self, mark: str) -> list[tuple[str, str]]:
        self._check("links_with_mark")
        return [(name, kind) for name, kind in self._links() if self.marks.get(name) == mark]

    # ------------------------------------------------------------------ endpoints

    def attach_veth(
        self,
        *,
        netns: str,
        host_ifname: str,
        ifname: str,
        bridge: str,
        mac: str,
        cidr: str,
        gateway: str | None,
        mtu: int,
        mark: str,
        hairpin: bool = False,
        keep_existing_default: bool = False,
        cidr6: str | None = None,
        gateway6: str | None = None,
    ) -> bool:
        self._change("attach_veth")
        self._check_new_veth(host_ifname, bridge)
        if netns not in self.netns:
            raise DatapathError(f"no netns {netns}")
        wanted = self._wanted_defaults(netns, gateway, gateway6, keep_existing_default, cidr6)
        self.veths[host_ifname] = dict(
            netns=netns, host_ifname=host_ifname, ifname=ifname, bridge=bridge, mac=mac, cidr=cidr,
            gateway=wanted[4], mtu=mtu, mark=mark, hairpin=hairpin, keep_existing_default=keep_existing_default,
            cidr6=cidr6, gateway6=wanted[6],
        )  # fmt: skip
        self.marks[host_ifname] = mark
        return bool(wanted[4]) if gateway else bool(wanted[6])

    def create_veth_pair(
        self, *, host_ifname: str, peer_ifname: str, bridge: str, mac: str, mtu: int, mark: str, hairpin: bool = False
    ) -> None:
        self._change("create_veth_pair")
        self._check_new_veth(host_ifname, bridge)
        self.veths[host_ifname] = dict(
            host_ifname=host_ifname, peer_ifname=peer_ifname, bridge=bridge, mac=mac, mtu=mtu, mark=mark,
            hairpin=hairpin, netns=None, ifname=peer_ifname, gateway=None, cidr="", cidr6=None, gateway6=None,
        )
        self.marks[host_ifname] = mark

    def detach_veth(self, host_ifname: str) -> None:
        self._change("detach_veth")
        self._delete_link(host_ifname)

    def detach_in_netns(self, netns: str, ifname: str) -> None:
        self._change("detach_in_netns")
        for k in [k for k, v in self.veths.items() if v["netns"] == netns and v["ifname"] == ifname]:
            self._delete_link(k)
        self.macvlan_endpoints.pop((netns, ifname), None)

    def has_default_route(self, netns: str, family: int = 4) -> bool:
        self._check("has_default_route")
        _family(family)
        return self._has_default(netns, family)

    def add_default_route(self, netns: str, gateway: str) -> None:
        self._change("add_default_route")
        if netns not in self.netns:
            raise DatapathError(f"cannot add default route via {gateway} in {netns}: it does not exist")
        family = 6 if ":" in gateway else 4
        current = {r["gateway"] for r in self._routes(netns, family) if r["dst"] == "default"}
        if current - {gateway}:
            raise DatapathError(f"cannot add default route via {gateway} in {netns}: File exists")
        if not current:
            (self.default_routes if family == 4 else self.default_routes6)[netns] = gateway

    def container_interfaces(self, netns: str) -> list[dict[str, Any]]:
        self._check("container_interfaces")
        lo = {
            "ifname": "lo", "mac": "00:00:00:00:00:00", "mtu": 65536, "state": "up", "addresses": ["127.0.0.1/8"],
            "addresses6": [],
        }  # fmt: skip
        return ([lo] if netns in self.netns else []) + [
            {
                "ifname": v["ifname"], "mac": v["mac"], "mtu": v["mtu"], "state": "up", "addresses": [v["cidr"]],
                "addresses6": [v["cidr6"]] if v.get("cidr6") else [],
            }  # fmt: skip
            for v in self._in_netns(netns)
        ]

    def container_routes(self, netns: str, family: int = 4) -> list[dict[str, Any]]:
        self._check("container_routes")
        _family(family)
        return self._routes(netns, family)

    # ------------------------------------------------------------------ host view

    def set_interface_sysctl(self, ifname: str, key: str, value: str, family: int = 4) -> None:
        record = f"sysctl {ifname} {key}={value}" if family == 4 else f"sysctl6 {ifname} {key}={value}"
        self._change("set_interface_sysctl", record)
        _family(family)
        self.sysctls[(family, ifname, key)] = value

    def enable_ipv6_forwarding(self) -> None:
        self._change("enable_ipv6_forwarding")
        self.ipv6_forwarding = True

    def host_ports(self) -> HeldPorts:
        self._check("host_ports")
        return HeldPorts(self.held_ports)

    def host_addresses(self) -> list[str]:
        self._check("host_addresses")
        added = [c for cidrs in self.addresses.values() for c in sorted(cidrs)]
        cidrs = [*self.bridges.values(), *self.bridges6.values(), *added]
        v4 = [c.split("/")[0] for c in cidrs if ":" not in c]
        return ["127.0.0.1"] + v4 + [c.split("/")[0] for c in cidrs if ":" in c]  # IPv4 first, as the kernel's

    def uplinks(self) -> list[str]:
        self._check("uplinks")
        return []

    def host_networks(self) -> list[str]:
        self._check("host_networks")
        added = [c for cidrs in self.addresses.values() for c in cidrs]
        cidrs = [*self.bridges.values(), *self.bridges6.values(), *added]
        v4 = sorted({_net(c) for c in cidrs if ":" not in c})
        return list(self._host_networks) + v4 + sorted({_net(c) for c in cidrs if ":" in c})

    # ------------------------------------------------------------------ overlay (VXLAN)

    def ensure_vxlan(
        self,
        name: str,
        vni: int,
        local_ip: str,
        bridge: str,
        mtu: int,
        mark: str,
        port: int = 4789,
    ) -> None:
        self._change("ensure_vxlan")
        what = f"cannot set up vxlan {name}"
        if bridge not in self.bridges:
            raise DatapathError(f"{what}: bridge {bridge} does not exist")
        kind = self._kind(name)
        if kind not in (None, "vxlan"):
            raise DatapathError(f"{what}: it is a {kind}, not vxlan")
        old = self.vxlans.get(name)
        if old is None:
            limit = self.underlay_mtus.get(local_ip, UNDERLAY_MTU) - VXLAN_OVERHEAD
            if mtu > limit:
                raise DatapathError(f"{what}: MTU {mtu} is more than the underlay allows ({limit})")
            if any((v["vni"], v["port"]) == (vni, port) for v in self.vxlans.values()):
                raise DatapathError(f"{what}: another device here already has VNI {vni} on UDP port {port}")
        elif (old["vni"], old["local_ip"], old["port"]) != (vni, local_ip, port):
            raise DatapathError(
                f"{what}: it exists with VNI {old['vni']}, local {old['local_ip']}, port {old['port']}"
            )
        self.vxlans[name] = dict(vni=vni, local_ip=local_ip, bridge=bridge, mtu=mtu, mark=mark, port=port)
        self.marks[name] = mark
        self.peers.setdefault(name, set())
        self.floods.setdefault(name, set())

    def delete_vxlan(self, name: str) -> None:
        self._change("delete_vxlan")
        self._delete_link(name)

    def underlay_mtu(self, local_ip: str) -> int:
        self._check("underlay_mtu")
        return self.underlay_mtus.get(local_ip, UNDERLAY_MTU)

    def add_peer(self, vxlan: str, ip: str, mac: str, vtep: str) -> None:
        self._change("add_peer")
        self._vxlan(vxlan, f"cannot add peer {ip} ({mac}) via {vtep} on {vxlan}")
        mac = mac.lower()
        # ip's neighbour entry is replaced; mac's FDB entry moves to vtep for every ip at mac
        kept = {(i, m, vtep if m == mac else v) for i, m, v in self.peers[vxlan] if i != ip}
        self.peers[vxlan] = kept | {(ip, mac, vtep)}

    def remove_peer(self, vxlan: str, ip: str, mac: str, vtep: str) -> None:
        self._change("remove_peer")
        peers = self.peers.get(vxlan, set())
        mac = mac.lower()
        if any(m == mac and v != vtep for _, m, v in peers):
            return  # moved to another VTEP: the new location owns the entries
        peers -= {p for p in peers if p[1:] == (mac, vtep)}  # the FDB entry serves every ip at mac

    def add_flood(self, vxlan: str, vtep: str) -> None:
        self._change("add_flood")
        self.floods[self._vxlan(vxlan, f"cannot add flood entry for {vtep} on {vxlan}")].add(vtep)

    def remove_flood(self, vxlan: str, vtep: str) -> None:
        self._change("remove_flood")
        self.floods.get(vxlan, set()).discard(vtep)

    def list_peers(self, vxlan: str) -> list[tuple[str, str, str]]:
        self._check("list_peers")
        return sorted(self.peers[self._vxlan(vxlan, f"cannot list peers of {vxlan}")])

    def list_floods(self, vxlan: str) -> list[str]:
        self._check("list_floods")
        return sorted(self.floods[self._vxlan(vxlan, f"cannot list flood entries of {vxlan}")])

    def set_bridge_mac(self, bridge: str, mac: str) -> None:
        self._change("set_bridge_mac")
        if bridge not in self.bridges:
            raise DatapathError(f"cannot set the MAC of bridge {bridge}: it does not exist")
        self.bridge_macs[bridge] = mac.lower()

    def add_address(self, ifname: str, cidr: str) -> None:
        self._change("add_address")
        if self._kind(ifname) is None:
            raise DatapathError(f"cannot add {cidr} to {ifname}: {ifname} does not exist")
        self.addresses.setdefault(ifname, set()).add(cidr)

    def remove_address(self, ifname: str, cidr: str) -> None:
        self._change("remove_address")
        self.addresses.get(ifname, set()).discard(cidr)

    # ------------------------------------------------------------------ macvlan

    def _check_new_child(self, what: str, parent: str, mode: str, mtu: int | None) -> None:
        """The refusals of a new macvlan child of ``parent``, as the real one words them."""
        if mode not in MACVLAN_MODES:
            raise DatapathError(f"invalid macvlan mode {mode!r}: bridge, private, vepa or passthru")
        kind = self._kind(parent)
        if kind is None:
            raise DatapathError(f"{what}: parent interface {parent} does not exist")
        if kind == "macvlan":
            raise DatapathError(f"{what}: parent {parent} is itself a macvlan: use its parent")
        if self._is_port(parent):
            raise DatapathError(f"{what}: parent {parent} is a bridge or bond port, which cannot carry macvlans")
        limit = self.nics.get(parent, 1500)
        if mtu is not None and mtu > limit:
            raise DatapathError(f"{what}: MTU {mtu} is more than parent {parent} allows ({limit})")
        children = (*self.macvlans.values(), *self.macvlan_endpoints.values())
        modes = [m["mode"] for m in children if m["parent"] == parent]
        if modes and (mode == "passthru" or "passthru" in modes):
            raise DatapathError(
                f"{what}: parent {parent} already has a passthru macvlan or children: "
                "passthru takes the whole interface"
            )

    def _is_port(self, ifname: str) -> bool:
        link = self.veths.get(ifname) or self.vxlans.get(ifname)
        return bool(link and link["bridge"] in self.bridges)

    def attach_macvlan(
        self,
        *,
        netns: str,
        ifname: str,
        parent: str,
        mode: str,
        mac: str,
        cidr: str,
        gateway: str | None,
        mtu: int,
        keep_existing_default: bool = False,
        cidr6: str | None = None,
        gateway6: str | None = None,
    ) -> bool:
        self._change("attach_macvlan")
        what = f"cannot attach macvlan {ifname} in {netns} to {parent}"
        if netns not in self.netns:
            raise DatapathError(f"{what}: network namespace {netns} does not exist")
        self._check_new_child(what, parent, mode, mtu)
        if any(end["ifname"] == ifname for end in self._in_netns(netns)):
            raise DatapathError(f"{what}: {ifname} in {netns} already exists")
        wanted = self._wanted_defaults(netns, gateway, gateway6, keep_existing_default, cidr6)
        self.macvlan_endpoints[(netns, ifname)] = dict(
            netns=netns, ifname=ifname, parent=parent, mode=mode, mac=None if mode == "passthru" else mac, cidr=cidr,
            gateway=wanted[4], mtu=mtu, keep_existing_default=keep_existing_default, cidr6=cidr6, gateway6=wanted[6],
        )  # fmt: skip  (passthru: the parent's MAC, which the fake does not know)
        return bool(wanted[4]) if gateway else bool(wanted[6])

    def create_macvlan(self, *, ifname: str, parent: str, mode: str, mac: str, mtu: int, mark: str) -> None:
        self._change("create_macvlan")
        what = f"cannot create macvlan {ifname} on {parent}"
        self._check_new_child(what, parent, mode, mtu)
        if self._kind(ifname) is not None:
            raise DatapathError(f"{what}: {ifname} already exists")
        self.macvlans[ifname] = dict(parent=parent, mode=mode, mac=None if mode == "passthru" else mac, mtu=mtu)
        self.marks[ifname] = mark
        self.down_links.add(ifname)

    def ensure_macvlan_shim(
        self,
        *,
        ifname: str,
        parent: str,
        mode: str,
        address: str | None,
        address6: str | None,
        mark: str,
        mac: str | None = None,
    ) -> None:
        self._change("ensure_macvlan_shim")
        what = f"cannot set up macvlan shim {ifname} on {parent}"
        kind = self._kind(ifname)
        if kind is None:
            self._check_new_child(what, parent, mode, None)
            self.macvlans[ifname] = dict(parent=parent, mode=mode, mac=mac, mtu=self.nics.get(parent, 1500))
        elif kind != "macvlan" or self.macvlans[ifname]["parent"] != parent:
            raise DatapathError(f"{what}: {ifname} exists and is not a macvlan on {parent}")
        self.macvlans[ifname]["mode"] = mode
        if mac is not None:
            self.macvlans[ifname]["mac"] = mac
        self.marks[ifname] = mark
        self.down_links.discard(ifname)
        self.sysctls.update({(6, ifname, "accept_ra"): "0", (6, ifname, "accept_dad"): "0"})
        wanted = ([f"{address}/32"] if address else []) + ([f"{address6}/128"] if address6 else [])
        self.addresses.setdefault(ifname, set()).update(wanted)

    def delete_macvlan(self, ifname: str) -> None:
        self._change("delete_macvlan")
        self._delete_kind(ifname, "macvlan")

    def _delete_kind(self, ifname: str, kind: str) -> None:
        found = self._kind(ifname)
        if found is not None and found != kind:
            raise DatapathError(f"cannot delete {kind} {ifname}: it is a {found or 'device'}, not a {kind}")
        self._delete_link(ifname)

    def add_host_route(self, ifname: str, address: str) -> None:
        self._change("add_host_route")
        if self._kind(ifname) is None:
            raise DatapathError(f"cannot route {address} via {ifname}: {ifname} does not exist")
        for routed in self.routes_via.values():
            routed.discard(address)  # "replace": one route per address
        self.routes_via.setdefault(ifname, set()).add(address)

    def remove_host_route(self, ifname: str, address: str) -> None:
        self._change("remove_host_route")
        self.routes_via.get(ifname, set()).discard(address)

    def host_routes(self, ifname: str) -> list[str]:
        self._check("host_routes")
        ips = sorted((ipaddress.ip_address(a) for a in self.routes_via.get(ifname, set())), key=_version_first)
        return [str(ip) for ip in ips]  # IPv4 first, as the kernel's

    def ensure_lan_stub(self, *, name: str, mark: str) -> None:
        self._change("ensure_lan_stub")
        ends = (name, name + STUB_PEER_SUFFIX)
        if name not in self.stubs:
            taken = [end for end in ends if self._kind(end) is not None]
            if taken:
                raise DatapathError(f"cannot set up LAN stub {name}: {taken[0]} already exists")
            self.stubs.add(name)
        for end in ends:
            self.marks[end] = mark
            self.down_links.discard(end)
            self.sysctls.update({(6, end, "disable_ipv6"): "1", (4, end, "arp_ignore"): "8"})
            self.sysctls[(4, end, "rp_filter")] = "1"

    def delete_lan_stub(self, name: str) -> None:
        self._change("delete_lan_stub")
        self._delete_kind(name, "veth")

    def parent_candidates(self) -> list[str]:
        self._check("parent_candidates")
        return sorted(
            name
            for name, kind in self._links()
            if kind not in ("macvlan", "vxlan") and not self.marks.get(name, "").startswith("tether")
            and not self._is_port(name)
        )  # fmt: skip

    def macvlan_children(self, parent: str) -> list[tuple[str, str]]:
        self._check("macvlan_children")
        return sorted((name, m["mode"]) for name, m in self.macvlans.items() if m["parent"] == parent)

    # ------------------------------------------------------------------ inspection (tether trace)

    def link_state(self, ifname: str) -> dict[str, Any] | None:
        self._check("link_state")
        kind = self._kind(ifname)
        if kind is None:
            return None
        master = self.link_master(ifname)
        mtu = self.nics.get(ifname) or self.macvlans.get(ifname, {}).get("mtu") or 1500
        return {"ifname": ifname, "kind": kind, "up": ifname not in self.down_links, "master": master, "mtu": mtu}

    def container_neighbours(self, netns: str) -> list[dict[str, Any]]:
        self._check("container_neighbours")
        return list(self.neighbours.get(netns, []))

    def peer_entries(self, vxlan: str) -> dict[str, list[tuple[str, str]]]:
        self._check("peer_entries")
        peers = self.peers.get(vxlan, set())
        return {
            "neighbours": sorted({(ip, mac) for ip, mac, _ in peers if (vxlan, ip) not in self.missing_entries}),
            "fdb": sorted({(mac, vtep) for _, mac, vtep in peers if (vxlan, mac) not in self.missing_entries}),
        }

    def listening(self, netns: str, protocol: str) -> list[tuple[str, int]]:
        self._check("listening")
        return sorted(self.listeners.get((netns, protocol), []))

    def probe(self, netns: str, address: str, protocol: str, port: int | None, timeout: float = 1.0) -> str:
        self._check("probe")
        self.probes.append((netns, address, protocol, port))
        return self.probe_results.get((netns, address), "open" if protocol != "icmp" else "answered")


def _family(family: int) -> None:
    if family not in (4, 6):
        raise DatapathError(f"invalid address family {family!r}: 4 or 6")


def _version_first(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, int]:
    return ip.version, int(ip)


def _net(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).network)
