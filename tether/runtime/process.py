"""Container processes: start them in their own namespaces, watch, stop and exec into them.

A tether container is one process tree with its own PID, UTS and mount namespaces (and
so its own /proc and hostname), optionally inside a network namespace that the daemon
prepared; this module only *joins* that netns, it never builds networking.

Design note. Entering a new PID namespace needs a fork after ``unshare(CLONE_NEWPID)``,
and that unshare only changes the namespace of the caller's *future children*. So the
caller unshares, forks once and immediately restores its own ``pid_for_children``
(``setns`` on its own /proc/self/ns/pid): the child is PID 1 of a fresh namespace and is
still the caller's direct child, so the caller waits on it and gets its real exit status
without an intermediate process. The child does the rest (join the netns, unshare UTS and
mount, mount a fresh /proc, set the hostname, exec) and reports a failed setup or exec
through a close-on-exec pipe, so a caller learns "command not found" as an exception
instead of an exit status. ``exec_in`` uses the same one-fork pattern with ``setns`` into
the container's PID namespace instead of ``unshare``.

Foreground containers are forked by the caller (the single-threaded CLI). Detached ones
are forked by a per-container shim (``tether.runtime.shim``, like conmon) that detaches
itself from the caller, a multi-threaded daemon that must never fork or reap it; the
shim stays in the host namespaces, relays the container's output to its log, waits,
records the exit code and runs ``on_exit``. The spec reaches the shim on a pipe, never
on a command line: ``ps`` shows every process' arguments to every user, and the spec
holds the container's environment.

With ``tty`` the container's stdio is a new pty whose slave is its controlling terminal
(``terminal.py``); the CLI relays it to the user's terminal, the shim to the log.

Python 3.11 has no os.setns/os.unshare, so the few syscalls are called through ctypes;
they are only used in a single-threaded process (a fresh fork, the shim, or the CLI).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NoReturn

from tether.errors import RuntimeFailure
from tether.runtime import terminal

__all__ = [
    "ProcessSpec",
    "exec_in",
    "process_alive",
    "process_start_time",
    "read_exit_code",
    "run_foreground",
    "spawn_detached",
    "stop_process",
]

PID_FILE = "pid"
EXIT_CODE_FILE = "exitcode"

# From <linux/sched.h> and <sys/mount.h>.
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2
CLOSE_RANGE_CLOEXEC = 0x4
SI_KERNEL = 0x80  # si_code of a signal the kernel raised itself, e.g. ^C on a terminal

# Signals a supervising caller forwards to the process it waits for.
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_SUPERVISED_SIGNALS = {signal.SIGCHLD, *FORWARDED_SIGNALS}
_SIGKILL_WAIT = 5.0  # how long a SIGKILLed process may take to die before we complain
_SHIM_HANDSHAKE_TIMEOUT = 30.0


@dataclass(frozen=True)
class ProcessSpec:
    """What to run and in which namespaces; the one input of every start function."""

    cmd: list[str]
    state_dir: str  # per-container dir (exists); "exitcode" (and, detached, "pid") are written here
    netns_path: str | None = None  # join this network namespace; None keeps the caller's (host mode)
    hostname: str | None = None  # set in the container's new UTS namespace
    log_path: str | None = None  # detached only: stdout+stderr appended here, times in log.idx (None: discarded)
    workdir: str | None = None  # default: the caller's cwd ("/" with a rootfs)
    env: dict[str, str] | None = None  # default: the caller's environment
    rootfs: str | None = None  # chroot into this dir, with its own /proc mounted
    resolv_conf: str | None = None  # bind-mounted over /etc/resolv.conf in the container
    on_exit: list[str] | None = None  # detached only: argv run by the shim after the exit code is recorded
    hosts_file: str | None = None  # bind-mounted over /etc/hosts
    hostname_file: str | None = None  # bind-mounted over /etc/hostname
    tty: bool = False  # stdio is a new pty, the container's controlling terminal
    interactive: bool = False  # keep stdin attached: relayed to the pty (tty), or kept open (detached)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ProcessSpec:
        return cls(**json.loads(text))


# --- public API -----------------------------------------------------------------------


def spawn_detached(spec: ProcessSpec) -> tuple[int, int]:
    """Start the container under its own shim and return (host pid, start_time) of its init.

    Safe to call from a multi-threaded daemon: the only child it creates is the shim's
    first process, reaped here within milliseconds; the long-lived shim and the container
    live in their own session and survive the caller's death. Returns once the command
    has been exec'd; raises RuntimeFailure with the reason if it could not be.
    """
    _check_command(spec)
    # Pin the defaults to *this* process: the shim runs with a different cwd and env.
    resolved = dataclasses.replace(
        spec,
        env=dict(os.environ) if spec.env is None else spec.env,
        workdir=spec.workdir or (None if spec.rootfs else os.getcwd()),
    )
    try:
        shim = subprocess.Popen(
            # -S: the shim needs only the standard library and tether (on PYTHONPATH), so it
            # skips site-packages and their .pth hooks, which can cost tens of milliseconds.
            # The spec goes on its stdin: a command line is public (ps), the spec's env is not.
            [sys.executable, "-S", "-m", "tether.runtime.shim"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd="/",
            env=_shim_environment(),
            start_new_session=True,
        )
    except OSError as exc:
        raise RuntimeFailure(f"cannot start the container shim: {exc.strerror}") from exc
    try:
        out, err = shim.communicate(resolved.to_json().encode(), timeout=_SHIM_HANDSHAKE_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        shim.kill()
        shim.wait()
        raise RuntimeFailure(
            f"the container shim did not report within {_SHIM_HANDSHAKE_TIMEOUT:.0f}s; "
            f"check {spec.log_path or 'the daemon log'}"
        ) from exc
    try:
        report = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        last = (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise RuntimeFailure(f"the container shim failed before starting the container: {last}") from None
    if "error" in report:
        raise RuntimeFailure(str(report["error"]))
    return int(report["pid"]), int(report["start_time"])


def run_foreground(spec: ProcessSpec, on_started: Callable[[int, int], None] | None = None) -> int:
    """Run the container with the caller's stdio and return its exit status (128+N if killed by N).

    For the single-threaded CLI: the container is this process' direct child.
    ``on_started(pid, start_time)`` is called once the command has been exec'd.
    SIGINT/SIGTERM/SIGHUP sent to the caller are forwarded to the container. On a terminal
    the container gets its own foreground process group, as a shell's job would (^C goes
    to it alone, and a shell inside can do job control); the caller takes the terminal
    back when it exits. Like Docker, a PID 1 without a handler for a signal ignores it.

    With ``spec.tty`` the container gets a pty of its own instead, relayed to the caller's
    stdout (and from its stdin with ``spec.interactive``, the user's terminal in raw mode
    meanwhile), its size following the caller's terminal (SIGWINCH).
    """
    _check_command(spec)
    remove_state_file(spec.state_dir, EXIT_CODE_FILE)
    if spec.tty:
        status = _run_on_pty(lambda stdio: fork_container(spec, stdio), spec.interactive, on_started)
    else:
        with supervised_signals(), _lent_terminal() as lend:
            pid, start_time = fork_container(spec, stdio=None, take_terminal=lend)
            _announce(pid, start_time, on_started)
            status = supervise(pid)
    write_state_file(spec.state_dir, EXIT_CODE_FILE, str(status))
    return status


def _announce(pid: int, start_time: int, on_started: Callable[[int, int], None] | None) -> None:
    if on_started is None:
        return
    try:
        on_started(pid, start_time)
    except BaseException:
        # Do not leave a container nobody waits for.
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise


def _run_on_pty(
    fork: Callable[[tuple[int, int, int]], tuple[int, int]],
    interactive: bool,
    on_started: Callable[[int, int], None] | None = None,
) -> int:
    """Fork a child (``fork(stdio)``) on a new pty relayed to our stdio; its exit status.

    Signals the caller gets are all forwarded: the child is in a session of its own, so
    none that the user's terminal raised has reached it already.
    """
    user_terminal = 0 if os.isatty(0) else 1 if os.isatty(1) else None
    master, slave = terminal.open_pty(terminal.size_of(user_terminal) if user_terminal is not None else None)

    def follow_size() -> None:
        size = terminal.size_of(user_terminal) if user_terminal is not None else None
        if size is not None:
            terminal.set_size(master, size)

    try:
        raw = 0 if interactive and os.isatty(0) else None
        with supervised_signals(winch=True), terminal.raw_mode(raw):
            try:
                pid, start_time = fork((slave, slave, slave))
            finally:
                os.close(slave)
            relay = terminal.Relay(master, lambda data: terminal.write_all(1, data), 0 if interactive else None)
            relay.start()
            try:
                _announce(pid, start_time, on_started)
                status = supervise(pid, on_winch=follow_size, forward_terminal_signals=True)
            finally:
                relay.close(grace=2.0)  # what the container wrote last, then let go of our stdin
    finally:
        os.close(master)
    return status


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks after boot), or None if there is no such process."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def process_alive(pid: int, start_time: int) -> bool:
    """True if ``pid`` runs, is not a zombie, and is the process that started at ``start_time``."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X", "x") and int(fields[19]) == start_time


def read_started(state_dir: str) -> tuple[int, int] | None:
    """(pid, start_time) of the container init the shim started from ``state_dir``, if it
    still runs: how a daemon killed before it recorded the start finds the process."""
    try:
        with open(os.path.join(state_dir, PID_FILE)) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    start_time = process_start_time(pid)
    if start_time is None or not process_alive(pid, start_time):
        return None
    return pid, start_time


def read_exit_code(state_dir: str) -> int | None:
    """The exit status a finished container left in ``state_dir``, or None if none was recorded."""
    try:
        with open(os.path.join(state_dir, EXIT_CODE_FILE)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def stop_process(pid: int, start_time: int, timeout: float = 10.0) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; a no-op for a dead or reused pid.

    A PID 1 that neither catches nor blocks SIGTERM discards it, so the wait is skipped
    for it: the outcome is the same, only ``timeout`` seconds sooner.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError as exc:
        raise RuntimeFailure(f"cannot signal process {pid}: {exc.strerror}") from exc
    try:
        # Checked after pidfd_open, so the pidfd is known to name the process we mean.
        if not process_alive(pid, start_time):
            return
        if _pidfd_signal(pidfd, signal.SIGTERM):
            grace = 0.0 if _discards_signal(pid, signal.SIGTERM) else timeout
            if _wait_pidfd(pidfd, grace):
                return
        _pidfd_signal(pidfd, signal.SIGKILL)
        if not _wait_pidfd(pidfd, _SIGKILL_WAIT) and process_alive(pid, start_time):
            raise RuntimeFailure(
                f"process {pid} is still alive {_SIGKILL_WAIT:.0f}s after SIGKILL; "
                f"check /proc/{pid}/status (stuck in uninterruptible sleep?)"
            )
    finally:
        os.close(pidfd)


def exec_in(
    pid: int,
    cmd: list[str],
    env: dict[str, str] | None = None,
    tty: bool = False,
    interactive: bool = False,
    workdir: str | None = None,
) -> int:
    """Run ``cmd`` inside the net, UTS, PID and mount namespaces and the root of container init ``pid``.

    Uses the caller's stdio (with ``tty``: a new pty relayed to it, as ``run_foreground``
    does, stdin too with ``interactive``) and returns the exit status (128+N if killed by
    signal N); ``env`` defaults to the caller's environment, the working directory to the
    init's. For the single-threaded CLI: it forks. Raises RuntimeFailure if the container
    is not running or ``cmd`` cannot be executed.
    """
    if not cmd:
        raise RuntimeFailure("no command given to run in the container")
    names = ("pid", "net", "uts", "mnt")
    fds: list[int] = []
    try:
        try:
            for name in names:
                fds.append(os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC))
            fds.append(os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
            fds.append(os.open(f"/proc/{pid}/cwd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        except FileNotFoundError as exc:
            raise RuntimeFailure(f"container process {pid} is not running; start the container first") from exc
        except OSError as exc:
            raise RuntimeFailure(f"cannot open the namespaces of process {pid}: {exc.strerror}") from exc
        pid_ns, net_ns, uts_ns, mnt_ns, root_fd, cwd_fd = fds

        def enter_and_exec(stdio: tuple[int, int, int] | None) -> None:
            _use_stdio(stdio, controlling=tty)
            with _failure(f"cannot enter the namespaces of container process {pid}: {{reason}}"):
                _setns(net_ns, CLONE_NEWNET)
                _setns(uts_ns, CLONE_NEWUTS)
                _setns(mnt_ns, CLONE_NEWNS)  # resets root and cwd to the namespace's root...
                os.fchdir(root_fd)  # ...so re-enter the container's own root, as nsenter --root does
                os.chroot(".")
                os.fchdir(cwd_fd)
            if workdir:
                with _failure(f"cannot enter working directory {workdir}: {{reason}} (does it exist in the container?)"):
                    os.chdir(workdir)
            _exec(cmd, env)

        def fork(stdio: tuple[int, int, int] | None, take_terminal: bool = False) -> tuple[int, int]:
            try:
                return fork_into_pid_namespace(
                    lambda: _setns(pid_ns, CLONE_NEWPID), lambda: enter_and_exec(stdio), take_terminal
                )
            except OSError as exc:
                if exc.errno == errno.ENOMEM:  # the namespace's init has exited: no new pids there
                    raise RuntimeFailure(f"container process {pid} is not running; start the container first") from exc
                raise RuntimeFailure(f"cannot enter the container of process {pid}: {exc.strerror}") from exc

        if tty:
            return _run_on_pty(fork, interactive)
        with supervised_signals(), _lent_terminal() as lend:
            child, _ = fork(None, lend)
            return supervise(child)
    finally:
        for fd in fds:
            os.close(fd)


# --- building blocks shared with the shim ---------------------------------------------


def fork_container(
    spec: ProcessSpec, stdio: tuple[int, int, int] | None, take_terminal: bool = False
) -> tuple[int, int]:
    """Fork the container's init (PID 1 of a new PID namespace) as a direct child.

    ``stdio`` is (stdin, stdout, stderr) for the container, or None to inherit the
    caller's. Returns (pid, start_time) once the command has been exec'd.
    """
    try:
        return fork_into_pid_namespace(
            lambda: _unshare(CLONE_NEWPID), lambda: _init_container(spec, stdio), take_terminal
        )
    except OSError as exc:
        hint = " (tether must run as root)" if exc.errno == errno.EPERM else ""
        raise RuntimeFailure(f"cannot start the container process: {exc.strerror}{hint}") from exc


def fork_into_pid_namespace(
    enter_pid_ns: Callable[[], None], setup_and_exec: Callable[[], None], take_terminal: bool = False
) -> tuple[int, int]:
    """Fork a child into the PID namespace ``enter_pid_ns`` selects for our children.

    With ``take_terminal`` the child becomes the foreground process group of the terminal
    on stdin (see ``_lent_terminal``).

    The child runs ``setup_and_exec`` (which must exec); any failure there comes back
    through a close-on-exec pipe and is raised here as RuntimeFailure, after the child is
    reaped. Only this process' *children* change PID namespace, and only for this fork.
    OSError means the fork itself failed (ENOMEM: that namespace's init has exited).
    """
    own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        report_r, report_w = os.pipe()  # both close-on-exec (PEP 446)
        try:
            enter_pid_ns()
            try:
                pid = os.fork()
                if pid == 0:
                    _run_child(setup_and_exec, report_w, take_terminal)
            finally:
                _setns(own_pid_ns, CLONE_NEWPID)  # the child never gets here: it exec'd or _exit'ed
        except BaseException:
            os.close(report_r)
            os.close(report_w)
            raise
    finally:
        os.close(own_pid_ns)
    os.close(report_w)
    start_time = process_start_time(pid)  # it cannot vanish before we reap it
    with os.fdopen(report_r, "rb") as report:
        failure = report.read()  # EOF at exec
    if failure or start_time is None:
        os.waitpid(pid, 0)
        raise RuntimeFailure(failure.decode(errors="replace") or f"process {pid} vanished before it ran")
    return pid, start_time


@contextlib.contextmanager
def supervised_signals(winch: bool = False) -> Iterator[None]:
    """Hold SIGCHLD and the forwarded signals blocked so ``supervise`` can take them in turn
    (and SIGWINCH with ``winch``, for ``supervise(on_winch=...)``).

    Block them before forking, so nothing that arrives in between is lost; on leaving,
    forwarded signals still pending are dropped (they were meant for the child).
    """
    sigchld_was_ignored = signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN
    if sigchld_was_ignored:  # SIG_IGN would auto-reap the child and lose its status
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    extra = {signal.SIGWINCH} if winch else set()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SUPERVISED_SIGNALS | extra)
    try:
        yield
    finally:
        while signal.sigtimedwait((*FORWARDED_SIGNALS, *extra), 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        if sigchld_was_ignored:
            signal.signal(signal.SIGCHLD, signal.SIG_IGN)


@contextlib.contextmanager
def _lent_terminal() -> Iterator[bool]:
    """Say whether a child should take the caller's terminal; take it back afterwards.

    Lend it only when stdin is a terminal whose foreground process group is ours (not
    when we run in the background or without a terminal).
    """
    try:
        lend = os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        lend = False
    try:
        yield lend
    finally:
        if lend:
            # We are a background group now: tcsetpgrp would stop us with SIGTTOU.
            old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
            try:
                os.tcsetpgrp(0, os.getpgrp())
            except OSError:
                pass  # the terminal is gone (hung up): nothing to take back
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def supervise(
    pid: int, on_winch: Callable[[], None] | None = None, forward_terminal_signals: bool = False
) -> int:
    """Wait for child ``pid``, forwarding SIGINT/SIGTERM/SIGHUP to it; return its exit status.

    Call inside ``supervised_signals`` (``winch=True`` with ``on_winch``, called on each
    SIGWINCH). Signals a terminal raised (si_code SI_KERNEL) reached the child's process
    group already and are not forwarded a second time, unless ``forward_terminal_signals``
    (the child is not on our terminal).
    """
    wanted = _SUPERVISED_SIGNALS | ({signal.SIGWINCH} if on_winch else set())
    while True:
        waited, status = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return exit_status(status)
        info = signal.sigwaitinfo(wanted)
        if info.si_signo == signal.SIGWINCH:
            assert on_winch is not None
            on_winch()
        elif info.si_signo != signal.SIGCHLD and (forward_terminal_signals or info.si_code != SI_KERNEL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, info.si_signo)


def exit_status(wait_status: int) -> int:
    """A shell-style exit status: the exit code, or 128+N for death by signal N."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def write_state_file(state_dir: str, name: str, text: str) -> None:
    """Replace ``state_dir/name`` atomically, so a reader never sees half a file."""
    path = os.path.join(state_dir, name)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, f"{text}\n".encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def remove_state_file(state_dir: str, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(state_dir, name))


# --- inside the forked child ----------------------------------------------------------


class _SetupError(Exception):
    """A step of the child's setup failed; the message is the one-line RuntimeFailure."""


def _run_child(setup_and_exec: Callable[[], None], report_w: int, take_terminal: bool) -> NoReturn:
    """Body of a freshly forked child: never returns, reports any failure on ``report_w``."""
    try:
        if take_terminal:
            _take_terminal()
        _reset_signals()
        _close_fds_on_exec()
        setup_and_exec()
        message = "exec returned without running the command"
    except _SetupError as exc:
        message = str(exc)
    except BaseException as exc:  # noqa: BLE001 - anything must be reported, not raised
        message = f"container setup failed: {exc}"
    try:
        os.write(report_w, " ".join(message.split()).encode()[:4000])  # one line, short
    finally:
        os._exit(127)


def _take_terminal() -> None:
    """Become a process group of our own and the foreground one of the terminal on stdin.

    A shell inside records the terminal's process group when it starts and restores it
    when it exits; the caller's group is invisible from the new PID namespace, so without
    this an interactive `sh` would fail on exit. SIGTTOU stays blocked (the mask is reset
    just after) because a background group may only take the terminal that way.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
    os.setpgid(0, 0)
    os.tcsetpgrp(0, os.getpgrp())


def _reset_signals() -> None:
    """Give the command clean signal state: nothing blocked, nothing ignored.

    The mask and SIG_IGN dispositions survive exec; the caller blocked some signals to
    supervise the child, and Python itself ignores SIGPIPE and SIGXFSZ.
    """
    for sig in signal.valid_signals():
        # getsignal reads Python's table (no syscall); it knows the ignored ones, inherited
        # or set here. Handlers need no reset: exec resets caught signals to SIG_DFL.
        if signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def _close_fds_on_exec() -> None:
    """Mark every fd above stderr close-on-exec, so the command inherits only its stdio.

    Python's own fds are close-on-exec already (PEP 446); this catches inheritable fds the
    caller holds. Marking instead of closing keeps the setup's fds and the report pipe
    usable until exec. One close_range(2) call; best effort on kernels without it.
    """
    with contextlib.suppress(AttributeError):
        _libc.close_range(3, 0xFFFFFFFF, CLOSE_RANGE_CLOEXEC)


@contextlib.contextmanager
def _failure(message: str) -> Iterator[None]:
    """Turn an OSError of one setup step into a _SetupError saying what and how to fix."""
    try:
        yield
    except OSError as exc:
        raise _SetupError(message.replace("{reason}", exc.strerror or str(exc))) from exc


def _init_container(spec: ProcessSpec, stdio: tuple[int, int, int] | None) -> None:
    """In the child, PID 1 of its new namespace: finish the namespaces and exec the command."""
    _use_stdio(stdio, controlling=spec.tty)
    if spec.netns_path:
        with _failure(f"cannot join network namespace {spec.netns_path}: {{reason}} (was the network set up?)"):
            netns = os.open(spec.netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(netns, CLONE_NEWNET)
            finally:
                os.close(netns)
    with _failure("cannot create the container's namespaces: {reason} (tether must run as root)"):
        _unshare(CLONE_NEWUTS | CLONE_NEWNS)
        # Nothing mounted from here on may propagate back to the host.
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
    root = spec.rootfs or "/"
    if spec.rootfs:
        with _failure(f"cannot use rootfs {spec.rootfs}: {{reason}} (it must be a directory with /proc in it)"):
            os.stat(os.path.join(root, "proc"))
        dev = os.path.join(root, "dev")
        if os.path.isdir(dev):
            with _failure(f"cannot bind /dev into rootfs {spec.rootfs}: {{reason}}"):
                _mount("/dev", dev, None, MS_BIND | MS_REC)
    with _failure("cannot mount /proc in the container: {reason}"):
        _mount("proc", os.path.join(root, "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    sys_dir = os.path.join(root, "sys")
    if spec.netns_path and os.path.isdir(sys_dir):
        # sysfs shows the links of the netns it was mounted from: remount it, as
        # `ip netns exec` does, so /sys/class/net lists the container's interfaces.
        with _failure("cannot mount /sys in the container: {reason}"):
            with contextlib.suppress(OSError):
                _umount(sys_dir, MNT_DETACH)
            _mount("sysfs", sys_dir, "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if spec.hostname:
        with _failure(f"cannot set hostname {spec.hostname!r}: {{reason}} (at most 64 characters)"):
            _sethostname(spec.hostname)
    for source, target in ((spec.resolv_conf, "etc/resolv.conf"), (spec.hosts_file, "etc/hosts"),
                           (spec.hostname_file, "etc/hostname")):
        if source:
            with _failure(f"cannot bind {source} over /{target}: {{reason}} (do both files exist?)"):
                _bind_file(source, root, target, required=target == "etc/resolv.conf")
    if spec.rootfs:
        with _failure(f"cannot chroot into {spec.rootfs}: {{reason}}"):
            os.chroot(spec.rootfs)
            os.chdir("/")
    if spec.workdir:
        with _failure(f"cannot enter working directory {spec.workdir}: {{reason}} (does it exist in the container?)"):
            os.chdir(spec.workdir)
    _exec(spec.cmd, spec.env)


def _use_stdio(stdio: tuple[int, int, int] | None, controlling: bool) -> None:
    """Point 0, 1, 2 at ``stdio`` (None: keep the caller's); with ``controlling`` they are a
    pty's slave, made our controlling terminal in a session of our own."""
    if stdio is None:
        return
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
    if controlling:
        with _failure("cannot give the container its terminal: {reason}"):
            terminal.set_controlling_terminal(0)


def _bind_file(source: str, root: str, target: str, required: bool) -> None:
    """Bind ``source`` over the file ``target`` (relative) under ``root``. In a rootfs a
    missing mount point is made, as Docker does; on the host's own root a missing one is
    left alone (and the bind skipped) unless ``required``."""
    path = os.path.join(root, target)
    if not os.path.lexists(path):
        if root == "/" and not required:
            return
        if root != "/":
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
    _mount(source, path, None, MS_BIND)


def _exec(cmd: list[str], env: dict[str, str] | None) -> None:
    """Exec ``cmd``, looking it up on the PATH of ``env``; raise _SetupError if that fails."""
    try:
        os.execvpe(cmd[0], cmd, os.environ if env is None else env)
    except FileNotFoundError as exc:
        raise _SetupError(f"command not found: {cmd[0]}") from exc
    except PermissionError as exc:
        raise _SetupError(f"permission denied: {cmd[0]} (is it an executable file?)") from exc
    except OSError as exc:
        raise _SetupError(f"cannot execute {cmd[0]}: {exc.strerror}") from exc


# --- helpers --------------------------------------------------------------------------


def _check_command(spec: ProcessSpec) -> None:
    if not spec.cmd:
        raise RuntimeFailure("no command given for the container")


def _shim_environment() -> dict[str, str]:
    """The caller's environment, with this copy of tether importable by the shim."""
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    return env


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (state first); the command name may contain spaces."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2 :].decode().split()


def _discards_signal(pid: int, sig: int) -> bool:
    """True if ``pid`` is a PID 1 that neither catches nor blocks ``sig``, so the kernel drops it."""
    try:
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return False
    bit = 1 << (sig - 1)
    is_ns_init = status.get("NSpid", "").split()[-1:] == ["1"]
    caught = int(status.get("SigCgt", "0"), 16) & bit
    blocked = int(status.get("SigBlk", "0"), 16) & bit
    return is_ns_init and not caught and not blocked


def _pidfd_signal(pidfd: int, sig: int) -> bool:
    """Send ``sig``; False if the process is already gone."""
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        return False
    except OSError as exc:
        raise RuntimeFailure(f"cannot send signal {sig}: {exc.strerror}") from exc
    return True


def _wait_pidfd(pidfd: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the process to exit; True if it did."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000))))


# --- libc -----------------------------------------------------------------------------

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
with contextlib.suppress(AttributeError):  # glibc >= 2.34
    _libc.close_range.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_int]


def _check(result: int) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype))


def _unshare(flags: int) -> None:
    _check(_libc.unshare(flags))


def _mount(source: str | None, target: str, fstype: str | None, flags: int) -> None:
    encode = os.fsencode
    _check(
        _libc.mount(
            None if source is None else encode(source),
            encode(target),
            None if fstype is None else encode(fstype),
            flags,
            None,
        )
    )


def _umount(target: str, flags: int) -> None:
    _check(_libc.umount2(os.fsencode(target), flags))


def _sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)))
