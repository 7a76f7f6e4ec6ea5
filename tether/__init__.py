"""tether: container networking for Linux (host, none, container, bridge and overlay modes)."""

__version__ = "0.1.0"
