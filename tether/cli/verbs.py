"""The bodies of the hot verbs: ``ps``, ``inspect``, ``network ls``, ``network inspect``,
``network connect`` and ``network disconnect``, written once, without Typer.

The Typer commands (``listing.py``, ``networks.py``) parse their options and call these;
the fast path (``fast.py``) parses the same options itself and calls the same functions,
so both print the same bytes. Each checks what it was given before it asks the daemon.
"""

from __future__ import annotations

from ..api.client import q
from .context import CTX, warn_lagging

# filters.py and output.py are imported by the verbs that print records, when they run:
# connect and disconnect print none and are the ones a runtime's start-up waits on

__all__ = ["list_containers", "inspect_containers", "list_networks", "inspect_networks", "connect", "disconnect"]


def list_containers(all_: bool, quiet: bool, no_trunc: bool, filter_: list[str] | None, fmt: str) -> None:
    """``tether ps``."""
    from .filters import CONTAINER_FILTERS, container_matches, parse_filters
    from .output import CONTAINER_ALIASES, CONTAINER_TITLES, Output, container_rows, print_ids

    filters = parse_filters(filter_, "ps", CONTAINER_FILTERS)
    output = Output(fmt, container_rows(no_trunc), CONTAINER_ALIASES, CONTAINER_TITLES)
    everything = all_ or "status" in filters  # as Docker: `--filter status=exited` needs no -a
    containers = CTX.client(at_first_request=True).get("/containers" + ("?all=1" if everything else ""))
    containers = [c for c in containers if container_matches(c, filters)]
    if quiet:
        print_ids(containers, no_trunc)
    else:
        output.emit(containers)


def inspect_containers(names: list[str], fmt: str) -> None:
    """``tether inspect``."""
    from .output import CONTAINER_ALIASES, CONTAINER_TITLES, Output

    output = Output(fmt, None, CONTAINER_ALIASES, CONTAINER_TITLES)
    client = CTX.client(at_first_request=True)
    output.emit([client.get(f"/containers/{q(n)}") for n in names])


def list_networks(quiet: bool, no_trunc: bool, filter_: list[str] | None, fmt: str) -> None:
    """``tether network ls``."""
    from .filters import NETWORK_FILTERS, network_matches, parse_filters
    from .output import NETWORK_ALIASES, NETWORK_TITLES, Output, network_rows, print_ids

    filters = parse_filters(filter_, "network ls", NETWORK_FILTERS)
    output = Output(fmt, network_rows(no_trunc), NETWORK_ALIASES, NETWORK_TITLES)
    nets = [n for n in CTX.client(at_first_request=True).get("/networks") if network_matches(n, filters)]
    if quiet:
        print_ids(nets, no_trunc)
    else:
        output.emit(nets)


def inspect_networks(names: list[str], fmt: str) -> None:
    """``tether network inspect``."""
    from .output import NETWORK_ALIASES, NETWORK_TITLES, Output

    output = Output(fmt, None, NETWORK_ALIASES, NETWORK_TITLES)
    client = CTX.client(at_first_request=True)
    output.emit([client.get(f"/networks/{q(n)}") for n in names])


def connect(network: str, container: str, ip: str | None, ip6: str | None, alias: list[str] | None) -> None:
    """``tether network connect``."""
    reply = CTX.client(at_first_request=True).post(
        f"/networks/{q(network)}/connect", {"container": container, "ip": ip, "ip6": ip6, "aliases": alias or []}
    )
    warn_lagging(reply.get("lagging"))


def disconnect(network: str, container: str) -> None:
    """``tether network disconnect``."""
    CTX.client(at_first_request=True).post(f"/networks/{q(network)}/disconnect", {"container": container})
