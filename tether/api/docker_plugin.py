"""Docker's plugin protocol on ``/run/docker/plugins/<name>.sock``: libnetwork's remote
network driver and IPAM driver, mapped one call to one ``DockerDoor`` method (``doors/docker.py``).

dockerd finds the socket by name (``docker network create -d tether --ipam-driver
tether``) and POSTs one JSON object per call. Answers are the protocol's JSON; an error
is HTTP 500 with ``{"Err": one line}``, which dockerd shows as
``NetworkDriver.CreateNetwork: <line>``. The translation stays here and thin: validation
happens in the door, every change of state in the controller.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from ..controller import Controller
from ..doors import DockerDoor
from ..errors import InvalidInput, TetherError
from .server import ApiServer

__all__ = ["DockerPluginServer", "plugin_socket_path", "CALLS"]

log = logging.getLogger("tether.docker")

PLUGIN_DIR = "/run/docker/plugins"
CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"

Call = Callable[[DockerDoor, dict[str, Any]], Any]
CALLS: dict[str, Call] = {}


def plugin_socket_path(name: str) -> str:
    return f"{PLUGIN_DIR}/{name}.sock"


def call(method: str) -> Callable[[Call], Call]:
    def register(fn: Call) -> Call:
        CALLS["/" + method] = fn
        return fn

    return register


def _s(body: dict[str, Any], key: str) -> str:
    value = body.get(key, "")
    if not isinstance(value, str):
        raise InvalidInput(f"{key} must be a string")
    return value


def _d(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key) or {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{key} must be an object")
    return value


def _l(body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = body.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise InvalidInput(f"{key} must be a list of objects")
    return value


@call("Plugin.Activate")
def activate(c: DockerDoor, body: dict[str, Any]) -> Any:
    return {"Implements": ["NetworkDriver", "IpamDriver"]}


@call("NetworkDriver.GetCapabilities")
def capabilities(c: DockerDoor, body: dict[str, Any]) -> Any:
    # "local": dockerd keeps its own record per host; tether shares overlays through etcd
    return {"Scope": "local", "ConnectivityScope": "local"}


@call("NetworkDriver.CreateNetwork")
def create_network(c: DockerDoor, body: dict[str, Any]) -> Any:
    c.create_network(_s(body, "NetworkID"), _d(body, "Options"), _l(body, "IPv4Data"), _l(body, "IPv6Data"))
    return {}


@call("NetworkDriver.DeleteNetwork")
def delete_network(c: DockerDoor, body: dict[str, Any]) -> Any:
    c.delete_network(_s(body, "NetworkID"))
    return {}


@call("NetworkDriver.CreateEndpoint")
def create_endpoint(c: DockerDoor, body: dict[str, Any]) -> Any:
    return c.create_endpoint(
        _s(body, "NetworkID"), _s(body, "EndpointID"), _d(body, "Interface"), _d(body, "Options")
    )


@call("NetworkDriver.EndpointOperInfo")
def endpoint_info(c: DockerDoor, body: dict[str, Any]) -> Any:
    return {"Value": c.endpoint_info(_s(body, "NetworkID"), _s(body, "EndpointID"))}


@call("NetworkDriver.DeleteEndpoint")
def delete_endpoint(c: DockerDoor, body: dict[str, Any]) -> Any:
    c.delete_endpoint(_s(body, "NetworkID"), _s(body, "EndpointID"))
    return {}


@call("NetworkDriver.Join")
def join(c: DockerDoor, body: dict[str, Any]) -> Any:
    return c.join(_s(body, "NetworkID"), _s(body, "EndpointID"), _s(body, "SandboxKey"))


@call("NetworkDriver.Leave")
def leave(c: DockerDoor, body: dict[str, Any]) -> Any:
    c.leave(_s(body, "NetworkID"), _s(body, "EndpointID"))
    return {}


@call("NetworkDriver.ProgramExternalConnectivity")
def program_external(c: DockerDoor, body: dict[str, Any]) -> Any:
    c.program_external(_s(body, "NetworkID"), _s(body, "EndpointID"), _d(body, "Options"))
    return {}


@call("NetworkDriver.RevokeExternalConnectivity")
def revoke_external(c: DockerDoor, body: dict[str, Any]) -> Any:
    c.revoke_external(_s(body, "NetworkID"), _s(body, "EndpointID"))
    return {}


def _nothing(c: DockerDoor, body: dict[str, Any]) -> Any:
    return {}


# discovery notices and swarm-only network allocation: nothing for tether to do
for _method in ("DiscoverNew", "DiscoverDelete", "AllocateNetwork", "FreeNetwork"):
    CALLS[f"/NetworkDriver.{_method}"] = _nothing


@call("IpamDriver.GetCapabilities")
def ipam_capabilities(c: DockerDoor, body: dict[str, Any]) -> Any:
    return {"RequiresMACAddress": False, "RequiresRequestReplay": False}


@call("IpamDriver.GetDefaultAddressSpaces")
def ipam_spaces(c: DockerDoor, body: dict[str, Any]) -> Any:
    return {"LocalDefaultAddressSpace": "tether", "GlobalDefaultAddressSpace": "tether-global"}


@call("IpamDriver.RequestPool")
def request_pool(c: DockerDoor, body: dict[str, Any]) -> Any:
    return c.request_pool(_s(body, "Pool"), _s(body, "SubPool"), _d(body, "Options"), bool(body.get("V6")))


@call("IpamDriver.ReleasePool")
def release_pool(c: DockerDoor, body: dict[str, Any]) -> Any:
    c.release_pool(_s(body, "PoolID"))
    return {}


@call("IpamDriver.RequestAddress")
def request_address(c: DockerDoor, body: dict[str, Any]) -> Any:
    return {"Address": c.request_address(_s(body, "PoolID"), _s(body, "Address"), _d(body, "Options")), "Data": {}}


@call("IpamDriver.ReleaseAddress")
def release_address(c: DockerDoor, body: dict[str, Any]) -> Any:
    c.release_address(_s(body, "PoolID"), _s(body, "Address"))
    return {}


class _PluginHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s", format % args)

    def address_string(self) -> str:
        return "unix"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        status, payload = 200, None
        try:
            fn = CALLS.get(self.path)
            if fn is None:
                status, payload = 404, {"Err": f"tether does not implement {self.path.lstrip('/')}"}
            else:
                try:
                    body = json.loads(raw) if raw.strip() else {}
                except ValueError:
                    raise InvalidInput("malformed JSON in the request body") from None
                if not isinstance(body, dict):
                    raise InvalidInput("the request body must be a JSON object")
                log.debug("%s %s", self.path, body)
                payload = fn(self.server.door, body)  # type: ignore[attr-defined]
        except TetherError as exc:
            status, payload = 500, {"Err": str(exc)}
        except Exception as exc:  # a bug: the traceback to the log, one line to dockerd
            log.exception("internal error on %s", self.path)
            status, payload = 500, {"Err": f"internal error in tether: {exc}"}
        data = json.dumps(payload).encode()
        # one request per connection: dockerd would otherwise keep it open, holding a pool
        # thread (and the daemon's exit) on a read that never ends
        self.close_connection = True
        self.send_response(status)
        self.send_header("Connection", "close")
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class DockerPluginServer(ApiServer):
    """The plugin socket, served by the same thread pool design as tether's own API."""

    def __init__(self, controller: Controller, name: str, socket_path: str | None = None) -> None:
        super().__init__(controller, socket_path or plugin_socket_path(name), handler=_PluginHandler)
        self.httpd.door = DockerDoor(controller)  # type: ignore[attr-defined]
