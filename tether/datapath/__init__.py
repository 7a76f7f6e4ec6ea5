"""The only code in tether that speaks netlink: namespaces, links, addresses, routes."""

from __future__ import annotations

from .netlink import Datapath

__all__ = ["Datapath"]
