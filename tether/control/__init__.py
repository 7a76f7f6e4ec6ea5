"""The multi-host control plane: cluster membership, the overlay peer table and agent."""

from .cluster import Cluster
from .peers import Peer, PeerTable

__all__ = ["Cluster", "Peer", "PeerTable"]
