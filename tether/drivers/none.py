"""``--net none``: a namespace of the container's own with only ``lo``.

The namespace is bound under the netns dir like every other one, so ``ip netns exec``
works and ``network connect`` can add interfaces later.
"""

from __future__ import annotations

from ..model import Container
from .base import DriverContext, SandboxMode, Undo

__all__ = ["OwnNamespace"]


class OwnNamespace(SandboxMode):
    """A fresh namespace per container: ``none`` and every network-attached container."""

    name = "none"

    def setup(self, ctx: DriverContext, container: Container, undo: Undo) -> str | None:
        netns = ctx.netns_name(container.name)
        ctx.datapath.create_netns(netns)
        undo.push(f"netns {netns}", lambda: ctx.datapath.delete_netns(netns))
        return netns

    def teardown(self, ctx: DriverContext, container: Container) -> list[str]:
        if not container.netns:
            return []
        try:
            ctx.datapath.delete_netns(container.netns)
        except Exception as exc:
            return [f"netns {container.netns}: {exc}"]
        return []

    def owns_netns(self) -> bool:
        return True
