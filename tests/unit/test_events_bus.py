"""The event bus (``tether/events.py``): ring, since/until, waiting, filters, time parsing;
the controller's events on fakes (held until an operation commits, none from an undone
one); the overlay agent's host up/down; and the ``GET /events`` stream over a real socket."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from controllerkit import make_controller

from tether.control import keys as ckeys
from tether.control.agent import OverlayAgent
from tether.control.cluster import Cluster
from tether.errors import Conflict, InvalidInput
from tether.events import Event, EventBus, matches, parse_filters, parse_time
from tether.testing.datapath import RecordingDatapath
from tether.testing.memory import MemoryStore


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------- the ring
def test_events_get_consecutive_numbers_and_the_ring_keeps_the_last_ones() -> None:
    bus = EventBus(capacity=4, clock=Clock())
    assert bus.last_seq == 0 and bus.after(0) == []
    for i in range(6):
        bus.emit("network", "create", (f"id{i}", f"n{i}"), driver="bridge", subnet=None)
    assert bus.last_seq == 6
    kept = bus.after(0)
    assert [e.seq for e in kept] == [3, 4, 5, 6]  # the oldest two are gone
    assert [e.actor_name for e in bus.after(4)] == ["n4", "n5"]
    assert bus.after(6) == []
    assert kept[0].attributes == {"driver": "bridge"}  # None attributes are left out
    assert kept[0].to_dict() == {
        "seq": 3, "time": 1000.0, "type": "network", "action": "create",
        "actor": {"id": "id2", "name": "n2"}, "attributes": {"driver": "bridge"},
    }
    assert Event.from_dict(kept[0].to_dict()) == kept[0]


def test_actors_may_be_records_pairs_or_names() -> None:
    class Record:
        id, name = "abc", "web"

    bus = EventBus()
    assert (bus.emit("container", "start", Record()).actor_id, bus.emit("x", "y", "h1").actor_name) == ("abc", "h1")


def test_since_finds_the_first_kept_event_at_or_after_a_time() -> None:
    clock = Clock(100.0)
    bus = EventBus(capacity=3, clock=clock)
    for t in (100.0, 101.0, 102.0, 103.0):  # the first falls out of the ring
        clock.now = t
        bus.emit("host", "up", "h")
    assert [e.time for e in bus.after(bus.seq_before(101.5))] == [102.0, 103.0]
    assert [e.time for e in bus.after(bus.seq_before(102.0))] == [102.0, 103.0]
    assert [e.time for e in bus.after(bus.seq_before(0))] == [101.0, 102.0, 103.0]
    assert bus.after(bus.seq_before(200.0)) == []


def test_times_never_go_backwards() -> None:
    clock = Clock(50.0)
    bus = EventBus(clock=clock)
    bus.emit("host", "up", "a")
    clock.now = 40.0  # the wall clock stepped back
    assert bus.emit("host", "down", "a").time == 50.0


def test_a_reader_waits_for_the_next_event_and_close_wakes_it_for_good() -> None:
    bus = EventBus()
    got: list[list[Event]] = []
    reader = threading.Thread(target=lambda: got.append(bus.wait(0, timeout=5)))
    reader.start()
    time.sleep(0.05)
    bus.emit("network", "create", "n")
    reader.join(2)
    assert [[e.actor_name for e in batch] for batch in got] == [["n"]]
    started = time.monotonic()
    assert bus.wait(1, timeout=0.05) == [] and time.monotonic() - started >= 0.04  # nothing new: times out
    closer = threading.Timer(0.05, bus.close)
    closer.start()
    assert bus.wait(1, timeout=5) == [] and bus.closed
    assert bus.wait(0, timeout=5) == []  # closed: never waits again


# ---------------------------------------------------------------------- filters
def _event(type_: str, action: str, actor: tuple[str, str], **attributes: Any) -> Event:
    return Event(1, 1.0, type_, action, actor[0], actor[1], attributes)


def test_filters_or_within_a_key_and_across_keys() -> None:
    start = _event("container", "start", ("3f2a9c", "web"))
    attach = _event("endpoint", "attach", ("e1", "web.app"), container="web", container_id="3f2a9c", network="app",
                    network_id="77aa")
    port = _event("port", "publish", ("3f2a9c", "web"), network="app")
    net = _event("network", "create", ("77aa", "app"))
    assert matches(start, {}) and matches(start, parse_filters(["type=container", "type=network"]))
    assert not matches(attach, parse_filters(["type=container"]))
    assert matches(start, parse_filters(["type=container", "event=start"]))
    assert not matches(start, parse_filters(["type=container", "event=die"]))
    for e in (start, attach, port):
        assert matches(e, parse_filters(["container=web"])) and matches(e, parse_filters(["container=3f2a"]))
        assert not matches(e, parse_filters(["container=we"]))  # a name is whole, an ID may be a prefix
    for e in (attach, port, net):
        assert matches(e, parse_filters(["network=app"]))
    assert matches(net, parse_filters(["network=77a"])) and not matches(start, parse_filters(["network=app"]))


@pytest.mark.parametrize("item", ["type", "=x", "colour=red", "type=", "type=volume"])
def test_bad_filters_are_one_line(item: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_filters([item])
    assert "\n" not in str(err.value) and item.split("=")[0] in str(err.value)


# ---------------------------------------------------------------------- --since, --until
@pytest.mark.parametrize(("text", "expected"), [
    ("10m", 1_000_000.0 - 600), ("30s", 1_000_000.0 - 30), ("1h30m", 1_000_000.0 - 5400),
    ("1.5h", 1_000_000.0 - 5400), ("500ms", 1_000_000.0 - 0.5), ("-10s", 1_000_000.0 + 10),
    ("1733400000", 1733400000.0), ("1733400000.25", 1733400000.25),
    ("2024-12-05T12:00:00Z", 1733400000.0), ("2024-12-05T13:00:00+01:00", 1733400000.0),
    ("2024-12-05t12:00:00z", 1733400000.0),
])  # fmt: skip
def test_times_are_read_as_docker_reads_them(text: str, expected: float) -> None:
    assert parse_time("--since", text, 1_000_000.0) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "bogus", "10", "10x", "m", "2024-13-45", "2024-12-05T", "1e9", "10m5"])
def test_bad_times_are_one_line(text: str) -> None:
    if text == "10":
        assert parse_time("--since", text, 0) == 10.0  # a bare number is a Unix timestamp
        return
    with pytest.raises(InvalidInput) as err:
        parse_time("--until", text, 1_000_000.0)
    assert str(err.value).startswith(f"invalid --until {text!r}")


# ---------------------------------------------------------------------- the controller's events
def _seen(bus: EventBus, after: int = 0) -> list[tuple[str, str, str]]:
    return [(e.type, e.action, e.actor_name) for e in bus.after(after)]


def test_the_controller_emits_what_it_made_and_removed_in_order(tmp_path: Path) -> None:
    ctl = make_controller(tmp_path)
    ctl.create_network("app", subnet="10.70.0.0/24")
    ctl.create_container(["sleep", "1"], name="web", net="app", publish=["8080:80/tcp"])
    ctl.remove_container("web", force=True)
    ctl.remove_network("app")
    assert _seen(ctl.events) == [
        ("network", "create", "app"),
        ("container", "create", "web"),
        ("endpoint", "attach", "web.app"),
        ("port", "publish", "web"),
        ("port", "unpublish", "web"),
        ("endpoint", "detach", "web.app"),
        ("container", "destroy", "web"),
        ("network", "destroy", "app"),
    ]
    events = ctl.events.after(0)
    assert events[0].attributes == {"driver": "bridge", "subnet": "10.70.0.0/24"}
    attach = events[2].attributes
    assert (attach["container"], attach["network"], attach["ifname"]) == ("web", "app", "eth0")
    assert str(attach["address"]).startswith("10.70.0.") and "address6" not in attach
    assert events[3].attributes == {
        "port": "8080->80/tcp", "host_port": 8080, "container_port": 80, "protocol": "tcp", "network": "app",
    }


def test_an_undone_operation_emits_nothing(tmp_path: Path) -> None:
    ctl = make_controller(tmp_path)
    ctl.create_network("app", subnet="10.71.0.0/24")
    ctl.create_container(["sleep", "1"], name="web", net="app", publish=["8080:80"])
    seq = ctl.events.last_seq
    with pytest.raises(Conflict):  # fails at its ports, after its record, sandbox and endpoint were made
        ctl.create_container(["sleep", "1"], name="other", net="app", publish=["8080:80"])
    with pytest.raises(Conflict):
        ctl.create_network("app")
    assert _seen(ctl.events, seq) == []


def test_reconcile_emits_one_event_per_correction(tmp_path: Path) -> None:
    ctl = make_controller(tmp_path)
    ctl.create_network("app", subnet="10.72.0.0/24")
    ctl.create_container(["sleep", "1"], name="web", net="app")
    veth = ctl._endpoints()[0].host_ifname
    ctl.ctx.datapath.veths.pop(veth, None)  # type: ignore[attr-defined]
    seq = ctl.events.last_seq
    actions = ctl.reconcile()
    corrections = [e for e in ctl.events.after(seq) if e.type == "reconcile"]
    assert actions and [e.attributes["message"] for e in corrections] == actions
    assert {e.action for e in corrections} == {"correct"}


# ---------------------------------------------------------------------- the overlay agent: hosts
def test_the_agent_tells_when_a_host_comes_up_and_goes_down(tmp_path: Path) -> None:
    gstore = MemoryStore()
    ctl = make_controller(tmp_path, cluster_store=gstore, node="A")
    assert ctl.cluster is not None
    ctl.cluster.register()
    told: list[tuple[str, bool, str]] = []
    hooks = ctl.agent_hooks()
    hooks.host_changed = lambda name, up, address: told.append((name, up, address))
    agent = OverlayAgent(ctl.cluster, RecordingDatapath(), hooks)
    agent.start()
    try:
        assert agent.synced.wait(2)
        b = Cluster(gstore, "B", "192.0.2.2")
        b.register()  # B's info, then its liveness
        gstore.put(ckeys.node_key("B"), {"name": "B", "address": "192.0.2.2"})  # a lease refresh: no news
        gstore.delete(ckeys.node_key("B"))
        deadline = time.monotonic() + 3
        while len(told) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        b.stop()
        assert told == [("B", True, "192.0.2.2"), ("B", False, "192.0.2.2")]  # never A itself, at start
    finally:
        agent.stop()
        ctl.cluster.stop()
        gstore.put(ckeys.CLUSTER + "~", {})


# ---------------------------------------------------------------------- GET /events
def test_the_stream_replays_follows_filters_and_ends(tmp_path: Path) -> None:
    from tether.api.client import Client
    from tether.api.server import ApiServer

    ctl = make_controller(tmp_path)
    ctl.events.emit("network", "create", ("n0", "old"))
    server = ApiServer(ctl, str(tmp_path / "api.sock"))
    server.serve_in_thread()
    try:
        client = Client(str(tmp_path / "api.sock"), timeout=5)
        stream = client.events("filter=type%3Dnetwork&since=0")
        first = next(stream)
        assert (first["actor"]["name"], first["action"]) == ("old", "create")  # replayed
        threading.Timer(0.1, lambda: (ctl.events.emit("host", "up", "h2"), ctl.events.emit("network", "destroy", "x"))).start()
        second = next(stream)
        assert (second["type"], second["action"], second["actor"]["name"]) == ("network", "destroy", "x")
        stream.close()  # the client goes away: the daemon's thread ends within a second or so
        until = time.time() + 0.3
        ended = list(client.events(f"since=0&until={until}"))  # everything kept, then the end
        assert [e["action"] for e in ended] == ["create", "up", "destroy"]
        with pytest.raises(InvalidInput):
            next(client.events("filter=colour%3Dred"))
        threading.Timer(0.2, ctl.events.close).start()
        assert list(client.events()) == []  # the daemon stops: the stream ends
    finally:
        server.shutdown()
    from tether.api import events_route

    deadline = time.monotonic() + 3
    while events_route._active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert events_route._active == 0  # no stream thread left behind


def test_the_stream_cap_is_taken_by_the_route_and_given_back_once(tmp_path: Path) -> None:
    from tether.api import events_route

    c = make_controller(tmp_path)
    free = events_route.MAX_STREAMS - events_route._active
    streams = [events_route.events_stream(c, {}, None, {}) for _ in range(free)]  # type: ignore[arg-type]
    with pytest.raises(Conflict, match="event streams are open already"):
        events_route.events_stream(c, {}, None, {})  # type: ignore[arg-type]
    streams[0].cancel()  # its head could not be sent
    streams[0].cancel()  # (twice: given back once)
    streams.append(events_route.events_stream(c, {}, None, {}))  # type: ignore[arg-type]
    for stream in streams[1:]:
        stream.cancel()
    assert events_route._active == events_route.MAX_STREAMS - free
