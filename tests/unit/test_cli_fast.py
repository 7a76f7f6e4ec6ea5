"""The fast path of the ``tether`` command (``tether/cli/fast.py``) against the full Typer
CLI: for each hot verb over a set of command lines, in-process, the same stdout, stderr and
exit code both ways, errors included (an unknown container, no daemon, a bad --format, a bad
--filter), with a small fake daemon on a unix socket standing in for the real one. Also: the
fast path takes exactly the options the Typer commands take, leaves everything else to
Typer, and imports neither Typer, Click nor Rich."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tether.cli import cli_command, main
from tether.cli.fast import FLAG, LIST, VERBS, parse
from tether.errors import InvalidInput, NotFound

NETWORKS = [
    {"id": "a1" * 16, "name": "bridge", "driver": "bridge", "scope": "local", "subnet": "172.30.0.0/16",
     "bridge": "tether0", "containers": 1, "labels": {}, "created": "2026-12-07T10:00:00"},
    {"id": "b2" * 16, "name": "web", "driver": "bridge", "scope": "local", "subnet": "10.9.0.0/24",
     "subnet6": "fd00:9::/64", "bridge": "tbr-b2b2", "containers": 0, "labels": {"tier": "web"},
     "created": "2026-12-07T10:01:00"},
]
CONTAINERS = [
    {"id": "c3" * 16, "name": "app", "state": "running", "exit_code": None, "net_mode": "bridge",
     "networks": {"bridge": {"address": "172.30.0.2", "network_id": "a1" * 16}},
     "ports": [{"host_ip": None, "host_port": 8080, "container_port": 80, "protocol": "tcp"}],
     "cmd": ["sleep", "3600", "ünïcode"], "labels": {"tier": "web"}, "created": "2026-12-07T10:02:00"},
    {"id": "d4" * 16, "name": "old", "state": "exited", "exit_code": 3, "net_mode": "none", "networks": {},
     "cmd": ["true"], "labels": {}, "created": "2026-12-07T10:03:00"},
]


class FakeDaemon:
    """Answers the few requests the hot verbs make, as the daemon does (one per connection)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.requests: list[tuple[str, str, Any]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(16)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def answer(self, method: str, target: str, body: Any) -> tuple[int, Any]:
        by_name = {c["name"]: c for c in CONTAINERS}
        nets = {n["name"]: n for n in NETWORKS}
        if target == "/ping":
            return 200, {"pid": os.getpid()}
        if target == "/networks":
            return 200, NETWORKS
        if target.startswith("/containers?") or target == "/containers":
            return 200, CONTAINERS if "all=1" in target else CONTAINERS[:1]
        kind, _, rest = target[1:].partition("/")
        name, _, action = rest.partition("/")
        if kind == "containers" and name in by_name:
            return 200, by_name[name]
        if kind == "networks" and name in nets and not action:
            return 200, nets[name]
        if kind == "networks" and name in nets and body.get("container") in by_name:
            return 200, {"lagging": ["h2"]} if body.get("ip") == "10.9.0.9" else {}
        missing = NotFound(f"no such {'network' if kind == 'networks' else 'container'}: {name}")
        if action:
            missing = NotFound(f"no such container: {body.get('container')}") if name in nets else missing
        if body and body.get("ip") == "bad":
            missing = InvalidInput("invalid --ip 'bad'")  # type: ignore[assignment]
        return 404, missing.to_wire()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), 0)
                while len(body) < length:
                    body += conn.recv(65536)
                method, target = head.split(b" ")[:2]
                parsed = json.loads(body) if body else None
                self.requests.append((method.decode(), target.decode(), parsed))
                status, payload = self.answer(method.decode(), target.decode(), parsed or {})
                out = json.dumps(payload).encode()
                conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(out), out))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[FakeDaemon]:
    fake = FakeDaemon(str(tmp_path / "tether.sock"))
    yield fake
    fake.close()


def run_both(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> list[Any]:
    """(code, stdout, stderr) of ``argv`` on the fast path, then on the full Typer path."""
    monkeypatch.setenv("TETHER_NO_AUTOSTART", "1")
    monkeypatch.delenv("TETHER_HOST", raising=False)
    results = []
    for full in (False, True):
        if full:
            monkeypatch.setenv("TETHER_FULL_CLI", "1")
        else:
            monkeypatch.delenv("TETHER_FULL_CLI", raising=False)
        with pytest.raises(SystemExit) as exit_:
            main(list(argv))
        captured = capsys.readouterr()
        results.append((exit_.value.code, captured.out, captured.err))
    return results


HOT = [
    ["network", "ls"], ["network", "ls", "-q"], ["network", "ls", "--quiet", "--no-trunc"],
    ["network", "ls", "--format", "json"], ["network", "ls", "--format=json"], ["network", "ls", "--format", ""],
    ["network", "ls", "--format", "{{.name}} {{.Subnet}}"], ["network", "ls", "--format", "table {{.ID}}\t{{.name}}"],
    ["network", "ls", "--format", "table"], ["network", "ls", "--format", "tabel"], ["network", "ls", "--format", "{{.nope}}"],
    ["network", "ls", "--format", "{{.name"], ["network", "ls", "-f", "name=web"], ["network", "ls", "--filter=label=tier"],
    ["network", "ls", "-f", "name=[", "--format", "{{"], ["network", "ls", "-f", "colour=red"], ["network", "ls", "-f", "type=odd"],
    ["network", "ls", "-f", "dangling=true", "-f", "driver=bridge"], ["network", "ls", "-f", "nothing"],
    ["ps"], ["ps", "-a"], ["ps", "--all", "-q"], ["ps", "-a", "--no-trunc"], ["ps", "--format", "json", "-a"],
    ["ps", "-f", "status=exited"], ["ps", "-f", "name=^/app$", "--format", "{{.Names}} {{.Command}}"],
    ["ps", "-a", "--format", "table {{.ID}} {{.Status}}"], ["ps", "-f", "status=sleeping"], ["ps", "--format", "{{.x}}"],
    ["inspect", "app"], ["inspect", "app", "old"], ["inspect", "-f", "{{.name}} {{.state}}", "app", "old"],
    ["inspect", "app", "--format", "{{json .networks}}"], ["inspect", "app", "nosuch"], ["inspect", "nosuch"],
    ["inspect", "app", "-f", "table"], ["inspect", "-f", "{{if}}", "app"], ["inspect", "wéird name/x"],
    ["network", "inspect", "web"], ["network", "inspect", "web", "bridge", "-f", "{{.subnet}}"], ["network", "inspect", "nosuch"],
    ["network", "connect", "web", "app"], ["network", "connect", "web", "app", "--ip", "10.9.0.9", "--alias", "a", "--alias", "b"],
    ["network", "connect", "--ip6=fd00:9::9", "web", "app"], ["network", "connect", "web", "nosuch"],
    ["network", "connect", "nosuch", "app"], ["network", "connect", "web", "app", "--ip", "bad"],
    ["network", "disconnect", "web", "app"], ["network", "disconnect", "web", "nosuch"],
]


@pytest.mark.parametrize("argv", HOT, ids=[" ".join(a) for a in HOT])
def test_fast_path_prints_what_the_full_cli_prints(
    daemon: FakeDaemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    assert parse(["--socket", daemon.path, *argv]) is not None, "this command line should take the fast path"
    for line in (["--socket", daemon.path, *argv], ["--state-dir", "/nonexistent", f"--socket={daemon.path}", *argv]):
        daemon.requests.clear()
        fast, full = run_both(capsys, monkeypatch, line)
        assert fast == full
        assert len(daemon.requests) % 2 == 0  # each path asked the same


@pytest.mark.parametrize("argv", [["network", "ls"], ["ps", "-a"], ["inspect", "app"], ["network", "connect", "a", "b"]])
def test_no_daemon_is_the_same_error_both_ways(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    monkeypatch.setenv("TETHER_SOCKET", str(tmp_path / "none.sock"))
    fast, full = run_both(capsys, monkeypatch, argv)
    assert fast == full
    assert fast[0] == 1 and fast[2].startswith("Error: no tether daemon answers on ") and fast[1] == ""


LEFT_TO_TYPER = [
    [], ["--help"], ["network", "ls", "--help"], ["network", "ls", "-h"], ["ps", "-aq"], ["ps", "-fname=x"],
    ["ps", "extra"], ["inspect"], ["network", "inspect"], ["network", "connect", "web"], ["network", "connect", "a", "b", "c"],
    ["network", "disconnect", "a", "b", "--ip", "x"], ["network", "ls", "--format"], ["ps", "--filter", "-x"],
    ["network", "ls", "--quiet=1"], ["--host", "h1", "ps"], ["ps", "--"], ["inspect", "-", "app"], ["network", "lss"],
    ["network"], ["netw", "ls"], ["--socket"], ["--socket", "-x", "ps"], ["ps", "--all", "--al"], ["network", "--socket", "x", "ls"],
    ["version"], ["network", "rm", "x"], ["node", "ls"], ["inspect", "app", "-h"],
]


@pytest.mark.parametrize("argv", LEFT_TO_TYPER, ids=[" ".join(a) or "(none)" for a in LEFT_TO_TYPER])
def test_what_the_fast_path_does_not_understand_goes_to_typer(argv: list[str]) -> None:
    assert parse(argv) is None


def test_usage_errors_and_help_are_typers_both_ways(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_SOCKET", "/nonexistent/tether.sock")
    for argv in (["ps", "-aq", "--bogus"], ["network", "ls", "--help"], ["inspect"], ["network", "connect", "web"]):
        fast, full = run_both(capsys, monkeypatch, argv)
        assert fast == full and fast[0] in (0, 2), argv


def test_lab_hosts_and_shell_completion_go_to_typer(monkeypatch: pytest.MonkeyPatch) -> None:
    from tether.cli.fast import run_fast

    for var in ("TETHER_HOST", "_TETHER_COMPLETE"):
        monkeypatch.setenv(var, "x")
        assert run_fast(["ps"]) is None
        monkeypatch.delenv(var)


def test_fast_options_are_exactly_the_typer_commands_options() -> None:
    root = cli_command()
    globals_ = {opt for param in root.params for opt in param.opts}
    assert {"--socket", "--state-dir"} <= globals_
    for words, (spec, fewest, most, _) in VERBS.items():
        command = root
        for word in words:
            command = command.commands[word]
        typer_options: dict[str, str] = {}
        arguments = []
        for param in command.params:
            if param.param_type_name == "argument":
                arguments.append(param)
                continue
            kind = FLAG if param.is_flag else (LIST if param.multiple else "value")
            typer_options.update({opt: kind for opt in param.opts if opt not in ("-h", "--help")})
        assert {opt: kind for opt, (_, kind) in spec.items()} == typer_options, words
        wanted = sum(1 if a.nargs == 1 else 0 for a in arguments)
        if any(a.nargs == -1 for a in arguments):
            assert (fewest, most) == (wanted + 1, None), words
        else:
            assert (fewest, most) == (wanted, wanted), words


def test_the_fast_path_imports_neither_typer_click_nor_rich(daemon: FakeDaemon) -> None:
    code = (
        "import sys\n"
        "from tether.cli import main\n"
        "try:\n"
        f"    main(['--socket', {daemon.path!r}, 'network', 'ls', '-f', 'name=w', '--format', '{{{{.name}}}}'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('typer', 'click', 'rich'))\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "TETHER_NO_AUTOSTART": "1"}
    env.pop("TETHER_FULL_CLI", None)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "web\n"


def test_app_and_cli_command_still_come_from_the_package() -> None:
    from tether.cli import app, click_errors, usage_error_text

    assert app.info.name == "tether"
    assert issubclass(click_errors.UsageError, Exception) and callable(usage_error_text)


def test_a_hot_verb_starts_a_daemon_only_when_its_request_finds_none(
    tmp_path: Path, daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tether.api.client import Client

    started: list[str] = []
    path = str(tmp_path / "later.sock")

    def start(self: Client, state_dir: str | None = None, wait: float = 15.0) -> None:
        started.append(str(state_dir))
        os.rename(daemon.path, path)  # "the daemon is up" on the client's socket

    monkeypatch.setattr(Client, "ensure_daemon", start)
    client = Client(path, start_daemon_in="/state")
    assert client.get("/networks") == NETWORKS and started == ["/state"]
    assert [r[1] for r in daemon.requests] == ["/networks"]  # no /ping before it
    Client(path, start_daemon_in="/state").get("/networks")  # a daemon answers: nothing started
    assert started == ["/state"]
    os.rename(path, daemon.path)
    with pytest.raises(Exception, match="no tether daemon answers"):
        client.get("/networks")  # only the first request of a client may start one
