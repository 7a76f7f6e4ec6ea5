"""A namespace another runtime made (Podman, containerd, Docker through CNI or the remote
driver): tether attaches interfaces to it but never creates or deletes it, and runs no
process in it. The runtime owns its lifetime; tether only answers ADD/DEL for its endpoints.
"""

from __future__ import annotations

from ..model import Container
from .base import DriverContext, SandboxMode, Undo

__all__ = ["ExternalNamespace"]


class ExternalNamespace(SandboxMode):
    name = "external"

    def setup(self, ctx: DriverContext, container: Container, undo: Undo) -> str | None:
        return container.netns

    def teardown(self, ctx: DriverContext, container: Container) -> list[str]:
        return []
