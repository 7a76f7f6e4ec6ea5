"""The overlay verbs of NetlinkDatapath: VXLAN devices, their peers (neighbour + FDB entries) and
flood lists, and the host-side bridge MAC and addresses an overlay network needs. ``VxlanVerbs``
is a base of ``NetlinkDatapath`` (``netlink.py``); every request goes through the host worker
(``workers.py``).

Design note. One overlay network is, on every host, a VXLAN device (the network's VNI)
enslaved to the network's bridge, with the containers' veths beside it. The control plane
knows every endpoint, so nothing is learned from the wire:

* The device has learning off (a source VTEP is never trusted) and proxy on: it
  answers ARP requests, and IPv6 neighbour solicitations (NDP), from its own neighbour
  tables and drops every ARP frame and solicitation it would otherwise tunnel (answered
  or not). So neither crosses hosts, and a peer that is not programmed cannot be
  resolved at all. l2miss/l3miss stay off: there is no one listening for misses. (Other
  IPv6 multicast, MLD reports for one, is flooded like any broadcast.)
* Each remote endpoint (and each remote host's own overlay address) is a permanent
  neighbour entry (ip -> mac; an AF_INET6 one for an IPv6 address, which the proxy
  reads for NDP as it reads AF_INET for ARP) on the device plus a static FDB entry
  (mac -> VTEP; a dual-stack endpoint has one MAC, so one FDB entry serves both),
  in that order, flannel's, with the neighbour undone if the FDB step fails. Each
  remote host also gets one all-zeros FDB entry (append): the device sends
  broadcast, multicast *and unknown unicast* to every such VTEP.
* The bridge port of the device keeps the bridge defaults (learning on, flood on).
  Learning lets the bridge send a remote MAC only to the VXLAN port (it learns it from
  the proxy's ARP reply, which enters through that port); without it every frame to
  a remote container would also be copied to every local one. Flood stays on so a
  frame whose bridge entry aged out still reaches the device, whose static FDB has
  the answer. neigh_suppress (the bridge-level ARP proxy) is not used: the device's
  own proxy already does that job, from the table this code programs.

The FDB entry is written with "replace" plus NUD_PERMANENT|NUD_NOARP and NTF_SELF:
"add" fails with EEXIST on a known MAC; "replace" without NTF_SELF silently lands in
the *bridge's* FDB (the device is a bridge port) with no destination, and without
NUD_PERMANENT the VXLAN driver refuses it. With all three it is idempotent, moves a
MAC to another VTEP in place, and shows as "dst VTEP self permanent".

A host must never hold a peer entry for one of its *own* endpoints: its proxy would
answer ARP for it from the vxlan side, the bridge would learn the MAC on the VXLAN
port, and local frames to it would be tunnelled to the stale VTEP. When an endpoint
moves here, remove_peer its remote entry (which also drops the bridge's learned
entry on the VXLAN port, else frames to it are dropped until it first transmits).

Pitfalls for callers: remove_peer stops ARP resolution of the peer, but a container
that still has the MAC cached keeps reaching it through the all-zeros entries (an
unknown unicast is flooded to every VTEP) until its neighbour entry fails probing
(tens of seconds): removing a peer is not a firewall. VXLAN and its bridge ports need
an MTU of the underlay's minus 50; the kernel silently caps a larger MTU at creation.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable
from typing import Any, TypeVar

from pyroute2 import IPRoute  # type: ignore[import-untyped]
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

from ..errors import DatapathError
from .base import VXLAN_OVERHEAD
from .workers import (
    IFF_UP,
    MAC_RE,
    MISSING,
    NetlinkWorkers,
    add_address,
    ifindex,
    mapped,
    split_cidr,
    tolerate,
)

__all__ = ["VxlanVerbs"]

T = TypeVar("T")

# linux/neighbour.h. pyroute2's fdb() fills in NUD_NOARP | NUD_PERMANENT and NTF_SELF for
# add/append/del only, not for replace, so they are spelt out.
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
NTF_MASTER = 0x04
_ZERO_MAC = "00:00:00:00:00:00"
_MAX_VNI = (1 << 24) - 1


def _unicast_mac(mac: str) -> str:
    """``mac`` in lower case, or DatapathError if it is not a unicast Ethernet address."""
    if not MAC_RE.match(mac):
        raise DatapathError(f"invalid MAC address {mac!r}")
    mac = mac.lower()
    if int(mac[:2], 16) & 1 or mac == _ZERO_MAC:
        raise DatapathError(f"invalid MAC address {mac!r}: not a unicast address")
    return mac


def _ipv4(address: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(address))
    except ValueError as exc:
        raise DatapathError(f"invalid {what} {address!r}") from exc


def _peer_ip(address: str) -> str:
    """A peer's overlay address, IPv4 or IPv6, in canonical text (as the kernel reports it)."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError as exc:
        raise DatapathError(f"invalid peer address {address!r}") from exc


def _vtep(address: str) -> str:
    """A remote VTEP: a unicast IP. Its family is left to the kernel (it must match the device's)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError as exc:
        raise DatapathError(f"invalid VTEP address {address!r}") from exc
    # The kernel takes 0.0.0.0 and multicast destinations too, and would then send
    # nowhere, or to a group nobody joined: refuse them here.
    if ip.is_unspecified or ip.is_multicast:
        raise DatapathError(f"invalid VTEP address {address!r}: not a unicast address")
    return str(ip)


def _nothing() -> None:
    """What a removal finds on a missing device: nothing, its entries went with it."""


class VxlanVerbs(NetlinkWorkers):
    """VXLAN devices, peers and floods, and the bridge MAC and host addresses of an overlay."""

    # name -> ifindex of host links already checked to be VXLAN devices, so the hot path
    # (add_peer) skips a link dump: a recreated device gets a new ifindex and is checked
    # again. Set on first use and only touched on the worker thread.
    _vxlan_checked: dict[str, int] | None = None

    # ------------------------------------------------------------------ devices

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
        """Create the VXLAN device ``name`` if missing, enslave it to ``bridge``, bring it up.

        The device has VNI ``vni``, source ``local_ip`` on UDP ``port``, its underlay set to
        the interface holding ``local_ip``, learning off and ARP proxy on (see this
        module's design note); alias ``mark``. ``mtu`` may be at most the underlay's minus 50
        (``underlay_mtu``). Idempotent: on an existing device it fixes alias, MTU, master,
        learning and admin state. DatapathError if ``name`` exists with another VNI, local
        address, port or without proxy, if it is not a VXLAN device, or if another device in
        this namespace already has the same VNI and port. IPv4 underlay only.
        """
        if not 0 < vni <= _MAX_VNI:
            raise DatapathError(f"invalid VNI {vni}: it must be 1 to {_MAX_VNI}")
        if not 0 < port < 65536:
            raise DatapathError(f"invalid VXLAN port {port}")
        local = _ipv4(local_ip, "VTEP address")
        what = f"cannot set up vxlan {name}"

        def work(ipr: IPRoute) -> None:
            with mapped(what):
                bridge_index = ifindex(bridge)
                if bridge_index is None:
                    raise DatapathError(f"{what}: bridge {bridge} does not exist")
                link = self._get_link(ipr, name)
                created = False
                if link is None:
                    created = self._add_vxlan(ipr, name, vni, local, port, mtu, what)
                    link = self._get_link(ipr, name)
                    if link is None:
                        raise DatapathError(
                            f"{what}: another device here already has VNI {vni} "
                            f"on UDP port {port}"
                        )
                try:
                    self._check_vxlan(link, vni, local, port, what)
                    self._set_vxlan(ipr, link, bridge_index, mtu, mark)
                except BaseException:
                    if created:  # all or nothing for a device this call made
                        try:
                            ipr.link("del", index=link["index"])
                        except (NetlinkError, OSError):
                            pass  # the original error is the one to report
                    raise

        self._host(work)

    def _add_vxlan(
        self, ipr: IPRoute, name: str, vni: int, local: str, port: int, mtu: int, what: str
    ) -> bool:
        """Create the VXLAN device for ``ensure_vxlan`` on the underlay holding ``local``;
        returns whether this call made it (False on EEXIST: the caller looks again). On
        the worker, inside the caller's ``mapped``."""
        underlay = self._underlay(ipr, local, what)
        limit = int(underlay.get("mtu")) - VXLAN_OVERHEAD
        if mtu > limit:
            # The kernel would silently cap it at creation.
            raise DatapathError(
                f"{what}: MTU {mtu} is more than the underlay "
                f"{underlay.get('ifname')} allows ({limit})"
            )
        try:
            ipr.link(
                "add",
                ifname=name,
                kind="vxlan",
                vxlan_id=vni,
                vxlan_local=local,
                vxlan_port=port,
                vxlan_link=underlay["index"],
                vxlan_learning=0,
                vxlan_proxy=1,
                mtu=mtu,
            )
        except NetlinkError as exc:
            # EEXIST is either the name (a racing daemon made it: checked by the caller
            # like any existing device) or the VNI and port, which the kernel allows
            # once per namespace.
            if exc.code != errno.EEXIST:
                raise
            return False
        return True

    def _set_vxlan(
        self, ipr: IPRoute, link: Any, bridge_index: int, mtu: int, mark: str
    ) -> None:
        """Fix what differs on a checked VXLAN device: alias, MTU, learning (off), master
        and admin state, in that order. On the worker, inside the caller's ``mapped``."""
        index = link["index"]
        self._set_alias_and_mtu(ipr, link, mark, mtu)
        if link.get(("linkinfo", "data", "vxlan_learning")):
            ipr.link("set", index=index, kind="vxlan", vxlan_learning=0)
        if link.get("master") != bridge_index:
            ipr.link("set", index=index, master=bridge_index)
        if not link["flags"] & IFF_UP:
            ipr.link("set", index=index, state="up")

    def delete_vxlan(self, name: str) -> None:
        """Delete the VXLAN device (its FDB and neighbour entries go with it); missing is success."""

        self._delete_host_link(name, "vxlan")

    def underlay_mtu(self, local_ip: str) -> int:
        """The MTU of the host interface holding ``local_ip``; overlay devices get 50 less."""
        local = _ipv4(local_ip, "VTEP address")
        what = f"cannot read the underlay MTU of {local}"

        def work(ipr: IPRoute) -> int:
            with mapped(what):
                return int(self._underlay(ipr, local, what).get("mtu"))

        return self._host(work)

    # ------------------------------------------------------------------ peers and floods

    def add_peer(self, vxlan: str, ip: str, mac: str, vtep: str) -> None:
        """Program a remote endpoint: ``ip`` (IPv4 or IPv6) is at ``mac``, which lives behind ``vtep``.

        A permanent neighbour entry on ``vxlan`` (the proxy answers ARP, or NDP, with it), then a
        static FDB entry. Idempotent; the same MAC behind another VTEP is moved there. All
        or nothing: if the FDB step fails, the neighbour entry is put back as it was.
        """
        address = _peer_ip(ip)
        lladdr = _unicast_mac(mac)
        remote = _vtep(vtep)

        def program(ipr: IPRoute, index: int) -> None:
            undo = self._set_neigh(ipr, index, address, lladdr)
            try:
                ipr.fdb(
                    "replace",
                    ifindex=index,
                    lladdr=lladdr,
                    dst=remote,
                    state=NUD_PERMANENT | NUD_NOARP,
                    flags=NTF_SELF,
                )
            except BaseException:
                if undo is not None:
                    try:
                        undo()
                    except (NetlinkError, OSError):
                        pass  # the original error is the one to report
                raise

        self._on_vxlan(vxlan, f"cannot add peer {address} ({lladdr}) via {remote} on {vxlan}", program)

    def remove_peer(self, vxlan: str, ip: str, mac: str, vtep: str) -> None:
        """Undo ``add_peer``; whatever is already gone is success.

        The FDB entry goes only while ``mac`` still points to ``vtep``. If a later
        ``add_peer`` moved ``mac`` to another VTEP, the endpoint has moved and nothing is
        removed (its neighbour entry is the new location's too). The neighbour entry goes
        only while ``ip`` still resolves to ``mac``. The bridge's learned entry for ``mac``
        on the VXLAN port goes too: if the endpoint now lives on this host, that stale entry
        would otherwise swallow frames to it until it next transmits (up to 300 s).
        """
        address = _peer_ip(ip)
        lladdr = _unicast_mac(mac)
        remote = _vtep(vtep)

        def unprogram(ipr: IPRoute, index: int) -> None:
            remotes = self._fdb_remotes(ipr, index, lladdr)
            if remotes and remote not in remotes:
                return  # moved to another VTEP: the new location owns both entries
            if remote in remotes:
                # The kernel deletes only the destination given (and reports success
                # if it is not there): no window in which another VTEP's entry goes.
                tolerate(lambda: ipr.fdb("del", ifindex=index, lladdr=lladdr, dst=remote))
            neigh = self._get_neigh(ipr, index, address)
            if neigh is not None and neigh.get("NDA_LLADDR") == lladdr:
                tolerate(lambda: ipr.neigh("del", ifindex=index, dst=address))
            # Only an entry on *this* port goes (the kernel checks the port). EOPNOTSUPP:
            # the device is not a bridge port at all.
            tolerate(
                lambda: ipr.fdb("del", ifindex=index, lladdr=lladdr, flags=NTF_MASTER),
                (errno.EOPNOTSUPP, *MISSING),
            )

        what = f"cannot remove peer {address} ({lladdr}) via {remote} from {vxlan}"
        self._on_vxlan(vxlan, what, unprogram, gone=_nothing)

    def add_flood(self, vxlan: str, vtep: str) -> None:
        """Send broadcast, multicast and unknown unicast also to ``vtep``; idempotent."""
        remote = _vtep(vtep)
        # "append" on the all-zeros MAC adds one destination to its list; the kernel
        # treats a destination already there as success. pyroute2 fills in
        # NUD_PERMANENT | NUD_NOARP and NTF_SELF for "append".
        self._on_vxlan(
            vxlan, f"cannot add flood entry for {remote} on {vxlan}",
            lambda ipr, index: ipr.fdb("append", ifindex=index, lladdr=_ZERO_MAC, dst=remote),
        )  # fmt: skip

    def remove_flood(self, vxlan: str, vtep: str) -> None:
        """Stop flooding to ``vtep``; a missing device or entry is success."""
        remote = _vtep(vtep)
        self._on_vxlan(
            vxlan, f"cannot remove flood entry for {remote} from {vxlan}",
            lambda ipr, index: tolerate(lambda: ipr.fdb("del", ifindex=index, lladdr=_ZERO_MAC, dst=remote)),
            gone=_nothing,
        )  # fmt: skip

    def list_peers(self, vxlan: str) -> list[tuple[str, str, str]]:
        """(ip, mac, vtep) of every programmed peer, IPv4 and IPv6, sorted: permanent
        neighbour entries joined with the FDB entries of their MAC. Half-programmed peers
        are left out."""

        def peers(ipr: IPRoute, index: int) -> list[tuple[str, str, str]]:
            remotes: dict[str, list[str]] = {}
            for mac, dst in self._fdb_entries(ipr, index):
                if mac != _ZERO_MAC:
                    remotes.setdefault(mac, []).append(dst)
            found = []
            for msg in ipr.neigh("dump", ifindex=index):  # both families in one request
                if msg["ifindex"] != index or not msg["state"] & NUD_PERMANENT:
                    continue
                if msg["family"] not in (socket.AF_INET, socket.AF_INET6):
                    continue
                mac = str(msg.get("NDA_LLADDR") or "").lower()
                for dst in remotes.get(mac, []):
                    found.append((str(msg.get("NDA_DST")), mac, dst))
            return sorted(found)

        return self._on_vxlan(vxlan, f"cannot list peers of {vxlan}", peers)

    def list_floods(self, vxlan: str) -> list[str]:
        """The VTEPs in the all-zeros FDB entry of ``vxlan`` (where floods go), sorted."""

        def floods(ipr: IPRoute, index: int) -> list[str]:
            return sorted(dst for mac, dst in self._fdb_entries(ipr, index) if mac == _ZERO_MAC)

        return self._on_vxlan(vxlan, f"cannot list flood entries of {vxlan}", floods)

    # ------------------------------------------------------------------ the host side of an overlay

    def set_bridge_mac(self, bridge: str, mac: str) -> None:
        """Give ``bridge`` the MAC ``mac`` (the one remote hosts program for this host's
        overlay address). Set it before containers attach: they cache the gateway's MAC."""
        lladdr = _unicast_mac(mac)
        what = f"cannot set the MAC of bridge {bridge}"

        def work(ipr: IPRoute) -> None:
            with mapped(what):
                link = self._get_link(ipr, bridge)
                if link is None:
                    raise DatapathError(f"{what}: it does not exist")
                kind = self._kind(link)
                if kind != "bridge":
                    raise DatapathError(f"{what}: it is a {kind or 'device'}")
                if str(link.get("address")).lower() != lladdr:
                    ipr.link("set", index=link["index"], address=lladdr)

        self._host(work)

    def add_address(self, ifname: str, cidr: str) -> None:
        """Add ``cidr`` to the host interface ``ifname``; already there is success. An IPv6
        address is usable at once (no duplicate address detection)."""
        self._change_address("add", ifname, cidr, f"cannot add {cidr} to {ifname}")

    def remove_address(self, ifname: str, cidr: str) -> None:
        """Remove ``cidr`` from the host interface ``ifname``; a missing one (or link) is success."""
        self._change_address("del", ifname, cidr, f"cannot remove {cidr} from {ifname}")

    def _change_address(self, verb: str, ifname: str, cidr: str, what: str) -> None:
        """``verb`` ("add" or "del") the address ``cidr`` on the host link ``ifname``; what is
        already done is success. A missing link is too for "del" (its addresses went with
        it), a DatapathError for "add"."""
        address, prefixlen = split_cidr(cidr)
        done = (errno.EEXIST,) if verb == "add" else (errno.EADDRNOTAVAIL, *MISSING)

        def work(ipr: IPRoute) -> None:
            with mapped(what):
                index = ifindex(ifname)
                if index is None:
                    if verb == "add":
                        raise DatapathError(f"{what}: {ifname} does not exist")
                    return
                if verb == "add":
                    tolerate(lambda: add_address(ipr, index, address, prefixlen), done)
                else:
                    tolerate(lambda: ipr.addr("del", index=index, address=address, prefixlen=prefixlen), done)

        self._host(work)

    # ------------------------------------------------------------------ helpers
    # (on the worker, inside the caller's ``mapped``)

    def _on_vxlan(
        self, vxlan: str, what: str, fn: Callable[[IPRoute, int], T], gone: Callable[[], T] | None = None
    ) -> T:
        """``fn(ipr, index)`` on the worker for the VXLAN device ``vxlan``, failures mapped to
        ``what``. A missing device answers ``gone()`` (removals: ``_nothing``), or without
        ``gone`` is a DatapathError."""

        def work(ipr: IPRoute) -> T:
            with mapped(what):
                index = self._vxlan_index(ipr, vxlan, what)
                if index is not None:
                    return fn(ipr, index)
                if gone is None:
                    raise DatapathError(f"{what}: {vxlan} does not exist")
                return gone()

        return self._host(work)

    def _underlay(self, ipr: IPRoute, local: str, what: str) -> Any:
        """The link message of the host interface holding ``local``."""
        for msg in ipr.addr("dump", family=socket.AF_INET):
            if msg.get("address") == local:
                return ipr.link("get", index=msg["index"])[0]
        raise DatapathError(f"{what}: no interface here holds {local}")

    @staticmethod
    def _check_vxlan(link: Any, vni: int, local: str, port: int, what: str) -> None:
        kind = NetlinkWorkers._kind(link)
        if kind != "vxlan":
            raise DatapathError(f"{what}: it is a {kind or 'device'}, not vxlan")
        found = (
            link.get(("linkinfo", "data", "vxlan_id")),
            link.get(("linkinfo", "data", "vxlan_local")),
            link.get(("linkinfo", "data", "vxlan_port")),
        )
        proxy = link.get(("linkinfo", "data", "vxlan_proxy"))
        if found != (vni, local, port) or not proxy:
            # The kernel cannot change VNI, local address, port or proxy in place.
            raise DatapathError(
                f"{what}: it exists with VNI {found[0]}, local {found[1]}, port "
                f"{found[2]}, proxy {'on' if proxy else 'off'}"
            )

    def _vxlan_index(self, ipr: IPRoute, name: str, what: str) -> int | None:
        """The ifindex of the VXLAN device ``name``; None if missing, DatapathError if it
        is another kind of link."""
        index = ifindex(name)
        if index is None:
            return None
        if self._vxlan_checked is None:
            self._vxlan_checked = {}
        if self._vxlan_checked.get(name) == index:
            return index
        found = tolerate(lambda: ipr.link("get", index=index))
        if found is None:
            return None
        kind = self._kind(found[0])
        if kind != "vxlan":
            raise DatapathError(f"{what}: {name} is a {kind or 'device'}, not vxlan")
        self._vxlan_checked[name] = index
        return index

    @staticmethod
    def _get_neigh(ipr: IPRoute, index: int, address: str) -> Any | None:
        found = tolerate(lambda: ipr.neigh("get", ifindex=index, dst=address))
        return None if found is None else found[0]

    def _set_neigh(
        self, ipr: IPRoute, index: int, address: str, lladdr: str
    ) -> Callable[[], Any] | None:
        """Make ``address`` resolve to ``lladdr`` for good; return how to undo it, or None
        if it already did."""
        try:
            # Create-only first: the common case costs one request and needs no lookup.
            ipr.neigh(
                "add", ifindex=index, dst=address, lladdr=lladdr, state=NUD_PERMANENT
            )
            return lambda: ipr.neigh("del", ifindex=index, dst=address)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
        old = self._get_neigh(ipr, index, address)
        old_mac = old.get("NDA_LLADDR") if old is not None else None
        old_state = old["state"] if old is not None else 0
        if old_mac == lladdr and old_state & NUD_PERMANENT:
            return None
        ipr.neigh(
            "replace", ifindex=index, dst=address, lladdr=lladdr, state=NUD_PERMANENT
        )
        if old_mac and old_state & NUD_PERMANENT:
            return lambda: ipr.neigh(
                "replace", ifindex=index, dst=address, lladdr=old_mac, state=old_state
            )
        # A dynamic entry is only a cache: dropping it is a faithful undo.
        return lambda: ipr.neigh("del", ifindex=index, dst=address)

    @staticmethod
    def _fdb_entries(ipr: IPRoute, index: int) -> list[tuple[str, str]]:
        """(mac, dst) of the device's own FDB entries with a destination. The bridge's
        entries for this port (flag master, no destination) are left out."""
        entries = []
        for msg in ipr.fdb("dump", ifindex=index):
            dst = msg.get("NDA_DST")
            if msg["ifindex"] == index and msg["flags"] & NTF_SELF and dst:
                entries.append((str(msg.get("NDA_LLADDR")).lower(), str(dst)))
        return entries

    @staticmethod
    def _fdb_remotes(ipr: IPRoute, index: int, lladdr: str) -> list[str]:
        """The VTEPs the device's FDB sends ``lladdr`` to ([] if it has no entry)."""
        found = tolerate(lambda: ipr.fdb("get", ifindex=index, lladdr=lladdr, flags=NTF_SELF))
        return [str(msg.get("NDA_DST")) for msg in found or () if msg.get("NDA_DST")]
