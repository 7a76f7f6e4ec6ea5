"""The fast path of the ``tether`` command: the hot verbs without Typer, Click or Rich.

``ps``, ``inspect``, ``network ls``, ``network inspect``, ``network connect`` and
``network disconnect`` are what scripts and users run most, and importing Typer costs
more than the interpreter's own start-up. ``run_fast`` takes a command line only when it
understands every word of it: the global ``--socket``/``--state-dir``, one of these verbs,
exactly the options its Typer command takes (long ones also as ``--opt=VALUE``), and the
number of arguments the command wants. Anything else, such as ``-h``/``--help``,
``--host``, combined short flags (``-aq``), ``--``, an unknown or missing word or a value
that starts with ``-``, is left to the full Typer CLI, unchanged: ``run_fast`` returns
None and writes nothing. Both paths call the same bodies (``verbs.py``), so they print
the same bytes and exit with the same codes; tests/unit/test_cli_fast.py holds them to it
and checks that the options here are exactly the Typer commands' options.
"""

from __future__ import annotations

import os
import sys

from ..api.client import default_socket, default_state_dir
from ..errors import TetherError
from . import verbs
from .context import CTX

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Options = dict[str, tuple[str, str]]

__all__ = ["VERBS", "run_fast"]

FLAG, VALUE, LIST = "flag", "value", "list"  # an option's kind: a switch, one value (the last wins), repeatable

GLOBAL: Options = {"--socket": ("socket", VALUE), "--state-dir": ("state_dir", VALUE)}
_LIST_OPTIONS: Options = {
    "-q": ("quiet", FLAG), "--quiet": ("quiet", FLAG), "--no-trunc": ("no_trunc", FLAG),
    "-f": ("filter_", LIST), "--filter": ("filter_", LIST), "--format": ("fmt", VALUE),
}
_INSPECT_OPTIONS: Options = {"-f": ("fmt", VALUE), "--format": ("fmt", VALUE)}

# the command's words -> (its options, fewest and most arguments (None: any), its body)
VERBS: dict[tuple[str, ...], tuple[Options, int, int | None, Callable[[dict[str, Any], list[str]], None]]] = {
    ("ps",): (
        {"-a": ("all_", FLAG), "--all": ("all_", FLAG), **_LIST_OPTIONS}, 0, 0,
        lambda o, a: verbs.list_containers(
            o.get("all_", False), o.get("quiet", False), o.get("no_trunc", False), o.get("filter_"), o.get("fmt", "table")
        ),
    ),
    ("inspect",): (_INSPECT_OPTIONS, 1, None, lambda o, a: verbs.inspect_containers(a, o.get("fmt", "json"))),
    ("network", "ls"): (
        _LIST_OPTIONS, 0, 0,
        lambda o, a: verbs.list_networks(o.get("quiet", False), o.get("no_trunc", False), o.get("filter_"),
                                         o.get("fmt", "table")),
    ),
    ("network", "inspect"): (_INSPECT_OPTIONS, 1, None, lambda o, a: verbs.inspect_networks(a, o.get("fmt", "json"))),
    ("network", "connect"): (
        {"--ip": ("ip", VALUE), "--ip6": ("ip6", VALUE), "--alias": ("alias", LIST)}, 2, 2,
        lambda o, a: verbs.connect(a[0], a[1], o.get("ip"), o.get("ip6"), o.get("alias")),
    ),
    ("network", "disconnect"): ({}, 2, 2, lambda o, a: verbs.disconnect(a[0], a[1])),
}


def run_fast(argv: list[str]) -> int | None:
    """Run ``argv`` if it is a hot verb this path fully understands and return its exit
    status (0, or 1 with the error on stderr as the full CLI words it); None otherwise."""
    if os.environ.get("TETHER_HOST") or os.environ.get("_TETHER_COMPLETE"):
        return None  # a lab host to re-execute in, or shell completion: the full CLI's
    parsed = parse(argv)
    if parsed is None:
        return None
    settings, words, options, arguments = parsed
    CTX.socket = settings.get("socket") or default_socket()
    CTX.state_dir = settings.get("state_dir") or default_state_dir()
    try:
        VERBS[words][3](options, arguments)
    except TetherError as exc:
        sys.stderr.write(f"Error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def parse(argv: list[str]) -> tuple[dict[str, Any], tuple[str, ...], dict[str, Any], list[str]] | None:
    """(global settings, the verb's words, its options, its arguments), or None."""
    settings: dict[str, Any] = {}
    i = _options(argv, 0, GLOBAL, settings, [], stop_at_word=True)
    if i is None:
        return None
    words = tuple(argv[i:i + 2]) if argv[i:i + 1] == ["network"] else tuple(argv[i:i + 1])
    if words not in VERBS:
        return None
    spec, fewest, most, _ = VERBS[words]
    options: dict[str, Any] = {}
    arguments: list[str] = []
    if _options(argv, i + len(words), spec, options, arguments, stop_at_word=False) is None:
        return None
    if len(arguments) < fewest or (most is not None and len(arguments) > most):
        return None
    return settings, words, options, arguments


def _options(argv: list[str], i: int, spec: Options, into: dict[str, Any], arguments: list[str],
             stop_at_word: bool) -> int | None:
    """Read options of ``spec`` from ``argv[i:]`` into ``into`` (words into ``arguments``,
    or stop at the first word); the index where reading stopped, or None for anything
    not understood."""
    while i < len(argv):
        word = argv[i]
        if not word.startswith("-") or word == "-":
            if stop_at_word:
                return i
            if word == "-":
                return None  # Click takes it as a word; not worth the doubt here
            arguments.append(word)
            i += 1
            continue
        name, eq, value = word.partition("=") if word.startswith("--") else (word, "", "")
        if name not in spec:
            return None
        dest, kind = spec[name]
        if kind == FLAG:
            if eq:
                return None
            into[dest] = True
            i += 1
            continue
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
                return None  # a missing value (a usage error) or one Click might read otherwise
            value, i = argv[i + 1], i + 1
        if kind == LIST:
            into.setdefault(dest, []).append(value)
        else:
            into[dest] = value
        i += 1
    return None if stop_at_word else i
