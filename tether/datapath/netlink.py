"""NetlinkDatapath, the real ``Datapath`` (``base.py``): every netlink request tether makes, over
pyroute2, with no ``ip`` subprocess. This module holds the class and its namespace, bridge,
endpoint and host-view verbs; it stands on these bases:

* ``workers.py``, ``NetlinkWorkers``: the host worker thread, trips into container namespaces,
  error mapping, ``close`` and ``netns_path`` (with the design note on threads and namespaces);
* ``vxlan.py``, ``VxlanVerbs``: the overlay verbs (VXLAN devices, peers, floods, the bridge MAC
  and host addresses), with the overlay's design note;
* ``macvlan.py``, ``MacvlanVerbs``: macvlan children, the host's shim and routes to them, LAN
  stubs (its ``attach_macvlan`` configures the child with ``_ContainerEnd``, below).

Design note. An endpoint is one veth pair made in one request, the peer created directly inside
the container namespace with its final name, MAC and MTU (no move-and-rename), enslaved to the
bridge and up. Then the alias (which the kernel ignores on creation), then addresses and
default routes from inside: one worker call, one trip into the namespace, two batched round
trips there (addresses and "up", then routes). Dual stack adds the IPv6 address (no duplicate
address detection) and default route to those same batches, accept_ra 0 and accept_dad 0 on
the interface before it comes up, and a wait for the kernel's word that the address is
complete (``workers.Ipv6AddressWatch``): usable, by both ends, when attach returns. Any
failure after the pair exists deletes the host end, which takes the peer with it. Deleting
links one by one is slow (tens of ms): callers tearing down a whole container should delete
its namespace instead, which removes its veth ends.

Every pyroute2/OS error leaves this module as ``DatapathError`` with a one-line message.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import IPRoute  # type: ignore[import-untyped]
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

from ..errors import DatapathError
from . import hostinfo, nsutil
from .inspect import InspectVerbs  # tether trace's read verbs
from .macvlan import MacvlanVerbs
from .vxlan import VxlanVerbs
from .workers import (
    IFF_UP,
    IPV6_READY_TIMEOUT,
    MAC_RE,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_MAIN,
    Ipv6AddressWatch,
    NetlinkWorkers,
    add_address,
    address_message,
    default_route_message,
    family_of,
    ifindex,
    link_up_message,
    mapped,
    on_request_socket,
    reason,
    send_batch,
    split_cidr,
    tolerate,
)

__all__ = ["NetlinkDatapath"]

T = TypeVar("T")

RT_TABLE_LOCAL = 255
_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}
_DEFAULT_DST = {socket.AF_INET: "0.0.0.0/0", socket.AF_INET6: "::/0"}

# What a dual-stack container interface gets for IPv6, before it comes up: no router
# advertisements accepted, since any container on a shared bridge could otherwise hand its
# neighbours a default route and addresses (CVE-2020-13401), and no duplicate address
# detection, so its link-local address is usable at once too (``all.accept_dad`` is 0 in a
# new namespace; the kernel skips DAD when both are). Set per interface, not as the
# namespace's ``default`` in create_netns: that costs every container, v4-only ones too,
# a first /proc/sys lookup in its fresh namespace (0.1-0.3 ms), and accept_dad 0 there
# moves the link-local address's DAD completion (under the RTNL lock) into the attach.
_CONTAINER_IPV6 = (("accept_ra", "0"), ("accept_dad", "0"))


def _family(family: int) -> int:
    """AF_INET/AF_INET6 for a ``family`` of 4 or 6; DatapathError otherwise."""
    if family not in _FAMILIES:
        raise DatapathError(f"invalid address family {family!r}: 4 or 6")
    return _FAMILIES[family]


def _quiet_ipv6(ifname: str) -> None:
    """The container IPv6 settings (``_CONTAINER_IPV6``) for ``ifname``, in the calling
    thread's namespace (written unread: the cheapest, and the old values do not matter)."""
    for key, value in _CONTAINER_IPV6:
        hostinfo.write_sysctl(hostinfo.interface_sysctl_path(ifname, key, 6), value)


def _v4_or_global_v6(msg: Any) -> bool:
    """Whether an address message is one tether reports and manages: every IPv4 address, and
    IPv6 ones of global scope (ULA included; link-local fe80:: and ::1 are the kernel's)."""
    family = msg["family"]
    return bool(family == socket.AF_INET or (family == socket.AF_INET6 and msg["scope"] == RT_SCOPE_UNIVERSE))


def _is_housekeeping6(network: ipaddress.IPv6Network) -> bool:
    """A route or address the kernel keeps for IPv6 itself: link-local, loopback, multicast."""
    return network.is_link_local or network.is_loopback or network.is_multicast


def _random_bridge_mac() -> str:
    # A bridge with a kernel-chosen MAC adopts the lowest port MAC whenever ports come and
    # go, which stales every container's ARP entry for the gateway. A MAC set at creation
    # (addr_assign_type SET) stays put, as Docker does for docker0.
    octets = [0x02] + [random.randint(0, 255) for _ in range(5)]
    return ":".join(f"{b:02x}" for b in octets)


@dataclass(frozen=True)
class _ContainerEnd:
    """What ``attach_veth`` sets up inside the container namespace, checked before anything
    is made: addresses per family and the gateways of the default routes wanted."""

    netns: str
    ifname: str
    address: str
    prefixlen: int
    gateway: str | None
    address6: str | None
    prefixlen6: int
    gateway6: str | None
    keep_existing_default: bool

    @classmethod
    def checked(
        cls, netns: str, ifname: str, cidr: str, gateway: str | None,
        cidr6: str | None, gateway6: str | None, keep_existing_default: bool,
    ) -> _ContainerEnd:  # fmt: skip
        address, prefixlen = split_cidr(cidr)
        address6, prefixlen6 = split_cidr(cidr6, 6) if cidr6 else (None, 0)
        if gateway6 and (address6 is None or family_of(gateway6, "IPv6 gateway") != socket.AF_INET6):
            raise DatapathError(f"invalid IPv6 gateway {gateway6!r}: an IPv6 address, with cidr6")
        return cls(netns, ifname, address, prefixlen, gateway, address6, prefixlen6, gateway6, keep_existing_default)

    def configure(self, ipr: IPRoute) -> bool:
        """Address the interface, bring it up, add the default routes wanted; returns
        whether the one via ``gateway`` (with none, via ``gateway6``) was added. Call only
        inside the container's namespace (``_in_netns``), with a socket opened there.

        Two round trips: addresses and "up" in one batch, the routes in another (they need
        the link up); with IPv6, then the wait until the kernel has finished the address
        (``Ipv6AddressWatch``). Whatever fails, the caller deletes the pair, which undoes
        them all.
        """
        index = ifindex(self.ifname)
        if index is None:
            raise DatapathError(f"cannot configure {self.ifname} in {self.netns}: it vanished")
        if self.address6 is None:
            return self._configure(ipr, index)
        _quiet_ipv6(self.ifname)  # before "up", which makes the link-local address
        watch = Ipv6AddressWatch()
        try:
            routed = self._configure(ipr, index)
            watch.wait(index, self.address6, IPV6_READY_TIMEOUT)
        finally:
            watch.close()
        return routed

    def _configure(self, ipr: IPRoute, index: int) -> bool:
        batch = [address_message(index, self.address, self.prefixlen)]
        if self.address6 is not None:
            batch.append(address_message(index, self.address6, self.prefixlen6))
        send_batch(ipr, [*batch, link_up_message(index)])
        wanted = [(af, via) for af, via in ((socket.AF_INET, self.gateway), (socket.AF_INET6, self.gateway6)) if via]
        if not self.keep_existing_default:
            send_batch(ipr, [default_route_message(index, via, af) for af, via in wanted])
            installed = {af for af, _ in wanted}
        else:
            installed = {af for af, via in wanted if self._add_default_unless_there(ipr, index, via, af)}
        return (socket.AF_INET if self.gateway else socket.AF_INET6) in installed

    @staticmethod
    def _add_default_unless_there(ipr: IPRoute, index: int, gateway: str, family: int) -> bool:
        """The default route of ``family`` via ``gateway``; False if the namespace has one (it stays)."""
        try:
            send_batch(ipr, [default_route_message(index, gateway, family)])
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                return False  # the namespace's first network keeps the default route
            raise
        return True


class NetlinkDatapath(InspectVerbs, MacvlanVerbs, VxlanVerbs, NetlinkWorkers):
    """All netlink for one daemon, bound to the network namespace the daemon runs in (its 'host').

    Construct it in the thread (and so the namespace) the daemon's links should live in.
    Every method may be called from any thread.
    """

    # ------------------------------------------------------------------ namespaces

    def create_netns(self, name: str) -> str:
        """Create and bind a network namespace with ``lo`` up; return its bind path.

        DatapathError if ``name`` is taken. The bind mount is made in the caller's mount
        namespace: run the daemon in the machine's (``nsenter --net``, not ``ip netns
        exec``, which gives it a private one) or ``ip netns`` will not see it.
        """
        path = self.netns_path(name)

        def bring_lo_up() -> None:
            # lo is always index 1 in a new netns
            on_request_socket(lambda ipr: ipr.link("set", index=1, state="up"))

        try:
            nsutil.ensure_netns_dir(self._netns_dir)
            nsutil.bind_new_netns(path, bring_lo_up)
        except FileExistsError as exc:
            raise DatapathError(f"network namespace {name} already exists") from exc
        except (NetlinkError, OSError) as exc:
            raise DatapathError(
                f"cannot create network namespace {name}: {reason(exc)}"
            ) from exc
        return path

    def delete_netns(self, name: str) -> None:
        """Unbind and remove a namespace; a missing one is success.

        The kernel then frees it asynchronously (tens of ms), and with it the veth ends
        inside, whose host peers vanish at that point.
        """
        with mapped(f"cannot delete network namespace {name}"):
            nsutil.unbind_netns(self.netns_path(name))

    def alias_netns(self, name: str, target: str) -> None:
        """Make a namespace another runtime bound elsewhere (Docker's sandbox file) visible
        to ``ip netns`` as ``name``: a symlink in the netns dir. An existing alias is
        replaced; a real bound namespace of that name is left alone (DatapathError)."""
        path = self.netns_path(name)
        with mapped(f"cannot name network namespace {target} {name}"):
            nsutil.ensure_netns_dir(self._netns_dir)
            if os.path.islink(path):
                os.unlink(path)
            elif os.path.exists(path):
                raise DatapathError(f"network namespace {name} already exists")
            os.symlink(target, path)

    def unalias_netns(self, name: str) -> None:
        """Remove an alias made by ``alias_netns``; missing is success, and a real bound
        namespace of that name is never touched."""
        path = self.netns_path(name)
        with mapped(f"cannot remove network namespace name {name}"):
            if os.path.islink(path):
                os.unlink(path)

    def netns_aliases(self, prefix: str) -> dict[str, str]:
        """name -> target of every alias whose name starts with ``prefix``."""
        try:
            names = [n for n in os.listdir(self._netns_dir) if n.startswith(prefix)]
        except FileNotFoundError:
            return {}
        found = {}
        for n in names:
            path = f"{self._netns_dir}/{n}"
            if os.path.islink(path):
                found[n] = os.readlink(path)
        return found

    def netns_exists(self, name: str) -> bool:
        """True if ``name`` is a bound namespace (a leftover plain file does not count)."""
        return nsutil.is_bound_netns(self.netns_path(name))

    def list_netns(self) -> list[str]:
        """Names of the bound namespaces under ``netns_dir``, sorted (every owner's)."""
        try:
            names = os.listdir(self._netns_dir)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise DatapathError(
                f"cannot list {self._netns_dir}: {reason(exc)}"
            ) from exc
        return sorted(
            n for n in names if nsutil.is_bound_netns(f"{self._netns_dir}/{n}")
        )

    # ------------------------------------------------------------------ bridges

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
        """Create the bridge if missing, mark it, give it ``gateway_cidr`` (and, dual stack,
        ``gateway_cidr6``, usable at once: no duplicate address detection) and bring it up.

        The bridge accepts no IPv6 router advertisements (accept_ra 0): a container must
        not be able to hand the host a route. With ``exclusive`` the gateway addresses are
        its only IPv4 and global IPv6 ones (link-local fe80:: stays). Idempotent: on an
        existing bridge it only fixes what differs (alias, MTU, accept_ra, a missing gateway
        address, admin state); without ``exclusive`` other addresses are left alone.
        DatapathError if ``name`` exists and is not a bridge.
        """
        wanted = [split_cidr(gateway_cidr)]
        if gateway_cidr6 is not None:
            wanted.append(split_cidr(gateway_cidr6, 6))

        def work(ipr: IPRoute) -> None:
            with mapped(f"cannot set up bridge {name}"):
                link = self._bridge_link(ipr, name, mtu)
                index = link["index"]
                self._set_alias_and_mtu(ipr, link, mark, mtu)
                try:
                    hostinfo.ensure_sysctl(hostinfo.interface_sysctl_path(name, "accept_ra", 6), "0")
                except FileNotFoundError:
                    if gateway_cidr6 is not None:
                        raise  # else: a kernel without IPv6
                self._set_bridge_addresses(ipr, index, wanted, exclusive)
                if not link["flags"] & IFF_UP:
                    ipr.link("set", index=index, state="up")

        self._host(work)

    def _bridge_link(self, ipr: IPRoute, name: str, mtu: int) -> Any:
        """The link message of the bridge ``name``, created (with a fixed random MAC) if
        missing; DatapathError if ``name`` is another kind of link. On the worker, inside
        the caller's ``mapped``."""
        link = self._get_link(ipr, name)
        if link is None:
            # EEXIST: lost a race with another daemon, which is fine
            tolerate(
                lambda: ipr.link("add", ifname=name, kind="bridge", mtu=mtu, address=_random_bridge_mac()),
                (errno.EEXIST,),
            )
            link = self._get_link(ipr, name)
            if link is None:
                raise DatapathError(
                    f"bridge {name} vanished while being created"
                )
        kind = self._kind(link)
        if kind != "bridge":
            raise DatapathError(
                f"cannot use {name} as a bridge: it is a {kind or 'device'}"
            )
        return link

    @staticmethod
    def _set_bridge_addresses(ipr: IPRoute, index: int, wanted: list[tuple[str, int]], exclusive: bool) -> None:
        """Give the bridge ``index`` each (address, prefixlen) of ``wanted`` it lacks (with
        ``exclusive``, first drop its other IPv4 and global IPv6 addresses). On the worker,
        inside the caller's ``mapped``."""
        present = {
            (a.get("address"), a["prefixlen"])
            for a in ipr.addr("dump", index=index)
            if _v4_or_global_v6(a)  # fe80:: stays, always
        }
        if exclusive:
            for other, other_len in present - set(wanted):
                ipr.addr("del", index=index, address=other, prefixlen=other_len)
        for address, prefixlen in wanted:
            if (address, prefixlen) not in present:
                try:
                    add_address(ipr, index, address, prefixlen)
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:
                        raise

    def delete_bridge(self, name: str) -> None:
        """Delete the bridge; a missing one is success. Its ports stay, unenslaved."""
        self._delete_host_link(name, "bridge")

    def link_exists(self, ifname: str) -> bool:
        """True if ``ifname`` exists in the host namespace."""

        def work(ipr: IPRoute) -> bool:
            return ifindex(ifname) is not None

        return self._host(work)

    def link_master(self, ifname: str) -> str | None:
        """The name of the bridge ``ifname`` is enslaved to, or None (also when missing)."""

        def work(ipr: IPRoute) -> str | None:
            link = self._get_link(ipr, ifname)
            if link is None or not link.get("master"):
                return None
            master = ipr.link("get", index=link.get("master"))[0]
            return str(master.get("ifname"))

        with mapped(f"cannot read the master of {ifname}"):
            return self._host(work)

    def links_with_mark(self, mark: str) -> list[tuple[str, str]]:
        """(ifname, kind) of every host link whose alias is ``mark``; kind may be ''."""

        def work(ipr: IPRoute) -> list[tuple[str, str]]:
            with mapped("cannot list links"):
                return [
                    (link.get("ifname"), self._kind(link))
                    for link in ipr.link("dump")
                    if link.get("ifalias") == mark
                ]

        return self._host(work)

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
        """Connect the namespace ``netns`` to ``bridge`` with a veth pair; all or nothing.

        The host end ``host_ifname`` is marked, enslaved, given ``mtu`` and brought up;
        the container end ``ifname`` gets ``mac``, ``mtu``, ``cidr`` (and ``cidr6``), is
        brought up, and (if ``gateway``/``gateway6``) the default route of that family. A
        namespace that already has a default route of a family fails the attach, unless
        ``keep_existing_default``: then that route stays and this interface gets none of
        that family (one trip into the namespace, no separate look first). Returns whether
        the default route via ``gateway`` was installed (with only ``gateway6``: via it).

        With ``cidr6`` the interface accepts no router advertisements and does no duplicate
        address detection (set on it before it comes up): ``cidr6`` and the link-local
        address are usable when this returns, with no tentative window.
        """
        end = _ContainerEnd.checked(netns, ifname, cidr, gateway, cidr6, gateway6, keep_existing_default)
        if not MAC_RE.match(mac):
            raise DatapathError(f"invalid MAC address {mac!r}")

        def work(ipr: IPRoute) -> bool:
            what = f"cannot attach {host_ifname} to {bridge}"
            ns_fd = self._open_netns(netns)
            if ns_fd is None:
                raise DatapathError(f"{what}: network namespace {netns} does not exist")
            peer = {"ifname": ifname, "net_ns_fd": ns_fd, "address": mac, "mtu": mtu}
            try:
                return bool(self._add_veth(
                    ipr, what, host_ifname, bridge, mtu, mark, hairpin, peer, f"{ifname} in {netns}",
                    # in a thread inside the container namespace, on a socket opened there
                    lambda: self._in_netns(netns, f"cannot configure {ifname} in {netns}", end.configure),
                ))
            finally:
                os.close(ns_fd)

        return self._host(work)

    def create_veth_pair(
        self, *, host_ifname: str, peer_ifname: str, bridge: str, mac: str, mtu: int, mark: str, hairpin: bool = False
    ) -> None:
        """A veth pair with both ends on the host: ``host_ifname`` marked, enslaved to
        ``bridge`` and up; ``peer_ifname`` down with ``mac`` and ``mtu``, for a runtime that
        moves and configures it itself (Docker's remote driver protocol). All or nothing."""
        if not MAC_RE.match(mac):
            raise DatapathError(f"invalid MAC address {mac!r}")
        peer = {"ifname": peer_ifname, "address": mac, "mtu": mtu}
        what = f"cannot create veth {host_ifname} on {bridge}"
        self._host(lambda ipr: self._add_veth(ipr, what, host_ifname, bridge, mtu, mark, hairpin, peer, peer_ifname))

    def _add_veth(
        self,
        ipr: IPRoute,
        what: str,
        host_ifname: str,
        bridge: str,
        mtu: int,
        mark: str,
        hairpin: bool,
        peer: dict[str, Any],
        peer_text: str,
        then: Callable[[], T] | None = None,
    ) -> T | None:
        """Both ends in one request, the host end marked, enslaved and up, then ``then``
        (whose result is returned); on any failure after the request the pair is deleted
        again (all or nothing)."""
        bridge_index = ifindex(bridge)
        if bridge_index is None:
            raise DatapathError(f"{what}: bridge {bridge} does not exist")
        try:
            # Nothing exists yet to undo if this fails; EEXIST means a name belongs to
            # someone else's link: leave it alone.
            ipr.link("add", ifname=host_ifname, kind="veth", mtu=mtu, master=bridge_index, state="up", peer=peer)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                raise DatapathError(f"{what}: {host_ifname} or {peer_text} already exists") from exc
            raise DatapathError(f"{what}: {reason(exc)}") from exc
        try:
            with mapped(what):
                ipr.link("set", ifname=host_ifname, ifalias=mark)  # (IFLA_IFALIAS is ignored on add)
                if hairpin:
                    # a container reaching its own published port through a host address
                    # comes back on the port it left from
                    ipr.brport("set", index=ifindex(host_ifname), mode=1)
            return then() if then is not None else None
        except BaseException:
            try:
                ipr.link("del", ifname=host_ifname)  # takes the peer with it
            except (NetlinkError, OSError):
                pass  # the original error is the one to report
            raise

    def detach_veth(self, host_ifname: str) -> None:
        """Delete an endpoint by its host end (the peer goes too); missing is success.

        Costs tens of ms: to tear down a whole container, delete its namespace instead.
        """
        self._delete_host_link(host_ifname, "veth")

    def detach_in_netns(self, netns: str, ifname: str) -> None:
        """Delete the container-side ``ifname``; a missing namespace or link is success."""
        # A missing namespace or link is success: the namespace was deleted (which removed
        # the link) or an earlier detach got there first. Teardown must be repeatable.
        if not self.netns_exists(netns):
            return

        def work(ipr: IPRoute) -> None:
            tolerate(lambda: ipr.link("del", ifname=ifname))

        try:
            self._in_netns(netns, f"cannot delete {ifname} in {netns}", work)
        except DatapathError:
            if self.netns_exists(netns):
                raise  # else: deleted meanwhile, which removed the link too

    def has_default_route(self, netns: str, family: int = 4) -> bool:
        """True if ``netns`` has a default route of ``family`` (4 or 6) in its main table."""
        return any(r["dst"] == "default" for r in self.container_routes(netns, family=family))

    def add_default_route(self, netns: str, gateway: str) -> None:
        """Add the default route via ``gateway`` (its family: IPv4 or IPv6); the same route
        already there is success, a default route of that family via another gateway a
        DatapathError."""
        af = family_of(gateway, "gateway")
        what = f"cannot add default route via {gateway} in {netns}"

        def work(ipr: IPRoute) -> None:
            try:
                ipr.route("add", family=af, dst=_DEFAULT_DST[af], gateway=gateway)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
                # Idempotent for the same gateway; a different default route is a conflict.
                for route in ipr.route("dump", family=af, table=RT_TABLE_MAIN):
                    if route["dst_len"] == 0 and route.get("gateway") == str(ipaddress.ip_address(gateway)):
                        return
                raise

        self._in_netns(netns, what, work)

    def container_interfaces(self, netns: str) -> list[dict[str, Any]]:
        """Every link in ``netns``, lo included: ifname, mac, mtu, state, ``addresses`` (its
        IPv4 CIDRs) and ``addresses6`` (its global IPv6 CIDRs; link-local and ::1 left out).

        ``state`` is the admin state (IFF_UP), not the carrier.
        """

        def work(ipr: IPRoute) -> list[dict[str, Any]]:
            addresses: dict[tuple[int, int], list[str]] = {}
            for msg in ipr.addr("dump"):  # both families in one request
                if _v4_or_global_v6(msg):
                    key = (msg["index"], msg["family"])
                    addresses.setdefault(key, []).append(f"{msg.get('address')}/{msg['prefixlen']}")
            return [
                {
                    "ifname": link.get("ifname"),
                    "mac": link.get("address"),
                    "mtu": link.get("mtu"),
                    "state": "up" if link["flags"] & IFF_UP else "down",
                    "addresses": addresses.get((link["index"], socket.AF_INET), []),
                    "addresses6": addresses.get((link["index"], socket.AF_INET6), []),
                }
                for link in ipr.link("dump")
            ]

        return self._in_netns(netns, f"cannot list interfaces in {netns}", work)

    def container_routes(self, netns: str, family: int = 4) -> list[dict[str, Any]]:
        """The main-table routes of ``family`` (4 or 6) in ``netns`` (dst, gateway, dev), in
        the kernel's order. IPv6 leaves out what the kernel keeps for itself: link-local
        (fe80::/64 per interface), loopback and multicast routes."""
        af = _family(family)

        def work(ipr: IPRoute) -> list[dict[str, Any]]:
            names = {link["index"]: link.get("ifname") for link in ipr.link("dump")}
            routes = []
            for msg in ipr.route("dump", family=af, table=RT_TABLE_MAIN):
                dst_len = msg["dst_len"]
                dst = "default" if dst_len == 0 else f"{msg.get('dst')}/{dst_len}"
                if af == socket.AF_INET6 and dst_len and _is_housekeeping6(ipaddress.IPv6Network(dst, strict=False)):
                    continue
                routes.append({"dst": dst, "gateway": msg.get("gateway"), "dev": names.get(msg.get("oif"))})
            return routes

        return self._in_netns(netns, f"cannot list routes in {netns}", work)

    # ------------------------------------------------------------------ host view

    def set_interface_sysctl(self, ifname: str, key: str, value: str, family: int = 4) -> None:
        """net.ipv4.conf.IFNAME.KEY = VALUE (``family`` 6: net.ipv6.conf...) in the host
        namespace (forwarding, route_localnet, accept_ra); already set is success."""
        self._host(lambda ipr: hostinfo.set_interface_sysctl(ifname, key, value, family))

    def enable_ipv6_forwarding(self) -> None:
        """net.ipv6.conf.all.forwarding = 1 in the host namespace, after giving every
        interface with accept_ra 1 the value 2 (a router would otherwise stop accepting
        router advertisements, and the host lose the routes its uplink learns from them).
        Already on is success, and then nothing is touched."""
        self._host(lambda ipr: hostinfo.enable_ipv6_forwarding())

    def host_ports(self) -> hostinfo.HostPorts:
        """The host's bound ports, read once; ``.holder(protocol, port, host_ip)`` names
        the process holding one (listening TCP, bound UDP), or None."""
        return hostinfo.HostPorts()

    def host_addresses(self) -> list[str]:
        """Every IPv4 address of the host namespace, then every global IPv6 one (link-local
        and ::1 left out), each sorted, without prefix length."""

        def work(ipr: IPRoute) -> list[str]:
            found: dict[int, set[str]] = {socket.AF_INET: set(), socket.AF_INET6: set()}
            with mapped("cannot read host addresses"):
                for msg in ipr.addr("dump"):
                    if _v4_or_global_v6(msg):
                        found[msg["family"]].add(str(msg.get("address")))
            return sorted(found[socket.AF_INET]) + sorted(found[socket.AF_INET6])

        return self._host(work)

    def uplinks(self) -> list[str]:
        """Interfaces that carry a default route in the main table (the way out)."""

        def work(ipr: IPRoute) -> list[str]:
            names: set[str] = set()
            with mapped("cannot read the default route"):
                for msg in ipr.route("dump", family=socket.AF_INET):
                    if msg["dst_len"] == 0 and msg.get("table") == 254:
                        oif = msg.get("oif")
                        for nh in msg.get("multipath") or []:
                            oif = oif or nh.get("oif")
                        if oif:
                            names.add(str(ipr.link("get", index=oif)[0].get("ifname")))
            return sorted(names)

        return self._host(work)

    def host_networks(self) -> list[str]:
        """The networks of every address and every route of the host, IPv4 then IPv6, each
        sorted; the local table, default routes and IPv6 link-local, loopback and multicast
        left out.

        A default route (0.0.0.0/0, ::/0) overlaps everything, so counting it would leave no
        subnet to pick. The local table only repeats the addresses.
        """

        def work(ipr: IPRoute) -> list[str]:
            found: dict[int, set[Any]] = {socket.AF_INET: set(), socket.AF_INET6: set()}
            with mapped("cannot read host addresses and routes"):
                for msg in ipr.addr("dump"):
                    if msg["family"] in found:
                        cidr = f"{msg.get('address')}/{msg['prefixlen']}"
                        found[msg["family"]].add(ipaddress.ip_interface(cidr).network)
                for af in found:
                    for msg in ipr.route("dump", family=af):
                        if msg.get("table") == RT_TABLE_LOCAL or msg["dst_len"] == 0 or msg.get("dst") is None:
                            continue
                        found[af].add(ipaddress.ip_network(f"{msg.get('dst')}/{msg['dst_len']}", strict=False))
            v6 = {n for n in found[socket.AF_INET6] if not _is_housekeeping6(n)}
            return [str(n) for n in sorted(found[socket.AF_INET])] + [str(n) for n in sorted(v6)]

        return self._host(work)
