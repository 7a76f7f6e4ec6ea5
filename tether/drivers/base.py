"""The narrow interfaces between the controller and the per-mode drivers, and the undo stack.

Two kinds of driver, as in netavark and libnetwork: a *sandbox mode* decides which network
namespace a container lives in (none, host, container:NAME, another runtime's), and a
*network driver* owns one kind of network end to end: it checks its options
(``validate``), builds and removes the network (``create_network``/``delete_network``),
and gives a namespace an interface on it (``attach_endpoint``/``detach_endpoint``). All a
driver needs arrives in one ``DriverContext``; the controller never asks which driver it
holds. Every verb that changes the kernel or a store pushes its inverse on an ``Undo``;
every teardown verb keeps going past errors and returns them.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..datapath import Datapath
from ..ipam import DEFAULT_POOLS, IPAM
from ..model import Container, Endpoint, Network
from ..store import Store

if TYPE_CHECKING:
    from ..control.cluster import Cluster
    from ..firewall import Firewall, NetworkRules

__all__ = [
    "Undo",
    "DriverContext",
    "NetworkSpec",
    "SandboxMode",
    "NetworkDriver",
    "collect",
    "enable_uplink_forwarding",
]


class Undo:
    """A stack of inverse actions. ``unwind`` runs them newest first and never stops early.

    ``published`` is the highest cluster-store revision the operation wrote: the
    controller's barrier waits until every live host has applied it."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []
        self.published = 0

    def push(self, what: str, step: Callable[[], object]) -> None:
        self._steps.append((what, step))

    def published_at(self, revision: int) -> None:
        self.published = max(self.published, revision)

    def unwind(self) -> list[str]:
        failures: list[str] = []
        while self._steps:
            what, step = self._steps.pop()
            try:
                step()
            except Exception as exc:  # keep unwinding; report every failure
                failures.append(f"undo {what}: {exc}")
        self.published = 0
        return failures

    def commit(self) -> None:
        self._steps.clear()


def collect(step: Callable[[], object]) -> list[str]:
    """Run one teardown step; its failure becomes a line instead of an exception."""
    try:
        step()
    except Exception as exc:
        return [str(exc)]
    return []


@dataclass(frozen=True)
class DriverContext:
    """What every driver may use: the kernel (``datapath``, ``firewall``), this host's
    store and IPAM, the cluster's (None without ``--cluster-store``), and the controller's
    lock, which the overlay agent's thread takes too."""

    datapath: Datapath
    mark: str  # ifalias put on every link this daemon creates, so reconcile can find orphans
    netns_prefix: str
    store: Store
    ipam: IPAM
    lock: threading.RLock
    firewall: Firewall | None = None
    cluster: Cluster | None = None
    global_ipam: IPAM | None = None

    def netns_name(self, container_name: str) -> str:
        return f"{self.netns_prefix}{container_name}"


@dataclass(frozen=True)
class NetworkSpec:
    """A network to create, checked by the controller (name, placement) and by the
    driver's ``validate`` (options)."""

    id: str
    name: str
    subnet: str
    gateway: str
    ip_range: str | None
    options: dict[str, str]
    internal: bool
    bridge: str | None = None  # a fixed device name (the default network's tether0)
    labels: dict[str, str] = field(default_factory=dict)  # the user's `--label`s, kept on the record
    subnet6: str | None = None  # dual stack: the v6 subnet and gateway, checked and placed
    gateway6: str | None = None
    aux_addresses: dict[str, str] = field(default_factory=dict)  # `--aux-address`, checked
    ip_range6: str | None = None  # the v6 `--ip-range`, checked


def enable_uplink_forwarding(ctx: DriverContext, ipv6: bool = False) -> None:
    """Replies and published-port traffic arrive on the uplink: it must forward too. IPv6
    forwards by one switch for the whole namespace (no per-interface check on input)."""
    for ifname in ctx.datapath.uplinks():
        ctx.datapath.set_interface_sysctl(ifname, "forwarding", "1")
    if ipv6:
        ctx.datapath.enable_ipv6_forwarding()


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
    """One kind of network, end to end: its options, its records, its kernel side."""

    name: str
    scope = "local"  # "global": the network lives in the cluster store, on every host
    options: tuple[str, ...] = ()  # the -o options it takes
    pools: list[tuple[str, int]] = DEFAULT_POOLS  # where a subnet is picked when none is given
    lan = False  # its subnet is a LAN's, which the host may route already: not checked against host routes
    publishes_ports = True  # `-p` reaches its containers through the host (not macvlan: they are on the LAN)
    host_link = True  # each endpoint has a link on the host (a veth end), named ``host_ifname``

    def shares_space(self, options: dict[str, str], other: Network) -> bool:
        """Whether ``other``'s subnets must not overlap a new network of this driver with
        (validated) ``options``: every network's, except where the driver says otherwise."""
        return True

    # ---------------------------------------------------------------- networks
    @abc.abstractmethod
    def validate(self, ctx: DriverContext, options: dict[str, str], internal: bool) -> dict[str, str]:
        """Check the ``-o`` options (names and values) before anything changes; return
        them normalised. Raises ``InvalidInput`` naming the first bad one."""

    @abc.abstractmethod
    def create_network(self, ctx: DriverContext, spec: NetworkSpec, others: list[Network], undo: Undo) -> Network:
        """Record the network and build its host side; ``others`` are every network this
        host knows (for device names). Call with ``ctx.lock`` held."""

    @abc.abstractmethod
    def delete_network(self, ctx: DriverContext, network: Network) -> list[str]:
        """Remove the host side and the records (the caller checked it is unused).
        Keeps going past errors and returns them."""

    def restore(self, ctx: DriverContext, network: Network) -> None:
        """Make the kernel match the network again (daemon start, after tampering)."""

    def users(self, ctx: DriverContext, network: Network, local: list[str]) -> list[str]:
        """Who is attached, for refusing ``network rm``; ``local`` are this host's."""
        return local

    routed = False  # its subnet is routed through every host (the firewall forwards it)

    def rules(self, network: Network) -> NetworkRules:
        """The firewall's input for one of its networks."""
        from ..firewall import NetworkRules

        return NetworkRules(
            bridge=network.bridge,
            subnet=network.subnet,
            subnet6=network.subnet6,
            masquerade=network.options.get("masquerade", "true") == "true" and not network.internal,
            internal=network.internal,
            icc=network.options.get("icc", "true") == "true",
            routed=self.routed,
        )

    def built_here(self, ctx: DriverContext, network: Network) -> bool:
        """Whether this host has built the network's side (its firewall rules apply)."""
        return True

    def describe(self, ctx: DriverContext, network: Network, attached: dict[str, Any]) -> dict[str, Any]:
        """``network inspect``: the record plus who is attached (``attached``: this host's)."""
        return dict(network.to_dict(), containers=attached, scope=self.scope)

    # ---------------------------------------------------------------- endpoints
    def ipam(self, ctx: DriverContext) -> IPAM:
        """Where the network's addresses are leased."""
        return ctx.ipam

    def gateway(self, ctx: DriverContext, network: Network) -> str:
        """The gateway of this host's endpoints on ``network``."""
        return network.gateway

    def gateway6(self, ctx: DriverContext, network: Network) -> str | None:
        """The v6 gateway of this host's endpoints on ``network`` (None: IPv4 only)."""
        return network.gateway6

    @abc.abstractmethod
    def attach_endpoint(
        self,
        ctx: DriverContext,
        network: Network,
        container: Container,
        endpoint: Endpoint,
        undo: Undo,
        keep_existing_default: bool = False,
    ) -> bool:
        """Give ``container.netns`` the endpoint's interface, with the default route if
        ``endpoint.default_route`` (unless the namespace has one and
        ``keep_existing_default``). Returns whether the default route was installed."""

    @abc.abstractmethod
    def plug_endpoint(
        self, ctx: DriverContext, network: Network, container: Container, endpoint: Endpoint, peer: str, undo: Undo
    ) -> None:
        """The endpoint's veth with its container end left on the host as ``peer``, for
        a runtime that moves it into its sandbox and configures it itself (Docker)."""

    @abc.abstractmethod
    def detach_endpoint(
        self,
        ctx: DriverContext,
        network: Network,
        endpoint: Endpoint,
        kernel_gone: bool = False,
        netns: str | None = None,
    ) -> list[str]:
        """Remove the endpoint's interface (``kernel_gone``: its namespace already took it
        away; ``netns``: the container's namespace, None for a runtime's sandbox not joined
        yet) and anything published about it. Idempotent; returns errors."""

    @abc.abstractmethod
    def endpoint_present(self, ctx: DriverContext, network: Network, endpoint: Endpoint) -> bool:
        """Whether the kernel still has the endpoint's host side, wired as it should be."""

    def owned_links(self, network: Network) -> set[str]:
        """Names of host links this network owns besides its endpoints' (for orphan sweeps)."""
        return set()
