"""A namespace another runtime made (Podman, containerd, Docker through CNI or the remote
driver): tether attaches interfaces to it but never creates or deletes it, and runs no
process in it. The runtime owns its lifetime; tether only answers ADD/DEL for its endpoints.
Where the runtime binds it outside the netns dir (Docker), tether names it there with a
symlink, so ``ip netns`` sees it too; teardown removes only that name.
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
        try:
            ctx.datapath.unalias_netns(ctx.netns_name(container.name))
        except Exception as exc:
            return [str(exc)]
        return []
