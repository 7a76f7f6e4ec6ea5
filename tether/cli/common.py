"""What every ``tether`` command shares: the Typer apps, the console, the daemon client
(started on demand), and the small helpers for output and errors.

The commands live by noun in the modules beside this one; each is a thin client: it
parses flags into a request, sends it over the unix socket, and renders the reply.
"""

from __future__ import annotations

import re
import sys
from typing import Any, NoReturn

import typer
import typer.main
from rich.console import Console

from ..api.client import default_socket, default_state_dir
from ..errors import TetherError
from .context import CTX, print_json, warn_lagging  # re-exported: the commands' shared state and output

try:  # Typer 0.29 vendors Click as typer._click; older releases import the click package
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors  # type: ignore[no-redef]

__all__ = [
    "app", "network_app", "node_app", "lab_app", "out", "CTX", "RUN_CONTEXT",
    "print_json", "fail", "parse_options", "each", "warn_lagging",
    "cli_command", "usage_error_text", "click_errors",
]


def _typer(help: str, **settings: Any) -> typer.Typer:  # noqa: A002
    """A Typer app as every tether (sub)command group has it: help as plain text (brackets
    in a help string, such as ``[/tcp|udp]``, are text, not Rich markup), ``-h`` as well as
    ``--help``, and no guessed suggestions (a near miss is often the wrong command)."""
    return typer.Typer(
        help=help,
        no_args_is_help=True,
        rich_markup_mode=None,
        suggest_commands=False,
        context_settings={"help_option_names": ["-h", "--help"]},
        **settings,
    )


app = _typer(
    "Container networking for Linux: none, host, container, bridge, overlay and macvlan networks.",
    name="tether",
    add_completion=False,
    pretty_exceptions_enable=False,
)
network_app = _typer("Manage networks.")
app.add_typer(network_app, name="network")
node_app = _typer("The hosts of the cluster (overlay networks).")
app.add_typer(node_app, name="node")
lab_app = _typer("A multi-host lab on this machine: hosts h1..hN in namespaces, etcd, a fabric.")
app.add_typer(lab_app, name="lab")

out = Console(highlight=False, soft_wrap=True)
RUN_CONTEXT = {"allow_interspersed_args": False}



@app.callback()
def _global(
    ctx: typer.Context,
    socket: str = typer.Option(
        None, "--socket", metavar="PATH",
        help="The daemon's socket (default: $TETHER_SOCKET, else /run/tether/tether.sock).",
    ),
    state_dir: str = typer.Option(
        None, "--state-dir", metavar="DIR",
        help="The daemon's state directory (default: $TETHER_STATE_DIR, else /var/lib/tether).",
    ),
    host: str = typer.Option(
        None, "--host", envvar="TETHER_HOST", metavar="NAME",
        help="Run the command on this `tether lab` host (h1, h2 ...).",
    ),
) -> None:
    CTX.socket = socket or default_socket()
    CTX.state_dir = state_dir or default_state_dir()
    if host:  # re-executes in the host's netns, or returns its daemon's socket and state dir
        from ..lab import enter_host

        CTX.socket, CTX.state_dir = enter_host(host, ctx, CTX.socket, CTX.state_dir, bool(socket or state_dir))


def fail(message: str, code: int = 1) -> NoReturn:
    sys.stderr.write(f"Error: {message}\n")
    raise typer.Exit(code)


def parse_options(options: list[str] | None) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for item in options or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"invalid option {item!r}: use -o KEY=VALUE")
        parsed[key] = value
    return parsed


def each(names: list[str], action: Any) -> None:
    """Apply ``action`` to every name, report each failure, and fail at the end (as Docker)."""
    failed = False
    for name in names:
        try:
            action(name)
            out.print(name)
        except TetherError as exc:
            sys.stderr.write(f"Error: {exc}\n")
            failed = True
    if failed:
        raise typer.Exit(1)


# ---------------------------------------------------------------------- the command tree
def cli_command() -> Any:
    """The Click command behind ``app``, with every command's help tidied: no Typer type
    tags (``<str>``, ``<list[str]>``), an upper-case metavar for every option that takes a
    value and has none (argparse's habit: ``--subnet SUBNET``), arguments shown as
    ``NAME`` or ``[CMD...]`` in the usage line. Call after the command modules are imported."""
    command = typer.main.get_command(app)
    _tidy_help(command)
    return command


def _tidy_help(command: Any) -> None:
    for param in command.params:
        if param.param_type_name == "argument":
            if param.metavar is None:
                param.metavar = param.name.upper() + ("..." if param.nargs != 1 else "")
            shown = param.metavar if param.required else f"[{param.metavar}]"
            # Typer's own rendering adds a type tag to the help line and braces to the usage
            param.display_type_rich = lambda ctx: None
            param.get_usage_pieces = lambda ctx, shown=shown: [shown]
        elif param.metavar is None and not param.is_flag and not param.count:
            longest = max(param.opts, key=len)
            param.metavar = longest.lstrip("-").upper().replace("-", "_")
    for sub in getattr(command, "commands", {}).values():
        _tidy_help(sub)


def usage_error_text(exc: Any, root: Any, argv: list[str]) -> str:
    """A usage error as Docker prints one, in two lines: what is wrong, and where the help is:

        Error: unknown flag: --dns
        See 'tether run --help'.

    ``root`` is the command tree and ``argv`` the command line, to find the (sub)command
    when Click's error does not say. A suggestion is made only when the word is the start
    of exactly one flag or command (``--hostn`` for ``--hostname``): Click's guesses by
    similarity send ``--user`` to ``--rm``."""
    if exc.ctx is not None:
        command, where = exc.ctx.command, exc.ctx.command_path
    else:
        command, where = _command_named_in(root, argv)
    if isinstance(exc, click_errors.NoSuchOption):
        message = f"unknown flag: {exc.option_name}"
        candidates = {
            param.name: opt
            for param in command.params
            for opt in param.opts + param.secondary_opts
            if opt.startswith("--") and exc.option_name.startswith("--") and opt.startswith(exc.option_name)
        }
        if len(candidates) == 1:
            message += f" (did you mean {next(iter(candidates.values()))}?)"
    elif (unknown := re.fullmatch(r"No such command '(.+)'\.", exc.format_message())) is not None:
        word = unknown.group(1)
        message = f"unknown command {word!r} for {where!r}"
        commands = [name for name in getattr(command, "commands", {}) if name.startswith(word)]
        if len(commands) == 1:
            message += f" (did you mean {commands[0]!r}?)"
    else:
        message = " ".join(exc.format_message().split())
    return f"Error: {message}\nSee '{where} --help'.\n"


def _command_named_in(root: Any, argv: list[str]) -> tuple[Any, str]:
    """The deepest (sub)command that ``argv`` names, and its path (``tether network create``)."""
    command, path = root, ["tether"]
    for word in argv:
        if word == "--":
            break
        sub = getattr(command, "commands", {}).get(word)
        if sub is not None:
            command, path = sub, [*path, word]
    return command, " ".join(path)
