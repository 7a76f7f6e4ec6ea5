"""Where the controller keeps its records in the host's own store (SQLite): one key per
network, container, endpoint and index entry, and the Docker door's id maps. Written
down once for the controller, the drivers and the doors; the cluster's keys (etcd) are in
``control/keys.py``.
"""

from __future__ import annotations

__all__ = [
    "NET_PREFIX", "CTR_PREFIX", "EP_PREFIX", "ID_PREFIX", "JOIN_PREFIX",
    "DOCKER_NETS", "DOCKER_POOLS", "ep_key",
]

NET_PREFIX = "/networks/"
CTR_PREFIX = "/containers/"
EP_PREFIX = "/endpoints/"
ID_PREFIX = "/container-ids/"  # id -> name, so lookups by id need no scan
JOIN_PREFIX = "/joins/"  # /joins/<owner id>/<joiner id>: who shares whose namespace
DOCKER_NETS = "/docker/networks/"  # docker network id -> {"name": tether name, "adopted": bool}
DOCKER_POOLS = "/docker/pools/"  # IPAM pool id -> {"subnet", "ip_range"}


def ep_key(container_id: str, network_id: str) -> str:
    return f"{EP_PREFIX}{container_id}/{network_id}"
