"""What shows state: ``ps``, ``inspect``, ``network ls``, ``network inspect``, ``node ls``.

Output is Docker's: a table is plain text in columns (``align_tabs``), as wide as its
cells, never cut to the terminal's width, so piped output keeps every ID, address, subnet
and port. On a terminal only what Docker shortens is shortened (an ID to 12 characters,
the command to 20), and ``--no-trunc`` shows them whole. ``--format`` takes ``table``,
``json``, ``table TEMPLATE`` (a table with titles) or a Go template run on each record
that ``--format json`` shows (``template.py``); ``--filter`` is Docker's (``filters.py``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import typer

from ..api.client import q
from ..errors import InvalidInput
from .common import CTX, app, network_app, node_app, print_json
from .filters import CONTAINER_FILTERS, NETWORK_FILTERS, container_matches, network_matches, parse_filters
from .template import Template, TemplateError, align_tabs

__all__: list[str] = []

FORMAT_HELP = "table, json, 'table TEMPLATE' or a Go template such as '{{.name}}' (keys as in json)."
FILTER_HELP = "Filter KEY=VALUE ({}); repeatable."
# Docker's names for fields (`{{.Names}}`), on top of any spelling of a key (`.NetnsPath`)
CONTAINER_ALIASES = {"Names": "name", "Command": "cmd", "Status": "state", "CreatedAt": "created"}
NETWORK_ALIASES = {"CreatedAt": "created"}
CONTAINER_TITLES = {"id": "CONTAINER ID", "names": "NAMES", "status": "STATUS", "cmd": "COMMAND", "net_mode": "NET"}
NETWORK_TITLES = {"id": "NETWORK ID"}

Rows = Callable[[list[dict[str, Any]]], list[list[str]]]


class _Output:
    """One ``--format`` value, checked before the daemon is asked anything."""

    def __init__(
        self,
        fmt: str,
        default: Rows | None,
        aliases: dict[str, str] | None = None,
        titles: dict[str, str] | None = None,
    ) -> None:
        self.kind, self.default, self.template = fmt.strip() or "table", default, None
        if self.kind == "table" and default is None:
            raise InvalidInput("this command has no default table: use --format json or a template")
        self.shift = 0  # where the template starts in what was typed, for error positions
        if self.kind not in ("json", "table"):
            source, is_table = fmt, self.kind.startswith("table")
            if is_table:  # as Docker: "table", then the template, spaces trimmed
                source = fmt.lstrip(" ")[5:].lstrip(" ")
                self.shift, source = len(fmt) - len(source), source.rstrip(" ")
            if "{{" not in source:
                raise InvalidInput(
                    f"unknown --format {fmt!r}: use table, json, 'table TEMPLATE' or a template such as '{{{{.name}}}}'"
                )
            try:
                self.template = Template(source, aliases, titles)
            except TemplateError as exc:
                raise self.error(exc) from None
            self.kind = "table template" if is_table else "template"

    def error(self, exc: TemplateError) -> InvalidInput:
        return InvalidInput(f"bad --format template at {exc.where(self.shift)}: {exc.message}")

    def emit(self, records: list[dict[str, Any]]) -> None:
        if self.kind == "json":
            print_json(records)
        elif self.kind == "table":
            assert self.default is not None
            sys.stdout.write(align_tabs(["\t".join(row) for row in self.default(records)]))
        else:
            assert self.template is not None
            try:
                text = "".join(self.template.execute(r) + "\n" for r in records)
            except TemplateError as exc:
                raise self.error(exc) from None
            if self.kind == "template":
                sys.stdout.write(text)
            else:
                sys.stdout.write(align_tabs([self._header(), *text.split("\n")[:-1]]))

    def _header(self) -> str:
        assert self.template is not None
        try:
            return self.template.render_header()
        except TemplateError:  # a template that only works on records: no titles
            return ""


def _short(text: str, width: int, no_trunc: bool, mark: str = "…") -> str:
    """Docker's shortening, on a terminal only: ``width`` characters, ending in ``mark``."""
    if no_trunc or not sys.stdout.isatty() or len(text) <= width:
        return text
    return text[: width - len(mark)] + mark


def _container_rows(no_trunc: bool) -> Rows:
    def rows(containers: list[dict[str, Any]]) -> list[list[str]]:
        table = [["CONTAINER ID", "NAME", "STATUS", "NET", "ADDRESSES", "PORTS", "COMMAND"]]
        for c in containers:
            status = c["state"] if c["state"] != "exited" else f"exited ({c['exit_code']})"
            addrs = ", ".join(
                f"{n}={v['address']}" + (f",{v['address6']}" if v.get("address6") else "")
                for n, v in sorted(c["networks"].items())
            )
            ports = ", ".join(
                f"{_host_address(p['host_ip'])}:{p['host_port']}->{p['container_port']}/{p['protocol']}"
                for p in c.get("ports", [])
            )
            command = json.dumps(_short(" ".join(c["cmd"]), 20, no_trunc), ensure_ascii=False)
            cid = _short(c["id"], 12, no_trunc, "")
            table.append([cid, c["name"], status, c["net_mode"], addrs or "-", ports or "-", command])
        return table

    return rows


def _host_address(host_ip: str | None) -> str:
    """A published port's host address as Docker prints it: ``0.0.0.0``, or ``[::1]``."""
    if not host_ip:
        return "0.0.0.0"
    return f"[{host_ip}]" if ":" in host_ip else host_ip


def _network_rows(no_trunc: bool) -> Rows:
    def rows(nets: list[dict[str, Any]]) -> list[list[str]]:
        table = [["NETWORK ID", "NAME", "DRIVER", "SCOPE", "SUBNET", "BRIDGE", "CONTAINERS"]]
        for n in nets:
            table.append(
                [_short(n["id"], 12, no_trunc, ""), n["name"], n["driver"], n.get("scope", "local"),
                 n["subnet"] + (f",{n['subnet6']}" if n.get("subnet6") else ""),
                 n["bridge"], str(n["containers"])]
            )
        return table

    return rows


def _node_rows(nodes: list[dict[str, Any]]) -> list[list[str]]:
    table = [["NAME", "ADDRESS", "STATUS", "APPLIED REVISION"]]
    for n in nodes:
        name = n["name"] + (" (this host)" if n["self"] else "")
        table.append([name, n["address"] or "-", "up" if n["up"] else "down", str(n["applied_revision"])])
    return table


def _ids(records: list[dict[str, Any]], no_trunc: bool) -> None:
    """``-q``: IDs only, 12 characters as Docker prints them, or whole with ``--no-trunc``."""
    sys.stdout.write("".join((r["id"] if no_trunc else r["id"][:12]) + "\n" for r in records))


@app.command()
def ps(
    all_: bool = typer.Option(False, "-a", "--all", help="Show exited containers too."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Only the IDs."),
    no_trunc: bool = typer.Option(False, "--no-trunc", help="Do not shorten IDs and commands."),
    filter_: list[str] = typer.Option(
        None, "-f", "--filter", help=FILTER_HELP.format(", ".join(CONTAINER_FILTERS))
    ),
    fmt: str = typer.Option("table", "--format", help=FORMAT_HELP),
) -> None:
    """List containers."""
    filters = parse_filters(filter_, "ps", CONTAINER_FILTERS)
    output = _Output(fmt, _container_rows(no_trunc), CONTAINER_ALIASES, CONTAINER_TITLES)
    everything = all_ or "status" in filters  # as Docker: `--filter status=exited` needs no -a
    containers = CTX.client().get("/containers" + ("?all=1" if everything else ""))
    containers = [c for c in containers if container_matches(c, filters)]
    if quiet:
        _ids(containers, no_trunc)
    else:
        output.emit(containers)


@app.command()
def inspect(
    names: list[str],
    fmt: str = typer.Option("json", "-f", "--format", help="json or a Go template such as '{{.name}}'."),
) -> None:
    """Show containers as JSON (networks, addresses, MACs, netns path, pid)."""
    output = _Output(fmt, None, CONTAINER_ALIASES, CONTAINER_TITLES)
    client = CTX.client()
    output.emit([client.get(f"/containers/{q(n)}") for n in names])


@network_app.command("ls")
def network_ls(
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Only the IDs."),
    no_trunc: bool = typer.Option(False, "--no-trunc", help="Do not shorten IDs."),
    filter_: list[str] = typer.Option(None, "-f", "--filter", help=FILTER_HELP.format(", ".join(NETWORK_FILTERS))),
    fmt: str = typer.Option("table", "--format", help=FORMAT_HELP),
) -> None:
    """List networks."""
    filters = parse_filters(filter_, "network ls", NETWORK_FILTERS)
    output = _Output(fmt, _network_rows(no_trunc), NETWORK_ALIASES, NETWORK_TITLES)
    nets = [n for n in CTX.client().get("/networks") if network_matches(n, filters)]
    if quiet:
        _ids(nets, no_trunc)
    else:
        output.emit(nets)


@network_app.command("inspect")
def network_inspect(
    names: list[str],
    fmt: str = typer.Option("json", "-f", "--format", help="json or a Go template such as '{{.subnet}}'."),
) -> None:
    """Show networks as JSON."""
    output = _Output(fmt, None, NETWORK_ALIASES, NETWORK_TITLES)
    client = CTX.client()
    output.emit([client.get(f"/networks/{q(n)}") for n in names])


@node_app.command("ls")
def node_ls(fmt: str = typer.Option("table", "--format", help=FORMAT_HELP)) -> None:
    """List the hosts of the cluster and whether each is up."""
    output = _Output(fmt, _node_rows)
    output.emit(CTX.client().get("/nodes"))
