"""Fakes for tests: stand-ins for tether's extension points that touch nothing outside
the process."""

from __future__ import annotations

from .firewall import RecordingFirewall as RecordingFirewall
from .memory import MemoryStore

__all__ = ["MemoryStore"]
