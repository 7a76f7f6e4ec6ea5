"""Pseudo-terminals for ``-t``, and the relay that copies a container's output where it goes.

Design note. A container run with ``-t`` gets a fresh pty pair: the slave becomes its
stdin, stdout, stderr and controlling terminal (the child calls ``setsid`` and
``TIOCSCTTY``, so ^C typed into it is the container's own SIGINT and a shell inside does
job control), the master stays with whoever attached it: the CLI in the foreground, which
puts the user's terminal in raw mode and relays both ways, or the shim when detached,
which writes what comes out to the log. The same ``Relay`` serves a detached container
without a terminal, on a pipe. It is one thread with ``poll``: output is read whenever
there is some, and input waits (backpressure) while the master will not take more, so a
container that stops reading never stops its own output from being drained.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import struct
import termios
import threading
import tty
from collections.abc import Callable, Iterator

__all__ = [
    "DEFAULT_SIZE",
    "Relay",
    "open_pty",
    "raw_mode",
    "set_controlling_terminal",
    "set_size",
    "size_of",
    "write_all",
]

DEFAULT_SIZE = (24, 80)  # rows, columns: what a detached container's terminal says
_CHUNK = 65536


def open_pty(size: tuple[int, int] | None = None) -> tuple[int, int]:
    """A new pty pair (master, slave), both close-on-exec, the slave sized ``size``."""
    master, slave = os.openpty()
    set_size(slave, size or DEFAULT_SIZE)
    return master, slave


def size_of(fd: int) -> tuple[int, int] | None:
    """(rows, columns) of the terminal on ``fd``, or None if it is not one."""
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8)))
    except OSError:
        return None
    return (rows, cols) if rows and cols else None


def set_size(fd: int, size: tuple[int, int]) -> None:
    """Resize the terminal on ``fd``; the kernel sends SIGWINCH to its foreground group."""
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))


def set_controlling_terminal(fd: int) -> None:
    """In a freshly forked child: a session of its own, with the terminal on ``fd`` as its
    controlling terminal (stdio must already point at it)."""
    os.setsid()
    fcntl.ioctl(fd, termios.TIOCSCTTY, 0)


@contextlib.contextmanager
def raw_mode(fd: int | None) -> Iterator[None]:
    """The user's terminal in raw mode while a container's terminal is attached to it:
    every key goes through as typed (^C included) and output is not post-processed
    (the container's pty already turned "\\n" into "\\r\\n"). A no-op for None or a
    descriptor that is not a terminal."""
    if fd is None or not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to a blocking ``fd``."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class Relay:
    """Copy ``source`` (a pty master or a pipe) to ``sink`` until it ends (EOF, or EIO once
    no process holds the pty's slave), and ``input_fd`` into ``source`` when given.

    ``sink`` gets each chunk as it is read; its errors are its own business (a full disk
    or a closed stdout must not stop the draining: the container would block on output).
    """

    def __init__(self, source: int, sink: Callable[[bytes], None], input_fd: int | None = None) -> None:
        self.source = source
        self.sink = sink
        self.input_fd = input_fd
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="tether-relay", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the source ended (True) or ``timeout`` passed (False)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self, grace: float = 0.0) -> None:
        """Give the relay ``grace`` seconds to drain, then stop it and free its pipe."""
        if self._thread.is_alive() and not self.join(grace):
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
            self._thread.join()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _run(self) -> None:
        source, input_fd = self.source, self.input_fd
        os.set_blocking(source, False)  # so a write to the master can never block us
        pending = bytearray()  # input read but not yet taken by the master
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        poller.register(source, select.POLLIN)
        if input_fd is not None:
            poller.register(input_fd, select.POLLIN)
        while True:
            for fd, events in poller.poll():
                if fd == self._wake_r or events & select.POLLNVAL:
                    return
                if fd == source:
                    if events & (select.POLLIN | select.POLLHUP | select.POLLERR) and not self._drain(source):
                        return
                    if events & select.POLLOUT and pending:
                        pending = self._feed(source, pending)
                elif fd == input_fd:
                    try:
                        data = os.read(input_fd, _CHUNK)
                    except OSError:
                        data = b""
                    if not data:  # the user's side ended: the container keeps its terminal
                        poller.unregister(input_fd)
                        input_fd = None
                        continue
                    pending = self._feed(source, pending + data)
            # Read input only while the master takes it; watch for room when it does not.
            if input_fd is not None:
                poller.modify(input_fd, 0 if pending else select.POLLIN)
            poller.modify(source, select.POLLIN | (select.POLLOUT if pending else 0))

    def _drain(self, source: int) -> bool:
        """Read what there is; False once the source has ended."""
        try:
            data = os.read(source, _CHUNK)
        except BlockingIOError:
            return True
        except OSError as exc:
            if exc.errno == errno.EIO:  # a pty master whose slave every process closed
                return False
            raise
        if not data:
            return False
        with contextlib.suppress(Exception):
            self.sink(data)
        return True

    @staticmethod
    def _feed(source: int, pending: bytearray | bytes) -> bytearray:
        """Write as much of ``pending`` as the master takes now; the rest waits."""
        try:
            written = os.write(source, pending)
        except BlockingIOError:
            written = 0
        except OSError:
            return bytearray()  # the container's side is gone: drop the input
        return bytearray(pending[written:])
