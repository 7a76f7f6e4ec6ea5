"""The macvlan verbs of NetlinkDatapath: containers as macvlan children of a host interface (the
"parent"), the host-side shim and host routes that let the host reach them, the veth stub an
internal network uses as its parent, and the host views a macvlan driver needs.
``MacvlanVerbs`` is a base of ``NetlinkDatapath`` (``netlink.py``); every host request goes
through the host worker (``workers.py``).

Design note. A container's interface is one macvlan child of the parent made in one request
directly inside its namespace (``net_ns_fd``), with its final name, MAC and MTU: no
move-and-rename, as for the veth peer of ``attach_veth``. It is then configured by the very
code that configures a veth's container end (``netlink._ContainerEnd``: addresses, IPv6
without DAD or router advertisements, the wait for the address, default routes), from a
thread inside the namespace. Any failure after creation deletes the child again, from inside
the namespace (all or nothing). There is no host end, so no mark: the child goes with its
namespace, or with its parent.

The kernel keeps a parent and its children apart: the host cannot reach a child through the
parent's own addresses, nor a child the host. A *shim*, a macvlan child of the same parent
in the host namespace (same mode) with a /32 and /128 address and one host route per
container (/32, /128, scope link, via the shim), makes both ways work. Bridge mode only in
practice: private children reach no sibling, the shim included, and vepa needs a hairpin
switch upstream.

An internal network (no parent given) needs a parent tether owns. This kernel has no dummy
links, so the stub is a veth pair ``name``/``name``+"p" with both ends in the host namespace,
up (a veth has carrier only then, and a child without carrier keeps its IPv6 address
tentative) and attached to nothing. Bridge-mode children of ``name`` reach each other; what
they send elsewhere crosses to the peer end, which is in the host's own stack: by default
it answers ARP for every host address and has an IPv6 link-local one, so a container would
reach host services. So neither end speaks IP: IPv6 disabled (no link-local address), ARP
never answered (arp_ignore 8) and strict reverse-path filtering (rp_filter 1: nothing is
routed via the stub, so no packet from it passes, unless ``all.rp_filter`` is 2). This
kernel has no tc matchall/gact to drop frames outright.

Kernel behaviour the error messages rest on (kernel 6.18, measured): a passthru child when
the parent has children, and any child when it has a passthru one, are refused with EINVAL
(not EBUSY); EBUSY means the parent is a bridge or bond port; a MAC already on the parent or
a sibling is EADDRINUSE, and only when the child comes up. An MTU above the parent's, a
non-Ethernet parent and a bad name are EINVAL too, so those are checked first. A passthru
child takes the parent's MAC whatever is asked. A macvlan on a macvlan is made on the lower
device: refused here.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Callable
from typing import Any

from pyroute2 import IPRoute  # type: ignore[import-untyped]
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

from ..errors import DatapathError
from . import hostinfo
from .vxlan import _unicast_mac
from .workers import IFF_UP, MAC_RE, MISSING, RT_TABLE_MAIN, NetlinkWorkers, add_address, ifindex, mapped, reason, tolerate

__all__ = ["MACVLAN_MODES", "STUB_PEER_SUFFIX", "MacvlanVerbs"]

MACVLAN_MODES = ("bridge", "private", "vepa", "passthru")
STUB_PEER_SUFFIX = "p"  # the stub's second end: ``name`` + this
_ARPHRD_ETHER = 1
_IFF_LOOPBACK = 0x8
_IFNAMSIZ = 16
_MIN_MTU = 68
_RTPROT_KERNEL = 2
_RTPROT_STATIC = 4
_RT_SCOPE_LINK = 253
_NOT_PARENTS = ("macvlan", "macvtap", "ipvlan", "vxlan")  # kinds parent_candidates leaves out
# Neither end of a LAN stub speaks IP (see the design note): (family, key, value).
_STUB_SYSCTLS = ((6, "disable_ipv6", "1"), (4, "arp_ignore", "8"), (4, "rp_filter", "1"))
# What the shim gets before it comes up, as a container interface does: no router
# advertisements, no duplicate address detection (its link-local address usable at once).
_SHIM_SYSCTLS = ((6, "accept_ra", "0"), (6, "accept_dad", "0"))
_FULL_LENGTH = {socket.AF_INET: 32, socket.AF_INET6: 128}


def _ifname(name: str) -> str:
    """``name`` if the kernel takes it as an interface name (else it answers EINVAL, which here
    would read as a passthru conflict)."""
    if not name or len(name) >= _IFNAMSIZ or name in (".", "..") or any(c in name for c in "/: \t\n"):
        raise DatapathError(f"invalid interface name {name!r}: 1 to 15 characters, no '/', ':' or spaces")
    return name


def _mode(mode: str) -> str:
    if mode not in MACVLAN_MODES:
        raise DatapathError(f"invalid macvlan mode {mode!r}: bridge, private, vepa or passthru")
    return mode


def _host_address(address: str, family: int | None = None) -> tuple[str, int]:
    """(canonical text, AF_INET/AF_INET6) of a single address; DatapathError if it is not one
    (or, with ``family`` 4 or 6, not of that family)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError as exc:
        raise DatapathError(f"invalid address {address!r}") from exc
    if family is not None and ip.version != family:
        raise DatapathError(f"invalid address {address!r}: not an IPv{family} address")
    return str(ip), socket.AF_INET if ip.version == 4 else socket.AF_INET6


def _unfit_parent(link: Any) -> str | None:
    """Why the host link ``link`` cannot be a macvlan parent, or None if it can."""
    if link["ifi_type"] != _ARPHRD_ETHER or link["flags"] & _IFF_LOOPBACK:
        return "is not an Ethernet interface"
    if NetlinkWorkers._kind(link) in ("macvlan", "macvtap"):
        return "is itself a macvlan: use its parent"
    return None


def _routed(route: Any, index: int, full: int) -> bool:
    """Whether a route message is one ``add_host_route`` makes: main table, to one address
    (``full`` bits) via the link ``index``, no gateway, not the kernel's own."""
    return bool(
        route.get("table") == RT_TABLE_MAIN and route["dst_len"] == full and route.get("oif") == index
        and not route.get("gateway") and route["proto"] != _RTPROT_KERNEL
    )  # fmt: skip


def _ignore_failure(request: Callable[[], Any]) -> None:
    """An undo step after a failure: the original error is the one to report."""
    try:
        request()
    except (NetlinkError, OSError, DatapathError):
        pass


class MacvlanVerbs(NetlinkWorkers):
    """Macvlan children in namespaces and on the host, shims and host routes, LAN stubs."""

    # ------------------------------------------------------------------ children

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
        """Give ``netns`` the interface ``ifname``, a macvlan child of the host link ``parent``
        in ``mode`` with ``mac`` (passthru: the parent's) and ``mtu``, configured as
        ``attach_veth`` configures its container end (see there: addresses usable at once,
        default routes, ``keep_existing_default`` and the return value). All or nothing.

        DatapathError if ``parent`` is missing, not Ethernet or a macvlan, has a smaller MTU,
        is a bridge or bond port; if ``ifname`` is taken in ``netns``; if passthru collides
        (a passthru child wants the parent to itself; then it is its only child); if ``mac``
        is the parent's or a sibling's. A parent that is down is left down: the child then
        has no carrier, and its IPv6 address stays tentative until the parent comes up.
        """
        from .netlink import _ContainerEnd  # netlink.py imports this module for its base class

        end = _ContainerEnd.checked(netns, ifname, cidr, gateway, cidr6, gateway6, keep_existing_default)
        request = self._child_request(ifname, mode, mac, mtu)
        what = f"cannot attach macvlan {ifname} in {netns} to {parent}"

        def create(ipr: IPRoute) -> None:
            ns_fd = self._open_netns(netns)
            if ns_fd is None:
                raise DatapathError(f"{what}: network namespace {netns} does not exist")
            try:
                self._add_child(ipr, what, parent, mtu, {**request, "net_ns_fd": ns_fd}, f"{ifname} in {netns}")
            finally:
                os.close(ns_fd)

        self._host(create)
        try:
            # in a thread inside the container namespace, on a socket opened there
            return bool(self._in_netns(netns, f"cannot configure {ifname} in {netns}", end.configure))
        except BaseException as exc:
            # A namespace deleted meanwhile took the child along: then this finds nothing.
            _ignore_failure(lambda: self._in_netns(
                netns, "undo", lambda ipr: tolerate(lambda: ipr.link("del", ifname=ifname))
            ))  # fmt: skip
            cause = exc.__cause__
            if isinstance(cause, NetlinkError) and cause.code == errno.EADDRINUSE:
                # the kernel checks the MAC against the parent's and siblings' only at "up"
                raise DatapathError(f"{what}: MAC {mac} is already in use on parent {parent}") from cause
            raise

    def create_macvlan(self, *, ifname: str, parent: str, mode: str, mac: str, mtu: int, mark: str) -> None:
        """A macvlan child ``ifname`` of ``parent`` in the host namespace, down, with alias
        ``mark``, ``mac`` (passthru: the parent's) and ``mtu``, for a runtime that moves and
        configures it itself (Docker's remote driver protocol). All or nothing; the errors
        of ``attach_macvlan``, but a MAC in use, which the kernel finds only at "up"."""
        request = self._child_request(ifname, mode, mac, mtu)
        what = f"cannot create macvlan {ifname} on {parent}"

        def work(ipr: IPRoute) -> None:
            self._add_child(ipr, what, parent, mtu, request, ifname)
            try:
                with mapped(what):
                    ipr.link("set", ifname=ifname, ifalias=mark)  # (IFLA_IFALIAS is ignored on add)
            except BaseException:
                _ignore_failure(lambda: ipr.link("del", ifname=ifname))
                raise

        self._host(work)

    def delete_macvlan(self, ifname: str) -> None:
        """Delete the host-side macvlan ``ifname`` (a shim, or a ``create_macvlan`` child no
        runtime claimed); missing is success, another kind of link a DatapathError."""
        self._delete_kind(ifname, "macvlan")

    def macvlan_children(self, parent: str) -> list[tuple[str, str]]:
        """(ifname, mode) of the macvlan children of ``parent`` in the host namespace, sorted;
        [] if ``parent`` is missing. Children inside container namespaces are not seen."""

        def work(ipr: IPRoute) -> list[tuple[str, str]]:
            index = ifindex(parent)
            if index is None:
                return []
            return sorted(
                (str(link.get("ifname")), str(link.get(("linkinfo", "data", "macvlan_mode"))))
                for link in ipr.link("dump")
                # a child whose parent is in another namespace has a link-netnsid, and an
                # index there that may equal this one
                if self._kind(link) == "macvlan" and link.get("link") == index and link.get("link_netnsid") is None
            )

        with mapped(f"cannot list the macvlan children of {parent}"):
            return self._host(work)

    def parent_candidates(self) -> list[str]:
        """Names of the host links that could be a macvlan parent, sorted: Ethernet-like
        (physical, veth, bridge, bond), not lo, no macvlan, ipvlan or vxlan device, no bridge
        or bond port (the kernel refuses them), nothing tether marked (alias "tether...")."""

        def work(ipr: IPRoute) -> list[str]:
            return sorted(
                str(link.get("ifname"))
                for link in ipr.link("dump")
                if _unfit_parent(link) is None
                and self._kind(link) not in _NOT_PARENTS
                and not link.get("master")
                and not str(link.get("ifalias") or "").startswith("tether")
            )

        with mapped("cannot list links"):
            return self._host(work)

    # ------------------------------------------------------------------ the host's way in

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
        """The host's own macvlan child ``ifname`` of ``parent`` in ``mode``: marked, up, with
        ``address``/32 and ``address6``/128 (usable at once; no router advertisements
        accepted). With one ``add_host_route`` per container, the host and its macvlan
        containers reach each other. Idempotent: an existing shim gets what it lacks (mode,
        alias, admin state, a missing address); other addresses stay. All or nothing for a
        shim this call makes. DatapathError if ``ifname`` is another link than a macvlan
        child of ``parent``."""
        _ifname(ifname)
        _mode(mode)
        if mac is not None and not MAC_RE.match(mac):
            raise DatapathError(f"invalid MAC address {mac!r}")
        wanted = [(_host_address(address, 4)[0], 32)] if address else []
        if address6:
            wanted.append((_host_address(address6, 6)[0], 128))
        what = f"cannot set up macvlan shim {ifname} on {parent}"

        def work(ipr: IPRoute) -> None:
            link = self._get_link(ipr, ifname)
            created = link is None
            if link is None:
                request = {"ifname": ifname, "macvlan_mode": mode, **({"address": mac} if mac else {})}
                self._add_child(ipr, what, parent, None, request, ifname)
            try:
                with mapped(what):
                    link = self._own_child(ipr, ifname, parent, what)
                    self._fix_shim(ipr, link, mode, mark, wanted, mac)
            except BaseException:
                if created:
                    _ignore_failure(lambda: ipr.link("del", ifname=ifname))
                raise

        with mapped(what):
            self._host(work)

    def add_host_route(self, ifname: str, address: str) -> None:
        """Route ``address`` (a /32, or /128 for IPv6; scope link) via the host link ``ifname``
        in the host's main table, replacing any route to it; idempotent."""
        dst, af = _host_address(address)
        what = f"cannot route {dst} via {ifname}"

        def work(ipr: IPRoute) -> None:
            index = ifindex(ifname)
            if index is None:
                raise DatapathError(f"{what}: {ifname} does not exist")
            ipr.route("replace", **self._host_route(af, dst, index))

        with mapped(what):
            self._host(work)

    def remove_host_route(self, ifname: str, address: str) -> None:
        """Remove the route ``add_host_route`` made; a missing route or link is success."""
        dst, af = _host_address(address)

        def work(ipr: IPRoute) -> None:
            index = ifindex(ifname)
            if index is not None:
                tolerate(lambda: ipr.route("del", **self._host_route(af, dst, index)), (errno.ESRCH, *MISSING))

        with mapped(f"cannot remove the route to {dst} via {ifname}"):
            self._host(work)

    def host_routes(self, ifname: str) -> list[str]:
        """The addresses with a host route (/32, /128, no gateway) via ``ifname`` in the host's
        main table, IPv4 then IPv6, each sorted; the kernel's own routes (a /128 address's)
        left out, [] if ``ifname`` is missing."""

        def work(ipr: IPRoute) -> list[str]:
            index = ifindex(ifname)
            if index is None:
                return []
            found: list[str] = []
            for af, full in _FULL_LENGTH.items():
                routes = ipr.route("dump", family=af, table=RT_TABLE_MAIN)
                routed = sorted(ipaddress.ip_address(r.get("dst")) for r in routes if _routed(r, index, full))
                found += [str(ip) for ip in routed]
            return found

        with mapped(f"cannot list the routes via {ifname}"):
            return self._host(work)

    # ------------------------------------------------------------------ LAN stubs

    def ensure_lan_stub(self, *, name: str, mark: str) -> None:
        """The parent of an internal macvlan network: a veth pair ``name``/``name``+"p" in the
        host namespace, both ends marked and up, attached to nothing and speaking no IP (see
        the design note), so that bridge-mode children of ``name`` reach each other and
        nothing else. Idempotent; all or nothing for a pair this call makes. DatapathError
        if either name is taken by something else. ``name`` has at most 13 characters."""
        peer = _ifname(_ifname(name) + STUB_PEER_SUFFIX)
        what = f"cannot set up LAN stub {name}"

        def work(ipr: IPRoute) -> None:
            created = self._stub_pair(ipr, what, name, peer)
            try:
                for end in (name, peer):
                    for family, key, value in _STUB_SYSCTLS:  # before "up": no link-local address
                        hostinfo.ensure_sysctl(hostinfo.interface_sysctl_path(end, key, family), value)
                    link = self._get_link(ipr, end)
                    if link is None:
                        raise DatapathError(f"{what}: {end} vanished")
                    if link.get("ifalias") != mark:
                        ipr.link("set", index=link["index"], ifalias=mark)
                    if not link["flags"] & IFF_UP:
                        ipr.link("set", index=link["index"], state="up")
            except BaseException:
                if created:
                    _ignore_failure(lambda: ipr.link("del", ifname=name))  # takes the peer with it
                raise

        with mapped(what):
            self._host(work)

    def delete_lan_stub(self, name: str) -> None:
        """Delete the stub ``name`` and its peer end (and, as the kernel does for a parent,
        every macvlan child still on it, in whatever namespace); missing is success."""
        self._delete_kind(name, "veth")

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _child_request(ifname: str, mode: str, mac: str, mtu: int) -> dict[str, Any]:
        """The checked keywords of a macvlan child's "add" request, but its parent."""
        if mtu < _MIN_MTU:
            raise DatapathError(f"invalid MTU {mtu}: at least {_MIN_MTU}")
        request: dict[str, Any] = {"ifname": _ifname(ifname), "macvlan_mode": _mode(mode), "mtu": mtu}
        if mode != "passthru":  # a passthru child takes the parent's MAC, whatever is asked
            request["address"] = _unicast_mac(mac)
        return request

    def _add_child(
        self, ipr: IPRoute, what: str, parent: str, mtu: int | None, request: dict[str, Any], child_text: str
    ) -> None:
        """Create a macvlan child of the host link ``parent`` with ``request`` (from
        ``_child_request``), its refusals explained. On the worker."""
        with mapped(what):
            link = self._get_link(ipr, parent)
        if link is None:
            raise DatapathError(f"{what}: parent interface {parent} does not exist")
        problem = _unfit_parent(link)
        if problem is not None:
            raise DatapathError(f"{what}: parent {parent} {problem}")
        if mtu is not None and mtu > link.get("mtu"):
            raise DatapathError(f"{what}: MTU {mtu} is more than parent {parent} allows ({link.get('mtu')})")
        try:
            # Nothing exists yet to undo if this fails.
            ipr.link("add", kind="macvlan", link=link["index"], **request)
        except NetlinkError as exc:
            refusals = {
                errno.EEXIST: f"{child_text} already exists",
                # what is left of EINVAL once name, MTU and parent are checked
                errno.EINVAL: f"parent {parent} already has a passthru macvlan or children: "
                "passthru takes the whole interface",
                errno.EBUSY: f"parent {parent} is a bridge or bond port, which cannot carry macvlans",
            }
            raise DatapathError(f"{what}: {refusals.get(exc.code) or reason(exc)}") from exc
        except OSError as exc:
            raise DatapathError(f"{what}: {reason(exc)}") from exc

    def _own_child(self, ipr: IPRoute, ifname: str, parent: str, what: str) -> Any:
        """The link message of ``ifname``, which must be a host-namespace macvlan child of ``parent``."""
        link = self._get_link(ipr, ifname)
        if link is None:
            raise DatapathError(f"{what}: {ifname} vanished")
        parent_index = ifindex(parent)
        if self._kind(link) != "macvlan" or link.get("link") != parent_index or link.get("link_netnsid") is not None:
            raise DatapathError(f"{what}: {ifname} exists and is not a macvlan on {parent}")
        return link

    @staticmethod
    def _fix_shim(
        ipr: IPRoute, link: Any, mode: str, mark: str, wanted: list[tuple[str, int]], mac: str | None
    ) -> None:
        """Give the shim what differs: mode, alias, MAC, IPv6 settings, "up", then the missing
        addresses (an IPv6 one waits until usable). On the worker, inside ``mapped``."""
        index, name = link["index"], link.get("ifname")
        if mac is not None and str(link.get("address", "")).lower() != mac.lower():
            ipr.link("set", index=index, address=mac)
        if link.get(("linkinfo", "data", "macvlan_mode")) != mode:
            ipr.link("set", index=index, kind="macvlan", macvlan_mode=mode)  # EINVAL to or from passthru
        if link.get("ifalias") != mark:
            ipr.link("set", index=index, ifalias=mark)
        for family, key, value in _SHIM_SYSCTLS:
            hostinfo.ensure_sysctl(hostinfo.interface_sysctl_path(name, key, family), value)
        if not link["flags"] & IFF_UP:
            ipr.link("set", index=index, state="up")
        present = {(a.get("address"), a["prefixlen"]) for a in ipr.addr("dump", index=index)}
        for address, prefixlen in wanted:
            if (address, prefixlen) not in present:
                tolerate(lambda: add_address(ipr, index, address, prefixlen), (errno.EEXIST,))

    def _stub_pair(self, ipr: IPRoute, what: str, name: str, peer: str) -> bool:
        """Make the stub's veth pair unless it is there; True if this call made it.
        DatapathError if ``name`` is another link than a veth whose peer is ``peer``."""
        link = self._get_link(ipr, name)
        if link is None:
            try:
                ipr.link("add", ifname=name, kind="veth", peer={"ifname": peer})
            except NetlinkError as exc:
                if exc.code == errno.EEXIST:
                    raise DatapathError(f"{what}: {peer} already exists") from exc
                raise
            return True
        if self._kind(link) != "veth" or link.get("link") != ifindex(peer) or link.get("link_netnsid") is not None:
            raise DatapathError(f"{what}: {name} exists and is not a LAN stub (a veth pair {name}/{peer})")
        return False

    @staticmethod
    def _host_route(af: int, dst: str, index: int) -> dict[str, Any]:
        """The keywords of a host route to ``dst`` via the link ``index`` (main table, static)."""
        route: dict[str, Any] = {
            "family": af, "dst": dst, "dst_len": _FULL_LENGTH[af], "oif": index, "table": RT_TABLE_MAIN,
            "proto": _RTPROT_STATIC,
        }  # fmt: skip
        if af == socket.AF_INET:
            route["scope"] = _RT_SCOPE_LINK  # (IPv6 routes have no scope)
        return route

    def _delete_kind(self, ifname: str, kind: str) -> None:
        """Delete the host link ``ifname`` if it is a ``kind``; missing is success, another
        kind a DatapathError."""
        what = f"cannot delete {kind} {ifname}"

        def work(ipr: IPRoute) -> None:
            link = self._get_link(ipr, ifname)
            if link is None:
                return
            found = self._kind(link)
            if found != kind:
                raise DatapathError(f"{what}: it is a {found or 'device'}, not a {kind}")
            tolerate(lambda: ipr.link("del", index=link["index"]))

        with mapped(what):
            self._host(work)
