"""The doors other runtimes come in by: CNI (Podman, containerd, CRI-O) and Docker's
remote network and IPAM driver. Each translates its protocol into public controller
verbs and keeps no network state of its own; the wire (HTTP on a unix socket) is in
``api/``, the CNI plugin process in ``tether/cni.py``."""

from .cni import CniDoor
from .docker import DockerDoor

__all__ = ["CniDoor", "DockerDoor"]
