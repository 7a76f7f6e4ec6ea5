"""The first commands a person types: every ``--help`` and ``-h``, a mistyped command line,
``tether version`` and ``tether info``.

Help and usage errors need no daemon and no namespace; they run the real CLI as a
subprocess, piped (not a terminal), as a script or a pager would. ``version`` and
``info`` run against the test's own daemon (the ``host`` fixture).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import Host

WIDTHS = (40, 80, 200)
TYPE_TAGS = ("<str>", "<int>", "<float>", "<bool>", "<list", "<path>")


def tether(*args: str, columns: int = 80, socket: str = "/nonexistent/tether.sock") -> subprocess.CompletedProcess[str]:
    """The CLI, piped, talking to no daemon and never starting one."""
    env = {
        **os.environ, "COLUMNS": str(columns), "TETHER_NO_AUTOSTART": "1", "TETHER_SOCKET": socket,
        "TETHER_HOST": "",
    }
    env.pop("LINES", None)
    return subprocess.run(
        [sys.executable, "-m", "tether.cli", *args], capture_output=True, text=True, timeout=60, env=env,
        stdin=subprocess.DEVNULL,
    )


def _walk(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _walk(sub, (*path, name))


def _command_tree() -> list[tuple[tuple[str, ...], Any]]:
    from tether.cli import cli_command

    return list(_walk(cli_command()))


TREE = _command_tree()


def _help_cases() -> list[tuple[tuple[str, ...], str, int]]:
    cases = []
    for path, command in TREE:
        own = {opt for param in command.params for opt in param.opts + param.secondary_opts}
        # a command may take -h for itself (Docker's `run -h` is --hostname): then only --help
        flags = ["--help"] + (["-h"] if "-h" not in own else [])
        cases += [(path, flag, width) for flag in flags for width in WIDTHS]
    return cases


def test_the_tree_is_all_there() -> None:
    names = {" ".join(path) for path, _ in TREE}
    for expected in ("run", "ps", "network create", "network ls", "node ls", "lab up", "version", "info", "demo"):
        assert expected in names, sorted(names)


# One process per width imports the CLI once, then forks a child per command line: each
# child runs `tether.cli.main` exactly as `python -m tether.cli` would, with its stdout and
# stderr on files (piped, not a terminal), and exits with main's status. 150 separate
# interpreters would take a minute; this takes seconds and keeps each run apart.
_FORKING_RUNNER = r"""
import json, os, sys, tempfile, traceback
from tether.cli import main
results = []
for args in json.load(sys.stdin):
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.argv = ["tether", *args]
        code = 70
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    status = os.waitpid(pid, 0)[1]
    out.seek(0)
    err.seek(0)
    results.append([os.waitstatus_to_exitcode(status), out.read().decode(), err.read().decode()])
json.dump(results, sys.__stdout__)
"""


def run_many(lines: list[list[str]], columns: int) -> list[tuple[int, str, str]]:
    env = {**os.environ, "COLUMNS": str(columns), "TETHER_NO_AUTOSTART": "1",
           "TETHER_SOCKET": "/nonexistent/tether.sock", "TETHER_HOST": ""}
    r = subprocess.run([sys.executable, "-c", _FORKING_RUNNER], input=json.dumps(lines), capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    return [tuple(x) for x in json.loads(r.stdout)]  # type: ignore[misc]


def test_every_help_works_at_every_width() -> None:
    """Every command and subcommand (hidden ones too), with --help and -h, at 40, 80 and 200
    columns: exit 0, the usage on stdout, nothing on stderr, no type tags like <str>."""
    failures = []
    for width in WIDTHS:
        cases = [(path, flag) for path, flag, w in _help_cases() if w == width]
        results = run_many([[*path, flag] for path, flag in cases], width)
        for (path, flag), (code, stdout, stderr) in zip(cases, results):
            label = f"tether {' '.join(path)} {flag} at {width} columns"
            if code != 0 or "Traceback" in stdout + stderr:
                failures.append(f"{label}: exit {code}: {stderr[-600:]}")
            elif stderr:
                failures.append(f"{label}: stderr {stderr!r}")
            elif not stdout.startswith(f"Usage: tether {' '.join(path)}".rstrip()):
                failures.append(f"{label}: {stdout[:200]!r}")
            elif tags := [t for t in TYPE_TAGS if t in stdout]:
                failures.append(f"{label}: type tags {tags}")
    assert not failures, "\n".join(failures)


def test_help_in_a_separate_process_at_40_columns() -> None:
    """The forking runner above is faithful; one plain run of the worst case to be sure."""
    r = tether("run", "--help", columns=40)
    assert r.returncode == 0 and r.stderr == "" and r.stdout.startswith("Usage: tether run")


def test_help_option_h_is_offered() -> None:
    r = tether("--help")
    assert "-h, --help" in r.stdout


def test_help_text_is_not_eaten_as_markup() -> None:
    """Brackets in help are text: `[/tcp|udp]` crashed Rich, `[env TETHER_SOCKET]` vanished."""
    top = tether("--help", columns=200).stdout
    assert "TETHER_SOCKET" in top and "TETHER_STATE_DIR" in top
    assert not re.search(r"\w \.(\s|$)", top), top  # "Daemon socket ." was a bracket eaten
    run = tether("run", "--help", columns=200).stdout
    assert "[/tcp|udp]" in run
    assert "[default: bridge]" in run  # defaults are shown where there is one


def test_no_arguments_shows_help() -> None:
    for args in ((), ("network",), ("lab",)):
        r = tether(*args)
        assert r.returncode == 0 and r.stdout.startswith("Usage: tether"), (args, r.stdout, r.stderr)


# ---------------------------------------------------------------------- usage errors
USAGE_ERRORS = [
    # (command line, what the first line says, what it must not say)
    (("run", "--no-such-flag", "x"), "Error: unknown flag: --no-such-flag", None),
    (("run", "--rn", "--", "true"), "Error: unknown flag: --rn", "--rm"),  # Click guessed --rm
    (("--bogus", "ps"), "Error: unknown flag: --bogus", None),
    (("network", "create", "--name", "x"), "Error: unknown flag: --name", None),
    (("netwrk", "ls"), "Error: unknown command 'netwrk' for 'tether'", "did you mean"),
    (("network", "crate", "x"), "Error: unknown command 'crate' for 'tether network'", "create"),
    (("rm",), "Error: Missing argument", None),
    (("network", "create"), "Error: Missing argument 'NAME'", None),
    (("run", "--name"), "Error: Option '--name' requires an argument", None),
    (("daemon", "--node-grace", "soon"), "Error: Invalid value for '--node-grace'", None),
]
SEE = {
    ("run",): "See 'tether run --help'.",
    ("--bogus",): "See 'tether --help'.",
    ("network", "create"): "See 'tether network create --help'.",
    ("netwrk",): "See 'tether --help'.",
    ("network", "crate"): "See 'tether network --help'.",
    ("rm",): "See 'tether rm --help'.",
    ("daemon",): "See 'tether daemon --help'.",
}


@pytest.mark.parametrize("args,first,absent", USAGE_ERRORS, ids=[" ".join(c[0]) for c in USAGE_ERRORS])
def test_usage_error_is_two_lines(args: tuple[str, ...], first: str, absent: str | None) -> None:
    r = tether(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 2, r.stderr
    assert lines[0].startswith(first), lines[0]
    see = next(v for k, v in SEE.items() if args[: len(k)] == k)
    assert lines[1] == see
    if absent:
        assert absent not in lines[0], lines[0]
    assert "Possible options" not in r.stderr and "╭" not in r.stderr


def test_an_unambiguous_prefix_is_suggested() -> None:
    """Click takes no abbreviations; the one flag or command a prefix names is offered."""
    r = tether("run", "--hostn", "x")
    assert r.stderr.splitlines()[0] == "Error: unknown flag: --hostn (did you mean --hostname?)"
    r = tether("netw", "ls")
    assert r.stderr.splitlines()[0] == "Error: unknown command 'netw' for 'tether' (did you mean 'network'?)"
    r = tether("run", "--n", "x")  # --name, --net, --network-alias...: no guess
    assert r.stderr.splitlines()[0] == "Error: unknown flag: --n"


# ---------------------------------------------------------------------- version and info
def test_version_without_a_daemon_starts_none(tmp_path: Any) -> None:
    sock = str(tmp_path / "tether.sock")
    r = tether("version", socket=sock)
    assert r.returncode == 0, r.stderr
    from tether import __version__

    assert r.stdout.splitlines()[0].startswith(f"Client: tether {__version__}")
    assert r.stdout.splitlines()[1] == f"Daemon: none answers on {sock}"
    assert not os.path.exists(sock)


def test_info_without_a_daemon_is_one_line(tmp_path: Any) -> None:
    sock = str(tmp_path / "tether.sock")
    r = tether("info", socket=sock)
    assert r.returncode == 1
    assert len(r.stderr.splitlines()) == 1 and sock in r.stderr
    assert not os.path.exists(sock)


def test_version_and_info_from_a_daemon(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.213.0.0/24", "infonet")
    host.tether("run", "-d", "--name", "up", "--net", "infonet", "--", "sleep", "600")
    host.tether("run", "--name", "done", "--net", "none", "--", "true", check=False)
    pid = host.daemon.pid if host.daemon else None

    version = host.tether("version").stdout.splitlines()
    assert version[1].startswith("Daemon: ") and host.socket in version[1], version

    facts = json.loads(host.tether("info", "--format", "json").stdout)
    assert facts["state_dir"] == host.state_dir
    assert facts["socket"] == host.socket
    assert facts["store"] == os.path.join(host.state_dir, "tether.db")
    assert facts["netns_prefix"] == host.prefix
    assert facts["cluster"] is None
    assert facts["networks"]["total"] >= 1 and facts["networks"]["by_driver"]["bridge"] >= 1
    assert facts["containers"] == {"total": 2, "by_state": {"running": 1, "exited": 1}}
    # the daemon is started through nsenter, which execs it: the same pid
    assert facts["pid"] == pid

    text = host.tether("info").stdout
    assert f"State dir:    {host.state_dir}" in text
    assert "Containers:   2 (1 running, 1 exited)" in text
    assert "Cluster:      none" in text
