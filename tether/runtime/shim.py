"""The per-container shim: the detached parent of one container's init, like Podman's conmon.

Run as ``python -m tether.runtime.shim SPEC_JSON`` (a ProcessSpec.to_json()) by
``spawn_detached``, with stdout as a pipe on which it reports, in one JSON line, either
``{"pid": P, "start_time": T}`` once the command has been exec'd or ``{"error": MSG}``.

Design note. The daemon that starts containers is multi-threaded and may be SIGKILLed,
so it must neither fork nor have to reap anything long-lived. The shim therefore forks
once more and its first process exits at once (the caller reaps it in milliseconds); the
second one starts a new session, forks the container (``fork_container``), reports, then
stays to wait for it, so the exit code can be recorded even when the daemon is gone. The
shim itself stays in the host's namespaces, so ``on_exit`` runs there too. Signals sent
to the shim (SIGINT/SIGTERM/SIGHUP) are forwarded to the container, as in the foreground.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from tether.errors import RuntimeFailure
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


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tether.runtime.shim SPEC_JSON", file=sys.stderr)
        return 2
    spec = ProcessSpec.from_json(argv[1])
    if os.fork() != 0:
        os._exit(0)  # the first process: exiting now is what lets the caller forget us
    os.setsid()
    os.chdir("/")
    return _run_detached(spec)


def _run_detached(spec: ProcessSpec) -> int:
    """In the detached shim: start the container, report, wait, record, run on_exit."""
    remove_state_file(spec.state_dir, EXIT_CODE_FILE)
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        log = os.open(spec.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640) if spec.log_path else devnull
    except OSError as exc:
        _report({"error": f"cannot open log file {spec.log_path}: {exc.strerror} (does its directory exist?)"})
        return 1
    with supervised_signals():
        try:
            pid, start_time = fork_container(spec, stdio=(devnull, log, log))
        except RuntimeFailure as exc:
            _report({"error": exc.message})
            return 1
        try:
            write_state_file(spec.state_dir, PID_FILE, str(pid))
        except OSError as exc:
            os.kill(pid, signal.SIGKILL)  # a container nobody can find must not run on
            os.waitpid(pid, 0)
            _report({"error": f"cannot write to state dir {spec.state_dir}: {exc.strerror}"})
            return 1
        _report({"pid": pid, "start_time": start_time})
        # Let go of the caller's pipes: it reads until EOF. Our own late errors go to the log.
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        status = supervise(pid)
    write_state_file(spec.state_dir, EXIT_CODE_FILE, str(status))
    if spec.on_exit:
        _run_on_exit(spec.on_exit)
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
