"""Drivers, one file per mode; picked by a plain lookup on the mode's name.

Network drivers keep per-host state (the overlay's own address and MTU per network), so
each controller builds its own set with ``network_drivers()``: two daemons in one process
(the tests do that) never share one.
"""

from .base import (
    DriverContext,
    NetworkDriver,
    NetworkSpec,
    SandboxMode,
    Undo,
    collect,
    enable_uplink_forwarding,
)
from .bridge import BridgeDriver
from .container import SharedNamespace
from .external import ExternalNamespace
from .host import HostNamespace
from .macvlan import MacvlanDriver
from .none import OwnNamespace
from .overlay import OverlayDriver, overlay_devices

__all__ = [
    "DriverContext",
    "NetworkDriver",
    "NetworkSpec",
    "SandboxMode",
    "Undo",
    "collect",
    "enable_uplink_forwarding",
    "BridgeDriver",
    "SharedNamespace",
    "ExternalNamespace",
    "HostNamespace",
    "OwnNamespace",
    "MacvlanDriver",
    "OverlayDriver",
    "overlay_devices",
    "network_drivers",
]


def network_drivers() -> dict[str, NetworkDriver]:
    """A fresh driver per network mode, by the name ``network create -d`` takes."""
    return {"bridge": BridgeDriver(), "overlay": OverlayDriver(), "macvlan": MacvlanDriver()}
