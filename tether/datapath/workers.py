"""The plumbing under every NetlinkDatapath verb: which thread, which namespace, which socket,
and how a failure leaves. ``NetlinkWorkers`` is the base ``NetlinkDatapath`` stands on.

Design note. A NetlinkDatapath is bound to the network namespace of the thread that constructs it
(the daemon's "host"). Two facts shape it:

* pyroute2 0.9 keeps its socket and asyncio loop *per thread*: an ``IPRoute`` used from a
  second thread silently opens a second socket in *that* thread's namespace, and leaks it
  until ``close()``. So the host socket lives in one dedicated worker thread, which first
  ``setns``-es into the captured host namespace, and every host-side request is handed to
  that thread (``_host``). This also serialises them, which is what makes NetlinkDatapath
  thread-safe.
* ``IPRoute(netns=...)`` forks a helper per namespace (~12 ms). Container-side work instead
  runs in a throwaway thread that has ``setns``-ed into the container namespace
  (``nsutil.run_in_netns``) and opens its own request-only socket there (``groups=0``):
  ``_in_netns``.

Lower-layer errors are mapped once, here (``mapped``): every pyroute2/OS error leaves as
``DatapathError`` with a one-line message. The few link helpers both verb rooms (``netlink.py``,
``vxlan.py``) need live here too, so neither imports the other, and so do the requests on the
attach path built as pyroute2 messages and sent in batches (``send_batch``: pyroute2's keyword
API costs several times the kernel's work per request), and ``Ipv6AddressWatch``, which tells
when the kernel has really finished an IPv6 address.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from pyroute2 import IPRoute  # type: ignore[import-untyped]
from pyroute2.netlink import (  # type: ignore[import-untyped]
    NETLINK_ROUTE,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REQUEST,
)
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]
from pyroute2.netlink.rtnl import (  # type: ignore[import-untyped]
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RTMGRP_IPV6_IFADDR,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg  # type: ignore[import-untyped]
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg  # type: ignore[import-untyped]
from pyroute2.netlink.rtnl.rtmsg import rtmsg  # type: ignore[import-untyped]

from ..errors import DatapathError
from . import nsutil

__all__ = [
    "IFA_F_NODAD", "IFF_UP", "IPV6_READY_TIMEOUT", "MAC_RE", "MISSING", "RT_SCOPE_UNIVERSE", "RT_TABLE_MAIN",
    "Ipv6AddressWatch", "NetlinkWorkers", "add_address", "address_message", "default_route_message", "family_of",
    "ifindex", "is_missing", "link_up_message", "mapped", "on_request_socket", "reason", "send_batch", "split_cidr",
    "tolerate",
]  # fmt: skip

T = TypeVar("T")

IFF_UP = 0x1
IFA_F_NODAD = 0x02  # linux/if_addr.h: no duplicate address detection, the address is usable at once
RT_SCOPE_UNIVERSE = 0  # an address's scope: global (link-local is 253, host ::1 254)
RT_TABLE_MAIN = 254
_RTPROT_STATIC = 4  # what pyroute2's route("add") and ``ip route add`` mark a route with
_RTN_UNICAST = 1
_CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL  # "add": EEXIST if it is there
_CHANGE = NLM_F_REQUEST | NLM_F_ACK
MISSING = (errno.ENODEV, errno.ENOENT)  # what the kernel answers for a link, entry or file that is not there
MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def reason(exc: BaseException) -> str:
    """The one-line cause of a lower-layer failure, for a DatapathError message."""
    if isinstance(exc, NetlinkError):
        return os.strerror(exc.code) if exc.code else str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


@contextmanager
def mapped(what: str) -> Iterator[None]:
    """Map lower-layer failures to one DatapathError line: '<what>: <reason>'."""
    try:
        yield
    except (NetlinkError, OSError) as exc:
        raise DatapathError(f"{what}: {reason(exc)}") from exc


def is_missing(exc: BaseException) -> bool:
    code = exc.code if isinstance(exc, NetlinkError) else getattr(exc, "errno", None)
    return code in MISSING


def tolerate(request: Callable[[], T], codes: tuple[int, ...] = MISSING) -> T | None:
    """``request()``, or None if the kernel refuses it with one of ``codes`` (by default: what
    it names is missing). The one way a verb says "already done is success"."""
    try:
        return request()
    except NetlinkError as exc:
        if exc.code not in codes:
            raise
        return None


def open_request_socket() -> IPRoute:
    """A netlink socket in the calling thread's namespace that only sends requests."""
    return IPRoute(groups=0)


def on_request_socket(fn: Callable[[IPRoute], T]) -> T:
    """``fn(ipr)`` on a fresh request-only socket in the calling thread's namespace, closed after."""
    ipr = open_request_socket()
    try:
        return fn(ipr)
    finally:
        ipr.close()


def split_cidr(cidr: str, family: int | None = None) -> tuple[str, int]:
    """(address, prefix length) of ``cidr``; DatapathError if it is not an address with a
    prefix, or (with ``family`` 4 or 6) not of that family. The address comes back in its
    canonical text, as the kernel reports it (``fd00:0::01`` -> ``fd00::1``)."""
    try:
        iface = ipaddress.ip_interface(cidr)
    except ValueError as exc:
        raise DatapathError(f"invalid address {cidr!r}") from exc
    if "/" not in cidr:
        raise DatapathError(f"invalid address {cidr!r}: a prefix length is required")
    if family is not None and iface.version != family:
        raise DatapathError(f"invalid address {cidr!r}: not an IPv{family} address")
    return str(iface.ip), iface.network.prefixlen


def family_of(address: str, what: str = "address") -> int:
    """``socket.AF_INET`` or ``AF_INET6`` for ``address``; DatapathError if it is not an IP address."""
    try:
        version = ipaddress.ip_address(address).version
    except ValueError as exc:
        raise DatapathError(f"invalid {what} {address!r}") from exc
    return socket.AF_INET if version == 4 else socket.AF_INET6


# Requests built as messages. pyroute2's keyword API (``ipr.addr("add", ...)``) runs every
# request through its filters, about 0.2-0.3 ms of Python each, several times the kernel's
# own work; a message built here and sent with ``send_batch`` costs a fraction of that,
# and several of them share one round trip. They carry exactly what the keyword API would
# send (tests/unit/test_datapath_messages.py compares them), and stay on the attach path.


def address_message(index: int, address: str, prefixlen: int) -> Any:
    """RTM_NEWADDR "add": ``address/prefixlen`` on the link ``index``. An IPv6 address gets
    IFA_F_NODAD: it is usable at once, with no 1-2 s tentative window; tether's subnets are
    its own (IPAM hands each address out once), so there is no duplicate to detect."""
    msg = ifaddrmsg()
    msg["index"], msg["prefixlen"] = index, prefixlen
    if ":" in address:
        msg["family"] = socket.AF_INET6
        msg["attrs"] = [("IFA_ADDRESS", address), ("IFA_FLAGS", IFA_F_NODAD)]
    else:
        msg["family"] = socket.AF_INET
        msg["attrs"] = [("IFA_ADDRESS", address), ("IFA_LOCAL", address)]
    msg["header"]["type"], msg["header"]["flags"] = RTM_NEWADDR, _CREATE
    return msg


def link_up_message(index: int) -> Any:
    """RTM_NEWLINK "set": the link ``index`` administratively up."""
    msg = ifinfmsg()
    msg["index"], msg["flags"], msg["change"] = index, IFF_UP, IFF_UP
    msg["header"]["type"], msg["header"]["flags"] = RTM_NEWLINK, _CHANGE
    return msg


def default_route_message(index: int, gateway: str, family: int) -> Any:
    """RTM_NEWROUTE "add": the main table's default route of ``family`` via ``gateway`` out of ``index``."""
    msg = rtmsg()
    msg["family"], msg["table"], msg["proto"], msg["type"] = family, RT_TABLE_MAIN, _RTPROT_STATIC, _RTN_UNICAST
    msg["scope"] = RT_SCOPE_UNIVERSE
    msg["attrs"] = [("RTA_GATEWAY", gateway), ("RTA_OIF", index)]
    msg["header"]["type"], msg["header"]["flags"] = RTM_NEWROUTE, _CREATE
    return msg


def send_batch(ipr: IPRoute, messages: list[Any]) -> None:
    """Send ``messages`` (built above) in one write and wait for every answer. NetlinkError
    for the first one refused; the kernel has run the others all the same, so a caller
    batches only steps it undoes together (or that nothing depends on). None is nothing."""
    if messages:
        ipr.nlm_request_batch(messages)


class Ipv6AddressWatch:
    """Waits, in the calling thread's namespace, until the kernel has finished adding an
    IPv6 address: its RTM_NEWADDR notification.

    Why: even with IFA_F_NODAD, the kernel completes a new IPv6 address in a workqueue
    (addrconf's DAD work), and that is also when the interface joins the address's
    solicited-node multicast group. Until then it drops every neighbour solicitation for
    the address, the neighbour that sent it retries only a second later, and so a peer
    pinging right after the attach returned could wait a second. For a NODAD address the
    notification is sent only from that work, after the join: seeing it means "usable".
    Open it before the change (notifications are queued from then on), ``wait`` after.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:
            self._sock.bind((0, RTMGRP_IPV6_IFADDR))
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise

    def wait(self, index: int, address: str, timeout: float) -> bool:
        """Whether ``address`` on the link ``index`` was reported complete within ``timeout``
        seconds (False: the kernel is late; the address will work once it gets there)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._sock], [], [], left)[0]:
                    return False
                continue
            except OSError:  # ENOBUFS: notifications lost; do not guess
                return False
            if self._reports(data, index, address):
                return True

    @staticmethod
    def _reports(data: bytes, index: int, address: str) -> bool:
        offset = 0
        while offset + 16 <= len(data):
            length = int.from_bytes(data[offset : offset + 4], "little")
            if length < 16:
                return False
            msg = ifaddrmsg(data[offset : offset + length])
            msg.decode()
            if msg["header"]["type"] == RTM_NEWADDR and msg["index"] == index and msg.get("IFA_ADDRESS") == address:
                return True
            offset += (length + 3) & ~3
        return False

    def close(self) -> None:
        self._sock.close()


IPV6_READY_TIMEOUT = 0.5  # seconds to wait at most for the kernel to finish an IPv6 address


def add_address(ipr: IPRoute, index: int, address: str, prefixlen: int) -> None:
    """Put ``address/prefixlen`` on the link ``index`` (in the calling thread's namespace,
    ``ipr``'s). An IPv6 one is usable when this returns (see ``address_message`` and
    ``Ipv6AddressWatch``)."""
    if ":" not in address:
        send_batch(ipr, [address_message(index, address, prefixlen)])
        return
    watch = Ipv6AddressWatch()
    try:
        send_batch(ipr, [address_message(index, address, prefixlen)])
        watch.wait(index, address, IPV6_READY_TIMEOUT)
    finally:
        watch.close()


def ifindex(ifname: str) -> int | None:
    """The index of ``ifname`` in the calling thread's namespace, or None if there is none.

    An ioctl, about 50 times cheaper than pyroute2's ``link("get")``, which parses the
    whole link message: it is on the attach path twice.
    """
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        return None


class NetlinkWorkers:
    """The host worker and the trips into namespaces, for one daemon's host namespace.

    Construct it in the thread (and so the namespace) the daemon's links should live in.
    ``_host`` may be called from any thread, the worker included.
    """

    def __init__(self, netns_dir: str = "/var/run/netns") -> None:
        self._netns_dir = os.path.abspath(netns_dir)
        try:
            self._host_fd: int = nsutil.current_netns_fd()
        except OSError as exc:
            raise DatapathError(f"cannot open own network namespace: {reason(exc)}") from exc
        self._closed = False
        self._close_lock = threading.Lock()
        self._ipr: IPRoute | None = None
        self._worker_ident: int | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tether-netlink")
        try:
            # Open the host socket now: fail at construction, not on first use.
            self._host(lambda ipr: None)
        except BaseException:
            self.close()
            raise

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

    def netns_path(self, name: str) -> str:
        """Where the namespace ``name`` is bound: ``{netns_dir}/{name}``, as ``ip netns``.
        An absolute path (a namespace another runtime made, e.g. a CNI_NETNS) is itself."""
        if name.startswith("/") and "\0" not in name and "/../" not in name:
            return name
        if not name or "/" in name or name in (".", "..") or "\0" in name:
            raise DatapathError(f"invalid network namespace name {name!r}")
        return f"{self._netns_dir}/{name}"

    # ------------------------------------------------------------------ the host worker

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
            with mapped("cannot open netlink socket in the host namespace"):
                # The worker may have been started from any thread: join the host first.
                nsutil.setns(self._host_fd)
                self._ipr = open_request_socket()
        return fn(self._ipr)

    # ------------------------------------------------------------------ container namespaces

    def _open_netns(self, netns: str) -> int | None:
        """An fd on the bound namespace ``netns``, or None if it is not there."""
        try:
            return os.open(self.netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DatapathError(f"cannot open network namespace {netns}: {reason(exc)}") from exc

    def _in_netns(self, netns: str, what: str, fn: Callable[[IPRoute], T]) -> T:
        """Run ``fn(ipr)`` on a fresh socket inside the bound namespace ``netns``.

        Runs in a throwaway thread; callable from any thread, the worker included.
        """
        fd = self._open_netns(netns)
        if fd is None:
            raise DatapathError(f"{what}: network namespace {netns} does not exist")
        try:
            with mapped(what):
                return nsutil.run_in_netns(fd, lambda: on_request_socket(fn))
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ links, for both verb rooms
    # (on the worker, inside the caller's ``mapped``)

    @staticmethod
    def _get_link(ipr: IPRoute, ifname: str) -> Any | None:
        found = tolerate(lambda: ipr.link("get", ifname=ifname))
        return None if found is None else found[0]

    @staticmethod
    def _kind(link: Any) -> str:
        info = link.get(("linkinfo", "kind"))
        return str(info) if info else ""

    @staticmethod
    def _set_alias_and_mtu(ipr: IPRoute, link: Any, mark: str, mtu: int) -> None:
        """Set the alias and MTU of the host link ``link`` where they differ, in one
        request (none if both match)."""
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
        with mapped(f"cannot delete {what} {ifname}"):
            self._host(lambda ipr: tolerate(lambda: ipr.link("del", ifname=ifname)))
