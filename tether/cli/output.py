"""How the listing commands print records, without Typer, Rich or (unless asked for) the
template engine.

Output is Docker's: a table is plain text in columns (``align_tabs``), as wide as its
cells, never cut to the terminal's width, so piped output keeps every ID, address, subnet
and port. On a terminal only what Docker shortens is shortened (an ID to 12 characters,
the command to 20), and ``--no-trunc`` shows them whole. ``--format`` takes ``table``,
``json``, ``table TEMPLATE`` (a table with titles) or a Go template run on each record
that ``--format json`` shows (``template.py``, imported only for a template).
"""

from __future__ import annotations

import sys

from ..errors import InvalidInput
from .context import print_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .template import Template, TemplateError

    Rows = Callable[[list[dict[str, Any]]], list[list[str]]]

__all__ = [
    "CONTAINER_ALIASES", "CONTAINER_TITLES", "NETWORK_ALIASES", "NETWORK_TITLES",
    "Output", "align_tabs", "container_rows", "network_rows", "node_rows", "print_ids",
]

# Docker's names for fields (`{{.Names}}`), on top of any spelling of a key (`.NetnsPath`)
CONTAINER_ALIASES = {"Names": "name", "Command": "cmd", "Status": "state", "CreatedAt": "created"}
NETWORK_ALIASES = {"CreatedAt": "created"}
CONTAINER_TITLES = {"id": "CONTAINER ID", "names": "NAMES", "status": "STATUS", "cmd": "COMMAND", "net_mode": "NET"}
NETWORK_TITLES = {"id": "NETWORK ID"}


class Output:
    """One ``--format`` value, checked before the daemon is asked anything."""

    def __init__(
        self,
        fmt: str,
        default: Rows | None,
        aliases: dict[str, str] | None = None,
        titles: dict[str, str] | None = None,
    ) -> None:
        self.kind, self.default = fmt.strip() or "table", default
        self.template: Template | None = None
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
            from . import template

            try:
                self.template = template.Template(source, aliases, titles)
            except template.TemplateError as exc:
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
            from .template import TemplateError

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
        from .template import TemplateError

        assert self.template is not None
        try:
            return self.template.render_header()
        except TemplateError:  # a template that only works on records: no titles
            return ""


def align_tabs(lines: list[str], min_width: int = 10, padding: int = 3) -> str:
    """Tab-separated cells lined up in columns as Docker's tabwriter (10, 1, 3, ' ') does:
    a column is as wide as its widest cell plus ``padding``, at least ``min_width``; the
    text after a line's last tab is not padded. Nothing is ever cut."""
    rows = [line.split("\t") for line in lines]
    widths: list[int] = []
    for cells in rows:
        for i, cell in enumerate(cells[:-1]):
            widths += [0] * (i + 1 - len(widths))
            widths[i] = max(widths[i], len(cell))
    return "".join(
        "".join(c.ljust(max(widths[i] + padding, min_width)) for i, c in enumerate(cells[:-1])) + cells[-1] + "\n"
        for cells in rows
    )


def _short(text: str, width: int, no_trunc: bool, mark: str = "…") -> str:
    """Docker's shortening, on a terminal only: ``width`` characters, ending in ``mark``."""
    if no_trunc or not sys.stdout.isatty() or len(text) <= width:
        return text
    return text[: width - len(mark)] + mark


def container_rows(no_trunc: bool) -> Rows:
    def rows(containers: list[dict[str, Any]]) -> list[list[str]]:
        from ..wirejson import dumps  # json.dumps' defaults, without importing json

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
            command = dumps(_short(" ".join(c["cmd"]), 20, no_trunc), ensure_ascii=False)
            cid = _short(c["id"], 12, no_trunc, "")
            table.append([cid, c["name"], status, c["net_mode"], addrs or "-", ports or "-", command])
        return table

    return rows


def _host_address(host_ip: str | None) -> str:
    """A published port's host address as Docker prints it: ``0.0.0.0``, or ``[::1]``."""
    if not host_ip:
        return "0.0.0.0"
    return f"[{host_ip}]" if ":" in host_ip else host_ip


def network_rows(no_trunc: bool) -> Rows:
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


def node_rows(nodes: list[dict[str, Any]]) -> list[list[str]]:
    table = [["NAME", "ADDRESS", "STATUS", "APPLIED REVISION"]]
    for n in nodes:
        name = n["name"] + (" (this host)" if n["self"] else "")
        table.append([name, n["address"] or "-", "up" if n["up"] else "down", str(n["applied_revision"])])
    return table


def print_ids(records: list[dict[str, Any]], no_trunc: bool) -> None:
    """``-q``: IDs only, 12 characters as Docker prints them, or whole with ``--no-trunc``."""
    sys.stdout.write("".join((r["id"] if no_trunc else r["id"][:12]) + "\n" for r in records))
