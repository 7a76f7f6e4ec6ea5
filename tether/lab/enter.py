"""``tether --host NAME``: running this CLI inside a lab host, against that host's daemon.

Design note. A foreground ``run`` (``--net host`` above all) must run in the host's
network namespace, so outside it the CLI re-executes itself there (``nsenter --net``)
with the host's socket and state dir in its environment, rather than only pointing at
the host's socket. Only the global options before the subcommand are rewritten, and
which of them take a value is read from the command itself, so options added later pass
through unchanged. The daemon is never auto-started: the lab runs it.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

from ..datapath import nsutil
from ..errors import InvalidInput, NotFound
from .plan import find_host
from .underlay import netns_key

__all__ = ["enter_host"]

# replaced by the environment of the re-executed CLI
_DROPPED_GLOBALS = ("--host", "--socket", "--state-dir")


def _in_netns(path: str) -> bool:
    here, there = netns_key("/proc/self/ns/net"), netns_key(path)
    return here is not None and here == there


def enter_host(name: str, ctx: Any, socket_path: str, state_dir: str, explicit: bool = False) -> tuple[str, str]:
    """``tether --host NAME ...``: make this CLI talk to lab host NAME's daemon.

    ``ctx`` is the Typer/Click context of the top-level callback; ``socket_path`` and
    ``state_dir`` are what the CLI would use otherwise (``explicit``: given as flags),
    returned unchanged when ``TETHER_HOST`` from the environment does not apply: to
    ``tether lab`` and ``tether daemon``, or against an explicit flag. Outside the host's
    netns this never returns: it re-executes the same command line minus ``--host`` as
    ``nsenter --net=<host netns> python -m tether.cli ...`` with the host's socket and
    state dir in the environment. Inside it, returns (socket, state dir).
    """
    subcommand = ctx.invoked_subcommand
    source = ctx.get_parameter_source("host")
    from_env = source is not None and source.name == "ENVIRONMENT"
    if subcommand in ("lab", "daemon") or explicit:
        if from_env:
            return socket_path, state_dir
        if explicit:
            raise InvalidInput("--host picks the socket and state dir: leave out --socket and --state-dir")
        raise InvalidInput(f"--host does not apply to `tether {subcommand}`")
    host = find_host(name)
    os.environ["TETHER_NO_AUTOSTART"] = "1"
    if _in_netns(host.netns_path):
        return host.socket, host.state_dir
    if not nsutil.is_bound_netns(host.netns_path):
        raise NotFound(f"lab host {host.name} has no network namespace any more: run `tether lab down`, then `lab up`")
    argv = host.tether_argv(*_args_without_host(ctx, sys.argv[1:]))
    sys.stdout.flush()
    sys.stderr.flush()
    nsenter = shutil.which("nsenter") or "/usr/bin/nsenter"
    os.execve(nsenter, argv, host.cli_env())
    raise AssertionError("unreachable")  # pragma: no cover


def _args_without_host(ctx: Any, argv: list[str]) -> list[str]:
    """``argv`` (this command line) without ``--host NAME``, ``--socket`` and ``--state-dir``.

    Only the global options before the subcommand are looked at (a ``--host`` after it
    belongs to the subcommand); which of them take a value is read from the command's
    own parameters, so global options added later pass through unchanged."""
    valued: set[str] = set()
    for param in ctx.command.params:
        if getattr(param, "param_type_name", "") == "option" and not (
            getattr(param, "is_flag", False) or getattr(param, "count", False)
        ):
            valued.update(param.opts)
    kept: list[str] = []
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        option, has_inline_value, _ = argv[i].partition("=")
        takes_next = option in valued and not has_inline_value
        if option not in _DROPPED_GLOBALS:
            kept.extend(argv[i : i + 1 + takes_next])
        i += 1 + takes_next
    rest = argv[i:]
    if not rest or rest[0] != ctx.invoked_subcommand:
        raise InvalidInput("--host re-runs the command line, but this one is not sys.argv (called in-process?)")
    return [*kept, *rest]
