"""The Firewall protocol: what the controller, the drivers and the daemon ask of the firewall.

Two classes satisfy it: ``tether.firewall.nft.Firewall`` (nftables through libnftables,
the real one) and ``tether.testing.firewall.RecordingFirewall`` (in memory, for unit
tests). Its inputs are values (``NetworkRules``, ``PortRule``), never rule text, so a
backend may keep them however it likes and rebuild everything from them (``sync``).

Dual stack: a network's ``subnet6`` and every PortRule whose container address is IPv6
belong to the IPv6 side (nftables: the ``ip6`` table, beside the ``ip`` one); each verb
covers both families in one step (nftables: one transaction), and "the table" below means
both tables.

What every implementation guarantees:

* ``add_*`` of what is already there (the same element) is a no-op; an element that
  clashes with a present one (a host port published to another target, an overlapping
  subnet) is a ``Conflict``.
* ``remove_*`` is idempotent: what is absent, or now means something else, is left alone.
* Every failure of the backend is a ``SystemFailure``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .nftrace import TraceEvent, TraceMatch
from .rules import NetworkRules, PortRule

__all__ = ["DesiredState", "Firewall"]

DesiredState = Callable[[], tuple[list[NetworkRules], list[PortRule]]]
Healed = Callable[[str, str, str], None]  # (what was wrong or "", what was put back, what stray went)


class Firewall(Protocol):
    """tether's tables (IPv4 and IPv6) of networks and published ports in one network namespace."""

    def present(self) -> bool:
        """True if the table and every chain of it exist (cheap)."""

    def rule_count(self) -> int:
        """Rules in the table (constant in the number of networks and ports)."""

    def ensure(self) -> bool:
        """Create whatever of the table is missing; True if anything had to be created."""

    def sync(self, networks: list[NetworkRules], ports: list[PortRule]) -> None:
        """Make the table hold exactly these networks and ports, in one transaction."""

    def add_network(self, net: NetworkRules) -> None:
        """Add one network's elements (bridge, subnets of both families, its masquerade, icc
        and internal flags); its bridge joins the IPv6 side even without ``subnet6``."""

    def remove_network(self, net: NetworkRules) -> None:
        """Remove everything ``net`` may have added, whatever its flags were; idempotent."""

    def add_ports(self, ports: list[PortRule]) -> None:
        """Publish these host ports, each in its container address's family; a host port
        already published elsewhere in that family is a Conflict, and a host address of the
        other family than the container's is InvalidInput."""

    def remove_ports(self, ports: list[PortRule]) -> None:
        """Unpublish these exact mappings; absent ones (or a key now mapped elsewhere) stay; idempotent."""

    def delete(self) -> None:
        """Drop the whole table (tests, uninstall); idempotent; stops the healer first."""

    def start_healer(self, desired: DesiredState, interval: float = 0.2, on_heal: Healed | None = None) -> None:
        """Restore the table, its chains and the elements of its sets and maps from ``desired()``
        whenever they are found damaged (checked every ``interval`` s and on nftables notices);
        ``on_heal`` is told of each repair."""

    def stop_healer(self) -> None:
        """Stop the healer started by ``start_healer``; idempotent."""

    def close(self) -> None:
        """Stop the healer and release the backend; no other verb may be called after it."""

    def trace(self, match: TraceMatch, send: Callable[[], None]) -> list[TraceEvent]:
        """What every table of this namespace does to the packets ``match`` describes: mark
        them (nftables: ``meta nftrace``), call ``send()`` (which sends the probe), and return
        each matched rule and applied policy, in order (``nftrace.py``). Changes nothing
        lasting; an empty list means no marked packet was seen."""
