"""End to end: the container runtime (tether.runtime) in real namespaces, without the daemon.

Every container started here is stopped by the ``containers`` fixture and every network
namespace is deleted by ``netns``, even when a test fails; names carry a random suffix.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tether.errors import RuntimeFailure
from tether.runtime import (
    ProcessSpec,
    exec_in,
    process_alive,
    process_start_time,
    read_exit_code,
    run_foreground,
    spawn_detached,
    stop_process,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root"),
]

REPO = Path(__file__).resolve().parents[2]


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def proc_status(pid: int, key: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return line.split(":", 1)[1].strip()
    raise KeyError(key)


def mounts_at(mount_point: str) -> list[str]:
    """This mount namespace's mountinfo lines for ``mount_point`` (other tests may mount elsewhere)."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line for line in lines if line.split()[4] == mount_point]


def netns_id(path: str) -> str:
    """The `readlink /proc/self/ns/net` text a process in the namespace at ``path`` shows."""
    return f"net:[{os.stat(path).st_ino}]"


class Containers:
    """Starts detached containers and remembers them, so teardown can stop every one."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[tuple[int, int]] = []

    def state_dir(self) -> str:
        path = self.tmp / f"ctr-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        return str(path)

    def spawn(self, cmd: list[str], **kw: object) -> tuple[int, int, str]:
        state_dir = str(kw.pop("state_dir", None) or self.state_dir())
        kw.setdefault("log_path", os.path.join(state_dir, "log"))
        pid, start_time = spawn_detached(ProcessSpec(cmd=cmd, state_dir=state_dir, **kw))  # type: ignore[arg-type]
        self.started.append((pid, start_time))
        return pid, start_time, state_dir

    def adopt(self, pid: int, start_time: int) -> None:
        self.started.append((pid, start_time))

    def stop_all(self) -> None:
        for pid, start_time in self.started:
            stop_process(pid, start_time, timeout=1)


@pytest.fixture
def containers(tmp_path: Path) -> Iterator[Containers]:
    box = Containers(tmp_path)
    try:
        yield box
    finally:
        box.stop_all()


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh, empty network namespace; yields its path."""
    name = f"tstrt{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield f"/var/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def state_dir(tmp_path: Path) -> str:
    path = tmp_path / "state"
    path.mkdir()
    return str(path)


def run_captured(capfd: pytest.CaptureFixture[str], spec: ProcessSpec) -> tuple[int, str]:
    capfd.readouterr()
    status = run_foreground(spec)
    return status, capfd.readouterr().out


# --- run_foreground -----------------------------------------------------------------


def test_foreground_returns_exit_code_and_records_it(state_dir: str) -> None:
    assert run_foreground(ProcessSpec(["sh", "-c", "exit 7"], state_dir)) == 7
    assert read_exit_code(state_dir) == 7
    assert run_foreground(ProcessSpec(["true"], state_dir)) == 0
    assert read_exit_code(state_dir) == 0


def test_foreground_inherits_stdout(capfd: pytest.CaptureFixture[str], state_dir: str) -> None:
    status, out = run_captured(capfd, ProcessSpec(["sh", "-c", "echo hello-from-container; echo oops >&2"], state_dir))
    assert status == 0
    assert out == "hello-from-container\n"


def test_foreground_reports_start_and_death_by_signal(state_dir: str) -> None:
    seen: list[tuple[int, int]] = []

    def kill_it(pid: int, start_time: int) -> None:
        seen.append((pid, start_time))
        assert process_alive(pid, start_time)
        os.kill(pid, signal.SIGKILL)

    assert run_foreground(ProcessSpec(["sleep", "600"], state_dir), on_started=kill_it) == 128 + signal.SIGKILL
    assert len(seen) == 1
    pid, start_time = seen[0]
    assert not process_alive(pid, start_time)
    assert read_exit_code(state_dir) == 137


def test_hostname_is_set_in_the_container_only(capfd: pytest.CaptureFixture[str], state_dir: str) -> None:
    host_name = socket.gethostname()
    name = f"ctr{uuid.uuid4().hex[:6]}"
    status, out = run_captured(capfd, ProcessSpec(["hostname"], state_dir, hostname=name))
    assert (status, out.strip()) == (0, name)
    assert socket.gethostname() == host_name


def test_container_sees_only_its_own_processes(capfd: pytest.CaptureFixture[str], state_dir: str) -> None:
    proc_mounts_before = mounts_at("/proc")
    script = 'echo $$; ls /proc | grep -c "^[0-9]"; ps -e --no-headers | wc -l'
    status, out = run_captured(capfd, ProcessSpec(["sh", "-c", script], state_dir))
    shell_pid, in_proc, in_ps = (int(x) for x in out.split())
    assert status == 0
    assert shell_pid == 1
    assert in_proc <= 4  # sh, ls, grep (and at most one more): not the host's hundreds
    assert in_ps <= 4
    # the fresh /proc lived in the container's own mount namespace
    assert mounts_at("/proc") == proc_mounts_before


def test_foreground_joins_the_given_netns(capfd: pytest.CaptureFixture[str], state_dir: str, netns: str) -> None:
    script = "readlink /proc/self/ns/net; echo --; ip -o link; echo --; ls /sys/class/net; echo --; cat /proc/net/dev"
    status, out = run_captured(capfd, ProcessSpec(["sh", "-c", script], state_dir, netns_path=netns))
    assert status == 0
    ns, links, sys_net, dev = out.split("--\n")
    assert ns.strip() == netns_id(netns)
    assert len(links.strip().splitlines()) == 1 and ": lo:" in links
    assert sys_net.split() == ["lo"]
    assert [line.split(":")[0].strip() for line in dev.splitlines()[2:]] == ["lo"]


def test_host_mode_keeps_the_callers_netns(capfd: pytest.CaptureFixture[str], state_dir: str) -> None:
    status, out = run_captured(capfd, ProcessSpec(["readlink", "/proc/self/ns/net"], state_dir))
    assert (status, out.strip()) == (0, os.readlink("/proc/self/ns/net"))


def test_env_workdir_and_resolv_conf(capfd: pytest.CaptureFixture[str], state_dir: str, tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\n")
    host_resolv = Path("/etc/resolv.conf").read_text()
    spec = ProcessSpec(
        ["sh", "-c", 'echo "$GREETING"; pwd; cat /etc/resolv.conf'],
        state_dir,
        env={"GREETING": "hi there", "PATH": "/usr/bin:/bin"},
        workdir=str(tmp_path),
        resolv_conf=str(resolv),
    )
    status, out = run_captured(capfd, spec)
    assert status == 0
    assert out.splitlines() == ["hi there", str(tmp_path), "nameserver 192.0.2.53"]
    assert Path("/etc/resolv.conf").read_text() == host_resolv


def test_foreground_forwards_sigterm(state_dir: str) -> None:
    driver = textwrap.dedent(
        """
        import json, pathlib, sys
        from tether.runtime import ProcessSpec, run_foreground
        script = 'trap "exit 9" TERM; echo ready; while :; do sleep 0.05; done'
        started = pathlib.Path(sys.argv[1], "started")
        announce = lambda pid, start_time: started.write_text(json.dumps([pid, start_time]))
        sys.exit(run_foreground(ProcessSpec(["sh", "-c", script], sys.argv[1]), on_started=announce))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", driver, state_dir], cwd=REPO, stdout=subprocess.PIPE, text=True)
    container: tuple[int, int] | None = None
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"  # the trap is in place
        wait_for(lambda: Path(state_dir, "started").exists(), what="on_started")
        pid, start_time = json.loads(Path(state_dir, "started").read_text())
        container = (pid, start_time)
        assert int(proc_status(pid, "PPid")) == proc.pid  # a direct child: no go-between
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 9
        assert read_exit_code(state_dir) == 9
        assert not process_alive(pid, start_time)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if container is not None:
            stop_process(*container, timeout=0)


@pytest.mark.skipif(shutil.which("script") is None, reason="needs script(1) for a pseudo-terminal")
def test_interactive_shell_gets_the_terminal(state_dir: str) -> None:
    # dash restores the terminal's process group on exit; if the container did not own
    # one, the group it saw at start (the caller's) is invisible in its PID namespace.
    driver = textwrap.dedent(
        """
        import sys
        from tether.runtime import ProcessSpec, run_foreground
        sys.exit(run_foreground(ProcessSpec(["sh", "-i"], sys.argv[1], hostname="ttybox")))
        """
    )
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(driver)} {shlex.quote(state_dir)}"
    result = subprocess.run(
        ["script", "-qec", command, "/dev/null"],
        check=False,
        input="echo in-$(hostname)\nexit 4\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    assert "in-ttybox" in result.stdout
    assert "Cannot set tty process group" not in result.stdout + result.stderr
    assert result.returncode == 4


def test_command_not_found_raises(state_dir: str) -> None:
    with pytest.raises(RuntimeFailure, match="command not found: no-such-command-xyz"):
        run_foreground(ProcessSpec(["no-such-command-xyz"], state_dir))
    with pytest.raises(RuntimeFailure, match="command not found: no-such-command-xyz"):
        spawn_detached(ProcessSpec(["no-such-command-xyz"], state_dir))
    with pytest.raises(RuntimeFailure, match="network namespace"):
        run_foreground(ProcessSpec(["true"], state_dir, netns_path="/var/run/netns/tstrt-missing"))
    with pytest.raises(RuntimeFailure, match="working directory"):
        spawn_detached(ProcessSpec(["true"], state_dir, workdir="/no/such/dir"))


def test_rootfs_is_the_containers_root(
    capfd: pytest.CaptureFixture[str], tmp_path: Path, containers: Containers
) -> None:
    rootfs = tmp_path / "rootfs"
    for d in ("bin", "proc", "dev", "etc", "sys"):
        (rootfs / d).mkdir(parents=True)
    shutil.copy("/usr/bin/busybox", rootfs / "bin" / "busybox")
    for applet in ("sh", "ls", "cat", "echo", "sleep", "grep", "hostname"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    env = {"PATH": "/bin"}
    script = 'echo $$ > /out; ls / > /listing; echo x > /dev/null; ls /proc | grep -c "^[0-9]" > /count'
    state_dir = containers.state_dir()
    assert run_foreground(ProcessSpec(["sh", "-c", script], state_dir, rootfs=str(rootfs), env=env)) == 0
    assert (rootfs / "out").read_text().strip() == "1"
    assert "usr" not in (rootfs / "listing").read_text().split()
    assert int((rootfs / "count").read_text()) <= 4
    # exec_in enters the same root
    pid, _, _ = containers.spawn(["sleep", "600"], rootfs=str(rootfs), env=env)
    capfd.readouterr()
    assert exec_in(pid, ["sh", "-c", "ls /; pwd"], env=env) == 0
    listing = capfd.readouterr().out.split()
    assert "busybox" not in listing and "bin" in listing and "usr" not in listing
    assert listing[-1] == "/"


# --- spawn_detached -------------------------------------------------------------------


def test_detached_logs_output_and_records_exit(containers: Containers) -> None:
    pid, start_time, state_dir = containers.spawn(["sh", "-c", "echo to-log; echo err-log >&2; sleep 0.3; exit 3"])
    assert process_alive(pid, start_time)
    assert process_start_time(pid) == start_time
    assert Path(state_dir, "pid").read_text().strip() == str(pid)
    assert proc_status(pid, "NSpid").split()[-1] == "1"  # PID 1 of its own namespace
    assert read_exit_code(state_dir) is None
    wait_for(lambda: read_exit_code(state_dir) == 3, what="exitcode file")
    assert not process_alive(pid, start_time)
    assert Path(state_dir, "log").read_text().splitlines() == ["to-log", "err-log"]


def test_on_exit_runs_after_the_exit_code_is_recorded(containers: Containers) -> None:
    state_dir = containers.state_dir()
    marker = os.path.join(state_dir, "on-exit-saw")
    on_exit = ["sh", "-c", f"cat {state_dir}/exitcode > {marker}.tmp && mv {marker}.tmp {marker}"]
    containers.spawn(["sh", "-c", "exit 4"], state_dir=state_dir, on_exit=on_exit)
    wait_for(lambda: os.path.exists(marker), what="on_exit hook")
    assert Path(marker).read_text().strip() == "4"


def test_detached_survives_the_death_of_its_spawner(containers: Containers) -> None:
    state_dir = containers.state_dir()
    driver = textwrap.dedent(
        """
        import json, sys, time
        from tether.runtime import ProcessSpec, spawn_detached
        spec = ProcessSpec(["sh", "-c", "echo alive; sleep 600"], sys.argv[1], log_path=sys.argv[1] + "/log")
        print(json.dumps(spawn_detached(spec)), flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", driver, state_dir], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        pid, start_time = json.loads(line)
        containers.adopt(pid, start_time)
        shim = int(proc_status(pid, "PPid"))
        assert shim != proc.pid and int(proc_status(shim, "PPid")) != proc.pid  # nothing for the spawner to reap
        assert os.getsid(pid) != os.getsid(proc.pid) and os.getsid(shim) == os.getsid(pid)
    finally:
        proc.kill()
        proc.wait()
    time.sleep(0.2)
    assert process_alive(pid, start_time)
    wait_for(lambda: "alive" in Path(state_dir, "log").read_text(), what="container output in the log")
    stop_process(pid, start_time, timeout=1)
    # the shim outlived the spawner too: it still records the exit code
    wait_for(lambda: read_exit_code(state_dir) == 137, what="exitcode after stop")


def test_spawn_from_many_threads(containers: Containers) -> None:
    results: list[tuple[int, int, str]] = []
    errors: list[BaseException] = []

    def spawn_one() -> None:
        try:
            results.append(containers.spawn(["sleep", "600"], hostname="threaded"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=spawn_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({pid for pid, _, _ in results}) == 4
    assert all(process_alive(pid, start) for pid, start, _ in results)
    # the caller's own pid namespace is untouched
    assert os.readlink("/proc/self/ns/pid") == os.readlink("/proc/self/ns/pid_for_children")


# --- stop_process, process_alive ------------------------------------------------------


def test_stop_kills_a_pid1_that_ignores_sigterm(containers: Containers) -> None:
    pid, start_time, state_dir = containers.spawn(["sleep", "600"])
    began = time.monotonic()
    stop_process(pid, start_time, timeout=3)
    assert time.monotonic() - began < 3.5
    assert not process_alive(pid, start_time)
    wait_for(lambda: read_exit_code(state_dir) == 137, what="exitcode after SIGKILL")
    stop_process(pid, start_time, timeout=3)  # idempotent


def test_stop_lets_a_sigterm_handler_finish(containers: Containers) -> None:
    script = 'trap "exit 0" TERM; echo ready; while :; do sleep 0.05; done'
    pid, start_time, state_dir = containers.spawn(["sh", "-c", script])
    wait_for(lambda: "ready" in Path(state_dir, "log").read_text(), what="trap installed")
    began = time.monotonic()
    stop_process(pid, start_time, timeout=5)
    assert time.monotonic() - began < 2
    wait_for(lambda: read_exit_code(state_dir) == 0, what="graceful exit code")


def test_stop_waits_for_the_timeout_before_sigkill(containers: Containers) -> None:
    script = 'trap "echo got-term" TERM; echo ready; while :; do sleep 0.05; done'
    pid, start_time, state_dir = containers.spawn(["sh", "-c", script])
    wait_for(lambda: "ready" in Path(state_dir, "log").read_text(), what="trap installed")
    began = time.monotonic()
    stop_process(pid, start_time, timeout=1)
    assert 0.9 < time.monotonic() - began < 3
    assert not process_alive(pid, start_time)
    wait_for(lambda: read_exit_code(state_dir) == 137, what="exitcode after SIGKILL")
    assert "got-term" in Path(state_dir, "log").read_text()


def test_process_alive_rejects_other_start_times(containers: Containers) -> None:
    pid, start_time, _ = containers.spawn(["sleep", "600"])
    assert process_alive(pid, start_time)
    assert not process_alive(pid, start_time + 1)
    stop_process(pid, start_time + 1, timeout=0)  # not "our" process: left alone
    assert process_alive(pid, start_time)
    assert process_start_time(os.getpid()) is not None
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert process_start_time(dead.pid) is None


# --- exec_in --------------------------------------------------------------------------


def test_exec_in_shares_hostname_netns_and_pids(
    capfd: pytest.CaptureFixture[str], containers: Containers, netns: str
) -> None:
    pid, _, _ = containers.spawn(["sleep", "600"], netns_path=netns, hostname="exec-target")
    capfd.readouterr()
    script = 'hostname; readlink /proc/self/ns/net; echo $$; ls /proc | grep -c "^[0-9]"; ip -o link | wc -l'
    assert exec_in(pid, ["sh", "-c", script]) == 0
    name, ns, shell_pid, in_proc, links = capfd.readouterr().out.split()
    assert name == "exec-target"
    assert ns == netns_id(netns)
    assert 1 < int(shell_pid) < 10  # a pid of the container's namespace, not the host's
    assert int(in_proc) <= 5  # sleep, sh, ls, grep
    assert links == "1"
    assert exec_in(pid, ["sh", "-c", "exit 5"]) == 5
    with pytest.raises(RuntimeFailure, match="command not found"):
        exec_in(pid, ["no-such-command-xyz"])


def test_exec_in_a_dead_container_raises(containers: Containers) -> None:
    pid, start_time, _ = containers.spawn(["sleep", "600"])
    stop_process(pid, start_time, timeout=0)
    wait_for(lambda: process_start_time(pid) is None, what="shim to reap the container")
    with pytest.raises(RuntimeFailure, match="not running"):
        exec_in(pid, ["true"])
