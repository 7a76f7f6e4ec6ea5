"""The only code in tether that speaks nftables: a constant ruleset in tether's own two
tables (``ip`` and ``ip6``), changed by set and map elements. See ``chains.py`` for the
rules and what the caller must set (sysctls), ``rules.py`` for the inputs and the
elements they render, ``nft.py`` for how they are applied and healed."""

from __future__ import annotations

from .libnft import Nft
from .nft import DesiredState, Firewall
from .rules import NetworkRules, PortRule

__all__ = ["DesiredState", "Firewall", "NetworkRules", "Nft", "PortRule"]
