"""The per-container shim: the detached parent of one container's init, like Podman's conmon.

Run as ``python -m tether.runtime.shim`` by ``spawn_detached``, which writes the spec (a
ProcessSpec.to_json()) on its stdin and closes it: the spec holds the container's
environment, which must never appear on a command line. Stdout is a pipe on which the
shim reports, in one JSON line, either ``{"pid": P, "start_time": T}`` once the command
has been exec'd or ``{"error": MSG}``.

Design note. The daemon that starts containers is multi-threaded and may be SIGKILLed,
so it must neither fork nor have to reap anything long-lived. The shim therefore forks
once more and its first process exits at once (the caller reaps it in milliseconds); the
second one starts a new session, forks the container (``fork_container``), reports, then
stays to wait for it, so the exit code can be recorded even when the daemon is gone. The
shim itself stays in the host's namespaces, so ``on_exit`` runs there too. Signals sent
to the shim (SIGINT/SIGTERM/SIGHUP) are forwarded to the container, as in the foreground.

The container's stdout and stderr are one pipe (or, with ``tty``, its pty) that a relay
thread of the shim reads into the log, with the time of every line (``logs.py``). Its
stdin is /dev/null, or with ``interactive`` a pipe the shim holds open and never writes
(as ``docker run -di``: a shell waiting on its input stays up).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from tether.errors import RuntimeFailure
from tether.runtime import terminal
from tether.runtime.logs import LogWriter
from tether.runtime.process import (
    EXIT_CODE_FILE,
    PID_FILE,
    ProcessSpec,
    fork_container,
    remove_state_file,
    supervise,
    supervised_signals,
    write_state_file,
)

__all__ = ["main"]


# How long the shim waits for the relay to drain once the container has exited, before it
# records the exit code (the daemon waits 0.5 s for that file).
_DRAIN_BEFORE_EXIT_CODE = 0.3
_DRAIN_AFTER = 5.0


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tether.runtime.shim < SPEC_JSON", file=sys.stderr)
        return 2
    try:
        spec = ProcessSpec.from_json(sys.stdin.buffer.read().decode())
    except (ValueError, TypeError) as exc:
        _report({"error": f"the container shim got no valid spec on its stdin: {exc}"})
        return 2
    if os.fork() != 0:
        os._exit(0)  # the first process: exiting now is what lets the caller forget us
    os.setsid()
    os.chdir("/")
    return _run_detached(spec)


def _run_detached(spec: ProcessSpec) -> int:
    """In the detached shim: start the container, report, relay its output, wait, record,
    run on_exit."""
    remove_state_file(spec.state_dir, EXIT_CODE_FILE)
    devnull = os.open(os.devnull, os.O_RDWR)
    log: LogWriter | None = None
    if spec.log_path:
        try:
            log = LogWriter(spec.log_path)
        except OSError as exc:
            _report({"error": f"cannot open log file {spec.log_path}: {exc.strerror} (does its directory exist?)"})
            return 1
    # (output source the relay reads, the container's stdio, the container's ends to close here)
    theirs: list[int] = []
    if spec.tty:
        source, slave = terminal.open_pty()
        stdio, theirs = (slave, slave, slave), [slave]
    else:
        stdin = devnull
        if spec.interactive:
            stdin, _held_open = os.pipe()  # the write end lives as long as the shim
            theirs.append(stdin)
        if log is not None:
            source, out = os.pipe()
            theirs.append(out)
        else:
            source, out = -1, devnull
        stdio = (stdin, out, out)
    relay = terminal.Relay(source, log.write if log is not None else lambda data: None) if source >= 0 else None
    with supervised_signals():
        try:
            pid, start_time = fork_container(spec, stdio=stdio)
        except RuntimeFailure as exc:
            _report({"error": exc.message})
            return 1
        finally:
            for fd in theirs:  # the container holds them now: EOF comes when it is gone
                os.close(fd)
        try:
            write_state_file(spec.state_dir, PID_FILE, str(pid))
        except OSError as exc:
            os.kill(pid, signal.SIGKILL)  # a container nobody can find must not run on
            os.waitpid(pid, 0)
            _report({"error": f"cannot write to state dir {spec.state_dir}: {exc.strerror}"})
            return 1
        if relay is not None:
            relay.start()
        _report({"pid": pid, "start_time": start_time})
        # Let go of the caller's pipes: it reads until EOF. Our own late errors go to the log.
        os.dup2(devnull, 0)
        late_errors = log.log if log is not None else devnull
        os.dup2(late_errors, 1)
        os.dup2(late_errors, 2)
        status = supervise(pid)
    if relay is not None:
        relay.join(_DRAIN_BEFORE_EXIT_CODE)  # so `logs -f`, which stops at the exit, sees it all
    write_state_file(spec.state_dir, EXIT_CODE_FILE, str(status))
    if spec.on_exit:
        _run_on_exit(spec.on_exit)
    if relay is not None:
        relay.close(grace=_DRAIN_AFTER)
    if log is not None:
        log.close()
    return 0


def _report(message: dict[str, object]) -> None:
    try:
        os.write(1, (json.dumps(message) + "\n").encode())
    except BrokenPipeError:
        pass  # the caller died; the container runs on regardless


def _run_on_exit(argv: list[str]) -> None:
    """Start the on_exit hook detached and do not wait: its errors are not the container's."""
    try:
        subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv))
