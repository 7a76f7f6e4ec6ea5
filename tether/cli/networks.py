"""Changing networks: ``tether network create``, ``rm``, ``connect``, ``disconnect``, ``prune``."""

from __future__ import annotations

import sys

import typer

from ..api.client import q
from ..errors import Conflict, NotFound
from ..validate import split_families, split_ranges, validate_name
from . import verbs
from .common import CTX, each, fail, network_app, out, parse_options
from .filters import PRUNE_FILTERS, parse_filters, parse_labels, prunable

__all__: list[str] = []

PRUNE_WARNING = (
    "WARNING! This will remove all custom networks not used by at least one container.\n"
    "Are you sure you want to continue? [y/N] "
)


@network_app.command("create")
def network_create(
    name: str,
    driver: str = typer.Option("bridge", "-d", "--driver", help="Network driver."),
    subnet: list[str] = typer.Option(
        None, "--subnet", help="Subnet in CIDR form, e.g. 10.210.0.0/24; with --ipv6 once more for IPv6, e.g. fd00:210::/64."
    ),
    gateway: list[str] = typer.Option(None, "--gateway", help="Gateway address (default: first in subnet); one per subnet."),
    ipv6: bool = typer.Option(False, "--ipv6", help="Dual stack: an IPv6 subnet too (a free ULA /64 unless --subnet gives one)."),
    ip_range: list[str] = typer.Option(
        None, "--ip-range", help="Allocate container addresses from this sub-range; with --ipv6 once more for IPv6."
    ),
    aux_address: list[str] = typer.Option(
        None, "--aux-address", help="Reserve an address NAME=IP that IPAM never hands out; repeatable."
    ),
    opt: list[str] = typer.Option(
        None,
        "-o",
        "--opt",
        help="Driver option KEY=VALUE: bridge: bridge_name, mtu, masquerade=true|false, icc=true|false; "
        "macvlan: parent=IF, macvlan_mode=bridge|private|vepa|passthru, host_access=true, host_address=IP.",
    ),
    internal: bool = typer.Option(False, "--internal", help="No route to the outside."),
    label: list[str] = typer.Option(None, "--label", help="Label KEY=VALUE (or KEY) on the network; repeatable."),
) -> None:
    """Create a network."""
    validate_name("network", name)  # before the daemon is asked (and started) at all
    labels = parse_labels(label)
    subnet4, gateway4, subnet6, gateway6 = split_families(subnet or [], gateway or [], ipv6)
    range4, range6 = split_ranges(ip_range or [], ipv6)
    net = CTX.client().post(
        "/networks",
        {
            "name": name,
            "driver": driver,
            "subnet": subnet4,
            "gateway": gateway4,
            "ip_range": range4,
            "ip_range6": range6,
            "ipv6": ipv6,
            "subnet6": subnet6,
            "gateway6": gateway6,
            "options": parse_options(opt),
            "internal": internal,
            "labels": labels,
            "aux_addresses": _aux_addresses(aux_address),
        },
    )
    out.print(net["id"])


def _aux_addresses(items: list[str] | None) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            fail(f"invalid --aux-address {item!r}: use --aux-address NAME=IP, e.g. router=192.0.2.254")
        if key in parsed:
            fail(f"--aux-address {key} is given twice: give each name once")
        parsed[key] = value
    return parsed


@network_app.command("rm")
def network_rm(names: list[str]) -> None:
    """Remove networks."""
    client = CTX.client()
    each(names, lambda n: client.delete(f"/networks/{q(n)}"))


@network_app.command("connect")
def network_connect(
    network: str,
    container: str,
    ip: str = typer.Option(None, "--ip", help="IPv4 address on the network."),
    ip6: str = typer.Option(None, "--ip6", help="IPv6 address on a dual-stack network."),
    alias: list[str] = typer.Option(None, "--alias", help="Extra DNS name on the network."),
) -> None:
    """Connect a container to a network."""
    verbs.connect(network, container, ip, ip6, alias)


@network_app.command("disconnect")
def network_disconnect(network: str, container: str) -> None:
    """Disconnect a container from a network."""
    verbs.disconnect(network, container)


@network_app.command("prune")
def network_prune(
    force: bool = typer.Option(False, "-f", "--force", help="Do not ask for confirmation."),
    filter_: list[str] = typer.Option(
        None, "--filter", help="Only networks with label=KEY[=VALUE], or without label!=KEY[=VALUE]; repeatable."
    ),
) -> None:
    """Remove every user-defined network with no containers."""
    filters = parse_filters(filter_, "network prune", PRUNE_FILTERS)
    if not force and not _confirm(PRUNE_WARNING):
        return
    client = CTX.client()
    if not filters:
        removed = client.post("/networks/prune")["removed"]  # in one step, under the daemon's lock
    else:
        # The API's prune takes no filter: pick here, then remove by name, as Docker's CLI
        # often does. One that gained a container (or went) in between is left alone.
        removed = []
        for net in client.get("/networks"):
            if prunable(net, filters):
                try:
                    client.delete(f"/networks/{q(net['name'])}")
                    removed.append(net["name"])
                except (Conflict, NotFound):
                    pass
    if removed:
        sys.stdout.write("Deleted Networks:\n" + "".join(f"{name}\n" for name in removed))


def _confirm(question: str) -> bool:
    """Docker's [y/N] question, asked on the terminal; with no terminal to ask on, refused."""
    if sys.stdin is None or not sys.stdin.isatty():
        fail("stdin is not a terminal to confirm on: use -f to remove without confirmation")
    sys.stdout.write(question)
    sys.stdout.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


