"""The cluster store's key layout, in one place (all keys live under the etcd prefix).

    /cluster/networks/<name>              overlay Network records (scope global)
    /cluster/endpoints/<net_id>/<ep_id>   every overlay endpoint on every host: a container's
                                          interface, or a host's own address on the network
                                          {kind, node, vtep, address, mac, network_id, container,
                                          container_id}, and address6 on a dual-stack network
                                          (same mac), and a container's names: its name and
                                          aliases, which every host's resolver answers
    /cluster/node-info/<node>             every host that ever joined: {name, address}
    /cluster/nodes/<node>                 liveness: written with a lease (TTL 2 s, kept alive
                                          by the daemon); its deletion means the host is down
    /applied/<node>                       {revision}: the highest store revision this host has
                                          programmed into its kernel (the barrier reads it)
    /vni/<vni>                            {network}: VNI allocation, create-only (CAS)
    /ipam/<net_id>/<address>              overlay address leases (tether.ipam over the cluster store)

Agents watch ``/cluster/`` only: ``/applied/`` changes on every event and must not wake
them, or the hosts would acknowledge each other's acknowledgements forever.
"""

from __future__ import annotations

__all__ = [
    "CLUSTER",
    "NETWORKS",
    "ENDPOINTS",
    "NODE_INFO",
    "NODES",
    "APPLIED",
    "VNI",
    "network_key",
    "endpoint_key",
    "node_key",
    "node_info_key",
    "applied_key",
    "vni_key",
    "VNI_MIN",
    "VNI_MAX",
]

CLUSTER = "/cluster/"
NETWORKS = "/cluster/networks/"
ENDPOINTS = "/cluster/endpoints/"
NODE_INFO = "/cluster/node-info/"
NODES = "/cluster/nodes/"
APPLIED = "/applied/"
VNI = "/vni/"
VNI_MIN = 4096
VNI_MAX = 16_777_215


def network_key(name: str) -> str:
    return NETWORKS + name


def endpoint_key(network_id: str, endpoint_id: str) -> str:
    return f"{ENDPOINTS}{network_id}/{endpoint_id}"


def node_key(node: str) -> str:
    return NODES + node


def node_info_key(node: str) -> str:
    return NODE_INFO + node


def applied_key(node: str) -> str:
    return APPLIED + node


def vni_key(vni: int) -> str:
    return f"{VNI}{vni}"
