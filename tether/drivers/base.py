"""The narrow interfaces between the controller and the per-mode drivers, and the undo stack.

Two kinds of driver, as in netavark and libnetwork: a *sandbox mode* decides which network
namespace a container lives in (none, host, container:NAME), and a *network driver* gives
a namespace an interface on a network (bridge; overlay later). Every verb that changes the
kernel pushes its inverse on an ``Undo`` so the controller can unwind a half-done
operation; every teardown verb keeps going past errors and returns them.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

from ..datapath import Datapath
from ..model import Container, Endpoint, Network

__all__ = ["Undo", "DriverContext", "SandboxMode", "NetworkDriver"]


class Undo:
    """A stack of inverse actions. ``unwind`` runs them newest first and never stops early."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, step: Callable[[], object]) -> None:
        self._steps.append((what, step))

    def unwind(self) -> list[str]:
        failures: list[str] = []
        while self._steps:
            what, step = self._steps.pop()
            try:
                step()
            except Exception as exc:  # keep unwinding; report every failure
                failures.append(f"undo {what}: {exc}")
        return failures

    def commit(self) -> None:
        self._steps.clear()


@dataclass(frozen=True)
class DriverContext:
    datapath: Datapath
    mark: str  # ifalias put on every link this daemon creates, so reconcile can find orphans
    netns_prefix: str

    def netns_name(self, container_name: str) -> str:
        return f"{self.netns_prefix}{container_name}"


class SandboxMode(abc.ABC):
    """Where a container's network lives."""

    name: str

    @abc.abstractmethod
    def setup(self, ctx: DriverContext, container: Container, undo: Undo) -> str | None:
        """Make (or pick) the container's network namespace; return its name under the
        netns dir, or None for the host's own namespace."""

    @abc.abstractmethod
    def teardown(self, ctx: DriverContext, container: Container) -> list[str]:
        """Release what ``setup`` made. Idempotent; returns errors instead of raising."""

    def owns_netns(self) -> bool:
        """True when the namespace belongs to this container (removed with it)."""
        return False


class NetworkDriver(abc.ABC):
    """How a network is built on this host and how an endpoint joins it."""

    name: str

    @abc.abstractmethod
    def create(self, ctx: DriverContext, network: Network, undo: Undo) -> None:
        """Build the network's host side (e.g. its bridge)."""

    @abc.abstractmethod
    def delete(self, ctx: DriverContext, network: Network) -> list[str]:
        """Remove the host side. Idempotent; returns errors instead of raising."""

    @abc.abstractmethod
    def restore(self, ctx: DriverContext, network: Network) -> None:
        """Make the kernel match the network again (daemon start, after tampering)."""

    @abc.abstractmethod
    def attach(
        self,
        ctx: DriverContext,
        network: Network,
        endpoint: Endpoint,
        netns: str,
        undo: Undo,
        keep_existing_default: bool = False,
    ) -> bool:
        """Give namespace ``netns`` the endpoint's interface on ``network``, with the default
        route if ``endpoint.default_route`` (unless the namespace has one and
        ``keep_existing_default``). Returns whether the default route was installed."""

    @abc.abstractmethod
    def detach(self, ctx: DriverContext, network: Network, endpoint: Endpoint, netns: str | None) -> list[str]:
        """Remove the endpoint's interface. Idempotent; returns errors instead of raising."""

    @abc.abstractmethod
    def endpoint_present(self, ctx: DriverContext, network: Network, endpoint: Endpoint) -> bool:
        """Whether the kernel still has the endpoint's host side, wired as it should be."""

    def owned_links(self, network: Network) -> set[str]:
        """Names of host links this network owns besides its endpoints' (for orphan sweeps)."""
        return set()
