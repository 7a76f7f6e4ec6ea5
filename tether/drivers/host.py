"""``--net host``: no namespace of its own; the container sees the host's interfaces.

Nothing to build or tear down; the other namespaces (UTS, PID, mount) still apply.
"""

from __future__ import annotations

from ..model import Container
from .base import DriverContext, SandboxMode, Undo

__all__ = ["HostNamespace"]


class HostNamespace(SandboxMode):
    name = "host"

    def setup(self, ctx: DriverContext, container: Container, undo: Undo) -> str | None:
        return None

    def teardown(self, ctx: DriverContext, container: Container) -> list[str]:
        return []
