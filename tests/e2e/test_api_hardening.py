"""The daemon's API against clients that misbehave, on a real daemon in its own namespace:
idle and half-sent connections never block another client, malformed requests are a 400
with one JSON line and change nothing, and the daemon never takes over a socket path that
is not a stale socket."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Host, _new_host

from tether.api.client import Client


def daemon_log(host: Host) -> str:
    with open(os.path.join(host.state_dir, "daemon.log")) as f:
        return f.read()


def exchange(path: str, data: bytes, timeout: float = 10.0) -> tuple[int, str, bytes]:
    """Raw bytes in; (status, content type, body) of the reply, read until the daemon closes."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(path)
    try:
        s.sendall(data)
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    finally:
        s.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers.get("content-type", ""), rest[: int(headers.get("content-length", len(rest)))]


def post(path: str, target: str, body: bytes) -> tuple[int, str, bytes]:
    head = f"POST {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    return exchange(path, head.encode() + body)


def api_state(host: Host) -> Any:
    client = Client(host.socket, timeout=30)
    return client.get("/networks"), client.get("/containers?all=1")


@pytest.fixture(scope="module")
def served(request: pytest.FixtureRequest) -> Iterator[Host]:
    """A daemon with a network and a running container, serving Docker's plugin protocol too."""
    host = _new_host()
    request.addfinalizer(host.cleanup)
    host.daemon_args = ["--docker-plugin", os.path.join(host.state_dir, "plugin.sock")]
    host.start_daemon()
    host.tether("network", "create", "--subnet", "10.236.0.0/24", "base")
    host.tether("run", "-d", "--name", "held", "--net", "base", "--", "sleep", "600")
    yield host


# --------------------------------------------------------------------------- idle clients
def test_idle_and_half_sent_connections_do_not_block_network_ls(served: Host) -> None:
    held: list[socket.socket] = []
    try:
        for i in range(240):
            s = socket.socket(socket.AF_UNIX)
            s.connect(served.socket)
            if 200 <= i < 220:
                s.sendall(b"GET /networks HTTP/1.1\r\nHost: x\r\n")  # half a head
            elif i >= 220:
                s.sendall(b'POST /networks HTTP/1.1\r\nContent-Length: 200\r\n\r\n{"name": "x"')  # half a body
            held.append(s)
        time.sleep(0.3)  # every one of them accepted and waiting
        for _ in range(3):
            start = time.monotonic()
            out = served.tether("network", "ls").stdout
            assert time.monotonic() - start < 1.0
            assert "base" in out
        start = time.monotonic()
        Client(served.socket, timeout=5).get("/networks")
        assert time.monotonic() - start < 0.2
    finally:
        for s in held:
            s.close()
    time.sleep(0.5)
    served.tether("network", "ls")
    log = daemon_log(served)
    assert "Traceback" not in log and "BrokenPipe" not in log and "ConnectionReset" not in log, log[-3000:]


# --------------------------------------------------------------------------- malformed requests
DEEP = b"[" * 100_000 + b"]" * 100_000
MALFORMED = [
    ("/networks", b'{"name": "bad1", "subnet": 123}', "subnet"),
    ("/networks", b'{"subnet": 123}', "subnet"),
    ("/networks", b'{"driver": "bridge"}', "name"),
    ("/networks", b'{"name": "bad2", "options": [1, 2]}', "options"),
    ("/networks", b'{"name": 123}', "name"),
    ("/networks", b'{"name": "bad3", "internal": "no"}', "internal"),
    ("/networks", b'{"name": "bad4", "colour": "blue"}', "colour"),
    ("/networks", DEEP, "object"),
    ("/networks", b'{"name": "bad5", "options": ' + DEEP + b"}", "options"),
    ("/containers", b'{"cmd": ["true"], "name": "bad6", "hostname": 5}', "hostname"),
    ("/containers/held/exited", b'{"code": "abc"}', "code"),
    ("/containers/held/exited", b"{}", "code"),
    ("/containers/held/started", b'{"pid": "x", "start_time": 1}', "pid"),
    ("/containers/held/stop", b'{"timeout": "abc"}', "timeout"),
    ("/networks/base/connect", b'{"container": "held", "ip": 5}', "ip"),
    ("/cni/add", b'{"container_id": "c", "netns": "/x", "ifname": "eth0", "network": "base", "port_mappings": [1]}',
     "port_mappings"),
]


@pytest.mark.parametrize("target,body,needle", MALFORMED, ids=[f"{t} {b[:30]!r}" for t, b, _ in MALFORMED])
def test_malformed_request_is_400_one_json_line(served: Host, target: str, body: bytes, needle: str) -> None:
    before = api_state(served)
    status, content_type, data = post(served.socket, target, body)
    assert status == 400, data
    assert content_type == "application/json" and b"\n" not in data
    reply = json.loads(data)
    assert reply["kind"] == "InvalidInput" and needle in reply["error"], reply
    assert api_state(served) == before


@pytest.mark.parametrize(
    "head,status,needle",
    [
        (b"POST /networks HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400, "Content-Length"),
        (b"POST /networks HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400, "Content-Length"),
        (b"POST /networks HTTP/1.1\r\nContent-Length: 50000000\r\n\r\n", 413, "exceeds"),
        (b"PUT /networks HTTP/1.1\r\nConnection: close\r\n\r\n", 501, "method"),
        (b"GET /networks HTTP/1.1\r\n" + b"X: y\r\n" * 150 + b"\r\n", 431, "headers"),
        (b"NONSENSE\r\n\r\n", 400, "request"),
    ],
)
def test_bad_framing_is_answered_in_json(served: Host, head: bytes, status: int, needle: str) -> None:
    got, content_type, data = exchange(served.socket, head)
    assert got == status and content_type == "application/json", data
    assert needle.lower() in json.loads(data)["error"].lower()


@pytest.mark.parametrize(
    "call,body,needle",
    [
        ("NetworkDriver.CreateNetwork", b'{"NetworkID": 5}', "NetworkID"),
        ("NetworkDriver.Join", b'{"NetworkID": "n", "EndpointID": "e", "SandboxKey": ["x"]}', "SandboxKey"),
        ("IpamDriver.RequestPool", b'{"Pool": "10.0.0.0/24", "V6": "no"}', "V6"),
        ("NetworkDriver.DiscoverNew", b'{"DiscoveryData": ' + DEEP + b"}", "nested"),
    ],
)
def test_docker_plugin_refuses_in_its_own_format(served: Host, call: str, body: bytes, needle: str) -> None:
    before = api_state(served)
    status, _, data = post(os.path.join(served.state_dir, "plugin.sock"), "/" + call, body)
    reply = json.loads(data)
    assert status == 500 and list(reply) == ["Err"] and needle in reply["Err"], reply
    assert api_state(served) == before


def test_nothing_malformed_reached_the_controller(served: Host) -> None:
    """All of them again, checked against the whole host (store and kernel), and the log:
    no internal error, no traceback."""
    snapshot = served.snapshot()
    for target, body, _ in MALFORMED:
        post(served.socket, target, body)
    assert served.snapshot() == snapshot
    log = daemon_log(served)
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]


# --------------------------------------------------------------------------- the socket path
def start_refused(host: Host) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*host.enter(), sys.executable, "-m", "tether.cli", "daemon", "--state-dir", host.state_dir,
         "--socket", host.socket, "--netns-prefix", host.prefix],
        capture_output=True, text=True, timeout=60, check=False,
    )


def assert_one_line_refusal(result: subprocess.CompletedProcess[str], what: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and what in errors[0], result.stderr


def test_a_regular_file_at_the_socket_path_is_refused_and_kept(bare_host: Host) -> None:
    with open(bare_host.socket, "w") as f:
        f.write("precious")
    assert_one_line_refusal(start_refused(bare_host), "is a regular file")
    with open(bare_host.socket) as f:
        assert f.read() == "precious"


def test_a_directory_at_the_socket_path_is_refused_and_kept(bare_host: Host) -> None:
    os.makedirs(os.path.join(bare_host.socket, "inside"))
    assert_one_line_refusal(start_refused(bare_host), "is a directory")
    assert os.path.isdir(os.path.join(bare_host.socket, "inside"))
    os.rmdir(os.path.join(bare_host.socket, "inside"))
    os.rmdir(bare_host.socket)


def test_a_live_socket_is_refused_and_a_stale_one_replaced(bare_host: Host) -> None:
    other = socket.socket(socket.AF_UNIX)  # someone else's server on the path
    other.bind(bare_host.socket)
    other.listen(8)
    try:
        assert_one_line_refusal(start_refused(bare_host), "another daemon already serves")
        assert os.path.exists(bare_host.socket)
    finally:
        other.close()  # its file stays behind: a stale socket, as a killed daemon leaves
    assert os.path.exists(bare_host.socket)
    bare_host.start_daemon()
    bare_host.tether("network", "ls")
