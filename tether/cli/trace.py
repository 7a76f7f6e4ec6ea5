"""``tether trace SRC DST[:PORT[/tcp|udp]]``: why can (or can't) SRC reach DST.

The daemon walks the path (``POST /trace``, ``tether/trace/``); this prints one line per
hop with a mark (✓ holds, ✗ broken, • worth knowing) and where the answer came from
(kernel, model, probe, cluster), then the verdict: reachable, or the first broken hop, why,
and the command that fixes it. Exit 0 reachable, 1 not, 2 bad input (an unknown
container, a bad port).
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from ..errors import InvalidInput, NotFound
from .common import CTX, app, fail, print_json

__all__: list[str] = []

_MARKS = {"ok": "✓", "fail": "✗", "info": "•"}


@app.command("trace")
def trace(
    source: str = typer.Argument(..., metavar="SRC", help="The container the packet leaves from."),
    destination: str = typer.Argument(
        ..., metavar="DST[:PORT[/tcp|udp]]", help="A container, NAME.NETWORK, an IP or host; with a port to check it."
    ),
    format: str = typer.Option("text", "--format", help="text or json."),  # noqa: A002
) -> None:
    """Why can (or can't) SRC reach DST: each hop checked, then the verdict and the fix."""
    if format not in ("text", "json"):
        fail(f"invalid --format {format!r}: use text or json", 2)
    from ..trace.model import parse_target  # the destination's syntax, checked before the daemon is asked

    try:
        parse_target(destination)
    except InvalidInput as exc:
        fail(str(exc), 2)
    try:
        reply = CTX.client().post("/trace", {"source": source, "destination": destination})
    except (NotFound, InvalidInput) as exc:
        fail(str(exc), 2)
    if format == "json":
        print_json(reply)
    else:
        sys.stdout.write(render(reply))
    raise typer.Exit(0 if reply.get("reachable") else 1)


def render(reply: dict[str, Any]) -> str:
    """The text form: a line per hop, then the verdict."""
    steps = reply.get("steps") or []
    width = max((len(s["hop"]) for s in steps), default=0)
    lines = [f"trace {reply['source']} -> {reply['destination']}"]
    for s in steps:
        lines.append(f" {_MARKS.get(s['status'], '?')} {s['hop']:<{width}}  {s['detail']}  [{s['how']}]")
    verdict = reply.get("verdict") or {}
    if reply.get("reachable"):
        lines.append(f"reachable: {reply['source']} -> {reply['destination']}")
    else:
        lines.append(f"unreachable at {verdict.get('hop')}: {verdict.get('why')}")
        if verdict.get("fix"):
            lines.append(f"fix: {verdict['fix']}")
    return "\n".join(lines) + "\n"
