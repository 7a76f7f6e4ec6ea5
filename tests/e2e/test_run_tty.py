"""Terminals and output, end to end with a real daemon: `run -it`, `-t`, `-i`, `-dit`,
`exec -it` on a pseudo-terminal the test makes (no real terminal needed), window size
changes reaching the container, exit codes; and `logs -f`, `--tail`, `-t`.

A ``Terminal`` is a pty pair made here: the tether CLI runs with the slave as its stdin,
stdout, stderr and controlling terminal (so it gets SIGWINCH when the test resizes it),
and the test types into the master and reads what the user would see.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import Host

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root")]

PROMPT = "# "  # root's sh prompt


class Terminal:
    """The tether CLI on a pty of our own, as if a user ran it in a terminal emulator."""

    def __init__(self, host: Host, *args: str, rows: int = 33, cols: int = 111) -> None:
        self.master, slave = os.openpty()
        self.resize(rows, cols)
        self.slave = os.dup(slave)  # kept, to see the terminal's modes as the CLI leaves them
        self.modes = termios.tcgetattr(self.slave)
        self.output = b""
        self._lock = threading.Lock()
        cmd = [*host.enter(), sys.executable, "-m", "tether.cli", "--socket", host.socket,
               "--state-dir", host.state_dir, *args]
        self.proc = subprocess.Popen(
            cmd, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),  # noqa: PLW1509 - our pty is its terminal
            env={**os.environ, "TETHER_NO_AUTOSTART": "1", "TERM": "dumb", "PS1": PROMPT},
        )
        os.close(slave)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.master], [], [], 0.2)
                if not ready:
                    if self.proc.poll() is not None and not self._more():
                        return
                    continue
                data = os.read(self.master, 65536)
            except OSError:
                return  # EIO: the CLI and everything on the pty are gone
            if not data:
                return
            with self._lock:
                self.output += data

    def _more(self) -> bool:
        return bool(select.select([self.master], [], [], 0)[0])

    @property
    def text(self) -> str:
        with self._lock:
            return self.output.decode(errors="replace")

    def expect(self, pattern: str, timeout: float = 15.0, since: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.compile(pattern).search(self.text, since)
            if found:
                return found
            time.sleep(0.02)
        raise AssertionError(f"{pattern!r} did not appear within {timeout}s; the terminal shows {self.text!r}")

    def send(self, text: str) -> int:
        """Type ``text``; returns where the output stood, for ``expect(since=...)``."""
        mark = len(self.text)
        os.write(self.master, text.encode())
        return mark

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def wait(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(5)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def terminals() -> list[Terminal]:
    opened: list[Terminal] = []
    yield opened  # type: ignore[misc]
    for t in opened:
        t.close()


def open_terminal(terminals: list[Terminal], host: Host, *args: str, **kw: int) -> Terminal:
    t = Terminal(host, *args, **kw)
    terminals.append(t)
    return t


# ---------------------------------------------------------------------- run -it, -t, -i


def test_run_it_is_an_interactive_terminal(host: Host, terminals: list[Terminal]) -> None:
    t = open_terminal(terminals, host, "run", "-it", "--rm", "--name", "ttybox", "--net", "none", "--",
                      "sh", "-c", "PS1='# ' exec sh -i")
    t.expect(re.escape(PROMPT))
    mark = t.send("tty; echo TERM=$TERM; stty size; test -t 0 && echo stdin-is-a-tty\r")
    t.expect(r"/dev/pts/\d+", since=mark)
    t.expect(r"TERM=xterm", since=mark)
    t.expect(r"33 111", since=mark)  # the user's terminal size, at start
    t.expect(r"stdin-is-a-tty", since=mark)
    # the container has its own pty: it is PID 1's session, and its hostname is its own
    mark = t.send("hostname; ps -o pid,tty,comm | head -3\r")
    t.expect(r"ttybox", since=mark)
    # the window changes size: the container's terminal follows (SIGWINCH)
    t.resize(40, 120)
    time.sleep(0.3)
    mark = t.send("stty size\r")
    t.expect(r"40 120", since=mark)
    # ^C is the container's: it interrupts the command in it, not the CLI
    mark = t.send("sleep 30; echo after-$((1+1))\r")
    time.sleep(0.5)
    t.send("\x03")
    t.expect(re.escape(PROMPT), since=mark + 10, timeout=5)
    assert t.proc.poll() is None
    # the exit code comes back, and the user's terminal is left as it was (not raw)
    t.send("exit 3\r")
    assert t.wait() == 3
    assert "after-2" not in t.text
    assert termios.tcgetattr(t.slave) == t.modes  # raw mode while attached, then as it was
    names = [c["name"] for c in host.json("ps", "-a", "--format", "json")]
    assert "ttybox" not in names


def test_run_t_without_i_and_i_without_t(host: Host, terminals: list[Terminal]) -> None:
    # -t alone: a terminal for output (its line endings are a terminal's), stdin not attached
    t = open_terminal(terminals, host, "run", "-t", "--rm", "--net", "none", "--",
                      "sh", "-c", "test -t 1 && echo out-is-a-tty; echo TERM=$TERM; exit 4")
    assert t.wait() == 4
    # (the user's terminal is left cooked, as Docker leaves it without -i: it adds its own \r)
    assert "out-is-a-tty\r\r\n" in t.text and "TERM=xterm" in t.text
    # -i alone: stdin attached through a pipe, no terminal
    r = host.tether("run", "-i", "--rm", "--net", "none", "--", "sh", "-c",
                    "read x; echo got:$x; test -t 0 && echo tty || echo no-tty; echo TERM=${TERM-unset}",
                    input="hello\n")
    assert r.stdout.split() == ["got:hello", "no-tty", "TERM=unset"]
    # -it without a terminal on stdin: refused before anything is made
    before = host.snapshot()
    r = host.tether("run", "-it", "--rm", "--net", "none", "--", "sh", check=False)
    assert r.returncode != 0 and r.stderr.startswith("Error: ") and "not a TTY" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert host.snapshot() == before


def test_detached_it_keeps_a_shell_up_and_exec_it_attaches(host: Host, terminals: list[Terminal]) -> None:
    host.tether("run", "-dit", "--name", "box", "--net", "none", "--", "sh")
    host.tether("run", "-di", "--name", "cat", "--net", "none", "--", "cat")
    time.sleep(1.0)
    # a shell waiting on its (never written) terminal, and cat on its open stdin, stay up
    assert host.inspect("box")["state"] == "running"
    assert host.inspect("cat")["state"] == "running"
    # its terminal output went to the log
    assert "#" in host.tether("logs", "box").stdout
    t = open_terminal(terminals, host, "exec", "-it", "box", "sh", "-c", "PS1='# ' exec sh -i", rows=25, cols=90)
    t.expect(re.escape(PROMPT))
    mark = t.send("tty; echo TERM=$TERM; stty size; echo HOST=$HOSTNAME\r")
    t.expect(r"/dev/pts/\d+", since=mark)
    t.expect(r"TERM=xterm", since=mark)
    t.expect(r"25 90", since=mark)
    t.expect(r"HOST=box", since=mark)
    t.resize(30, 100)
    time.sleep(0.3)
    mark = t.send("stty size\r")
    t.expect(r"30 100", since=mark)
    t.send("exit 5\r")
    assert t.wait() == 5
    assert host.inspect("box")["state"] == "running"  # exec's exit is not the container's
    # exec -i (no terminal) feeds stdin through
    r = host.tether("exec", "-i", "box", "--", "sh", "-c", "read x; echo exec-got:$x", input="hi\n")
    assert r.stdout.strip() == "exec-got:hi"


# ---------------------------------------------------------------------- logs


RFC3339_NANOS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z"


def test_logs_follow_tail_and_timestamps(host: Host) -> None:
    script = "for i in 1 2 3 4 5; do echo line$i; sleep 0.4; done; printf 'no newline at the end'"
    host.tether("run", "-d", "--name", "talk", "--net", "none", "--", "sh", "-c", script)
    began = time.monotonic()
    # -f prints what is there, then the rest as it comes, and returns once the container exits
    r = host.tether("logs", "-f", "talk", timeout=60)
    assert time.monotonic() - began > 1.2
    assert r.stdout == "line1\nline2\nline3\nline4\nline5\nno newline at the end"
    assert host.inspect("talk")["state"] == "exited"
    # logs without flags: exactly the output
    assert host.tether("logs", "talk").stdout == r.stdout
    # --tail N: the last N lines (a last line without a newline counts)
    assert host.tether("logs", "--tail", "2", "talk").stdout == "line5\nno newline at the end"
    assert host.tether("logs", "-n", "0", "talk").stdout == ""
    assert host.tether("logs", "--tail", "100", "talk").stdout == r.stdout
    # -t: each line after the time it was written, RFC 3339 with nanoseconds, in order, spaced as written
    stamped = host.tether("logs", "-t", "talk").stdout.split("\n")
    assert len(stamped) == 6
    times = []
    for i, line in enumerate(stamped):
        found = re.fullmatch(rf"({RFC3339_NANOS}) (.*)", line)
        assert found, line
        assert found[2] == (f"line{i + 1}" if i < 5 else "no newline at the end")
        times.append(datetime.strptime(found[1][:26] + "Z", "%Y-%m-%dT%H:%M:%S.%fZ"))
    assert times == sorted(times)
    assert (times[4] - times[0]).total_seconds() > 1.2
    assert abs((datetime.now(UTC).replace(tzinfo=None) - times[0]).total_seconds()) < 120
    tail_stamped = host.tether("logs", "-t", "--tail", "1", "talk").stdout
    assert tail_stamped == stamped[-1]


def test_logs_follow_with_tail_while_running(host: Host, tmp_path: Path) -> None:
    go = tmp_path / "go"  # the container shares the host's filesystem: the test says when d comes
    host.tether("run", "-d", "--name", "slow", "--net", "none", "--", "sh", "-c",
                f"echo a; echo b; echo c; until [ -e {go} ]; do sleep 0.05; done; echo d; sleep 600")
    deadline = time.monotonic() + 10
    while "c" not in host.tether("logs", "slow").stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    proc = subprocess.Popen(
        [*host.enter(), sys.executable, "-m", "tether.cli", "--socket", host.socket, "--state-dir", host.state_dir,
         "logs", "-f", "--tail", "1", "-t", "slow"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "TETHER_NO_AUTOSTART": "1"},
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert re.fullmatch(rf"{RFC3339_NANOS} c\n", first), first
        go.touch()
        second = proc.stdout.readline()  # arrives while following
        assert re.fullmatch(rf"{RFC3339_NANOS} d\n", second), second
        assert proc.poll() is None  # still following a running container
        host.tether("stop", "-t", "0", "slow")
        assert proc.wait(timeout=15) == 0  # and stops when it exits
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_detached_tty_output_is_logged(host: Host) -> None:
    host.tether("run", "-dt", "--name", "ttylog", "--net", "none", "--", "sh", "-c",
                "test -t 1 && echo on-a-tty; stty size")
    deadline = time.monotonic() + 10
    while host.inspect("ttylog")["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    # as a terminal shows it: "\r\n" line ends (read raw: the test's text mode would fold them)
    with open(host.inspect("ttylog")["log_path"], "rb") as fh:
        assert fh.read() == b"on-a-tty\r\n24 80\r\n"
    assert host.tether("logs", "ttylog").stdout == "on-a-tty\n24 80\n"
