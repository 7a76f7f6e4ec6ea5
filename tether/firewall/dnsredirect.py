"""Inside each container namespace: send 127.0.0.11:53 to the embedded resolver's port.

The resolver listens on 127.0.0.11 at a port the kernel picks, not on 53, so a container
may run its own DNS server on 0.0.0.0:53 (binding the wildcard would otherwise collide
with the resolver's socket). One tiny table per container namespace, Docker-style, with
its rules replaced in one transaction; it vanishes with the namespace.
"""

from __future__ import annotations

from .libnft import Nft

__all__ = ["render_dns_redirect", "redirect_dns_here"]

TABLE = "tether_dns"


def render_dns_redirect(udp_port: int, tcp_port: int, address: str = "127.0.0.11") -> str:
    for port in (udp_port, tcp_port):
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} out of range")
    return (
        f"table ip {TABLE} {{}}\n"
        f"flush table ip {TABLE}\n"
        f"table ip {TABLE} {{\n"
        f"  chain output {{\n"
        f"    type nat hook output priority -100; policy accept;\n"
        f"    ip daddr {address} udp dport 53 dnat ip to {address}:{udp_port}\n"
        f"    ip daddr {address} tcp dport 53 dnat ip to {address}:{tcp_port}\n"
        f"  }}\n"
        f"}}\n"
    )


def redirect_dns_here(udp_port: int, tcp_port: int) -> None:
    """Install (or re-point) the redirect in the calling thread's network namespace (the
    resolver calls it from inside the container's, in the same trip that opens its sockets)."""
    nft = Nft()
    try:
        nft.run(render_dns_redirect(udp_port, tcp_port))
    finally:
        nft.close()  # now, in this thread, not whenever the collector gets to it
