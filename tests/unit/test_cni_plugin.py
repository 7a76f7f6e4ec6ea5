"""The CNI plugin front end, without a daemon: environment and config parsing, version
negotiation, result merging for chains, and the error codes and one-line messages."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tether import cni
from tether.api.client import Client
from tether.cni import (
    CniError,
    Invocation,
    merge_result,
    parse_cni_args,
    parse_config,
    read_invocation,
)
from tether.errors import (
    Conflict,
    DaemonUnavailable,
    Exhausted,
    InvalidInput,
    NotFound,
    SystemFailure,
)

REPO = Path(__file__).resolve().parents[2]

DAEMON_RESULT = {
    "interfaces": [
        {"name": "vt0123456789ab"},
        {"name": "eth0", "mac": "02:42:0a:d2:00:02", "sandbox": "/var/run/netns/x"},
    ],
    "ips": [{"address": "10.210.0.2/24", "gateway": "10.210.0.1", "interface": 1}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.210.0.1"}],
    "dns": {},
}


def env(command: str = "ADD", **extra: str) -> dict[str, str]:
    base = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c0ffee",
        "CNI_NETNS": "/proc/self/ns/net",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin",
    }
    base.update(extra)
    return {k: v for k, v in base.items() if v != ""}


def conf(**extra: Any) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "appnet", "type": "tether", **extra}


def inv(command: str = "ADD", args: dict[str, str] | None = None) -> Invocation:
    return Invocation(command, "c0ffee", "/proc/self/ns/net", "eth0", args or {}, "")


def code_of(fn: Any, *args: Any) -> int:
    with pytest.raises(CniError) as info:
        fn(*args)
    assert "\n" not in info.value.msg
    return info.value.code


class FakeClient:
    """Records requests; answers from ``replies`` (a value, or an exception to raise)."""

    calls: ClassVar[list[tuple[str, str, Any]]] = []
    replies: ClassVar[dict[str, Any]] = {}

    def __init__(self, socket_path: str | None, timeout: float) -> None:
        self.socket_path = socket_path or "/run/tether/tether.sock"

    def _answer(self, method: str, path: str, body: Any) -> Any:
        FakeClient.calls.append((method, path, body))
        reply = FakeClient.replies.get(path, {})
        if isinstance(reply, Exception):
            raise reply
        return reply

    def post(self, path: str, body: Any = None) -> Any:
        return self._answer("POST", path, body)

    def get(self, path: str) -> Any:
        return self._answer("GET", path, None)


@pytest.fixture
def fake() -> type[FakeClient]:
    FakeClient.calls = []
    FakeClient.replies = {"/cni/add": DAEMON_RESULT}
    return FakeClient


def run(environ: dict[str, str], config: Any, fake: type[FakeClient]) -> tuple[int, Any]:
    raw = config if isinstance(config, bytes) else json.dumps(config).encode()
    return cni.run(environ, io.BytesIO(raw), fake)


# ---------------------------------------------------------------------------- environment
def test_cni_args_parsing() -> None:
    assert parse_cni_args("") == {}
    assert parse_cni_args("IgnoreUnknown=1;IP=10.0.0.5;K8S_POD_NAME=web;") == {
        "IgnoreUnknown": "1",
        "IP": "10.0.0.5",
        "K8S_POD_NAME": "web",
    }
    assert parse_cni_args("A=b=c") == {"A": "b=c"}
    assert code_of(parse_cni_args, "IP") == 4
    assert code_of(parse_cni_args, "=x") == 4


def test_environment_validation() -> None:
    got = read_invocation(env(CNI_ARGS="IP=10.0.0.9"))
    assert got.command == "ADD" and got.container_id == "c0ffee" and got.args == {"IP": "10.0.0.9"}
    assert code_of(read_invocation, {}) == 4
    assert code_of(read_invocation, env("FROB")) == 4
    with pytest.raises(CniError) as info:
        read_invocation(env(CNI_NETNS="", CNI_IFNAME=""))
    assert info.value.code == 4 and "CNI_NETNS" in info.value.msg and "CNI_IFNAME" in info.value.msg
    assert read_invocation(env("DEL", CNI_NETNS="")).netns == ""  # DEL works without a namespace
    assert read_invocation({"CNI_COMMAND": "VERSION"}).command == "VERSION"
    assert read_invocation({"CNI_COMMAND": "GC"}).command == "GC"
    assert code_of(read_invocation, env(CNI_CONTAINERID="-bad")) == 4
    assert code_of(read_invocation, env(CNI_CONTAINERID="a b")) == 4
    for bad in ("a" * 16, "eth/0", "eth:0", "eth 0", ".", ".."):
        assert code_of(read_invocation, env(CNI_IFNAME=bad)) == 4, bad
    assert read_invocation(env(CNI_IFNAME="a" * 15)).ifname == "a" * 15


# ---------------------------------------------------------------------------- configuration
def test_config_defaults_and_keys() -> None:
    c = parse_config(json.dumps(conf()).encode(), inv())
    assert (c.name, c.network, c.socket, c.prev_result, c.ip, c.mac, c.aliases) == (
        "appnet", "appnet", None, None, None, None, [],
    )
    c = parse_config(conf(network="other", socket="/tmp/t.sock"), inv())
    assert (c.network, c.socket) == ("other", "/tmp/t.sock")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", 6),
        (b"[1, 2]", 6),
        (b"", 6),
        (json.dumps({"name": "n", "type": "tether"}).encode(), 1),
        (json.dumps(conf(cniVersion="0.2.0")).encode(), 1),
        (json.dumps(conf(cniVersion="2.0.0")).encode(), 1),
        (json.dumps(conf(cniVersion="one")).encode(), 6),
        (json.dumps(conf(name="")).encode(), 7),
        (json.dumps(conf(name="-x")).encode(), 7),
        (json.dumps(conf(network=5)).encode(), 7),
        (json.dumps(conf(socket="relative.sock")).encode(), 7),
        (json.dumps(conf(ipam={"type": "host-local"})).encode(), 2),
        (json.dumps(conf(prevResult=[1])).encode(), 6),
        (json.dumps(conf(runtimeConfig={"portMappings": {"hostPort": 1}})).encode(), 7),
        (json.dumps(conf(runtimeConfig={"ips": "10.0.0.5"})).encode(), 7),
        (json.dumps(conf(runtimeConfig={"aliases": "db"})).encode(), 7),
        (json.dumps(conf(runtimeConfig={"mac": 5})).encode(), 7),
    ],
)
def test_config_errors(raw: bytes, code: int) -> None:
    assert code_of(parse_config, raw, inv()) == code


def test_unsupported_field_names_key_and_value() -> None:
    with pytest.raises(CniError) as info:
        parse_config(conf(ipam={"type": "host-local"}), inv())
    assert '"ipam"' in info.value.msg and "host-local" in info.value.msg


def test_requested_address_precedence() -> None:
    args = {"IP": "10.0.0.7/24", "MAC": "02:00:00:00:00:07"}
    c = parse_config(conf(), inv(args=args))
    assert (c.ip, c.mac) == ("10.0.0.7", "02:00:00:00:00:07")  # CNI_ARGS, prefix dropped
    c = parse_config(conf(args={"cni": {"ips": ["fd00::5", "10.0.0.6/24"]}}), inv(args=args))
    assert c.ip == "10.0.0.6"  # "args" wins over CNI_ARGS and IPv6 is skipped
    c = parse_config(conf(args={"cni": {"ips": ["fd00::5"]}}), inv(args=args))
    assert (c.ip, c.ip6) == (None, "fd00::5")  # "args" given: CNI_ARGS IP is ignored (CONVENTIONS.md)
    rc = {"ips": ["fd00::9/64", "10.0.0.9/24"], "mac": "02:00:00:00:00:09"}
    c = parse_config(conf(runtimeConfig=rc, args={"cni": {"ips": ["10.0.0.6"]}}), inv(args=args))
    assert (c.ip, c.ip6, c.mac) == ("10.0.0.9", "fd00::9", "02:00:00:00:00:09")  # the capability wins
    c = parse_config(conf(runtimeConfig={"ips": []}), inv(args={"IP": "10.0.0.7,fd00::7/64"}))
    assert (c.ip, c.ip6) == ("10.0.0.7", "fd00::7")  # an empty capability is none; CNI_ARGS lists both


@pytest.mark.parametrize(
    ("ips", "family"),
    [(["10.0.0.9", "10.0.0.10"], "IPv4"), (["fd00::9/64", "10.0.0.9", "fd00::a"], "IPv6")],
)
def test_at_most_one_requested_address_per_family(ips: list[str], family: str) -> None:
    for config, args in ((conf(runtimeConfig={"ips": ips}), {}), (conf(args={"cni": {"ips": ips}}), {}),
                         (conf(), {"IP": ",".join(ips)})):
        with pytest.raises(CniError) as info:
            parse_config(config, inv(args=args))
        assert info.value.code == 7 and f"two {family} addresses" in info.value.msg and "\n" not in info.value.msg


def test_port_mappings_and_aliases() -> None:
    ports = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    c = parse_config(conf(runtimeConfig={"portMappings": ports, "aliases": ["db", "primary"]}), inv())
    assert c.port_mappings == ports and c.aliases == ["db", "primary"]
    podman = {"aliases": {"appnet": ["web"], "other": ["x"]}}  # Podman: keyed by network name
    assert parse_config(conf(runtimeConfig=podman), inv()).aliases == ["web"]
    assert parse_config(conf(network="tnet", runtimeConfig={"aliases": {"tnet": ["w"]}}), inv()).aliases == ["w"]
    assert parse_config(conf(runtimeConfig={"aliases": {"other": ["x"]}}), inv()).aliases == []


def test_gc_attachments() -> None:
    gc = inv("GC")
    entries = [{"containerID": "a1", "ifname": "eth0"}]
    for key in ("cni.dev/valid-attachments", "cni.dev/attachments"):
        c = parse_config(conf(cniVersion="1.1.0", **{key: entries}), gc)
        assert c.valid_attachments == entries
    assert parse_config(conf(cniVersion="1.1.0", **{"cni.dev/valid-attachments": None}), gc).valid_attachments == []
    assert parse_config(conf(cniVersion="1.1.0"), gc).valid_attachments is None
    assert code_of(parse_config, conf(cniVersion="1.1.0", **{"cni.dev/valid-attachments": "a1"}), gc) == 7


# ---------------------------------------------------------------------------- versions
@pytest.mark.parametrize(
    ("command", "version", "ok"),
    [
        ("ADD", "0.3.0", True), ("ADD", "0.3.1", True), ("ADD", "0.4.0", True), ("ADD", "1.0.0", True),
        ("ADD", "1.1.0", True), ("ADD", "0.2.0", False), ("ADD", "1.2.0", False),
        ("CHECK", "0.3.1", False), ("CHECK", "0.4.0", True),
        ("GC", "1.0.0", False), ("GC", "1.1.0", True),
        ("STATUS", "1.0.0", False), ("STATUS", "1.1.0", True),
        ("DEL", "0.3.0", True),
    ],
)
def test_version_negotiation(command: str, version: str, ok: bool) -> None:
    if ok:
        cni.check_version(version, command)
    else:
        assert code_of(cni.check_version, version, command) == 1


def test_version_command() -> None:
    supported = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
    assert cni.version_result(b'{"cniVersion": "0.4.0"}') == {"cniVersion": "0.4.0", "supportedVersions": supported}
    assert cni.version_result(b"") == {"cniVersion": "1.1.0", "supportedVersions": supported}
    assert cni.version_result(b'{"cniVersion": "9.9.9"}')["cniVersion"] == "1.1.0"
    assert cni.version_result(b"junk")["cniVersion"] == "1.1.0"


# ---------------------------------------------------------------------------- results
def test_result_alone() -> None:
    out = merge_result(DAEMON_RESULT, "1.1.0")
    assert out == {"cniVersion": "1.1.0", **DAEMON_RESULT}
    assert "version" not in out["ips"][0]


def test_result_for_legacy_versions_carries_ip_version() -> None:
    for version in ("0.3.0", "0.3.1", "0.4.0"):
        out = merge_result(DAEMON_RESULT, version)
        assert out["cniVersion"] == version
        assert out["ips"] == [{"version": "4", "address": "10.210.0.2/24", "gateway": "10.210.0.1", "interface": 1}]


DUAL_RESULT = {
    "interfaces": DAEMON_RESULT["interfaces"],
    "ips": [
        {"address": "10.210.0.2/24", "gateway": "10.210.0.1", "interface": 1},
        {"address": "fd00:210::2/64", "gateway": "fd00:210::1", "interface": 1},
    ],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.210.0.1"}, {"dst": "::/0", "gw": "fd00:210::1"}],
    "dns": {},
}


def test_dual_stack_result_in_every_version() -> None:
    assert merge_result(DUAL_RESULT, "1.0.0") == {"cniVersion": "1.0.0", **DUAL_RESULT}
    legacy = merge_result(DUAL_RESULT, "0.4.0")
    assert [(i["version"], i["address"], i["interface"]) for i in legacy["ips"]] == [
        ("4", "10.210.0.2/24", 1), ("6", "fd00:210::2/64", 1),
    ]
    prev = {"interfaces": [{"name": "lo", "sandbox": "/ns"}], "ips": [{"address": "::1/128", "interface": 0}]}
    chained = merge_result(DUAL_RESULT, "1.0.0", prev)
    assert [i["interface"] for i in chained["ips"]] == [0, 2, 2]
    assert chained["routes"] == DUAL_RESULT["routes"]


def test_result_chained_after_a_previous_plugin() -> None:
    prev = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "cni0"}, {"name": "net1", "mac": "02:00:00:00:00:01", "sandbox": "/ns"}],
        "ips": [{"address": "192.168.5.2/24", "gateway": "192.168.5.1", "interface": 1}],
        "routes": [{"dst": "192.168.0.0/16"}],
        "dns": {"nameservers": ["192.168.5.1"]},
    }
    out = merge_result(DAEMON_RESULT, "1.0.0", prev)
    assert [i["name"] for i in out["interfaces"]] == ["cni0", "net1", "vt0123456789ab", "eth0"]
    assert out["ips"] == [prev["ips"][0], {"address": "10.210.0.2/24", "gateway": "10.210.0.1", "interface": 3}]
    assert out["routes"] == [{"dst": "192.168.0.0/16"}, {"dst": "0.0.0.0/0", "gw": "10.210.0.1"}]
    assert out["dns"] == {"nameservers": ["192.168.5.1"]}
    assert prev["ips"][0]["interface"] == 1  # the input is not modified
    # a prevResult with nothing in it changes nothing
    assert merge_result(DAEMON_RESULT, "1.0.0", {"cniVersion": "1.0.0"}) == merge_result(DAEMON_RESULT, "1.0.0")


@pytest.mark.parametrize(
    ("exc", "command", "code"),
    [
        (DaemonUnavailable("no tether daemon answers on /s"), "ADD", 11),
        (DaemonUnavailable("no tether daemon answers on /s"), "DEL", 11),
        (DaemonUnavailable("no tether daemon answers on /s"), "STATUS", 50),
        (NotFound("network 'x' not found"), "ADD", 7),
        (NotFound("network 'x' not found"), "GC", 7),
        (NotFound("interface eth0 is missing"), "CHECK", 999),
        (InvalidInput("invalid mac"), "ADD", 7),
        (Conflict("address 10.0.0.5 is in use"), "ADD", 999),
        (Exhausted("no free address left in 10.0.0.0/30"), "ADD", 999),
        (SystemFailure("netlink said no"), "ADD", 999),
        (SystemFailure("store broken"), "STATUS", 50),
    ],
)
def test_daemon_errors_map_to_codes(exc: Exception, command: str, code: int) -> None:
    err = cni.error_from_daemon(exc, command, "/s")  # type: ignore[arg-type]
    assert err.code == code
    assert str(exc) in err.msg and "\n" not in err.msg


# ---------------------------------------------------------------------------- run()
def test_run_add(fake: type[FakeClient], tmp_path: Path) -> None:
    netns = tmp_path / "ns"
    netns.touch()
    rc = {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}],
        "aliases": {"appnet": ["web"]},
        "mac": "02:00:00:00:00:aa",
    }
    status, out = run(env(CNI_NETNS=str(netns), CNI_ARGS="IgnoreUnknown=1;IP=10.210.0.9"), conf(runtimeConfig=rc), fake)
    assert status == 0
    assert out == {"cniVersion": "1.0.0", **DAEMON_RESULT}
    assert fake.calls == [(
        "POST", "/cni/add",
        {"container_id": "c0ffee", "netns": str(netns), "ifname": "eth0", "network": "appnet",
         "port_mappings": rc["portMappings"], "aliases": ["web"], "ip": "10.210.0.9", "mac": "02:00:00:00:00:aa"},
    )]


def test_run_add_asks_for_both_families(fake: type[FakeClient], tmp_path: Path) -> None:
    netns = tmp_path / "ns"
    netns.touch()
    fake.replies["/cni/add"] = DUAL_RESULT
    rc = {"ips": ["fd00:210::9/64", "10.210.0.9/24"], "portMappings": [{"hostPort": 8080, "containerPort": 80,
                                                                         "protocol": "tcp", "hostIP": "::1"}]}
    status, out = run(env(CNI_NETNS=str(netns)), conf(runtimeConfig=rc), fake)
    assert (status, out) == (0, {"cniVersion": "1.0.0", **DUAL_RESULT})
    body = fake.calls[0][2]
    assert (body["ip"], body["ip6"], body["port_mappings"]) == ("10.210.0.9", "fd00:210::9", rc["portMappings"])
    fake.calls.clear()
    status, out = run(env(CNI_NETNS=str(netns)), conf(runtimeConfig={"ips": ["fd00::1", "fd00::2"]}), fake)
    assert status == 1 and out["code"] == 7 and fake.calls == []  # refused before any request


def test_run_add_checks_the_namespace_and_the_chain(fake: type[FakeClient], tmp_path: Path) -> None:
    status, out = run(env(CNI_NETNS=str(tmp_path / "gone")), conf(), fake)
    assert status == 1 and out["code"] == 4 and "CNI_NETNS" in out["msg"]
    prev = {"interfaces": [{"name": "eth0", "sandbox": "/proc/self/ns/net"}], "ips": []}
    status, out = run(env(), conf(prevResult=prev), fake)
    assert status == 1 and out["code"] == 7 and "eth0" in out["msg"]
    assert fake.calls == []


def test_run_del_check_gc_status(fake: type[FakeClient]) -> None:
    assert run(env("DEL", CNI_NETNS=""), conf(), fake) == (0, None)
    prev = {"cniVersion": "1.0.0", **DAEMON_RESULT}
    assert run(env("CHECK"), conf(prevResult=prev), fake) == (0, None)
    status, out = run(env("CHECK"), conf(prevResult={"interfaces": [{"name": "net9"}]}), fake)
    assert status == 1 and out["code"] == 999 and "eth0" in out["msg"]
    valid = [{"containerID": "a1", "ifname": "eth0"}]
    assert run({"CNI_COMMAND": "GC"}, conf(cniVersion="1.1.0", **{"cni.dev/valid-attachments": valid}), fake) == (0, None)
    assert run({"CNI_COMMAND": "GC"}, conf(cniVersion="1.1.0"), fake) == (0, None)  # no list: no request
    assert run({"CNI_COMMAND": "STATUS"}, conf(cniVersion="1.1.0"), fake) == (0, None)
    assert fake.calls == [
        ("POST", "/cni/del", {"container_id": "c0ffee", "ifname": "eth0", "network": "appnet"}),
        ("POST", "/cni/check", {"container_id": "c0ffee", "ifname": "eth0", "network": "appnet"}),
        ("POST", "/cni/gc", {"network": "appnet", "valid": valid}),
        ("GET", "/ping", None),
    ]


def test_run_errors_are_labelled_with_the_config_version(fake: type[FakeClient]) -> None:
    fake.replies["/cni/add"] = Exhausted("no free address left on network 'appnet' (10.210.0.0/30)")
    status, out = run(env(), conf(cniVersion="0.4.0"), fake)
    assert status == 1
    assert out["cniVersion"] == "0.4.0" and out["code"] == 999 and "no free address" in out["msg"]
    status, out = run(env(), b"{oops", fake)
    assert status == 1 and out["cniVersion"] == "1.1.0" and out["code"] == 6


def test_run_status_daemon_down_is_50(fake: type[FakeClient]) -> None:
    fake.replies["/ping"] = DaemonUnavailable("no tether daemon answers on /x.sock: start one with `tether daemon`")
    status, out = run({"CNI_COMMAND": "STATUS"}, conf(cniVersion="1.1.0"), fake)
    assert status == 1 and out["code"] == 50 and "no tether daemon" in out["msg"]


def test_run_internal_error_is_one_line(fake: type[FakeClient]) -> None:
    fake.replies["/cni/del"] = ValueError("boom\nsecond line")
    status, out = run(env("DEL"), conf(), fake)
    assert status == 1 and out["code"] == 999 and out["msg"] == "tether-cni internal error: boom second line"
    assert "Traceback" in out["details"]


def test_run_version(fake: type[FakeClient]) -> None:
    status, out = run({"CNI_COMMAND": "VERSION"}, {"cniVersion": "1.0.0"}, fake)
    assert status == 0 and out["cniVersion"] == "1.0.0" and "1.1.0" in out["supportedVersions"]


def test_socket_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Config key, then TETHER_SOCKET, then the default; the real client on a missing
    socket is "try again later" (11) and never starts a daemon."""

    def no_autostart(self: Client, *a: Any, **k: Any) -> None:
        raise AssertionError("the plugin must never start a daemon")

    monkeypatch.setattr(Client, "ensure_daemon", no_autostart)
    sock = str(tmp_path / "missing.sock")
    status, out = cni.run(env("DEL"), io.BytesIO(json.dumps(conf(socket=sock)).encode()))
    assert status == 1 and out["code"] == 11 and sock in out["msg"] and "\n" not in out["msg"]
    monkeypatch.setenv("TETHER_SOCKET", str(tmp_path / "env.sock"))
    status, out = cni.run(env("DEL"), io.BytesIO(json.dumps(conf()).encode()))
    assert out["code"] == 11 and "env.sock" in out["msg"]
    monkeypatch.delenv("TETHER_SOCKET")
    assert Client(None).socket_path == "/run/tether/tether.sock"


# ---------------------------------------------------------------------------- the process
def test_imports_stay_light() -> None:
    """A process per call: no Typer, Rich, pyroute2 or daemon code may load."""
    code = "import sys, tether.cni; print('\\n'.join(sorted(sys.modules)))"
    mods = set(subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout.split())
    heavy = {m for m in mods if m.split(".")[0] in ("typer", "rich", "click", "pyroute2", "sqlite3", "asyncio", "grpc")}
    assert not heavy, heavy
    assert {m for m in mods if m.startswith("tether")} == {
        "tether", "tether.api", "tether.api.client", "tether.errors", "tether.cni", "tether.wirejson",
        "tether.validate",  # the input rules the daemon applies too (a leaf: imports only errors)
    }
    # nor the stdlib modules that cost milliseconds each (json's re, typing, socket.py's enum)
    code_bare = code.replace("import sys, tether.cni;", "import sys; sys.path.insert(0, '.'); import tether.cni;")
    bare = set(subprocess.run([sys.executable, "-S", "-c", code_bare], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.split())
    assert not bare & {"json", "re", "typing", "socket", "enum", "collections", "pathlib"}, bare


def test_main_process_prints_one_json_line(tmp_path: Path) -> None:
    sock = str(tmp_path / "nobody.sock")
    proc = subprocess.run(
        [sys.executable, "-m", "tether.cni"],
        input=json.dumps(conf(socket=sock)),
        env={**os.environ, **env("DEL"), "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, cwd=REPO, timeout=30, check=False,
    )
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["code"] == 11
    assert not os.path.exists(sock)  # no daemon was started on it
    proc = subprocess.run([sys.executable, "-m", "tether.cni"], env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 4
