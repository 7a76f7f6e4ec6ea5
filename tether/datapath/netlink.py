"""The Datapath: every netlink request tether makes, over pyroute2, with no ``ip`` subprocess.

Design note. A Datapath is bound to the network namespace of the thread that constructs it
(the daemon's "host"). Two facts shape it:

* pyroute2 0.9 keeps its socket and asyncio loop *per thread*: an ``IPRoute`` used from a
  second thread silently opens a second socket in *that* thread's namespace, and leaks it
  until ``close()``. So the host socket lives in one dedicated worker thread, which first
  ``setns``-es into the captured host namespace, and every host-side request is handed to
  that thread. This also serialises them, which is what makes Datapath thread-safe.
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
from . import nsutil

__all__ = ["Datapath"]

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


class Datapath:
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
        """Where the namespace ``name`` is bound: ``{netns_dir}/{name}``, as ``ip netns``."""
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

    def ensure_bridge(self, name: str, gateway_cidr: str, mtu: int, mark: str) -> None:
        """Create the bridge if missing, mark it, give it ``gateway_cidr`` and bring it up.

        Idempotent: on an existing bridge it only fixes what differs (alias, MTU, a missing
        gateway address, admin state). Other addresses on it are left alone. DatapathError
        if ``name`` exists and is not a bridge.
        """
        address, prefixlen = _split_cidr(gateway_cidr)

        def work(ipr: IPRoute) -> None:
            with _mapped(f"cannot set up bridge {name}"):
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
                index = link["index"]
                changes: dict[str, Any] = {}
                if link.get("ifalias") != mark:
                    changes["ifalias"] = mark
                if link.get("mtu") != mtu:
                    changes["mtu"] = mtu
                if changes:
                    ipr.link("set", index=index, **changes)
                present = {
                    (a.get("address"), a["prefixlen"])
                    for a in ipr.addr("dump", index=index, family=socket.AF_INET)
                }
                if (address, prefixlen) not in present:
                    try:
                        ipr.addr(
                            "add", index=index, address=address, prefixlen=prefixlen
                        )
                    except NetlinkError as exc:
                        if exc.code != errno.EEXIST:
                            raise
                if not link["flags"] & IFF_UP:
                    ipr.link("set", index=index, state="up")

        self._host(work)

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
    ) -> None:
        address, prefixlen = _split_cidr(cidr)
        """Connect the namespace ``netns`` to ``bridge`` with a veth pair; all or nothing.

        The host end ``host_ifname`` is marked, enslaved, given ``mtu`` and brought up;
        the container end ``ifname`` gets ``mac``, ``mtu``, ``cidr``, is brought up, and
        (if ``gateway``) the default route. ``gateway`` fails the attach if the namespace
        already has a different default route: pass it for the first network only.
        """
        if not _MAC_RE.match(mac):
            raise DatapathError(f"invalid MAC address {mac!r}")

        def configure_inside(ipr: IPRoute) -> None:
            # Runs in a thread inside the container namespace.
            index = _ifindex(ifname)
            if index is None:
                raise DatapathError(
                    f"cannot configure {ifname} in {netns}: it vanished"
                )
            ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
            ipr.link("set", index=index, state="up")
            if gateway:
                ipr.route("add", dst="0.0.0.0/0", gateway=gateway, oif=index)

        def work(ipr: IPRoute) -> None:
            what = f"cannot attach {host_ifname} to {bridge}"
            bridge_index = _ifindex(bridge)
            if bridge_index is None:
                raise DatapathError(f"{what}: bridge {bridge} does not exist")
            ns_fd = self._open_netns(netns)
            if ns_fd is None:
                raise DatapathError(f"{what}: network namespace {netns} does not exist")
            try:
                # One request makes both ends. Nothing exists yet to undo if it fails;
                # EEXIST means a name belongs to someone else's link: leave it alone.
                ipr.link(
                    "add",
                    ifname=host_ifname,
                    kind="veth",
                    mtu=mtu,
                    master=bridge_index,
                    state="up",
                    peer={
                        "ifname": ifname,
                        "net_ns_fd": ns_fd,
                        "address": mac,
                        "mtu": mtu,
                    },
                )
            except NetlinkError as exc:
                if exc.code == errno.EEXIST:
                    raise DatapathError(
                        f"{what}: {host_ifname} or {ifname} in {netns} already exists"
                    ) from exc
                raise DatapathError(f"{what}: {_reason(exc)}") from exc
            finally:
                os.close(ns_fd)
            try:
                with _mapped(what):
                    ipr.link("set", ifname=host_ifname, ifalias=mark)
                self._in_netns(
                    netns, f"cannot configure {ifname} in {netns}", configure_inside
                )
            except BaseException:
                try:
                    ipr.link("del", ifname=host_ifname)  # takes the peer with it
                except (NetlinkError, OSError):
                    pass  # the original error is the one to report
                raise

        self._host(work)

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
