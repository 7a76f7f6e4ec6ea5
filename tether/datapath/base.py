"""The Datapath protocol: every kernel change tether asks for, as one list of verbs.

Two classes satisfy it: ``NetlinkDatapath`` (``netlink.py``, pyroute2, the real one) and
``tether.testing.datapath.RecordingDatapath`` (in memory, for unit tests). Both have
exactly these public methods, with these signatures: ``tests/unit/test_datapath_protocol.py``
keeps them from drifting apart.

What every implementation guarantees:

* A Datapath acts on the host network namespace it was constructed in; container-side
  verbs take the container's namespace by name (under the netns dir) or by absolute path.
* Every verb may be called from any thread.
* Every failure is a ``DatapathError`` with one line of text; nothing else leaves.
* Removal verbs treat what is already gone as success, so teardown can be repeated.
* IPv6 rides beside IPv4 (dual stack): keyword-only ``*6`` parameters or a ``family`` of
  4 or 6 (default 4), and v6 addresses wherever an address is taken (peers, host
  addresses). Every IPv6 address tether puts on an interface is usable at once (no
  duplicate address detection: IPAM hands each one out once), and no interface tether
  makes or configures accepts IPv6 router advertisements.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["BoundPorts", "Datapath", "VXLAN_OVERHEAD"]

# What a VXLAN device's MTU must stay below its underlay's: outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8.
VXLAN_OVERHEAD = 50


class BoundPorts(Protocol):
    """The host's bound ports, as read once by ``Datapath.host_ports``."""

    def holder(self, protocol: str, port: int, host_ip: str | None) -> str | None:
        """Who holds ``port`` for ``host_ip`` (None = every address), or None if it is free."""


class Datapath(Protocol):
    """Namespaces, bridges, veths, VXLAN devices and their peers, macvlan children, and the host's own view."""

    def close(self) -> None:
        """Release sockets and threads; idempotent. No other verb may be called after it."""

    # ------------------------------------------------------------------ namespaces

    def netns_path(self, name: str) -> str:
        """Where the namespace ``name`` is bound (``{netns_dir}/{name}``); an absolute path is itself."""

    def create_netns(self, name: str) -> str:
        """Create and bind the namespace ``name`` with ``lo`` up and return its path; DatapathError if taken.

        Its interfaces will accept no IPv6 router advertisements and do no duplicate address detection."""

    def delete_netns(self, name: str) -> None:
        """Unbind the namespace (the kernel then frees it and the veth ends inside); missing is success."""

    def alias_netns(self, name: str, target: str) -> None:
        """Make the namespace bound at ``target`` visible as ``name``; replaces an alias, never a real one."""

    def unalias_netns(self, name: str) -> None:
        """Remove an alias made by ``alias_netns``; missing is success, a real namespace is never touched."""

    def netns_aliases(self, prefix: str) -> dict[str, str]:
        """name -> target of every alias whose name starts with ``prefix``."""

    def netns_exists(self, name: str) -> bool:
        """True if ``name`` is a bound namespace (a leftover plain file does not count)."""

    def list_netns(self) -> list[str]:
        """Names of every bound namespace in the netns dir (every owner's), sorted."""

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
        """Create or fix the bridge: alias, MTU, accept_ra 0, ``gateway_cidr`` and ``gateway_cidr6``
        (the only IPv4 and global IPv6 ones if ``exclusive``; fe80:: stays), up; idempotent."""

    def delete_bridge(self, name: str) -> None:
        """Delete the bridge (its ports stay, unenslaved); missing is success."""

    def link_exists(self, ifname: str) -> bool:
        """True if ``ifname`` exists in the host namespace."""

    def link_master(self, ifname: str) -> str | None:
        """The bridge ``ifname`` is enslaved to, or None (also when ``ifname`` is missing)."""

    def links_with_mark(self, mark: str) -> list[tuple[str, str]]:
        """(ifname, kind) of every host link whose alias is ``mark``; kind may be ''."""

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
        """Connect ``netns`` to ``bridge`` by an addressed veth pair (``cidr``, and ``cidr6`` usable
        at once), all or nothing; a default route per family with a gateway, an existing one kept
        only with ``keep_existing_default``. True if it got the one via ``gateway`` (without it:
        via ``gateway6``)."""

    def create_veth_pair(
        self, *, host_ifname: str, peer_ifname: str, bridge: str, mac: str, mtu: int, mark: str, hairpin: bool = False
    ) -> None:
        """A veth pair with both ends on the host, the peer down for a runtime to move (Docker); all or nothing."""

    def detach_veth(self, host_ifname: str) -> None:
        """Delete an endpoint by its host end, the peer with it; missing is success (slow: prefer delete_netns)."""

    def detach_in_netns(self, netns: str, ifname: str) -> None:
        """Delete ``ifname`` inside ``netns``; a missing namespace or link is success."""

    def has_default_route(self, netns: str, family: int = 4) -> bool:
        """True if ``netns`` has a default route of ``family`` (4 or 6) in its main table."""

    def add_default_route(self, netns: str, gateway: str) -> None:
        """Add the default route via ``gateway`` (IPv4 or IPv6) in ``netns``; the same route is
        success, another of that family a DatapathError."""

    def container_interfaces(self, netns: str) -> list[dict[str, Any]]:
        """Every link in ``netns``, lo included: ifname, mac, mtu, admin state, ``addresses``
        (IPv4 CIDRs), ``addresses6`` (global IPv6 CIDRs, link-local left out)."""

    def container_routes(self, netns: str, family: int = 4) -> list[dict[str, Any]]:
        """The main-table routes of ``family`` in ``netns`` (dst, gateway, dev), in the kernel's
        order; IPv6 without link-local, loopback and multicast routes."""

    # ------------------------------------------------------------------ host view

    def set_interface_sysctl(self, ifname: str, key: str, value: str, family: int = 4) -> None:
        """Set net.ipv4.conf.IFNAME.KEY (``family`` 6: net.ipv6.conf) to ``value`` in the host
        namespace; already set is success."""

    def enable_ipv6_forwarding(self) -> None:
        """net.ipv6.conf.all.forwarding = 1 in the host namespace (IPv6 has no per-interface
        forwarding on input), first giving every interface with accept_ra 1 the value 2 so
        the host keeps its router advertisements; already on is success."""

    def host_ports(self) -> BoundPorts:
        """The host's bound ports, read once now; ask ``.holder(...)`` about as many as needed."""

    def host_addresses(self) -> list[str]:
        """Every IPv4 address of the host namespace, then every global IPv6 one (no link-local,
        no ::1), without prefix length."""

    def uplinks(self) -> list[str]:
        """The interfaces that carry a default route in the host's main table, sorted."""

    def host_networks(self) -> list[str]:
        """Networks of the host's addresses and routes, IPv4 then IPv6; default routes, the local
        table and IPv6 link-local, loopback and multicast left out."""

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
        """Create or fix the VXLAN device on ``bridge``; idempotent, and an error if it has another VNI/address/port."""

    def delete_vxlan(self, name: str) -> None:
        """Delete the VXLAN device, its FDB and neighbour entries with it; missing is success."""

    def underlay_mtu(self, local_ip: str) -> int:
        """The MTU of the host interface holding ``local_ip``; overlay devices take 50 less."""

    def add_peer(self, vxlan: str, ip: str, mac: str, vtep: str) -> None:
        """Program ``ip`` (IPv4 or IPv6) at ``mac`` behind ``vtep`` (neighbour, then FDB); idempotent,
        moves a MAC, all or nothing. The device's proxy answers ARP and NDP for it."""

    def remove_peer(self, vxlan: str, ip: str, mac: str, vtep: str) -> None:
        """Undo ``add_peer`` unless ``mac`` has moved to another VTEP since; whatever is gone is success."""

    def add_flood(self, vxlan: str, vtep: str) -> None:
        """Also send broadcast, multicast and unknown unicast on ``vxlan`` to ``vtep``; idempotent."""

    def remove_flood(self, vxlan: str, vtep: str) -> None:
        """Stop flooding to ``vtep``; a missing device or entry is success."""

    def list_peers(self, vxlan: str) -> list[tuple[str, str, str]]:
        """(ip, mac, vtep) of every fully programmed peer on ``vxlan``, IPv4 and IPv6, sorted."""

    def list_floods(self, vxlan: str) -> list[str]:
        """The VTEPs ``vxlan`` floods to, sorted."""

    def set_bridge_mac(self, bridge: str, mac: str) -> None:
        """Give ``bridge`` the MAC ``mac``; call it before containers attach (they cache the gateway's)."""

    def add_address(self, ifname: str, cidr: str) -> None:
        """Add ``cidr`` (IPv4, or IPv6 usable at once) to the host interface ``ifname``; already there is success."""

    def remove_address(self, ifname: str, cidr: str) -> None:
        """Remove ``cidr`` from the host interface ``ifname``; a missing address or link is success."""

    # ------------------------------------------------------------------ macvlan
    # A macvlan child's ``mode`` is "bridge", "private", "vepa" or "passthru" (which takes the
    # whole parent: it is then its only child, and has the parent's MAC, whatever ``mac`` says).

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
        """Give ``netns`` the interface ``ifname``, a macvlan child of the host link ``parent``,
        addressed and routed as ``attach_veth`` does its container end (same return value);
        all or nothing. DatapathError if ``parent`` is missing, ``ifname`` taken in ``netns``,
        or passthru collides ("parent X already has a passthru macvlan or children")."""

    def create_macvlan(self, *, ifname: str, parent: str, mode: str, mac: str, mtu: int, mark: str) -> None:
        """A macvlan child of ``parent`` on the host, down and marked, for a runtime to move
        (Docker); all or nothing, with the errors of ``attach_macvlan``."""

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
        """The host's own macvlan child of ``parent`` (the kernel keeps a parent and its children
        apart): marked, up, ``address``/32 and ``address6``/128, with ``mac`` (None: the
        kernel's pick); idempotent, fixes what is missing or differs (a restored shim keeps its
        MAC, so the containers' neighbour entries for it stay right). DatapathError if ``ifname`` is another link than a macvlan on ``parent``."""

    def delete_macvlan(self, ifname: str) -> None:
        """Delete a host-side macvlan (a shim, an unclaimed ``create_macvlan`` child); missing is
        success, another kind of link a DatapathError."""

    def add_host_route(self, ifname: str, address: str) -> None:
        """Route ``address`` (/32, or /128) via the host link ``ifname``, scope link; replaces, idempotent."""

    def remove_host_route(self, ifname: str, address: str) -> None:
        """Undo ``add_host_route``; a missing route or link is success."""

    def host_routes(self, ifname: str) -> list[str]:
        """The addresses ``add_host_route`` routes via ``ifname``, IPv4 then IPv6, sorted."""

    def ensure_lan_stub(self, *, name: str, mark: str) -> None:
        """A parent for an internal macvlan network: the veth pair ``name``/``name``+"p" on the
        host, marked, up, attached to nothing and speaking no IP, so that bridge-mode children
        on ``name`` reach each other and nothing else; idempotent. ``name``: 13 characters at most."""

    def delete_lan_stub(self, name: str) -> None:
        """Delete the stub (its peer, and any macvlan child on it, with it); missing is success."""

    def parent_candidates(self) -> list[str]:
        """Host links that could be a macvlan parent, sorted: Ethernet-like, not lo, no macvlan
        or vxlan device, no bridge or bond port, nothing marked by tether (alias "tether...")."""

    def macvlan_children(self, parent: str) -> list[tuple[str, str]]:
        """(ifname, mode) of the macvlan children of ``parent`` in the host namespace, sorted
        ([] if ``parent`` is missing); children inside other namespaces are not seen."""

    # ------------------------------------------------------------------ inspection (tether trace)
    # Reads only, and one probe packet (``datapath/inspect.py``); the caller decides where a
    # probe may go: only to addresses inside namespaces tether made.

    def link_state(self, ifname: str) -> dict[str, Any] | None:
        """``ifname`` in the host namespace: {ifname, kind, up (admin state), master (a bridge's
        name or None), mtu}; None if there is no such link."""

    def container_neighbours(self, netns: str) -> list[dict[str, Any]]:
        """The neighbour entries in ``netns``, both families: {address, mac, state (incomplete,
        reachable, stale, delay, probe, failed, noarp, permanent), dev}."""

    def peer_entries(self, vxlan: str) -> dict[str, list[tuple[str, str]]]:
        """The entries ``vxlan`` holds for its peers, one by one (``list_peers`` joins them):
        ``neighbours`` (ip, mac) of the permanent neighbour entries, ``fdb`` (mac, vtep) of
        the FDB entries with a destination (flood entries left out); both empty if missing."""

    def listening(self, netns: str, protocol: str) -> list[tuple[str, int]]:
        """(address, port) of every socket inside ``netns`` listening for ``protocol`` ("tcp",
        or "udp": bound and unconnected), both families, sorted."""

    def probe(self, netns: str, address: str, protocol: str, port: int | None, timeout: float = 1.0) -> str:
        """Send one probe from inside ``netns`` to ``address``: a TCP connection attempt or a UDP
        datagram to ``port``, or an ICMP echo request (``protocol`` "icmp", ``port`` None).
        What came back: "open", "refused", "answered", "unreachable", "timeout" or "sent"
        (UDP without an answer)."""
