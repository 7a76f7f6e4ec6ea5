"""``tether network ...`` and ``tether node ls``."""

from __future__ import annotations

import typer
from rich.table import Table

from ..api.client import q
from ..validate import validate_name
from .common import CTX, each, network_app, node_app, out, parse_options, print_json, warn_lagging

__all__: list[str] = []


@network_app.command("create")
def network_create(
    name: str,
    driver: str = typer.Option("bridge", "-d", "--driver", help="Network driver."),
    subnet: str = typer.Option(None, "--subnet", help="Subnet in CIDR form, e.g. 10.210.0.0/24."),
    gateway: str = typer.Option(None, "--gateway", help="Gateway address (default: first in subnet)."),
    ip_range: str = typer.Option(None, "--ip-range", help="Allocate container addresses from this sub-range."),
    opt: list[str] = typer.Option(
        None, "-o", "--opt", help="Driver option KEY=VALUE: bridge_name, mtu, masquerade=true|false, icc=true|false."
    ),
    internal: bool = typer.Option(False, "--internal", help="No route to the outside."),
) -> None:
    """Create a network."""
    validate_name("network", name)  # before the daemon is asked (and started) at all
    net = CTX.client().post(
        "/networks",
        {
            "name": name,
            "driver": driver,
            "subnet": subnet,
            "gateway": gateway,
            "ip_range": ip_range,
            "options": parse_options(opt),
            "internal": internal,
        },
    )
    out.print(net["id"])


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


@network_app.command("rm")
def network_rm(names: list[str]) -> None:
    """Remove networks."""
    client = CTX.client()
    each(names, lambda n: client.delete(f"/networks/{q(n)}"))


@network_app.command("connect")
def network_connect(
    network: str,
    container: str,
    ip: str = typer.Option(None, "--ip", help="Address on the network."),
    alias: list[str] = typer.Option(None, "--alias", help="Extra DNS name on the network."),
) -> None:
    """Connect a container to a network."""
    reply = CTX.client().post(
        f"/networks/{q(network)}/connect", {"container": container, "ip": ip, "aliases": alias or []}
    )
    warn_lagging(reply.get("lagging"))


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


@network_app.command("disconnect")
def network_disconnect(network: str, container: str) -> None:
    """Disconnect a container from a network."""
    CTX.client().post(f"/networks/{q(network)}/disconnect", {"container": container})


@network_app.command("prune")
def network_prune() -> None:
    """Remove every user-defined network with no containers."""
    for name in CTX.client().post("/networks/prune")["removed"]:
        out.print(name)


