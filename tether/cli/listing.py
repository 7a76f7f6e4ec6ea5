"""What shows state: ``ps``, ``inspect``, ``network ls``, ``network inspect``, ``node ls``."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from ..api.client import q
from .common import CTX, app, network_app, node_app, out, print_json

__all__: list[str] = []


def _container_rows(containers: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    for col in ("CONTAINER ID", "NAME", "STATUS", "NET", "ADDRESSES", "PORTS", "COMMAND"):
        table.add_column(col)
    for c in containers:
        status = c["state"] if c["state"] != "exited" else f"exited ({c['exit_code']})"
        addrs = ", ".join(f"{n}={v['address']}" for n, v in sorted(c["networks"].items()))
        ports = ", ".join(
            f"{p['host_ip'] or '0.0.0.0'}:{p['host_port']}->{p['container_port']}/{p['protocol']}"
            for p in c.get("ports", [])
        )
        table.add_row(
            c["id"][:12], c["name"], status, c["net_mode"], addrs or "-", ports or "-", " ".join(c["cmd"])[:40]
        )
    return table


@app.command()
def ps(
    all_: bool = typer.Option(False, "-a", "--all", help="Show exited containers too."),
    fmt: str = typer.Option("table", "--format", help="table or json."),
) -> None:
    """List containers."""
    containers = CTX.client().get("/containers" + ("?all=1" if all_ else ""))
    if fmt == "json":
        print_json(containers)
    else:
        out.print(_container_rows(containers))


@app.command()
def inspect(names: list[str]) -> None:
    """Show containers as JSON (networks, addresses, MACs, netns path, pid)."""
    client = CTX.client()
    print_json([client.get(f"/containers/{q(n)}") for n in names])


@network_app.command("ls")
def network_ls(fmt: str = typer.Option("table", "--format", help="table or json.")) -> None:
    """List networks."""
    nets = CTX.client().get("/networks")
    if fmt == "json":
        print_json(nets)
        return
    table = Table(box=None, header_style="bold")
    for col in ("NETWORK ID", "NAME", "DRIVER", "SCOPE", "SUBNET", "BRIDGE", "CONTAINERS"):
        table.add_column(col)
    for n in nets:
        table.add_row(
            n["id"][:12], n["name"], n["driver"], n.get("scope", "local"), n["subnet"], n["bridge"], str(n["containers"])
        )
    out.print(table)


@network_app.command("inspect")
def network_inspect(names: list[str]) -> None:
    """Show networks as JSON."""
    client = CTX.client()
    print_json([client.get(f"/networks/{q(n)}") for n in names])


@node_app.command("ls")
def node_ls(fmt: str = typer.Option("table", "--format", help="table or json.")) -> None:
    """List the hosts of the cluster and whether each is up."""
    nodes = CTX.client().get("/nodes")
    if fmt == "json":
        print_json(nodes)
        return
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "ADDRESS", "STATUS", "APPLIED REVISION"):
        table.add_column(col)
    for n in nodes:
        status = "[green]up[/green]" if n["up"] else "[red]down[/red]"
        table.add_row(n["name"] + (" (this host)" if n["self"] else ""), n["address"], status, str(n["applied_revision"]))
    out.print(table)
