"""Changing networks: ``tether network create``, ``rm``, ``connect``, ``disconnect``, ``prune``."""

from __future__ import annotations

import typer

from ..api.client import q
from ..validate import validate_name
from .common import CTX, each, network_app, out, parse_options, warn_lagging

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


@network_app.command("disconnect")
def network_disconnect(network: str, container: str) -> None:
    """Disconnect a container from a network."""
    CTX.client().post(f"/networks/{q(network)}/disconnect", {"container": container})


@network_app.command("prune")
def network_prune() -> None:
    """Remove every user-defined network with no containers."""
    for name in CTX.client().post("/networks/prune")["removed"]:
        out.print(name)


