"""The daemon's side of the CNI door: CNI verbs as controller verbs, and CNI's result.

The plugin process (``tether/cni.py``) reads the runtime's environment and config and
posts one request; here its values are checked once (interface name, addresses of both
families, MAC, port mappings, aliases) and handed to the controller's verbs for other
runtimes' sandboxes, whose records are named ``cni-<container id>``. Nothing here
touches the kernel.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from ..controller import Attachment, Controller
from ..errors import InvalidInput
from ..model import PortMapping
from ..validate import check_ifname, check_ipv4, check_ipv6, validate_mac, validate_name

__all__ = ["CniDoor", "parse_port_mappings"]

RUNTIME = "cni"


def parse_port_mappings(raw: list[dict[str, Any]]) -> list[PortMapping]:
    """CNI's ``portMappings`` capability: ``{hostPort, containerPort, protocol, hostIP}``;
    a ``hostIP`` of either family, normalised (``0:0::1`` and ``[::1]`` are ``::1``)."""
    try:
        mappings = [
            PortMapping(
                str(p.get("protocol", "tcp")).lower(),
                int(p.get("hostPort", 0)),
                int(p.get("containerPort", 0)),
                _host_ip(p.get("hostIP")),
            )
            for p in raw
        ]
    except (TypeError, ValueError, AttributeError):
        raise InvalidInput("malformed portMappings: give objects with hostPort, containerPort and protocol") from None
    for m in mappings:
        if m.protocol not in ("tcp", "udp") or not (1 <= m.host_port <= 65535 and 1 <= m.container_port <= 65535):
            raise InvalidInput(f"invalid port mapping {m}: ports 1-65535, protocol tcp or udp")
    return mappings


def _host_ip(raw: object) -> str | None:
    if raw is None or raw == "":
        return None
    text = str(raw).strip()
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        raise InvalidInput(f"invalid portMappings hostIP {text!r}: give an address such as 127.0.0.1 or ::1") from None


class CniDoor:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def add(
        self,
        container_id: str,
        netns_path: str,
        ifname: str,
        network_name: str,
        ip: str | None = None,
        mac: str | None = None,
        publish: list[dict[str, Any]] | None = None,
        aliases: list[str] | None = None,
        ip6: str | None = None,
    ) -> dict[str, Any]:
        """ADD: attach the runtime's namespace; the same call again gives the same result.
        ``ip``/``ip6``: the addresses asked for (``ips`` capability), one per family."""
        if not container_id:
            raise InvalidInput("CNI_CONTAINERID is empty: the runtime must name the container")
        check_ifname("interface name", ifname)
        if ip is not None:
            check_ipv4("ips address", ip)
        if ip6 is not None:
            ip6 = check_ipv6("ips address", ip6)
        mac = validate_mac(mac) if mac is not None else None
        mappings = parse_port_mappings(publish or [])
        aliases = [validate_name("alias", a) for a in aliases or []]
        done = self.controller.attach_external(
            RUNTIME, container_id, network_name, netns_path, ifname, ip, mac, mappings, aliases, ip6=ip6
        )
        return self.result(done.value)

    def result(self, att: Attachment) -> dict[str, Any]:
        """The spec's result: the host veth, the container's interface, its addresses (v4,
        then v6 on a dual-stack network), the default routes if tether installed them, and
        the embedded resolver."""
        from ..dns import RESOLVER_ADDRESS

        ep = att.endpoint
        # a veth's host end comes first (as the bridge plugin's); a macvlan child has none
        host = [{"name": ep.host_ifname}] if self.controller.drivers[att.network.driver].host_link else []
        ips = [{"address": ep.cidr, "gateway": ep.gateway, "interface": len(host)}]
        routes = [{"dst": "0.0.0.0/0", "gw": ep.gateway}]
        if ep.cidr6 is not None:
            ips.append({"address": ep.cidr6, "gateway": ep.gateway6, "interface": len(host)})
            routes.append({"dst": "::/0", "gw": ep.gateway6})
        return {
            "interfaces": [*host, {"name": ep.ifname, "mac": ep.mac, "sandbox": att.container.netns}],
            "ips": ips,
            "routes": routes if ep.default_route else [],
            "dns": {"nameservers": [RESOLVER_ADDRESS]} if self.controller.resolver is not None else {},
        }

    def delete(self, container_id: str, ifname: str, network_name: str) -> None:
        """DEL: idempotent; a missing container, network or endpoint is success."""
        self.controller.detach_external(RUNTIME, container_id, network_name, ifname)

    def check(self, container_id: str, ifname: str, network_name: str) -> None:
        self.controller.check_external(RUNTIME, container_id, network_name, ifname)

    def gc(self, network_name: str, valid: list[tuple[str, str]]) -> list[str]:
        """GC: every CNI attachment on the network not in ``valid`` (container id, ifname)."""
        return self.controller.gc_external(RUNTIME, network_name, valid)
