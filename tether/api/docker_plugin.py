"""Docker's plugin protocol on ``/run/docker/plugins/<name>.sock``: libnetwork's remote
network driver and IPAM driver, mapped one call to one ``DockerDoor`` method (``doors/docker.py``).

dockerd finds the socket by name (``docker network create -d tether --ipam-driver
tether``) and POSTs one JSON object per call. Answers are the protocol's JSON; an error
is HTTP 500 with ``{"Err": one line}``, which dockerd shows as
``NetworkDriver.CreateNetwork: <line>``. The translation stays here and thin: validation
happens in the door, every change of state in the controller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgspec

from ..controller import Controller
from ..doors import DockerDoor
from ..errors import TetherError
from . import schema as s
from .listener import RequestHandler
from .server import ApiServer

__all__ = ["CALLS", "DockerPluginServer", "plugin_socket_path"]

log = logging.getLogger("tether.docker")

PLUGIN_DIR = "/run/docker/plugins"
CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"

Call = Callable[[DockerDoor, Any], Any]
# path -> (body schema, call); the schemas ignore keys they do not name (see schema.py)
CALLS: dict[str, tuple[type[Any], Call]] = {}


def plugin_socket_path(name: str) -> str:
    return f"{PLUGIN_DIR}/{name}.sock"


def call(method: str, body: type[Any] = s.DockerIgnored) -> Callable[[Call], Call]:
    def register(fn: Call) -> Call:
        CALLS["/" + method] = (body, fn)
        return fn

    return register


def _plain(value: Any) -> dict[str, Any]:
    """A checked part of a body as the plain dict the door reads (absent keys left out)."""
    return msgspec.to_builtins(value) if value is not None else {}


@call("Plugin.Activate")
def activate(c: DockerDoor, body: s.DockerIgnored) -> Any:
    return {"Implements": ["NetworkDriver", "IpamDriver"]}


@call("NetworkDriver.GetCapabilities")
def capabilities(c: DockerDoor, body: s.DockerIgnored) -> Any:
    # "local": dockerd keeps its own record per host; tether shares overlays through etcd
    return {"Scope": "local", "ConnectivityScope": "local"}


@call("NetworkDriver.CreateNetwork", s.DockerCreateNetwork)
def create_network(c: DockerDoor, body: s.DockerCreateNetwork) -> Any:
    c.create_network(
        body.NetworkID,
        _plain(body.Options),
        [_plain(d) for d in body.IPv4Data or []],
        [_plain(d) for d in body.IPv6Data or []],
    )
    return {}


@call("NetworkDriver.DeleteNetwork", s.DockerNetwork)
def delete_network(c: DockerDoor, body: s.DockerNetwork) -> Any:
    c.delete_network(body.NetworkID)
    return {}


@call("NetworkDriver.CreateEndpoint", s.DockerCreateEndpoint)
def create_endpoint(c: DockerDoor, body: s.DockerCreateEndpoint) -> Any:
    return c.create_endpoint(body.NetworkID, body.EndpointID, _plain(body.Interface), {})


@call("NetworkDriver.EndpointOperInfo", s.DockerEndpoint)
def endpoint_info(c: DockerDoor, body: s.DockerEndpoint) -> Any:
    return {"Value": c.endpoint_info(body.NetworkID, body.EndpointID)}


@call("NetworkDriver.DeleteEndpoint", s.DockerEndpoint)
def delete_endpoint(c: DockerDoor, body: s.DockerEndpoint) -> Any:
    c.delete_endpoint(body.NetworkID, body.EndpointID)
    return {}


@call("NetworkDriver.Join", s.DockerJoin)
def join(c: DockerDoor, body: s.DockerJoin) -> Any:
    return c.join(body.NetworkID, body.EndpointID, body.SandboxKey)


@call("NetworkDriver.Leave", s.DockerEndpoint)
def leave(c: DockerDoor, body: s.DockerEndpoint) -> Any:
    c.leave(body.NetworkID, body.EndpointID)
    return {}


@call("NetworkDriver.ProgramExternalConnectivity", s.DockerProgramExternal)
def program_external(c: DockerDoor, body: s.DockerProgramExternal) -> Any:
    c.program_external(body.NetworkID, body.EndpointID, _plain(body.Options))
    return {}


@call("NetworkDriver.RevokeExternalConnectivity", s.DockerEndpoint)
def revoke_external(c: DockerDoor, body: s.DockerEndpoint) -> Any:
    c.revoke_external(body.NetworkID, body.EndpointID)
    return {}


def _nothing(c: DockerDoor, body: s.DockerIgnored) -> Any:
    return {}


# discovery notices and swarm-only network allocation: nothing for tether to do
for _method in ("DiscoverNew", "DiscoverDelete", "AllocateNetwork", "FreeNetwork"):
    CALLS[f"/NetworkDriver.{_method}"] = (s.DockerIgnored, _nothing)


@call("IpamDriver.GetCapabilities")
def ipam_capabilities(c: DockerDoor, body: s.DockerIgnored) -> Any:
    return {"RequiresMACAddress": False, "RequiresRequestReplay": False}


@call("IpamDriver.GetDefaultAddressSpaces")
def ipam_spaces(c: DockerDoor, body: s.DockerIgnored) -> Any:
    return {"LocalDefaultAddressSpace": "tether", "GlobalDefaultAddressSpace": "tether-global"}


@call("IpamDriver.RequestPool", s.DockerRequestPool)
def request_pool(c: DockerDoor, body: s.DockerRequestPool) -> Any:
    return c.request_pool(body.Pool, body.SubPool, body.Options or {}, body.V6)


@call("IpamDriver.ReleasePool", s.DockerReleasePool)
def release_pool(c: DockerDoor, body: s.DockerReleasePool) -> Any:
    c.release_pool(body.PoolID)
    return {}


@call("IpamDriver.RequestAddress", s.DockerRequestAddress)
def request_address(c: DockerDoor, body: s.DockerRequestAddress) -> Any:
    return {"Address": c.request_address(body.PoolID, body.Address, body.Options or {}), "Data": {}}


@call("IpamDriver.ReleaseAddress", s.DockerReleaseAddress)
def release_address(c: DockerDoor, body: s.DockerReleaseAddress) -> Any:
    c.release_address(body.PoolID, body.Address)
    return {}


class _PluginHandler(RequestHandler):
    """Docker's protocol: one POST per call, errors as HTTP 500 ``{"Err": one line}`` (how
    dockerd reads them), framing and http.server's own errors included."""

    content_type = CONTENT_TYPE

    @classmethod
    def error_reply(cls, status: int, message: str) -> tuple[int, Any]:
        return 500, {"Err": message}

    def do_POST(self) -> None:
        status, payload = 200, None
        try:
            entry = CALLS.get(self.path)
            if entry is None:
                status, payload = 404, {"Err": f"tether does not implement {self.path.lstrip('/')}"}
            else:
                body_schema, fn = entry
                body = s.decode(self.body, body_schema)
                log.debug("%s %s", self.path, body)
                payload = fn(self.server.app, body)
        except TetherError as exc:
            status, payload = 500, {"Err": str(exc)}
        except Exception as exc:  # a bug: the traceback to the log, one line to dockerd
            log.exception("internal error on %s", self.path)
            status, payload = 500, {"Err": f"internal error in tether: {exc}"}
        # one request per connection: dockerd would otherwise keep it open and idle
        self.close_connection = True
        self.send_json(status, payload)


class DockerPluginServer(ApiServer):
    """The plugin socket, served by the same listener design as tether's own API."""

    def __init__(self, controller: Controller, name: str, socket_path: str | None = None) -> None:
        super().__init__(
            controller, socket_path or plugin_socket_path(name), handler=_PluginHandler, app=DockerDoor(controller)
        )
