"""The daemon's HTTP API on a unix socket: a thin JSON mapping onto the Controller.

Plain stdlib HTTP keeps the daemon light and lets the sync pyroute2 API run in request
threads; the controller serialises mutations itself. Connections are read by the listener
(``listener.py``: one selector thread, a fixed worker pool that only ever sees complete
requests); each route names the schema of its body (``schema.py``), checked before any
controller verb runs. Errors leave as ``{"error": one line, "kind": class}`` with the status
the error tree assigns, on every path (a bad body, bad framing, an unknown method or
endpoint); anything unexpected is logged with its traceback and sent as one line.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import stat
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlparse

from ..controller import Controller
from ..doors import CniDoor
from ..errors import Conflict, InvalidInput, SystemFailure, TetherError
from . import schema
from .listener import HttpListener, Limits, RequestHandler
from .schema import Empty, option_text

__all__ = ["ApiServer"]

log = logging.getLogger("tether.api")

Handler = Callable[[Controller, dict[str, str], dict[str, Any], dict[str, list[str]]], Any]
ROUTES: list[tuple[str, re.Pattern[str], Handler]] = []


def route(method: str, pattern: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        ROUTES.append((method, re.compile("^" + pattern + "$"), fn))
        return fn

    return register


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["0"])[0] in ("1", "true", "yes")


@route("GET", "/ping")
def ping(c: Controller, p: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    return {"ok": True, "pid": os.getpid(), "state_dir": c.state_dir, "netns_prefix": c.ctx.netns_prefix}


@route("GET", "/networks")
def networks_list(c: Controller, p: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    return c.list_networks()


@route("POST", "/networks")
def networks_create(c: Controller, p: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    return c.create_network(
        name=_str(body, "name"),
        driver=body.get("driver") or "bridge",
        subnet=body.get("subnet"),
        gateway=body.get("gateway"),
        ip_range=body.get("ip_range"),
        options={str(k): str(v) for k, v in (body.get("options") or {}).items()},
        internal=bool(body.get("internal", False)),
    ).to_dict()


@route("POST", "/networks/prune")
def networks_prune(c: Controller, p: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    return {"removed": c.prune_networks()}


@route("GET", "/networks/(?P<name>[^/]+)")
def networks_inspect(c: Controller, p: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    return c.inspect_network(p["name"])


@route("DELETE", "/networks/(?P<name>[^/]+)")
def networks_remove(c: Controller, p: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    c.remove_network(p["name"])
    return {"removed": p["name"]}


@route("POST", "/networks/(?P<name>[^/]+)/connect")
def networks_connect(c: Controller, p: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    done = c.connect(p["name"], _str(body, "container"), body.get("ip"), _str_list(body, "aliases"))
    return dict(done.value.to_dict(), lagging=done.lagging)


@route("POST", "/networks/(?P<name>[^/]+)/disconnect")
def networks_disconnect(c: Controller, p: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    c.disconnect(p["name"], _str(body, "container"))
    return {"disconnected": body["container"]}


@route("GET", "/nodes")
def nodes_list(c: Controller, p: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    return c.nodes()


@route("POST", "/cni/add")
def cni_add(c: Controller, p: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    ports = body.get("port_mappings") or []
    if not isinstance(ports, list) or not all(isinstance(x, dict) for x in ports):
        raise InvalidInput("port_mappings must be a list of objects")
    return CniDoor(c).add(
        container_id=_str(body, "container_id"),
        netns_path=_str(body, "netns"),
        ifname=_str(body, "ifname"),
        network_name=_str(body, "network"),
        ip=body.get("ip"),
        mac=body.get("mac"),
        publish=ports,
        aliases=_str_list(body, "aliases"),
    )


@route("POST", "/cni/del")
def cni_del(c: Controller, p: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    CniDoor(c).delete(_str(body, "container_id"), body.get("ifname") or "", _str(body, "network"))
    return {}


@route("POST", "/cni/check")
def cni_check(c: Controller, p: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    CniDoor(c).check(_str(body, "container_id"), _str(body, "ifname"), _str(body, "network"))
    return {}


@route("POST", "/cni/gc")
def cni_gc(c: Controller, p: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    valid = body.get("valid") or []
    if not isinstance(valid, list) or not all(isinstance(v, dict) for v in valid):
        raise InvalidInput("valid must be a list of {containerID, ifname} objects")
    pairs = [(str(v.get("containerID", "")), str(v.get("ifname", ""))) for v in valid]
    return {"removed": CniDoor(c).gc(_str(body, "network"), pairs)}


@route("GET", "/containers")
def containers_list(c: Controller, p: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    return c.list_containers(all_=_flag(q, "all"))


@route("POST", "/containers")
def containers_create(c: Controller, p: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    cmd = body.get("cmd")
    if not isinstance(cmd, list) or not all(isinstance(a, str) for a in cmd):
        raise InvalidInput("cmd must be a list of strings")
    done = c.create_container(
        cmd=cmd,
        name=body.get("name"),
        net=body.get("net"),
        ip=body.get("ip"),
        hostname=body.get("hostname"),
        detach=bool(body.get("detach", False)),
        auto_remove=bool(body.get("auto_remove", False)),
        rootfs=body.get("rootfs"),
        publish=_str_list(body, "publish"),
        aliases=_str_list(body, "aliases"),
    )
    container = done.value
    out = c.inspect_container(container.name)
    out["lagging"] = done.lagging
    if not container.detach:
        out["process"] = c.process_spec(container.name)
    return out


@route("POST", "/containers/reap/(?P<id>[0-9a-f]+)")
def containers_reap(c: Controller, p: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    return {"removed": c.reap(p["id"])}


@route("GET", "/containers/(?P<name>[^/]+)")
def containers_inspect(c: Controller, p: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    return c.inspect_container(p["name"])


@route("GET", "/containers/(?P<name>[^/]+)/logs")
def containers_logs(c: Controller, p: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    return {"log": c.logs(p["name"])}


@route("POST", "/containers/(?P<name>[^/]+)/started")
def containers_started(c: Controller, p: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    return c.mark_started(p["name"], int(body["pid"]), int(body["start_time"])).to_dict()


@route("POST", "/containers/(?P<name>[^/]+)/exited")
def containers_exited(c: Controller, p: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    return c.mark_exited(p["name"], int(body["code"])).to_dict()


@route("POST", "/containers/(?P<name>[^/]+)/stop")
def containers_stop(c: Controller, p: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    return c.stop_container(p["name"], float(body.get("timeout", 10))).to_dict()


@route("DELETE", "/containers/(?P<name>[^/]+)")
def containers_remove(c: Controller, p: dict[str, str], body: dict[str, Any], q: dict[str, list[str]]) -> Any:
    c.remove_container(p["name"], force=_flag(q, "force"))
    return {"removed": p["name"]}


def _str_list(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f"{key!r} must be a list of strings")
    return value


def _str(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"missing {key!r} in the request")
    return value


class _RequestHandler(BaseHTTPRequestHandler):
    server: _UnixHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s", format % args)

    def address_string(self) -> str:
        return "unix"

    def _handle(self, method: str) -> None:
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        status, payload = 200, None
        try:
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                raise InvalidInput("malformed JSON in the request body") from None
            if not isinstance(body, dict):
                raise InvalidInput("the request body must be a JSON object")
            for verb, pattern, fn in ROUTES:
                match = pattern.match(url.path)
                if match and verb == method:
                    payload = fn(self.server.controller, match.groupdict(), body, parse_qs(url.query))
                    break
            else:
                status, payload = 404, {"error": f"no such endpoint: {method} {url.path}", "kind": "NotFound"}
        except TetherError as exc:
            status, payload = exc.http_status, exc.to_wire()
        except Exception as exc:  # a bug: keep the traceback in the daemon's log, one line to the client
            log.exception("internal error on %s %s", method, url.path)
            status, payload = 500, {"error": f"internal error: {exc}", "kind": "SystemFailure"}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


class _UnixHTTPServer(socketserver.UnixStreamServer):
    """Requests are served by a fixed pool of threads: each keeps its store connection and
    netlink sockets across requests instead of opening (and leaking) them per request."""

    request_queue_size = 512

    def __init__(self, path: str, controller: Controller, handler: type[BaseHTTPRequestHandler]) -> None:
        self.controller = controller
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="tether-api")
        super().__init__(path, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self._pool.submit(self._serve_one, request, client_address)

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)


class ApiServer:
    """Serves the controller on ``socket_path`` (mode 0600) until ``shutdown``; ``handler``
    speaks the protocol (tether's own API by default, Docker's plugin API for the driver)."""

    def __init__(
        self, controller: Controller, socket_path: str, handler: type[BaseHTTPRequestHandler] | None = None
    ) -> None:
        os.makedirs(os.path.dirname(socket_path) or ".", exist_ok=True)
        if os.path.exists(socket_path):
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(socket_path)
            except OSError:
                os.unlink(socket_path)  # stale socket of a dead daemon
            else:
                raise Conflict(f"another daemon already serves {socket_path}: stop it or choose another socket path")
            finally:
                probe.close()
        old = os.umask(0o177)
        try:
            self.httpd = _UnixHTTPServer(socket_path, controller, handler or _RequestHandler)
        finally:
            os.umask(old)
        os.chmod(socket_path, 0o600)
        self.socket_path = socket_path

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def serve_in_thread(self, name: str = "tether-api") -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name=name, daemon=True)
        thread.start()
        return thread

    def shutdown(self) -> None:
        """Stop ``serve_forever`` (which must be running) and close."""
        self.httpd.shutdown()
        self.close()

    def close(self) -> None:
        """Close the socket and remove its file (also when it was never served)."""
        self.httpd.server_close()
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
