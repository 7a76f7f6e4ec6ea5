"""Drivers, one file per mode; picked by a plain lookup on the mode's name."""

from .base import DriverContext, NetworkDriver, SandboxMode, Undo
from .bridge import BridgeDriver
from .container import SharedNamespace
from .external import ExternalNamespace
from .host import HostNamespace
from .none import OwnNamespace
from .overlay import OverlayDriver, overlay_devices

__all__ = [
    "DriverContext",
    "NetworkDriver",
    "SandboxMode",
    "Undo",
    "BridgeDriver",
    "SharedNamespace",
    "ExternalNamespace",
    "HostNamespace",
    "OwnNamespace",
    "OverlayDriver",
    "overlay_devices",
    "NETWORK_DRIVERS",
]

NETWORK_DRIVERS: dict[str, NetworkDriver] = {"bridge": BridgeDriver(), "overlay": OverlayDriver()}
