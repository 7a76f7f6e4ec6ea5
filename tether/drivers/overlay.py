"""The overlay network driver: one L2 segment across hosts, VXLAN under a Linux bridge.

Per network, on *every* host: a bridge holding that host's own address on the overlay
subnet (so the host reaches every container directly, and is the default gateway of its
local containers: one interface per container, no gateway NIC as in Docker), and a VXLAN
device (the network's VNI, UDP 4789, learning off, ARP proxy on) enslaved to it, with an
MTU 50 bytes below the underlay's. The remote side — static FDB and neighbour entries,
flood entries per remote host — is programmed by the overlay agent from the cluster store;
this driver only builds the local side and plugs veths into it, exactly like the bridge
driver does.
"""

from __future__ import annotations

from ..model import Network
from .base import DriverContext, Undo
from .bridge import BridgeDriver

__all__ = ["OverlayDriver", "overlay_devices", "VXLAN_OVERHEAD"]

VXLAN_OVERHEAD = 50


def overlay_devices(network: Network) -> tuple[str, str]:
    """(bridge, vxlan) device names of an overlay network: derived from its VNI."""
    vni = network.options.get("vni", "0")
    return f"tov-{vni}", f"tvx-{vni}"


class OverlayDriver(BridgeDriver):
    name = "overlay"

    def __init__(self) -> None:
        self._mtu: dict[str, int] = {}  # bridge -> MTU derived from this host's underlay

    def ensure_host(
        self, ctx: DriverContext, network: Network, host_address: str, host_mac: str, vtep: str
    ) -> str:
        """Build (idempotently) this host's side of the network; returns the VXLAN device."""
        bridge, vxlan = overlay_devices(network)
        mtu = ctx.datapath.underlay_mtu(vtep) - VXLAN_OVERHEAD
        self._mtu[bridge] = mtu
        ctx.datapath.ensure_bridge(bridge, f"{host_address}/{network.prefixlen}", mtu, ctx.mark, exclusive=True)
        ctx.datapath.set_bridge_mac(bridge, host_mac)
        ctx.datapath.ensure_vxlan(vxlan, int(network.options["vni"]), vtep, bridge, mtu, ctx.mark)
        ctx.datapath.set_interface_sysctl(bridge, "forwarding", "1")
        return vxlan

    def create(self, ctx: DriverContext, network: Network, undo: Undo) -> None:
        """Nothing until the controller knows this host's address on the network
        (``ensure_host``)."""

    def restore(self, ctx: DriverContext, network: Network) -> None:
        """The overlay agent rebuilds overlay networks from the cluster store."""

    def delete(self, ctx: DriverContext, network: Network) -> list[str]:
        bridge, vxlan = overlay_devices(network)
        errors: list[str] = []
        for step, name in ((ctx.datapath.delete_vxlan, vxlan), (ctx.datapath.delete_bridge, bridge)):
            try:
                step(name)
            except Exception as exc:
                errors.append(f"{name}: {exc}")
        return errors

    def port_bridge(self, network: Network) -> str:
        return overlay_devices(network)[0]

    def port_mtu(self, network: Network) -> int:
        return self._mtu[self.port_bridge(network)]  # ensure_host always runs first

    hairpin = False  # no published ports on the overlay itself

    def owned_links(self, network: Network) -> set[str]:
        return set(overlay_devices(network))
