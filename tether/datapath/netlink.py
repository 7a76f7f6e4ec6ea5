"""NetlinkDatapath, the real ``Datapath`` (``base.py``): every netlink request tether makes, over
pyroute2, with no ``ip`` subprocess.

Design note. A NetlinkDatapath is bound to the network namespace of the thread that constructs it
(the daemon's "host"). Two facts shape it:

* pyroute2 0.9 keeps its socket and asyncio loop *per thread*: an ``IPRoute`` used from a
  second thread silently opens a second socket in *that* thread's namespace, and leaks it
  until ``close()``. So the host socket lives in one dedicated worker thread, which first
  ``setns``-es into the captured host namespace, and every host-side request is handed to
  that thread. This also serialises them, which is what makes NetlinkDatapath thread-safe.
* ``IPRoute(netns=...)`` forks a helper per namespace (~12 ms). Container-side work instead
  runs in a throwaway thread that has ``setns``-ed into the container namespace
  (``nsutil.run_in_netns``) and opens its own request-only socket there (``groups=0``).

An endpoint is one veth pair made in one request, the peer created directly inside the
container namespace with its final name, MAC and MTU (no move-and-rename), enslaved to the
bridge and up. Then the alias (which the kernel ignores on creation), then address and
default route from inside. Any failure after the pair exists deletes the host end, which
takes the peer with it. Deleting links one by one is slow (tens of ms): callers tearing
down a whole container should delete its namespace instead, which removes its veth ends.

Every pyroute2/OS error leaves this module as ``DatapathError`` with a one-line message.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import random
import re
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from pyroute2 import IPRoute  # type: ignore[import-untyped]
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

from ..errors import DatapathError
from . import hostinfo, nsutil
from .base import VXLAN_OVERHEAD

__all__ = ["NetlinkDatapath"]

T = TypeVar("T")

IFF_UP = 0x1
RT_TABLE_MAIN = 254
RT_TABLE_LOCAL = 255
_MISSING = (errno.ENODEV, errno.ENOENT)
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, NetlinkError):
        return os.strerror(exc.code) if exc.code else str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


@contextmanager
def _mapped(what: str) -> Iterator[None]:
    """Map lower-layer failures to one DatapathError line: '<what>: <reason>'."""
    try:
        yield
    except (NetlinkError, OSError) as exc:
        raise DatapathError(f"{what}: {_reason(exc)}") from exc


def _is_missing(exc: BaseException) -> bool:
    code = exc.code if isinstance(exc, NetlinkError) else getattr(exc, "errno", None)
    return code in _MISSING


def _open_request_socket() -> IPRoute:
    """A netlink socket in the calling thread's namespace that only sends requests."""
    return IPRoute(groups=0)


def _random_bridge_mac() -> str:
    # A bridge with a kernel-chosen MAC adopts the lowest port MAC whenever ports come and
    # go, which stales every container's ARP entry for the gateway. A MAC set at creation
    # (addr_assign_type SET) stays put, as Docker does for docker0.
    octets = [0x02] + [random.randint(0, 255) for _ in range(5)]
    return ":".join(f"{b:02x}" for b in octets)


def _split_cidr(cidr: str) -> tuple[str, int]:
    try:
        iface = ipaddress.ip_interface(cidr)
    except ValueError as exc:
        raise DatapathError(f"invalid address {cidr!r}") from exc
    if "/" not in cidr:
        raise DatapathError(f"invalid address {cidr!r}: a prefix length is required")
    return str(iface.ip), iface.network.prefixlen


def _ifindex(ifname: str) -> int | None:
    """The index of ``ifname`` in the calling thread's namespace, or None if there is none.

    An ioctl, about 50 times cheaper than pyroute2's ``link("get")``, which parses the
    whole link message: it is on the attach path twice.
    """
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return None


# Overlay (VXLAN) constants: linux/neighbour.h. pyroute2's fdb() fills in NUD_NOARP |
# NUD_PERMANENT and NTF_SELF for add/append/del only, not for replace, so they are spelt out.
NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
NTF_MASTER = 0x04
_ZERO_MAC = "00:00:00:00:00:00"
_MAX_VNI = (1 << 24) - 1


def _unicast_mac(mac: str) -> str:
    """``mac`` in lower case, or DatapathError if it is not a unicast Ethernet address."""
    if not _MAC_RE.match(mac):
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


class NetlinkDatapath:
    """All netlink for one daemon, bound to the network namespace the daemon runs in (its 'host').

    Construct it in the thread (and so the namespace) the daemon's links should live in.
    Every method may be called from any thread.
    """

    def __init__(self, netns_dir: str = "/var/run/netns") -> None:
        self._netns_dir = os.path.abspath(netns_dir)
        try:
            self._host_fd: int = nsutil.current_netns_fd()
        except OSError as exc:
            raise DatapathError(
                f"cannot open own network namespace: {_reason(exc)}"
            ) from exc
        self._closed = False
        self._close_lock = threading.Lock()
        self._ipr: IPRoute | None = None
        self._worker_ident: int | None = None
        self._worker = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="tether-netlink"
        )
        try:
            # Open the host socket now: fail at construction, not on first use.
            self._host(lambda ipr: None)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ plumbing

    def _host(self, fn: Callable[[IPRoute], T]) -> T:
        """Run ``fn(ipr)`` on the host socket, in the worker thread that owns it."""
        if self._closed:
            raise DatapathError("datapath is closed")
        if threading.get_ident() == self._worker_ident:
            assert self._ipr is not None
            return fn(self._ipr)  # already on the worker: queueing would deadlock
        try:
            future = self._worker.submit(self._on_worker, fn)
        except RuntimeError as exc:  # submit after shutdown
            raise DatapathError("datapath is closed") from exc
        return future.result()

    def _on_worker(self, fn: Callable[[IPRoute], T]) -> T:
        if self._closed:  # queued behind close(): never reopen the socket
            raise DatapathError("datapath is closed")
        if self._ipr is None:
            self._worker_ident = threading.get_ident()
            with _mapped("cannot open netlink socket in the host namespace"):
                # The worker may have been started from any thread: join the host first.
                nsutil.setns(self._host_fd)
                self._ipr = _open_request_socket()
        return fn(self._ipr)

    def _open_netns(self, netns: str) -> int | None:
        """An fd on the bound namespace ``netns``, or None if it is not there."""
        try:
            return os.open(self.netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DatapathError(
                f"cannot open network namespace {netns}: {_reason(exc)}"
            ) from exc

    def _in_netns(self, netns: str, what: str, fn: Callable[[IPRoute], T]) -> T:
        """Run ``fn(ipr)`` on a fresh socket inside the bound namespace ``netns``.

        Runs in a throwaway thread; callable from any thread, the worker included.
        """
        fd = self._open_netns(netns)
        if fd is None:
            raise DatapathError(f"{what}: network namespace {netns} does not exist")

        def body() -> T:
            ipr = _open_request_socket()
            try:
                return fn(ipr)
            finally:
                ipr.close()

        try:
            with _mapped(what):
                return nsutil.run_in_netns(fd, body)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Release the host socket and the worker thread. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True

            def shut() -> None:
                if self._ipr is not None:
                    self._ipr.close()
                    self._ipr = None

            try:
                self._worker.submit(shut).result()
            finally:
                self._worker.shutdown(wait=True)
                os.close(self._host_fd)

    # ------------------------------------------------------------------ namespaces

    def netns_path(self, name: str) -> str:
        """Where the namespace ``name`` is bound: ``{netns_dir}/{name}``, as ``ip netns``.
        An absolute path (a namespace another runtime made, e.g. a CNI_NETNS) is itself."""
        if name.startswith("/") and "\0" not in name and "/../" not in name:
            return name
        if not name or "/" in name or name in (".", "..") or "\0" in name:
            raise DatapathError(f"invalid network namespace name {name!r}")
        return f"{self._netns_dir}/{name}"

    def create_netns(self, name: str) -> str:
        """Create and bind a network namespace with ``lo`` up; return its bind path.

        DatapathError if ``name`` is taken. The bind mount is made in the caller's mount
        namespace: run the daemon in the machine's (``nsenter --net``, not ``ip netns
        exec``, which gives it a private one) or ``ip netns`` will not see it.
        """
        path = self.netns_path(name)

        def bring_lo_up() -> None:
            ipr = _open_request_socket()
            try:
                # lo is always index 1 in a new netns
                ipr.link("set", index=1, state="up")
            finally:
                ipr.close()

        try:
            nsutil.ensure_netns_dir(self._netns_dir)
            nsutil.bind_new_netns(path, bring_lo_up)
        except FileExistsError as exc:
            raise DatapathError(f"network namespace {name} already exists") from exc
        except (NetlinkError, OSError) as exc:
            raise DatapathError(
                f"cannot create network namespace {name}: {_reason(exc)}"
            ) from exc
        return path

    def delete_netns(self, name: str) -> None:
        """Unbind and remove a namespace; a missing one is success.

        The kernel then frees it asynchronously (tens of ms), and with it the veth ends
        inside, whose host peers vanish at that point.
        """
        with _mapped(f"cannot delete network namespace {name}"):
            nsutil.unbind_netns(self.netns_path(name))

    def alias_netns(self, name: str, target: str) -> None:
        """Make a namespace another runtime bound elsewhere (Docker's sandbox file) visible
        to ``ip netns`` as ``name``: a symlink in the netns dir. An existing alias is
        replaced; a real bound namespace of that name is left alone (DatapathError)."""
        path = self.netns_path(name)
        with _mapped(f"cannot name network namespace {target} {name}"):
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
        with _mapped(f"cannot remove network namespace name {name}"):
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
                f"cannot list {self._netns_dir}: {_reason(exc)}"
            ) from exc
        return sorted(
            n for n in names if nsutil.is_bound_netns(f"{self._netns_dir}/{n}")
        )

    # ------------------------------------------------------------------ bridges

    def ensure_bridge(self, name: str, gateway_cidr: str, mtu: int, mark: str, exclusive: bool = False) -> None:
        """Create the bridge if missing, mark it, give it ``gateway_cidr`` and bring it up.

        Idempotent: on an existing bridge it only fixes what differs (alias, MTU, a missing
        gateway address, admin state). Other addresses on it are left alone. DatapathError
        if ``name`` exists and is not a bridge.
        """
        address, prefixlen = _split_cidr(gateway_cidr)

        def work(ipr: IPRoute) -> None:
            with _mapped(f"cannot set up bridge {name}"):
                link = self._bridge_link(ipr, name, mtu)
                index = link["index"]
                self._set_alias_and_mtu(ipr, link, mark, mtu)
                self._set_bridge_address(ipr, index, address, prefixlen, exclusive)
                if not link["flags"] & IFF_UP:
                    ipr.link("set", index=index, state="up")

        self._host(work)

    def _bridge_link(self, ipr: IPRoute, name: str, mtu: int) -> Any:
        """The link message of the bridge ``name``, created (with a fixed random MAC) if
        missing; DatapathError if ``name`` is another kind of link. On the worker, inside
        the caller's ``_mapped``."""
        link = self._get_link(ipr, name)
        if link is None:
            try:
                ipr.link(
                    "add",
                    ifname=name,
                    kind="bridge",
                    mtu=mtu,
                    address=_random_bridge_mac(),
                )
            except NetlinkError as exc:
                # EEXIST: lost a race with another daemon, which is fine
                if exc.code != errno.EEXIST:
                    raise
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
    def _set_bridge_address(
        ipr: IPRoute, index: int, address: str, prefixlen: int, exclusive: bool
    ) -> None:
        """Give the bridge ``index`` the gateway address if it lacks it (with ``exclusive``,
        drop its other IPv4 addresses first). On the worker, inside the caller's ``_mapped``."""
        present = {
            (a.get("address"), a["prefixlen"])
            for a in ipr.addr("dump", index=index, family=socket.AF_INET)
        }
        if exclusive:
            for other, other_len in present - {(address, prefixlen)}:
                ipr.addr("del", index=index, address=other, prefixlen=other_len)
        if (address, prefixlen) not in present:
            try:
                ipr.addr(
                    "add", index=index, address=address, prefixlen=prefixlen
                )
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise

    def delete_bridge(self, name: str) -> None:
        """Delete the bridge; a missing one is success. Its ports stay, unenslaved."""
        self._delete_host_link(name, "bridge")

    def link_exists(self, ifname: str) -> bool:
        """True if ``ifname`` exists in the host namespace."""

        def work(ipr: IPRoute) -> bool:
            return _ifindex(ifname) is not None

        return self._host(work)

    def link_master(self, ifname: str) -> str | None:
        """The name of the bridge ``ifname`` is enslaved to, or None (also when missing)."""

        def work(ipr: IPRoute) -> str | None:
            link = self._get_link(ipr, ifname)
            if link is None or not link.get("master"):
                return None
            master = ipr.link("get", index=link.get("master"))[0]
            return str(master.get("ifname"))

        with _mapped(f"cannot read the master of {ifname}"):
            return self._host(work)

    def links_with_mark(self, mark: str) -> list[tuple[str, str]]:
        """(ifname, kind) of every host link whose alias is ``mark``; kind may be ''."""

        def work(ipr: IPRoute) -> list[tuple[str, str]]:
            with _mapped("cannot list links"):
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
    ) -> bool:
        """Connect the namespace ``netns`` to ``bridge`` with a veth pair; all or nothing.

        The host end ``host_ifname`` is marked, enslaved, given ``mtu`` and brought up;
        the container end ``ifname`` gets ``mac``, ``mtu``, ``cidr``, is brought up, and
        (if ``gateway``) the default route. A namespace that already has a default route
        fails the attach, unless ``keep_existing_default``: then that route stays and
        this interface gets none (one trip into the namespace, no separate look first).
        Returns whether the default route via ``gateway`` was installed.
        """
        address, prefixlen = _split_cidr(cidr)
        if not _MAC_RE.match(mac):
            raise DatapathError(f"invalid MAC address {mac!r}")

        def configure_inside(ipr: IPRoute) -> bool:
            # Runs in a thread inside the container namespace.
            return self._configure_container_end(
                ipr, netns, ifname, address, prefixlen, gateway, keep_existing_default
            )

        def work(ipr: IPRoute) -> bool:
            what = f"cannot attach {host_ifname} to {bridge}"
            ns_fd = self._open_netns(netns)
            if ns_fd is None:
                raise DatapathError(f"{what}: network namespace {netns} does not exist")
            peer = {"ifname": ifname, "net_ns_fd": ns_fd, "address": mac, "mtu": mtu}
            try:
                return bool(self._add_veth(
                    ipr, what, host_ifname, bridge, mtu, mark, hairpin, peer, f"{ifname} in {netns}",
                    lambda: self._in_netns(netns, f"cannot configure {ifname} in {netns}", configure_inside),
                ))
            finally:
                os.close(ns_fd)

        return self._host(work)

    @staticmethod
    def _configure_container_end(
        ipr: IPRoute,
        netns: str,
        ifname: str,
        address: str,
        prefixlen: int,
        gateway: str | None,
        keep_existing_default: bool,
    ) -> bool:
        """Address ``ifname``, bring it up and, with ``gateway``, add the default route via
        it; returns whether that route was added. Call only inside the container's
        namespace (``_in_netns``), with a socket opened there."""
        index = _ifindex(ifname)
        if index is None:
            raise DatapathError(
                f"cannot configure {ifname} in {netns}: it vanished"
            )
        ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
        ipr.link("set", index=index, state="up")
        if not gateway:
            return False
        try:
            ipr.route("add", dst="0.0.0.0/0", gateway=gateway, oif=index)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST and keep_existing_default:
                return False  # the namespace's first network keeps the default route
            raise
        return True

    def create_veth_pair(
        self, *, host_ifname: str, peer_ifname: str, bridge: str, mac: str, mtu: int, mark: str, hairpin: bool = False
    ) -> None:
        """A veth pair with both ends on the host: ``host_ifname`` marked, enslaved to
        ``bridge`` and up; ``peer_ifname`` down with ``mac`` and ``mtu``, for a runtime that
        moves and configures it itself (Docker's remote driver protocol). All or nothing."""
        if not _MAC_RE.match(mac):
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
        bridge_index = _ifindex(bridge)
        if bridge_index is None:
            raise DatapathError(f"{what}: bridge {bridge} does not exist")
        try:
            # Nothing exists yet to undo if this fails; EEXIST means a name belongs to
            # someone else's link: leave it alone.
            ipr.link("add", ifname=host_ifname, kind="veth", mtu=mtu, master=bridge_index, state="up", peer=peer)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                raise DatapathError(f"{what}: {host_ifname} or {peer_text} already exists") from exc
            raise DatapathError(f"{what}: {_reason(exc)}") from exc
        try:
            with _mapped(what):
                ipr.link("set", ifname=host_ifname, ifalias=mark)  # (IFLA_IFALIAS is ignored on add)
                if hairpin:
                    # a container reaching its own published port through a host address
                    # comes back on the port it left from
                    ipr.brport("set", index=_ifindex(host_ifname), mode=1)
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
            try:
                ipr.link("del", ifname=ifname)
            except NetlinkError as exc:
                if not _is_missing(exc):
                    raise

        try:
            self._in_netns(netns, f"cannot delete {ifname} in {netns}", work)
        except DatapathError:
            if self.netns_exists(netns):
                raise  # else: deleted meanwhile, which removed the link too

    def has_default_route(self, netns: str) -> bool:
        """True if ``netns`` has an IPv4 default route in its main table."""
        return any(r["dst"] == "default" for r in self.container_routes(netns))

    def add_default_route(self, netns: str, gateway: str) -> None:
        """Add the default route via ``gateway``; the same route already there is success.

        A default route via another gateway is a DatapathError.
        """

        def work(ipr: IPRoute) -> None:
            try:
                ipr.route("add", dst="0.0.0.0/0", gateway=gateway)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
                # Idempotent for the same gateway; a different default route is a conflict.
                for route in ipr.route(
                    "dump", family=socket.AF_INET, table=RT_TABLE_MAIN
                ):
                    if route["dst_len"] == 0 and route.get("gateway") == gateway:
                        return
                raise

        self._in_netns(
            netns, f"cannot add default route via {gateway} in {netns}", work
        )

    def container_interfaces(self, netns: str) -> list[dict[str, Any]]:
        """Every link in ``netns``, lo included, with its IPv4 addresses (IPv6 left out).

        ``state`` is the admin state (IFF_UP), not the carrier.
        """

        def work(ipr: IPRoute) -> list[dict[str, Any]]:
            addresses: dict[int, list[str]] = {}
            for msg in ipr.addr("dump", family=socket.AF_INET):
                addresses.setdefault(msg["index"], []).append(
                    f"{msg.get('address')}/{msg['prefixlen']}"
                )
            return [
                {
                    "ifname": link.get("ifname"),
                    "mac": link.get("address"),
                    "mtu": link.get("mtu"),
                    "state": "up" if link["flags"] & IFF_UP else "down",
                    "addresses": addresses.get(link["index"], []),
                }
                for link in ipr.link("dump")
            ]

        return self._in_netns(netns, f"cannot list interfaces in {netns}", work)

    def container_routes(self, netns: str) -> list[dict[str, Any]]:
        """The IPv4 routes of the main table in ``netns``, in the kernel's order."""

        def work(ipr: IPRoute) -> list[dict[str, Any]]:
            names = {link["index"]: link.get("ifname") for link in ipr.link("dump")}
            routes = []
            for msg in ipr.route("dump", family=socket.AF_INET, table=RT_TABLE_MAIN):
                dst_len = msg["dst_len"]
                routes.append(
                    {
                        "dst": "default"
                        if dst_len == 0
                        else f"{msg.get('dst')}/{dst_len}",
                        "gateway": msg.get("gateway"),
                        "dev": names.get(msg.get("oif")),
                    }
                )
            return routes

        return self._in_netns(netns, f"cannot list routes in {netns}", work)

    # ------------------------------------------------------------------ host view

    def set_interface_sysctl(self, ifname: str, key: str, value: str) -> None:
        """net.ipv4.conf.IFNAME.KEY = VALUE in the host namespace (forwarding, route_localnet)."""
        hostinfo.set_interface_sysctl(ifname, key, value)

    def host_ports(self) -> hostinfo.HostPorts:
        """The host's bound ports, read once; ``.holder(protocol, port, host_ip)`` names
        the process holding one (listening TCP, bound UDP), or None."""
        return hostinfo.HostPorts()

    def host_addresses(self) -> list[str]:
        """Every IPv4 address of the host namespace (no prefix length)."""

        def work(ipr: IPRoute) -> list[str]:
            with _mapped("cannot read host addresses"):
                return sorted({str(msg.get("address")) for msg in ipr.addr("dump", family=socket.AF_INET)})

        return self._host(work)

    def uplinks(self) -> list[str]:
        """Interfaces that carry a default route in the main table (the way out)."""

        def work(ipr: IPRoute) -> list[str]:
            names: set[str] = set()
            with _mapped("cannot read the default route"):
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
        """IPv4 networks of every address and every route, local table and default excluded.

        The default route (0.0.0.0/0) is left out: it overlaps everything, so counting it
        would leave no subnet to pick. The local table only repeats the addresses.
        """

        def work(ipr: IPRoute) -> list[str]:
            found: set[ipaddress.IPv4Network] = set()
            with _mapped("cannot read host addresses and routes"):
                for msg in ipr.addr("dump", family=socket.AF_INET):
                    found.add(
                        ipaddress.IPv4Interface(
                            f"{msg.get('address')}/{msg['prefixlen']}"
                        ).network
                    )
                for msg in ipr.route("dump", family=socket.AF_INET):
                    if (
                        msg.get("table") == RT_TABLE_LOCAL
                        or msg["dst_len"] == 0
                        or msg.get("dst") is None
                    ):
                        continue
                    found.add(
                        ipaddress.IPv4Network(
                            f"{msg.get('dst')}/{msg['dst_len']}", strict=False
                        )
                    )
            return [str(n) for n in sorted(found)]

        return self._host(work)

    # ------------------------------------------------------------------ overlay (VXLAN)
    #
    # Design note. One overlay network is, on every host, a VXLAN device (the network's
    # VNI) enslaved to the network's bridge, with the containers' veths beside it. The
    # control plane knows every endpoint, so nothing is learned from the wire:
    #
    # * The device has learning off (a source VTEP is never trusted) and proxy on: it
    #   answers ARP requests from its own neighbour table and drops every ARP frame it
    #   would otherwise tunnel (answered or not). So ARP never crosses hosts, and a peer
    #   that is not programmed cannot be resolved at all. l2miss/l3miss stay off: there is
    #   no one listening for misses.
    # * Each remote endpoint (and each remote host's own overlay address) is a permanent
    #   neighbour entry (ip -> mac) on the device plus a static FDB entry (mac -> VTEP),
    #   in that order, flannel's, with the neighbour undone if the FDB step fails. Each
    #   remote host also gets one all-zeros FDB entry (append): the device sends
    #   broadcast, multicast *and unknown unicast* to every such VTEP.
    # * The bridge port of the device keeps the bridge defaults (learning on, flood on).
    #   Learning lets the bridge send a remote MAC only to the VXLAN port (it learns it from
    #   the proxy's ARP reply, which enters through that port); without it every frame to
    #   a remote container would also be copied to every local one. Flood stays on so a
    #   frame whose bridge entry aged out still reaches the device, whose static FDB has
    #   the answer. neigh_suppress (the bridge-level ARP proxy) is not used: the device's
    #   own proxy already does that job, from the table this code programs.
    #
    # The FDB entry is written with "replace" plus NUD_PERMANENT|NUD_NOARP and NTF_SELF:
    # "add" fails with EEXIST on a known MAC; "replace" without NTF_SELF silently lands in
    # the *bridge's* FDB (the device is a bridge port) with no destination, and without
    # NUD_PERMANENT the VXLAN driver refuses it. With all three it is idempotent, moves a
    # MAC to another VTEP in place, and shows as "dst VTEP self permanent".
    #
    # A host must never hold a peer entry for one of its *own* endpoints: its proxy would
    # answer ARP for it from the vxlan side, the bridge would learn the MAC on the VXLAN
    # port, and local frames to it would be tunnelled to the stale VTEP. When an endpoint
    # moves here, remove_peer its remote entry (which also drops the bridge's learned
    # entry on the VXLAN port, else frames to it are dropped until it first transmits).
    #
    # Pitfalls for callers: remove_peer stops ARP resolution of the peer, but a container
    # that still has the MAC cached keeps reaching it through the all-zeros entries (an
    # unknown unicast is flooded to every VTEP) until its neighbour entry fails probing
    # (tens of seconds): removing a peer is not a firewall. VXLAN and its bridge ports need
    # an MTU of the underlay's minus 50; the kernel silently caps a larger MTU at creation.

    # name -> ifindex of host links already checked to be VXLAN devices, so the hot path
    # (add_peer) skips a link dump: a recreated device gets a new ifindex and is checked
    # again. Set on first use and only touched on the worker thread.
    _vxlan_checked: dict[str, int] | None = None

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
        the interface holding ``local_ip``, learning off and ARP proxy on (see the design
        note above); alias ``mark``. ``mtu`` may be at most the underlay's minus 50
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
            with _mapped(what):
                bridge_index = _ifindex(bridge)
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
        the worker, inside the caller's ``_mapped``."""
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
        and admin state, in that order. On the worker, inside the caller's ``_mapped``."""
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
            with _mapped(what):
                return int(self._underlay(ipr, local, what).get("mtu"))

        return self._host(work)

    def add_peer(self, vxlan: str, ip: str, mac: str, vtep: str) -> None:
        """Program a remote endpoint: ``ip`` is at ``mac``, which lives behind ``vtep``.

        A permanent neighbour entry on ``vxlan`` (the proxy answers ARP with it), then a
        static FDB entry. Idempotent; the same MAC behind another VTEP is moved there. All
        or nothing: if the FDB step fails, the neighbour entry is put back as it was.
        """
        address = _ipv4(ip, "peer address")
        lladdr = _unicast_mac(mac)
        remote = _vtep(vtep)
        what = f"cannot add peer {address} ({lladdr}) via {remote} on {vxlan}"

        def work(ipr: IPRoute) -> None:
            with _mapped(what):
                index = self._vxlan_index(ipr, vxlan, what)
                if index is None:
                    raise DatapathError(f"{what}: {vxlan} does not exist")
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

        self._host(work)

    def remove_peer(self, vxlan: str, ip: str, mac: str, vtep: str) -> None:
        """Undo ``add_peer``; whatever is already gone is success.

        The FDB entry goes only while ``mac`` still points to ``vtep``. If a later
        ``add_peer`` moved ``mac`` to another VTEP, the endpoint has moved and nothing is
        removed (its neighbour entry is the new location's too). The neighbour entry goes
        only while ``ip`` still resolves to ``mac``. The bridge's learned entry for ``mac``
        on the VXLAN port goes too: if the endpoint now lives on this host, that stale entry
        would otherwise swallow frames to it until it next transmits (up to 300 s).
        """
        address = _ipv4(ip, "peer address")
        lladdr = _unicast_mac(mac)
        remote = _vtep(vtep)
        what = f"cannot remove peer {address} ({lladdr}) via {remote} from {vxlan}"

        def work(ipr: IPRoute) -> None:
            with _mapped(what):
                index = self._vxlan_index(ipr, vxlan, what)
                if index is None:
                    return  # the device is gone, and its entries with it
                remotes = self._fdb_remotes(ipr, index, lladdr)
                if remotes and remote not in remotes:
                    return  # moved to another VTEP: the new location owns both entries
                if remote in remotes:
                    # The kernel deletes only the destination given (and reports success
                    # if it is not there): no window in which another VTEP's entry goes.
                    self._ignore_missing(
                        lambda: ipr.fdb("del", ifindex=index, lladdr=lladdr, dst=remote)
                    )
                neigh = self._get_neigh(ipr, index, address)
                if neigh is not None and neigh.get("NDA_LLADDR") == lladdr:
                    self._ignore_missing(
                        lambda: ipr.neigh("del", ifindex=index, dst=address)
                    )
                try:
                    # Only an entry on *this* port goes (the kernel checks the port).
                    ipr.fdb("del", ifindex=index, lladdr=lladdr, flags=NTF_MASTER)
                except NetlinkError as exc:
                    # EOPNOTSUPP: the device is not a bridge port at all
                    if exc.code != errno.EOPNOTSUPP and not _is_missing(exc):
                        raise

        self._host(work)

    def add_flood(self, vxlan: str, vtep: str) -> None:
        """Send broadcast, multicast and unknown unicast also to ``vtep``; idempotent."""
        remote = _vtep(vtep)
        what = f"cannot add flood entry for {remote} on {vxlan}"

        def work(ipr: IPRoute) -> None:
            with _mapped(what):
                index = self._vxlan_index(ipr, vxlan, what)
                if index is None:
                    raise DatapathError(f"{what}: {vxlan} does not exist")
                # "append" on the all-zeros MAC adds one destination to its list; the
                # kernel treats a destination already there as success. pyroute2 fills in
                # NUD_PERMANENT | NUD_NOARP and NTF_SELF for "append".
                ipr.fdb("append", ifindex=index, lladdr=_ZERO_MAC, dst=remote)

        self._host(work)

    def remove_flood(self, vxlan: str, vtep: str) -> None:
        """Stop flooding to ``vtep``; a missing device or entry is success."""
        remote = _vtep(vtep)
        what = f"cannot remove flood entry for {remote} from {vxlan}"

        def work(ipr: IPRoute) -> None:
            with _mapped(what):
                index = self._vxlan_index(ipr, vxlan, what)
                if index is not None:
                    self._ignore_missing(
                        lambda: ipr.fdb(
                            "del", ifindex=index, lladdr=_ZERO_MAC, dst=remote
                        )
                    )

        self._host(work)

    def list_peers(self, vxlan: str) -> list[tuple[str, str, str]]:
        """(ip, mac, vtep) of every programmed peer, sorted: permanent neighbour entries
        joined with the FDB entries of their MAC. Half-programmed peers are left out."""
        what = f"cannot list peers of {vxlan}"

        def work(ipr: IPRoute) -> list[tuple[str, str, str]]:
            with _mapped(what):
                index = self._vxlan_index(ipr, vxlan, what)
                if index is None:
                    raise DatapathError(f"{what}: {vxlan} does not exist")
                remotes: dict[str, list[str]] = {}
                for mac, dst in self._fdb_entries(ipr, index):
                    if mac != _ZERO_MAC:
                        remotes.setdefault(mac, []).append(dst)
                peers = []
                for msg in ipr.neigh("dump", ifindex=index, family=socket.AF_INET):
                    if msg["ifindex"] != index or not msg["state"] & NUD_PERMANENT:
                        continue
                    mac = str(msg.get("NDA_LLADDR") or "").lower()
                    for dst in remotes.get(mac, []):
                        peers.append((str(msg.get("NDA_DST")), mac, dst))
                return sorted(peers)

        return self._host(work)

    def list_floods(self, vxlan: str) -> list[str]:
        """The VTEPs in the all-zeros FDB entry of ``vxlan`` (where floods go), sorted."""
        what = f"cannot list flood entries of {vxlan}"

        def work(ipr: IPRoute) -> list[str]:
            with _mapped(what):
                index = self._vxlan_index(ipr, vxlan, what)
                if index is None:
                    raise DatapathError(f"{what}: {vxlan} does not exist")
                return sorted(
                    dst
                    for mac, dst in self._fdb_entries(ipr, index)
                    if mac == _ZERO_MAC
                )

        return self._host(work)

    def set_bridge_mac(self, bridge: str, mac: str) -> None:
        """Give ``bridge`` the MAC ``mac`` (the one remote hosts program for this host's
        overlay address). Set it before containers attach: they cache the gateway's MAC."""
        lladdr = _unicast_mac(mac)
        what = f"cannot set the MAC of bridge {bridge}"

        def work(ipr: IPRoute) -> None:
            with _mapped(what):
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
        """Add ``cidr`` to the host interface ``ifname``; already there is success."""
        address, prefixlen = _split_cidr(cidr)
        what = f"cannot add {cidr} to {ifname}"

        def work(ipr: IPRoute) -> None:
            with _mapped(what):
                index = _ifindex(ifname)
                if index is None:
                    raise DatapathError(f"{what}: {ifname} does not exist")
                try:
                    ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:
                        raise

        self._host(work)

    def remove_address(self, ifname: str, cidr: str) -> None:
        """Remove ``cidr`` from the host interface ``ifname``; a missing one (or link) is success."""
        address, prefixlen = _split_cidr(cidr)
        what = f"cannot remove {cidr} from {ifname}"

        def work(ipr: IPRoute) -> None:
            with _mapped(what):
                index = _ifindex(ifname)
                if index is None:
                    return  # the link is gone, and its addresses with it
                try:
                    ipr.addr("del", index=index, address=address, prefixlen=prefixlen)
                except NetlinkError as exc:
                    if exc.code != errno.EADDRNOTAVAIL and not _is_missing(exc):
                        raise

        self._host(work)

    # overlay helpers: all run on the worker, inside the caller's _mapped

    def _underlay(self, ipr: IPRoute, local: str, what: str) -> Any:
        """The link message of the host interface holding ``local``."""
        for msg in ipr.addr("dump", family=socket.AF_INET):
            if msg.get("address") == local:
                return ipr.link("get", index=msg["index"])[0]
        raise DatapathError(f"{what}: no interface here holds {local}")

    @staticmethod
    def _check_vxlan(link: Any, vni: int, local: str, port: int, what: str) -> None:
        kind = NetlinkDatapath._kind(link)
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
        index = _ifindex(name)
        if index is None:
            return None
        if self._vxlan_checked is None:
            self._vxlan_checked = {}
        if self._vxlan_checked.get(name) == index:
            return index
        try:
            link = ipr.link("get", index=index)[0]
        except NetlinkError as exc:
            if _is_missing(exc):
                return None
            raise
        kind = self._kind(link)
        if kind != "vxlan":
            raise DatapathError(f"{what}: {name} is a {kind or 'device'}, not vxlan")
        self._vxlan_checked[name] = index
        return index

    @staticmethod
    def _get_neigh(ipr: IPRoute, index: int, address: str) -> Any | None:
        try:
            return ipr.neigh("get", ifindex=index, dst=address)[0]
        except NetlinkError as exc:
            if _is_missing(exc):
                return None
            raise

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
        try:
            found = ipr.fdb("get", ifindex=index, lladdr=lladdr, flags=NTF_SELF)
        except NetlinkError as exc:
            if _is_missing(exc):
                return []
            raise
        return [str(msg.get("NDA_DST")) for msg in found if msg.get("NDA_DST")]

    @staticmethod
    def _ignore_missing(request: Callable[[], Any]) -> None:
        try:
            request()
        except NetlinkError as exc:
            if not _is_missing(exc):
                raise

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _get_link(ipr: IPRoute, ifname: str) -> Any | None:
        try:
            return ipr.link("get", ifname=ifname)[0]
        except NetlinkError as exc:
            if _is_missing(exc):
                return None
            raise

    @staticmethod
    def _kind(link: Any) -> str:
        info = link.get(("linkinfo", "kind"))
        return str(info) if info else ""

    @staticmethod
    def _set_alias_and_mtu(ipr: IPRoute, link: Any, mark: str, mtu: int) -> None:
        """Set the alias and MTU of the host link ``link`` where they differ, in one
        request (none if both match). On the worker, inside the caller's ``_mapped``."""
        changes: dict[str, Any] = {}
        if link.get("ifalias") != mark:
            changes["ifalias"] = mark
        if link.get("mtu") != mtu:
            changes["mtu"] = mtu
        if changes:
            ipr.link("set", index=link["index"], **changes)

    def _delete_host_link(self, ifname: str, what: str) -> None:
        # A missing link is success: an earlier teardown (or the container namespace's
        # deletion, for a veth) already removed it.
        def work(ipr: IPRoute) -> None:
            try:
                ipr.link("del", ifname=ifname)
            except NetlinkError as exc:
                if not _is_missing(exc):
                    raise

        with _mapped(f"cannot delete {what} {ifname}"):
            self._host(work)
