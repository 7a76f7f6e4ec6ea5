"""The daemon's API: the server (daemon side) and the client (front-end side)."""

from .client import Client, default_socket, default_state_dir

__all__ = ["Client", "default_socket", "default_state_dir"]
