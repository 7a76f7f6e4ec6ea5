"""The CLI's help and usage errors, in-process (``tether.cli.main`` with an argument list):
no daemon is asked for anything here. tests/e2e/test_cli_help.py runs the same as real,
piped processes at several widths."""

from __future__ import annotations

from typing import Any

import pytest

from tether.cli import cli_command, main


def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str, str]:
    monkeypatch.setenv("TETHER_NO_AUTOSTART", "1")
    monkeypatch.setenv("TETHER_SOCKET", "/nonexistent/tether.sock")
    monkeypatch.delenv("TETHER_HOST", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    captured = capsys.readouterr()
    code = exit_.value.code
    return (code if isinstance(code, int) else 1), captured.out, captured.err


def walk(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        found += walk(sub, (*path, name))
    return found


@pytest.mark.parametrize("columns", [40, 80, 200])
def test_every_help_renders_without_type_tags(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, columns: int
) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    for path, _ in walk(cli_command()):
        code, out, err = run(capsys, monkeypatch, *path, "--help")
        assert code == 0 and err == "", (path, err)
        assert out.startswith("Usage: tether"), (path, out)
        for tag in ("<str>", "<int>", "<float>", "<bool>", "<list"):
            assert tag not in out, (path, out)


def test_every_option_that_takes_a_value_shows_a_metavar() -> None:
    for path, command in walk(cli_command()):
        for param in command.params:
            if param.param_type_name == "option" and not param.is_flag:
                assert param.metavar, (path, param.opts)


def test_h_is_help_unless_a_command_takes_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for path, command in walk(cli_command()):
        own = {opt for param in command.params for opt in param.opts}
        if "-h" in own:
            continue  # e.g. Docker's `run -h HOSTNAME`: then only --help
        code, out, _ = run(capsys, monkeypatch, *path, "-h")
        assert code == 0 and out.startswith("Usage: tether"), path


@pytest.mark.parametrize(
    "args,expected",
    [
        (("run", "--rn"), ["Error: unknown flag: --rn", "See 'tether run --help'."]),
        (("run", "--hostn", "x"), ["Error: unknown flag: --hostn (did you mean --hostname?)",
                                   "See 'tether run --help'."]),
        (("run", "--network-"), ["Error: unknown flag: --network- (did you mean --network-alias?)",
                                 "See 'tether run --help'."]),
        (("netw",), ["Error: unknown command 'netw' for 'tether' (did you mean 'network'?)", "See 'tether --help'."]),
        (("network", "lss"), ["Error: unknown command 'lss' for 'tether network'", "See 'tether network --help'."]),
        (("--socket",), ["Error: Option '--socket' requires an argument.", "See 'tether --help'."]),
        (("network", "create", "-o"), ["Error: Option '-o' requires an argument.",
                                       "See 'tether network create --help'."]),
        (("stop",), ["Error: Missing argument 'NAMES...'.", "See 'tether stop --help'."]),
    ],
)
def test_usage_errors_are_two_lines(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], expected: list[str]
) -> None:
    code, out, err = run(capsys, monkeypatch, *args)
    assert (code, out, err.splitlines()) == (2, "", expected)


def test_no_arguments_prints_the_help_and_succeeds(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run(capsys, monkeypatch)
    assert code == 0 and err == "" and out.startswith("Usage: tether [OPTIONS] COMMAND")
    code, out, err = run(capsys, monkeypatch, "node")
    assert code == 0 and out.startswith("Usage: tether node")
