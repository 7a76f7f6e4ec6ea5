"""The embedded DNS resolver: container names at 127.0.0.11 inside every sandbox."""

from __future__ import annotations

from .resolver import (
    RESOLVER_ADDRESS,
    RESOLVER_PORT,
    Resolver,
    resolv_conf_text,
    upstreams_from_resolv_conf,
)

__all__ = [
    "RESOLVER_ADDRESS",
    "RESOLVER_PORT",
    "Resolver",
    "resolv_conf_text",
    "upstreams_from_resolv_conf",
]
