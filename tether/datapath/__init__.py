"""The only code in tether that speaks netlink: namespaces, links, addresses, routes.

``Datapath`` is the protocol every caller types against; ``NetlinkDatapath`` is the real one.
"""

from __future__ import annotations

from .base import BoundPorts, Datapath
from .netlink import NetlinkDatapath

__all__ = ["BoundPorts", "Datapath", "NetlinkDatapath"]
