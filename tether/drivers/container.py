"""``--net container:NAME``: join another container's namespace; nothing else is shared.

The joiner records the target's namespace name and never owns it: removing the joiner
leaves the namespace alone, and the controller refuses to remove the target while a
joiner runs (unless forced).
"""

from __future__ import annotations

from ..model import Container
from .base import DriverContext, SandboxMode, Undo

__all__ = ["SharedNamespace"]


class SharedNamespace(SandboxMode):
    name = "container"

    def __init__(self, target_netns: str | None) -> None:
        self.target_netns = target_netns

    def setup(self, ctx: DriverContext, container: Container, undo: Undo) -> str | None:
        return self.target_netns

    def teardown(self, ctx: DriverContext, container: Container) -> list[str]:
        return []
