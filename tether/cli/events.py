"""``tether events``: what happens, one line each, as Docker's ``docker events``.

The daemon keeps the last events and streams new ones (``GET /events``); this command
turns ``--since``/``--until`` into Unix times (``tether/events.py``), asks, and prints each
event as it comes: ``TIME TYPE ACTION NAME (KEY=VALUE, ...)``, a JSON object per line
(``--format json``) or a Go template over the JSON's keys. It never starts a daemon.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import typer

from .common import CTX, app, fail

__all__: list[str] = []

TIME_HELP = "{}: a duration back from now (10m, 30s), a Unix timestamp or an RFC 3339 date."


@app.command()
def events(
    since: str = typer.Option(None, "--since", metavar="T", help=TIME_HELP.format(
        "Replay the kept events since T first")),
    until: str = typer.Option(None, "--until", metavar="T", help=TIME_HELP.format("Stop at T")),
    filter_: list[str] = typer.Option(
        None, "-f", "--filter", metavar="KEY=VALUE",
        help="Only some events: type, event (the action), container, network; repeatable.",
    ),
    fmt: str = typer.Option("", "--format", metavar="FORMAT", help="json, or a Go template such as '{{.type}}'."),
) -> None:
    """Show what happens: containers, endpoints, networks, ports, the firewall, hosts, reconcile."""
    from urllib.parse import urlencode

    from ..errors import DaemonUnavailable
    from ..events import parse_filters, parse_time

    now = time.time()
    query: list[tuple[str, str]] = [("filter", f) for f in filter_ or []]
    parse_filters(filter_)  # refused here, in the same words, before any connection
    begin = parse_time("--since", since, now) if since is not None else None
    end = parse_time("--until", until, now) if until is not None else None
    query += [(k, repr(v)) for k, v in (("since", begin), ("until", end)) if v is not None]
    render = _renderer(fmt)
    stream = CTX.client(autostart=False).events(urlencode(query))
    try:
        for event in stream:
            sys.stdout.write(render(event) + "\n")
            sys.stdout.flush()
    except BrokenPipeError:  # `tether events | head`: the reader is done
        sys.stderr.close()
        raise typer.Exit(0) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if end is None or time.time() < end:
        raise DaemonUnavailable("the daemon ended the event stream (it stopped)")


def _renderer(fmt: str) -> Any:
    if fmt == "json":
        import json

        return lambda event: json.dumps(event, sort_keys=True)
    if fmt in ("", "text"):
        return _text
    from .template import Template, TemplateError

    try:
        template = Template(fmt)
    except TemplateError as exc:
        fail(f"invalid --format: {exc}")

    def render(event: dict[str, Any]) -> str:
        try:
            return template.execute(event)
        except TemplateError as exc:
            fail(f"--format: {exc}")

    return render


def _text(event: dict[str, Any]) -> str:
    """``2026-12-05T10:00:00.123456+01:00 container start web (id=3f2a9c41b7e0, pid=1234)``."""
    from datetime import datetime

    when = datetime.fromtimestamp(event["time"]).astimezone().isoformat(timespec="microseconds")
    actor = event.get("actor") or {}
    name = actor.get("name") or actor.get("id") or "-"
    pairs = [("id", actor["id"][:12])] if actor.get("id") and actor.get("name") else []
    pairs += sorted((str(k), str(v)) for k, v in (event.get("attributes") or {}).items())
    shown = f" ({', '.join(f'{k}={v}' for k, v in pairs)})" if pairs else ""
    return f"{when} {event['type']} {event['action']} {name}{shown}"
