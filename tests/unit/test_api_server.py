"""The daemon's API sockets in-process, against a real controller on the fakes: idle and
slow clients never hold a worker, every malformed request is a 400 with one JSON line and
changes nothing, errors are JSON on every path, and the socket path is only ever taken
over from a stale socket."""

from __future__ import annotations

import copy
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tether.api.client import Client
from tether.api.docker_plugin import DockerPluginServer
from tether.api.listener import Limits
from tether.api.server import ApiServer
from tether.controller import Controller
from tether.errors import Conflict, InvalidInput
from tether.testing.datapath import RecordingDatapath
from tether.testing.memory import MemoryStore


# --------------------------------------------------------------------------- helpers
def state(c: Controller) -> Any:
    """Everything a refused request must leave as it was: the store and the fake kernel
    (an IPAM cursor is a search hint, not state)."""
    dp: RecordingDatapath = c.ctx.datapath  # type: ignore[assignment]
    keys = sorted((kv.key, json.dumps(kv.value, sort_keys=True)) for kv in c.store.list("/"))
    return (
        [k for k in keys if not k[0].startswith("/ipam-cursor/")],
        copy.deepcopy([dp.netns, dp.bridges, dp.veths, dp.vxlans, dp.addresses, dp.default_routes, dp.held_ports]),
    )


def exchange(path: str, data: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read until the server closes; (status, headers, body) of the first reply."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(path)
    try:
        s.sendall(data)
        raw = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            raw += chunk
    finally:
        s.close()
    return parse_reply(raw)


def parse_reply(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", len(rest)))
    return int(lines[0].split()[1]), headers, rest[:length]


def request(path: str, method: str, target: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    head = f"{method} {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Length: {len(body)}\r\n"
    return exchange(path, head.encode() + b"\r\n" + (body or b""))


class Captured(logging.Handler):
    """Every record of tether's loggers, for "no traceback, nothing above a warning"."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def problems(self) -> list[str]:
        return [
            self.format(r) for r in self.records if r.exc_info or r.levelno >= logging.ERROR or "Traceback" in r.getMessage()
        ]


@pytest.fixture
def log_capture() -> Iterator[Captured]:
    handler = Captured()
    logger = logging.getLogger("tether")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


@pytest.fixture
def ctl(tmp_path: Path) -> Controller:
    c = Controller(MemoryStore(), RecordingDatapath(["192.168.1.0/24"]), str(tmp_path), netns_prefix="u-")
    c.default_network()  # made on first use otherwise: not a change a refused request made
    return c


@pytest.fixture
def api(ctl: Controller, tmp_path: Path, log_capture: Captured) -> Iterator[str]:
    server = ApiServer(ctl, str(tmp_path / "api.sock"), limits=Limits(read_timeout=1.5))
    server.serve_in_thread()
    try:
        yield server.socket_path
    finally:
        server.shutdown()
    assert log_capture.problems() == []


# --------------------------------------------------------------------------- idle clients
def test_idle_and_partial_clients_never_hold_a_worker(api: str) -> None:
    held = []
    try:
        for i in range(200):
            s = socket.socket(socket.AF_UNIX)
            s.connect(api)
            if i % 4 == 1:
                s.sendall(b"GET /networks HTTP/1.1\r\nHost: x\r\n")  # half a head
            elif i % 4 == 2:
                s.sendall(b"POST /networks HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"na")  # half a body
            held.append(s)
        start = time.monotonic()
        for _ in range(5):
            assert Client(api, timeout=5).get("/networks")
        assert time.monotonic() - start < 1.0
    finally:
        for s in held:
            s.close()
    time.sleep(0.2)  # the listener sees them go: logged at debug level at most (checked by the fixture)
    assert Client(api, timeout=5).get("/ping")["ok"]


def test_read_timeout_closes_idle_and_answers_partial(api: str) -> None:
    idle = socket.socket(socket.AF_UNIX)
    idle.connect(api)
    idle.settimeout(5)
    partial = socket.socket(socket.AF_UNIX)
    partial.connect(api)
    partial.settimeout(5)
    partial.sendall(b"POST /networks HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")
    start = time.monotonic()
    assert idle.recv(100) == b""  # closed without a word: it never asked anything
    reply = b""
    while chunk := partial.recv(4096):
        reply += chunk
    status, _, body = parse_reply(reply)
    assert 1.0 < time.monotonic() - start < 4.0
    assert status == 408 and json.loads(body)["kind"] == "InvalidInput"
    idle.close()
    partial.close()


def test_a_client_that_goes_away_mid_reply_leaves_no_traceback(api: str, ctl: Controller) -> None:
    for i in range(50):
        ctl.create_network(f"n{i}", subnet=f"10.{100 + i}.0.0/24")
    for _ in range(20):
        s = socket.socket(socket.AF_UNIX)
        s.connect(api)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        s.sendall(b"GET /networks HTTP/1.1\r\n\r\n")
        s.close()  # before reading the reply: the worker's write fails (checked by the fixture)
    assert len(Client(api, timeout=5).get("/networks")) == 51


def test_keep_alive_and_pipelined_requests(api: str) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(api)
    s.sendall(b"GET /ping HTTP/1.1\r\n\r\nGET /networks HTTP/1.1\r\n\r\n")
    raw = b""
    while raw.count(b"HTTP/1.1 200") < 2:
        raw += s.recv(65536)
    s.sendall(b"GET /ping HTTP/1.1\r\nConnection: close\r\n\r\n")
    while chunk := s.recv(65536):
        raw += chunk
    assert raw.count(b"HTTP/1.1 200") == 3
    s.close()


# --------------------------------------------------------------------------- malformed requests
MALFORMED = [
    ("POST", "/networks", b'{"name": "bad", "subnet": 123}', "subnet"),
    ("POST", "/networks", b'{"name": "bad", "options": [1, 2]}', "options"),
    ("POST", "/networks", b'{"name": 123}', "name"),
    ("POST", "/networks", b'{"name": "bad", "internal": "no"}', "internal"),
    ("POST", "/networks", b'{"name": "bad", "colour": "blue"}', "colour"),
    ("POST", "/networks", b'{"name": "bad", "options": {"mtu": [1]}}', "options"),
    ("POST", "/networks", b"[" * 100_000 + b"]" * 100_000, "object"),
    ("POST", "/networks", b'{"name": "bad", "options": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "options"),
    ("POST", "/networks", b'{"name": "bad", "subnet": NaN}', "JSON"),
    ("POST", "/networks", b'{"name": "bad\\ud800"}', "JSON"),
    ("POST", "/networks", b"\xff\xfe", "JSON"),
    ("POST", "/containers", b'{"cmd": ["true"], "hostname": 5}', "hostname"),
    ("POST", "/containers", b'{"cmd": "true"}', "cmd"),
    ("POST", "/containers", b'{"cmd": ["true"], "detach": 1}', "detach"),
    ("POST", "/containers/held/exited", b'{"code": "abc"}', "code"),
    ("POST", "/containers/held/exited", b"{}", "code"),
    ("POST", "/containers/held/exited", b'{"code": 1e400}', "code"),
    ("POST", "/containers/held/started", b'{"pid": "x", "start_time": 1}', "pid"),
    ("POST", "/containers/held/started", b'{"pid": 99999999999999999999999, "start_time": 1}', "pid"),
    ("POST", "/containers/held/stop", b'{"timeout": "abc"}', "timeout"),
    ("POST", "/containers/held/stop", b'{"timeout": 1e300}', "timeout"),
    ("POST", "/networks/base/connect", b'{"container": "held", "aliases": "x"}', "aliases"),
    ("POST", "/networks/base/disconnect", b'{"container": 7}', "container"),
    ("POST", "/cni/add", b'{"container_id": "c", "netns": "/x", "ifname": "eth0", "network": "base", "port_mappings": [{"hostPort": "80"}]}', "hostPort"),
    ("POST", "/cni/gc", b'{"network": "base", "valid": [{"containerID": 5}]}', "containerID"),
    ("POST", "/cni/del", b'{"container_id": ["c"], "network": "base"}', "container_id"),
    ("POST", "/networks/prune", b'{"all": true}', "all"),
    ("GET", "/networks", b'"x"', "object"),
]


@pytest.fixture
def populated(api: str, ctl: Controller) -> str:
    ctl.create_network("base", subnet="10.230.0.0/16")
    ctl.create_container(["sleep", "1"], name="held", net="base")
    return api


@pytest.mark.parametrize("method,target,body,needle", MALFORMED, ids=[f"{m[1]} {m[2][:40]!r}" for m in MALFORMED])
def test_malformed_body_is_400_one_line_and_changes_nothing(
    populated: str, ctl: Controller, method: str, target: str, body: bytes, needle: str
) -> None:
    before = state(ctl)
    status, headers, data = request(populated, method, target, body)
    assert status == 400, data
    assert headers["content-type"] == "application/json"
    assert data.count(b"\n") == 0
    reply = json.loads(data)
    assert reply["kind"] == "InvalidInput" and needle.lower() in reply["error"].lower(), reply
    assert state(ctl) == before


@pytest.mark.parametrize(
    "head,status,needle",
    [
        (b"POST /networks HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400, "Content-Length"),
        (b"POST /networks HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400, "Content-Length"),
        (b"POST /networks HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400, "Content-Length"),
        (b"POST /networks HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", 413, "exceeds"),
        (b"POST /networks HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n", 413, "exceeds"),
        (b"POST /networks HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "chunked"),
        (b"GET /networks HTTP/1.1\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n", 431, "exceed"),
        (b"GET /networks HTTP/1.1\r\n" + b"X: y\r\n" * 150 + b"\r\n", 431, "headers"),
        (b"PUT /networks HTTP/1.1\r\nConnection: close\r\n\r\n", 501, "method"),
        (b"HEAD /networks HTTP/1.1\r\nConnection: close\r\n\r\n", 501, "method"),
        (b"GARBAGE\r\n\r\n", 400, "request"),
        (b"GET /networks HTTP/9.9\r\n\r\n", 505, "version"),
        (b"GET /nosuch HTTP/1.1\r\nConnection: close\r\n\r\n", 404, "no such endpoint"),
    ],
)
def test_framing_errors_are_json_too(populated: str, ctl: Controller, head: bytes, status: int, needle: str) -> None:
    before = state(ctl)
    got, headers, data = exchange(populated, head)
    assert got == status, data
    assert headers["content-type"] == "application/json"
    reply = json.loads(data)
    assert set(reply) == {"error", "kind"} and needle.lower() in reply["error"].lower(), reply
    assert state(ctl) == before


def test_what_the_clients_send_is_still_accepted(populated: str, ctl: Controller) -> None:
    """The bodies tether's CLI, CNI plugin and demo send, None values and all."""
    client = Client(populated, timeout=5)
    net = client.post(
        "/networks",
        {"name": "appnet", "driver": "bridge", "subnet": None, "gateway": None, "ip_range": None, "options": {}, "internal": False},
    )
    assert net["name"] == "appnet"
    assert client.post("/networks", {"name": "num", "options": {"mtu": 1400, "icc": "false"}})["options"]["mtu"] == "1400"
    created = client.post(
        "/containers",
        {"cmd": ["sleep", "1"], "name": "c1", "net": "appnet", "ip": None, "hostname": None, "detach": False,
         "auto_remove": False, "rootfs": None, "publish": [], "aliases": []},
    )
    assert created["name"] == "c1" and "process" in created
    client.post("/containers/c1/started", {"pid": 1 << 22, "start_time": 5})
    client.post("/containers/c1/exited", {"code": 0})
    client.post("/networks/base/connect", {"container": "c1", "ip": None, "aliases": []})
    assert client.post("/networks/base/disconnect", {"container": "c1"}) == {"disconnected": "c1"}
    assert client.post("/containers/c1/stop", {"timeout": 10.0})["name"] == "c1"
    assert client.post("/containers/c1/stop", {})["name"] == "c1"
    assert client.post("/cni/del", {"container_id": "abc", "ifname": "eth0", "network": "base"}) == {}
    assert client.post("/cni/gc", {"network": "base", "valid": [{"containerID": "abc", "ifname": "eth0"}]}) == {"removed": []}
    # c1 exited, so it holds no endpoint (as in Docker): appnet goes too; `held` keeps base
    assert client.post("/networks/prune") == {"removed": ["appnet", "num"]}
    assert client.delete("/containers/c1?force=1") == {"removed": "c1"}


def test_client_rebuilds_the_error(populated: str) -> None:
    with pytest.raises(InvalidInput, match="internal must be a boolean"):
        Client(populated, timeout=5).post("/networks", {"name": "x", "internal": "no"})


# --------------------------------------------------------------------------- Docker's socket
@pytest.fixture
def plugin(ctl: Controller, tmp_path: Path, log_capture: Captured) -> Iterator[str]:
    server = DockerPluginServer(ctl, "tether", str(tmp_path / "plugin.sock"))
    server.serve_in_thread()
    try:
        yield server.socket_path
    finally:
        server.shutdown()
    assert log_capture.problems() == []


@pytest.mark.parametrize(
    "call,body,needle",
    [
        ("NetworkDriver.CreateNetwork", b'{"NetworkID": 5}', "NetworkID"),
        ("NetworkDriver.CreateNetwork", b'{"NetworkID": "n", "IPv4Data": {"Pool": 1}}', "IPv4Data"),
        ("NetworkDriver.CreateNetwork", b'{"NetworkID": "n", "Options": {"com.docker.network.generic": [1]}}', "generic"),
        ("NetworkDriver.CreateEndpoint", b'{"NetworkID": "n", "EndpointID": "e", "Interface": "x"}', "Interface"),
        ("NetworkDriver.Join", b'{"NetworkID": "n", "EndpointID": "e", "SandboxKey": 1}', "SandboxKey"),
        ("NetworkDriver.ProgramExternalConnectivity",
         b'{"Options": {"com.docker.network.portmap": [{"Proto": 6, "HostPort": 1e400}]}}', "HostPort"),
        ("IpamDriver.RequestPool", b'{"Pool": "10.0.0.0/24", "V6": "no"}', "V6"),
        ("IpamDriver.RequestAddress", b'{"PoolID": "p", "Options": {"RequestAddressType": 1}}', "Options"),
        ("NetworkDriver.DiscoverNew", b'{"DiscoveryData": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested"),
        ("Plugin.Activate", b"[1]", "object"),
        ("IpamDriver.ReleasePool", b"{not json", "JSON"),
    ],
)
def test_docker_bodies_are_checked_and_refused_in_its_format(
    plugin: str, ctl: Controller, call: str, body: bytes, needle: str
) -> None:
    before = state(ctl)
    status, headers, data = request(plugin, "POST", "/" + call, body)
    assert status == 500 and headers["content-type"] == "application/vnd.docker.plugins.v1.2+json"
    reply = json.loads(data)
    assert list(reply) == ["Err"] and needle.lower() in reply["Err"].lower(), reply
    assert "internal error" not in reply["Err"]
    assert state(ctl) == before


def test_docker_framing_errors_keep_its_format(plugin: str) -> None:
    status, _, data = exchange(plugin, b"POST /Plugin.Activate HTTP/1.1\r\nContent-Length: abc\r\n\r\n")
    assert status == 500 and "Content-Length" in json.loads(data)["Err"]
    status, _, data = exchange(plugin, b"GET /Plugin.Activate HTTP/1.1\r\n\r\n")
    assert status == 500 and "method" in json.loads(data)["Err"].lower()


def test_docker_calls_with_unknown_keys_and_no_body_still_work(plugin: str) -> None:
    assert json.loads(request(plugin, "POST", "/Plugin.Activate")[2]) == {"Implements": ["NetworkDriver", "IpamDriver"]}
    status, _, data = request(
        plugin, "POST", "/IpamDriver.RequestPool",
        b'{"AddressSpace": "tether", "Pool": "10.44.0.0/24", "SubPool": "", "Options": {}, "V6": false, "Future": [1]}',
    )
    assert status == 200 and json.loads(data)["Pool"] == "10.44.0.0/24"
    status, _, data = request(
        plugin, "POST", "/NetworkDriver.CreateNetwork",
        b'{"NetworkID": "' + b"d" * 64 + b'", "Options": {"com.docker.network.enable_ipv6": false, '
        b'"com.docker.network.generic": {"tether.network": "dnet"}}, '
        b'"IPv4Data": [{"AddressSpace": "tether", "Pool": "10.44.0.0/24", "Gateway": "10.44.0.1/24", "AuxAddresses": null}], '
        b'"IPv6Data": null}',
    )
    assert status == 200, data


# --------------------------------------------------------------------------- the socket path
def test_a_regular_file_at_the_socket_path_is_refused_and_kept(ctl: Controller, tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    path.write_text("precious")
    with pytest.raises(Conflict, match="is a regular file"):
        ApiServer(ctl, str(path))
    assert path.read_text() == "precious"


def test_a_directory_at_the_socket_path_is_refused_and_kept(ctl: Controller, tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    (path / "inside").mkdir(parents=True)
    with pytest.raises(Conflict, match="is a directory"):
        ApiServer(ctl, str(path))
    assert (path / "inside").is_dir()


def test_a_symlink_at_the_socket_path_is_refused_and_kept(ctl: Controller, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("x")
    path = tmp_path / "api.sock"
    path.symlink_to(target)
    with pytest.raises(Conflict, match="symbolic link"):
        ApiServer(ctl, str(path))
    assert path.is_symlink() and target.read_text() == "x"


def test_a_live_socket_is_a_conflict_and_a_stale_one_is_replaced(ctl: Controller, tmp_path: Path) -> None:
    path = str(tmp_path / "api.sock")
    first = ApiServer(ctl, path)
    first.serve_in_thread()
    try:
        with pytest.raises(Conflict, match="another daemon already serves"):
            ApiServer(ctl, path)
    finally:
        first.shutdown()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)  # bound, never listening: what a killed daemon leaves
    stale.close()
    second = ApiServer(ctl, path)
    second.serve_in_thread()
    try:
        assert Client(path, timeout=5).get("/ping")["ok"]
    finally:
        second.shutdown()
    assert not os.path.exists(path)


def test_shutdown_with_connections_open(ctl: Controller, tmp_path: Path) -> None:
    server = ApiServer(ctl, str(tmp_path / "api.sock"))
    thread = server.serve_in_thread()
    held = [socket.socket(socket.AF_UNIX) for _ in range(10)]
    for s in held:
        s.connect(server.socket_path)
    done = threading.Event()
    threading.Thread(target=lambda: (server.shutdown(), done.set()), daemon=True).start()
    assert done.wait(5)
    thread.join(5)
    assert not thread.is_alive()
    for s in held:
        s.settimeout(2)
        assert s.recv(10) == b""
        s.close()
