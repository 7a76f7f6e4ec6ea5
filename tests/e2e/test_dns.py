"""The embedded resolver against real namespaces, asked with real packets from inside them.

Every test gets a unique prefix (``tdns`` + 4 hex digits) for its namespaces. A sandbox is
a namespace with only ``lo`` up; the Resolver under test runs in the test process (the
machine's namespace, standing in for the daemon's) and serves 127.0.0.11:53 inside it.
``ip netns exec`` bind-mounts ``/etc/netns/NS/resolv.conf`` over /etc/resolv.conf, so
glibc (``getent``, ``socket.gethostbyname``) inside the sandbox asks the resolver.
Queries with exact expectations come from an agent process inside the sandbox that
speaks DNS with its own few lines of code, not with ``tether.dns.message``.

Unknown names go upstream to a fake DNS server on 127.0.0.1 of the test process's own
namespace: loopback only, nothing leaves the machine. Cleanup stops every agent and
resolver, deletes the namespaces and their /etc/netns directories even when a test fails,
and then checks that nothing is left.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tether.dns import (
    RESOLVER_ADDRESS,
    Resolver,
    resolv_conf_text,
    upstreams_from_resolv_conf,
)
from tether.errors import DatapathError, InvalidInput

pytestmark = pytest.mark.e2e

NETNS_DIR = "/var/run/netns"
ETC_NETNS = "/etc/netns"
A, PTR, AAAA, ANY, NOERROR, FORMERR, SERVFAIL, NXDOMAIN = 1, 12, 28, 255, 0, 1, 2, 3


def sh(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=timeout)


# ---- the agent: a DNS client inside a sandbox -------------------------------------------

AGENT = r'''
import json, random, socket, struct, sys, threading, time

SERVER = ("127.0.0.11", 53)

def build(name, qtype, edns):
    ident = random.randrange(65536)
    packet = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 1 if edns else 0)
    for label in name.split("."):
        if label:
            packet += bytes([len(label)]) + label.encode()
    packet += b"\0" + struct.pack("!HH", qtype, 1)
    if edns:
        packet += b"\0" + struct.pack("!HHIH", 41, edns, 0, 0)
    return ident, packet

def read_name(p, o):
    labels = []
    while p[o]:
        if p[o] >= 0xC0:
            o = ((p[o] & 0x3F) << 8) | p[o + 1]
            continue
        labels.append(p[o + 1:o + 1 + p[o]].decode())
        o += 1 + p[o]
    return ".".join(labels)

def skip_name(p, o):
    while True:
        n = p[o]
        if n == 0:
            return o + 1
        if n >= 0xC0:
            return o + 2
        o += 1 + n

def parse(p):
    ident, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", p)
    o = 12
    for _ in range(qd):
        o = skip_name(p, o) + 4
    answers = []
    for _ in range(an):
        o = skip_name(p, o)
        rtype, _, ttl, rdlen = struct.unpack_from("!HHIH", p, o)
        o += 10
        if rtype == 1:
            answers.append(socket.inet_ntoa(p[o:o + rdlen]))
        elif rtype == 28:
            answers.append(socket.inet_ntop(socket.AF_INET6, p[o:o + rdlen]))
        elif rtype == 12:
            answers.append(read_name(p, o))
        o += rdlen
    return {"id": ident, "rcode": flags & 15, "tc": bool(flags & 0x200), "aa": bool(flags & 0x400),
            "answers": answers, "size": len(p)}

def recv_exactly(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data

def udp_ask(s, name, qtype=1, edns=None):
    ident, packet = build(name, qtype, edns)
    s.send(packet)
    while True:
        reply = parse(s.recv(65535))
        if reply["id"] == ident:
            return reply

def query(name, qtype=1, tcp=False, edns=None, timeout=5.0):
    start = time.monotonic()
    try:
        if tcp:
            ident, packet = build(name, qtype, edns)
            with socket.create_connection(SERVER, timeout=timeout) as s:
                s.sendall(struct.pack("!H", len(packet)) + packet)
                n = struct.unpack("!H", recv_exactly(s, 2))[0]
                reply = parse(recv_exactly(s, n))
                assert reply["id"] == ident
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(timeout)
                s.connect(SERVER)
                reply = udp_ask(s, name, qtype, edns)
    except Exception as exc:
        reply = {"error": type(exc).__name__ + ": " + str(exc)}
    reply["ms"] = (time.monotonic() - start) * 1000
    return reply

def tcp_pipeline(names):
    """Every query on one connection at once; the replies in whatever order they come."""
    built = [build(name, 1, None) for name in names]
    with socket.create_connection(SERVER, timeout=5) as s:
        s.sendall(b"".join(struct.pack("!H", len(p)) + p for _, p in built))
        by_id = {}
        for _ in built:
            n = struct.unpack("!H", recv_exactly(s, 2))[0]
            reply = parse(recv_exactly(s, n))
            by_id[reply["id"]] = reply
    return {"replies": [by_id[ident]["answers"] for ident, _ in built]}

def raw(hexdata, timeout=1.0):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect(SERVER)
        s.send(bytes.fromhex(hexdata))
        try:
            return {"reply": s.recv(65535).hex()}
        except socket.timeout:
            return {"reply": None}

def bench(name, seconds):
    count = failures = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        s.connect(SERVER)
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            try:
                ok = udp_ask(s, name)["answers"] != []
            except Exception:
                ok = False
            count += 1
            failures += not ok
        elapsed = time.monotonic() - start
    return {"count": count, "failures": failures, "seconds": elapsed}

class Loop:
    def __init__(self, name, expect):
        self.name, self.expect = name, expect
        self.ok = self.fail = 0
        self.errors = []
        self.stopping = False
        self.first = threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()
        self.first.wait(5)

    def run(self):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1.0)
            s.connect(SERVER)
            while not self.stopping:
                try:
                    reply = udp_ask(s, self.name)
                    good = reply["rcode"] == 0 and reply["answers"] == self.expect
                    problem = reply
                except Exception as exc:
                    good, problem = False, repr(exc)
                if good:
                    self.ok += 1
                else:
                    self.fail += 1
                    if len(self.errors) < 5:
                        self.errors.append(problem)
                self.first.set()

    def stop(self):
        self.stopping = True
        self.thread.join()
        return {"ok": self.ok, "fail": self.fail, "errors": self.errors}

loop = None
for line in sys.stdin:
    request = json.loads(line)
    op = request.pop("op")
    try:
        if op == "query":
            result = query(**request)
        elif op == "gethostbyname":
            try:
                result = {"address": socket.gethostbyname(request["name"])}
            except OSError as exc:
                result = {"error": str(exc)}
        elif op == "getaddrinfo":  # glibc, one family or both, without AI_ADDRCONFIG
            family = {0: socket.AF_UNSPEC, 4: socket.AF_INET, 6: socket.AF_INET6}[request["family"]]
            try:
                infos = socket.getaddrinfo(request["name"], None, family, socket.SOCK_STREAM)
                result = {"addresses": list(dict.fromkeys(info[4][0] for info in infos))}
            except OSError as exc:
                result = {"error": str(exc)}
        elif op == "getfqdn":  # glibc's gethostbyaddr: a PTR query, timed
            start = time.monotonic()
            result = {"name": socket.getfqdn(request["address"])}
            result["ms"] = (time.monotonic() - start) * 1000
        elif op == "tcp_pipeline":
            result = tcp_pipeline(**request)
        elif op == "raw":
            result = raw(**request)
        elif op == "bench":
            result = bench(**request)
        elif op == "loop_start":
            loop = Loop(**request)
            result = {}
        elif op == "loop_stop":
            result = loop.stop()
        else:
            result = {"error": "unknown op " + op}
    except Exception as exc:
        result = {"error": type(exc).__name__ + ": " + str(exc)}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
'''


class Agent:
    """A python process inside one sandbox, asked over stdin/stdout, one JSON line each way."""

    def __init__(self, netns: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-u", "-c", AGENT],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )

    def call(self, op: str, timeout: float = 30, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"agent gave no answer to {op} {args} in {timeout}s")
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"agent died on {op} {args}")
        result: dict[str, Any] = json.loads(line)
        return result

    def query(self, name: str, qtype: int = A, **args: Any) -> dict[str, Any]:
        return self.call("query", name=name, qtype=qtype, **args)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


# ---- a fake upstream DNS server on the test's loopback -----------------------------------


class FakeUpstream:
    """A DNS server on 127.0.0.1:PORT (UDP and TCP) with a fixed zone; NXDOMAIN otherwise.

    Like a server without EDNS, it answers UDP within 512 octets: a bigger answer goes out
    empty with TC set. ``seen`` records (transport, name) of every query.
    """

    def __init__(self, zone: dict[str, list[str]]) -> None:
        self.zone = zone
        self.seen: list[tuple[str, str]] = []
        self.udp, self.tcp = self._bind_pair()
        self.port = self.udp.getsockname()[1]
        self.stopping = False
        self.threads = [
            threading.Thread(target=self._serve_udp, daemon=True),
            threading.Thread(target=self._serve_tcp, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @staticmethod
    def _bind_pair() -> tuple[socket.socket, socket.socket]:
        for _ in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                tcp.bind(("127.0.0.1", udp.getsockname()[1]))
            except OSError:
                udp.close()
                tcp.close()
                continue
            tcp.listen(16)
            udp.settimeout(0.2)
            tcp.settimeout(0.2)
            return udp, tcp
        raise RuntimeError("no free port pair")

    def answer(self, packet: bytes, transport: str) -> bytes:
        ident, flags = struct.unpack_from("!HH", packet)
        offset, labels = 12, []
        while packet[offset]:
            labels.append(packet[offset + 1 : offset + 1 + packet[offset]].decode())
            offset += 1 + packet[offset]
        question = packet[12 : offset + 5]
        qtype = struct.unpack_from("!H", packet, offset + 1)[0]
        name = ".".join(labels).lower()
        self.seen.append((transport, name))
        if name not in self.zone:
            return struct.pack("!HHHHHH", ident, 0x8180 | NXDOMAIN, 1, 0, 0, 0) + question
        addresses = self.zone[name] if qtype == A else []
        records = b"".join(
            struct.pack("!HHHIH", 0xC00C, A, 1, 30, 4) + socket.inet_aton(a) for a in addresses
        )
        flags = 0x8180
        if transport == "udp" and 12 + len(question) + len(records) > 512:
            return struct.pack("!HHHHHH", ident, flags | 0x0200, 1, 0, 0, 0) + question
        return struct.pack("!HHHHHH", ident, flags, 1, len(addresses), 0, 0) + question + records

    def _serve_udp(self) -> None:
        while not self.stopping:
            try:
                packet, peer = self.udp.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            with contextlib.suppress(Exception):
                self.udp.sendto(self.answer(packet, "udp"), peer)

    def _serve_tcp(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.tcp.accept()
            except (TimeoutError, OSError):
                continue
            with conn, contextlib.suppress(Exception):
                conn.settimeout(2)
                length = struct.unpack("!H", conn.recv(2, socket.MSG_WAITALL))[0]
                reply = self.answer(conn.recv(length, socket.MSG_WAITALL), "tcp")
                conn.sendall(struct.pack("!H", len(reply)) + reply)

    def close(self) -> None:
        self.stopping = True
        for thread in self.threads:
            thread.join(timeout=5)
        self.udp.close()
        self.tcp.close()


def drain_questions(sock: socket.socket) -> list[str]:
    """The question names of every datagram waiting on ``sock`` (non-blocking), in order."""
    names = []
    while True:
        try:
            packet = sock.recv(65535)
        except BlockingIOError:
            return names
        offset, labels = 12, []
        while packet[offset]:
            labels.append(packet[offset + 1 : offset + 1 + packet[offset]].decode())
            offset += 1 + packet[offset]
        names.append(".".join(labels).lower())


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- fixture ----------------------------------------------------------------------------

BIG = [str(ipaddress.IPv4Address("198.51.100.1") + i) for i in range(60)]
ZONE = {"www.example.test": ["192.0.2.10"], "big.example.test": BIG}


@dataclass
class Env:
    prefix: str
    upstream: FakeUpstream
    resolver: Resolver
    resolvers: list[Resolver] = field(default_factory=list)
    agents: list[Agent] = field(default_factory=list)

    def netns(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def new_resolver(self, upstreams: list[str]) -> Resolver:
        resolver = Resolver(upstreams)
        self.resolvers.append(resolver)
        resolver.start()
        return resolver

    def sandbox(self, name: str, networks: list[str], resolver: Resolver | None = None) -> Agent:
        """A namespace with lo up, served by ``resolver``, and an agent inside it."""
        netns = self.netns(name)
        sh("ip", "netns", "add", netns)
        sh("ip", "-n", netns, "link", "set", "lo", "up")
        os.makedirs(f"{ETC_NETNS}/{netns}")
        with open(f"{ETC_NETNS}/{netns}/resolv.conf", "w") as handle:
            handle.write(resolv_conf_text())
        resolver = resolver or self.resolver
        resolver.set_networks(netns, networks)
        resolver.serve(netns, f"{NETNS_DIR}/{netns}")
        agent = Agent(netns)
        self.agents.append(agent)
        return agent

    def in_netns(self, name: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.netns(name), *cmd, check=check)


def leftovers(prefix: str) -> list[str]:
    found = []
    for directory in (NETNS_DIR, ETC_NETNS):
        with contextlib.suppress(FileNotFoundError):
            found += [f"{directory}/{n}" for n in os.listdir(directory) if n.startswith(prefix)]
    return found


@pytest.fixture
def env() -> Iterator[Env]:
    prefix = f"tdns{uuid.uuid4().hex[:4]}"
    made_etc_netns = not os.path.exists(ETC_NETNS)
    upstream = FakeUpstream(ZONE)
    resolver = Resolver([upstream.address])
    resolver.start()
    environment = Env(prefix=prefix, upstream=upstream, resolver=resolver, resolvers=[resolver])
    try:
        yield environment
    finally:
        for agent in environment.agents:
            agent.close()
        for each in environment.resolvers:
            each.stop()
        upstream.close()
        for path in leftovers(prefix):
            if path.startswith(NETNS_DIR):
                sh("ip", "netns", "del", os.path.basename(path), check=False)
            else:
                shutil.rmtree(path, ignore_errors=True)
        if made_etc_netns:
            with contextlib.suppress(OSError):
                os.rmdir(ETC_NETNS)  # only if empty: another user may have arrived
    assert leftovers(prefix) == [], "namespaces or /etc/netns directories left behind"


APPNET = {"db": ["10.210.0.2"], "database": ["10.210.0.2"], "web": ["10.210.0.3"]}
# Dual stack, as the controller writes it: a container's v6 address under the same names.
APPNET6 = {
    "db": ["10.210.0.2", "fd00:210::2"],
    "database": ["10.210.0.2", "fd00:210::2"],
    "web": ["10.210.0.3", "fd00:210::3"],
    "legacy": ["10.210.0.4"],
}
APPNET_SUBNETS = ["10.210.0.0/24", "fd00:210::/64"]


def reverse_name(address: str) -> str:
    return ipaddress.ip_address(address).reverse_pointer


# ---- lookup rules (no namespaces) -------------------------------------------------------


def test_resolve_rules() -> None:
    resolver = Resolver([])
    resolver.set_records("appnet", {"DB": ["10.210.0.2"], "shared": ["10.210.0.9"]})
    resolver.set_records("Other", {"cache": ["10.211.0.2"], "shared": ["10.211.0.9"]})
    resolver.set_networks("s1", ["appnet"])
    resolver.set_networks("s2", ["Other", "appnet"])
    assert resolver.resolve("s1", "db") == ["10.210.0.2"]
    assert resolver.resolve("s1", "Db.") == ["10.210.0.2"]
    assert resolver.resolve("s1", "DB.APPNET.") == ["10.210.0.2"]
    assert resolver.resolve("s1", "cache") == []  # not on its networks
    assert resolver.resolve("s1", "cache.other") == []
    assert resolver.resolve("s1", "db.other") == []
    assert resolver.resolve("s2", "shared") == ["10.211.0.9"]  # first network first
    assert resolver.resolve("s2", "shared.appnet") == ["10.210.0.9"]
    assert resolver.resolve("s2", "cache.other") == ["10.211.0.2"]
    assert resolver.resolve("nobody", "db") == []
    resolver.add_record("appnet", "DB", "10.210.0.5")
    resolver.add_record("appnet", "db", "10.210.0.5")  # already there
    assert resolver.resolve("s1", "db") == ["10.210.0.2", "10.210.0.5"]
    resolver.remove_record("appnet", "db", "10.210.0.2")
    resolver.remove_record("appnet", "nosuch", "10.210.0.2")
    assert resolver.resolve("s1", "db") == ["10.210.0.5"]
    resolver.remove_record("appnet", "db", "10.210.0.5")
    assert resolver.resolve("s1", "db") == []
    resolver.drop_network("Other")
    assert resolver.resolve("s2", "cache") == [] and resolver.resolve("s2", "shared") == ["10.210.0.9"]
    resolver.set_networks("s2", [])
    assert resolver.resolve("s2", "shared") == []
    with pytest.raises(InvalidInput):
        resolver.add_record("appnet", "x", "not-an-ip")
    with pytest.raises(InvalidInput):
        resolver.set_records("appnet", {"x": ["fe80::1%eth0"]})  # IPv6 is welcome, a scope is not
    resolver.add_record("appnet", "db", "FD00:210:0::5")
    resolver.add_record("appnet", "db", "10.210.0.5")
    assert resolver.resolve("s1", "db") == ["10.210.0.5", "fd00:210::5"]
    assert resolver.resolve("s1", "db", 6) == ["fd00:210::5"]
    assert resolver.reverse("s1", "fd00:210::5") == "db.appnet"


def test_upstream_configuration(tmp_path: Any) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nsearch example\nnameserver 127.0.0.53\nnameserver 2001:db8::1\noptions edns0\n")
    assert upstreams_from_resolv_conf(str(conf)) == ["127.0.0.53", "2001:db8::1"]
    assert upstreams_from_resolv_conf(str(tmp_path / "missing")) == []
    Resolver(["10.0.0.1", "10.0.0.1:5353", "[::1]:5353", "::1"])
    for bad in ("nonsense", "10.0.0.1:0", "10.0.0.1:99999", "[::1]x", "dns.example:53"):
        with pytest.raises(InvalidInput):
            Resolver([bad])
    assert resolv_conf_text() == f"nameserver {RESOLVER_ADDRESS}\noptions ndots:0\n"
    assert "search a.example b.example\n" in resolv_conf_text(["a.example", "b.example"])


# ---- real packets -----------------------------------------------------------------------


def test_names_and_aliases_resolve(env: Env) -> None:
    env.resolver.set_records("appnet", APPNET)
    agent = env.sandbox("c1", ["appnet"])
    assert env.in_netns("c1", "getent", "hosts", "db").stdout.split()[0] == "10.210.0.2"
    assert env.in_netns("c1", "getent", "hosts", "database").stdout.split()[0] == "10.210.0.2"
    assert env.in_netns("c1", "getent", "hosts", "db.appnet").stdout.split()[0] == "10.210.0.2"
    assert agent.call("gethostbyname", name="web") == {"address": "10.210.0.3"}
    assert agent.call("gethostbyname", name="WEB.AppNet.") == {"address": "10.210.0.3"}
    reply = agent.query("Db")
    assert (reply["rcode"], reply["answers"], reply["aa"]) == (NOERROR, ["10.210.0.2"], True)
    # AAAA of a known name: NOERROR at once with no answer, so getaddrinfo does not wait
    reply = agent.query("db", AAAA)
    assert (reply["rcode"], reply["answers"]) == (NOERROR, []) and reply["ms"] < 500
    started = time.monotonic()
    out = env.in_netns("c1", "getent", "ahosts", "web").stdout
    assert out.split()[0] == "10.210.0.3" and time.monotonic() - started < 2
    assert env.upstream.seen == []  # nothing local went upstream


def test_sandbox_sees_only_its_networks(env: Env) -> None:
    env.resolver.set_records("appnet", {**APPNET, "shared": ["10.210.0.99"]})
    env.resolver.set_records("other", {"cache": ["10.211.0.2"], "shared": ["10.211.0.99"]})
    c1 = env.sandbox("c1", ["appnet"])
    c2 = env.sandbox("c2", ["other"])
    c3 = env.sandbox("c3", ["other", "appnet"])
    assert c1.query("cache")["rcode"] == NXDOMAIN  # forwarded, and upstream has no such name
    assert ("udp", "cache") in env.upstream.seen
    assert c1.query("cache.other")["rcode"] == NXDOMAIN
    assert c2.query("db")["rcode"] == NXDOMAIN
    assert c1.query("shared")["answers"] == ["10.210.0.99"]
    assert c2.query("shared")["answers"] == ["10.211.0.99"]
    assert c3.query("shared")["answers"] == ["10.211.0.99"]  # its first network wins
    assert c3.query("shared.appnet")["answers"] == ["10.210.0.99"]
    assert c3.query("db")["answers"] == ["10.210.0.2"]
    assert c3.query("cache")["answers"] == ["10.211.0.2"]


def test_updates_take_effect_on_the_next_query(env: Env) -> None:
    env.resolver.set_records("appnet", APPNET)
    agent = env.sandbox("c1", ["appnet"])
    assert agent.query("newbie")["rcode"] == NXDOMAIN
    env.resolver.add_record("appnet", "newbie", "10.210.0.7")
    assert agent.query("newbie")["answers"] == ["10.210.0.7"]
    env.resolver.add_record("appnet", "newbie", "10.210.0.8")
    assert agent.query("newbie")["answers"] == ["10.210.0.7", "10.210.0.8"]
    env.resolver.remove_record("appnet", "newbie", "10.210.0.7")
    env.resolver.remove_record("appnet", "newbie", "10.210.0.8")
    assert agent.query("newbie")["rcode"] == NXDOMAIN
    env.resolver.set_records("appnet", {"db": ["10.210.0.20"]})
    assert agent.query("db")["answers"] == ["10.210.0.20"]
    assert agent.query("web")["rcode"] == NXDOMAIN
    env.resolver.set_records("later", {"late": ["10.212.0.2"]})
    assert agent.query("late")["rcode"] == NXDOMAIN
    env.resolver.set_networks(env.netns("c1"), ["appnet", "later"])
    assert agent.query("late")["answers"] == ["10.212.0.2"]
    env.resolver.drop_network("later")
    assert agent.query("late")["rcode"] == NXDOMAIN
    # serve is idempotent; unserve closes the port; serving again answers at once
    env.resolver.serve(env.netns("c1"), f"{NETNS_DIR}/{env.netns('c1')}")
    assert agent.query("db")["answers"] == ["10.210.0.20"]
    env.resolver.unserve(env.netns("c1"))
    env.resolver.unserve(env.netns("c1"))
    assert "error" in agent.query("db", timeout=1.0)
    env.resolver.serve(env.netns("c1"), f"{NETNS_DIR}/{env.netns('c1')}")
    assert agent.query("db")["answers"] == ["10.210.0.20"]
    assert agent.query("db", tcp=True)["answers"] == ["10.210.0.20"]


def test_churn_never_disturbs_a_stable_name(env: Env) -> None:
    env.resolver.set_records("appnet", APPNET)
    agent = env.sandbox("c1", ["appnet"])
    watcher = env.sandbox("c2", ["appnet"])
    env.resolver.set_networks("ghost", ["appnet"])
    agent.call("loop_start", name="db", expect=["10.210.0.2"])
    for cycle in range(100):
        name, address = f"tmp{cycle}", f"10.210.1.{cycle + 1}"
        env.resolver.add_record("appnet", name, address)
        if cycle % 10 == 0:
            assert watcher.query(name)["answers"] == [address]
            env.resolver.set_records("appnet", {**APPNET, name: [address]})  # whole-table swap
            env.resolver.set_networks("ghost", ["appnet", f"n{cycle}"])
        env.resolver.remove_record("appnet", name, address)
        if cycle % 10 == 0:
            assert watcher.query(name)["rcode"] == NXDOMAIN
        time.sleep(0.005)
    result = agent.call("loop_stop")
    assert result["fail"] == 0, result
    assert result["ok"] >= 100, result  # the loop really ran alongside the churn
    print(f"\nchurn: {result['ok']} lookups of a stable name during 100 add/remove cycles, 0 failed")


def test_forwarding_udp_then_tcp(env: Env) -> None:
    agent = env.sandbox("c1", ["appnet"])
    reply = agent.query("www.example.test")
    assert (reply["rcode"], reply["answers"], reply["aa"]) == (NOERROR, ["192.0.2.10"], False)
    assert env.in_netns("c1", "getent", "hosts", "www.example.test").stdout.split()[0] == "192.0.2.10"
    assert agent.query("nosuch.example.test")["rcode"] == NXDOMAIN
    # too big for 512 octets: a UDP asker gets TC and comes back over TCP itself...
    reply = agent.query("big.example.test")
    assert reply["tc"] and reply["rcode"] == NOERROR and reply["size"] <= 512
    # ...a TCP asker gets all of it, the resolver having gone UDP then TCP upstream
    env.upstream.seen.clear()
    reply = agent.query("big.example.test", tcp=True)
    assert reply["answers"] == BIG and not reply["tc"]
    assert env.upstream.seen == [("udp", "big.example.test"), ("tcp", "big.example.test")]
    # and glibc does that dance on its own
    assert agent.call("gethostbyname", name="big.example.test")["address"] in BIG


def test_tcp_queries(env: Env) -> None:
    env.resolver.set_records("appnet", APPNET)
    agent = env.sandbox("c1", ["appnet"])
    reply = agent.query("web", tcp=True)
    assert (reply["rcode"], reply["answers"]) == (NOERROR, ["10.210.0.3"])
    assert agent.query("db", AAAA, tcp=True)["rcode"] == NOERROR
    assert agent.query("nosuch", tcp=True)["rcode"] == NXDOMAIN
    names = ["db", "www.example.test", "web", "nosuch", "database"] * 4
    replies = agent.call("tcp_pipeline", names=names)["replies"]
    expected = {"db": ["10.210.0.2"], "web": ["10.210.0.3"], "database": ["10.210.0.2"],
                "www.example.test": ["192.0.2.10"], "nosuch": []}
    assert replies == [expected[n] for n in names]


def test_dual_stack_names(env: Env) -> None:
    env.resolver.set_subnets("appnet", APPNET_SUBNETS)
    env.resolver.set_records("appnet", APPNET6)
    agent = env.sandbox("c1", ["appnet"])
    for tcp in (False, True):
        reply = agent.query("db", A, tcp=tcp)
        assert (reply["rcode"], reply["answers"], reply["aa"]) == (NOERROR, ["10.210.0.2"], True), reply
        reply = agent.query("Database.AppNet", AAAA, tcp=tcp)
        assert (reply["rcode"], reply["answers"], reply["aa"]) == (NOERROR, ["fd00:210::2"], True), reply
        assert agent.query("web", ANY, tcp=tcp)["answers"] == ["10.210.0.3", "fd00:210::3"]
        # a known name without a v6 address: NOERROR, no answer, at once (not NXDOMAIN)
        reply = agent.query("legacy", AAAA, tcp=tcp)
        assert (reply["rcode"], reply["answers"]) == (NOERROR, []) and reply["ms"] < 500, reply
    # glibc, each family alone and both together
    assert agent.call("getaddrinfo", name="web", family=6) == {"addresses": ["fd00:210::3"]}
    assert agent.call("getaddrinfo", name="web.appnet", family=4) == {"addresses": ["10.210.0.3"]}
    both = agent.call("getaddrinfo", name="db", family=0)["addresses"]
    assert sorted(both) == ["10.210.0.2", "fd00:210::2"]
    assert agent.call("getaddrinfo", name="legacy", family=0) == {"addresses": ["10.210.0.4"]}
    # a container's v6 address comes and goes under its names, as the controller does it
    env.resolver.add_record("appnet", "legacy", "fd00:210::4")
    assert agent.query("legacy", AAAA)["answers"] == ["fd00:210::4"]
    assert agent.query(reverse_name("fd00:210::4"), PTR)["answers"] == ["legacy.appnet"]
    env.resolver.remove_record("appnet", "legacy", "fd00:210::4")
    assert agent.query("legacy", AAAA)["answers"] == []
    assert agent.query("legacy")["answers"] == ["10.210.0.4"]
    assert agent.query(reverse_name("fd00:210::4"), PTR)["rcode"] == NXDOMAIN
    assert env.upstream.seen == []  # nothing local went upstream
    # a reverse name outside every tether subnet still goes upstream
    reply = agent.query(reverse_name("192.0.2.10"), PTR)
    assert (reply["rcode"], reply["aa"]) == (NXDOMAIN, False)
    assert env.upstream.seen == [("udp", "10.2.0.192.in-addr.arpa")]


def test_ptr_is_local_and_quick_when_the_upstream_never_answers(env: Env) -> None:
    """``getfqdn`` of a container used to wait for an upstream that was not there."""
    blackhole_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blackhole_sock.bind(("127.0.0.1", 0))  # bound, never answered: queries vanish
    blackhole_sock.setblocking(False)
    try:
        resolver = env.new_resolver([f"127.0.0.1:{blackhole_sock.getsockname()[1]}"])
        resolver.set_subnets("appnet", APPNET_SUBNETS)
        resolver.set_records("appnet", APPNET6)
        resolver.set_subnets("other", ["10.211.0.0/24", "fd00:211::/64"])
        resolver.set_records("other", {"cache": ["10.211.0.2", "fd00:211::2"]})
        agent = env.sandbox("c1", ["appnet"], resolver)
        slowest: dict[str, float] = {}
        for address in ("10.210.0.2", "fd00:210::2", "10.210.0.3", "fd00:210::3"):
            expected = "db.appnet" if address.endswith("2") else "web.appnet"  # never the alias
            for tcp in (False, True):
                reply = agent.query(reverse_name(address), PTR, tcp=tcp)
                assert (reply["rcode"], reply["answers"], reply["aa"]) == (NOERROR, [expected], True), reply
                assert reply["ms"] < 250, reply
            fqdn = agent.call("getfqdn", address=address)
            assert fqdn["name"] == expected and fqdn["ms"] < 500, fqdn
            family = "v6" if ":" in address else "v4"
            slowest[family] = max(slowest.get(family, 0.0), fqdn["ms"])
        # in a tether subnet with no container there, or one on a network c1 is not on
        for address in ("10.210.0.77", "fd00:210::77", "10.211.0.2", "fd00:211::2"):
            reply = agent.query(reverse_name(address), PTR)
            assert (reply["rcode"], reply["answers"]) == (NXDOMAIN, []) and reply["ms"] < 250, reply
            fqdn = agent.call("getfqdn", address=address)
            assert fqdn["name"] == address and fqdn["ms"] < 500, fqdn
        assert drain_questions(blackhole_sock) == []  # none of it went upstream
        # the control: a reverse name outside every tether subnet does go, and does stall
        reply = agent.query(reverse_name("192.0.2.10"), PTR)
        assert reply["rcode"] == SERVFAIL and reply["ms"] > 1500, reply
        assert drain_questions(blackhole_sock) == ["10.2.0.192.in-addr.arpa"]
        print(
            f"\nptr with a silent upstream: getfqdn of a container {slowest['v4']:.1f} ms (v4), "
            f"{slowest['v6']:.1f} ms (v6); a forwarded reverse name {reply['ms']:.0f} ms (SERVFAIL)"
        )
    finally:
        blackhole_sock.close()


def test_servfail_without_a_usable_upstream(env: Env) -> None:
    nobody = env.new_resolver([])
    refused = env.new_resolver([f"127.0.0.1:{free_loopback_port()}"])
    blackhole_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blackhole_sock.bind(("127.0.0.1", 0))  # bound, never read: queries vanish
    try:
        blackhole = env.new_resolver([f"127.0.0.1:{blackhole_sock.getsockname()[1]}"])
        for resolver, name in ((nobody, "n1"), (refused, "n2"), (blackhole, "n3")):
            resolver.set_records("appnet", APPNET)
        a1 = env.sandbox("n1", ["appnet"], nobody)
        a2 = env.sandbox("n2", ["appnet"], refused)
        a3 = env.sandbox("n3", ["appnet"], blackhole)
        a3b = Agent(env.netns("n3"))
        env.agents.append(a3b)
        for agent, budget in ((a1, 500), (a2, 1000)):
            reply = agent.query("www.example.test")
            assert reply["rcode"] == SERVFAIL and reply["ms"] < budget, reply
            reply = agent.query("www.example.test", tcp=True)
            assert reply["rcode"] == SERVFAIL and reply["ms"] < budget, reply
        # an upstream that never answers: SERVFAIL after ~2 s, and meanwhile the serving
        # thread keeps answering local names without a hitch
        a3b.call("loop_start", name="db", expect=["10.210.0.2"])
        reply = a3.query("www.example.test")
        local = a3b.call("loop_stop")
        assert reply["rcode"] == SERVFAIL and 1500 < reply["ms"] < 3500, reply
        assert local["fail"] == 0 and local["ok"] > 50, local
        assert a1.query("db")["answers"] == ["10.210.0.2"]
    finally:
        blackhole_sock.close()


def test_serve_before_start_and_restart(env: Env) -> None:
    resolver = Resolver([])
    env.resolvers.append(resolver)
    resolver.set_records("appnet", APPNET)
    agent = env.sandbox("c1", ["appnet"], resolver)  # served, not started: queries queue
    resolver.start()
    assert agent.query("db")["answers"] == ["10.210.0.2"]
    resolver.stop()
    assert "error" in agent.query("db", timeout=1.0)  # stop closed the sockets
    resolver.start()
    resolver.serve(env.netns("c1"), f"{NETNS_DIR}/{env.netns('c1')}")
    assert agent.query("db", tcp=True)["answers"] == ["10.210.0.2"]  # names survived


def test_garbage_over_the_wire(env: Env) -> None:
    env.resolver.set_records("appnet", APPNET)
    agent = env.sandbox("c1", ["appnet"])
    assert agent.call("raw", hexdata="0102")["reply"] is None  # no header: silence
    # a header, a question count of 1 and a name pointing at itself
    reply = agent.call("raw", hexdata="abcd01000001000000000000c00c00010001")["reply"]
    assert reply is not None
    ident, flags = struct.unpack_from("!HH", bytes.fromhex(reply))
    assert ident == 0xABCD and flags & 0x8000 and flags & 0xF == FORMERR
    # a response is never answered
    assert agent.call("raw", hexdata="abcd81800001000000000000026462000001 0001".replace(" ", ""))["reply"] is None
    # and the resolver is still fine
    assert agent.query("db")["answers"] == ["10.210.0.2"]
    assert agent.query("db", tcp=True)["answers"] == ["10.210.0.2"]


def test_serve_failures_are_one_line_datapath_errors(env: Env) -> None:
    with pytest.raises(DatapathError) as info:
        env.resolver.serve("ghost", f"{NETNS_DIR}/{env.netns('missing')}")
    assert "\n" not in str(info.value) and "No such file" in str(info.value)
    env.sandbox("c1", ["appnet"])
    other = env.new_resolver([])
    with pytest.raises(DatapathError) as info:
        other.serve("c1-again", f"{NETNS_DIR}/{env.netns('c1')}")  # port 53 taken there
    assert "Address already in use" in str(info.value) and "\n" not in str(info.value)


def test_measure_queries_per_second(env: Env) -> None:
    """Printed, not asserted: one client, one query at a time, over UDP."""
    env.resolver.set_records("appnet", APPNET)
    agent = env.sandbox("c1", ["appnet"])
    local = agent.call("bench", name="db", seconds=2.0)
    forwarded = agent.call("bench", name="www.example.test", seconds=2.0)
    assert local["failures"] == 0 and forwarded["failures"] == 0
    print(
        f"\ndns qps, one client, sequential UDP: local name {local['count'] / local['seconds']:.0f}/s, "
        f"forwarded to a loopback upstream {forwarded['count'] / forwarded['seconds']:.0f}/s"
    )
