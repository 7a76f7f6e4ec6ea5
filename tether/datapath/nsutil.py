"""Namespace plumbing below netlink: setns/unshare/mount through libc, and bound netns files.

Design note. Python 3.11 has no ``os.setns``/``os.unshare``, and pyroute2's own way into a
namespace (``IPRoute(netns=...)``) forks a helper process per namespace, about 12 ms each.
Namespaces belong to a *thread* on Linux, and a socket stays bound to the namespace it was
created in, so everything here runs in a short-lived thread that calls ``setns`` or
``unshare`` through ctypes, does its work (usually: open a netlink socket and talk over
it), and then ends, taking its namespace membership with it. The calling thread, and the
main thread above all, never changes namespace.

Namespaces are made persistent the way ``ip netns add`` does it: ``netns_dir`` becomes a
shared mount point, and the namespace file of the thread that unshared is bind-mounted
onto an empty file under it, so ``ip netns list`` and ``ip netns exec NAME`` see them.

This module raises ``OSError``; the caller maps it to ``DatapathError``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = [
    "CLONE_NEWNET",
    "bind_new_netns",
    "current_netns_fd",
    "ensure_netns_dir",
    "is_bound_netns",
    "move_high",
    "open_sockets_in_netns",
    "run_in_netns",
    "run_in_thread",
    "setns",
    "unbind_netns",
    "unshare",
]

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

# Serialises the one-time "make netns_dir a shared mount" step: two threads racing through
# it could stack two self bind mounts.
_dir_lock = threading.Lock()
_shared_dirs: set[str] = set()


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """Move the *calling thread* into the namespace ``fd``. Call only from a throwaway thread."""
    _check(_libc.setns(fd, nstype), "setns")


def unshare(flags: int) -> None:
    """Give the *calling thread* new namespaces. Call only from a throwaway thread."""
    _check(_libc.unshare(flags), "unshare")


def _mount(source: str, target: str, fstype: str, flags: int) -> None:
    _check(
        _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, None),
        f"mount {target}",
    )


def run_in_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a new thread that ends afterwards; return its result or re-raise."""
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller below
            error.append(exc)

    thread = threading.Thread(target=body, name="tether-ns", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def run_in_netns(netns: str | int, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a throwaway thread inside the network namespace ``netns``.

    ``netns`` is a bound namespace path or an open namespace fd (not closed here). Sockets
    that ``fn`` opens stay in that namespace even after the thread ends.
    """

    def body() -> T:
        if isinstance(netns, int):
            setns(netns)
        else:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(fd)
            finally:
                os.close(fd)
        return fn()

    return run_in_thread(body)


HIGH_FD_FLOOR = 1024


def move_high(sock: socket.socket) -> socket.socket:
    """Give a long-lived socket a descriptor number above 1023 (when the fd limit allows).

    libnftables waits on its netlink socket with select(), which aborts the whole process
    once that socket's number passes FD_SETSIZE (1024). A daemon serving DNS in hundreds
    of namespaces holds thousands of sockets, so these are kept out of the low numbers
    and every short-lived socket (nftables, netlink) still gets a small one."""
    import fcntl

    try:
        high = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, HIGH_FD_FLOOR)
    except OSError:
        return sock  # the fd limit is low: keep the number we have
    moved = socket.socket(sock.family, sock.type, sock.proto, fileno=high)
    sock.close()
    return moved


def _bound_socket(family: int, type: int, bind: tuple[str, int]) -> socket.socket:
    sock = move_high(socket.socket(family, type))
    try:
        if sock.type == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(bind)
        if sock.type == socket.SOCK_STREAM:
            sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return sock


def open_sockets_in_netns(
    netns_path: str,
    specs: list[tuple[int, int, tuple[str, int]]],
    inside: Callable[[list[socket.socket]], None] | None = None,
) -> list[socket.socket]:
    """Sockets made inside the network namespace at ``netns_path``, in one trip into it,
    each bound to its address (a stream socket also gets ``SO_REUSEADDR`` and listens);
    they live in that namespace for good, whichever thread uses them afterwards.
    ``inside(sockets)`` then runs there too (e.g. to install rules that point at them).
    All or nothing: on any failure every socket is closed."""

    def body() -> list[socket.socket]:
        socks: list[socket.socket] = []
        try:
            for family, type_, bind in specs:
                socks.append(_bound_socket(family, type_, bind))
            if inside is not None:
                inside(socks)
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        return socks

    return run_in_netns(netns_path, body)


def current_netns_fd() -> int:
    """An fd on the calling thread's network namespace (the caller closes it)."""
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def ensure_netns_dir(netns_dir: str) -> None:
    """Make ``netns_dir`` a shared mount point, exactly as iproute2's ``netns_add`` does.

    Shared propagation lets an unmount in one mount namespace reach the others, so a
    deleted network namespace is really freed.
    """
    with _dir_lock:
        if netns_dir in _shared_dirs:
            return
        os.makedirs(netns_dir, mode=0o755, exist_ok=True)
        made_mount = False
        while True:
            try:
                _mount("", netns_dir, "none", MS_SHARED | MS_REC)
                break
            except OSError as exc:
                # EINVAL: not a mount point yet; upgrade it with a bind mount onto itself.
                if exc.errno != errno.EINVAL or made_mount:
                    raise
                _mount(netns_dir, netns_dir, "none", MS_BIND | MS_REC)
                made_mount = True
        _shared_dirs.add(netns_dir)


def bind_new_netns(path: str, setup: Callable[[], None]) -> None:
    """Create a network namespace and bind it at ``path`` (which must not exist yet).

    ``setup`` runs inside the new namespace, in the thread that created it, before
    returning. On any failure the bind mount and the file are removed again.
    ``FileExistsError`` means ``path`` is taken.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0)
    os.close(fd)

    def body() -> None:
        unshare(CLONE_NEWNET)
        ns_file = f"/proc/self/task/{threading.get_native_id()}/ns/net"
        _mount(ns_file, path, "none", MS_BIND)
        setup()

    try:
        run_in_thread(body)
    except BaseException:
        unbind_netns(path)
        raise


def unbind_netns(path: str) -> None:
    """Unmount (lazily) and remove a bound namespace file; a missing one is not an error."""
    result = _libc.umount2(path.encode(), MNT_DETACH)
    if result != 0:
        code = ctypes.get_errno()
        # EINVAL: not a mount point (a half-made file); ENOENT: already gone.
        if code not in (errno.EINVAL, errno.ENOENT):
            raise OSError(code, f"umount {path}: {os.strerror(code)}")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _nsfs_dev() -> int:
    return os.stat("/proc/thread-self/ns/net").st_dev


def is_bound_netns(path: str) -> bool:
    """True if ``path`` is a namespace bind mount (not just a leftover empty file)."""
    try:
        return os.stat(path).st_dev == _nsfs_dev()
    except OSError:
        return False
