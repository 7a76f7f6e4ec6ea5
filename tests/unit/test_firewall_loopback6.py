"""The IPv6 loopback relay (tether/firewall/loopback6.py) on this machine's ::1 only: a
server in this process on one ::1 port plays the container, the relay listens on another.
TCP both ways, half-close, back-pressure without a busy loop, many connections at once,
UDP clients and idle sessions, removal and rebinding, bind failures. No namespaces, no
traffic off loopback."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tether.errors import Conflict, SystemFailure
from tether.firewall.loopback6 import ListenerKey, LoopbackRelay, Target, loopback_listeners
from tether.firewall.rules import PortRule

EOF_MARK = b"<eof>"


def _free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET6, kind) as sock:
        sock.bind(("::1", 0))
        return int(sock.getsockname()[1])


def _free_key(protocol: str = "tcp") -> ListenerKey:
    return ListenerKey(protocol, _free_port(socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM))


class Server:
    """The 'container': on ::1, TCP echoes every chunk as it comes and answers EOF with
    ``<eof>`` then closes (``mute``: reads nothing; ``greet``: sends ``hi`` and closes at
    once); UDP answers ``<source port> <data>``."""

    def __init__(self, kind: socket.SocketKind = socket.SOCK_STREAM, mute: bool = False, greet: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET6, kind)
        self.sock.bind(("::1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.mute, self.greet = mute, greet
        self.held: list[socket.socket] = []
        if kind == socket.SOCK_STREAM:
            self.sock.listen(512)
        threading.Thread(target=self._tcp if kind == socket.SOCK_STREAM else self._udp, daemon=True).start()

    @property
    def target(self) -> Target:
        return ("::1", self.port)

    def _tcp(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.mute:
                self.held.append(conn)
            elif self.greet:
                with conn:
                    conn.sendall(b"hi")
            else:
                threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
                conn.sendall(EOF_MARK)
            except OSError:
                pass

    def _udp(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(65535)
                if peer is None:  # shut down
                    return
                self.sock.sendto(f"{peer[1]} ".encode() + data, peer)
            except OSError:
                return

    def close(self) -> None:
        for sock in [self.sock, *self.held]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


@pytest.fixture
def relay() -> Iterator[LoopbackRelay]:
    r = LoopbackRelay(udp_idle=0.4)
    yield r
    r.close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def _connect(key: ListenerKey, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("::1", key.port), timeout=timeout)


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _relayed(relay: LoopbackRelay, target: Target, protocol: str = "tcp") -> ListenerKey:
    key = _free_key(protocol)
    assert relay.add({key: target}) == [key]
    return key


# -- which ports get a listener ---------------------------------------------------------------


def test_only_v6_ports_on_loopback_or_every_address_are_relayed() -> None:
    ports = [
        PortRule("tcp", None, 8080, "10.1.0.2", 80),  # v4: the kernel serves 127.0.0.1
        PortRule("tcp", None, 8080, "fd00::2", 80),  # -p 8080:80, v6 half: [::1] too
        PortRule("udp", "::", 5353, "fd00::2", 53),
        PortRule("tcp", "::1", 9090, "fd00::3", 90),
        PortRule("tcp", "2001:db8::1", 9191, "fd00::2", 80),  # one other address: kernel NAT
    ]
    assert loopback_listeners(ports) == {
        ListenerKey("tcp", 8080): ("fd00::2", 80),
        ListenerKey("udp", 5353): ("fd00::2", 53),
        ListenerKey("tcp", 9090): ("fd00::3", 90),
    }
    # [::1] itself beats every address for the same host port, in either order
    both = [PortRule("tcp", None, 7000, "fd00::2", 80), PortRule("tcp", "::1", 7000, "fd00::3", 80)]
    assert loopback_listeners(both) == loopback_listeners(both[::-1]) == {ListenerKey("tcp", 7000): ("fd00::3", 80)}


# -- TCP -----------------------------------------------------------------------------------


def test_tcp_data_both_ways_and_half_close(relay: LoopbackRelay, server: Server) -> None:
    key = _relayed(relay, server.target)
    with _connect(key) as client:
        client.sendall(b"hello")
        assert client.recv(100) == b"hello"
        client.sendall(b"again")
        assert client.recv(100) == b"again"
        # half-close: the server sees EOF, and its answer after that still arrives
        client.shutdown(socket.SHUT_WR)
        assert _read_all(client) == EOF_MARK
    assert str(key) == f"host port tcp/{key.port} on [::1]"


def test_tcp_a_large_stream_under_back_pressure(relay: LoopbackRelay, server: Server) -> None:
    key = _relayed(relay, server.target)
    payload = os.urandom(8 << 20)  # far more than every buffer on the way holds
    with _connect(key, timeout=20) as client:

        def send() -> None:
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        received = _read_all(client)
        sender.join()
    assert received == payload + EOF_MARK


def _cpu_seconds(thread: threading.Thread) -> float:
    with open(f"/proc/self/task/{thread.native_id}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_stalled_container_stops_the_client_and_costs_no_cpu(relay: LoopbackRelay) -> None:
    mute = Server(mute=True)  # accepts, never reads
    try:
        key = _relayed(relay, mute.target)
        with _connect(key) as client, _connect(key) as idle:
            idle.shutdown(socket.SHUT_WR)  # a half-closed connection with nothing to do
            client.setblocking(False)
            sent, chunk, stopped = 0, b"x" * 65536, False
            while not stopped and sent < 64 << 20:  # until every buffer on the way is full
                try:
                    sent += client.send(chunk)
                except BlockingIOError:
                    time.sleep(0.2)  # the relay may still be draining its side
                    try:
                        sent += client.send(chunk)
                    except BlockingIOError:
                        stopped = True
            assert stopped, f"the client was never stopped ({sent} bytes sent)"  # bounded: kernel
            # buffers plus at most BUFFER in the relay
            thread = relay._thread
            assert thread is not None
            before = _cpu_seconds(thread)
            time.sleep(1.0)
            assert _cpu_seconds(thread) - before < 0.1  # nothing spins while both wait
    finally:
        mute.close()


def test_many_connections_at_once(relay: LoopbackRelay, server: Server) -> None:
    key = _relayed(relay, server.target)

    def one(i: int) -> bool:
        message = f"client {i} ".encode() * 100
        with _connect(key, timeout=10) as client:
            client.sendall(message)
            client.shutdown(socket.SHUT_WR)
            return _read_all(client) == message + EOF_MARK

    with ThreadPoolExecutor(64) as pool:
        assert all(pool.map(one, range(300)))


def test_a_target_that_refuses_resets_the_client(relay: LoopbackRelay) -> None:
    key = _relayed(relay, ("::1", _free_port()))  # nothing listens there
    with _connect(key) as client:
        with pytest.raises((ConnectionResetError, ConnectionRefusedError)):
            client.sendall(b"x")
            client.recv(10)
            client.recv(10)


def test_the_container_closing_first_ends_the_client(relay: LoopbackRelay) -> None:
    greeter = Server(greet=True)  # answers at once and closes, like TCP_WHO6 in the e2e tests
    try:
        key = _relayed(relay, greeter.target)
        with _connect(key) as client:
            assert _read_all(client) == b"hi"  # then a clean end, not a hang
            client.sendall(b"late")  # the client may still send: it is half-closed, not reset
    finally:
        greeter.close()


# -- UDP -----------------------------------------------------------------------------------


def _udp_ask(sock: socket.socket, key: ListenerKey, data: bytes) -> tuple[bytes, int]:
    sock.sendto(data, ("::1", key.port))
    answer, source = sock.recvfrom(65535)
    return answer, int(source[1])


def test_udp_clients_each_get_their_own_session(relay: LoopbackRelay) -> None:
    server = Server(socket.SOCK_DGRAM)
    try:
        key = _relayed(relay, server.target, "udp")
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as a, \
                socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as b:
            for sock in (a, b):
                sock.settimeout(5)
            answer_a, source = _udp_ask(a, key, b"from a")
            assert source == key.port  # the reply comes from the listening socket
            upstream_a, _, data = answer_a.partition(b" ")
            assert data == b"from a"
            answer_b, _ = _udp_ask(b, key, b"from b")
            assert answer_b.partition(b" ")[0] != upstream_a  # another upstream socket
            assert _udp_ask(a, key, b"more")[0].partition(b" ")[0] == upstream_a  # the same session
            # idle past udp_idle (0.4 s here): the session is closed, the next datagram opens another
            time.sleep(1.0)
            assert _udp_ask(a, key, b"later")[0].partition(b" ")[0] != upstream_a
    finally:
        server.close()


# -- listeners -------------------------------------------------------------------------------


def test_removal_closes_the_listener_and_its_connections(relay: LoopbackRelay, server: Server) -> None:
    key = _relayed(relay, server.target)
    client = _connect(key)
    try:
        client.sendall(b"hi")
        assert client.recv(10) == b"hi"
        relay.remove({key: ("::1", 1)})  # another target: stays
        assert relay.listening() == {key: server.target}
        relay.remove({key: server.target})
        assert relay.listening() == {}
        assert client.recv(10) == b""  # its connection went with it
    finally:
        client.close()
    with pytest.raises(ConnectionRefusedError):
        _connect(key)
    relay.remove({key: server.target})  # idempotent


def test_the_same_port_can_be_bound_again_right_after_removal(relay: LoopbackRelay, server: Server) -> None:
    key = _relayed(relay, server.target)
    with _connect(key) as client:  # leaves a connection behind in TIME_WAIT
        client.sendall(b"x")
        assert client.recv(10) == b"x"
    relay.remove({key: server.target})
    other = Server()
    try:
        assert relay.add({key: other.target}) == [key]
        with _connect(key) as client:
            client.sendall(b"y")
            assert client.recv(10) == b"y"
        udp = _free_key("udp")
        for _ in range(3):
            assert relay.add({udp: server.target}) == [udp]
            relay.remove({udp: server.target})
    finally:
        other.close()


def test_add_is_idempotent_all_or_nothing_and_names_a_held_port(relay: LoopbackRelay, server: Server) -> None:
    key = _relayed(relay, server.target)
    assert relay.add({key: server.target}) == []  # already there
    with pytest.raises(Conflict, match=f"tcp/{key.port} on \\[::1\\] is already relayed to"):
        relay.add({key: ("::1", 1)})
    fresh = _free_key()
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as holder:
        holder.bind(("::1", 0))
        holder.listen(1)
        held = ListenerKey("tcp", holder.getsockname()[1])
        with pytest.raises(Conflict) as info:
            relay.add({fresh: server.target, held: server.target})
        assert info.value.message == f"host port tcp/{held.port} on [::1] is held by another process: pick another host port"
        assert relay.listening() == {key: server.target}  # fresh was closed again
        # replace skips what it cannot bind and names it
        problems = relay.replace({fresh: server.target, held: server.target})
        assert relay.listening() == {fresh: server.target}
        assert problems == [info.value.message]


def test_close_stops_the_thread_and_refuses_further_calls(server: Server) -> None:
    relay = LoopbackRelay()
    assert relay._thread is None  # started lazily
    key = _relayed(relay, server.target)
    thread = relay._thread
    assert thread is not None and thread.is_alive()
    relay.close()
    relay.close()
    assert not thread.is_alive()
    with pytest.raises(ConnectionRefusedError):
        _connect(key)
    with pytest.raises(SystemFailure):
        relay.add({key: server.target})
    LoopbackRelay().close()  # never started


