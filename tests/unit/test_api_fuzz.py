"""Generated request bodies against every route of both sockets, served by a real
controller on the fakes (no kernel): never an internal error, never a traceback in the
log, and a refused request leaves the store and the fake kernel as they were.

Bodies are built from each route's schema (``msgspec.inspect``): every known key absent,
well typed (with values near the controller's own rules: names, CIDRs, ports at their
bounds) or of any other JSON type, plus unknown keys, nesting, huge numbers and odd
strings, plus raw bytes no JSON parser should accept. Targets in the paths are fixed so
that nothing runs for real: no generated pid is ever signalled (see ``concrete``) and
generated ``run`` bodies are never detached, so no process is started.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec.inspect as mi
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.api.client import _http
from tether.api.docker_plugin import CALLS, DockerPluginServer
from tether.api.schema import DockerIgnored, Empty
from tether.api.server import ROUTES, ApiServer
from tether.controller import Controller
from tether.testing.datapath import RecordingDatapath
from tether.testing.memory import MemoryStore


def fuzz(schema: type[Any]) -> settings:
    """100 bodies for a route that takes one, 30 for one that takes none (only ``{}`` is
    right there): about 3000 requests, 20 s here."""
    return settings(
        max_examples=30 if schema in (Empty, DockerIgnored) else 100,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )


GHOST = "-ghost"  # a container name the API can address but no container can have

# ------------------------------------------------------------------ values
ODD_TEXT = [
    "", " ", "\x00", "a\x00b", "../../etc", "/", "a" * 300, "\u202e", "ß", "💥", "true", "null", "1e999",
    "-1", "0", "NaN", "{", "%s%n", "\n", "x\ny",
]
NAMES = ["n1", "bridge", "none", "host", "default", "container:" + GHOST, "container:n1", GHOST, "ok-name", "UP", "a" * 64]
CIDRS = ["10.77.0.0/24", "10.77.0.1", "10.77.0.0/33", "10.77.0.5/24", "192.168.1.0/24", "0.0.0.0/0", "::1/128",
         "10.77.0.0/30", "10.78.0.0/16", "10.77.0.129/25", "banana", "10.77.0.255", "300.1.1.1"]
HINTS: dict[str, list[Any]] = {
    **{k: NAMES for k in ("name", "container", "network", "net")},
    **{k: CIDRS for k in ("subnet", "gateway", "ip_range", "ip", "Pool", "SubPool", "Address", "Gateway", "PoolID")},
    "mac": ["02:42:0a:00:00:05", "02:42:0A:00:00:05", "zz:42:0a:00:00:05", "02:42"],
    "MacAddress": ["02:42:0a:00:00:05", "nope"],
    "ifname": ["eth0", "eth1", "a" * 16, "a/b", "lo"],
    "protocol": ["tcp", "udp", "sctp", "TCP"],
    "netns": ["/var/run/netns/tether-fuzz-missing", "relative", "/"],
    "SandboxKey": ["/var/run/netns/tether-fuzz-missing", "relative"],
    "NetworkID": ["d" * 64, "e" * 64, ""],
    "EndpointID": ["f" * 64, ""],
    "driver": ["bridge", "overlay", "macvlan", "nosuch"],
    "publish": [["8080:80"], ["80"], ["1-2:3-4/udp"], ["70000:1"], ["127.0.0.1:99:99/tcp"]],
    "cmd": [["true"], [], ["sleep", "1"]],
}
OPTION_KEYS = ["mtu", "icc", "masquerade", "bridge_name", "vni", "colour", "tether.network", "tether.driver", "tether.mtu"]

text = st.one_of(st.text(max_size=12), st.sampled_from(ODD_TEXT))
numbers = st.one_of(
    st.integers(min_value=-(2**31), max_value=2**31),
    st.sampled_from([0, -1, 1, 65535, 65536, 2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=10,
)


def typed(t: Any, key: str = "") -> st.SearchStrategy[Any]:
    """Values of the schema type ``t`` (msgspec.inspect), biased toward the controller's edges."""
    if isinstance(t, mi.UnionType):
        return st.one_of([typed(x, key) for x in t.types])
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.BoolType):
        return st.just(False) if key == "detach" else st.booleans()  # never start a process
    if isinstance(t, mi.IntType):
        lo = t.ge if t.ge is not None else -(2**63)
        hi = t.le if t.le is not None else 2**63 - 1
        return st.one_of(st.integers(min_value=lo, max_value=hi), st.sampled_from([lo, hi, lo - 1, hi + 1]))
    if isinstance(t, mi.FloatType):
        lo = t.ge if t.ge is not None else -1e308
        hi = t.le if t.le is not None else 1e308
        return st.one_of(st.floats(min_value=lo, max_value=hi, allow_nan=False), st.sampled_from([lo, hi]))
    if isinstance(t, mi.StrType):
        hint = [h for h in HINTS.get(key, []) if isinstance(h, str)]
        return st.one_of(st.sampled_from(hint), text) if hint else text
    if isinstance(t, mi.ListType):
        hint = [h for h in HINTS.get(key, []) if isinstance(h, list)]
        items = st.lists(typed(t.item_type, key), max_size=3)
        return st.one_of(st.sampled_from(hint), items) if hint else items
    if isinstance(t, mi.DictType):
        return st.dictionaries(st.one_of(st.sampled_from(OPTION_KEYS), text), typed(t.value_type), max_size=3)
    if isinstance(t, mi.StructType):
        return objects(t)
    return json_values  # Any


def objects(info: mi.StructType) -> st.SearchStrategy[dict[str, Any]]:
    """Objects for the struct: well typed throughout (to reach the controller's own
    checks), or each key absent, well typed or of any JSON type, or with a key it does
    not know."""
    typed_fields = {f.encode_name: typed(f.type, f.name) for f in info.fields}
    required = {f.encode_name: typed_fields[f.encode_name] for f in info.fields if f.required}
    optional = {k: v for k, v in typed_fields.items() if k not in required}
    well = st.fixed_dictionaries(required, optional=optional)  # type: ignore[arg-type]
    mixed = st.fixed_dictionaries({}, optional={k: st.one_of(v, json_values) for k, v in typed_fields.items()})
    unknown = st.dictionaries(st.sampled_from(["x", "Name", "cmd ", "__proto__", "extra"]), json_values, min_size=1, max_size=2)
    return st.one_of(well, mixed, st.tuples(well, unknown).map(lambda t: {**t[0], **t[1]}))


RAW = [
    b"", b" ", b"null", b"[]", b"0", b'"s"', b"{", b"{}}", b"\xff\xfe", b'{"a": NaN}', b'{"a": Infinity}',
    b'{"a": "\\ud800"}', b'{"a": 1e400}', b'{"a": -1e400}', b"[" * 100_000 + b"]" * 100_000,
    b'{"a": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", b'{"a": ' + b'{"b": ' * 3_000 + b"1" + b"}" * 3_000 + b"}",
    b'{"a": ' + b"9" * 5000 + b"}", b'{"name": "x", "name": 5}', b"\x00",
]


def bodies(schema: type[Any]) -> st.SearchStrategy[bytes]:
    shaped = objects(mi.type_info(schema)).map(lambda d: json.dumps(d).encode())  # type: ignore[arg-type]
    anything = json_values.map(lambda v: json.dumps(v).encode())
    return st.one_of(shaped, shaped, shaped, shaped, anything, st.sampled_from(RAW))


# ------------------------------------------------------------------ the servers
def state(c: Controller) -> Any:
    dp: RecordingDatapath = c.ctx.datapath  # type: ignore[assignment]
    keys = sorted((kv.key, json.dumps(kv.value, sort_keys=True)) for kv in c.store.list("/"))
    return (
        [k for k in keys if not k[0].startswith("/ipam-cursor/")],
        copy.deepcopy([dp.netns, dp.bridges, dp.veths, dp.vxlans, dp.addresses, dp.default_routes, dp.held_ports]),
    )


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.problems: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR or "Traceback" in record.getMessage():
            self.problems.append(self.format(record))


class World:
    def __init__(self, tmp: Path) -> None:
        self.ctl = Controller(MemoryStore(), RecordingDatapath(["192.168.1.0/24"]), str(tmp), netns_prefix="u-")
        self.ctl.default_network()
        self.ctl.create_network("n1", subnet="10.77.0.0/24")
        self.ctl.create_container(["true"], name="c1", net="none")
        self.ctl.create_container(["true"], name="c2", net="none")
        self.ctl.connect("n1", "c1")  # so that a generated prune leaves n1 for the routes after it
        self.api = ApiServer(self.ctl, str(tmp / "api.sock"))
        self.plugin = DockerPluginServer(self.ctl, "tether", str(tmp / "plugin.sock"))
        self.api.serve_in_thread()
        self.plugin.serve_in_thread()
        self.log = Captured()

    def close(self) -> None:
        self.api.shutdown()
        self.plugin.shutdown()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("fuzz"))
    logger = logging.getLogger("tether")
    old = logger.level
    logger.addHandler(w.log)
    logger.setLevel(logging.DEBUG)
    try:
        yield w
    finally:
        logger.removeHandler(w.log)
        logger.setLevel(old)
        w.close()


def concrete(method: str, pattern: re.Pattern[str]) -> str:
    """A path for the route. Networks by a real name (``-ghost`` for DELETE). Containers:
    ``started`` only ever marks c2 running (with a generated pid) and nothing but
    ``started`` addresses c2; ``stop`` and ``exited`` address c1, which is never running,
    so no generated pid is ever signalled; DELETE, ``start`` and ``restart`` (which would
    start a process) address a name none can have."""
    path = pattern.pattern.strip("^$")
    network = GHOST if method == "DELETE" else "n1"
    starts = path.endswith(("/start", "/restart"))
    container = GHOST if method == "DELETE" or starts else "c2" if path.endswith("/started") else "c1"
    path = path.replace("/networks/(?P<name>[^/]+)", f"/networks/{network}")
    path = path.replace("/containers/(?P<name>[^/]+)", f"/containers/{container}")
    if path == "/events":  # a stream: one that ends at once (the past is its --until)
        return "/events?since=0&until=0"
    return path.replace("(?P<id>[0-9a-f]+)", "abc123")


TETHER_ROUTES = [(m, concrete(m, p), schema) for m, p, schema, _ in ROUTES]
DOCKER_CALLS = [(path, schema) for path, (schema, _) in CALLS.items()]


def post(socket_path: str, method: str, target: str, body: bytes) -> tuple[int, Any]:
    status, raw = _http(socket_path, method, target, body, 30.0)
    return status, raw


# ------------------------------------------------------------------ the properties
@pytest.mark.parametrize("method,target,schema", TETHER_ROUTES, ids=[f"{m} {t}" for m, t, _ in TETHER_ROUTES])
def test_tether_api_never_fails_inside(world: World, method: str, target: str, schema: type[Any]) -> None:
    @fuzz(schema)
    @given(body=bodies(schema))
    def check(body: bytes) -> None:
        before = state(world.ctl)
        status, raw = post(world.api.socket_path, method, target, body)
        assert world.log.problems == [], world.log.problems
        assert status < 500, (status, raw)
        if status >= 400:
            assert b"\n" not in raw
            reply = json.loads(raw)
            assert set(reply) == {"error", "kind"}, reply
            assert state(world.ctl) == before, (status, reply)

    check()


@pytest.mark.parametrize("target,schema", DOCKER_CALLS, ids=[t for t, _ in DOCKER_CALLS])
def test_docker_plugin_never_fails_inside(world: World, target: str, schema: type[Any]) -> None:
    @fuzz(schema)
    @given(body=bodies(schema))
    def check(body: bytes) -> None:
        before = state(world.ctl)
        status, raw = post(world.plugin.socket_path, "POST", target, body)
        assert world.log.problems == [], world.log.problems
        assert status in (200, 500), (status, raw)
        if status == 500:
            reply = json.loads(raw)
            assert list(reply) == ["Err"] and "internal error" not in reply["Err"], reply
            assert state(world.ctl) == before, reply

    check()
