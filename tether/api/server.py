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
from .listener import HttpListener, Limits, RequestHandler, Streaming
from .schema import Empty, option_text

__all__ = ["ROUTES", "ApiServer"]

log = logging.getLogger("tether.api")

Query = dict[str, list[str]]
Handler = Callable[[Controller, dict[str, str], Any, Query], Any]
# (method, path pattern, body schema, handler)
ROUTES: list[tuple[str, re.Pattern[str], type[Any], Handler]] = []


def route(method: str, pattern: str, body: type[Any] = Empty) -> Callable[[Handler], Handler]:
    """Register a handler; ``body`` is the schema its request body is decoded into."""

    def register(fn: Handler) -> Handler:
        ROUTES.append((method, re.compile("^" + pattern + "$"), body, fn))
        return fn

    return register


def _flag(query: Query, name: str) -> bool:
    return query.get(name, ["0"])[0] in ("1", "true", "yes")


@route("GET", "/ping")
def ping(c: Controller, p: dict[str, str], body: Empty, q: Query) -> Any:
    from .. import __version__

    return {
        "ok": True, "pid": os.getpid(), "version": __version__, "state_dir": c.state_dir,
        "netns_prefix": c.ctx.netns_prefix,
    }


@route("GET", "/networks")
def networks_list(c: Controller, p: dict[str, str], body: Empty, q: Query) -> Any:
    return c.list_networks()


@route("POST", "/networks", schema.NetworkCreate)
def networks_create(c: Controller, p: dict[str, str], body: schema.NetworkCreate, q: Query) -> Any:
    return c.create_network(
        name=body.name,
        driver=body.driver or "bridge",
        subnet=body.subnet,
        gateway=body.gateway,
        ip_range=body.ip_range,
        options={k: option_text(v) for k, v in (body.options or {}).items()},
        internal=bool(body.internal),
        labels=body.labels or {},
        ipv6=bool(body.ipv6),
        subnet6=body.subnet6,
        gateway6=body.gateway6,
        aux_addresses=body.aux_addresses or {},
        ip_range6=body.ip_range6,
    ).to_dict()


@route("POST", "/networks/prune")
def networks_prune(c: Controller, p: dict[str, str], body: Empty, q: Query) -> Any:
    return {"removed": c.prune_networks()}


@route("GET", "/networks/(?P<name>[^/]+)")
def networks_inspect(c: Controller, p: dict[str, str], body: Empty, q: Query) -> Any:
    return c.inspect_network(p["name"])


@route("DELETE", "/networks/(?P<name>[^/]+)")
def networks_remove(c: Controller, p: dict[str, str], body: Empty, q: Query) -> Any:
    c.remove_network(p["name"])
    return {"removed": p["name"]}


@route("POST", "/networks/(?P<name>[^/]+)/connect", schema.NetworkConnect)
def networks_connect(c: Controller, p: dict[str, str], body: schema.NetworkConnect, q: Query) -> Any:
    done = c.connect(p["name"], body.container, body.ip, body.aliases or [], ip6=body.ip6)
    # an exited container only records the network: its interface comes with its next start
    return dict(done.value.to_dict() if done.value is not None else {}, lagging=done.lagging)


@route("POST", "/networks/(?P<name>[^/]+)/disconnect", schema.NetworkDisconnect)
def networks_disconnect(c: Controller, p: dict[str, str], body: schema.NetworkDisconnect, q: Query) -> Any:
    c.disconnect(p["name"], body.container)
    return {"disconnected": body.container}


@route("GET", "/nodes")
def nodes_list(c: Controller, p: dict[str, str], body: Empty, q: Query) -> Any:
    return c.nodes()


@route("POST", "/cni/add", schema.CniAdd)
def cni_add(c: Controller, p: dict[str, str], body: schema.CniAdd, q: Query) -> Any:
    return CniDoor(c).add(
        container_id=body.container_id,
        netns_path=body.netns,
        ifname=body.ifname,
        network_name=body.network,
        ip=body.ip,
        ip6=body.ip6,
        mac=body.mac,
        publish=[
            {"hostPort": m.hostPort, "containerPort": m.containerPort, "protocol": m.protocol, "hostIP": m.hostIP}
            for m in body.port_mappings or []
        ],
        aliases=body.aliases or [],
    )


@route("POST", "/cni/del", schema.CniDel)
def cni_del(c: Controller, p: dict[str, str], body: schema.CniDel, q: Query) -> Any:
    CniDoor(c).delete(body.container_id, body.ifname or "", body.network)
    return {}


@route("POST", "/cni/check", schema.CniCheck)
def cni_check(c: Controller, p: dict[str, str], body: schema.CniCheck, q: Query) -> Any:
    CniDoor(c).check(body.container_id, body.ifname, body.network)
    return {}


@route("POST", "/cni/gc", schema.CniGc)
def cni_gc(c: Controller, p: dict[str, str], body: schema.CniGc, q: Query) -> Any:
    pairs = [(v.containerID, v.ifname) for v in body.valid or []]
    return {"removed": CniDoor(c).gc(body.network, pairs)}


@route("GET", "/containers")
def containers_list(c: Controller, p: dict[str, str], body: Empty, q: Query) -> Any:
    return c.list_containers(all_=_flag(q, "all"))


@route("POST", "/containers", schema.ContainerCreate)
def containers_create(c: Controller, p: dict[str, str], body: schema.ContainerCreate, q: Query) -> Any:
    done = c.create_container(
        cmd=body.cmd,
        name=body.name,
        net=body.net,
        ip=body.ip,
        ip6=body.ip6,
        hostname=body.hostname,
        detach=bool(body.detach),
        auto_remove=bool(body.auto_remove),
        rootfs=body.rootfs,
        publish=body.publish or [],
        aliases=body.aliases or [],
        labels=body.labels or {},
        restart=body.restart,
        env=body.env or [],
        workdir=body.workdir,
        tty=bool(body.tty),
        interactive=bool(body.interactive),
        dns=body.dns or [],
        dns_search=body.dns_search or [],
        dns_options=body.dns_options or [],
        extra_hosts=body.extra_hosts or [],
        mac_address=body.mac_address,
        expose=body.expose or [],
        publish_all=bool(body.publish_all),
    )
    container = done.value
    out = c.inspect_container(container.name)
    out["lagging"] = done.lagging
    if not container.detach:
        out["process"] = c.process_spec(container.name)
    return out


@route("POST", "/containers/reap/(?P<id>[0-9a-f]+)")
def containers_reap(c: Controller, p: dict[str, str], body: Empty, q: Query) -> Any:
    return {"removed": c.reap(p["id"])}


@route("GET", "/containers/(?P<name>[^/]+)")
def containers_inspect(c: Controller, p: dict[str, str], body: Empty, q: Query) -> Any:
    return c.inspect_container(p["name"])


@route("GET", "/containers/(?P<name>[^/]+)/logs")
def containers_logs(c: Controller, p: dict[str, str], body: Empty, q: Query) -> Any:
    """``?since=OFFSET`` (the last reply's ``offset``), ``?tail=N``, ``?timestamps=1``."""
    return c.logs(p["name"], since=_count(q, "since"), tail=_count(q, "tail"), timestamps=_flag(q, "timestamps"))


def _count(query: Query, name: str) -> int | None:
    """A whole number >= 0 given in the query string, or None when absent."""
    text = query.get(name, [None])[0]
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise InvalidInput(f"invalid {name}={text!r}: give a whole number >= 0")
    return int(text)


@route("POST", "/containers/(?P<name>[^/]+)/started", schema.ContainerStarted)
def containers_started(c: Controller, p: dict[str, str], body: schema.ContainerStarted, q: Query) -> Any:
    return c.mark_started(p["name"], body.pid, body.start_time).to_dict()


@route("POST", "/containers/(?P<name>[^/]+)/exited", schema.ContainerExited)
def containers_exited(c: Controller, p: dict[str, str], body: schema.ContainerExited, q: Query) -> Any:
    return c.mark_exited(p["name"], body.code).to_dict()


@route("POST", "/containers/(?P<name>[^/]+)/stop", schema.ContainerStop)
def containers_stop(c: Controller, p: dict[str, str], body: schema.ContainerStop, q: Query) -> Any:
    return c.stop_container(p["name"], 10.0 if body.timeout is None else body.timeout).to_dict()


@route("POST", "/containers/(?P<name>[^/]+)/start")
def containers_start(c: Controller, p: dict[str, str], body: Empty, q: Query) -> Any:
    done = c.start_container(p["name"])
    return dict(done.value.to_dict(), lagging=done.lagging)


@route("POST", "/containers/(?P<name>[^/]+)/restart", schema.ContainerStop)
def containers_restart(c: Controller, p: dict[str, str], body: schema.ContainerStop, q: Query) -> Any:
    done = c.restart_container(p["name"], 10.0 if body.timeout is None else body.timeout)
    return dict(done.value.to_dict(), lagging=done.lagging)


@route("DELETE", "/containers/(?P<name>[^/]+)")
def containers_remove(c: Controller, p: dict[str, str], body: Empty, q: Query) -> Any:
    c.remove_container(p["name"], force=_flag(q, "force"))
    return {"removed": p["name"]}


def _kind(status: int) -> str:
    """The error class a status stands for, for errors raised outside the error tree
    (framing, http.server's own)."""
    if status == 404:
        return "NotFound"
    return "InvalidInput" if status < 500 or status == 501 else "SystemFailure"


class _RequestHandler(RequestHandler):
    """tether's own API: ``ROUTES``, errors as ``{"error", "kind"}``."""

    @classmethod
    def error_reply(cls, status: int, message: str) -> tuple[int, Any]:
        return status, {"error": message, "kind": _kind(status)}

    def _handle(self, method: str) -> None:
        url = urlparse(self.path)
        status, payload = 200, None
        try:
            for verb, pattern, body_schema, fn in ROUTES:
                match = pattern.match(url.path)
                if match and verb == method:
                    body = schema.decode(self.body, body_schema)
                    payload = fn(self.server.app, match.groupdict(), body, parse_qs(url.query))
                    break
            else:
                status, payload = 404, {"error": f"no such endpoint: {method} {url.path}", "kind": "NotFound"}
        except TetherError as exc:
            status, payload = exc.http_status, exc.to_wire()
        except Exception as exc:  # a bug: keep the traceback in the daemon's log, one line to the client
            log.exception("internal error on %s %s", method, url.path)
            status, payload = 500, {"error": f"internal error: {exc}", "kind": "SystemFailure"}
        if isinstance(payload, Streaming):  # a reply that lasts (GET /events)
            self.send_stream(payload)
            return
        self.send_json(status, payload)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


def _claim_socket_path(socket_path: str) -> None:
    """Make room for the socket: only a stale socket (nothing answers on it) is removed.
    Anything else there is refused with one line and left in place."""
    try:
        st = os.lstat(socket_path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise Conflict(f"cannot check {socket_path}: {exc.strerror}: choose another socket path") from exc
    if not stat.S_ISSOCK(st.st_mode):
        what = (
            "a directory" if stat.S_ISDIR(st.st_mode)
            else "a symbolic link" if stat.S_ISLNK(st.st_mode)
            else "a regular file" if stat.S_ISREG(st.st_mode)
            else "not a socket"
        )
        raise Conflict(
            f"{socket_path} exists and is {what}: tether only replaces a stale socket; "
            "move it away or choose another socket path"
        )
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(socket_path)
    except ConnectionRefusedError:
        os.unlink(socket_path)  # stale socket of a dead daemon
        return
    except OSError as exc:
        raise Conflict(f"cannot check the socket {socket_path}: {exc.strerror}: choose another socket path") from exc
    finally:
        probe.close()
    raise Conflict(f"another daemon already serves {socket_path}: stop it or choose another socket path")


class ApiServer:
    """Serves ``app`` (the controller by default) on ``socket_path`` (mode 0600) until
    ``shutdown``; ``handler`` speaks the protocol (tether's own API by default, Docker's
    plugin API for the driver); ``limits`` bound what a client may send and for how long."""

    def __init__(
        self,
        controller: Controller,
        socket_path: str,
        handler: type[RequestHandler] | None = None,
        app: Any = None,
        limits: Limits | None = None,
    ) -> None:
        directory = os.path.dirname(socket_path) or "."
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise Conflict(f"cannot create {directory} for the socket {socket_path}: {exc.strerror}") from exc
        _claim_socket_path(socket_path)
        old = os.umask(0o177)
        try:
            self.httpd = HttpListener(socket_path, handler or _RequestHandler, controller if app is None else app, limits)
        except OSError as exc:
            raise SystemFailure(f"cannot listen on {socket_path}: {exc.strerror or exc}") from exc
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
        """Stop ``serve_forever`` and close."""
        self.httpd.shutdown()
        self.close()

    def close(self) -> None:
        """Close the socket and remove its file (also when it was never served)."""
        self.httpd.server_close()
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass


from . import graph_route  # noqa: E402,F401  (registers GET /graph)
from . import events_route  # noqa: E402,F401  (registers GET /events)
from . import trace_route  # noqa: E402,F401  (registers POST /trace)
