"""Bad input: one line on stderr, a non-zero exit, no traceback, and nothing changed
(store and kernel alike)."""

from __future__ import annotations

import pytest

from conftest import Host

CASES = [
    ("malformed subnet", ["network", "create", "--subnet", "10.0.0.0/33", "bad"], "subnet"),
    ("not a cidr", ["network", "create", "--subnet", "banana", "bad"], "subnet"),
    ("host bits set", ["network", "create", "--subnet", "10.220.0.5/24", "bad"], "10.220.0.0/24"),
    ("overlapping subnet", ["network", "create", "--subnet", "10.230.0.0/16", "bad"], "overlaps"),
    ("gateway outside", ["network", "create", "--subnet", "10.231.0.0/24", "--gateway", "10.9.9.9", "bad"], "gateway"),
    ("ip-range outside", ["network", "create", "--subnet", "10.231.0.0/24", "--ip-range", "10.232.0.0/25", "bad"], "range"),
    ("taken network name", ["network", "create", "--subnet", "10.233.0.0/24", "base"], "already exists"),
    ("invalid network name", ["network", "create", "bad/name"], "invalid network name"),
    ("unknown driver", ["network", "create", "-d", "nosuch", "bad"], "driver"),
    ("unknown option", ["network", "create", "-o", "colour=blue", "bad"], "option"),
    ("bad mtu", ["network", "create", "-o", "mtu=12", "bad"], "mtu"),
    ("taken container name", ["run", "-d", "--name", "held", "--net", "base", "--", "sleep", "1"], "already in use"),
    ("invalid container name", ["run", "-d", "--name", "-x", "--", "true"], "invalid container name"),
    ("unknown network", ["run", "-d", "--net", "nosuch", "--", "true"], "not found"),
    ("unknown container for container mode", ["run", "-d", "--net", "container:nosuch", "--", "true"], "not found"),
    ("ip outside subnet", ["run", "-d", "--net", "base", "--ip", "10.1.1.1", "--", "true"], "outside"),
    ("ip in use", ["run", "-d", "--net", "base", "--ip", "10.230.0.2", "--", "true"], "in use"),
    ("ip is gateway", ["run", "-d", "--net", "base", "--ip", "10.230.0.1", "--", "true"], "gateway"),
    ("ip not an address", ["run", "-d", "--net", "base", "--ip", "10.230.0.999", "--", "true"], "--ip"),
    ("ip without network", ["run", "-d", "--net", "none", "--ip", "10.230.0.9", "--", "true"], "--ip"),
    ("no command", ["run", "-d", "--net", "none"], "command"),
    ("rm network in use", ["network", "rm", "base"], "held"),
    ("unknown container rm", ["rm", "nosuch"], "not found"),
    ("unknown network rm", ["network", "rm", "nosuch"], "not found"),
    ("connect unknown network", ["network", "connect", "nosuch", "held"], "not found"),
    ("connect twice", ["network", "connect", "base", "held"], "already connected"),
    ("disconnect not connected", ["network", "disconnect", "tiny", "held"], "not connected"),
    ("exhausted subnet", ["run", "-d", "--net", "tiny", "--", "true"], "no free address"),
    ("inspect unknown", ["inspect", "nosuch"], "not found"),
    ("exec unknown", ["exec", "nosuch", "--", "true"], "not found"),
]


@pytest.fixture(scope="module")
def populated(request: pytest.FixtureRequest) -> Host:
    from conftest import _new_host

    host = _new_host()
    request.addfinalizer(host.cleanup)
    host.start_daemon()
    host.tether("network", "create", "--subnet", "10.230.0.0/16", "base")
    # a /30 has exactly one address left after its gateway
    host.tether("network", "create", "--subnet", "10.240.0.0/30", "tiny")
    host.tether("run", "-d", "--name", "held", "--net", "base", "--", "sleep", "600")
    host.tether("run", "-d", "--name", "filler", "--net", "tiny", "--", "sleep", "600")
    return host


@pytest.mark.parametrize("label,args,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_changes_nothing(populated: Host, label: str, args: list[str], needle: str) -> None:
    before = populated.snapshot()
    r = populated.tether(*args, check=False)
    assert r.returncode != 0, f"{label}: succeeded: {r.stdout}"
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"{label}: expected one line, got {r.stderr!r}"
    assert lines[0].startswith("Error: ") and needle.lower() in lines[0].lower(), lines[0]
    after = populated.snapshot()
    assert after == before


def test_malformed_json_to_the_api(populated: Host) -> None:
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.connect(populated.socket)
    body = b"{not json"
    s.sendall(b"POST /networks HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    s.settimeout(5)
    reply = ""
    while "\r\n\r\n" not in reply or len(reply.split("\r\n\r\n", 1)[1]) < int(
        reply.split("Content-Length: ")[1].split("\r\n")[0] if "Content-Length: " in reply else 1
    ):
        chunk = s.recv(4096).decode()
        if not chunk:
            break
        reply += chunk
    s.close()
    assert reply.startswith("HTTP/1.1 400") and "malformed JSON" in reply
