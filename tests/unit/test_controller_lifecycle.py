"""A container's life after ``run``, on fakes: what users may type to name it (name, ID,
ID prefix), what its exit releases and its start builds again, restart policies and the
process monitor that applies them, and a joiner whose namespace owner was removed.

Processes are real but harmless: every start runs ``sleep`` as a child of the test (in
place of the shim), so ``process_alive`` and pidfds behave as for a container, and the
test ends it with the exit code it wants."""

from __future__ import annotations

import copy
import itertools
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from controllerkit import make_controller, snapshot

from tether import runtime
from tether.controller import Controller
from tether.controller.names import ADJECTIVES, NOUNS, unused_name
from tether.controller.restarts import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    ProcessMonitor,
    RestartPolicy,
    next_delay,
)
from tether.errors import Conflict, DatapathError, InvalidInput, NotFound
from tether.runtime.process import EXIT_CODE_FILE, write_state_file
from tether.storekeys import CTR_PREFIX, ID_PREFIX
from tether.testing.datapath import RecordingDatapath
from tether.testing.firewall import RecordingFirewall


class Processes:
    """Stands in for the shim: a start is a ``sleep`` child; ``end`` makes it exit with a code."""

    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl
        self.children: dict[str, subprocess.Popen[bytes]] = {}  # state dir -> its latest process
        self.starts = 0

    def spawn(self, spec: runtime.ProcessSpec) -> tuple[int, int]:
        child = subprocess.Popen(["sleep", "60"])
        self.children[spec.state_dir] = child
        self.starts += 1
        start_time = runtime.process_start_time(child.pid)
        assert start_time is not None
        return child.pid, start_time

    def run_foreground(self, name: str) -> subprocess.Popen[bytes]:
        """What the CLI does for a foreground run: start it and report it."""
        child = subprocess.Popen(["sleep", "60"])
        self.children[self.ctl.container_dir(self.ctl._container(name))] = child
        start_time = runtime.process_start_time(child.pid)
        assert start_time is not None
        self.ctl.mark_started(name, child.pid, start_time)
        return child

    def end(self, name: str, code: int) -> None:
        """The container's process exits with ``code`` (recorded as the shim does)."""
        state_dir = self.ctl.container_dir(self.ctl._container(name))
        write_state_file(state_dir, EXIT_CODE_FILE, str(code))
        child = self.children[state_dir]
        child.kill()
        child.wait()

    def close(self) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.kill()
                child.wait()


@pytest.fixture
def ctl(tmp_path: Path) -> Controller:
    ctl = make_controller(tmp_path)
    ctl.create_network("appnet", subnet="10.1.0.0/24")
    ctl.create_network("n2", subnet="10.2.0.0/24")
    return ctl


@pytest.fixture
def procs(ctl: Controller, monkeypatch: pytest.MonkeyPatch) -> Iterator[Processes]:
    fake = Processes(ctl)
    monkeypatch.setattr(runtime, "spawn_detached", fake.spawn)
    # a stop signals the process; the exit code is the shim's to write (143: SIGTERM)
    real_stop = runtime.stop_process

    def stop(pid: int, start_time: int, timeout: float = 10.0) -> None:
        for state_dir, child in fake.children.items():
            if child.pid == pid and child.poll() is None:
                write_state_file(state_dir, EXIT_CODE_FILE, "143")
                child.terminate()
                child.wait()
        real_stop(pid, start_time, timeout)

    monkeypatch.setattr(runtime, "stop_process", stop)
    try:
        yield fake
    finally:
        ctl.stop_monitor()
        fake.close()


def dp_of(ctl: Controller) -> RecordingDatapath:
    return ctl.ctx.datapath  # type: ignore[return-value]


def fw_of(ctl: Controller) -> RecordingFirewall:
    return ctl.firewall  # type: ignore[return-value]


def wait_for(check: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# ---------------------------------------------------------------------------- names and IDs
class CountingStore:
    """Counts the reads a lookup costs."""

    def __init__(self, ctl: Controller, monkeypatch: pytest.MonkeyPatch) -> None:
        self.gets = self.lists = 0
        store = ctl.store
        real_get, real_list = store.get, store.list

        def get(key: str) -> Any:
            self.gets += 1
            return real_get(key)

        def list_(prefix: str) -> Any:
            self.lists += 1
            return real_list(prefix)

        monkeypatch.setattr(store, "get", get)
        monkeypatch.setattr(store, "list", list_)

    def reset(self) -> None:
        self.gets = self.lists = 0


def test_a_container_is_found_by_name_full_id_and_unique_prefix(ctl: Controller) -> None:
    web = ctl.create_container(["true"], name="web", net="appnet").value
    db = ctl.create_container(["true"], name="db", net="appnet").value
    for ref in ("web", web.id, web.id[:12], web.id[:5]):
        assert ctl.inspect_container(ref)["name"] == "web"
    assert ctl._container(db.id[:12]).name == "db"
    with pytest.raises(NotFound, match="container 'nosuch' not found"):
        ctl.inspect_container("nosuch")


def test_a_name_wins_over_an_id_prefix_and_costs_one_get(ctl: Controller, monkeypatch: pytest.MonkeyPatch) -> None:
    web = ctl.create_container(["true"], name="web", net="appnet").value
    # a container whose *name* is a prefix of web's ID: the name wins, as in Docker
    shadow = ctl.create_container(["true"], name=web.id[:4], net="none").value
    assert ctl._container(web.id[:4]).id == shadow.id
    assert ctl._container(web.id[:5]).id == web.id
    reads = CountingStore(ctl, monkeypatch)
    ctl._container("web")
    assert (reads.gets, reads.lists) == (1, 0)
    reads.reset()
    with pytest.raises(NotFound):
        ctl._container("not-hex")  # not an ID: no scan at all
    assert (reads.gets, reads.lists) == (1, 0)
    reads.reset()
    ctl._container(web.id[:7])  # a miss: the ID index, read by prefix
    assert reads.lists == 1 and reads.gets == 2


def test_an_ambiguous_prefix_is_one_line_naming_the_candidates_and_changes_nothing(ctl: Controller) -> None:
    made: dict[str, str] = {}
    while True:  # two containers whose IDs share a first character (certain by the 17th)
        c = ctl.create_container(["true"], name=f"c{len(made)}", net="none").value
        if c.id[0] in made:
            first, second = made[c.id[0]], c.name
            break
        made[c.id[0]] = c.name
    prefix = ctl._container(second).id[0]
    before = snapshot(ctl)
    for verb in (
        lambda: ctl.inspect_container(prefix),
        lambda: ctl.remove_container(prefix, force=True),
        lambda: ctl.stop_container(prefix),
        lambda: ctl.start_container(prefix),
        lambda: ctl.connect("appnet", prefix),
        lambda: ctl.create_container(["true"], net=f"container:{prefix}"),
    ):
        with pytest.raises(InvalidInput) as err:
            verb()
        message = str(err.value)
        assert "\n" not in message and f"prefix {prefix!r} is ambiguous" in message
        assert first in message and second in message and "give more of the ID" in message
    assert snapshot(ctl) == before


def test_reconcile_indexes_a_record_older_than_the_id_index(ctl: Controller) -> None:
    web = ctl.create_container(["true"], name="web", net="none").value
    ctl.store.delete(ID_PREFIX + web.id)  # as a record written before the index existed
    with pytest.raises(NotFound):
        ctl._container(web.id[:8])
    ctl.reconcile()
    assert ctl._container(web.id[:8]).name == "web" and ctl._container_by_id(web.id) == web


def test_a_network_is_found_by_name_id_and_prefix_everywhere(ctl: Controller) -> None:
    appnet, n2 = ctl.get_network("appnet"), ctl.get_network("n2")
    assert ctl.inspect_network(appnet.id[:12])["name"] == "appnet"
    assert ctl.inspect_network(n2.id)["name"] == "n2"
    # run --net <ID prefix>: the record names the network
    web = ctl.create_container(["true"], name="web", net=appnet.id[:8], publish=["8080:80"]).value
    assert web.net_mode == "appnet" and web.attachments[0]["network"] == "appnet"
    assert ctl.inspect_container("web")["networks"]["appnet"]["address"] == "10.1.0.2"
    assert fw_of(ctl).elements["ports"] or fw_of(ctl).elements["ports_ip"]  # published on appnet
    ctl.connect(n2.id[:6], web.id[:6])
    assert set(ctl.inspect_container("web")["networks"]) == {"appnet", "n2"}
    ctl.disconnect(n2.id, web.id)
    assert set(ctl.inspect_container("web")["networks"]) == {"appnet"}
    ctl.remove_container(web.id[:10])
    ctl.remove_network(n2.id[:10])
    assert ctl.find_network("n2") is None
    bridge = ctl.default_network()
    with pytest.raises(Conflict, match="predefined default network"):
        ctl.remove_network(bridge.id[:12])


def test_net_container_takes_an_id_prefix_and_records_the_name(ctl: Controller) -> None:
    web = ctl.create_container(["true"], name="web", net="appnet").value
    side = ctl.create_container(["true"], name="side", net=f"container:{web.id[:9]}").value
    assert side.net_mode == "container:web" and side.joined == web.id and side.netns == web.netns


def test_an_unnamed_container_gets_an_adjective_and_a_noun(ctl: Controller) -> None:
    c = ctl.create_container(["true"], net="none").value
    adjective, _, noun = c.name.partition("_")
    assert adjective in ADJECTIVES and noun in NOUNS
    assert c.hostname == c.id[:12]  # as Docker: a name with '_' is no hostname
    assert ctl.inspect_container(c.name)["id"] == c.id


def test_a_generated_name_is_drawn_again_on_collision() -> None:
    seen: list[str] = []

    def taken(name: str) -> bool:
        seen.append(name)
        return len(seen) < 7  # the first six are taken

    name = unused_name(taken, "fallback")
    assert name == seen[-1] and len(seen) == 7
    assert name[-1].isdigit()  # from the sixth draw on, with a number
    assert unused_name(lambda n: True, "t0123456789a", attempts=3) == "t0123456789a"


# ---------------------------------------------------------------------------- exit and start
def test_an_exit_releases_the_network_and_start_builds_it_again(ctl: Controller, procs: Processes) -> None:
    dp, fw = dp_of(ctl), fw_of(ctl)
    web = ctl.create_container(
        ["true"], name="web", net="appnet", ip="10.1.0.50", detach=True, publish=["8080:80"], aliases=["www"]
    ).value
    ctl.connect("n2", "web", aliases=["w2"])
    running = ctl.inspect_container("web")
    assert running["state"] == "running" and set(running["networks"]) == {"appnet", "n2"}
    ports_before = copy.deepcopy(fw.elements)
    procs.end("web", 3)
    info = ctl.inspect_container("web")  # _refresh sees the exit
    assert info["state"] == "exited" and info["exit_code"] == 3 and info["networks"] == {}
    assert info["ports"] == [] and info["publish"] == [
        {"protocol": "tcp", "host_port": 8080, "container_port": 80, "host_ip": None, "network": None}
    ]
    assert info["attachments"] == [
        {"network": "appnet", "ip": "10.1.0.50", "aliases": ["www"]},
        {"network": "n2", "ip": None, "aliases": ["w2"]},
    ]
    assert dp.veths == {} and "u-web" in dp.netns  # the namespace stays
    assert ctl.ipam.leases(ctl.get_network("appnet").id) == {}
    assert not (fw.elements.get("ports") or fw.elements.get("ports_ip"))
    # the address and the port are free: another container takes them
    other = ctl.create_container(["true"], name="other", net="appnet", ip="10.1.0.50", publish=["8080:80"]).value
    before = snapshot(ctl)
    with pytest.raises(Conflict, match="address 10.1.0.50 on network 'appnet' is in use by container 'other'"):
        ctl.start_container("web")
    assert snapshot(ctl) == before  # nothing attached half-way
    ctl.remove_container(other.name)
    ctl.start_container(web.id[:12])
    again = ctl.inspect_container("web")
    assert again["state"] == "running" and again["restart_count"] == 0
    # the --ip comes back; a picked address is picked again (the next free one, as in Docker)
    assert {n: v["ifname"] for n, v in again["networks"].items()} == {"appnet": "eth0", "n2": "eth1"}
    assert again["networks"]["appnet"]["address"] == "10.1.0.50"
    assert again["networks"]["n2"]["address"].startswith("10.2.0.")
    eth0 = next(v for v in dp.veths.values() if v["ifname"] == "eth0")
    assert eth0["gateway"] == "10.1.0.1"  # the default route on the first network again
    assert fw.elements == ports_before  # the same port, to the same address
    assert again["ports"] == again["publish"]


def test_start_of_a_running_container_is_a_one_line_conflict(ctl: Controller, procs: Processes) -> None:
    ctl.create_container(["true"], name="web", net="appnet", detach=True)
    before = snapshot(ctl)
    with pytest.raises(Conflict) as err:
        ctl.start_container("web")
    assert str(err.value) == "container 'web' is already running: stop it first, or use `tether restart web`"
    assert snapshot(ctl) == before and procs.starts == 1


def test_a_failed_attach_at_start_leaves_the_container_as_it_was(ctl: Controller, procs: Processes) -> None:
    ctl.create_container(["true"], name="web", net="appnet", detach=True, publish=["8080:80"])
    ctl.connect("n2", "web")
    ctl.stop_container("web", timeout=0)
    dp = dp_of(ctl)
    for verb in ("attach_veth", "netns_exists"):
        before = snapshot(ctl)
        dp.fail.add(verb)
        with pytest.raises(DatapathError):
            ctl.start_container("web")
        dp.fail.clear()
        assert snapshot(ctl) == before, verb
    fw_of(ctl).fail.add("add_ports")
    before = snapshot(ctl)
    with pytest.raises(Exception, match="injected failure in add_ports"):
        ctl.start_container("web")
    fw_of(ctl).fail.clear()
    assert snapshot(ctl) == before
    ctl.start_container("web")
    assert set(ctl.inspect_container("web")["networks"]) == {"appnet", "n2"}


def test_a_process_that_cannot_start_leaves_it_exited_127_without_its_network(
    ctl: Controller, procs: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctl.create_container(["true"], name="web", net="appnet", detach=True)
    ctl.stop_container("web", timeout=0)
    released = snapshot(ctl)

    def refuse(spec: runtime.ProcessSpec) -> tuple[int, int]:
        raise runtime.process.RuntimeFailure("command not found: true")

    monkeypatch.setattr(runtime, "spawn_detached", refuse)
    with pytest.raises(runtime.process.RuntimeFailure):
        ctl.start_container("web")
    info = ctl.inspect_container("web")
    assert info["state"] == "exited" and info["exit_code"] == 127 and info["networks"] == {}
    after = snapshot(ctl)
    assert after["kernel"] == released["kernel"] and after["firewall"] == released["firewall"]


def test_a_namespace_gone_while_exited_is_made_again_at_start(ctl: Controller, procs: Processes) -> None:
    ctl.create_container(["true"], name="web", net="appnet", detach=True)
    ctl.stop_container("web", timeout=0)
    dp_of(ctl).delete_netns("u-web")  # a reboot, or an admin's `ip netns del`
    ctl.start_container("web")
    assert "u-web" in dp_of(ctl).netns
    assert ctl.inspect_container("web")["networks"]["appnet"]["address"].startswith("10.1.0.")
    assert [v["netns"] for v in dp_of(ctl).veths.values()] == ["u-web"]


def test_a_foreground_exit_reported_by_the_cli_releases_too(ctl: Controller, procs: Processes) -> None:
    ctl.create_container(["true"], name="fg", net="appnet")
    procs.run_foreground("fg")
    procs.end("fg", 7)
    exited = ctl.mark_exited("fg", 7)
    assert exited.state == "exited" and exited.exit_code == 7
    assert ctl.inspect_container("fg")["networks"] == {} and dp_of(ctl).veths == {}


def test_connect_and_disconnect_of_an_exited_container_change_what_start_attaches(
    ctl: Controller, procs: Processes
) -> None:
    ctl.create_container(["true"], name="web", net="appnet", detach=True)
    ctl.stop_container("web", timeout=0)
    kernel = snapshot(ctl)["kernel"]
    assert ctl.connect("n2", "web", ip="10.2.0.9").value is None  # recorded only
    assert snapshot(ctl)["kernel"] == kernel
    with pytest.raises(Conflict, match="already connected"):
        ctl.connect("n2", "web")
    ctl.start_container("web")
    assert ctl.inspect_container("web")["networks"]["n2"]["address"] == "10.2.0.9"
    ctl.stop_container("web", timeout=0)
    ctl.disconnect("appnet", "web")
    # a network removed while the container is down: start names it; disconnect lets it go
    ctl.remove_network("n2")
    before = snapshot(ctl)
    with pytest.raises(NotFound, match="network 'n2' of container 'web' no longer exists: disconnect it"):
        ctl.start_container("web")
    assert snapshot(ctl) == before
    ctl.disconnect("n2", "web")
    ctl.start_container("web")
    assert ctl.inspect_container("web")["networks"] == {}


def test_a_record_older_than_attachments_is_released_and_attached_again(ctl: Controller, procs: Processes) -> None:
    ctl.create_container(["true"], name="old", net="appnet", detach=True, publish=["8080:80"])
    ctl.connect("n2", "old")
    kv = ctl.store.get(CTR_PREFIX + "old")
    assert kv is not None
    legacy = {k: v for k, v in kv.value.items() if k not in ("attachments", "publish")}
    ctl.store.put(CTR_PREFIX + "old", legacy)
    ctl.stop_container("old", timeout=0)
    info = ctl.inspect_container("old")
    assert [a["network"] for a in info["attachments"]] == ["appnet", "n2"]
    assert info["publish"][0]["host_port"] == 8080
    ctl.start_container("old")
    assert set(ctl.inspect_container("old")["networks"]) == {"appnet", "n2"}


# ---------------------------------------------------------------------------- joiners
def test_a_joiner_of_a_removed_container_says_so(ctl: Controller, procs: Processes) -> None:
    ctl.create_container(["true"], name="web", net="appnet", detach=True)
    ctl.create_container(["true"], name="side", net="container:web", detach=True)
    ctl.stop_container("web", timeout=0)
    with pytest.raises(Conflict, match="shares its network namespace with running side"):
        ctl.remove_container("web")
    ctl.remove_container("web", force=True)
    side = ctl.inspect_container("side")
    assert side["net_mode"] == "container:web (removed)" and side["networks"] == {}
    assert side["netns_path"] == f"/proc/{side['pid']}/ns/net"  # what it still holds
    assert [c["net_mode"] for c in ctl.list_containers()] == ["container:web (removed)"]
    with pytest.raises(Conflict, match="shared the network of a container that was removed"):
        ctl.create_container(["true"], name="late", net="container:side")
    procs.end("side", 0)
    assert ctl.inspect_container("side")["netns_path"] is None
    with pytest.raises(Conflict, match="cannot start again; remove it"):
        ctl.start_container("side")


def test_joining_or_starting_beside_an_exited_container_is_refused(ctl: Controller, procs: Processes) -> None:
    ctl.create_container(["true"], name="web", net="appnet", detach=True)
    ctl.create_container(["true"], name="side", net="container:web", detach=True)
    ctl.stop_container("side", timeout=0)
    ctl.stop_container("web", timeout=0)
    with pytest.raises(Conflict, match="container 'web' is not running: start it first"):
        ctl.create_container(["true"], name="late", net="container:web")
    with pytest.raises(Conflict, match="shares the network of 'web', which is not running: start web first"):
        ctl.start_container("side")
    ctl.start_container("web")
    ctl.start_container("side")
    side, web = ctl.inspect_container("side"), ctl.inspect_container("web")
    assert side["networks"] == web["networks"] and set(web["networks"]) == {"appnet"}


# ---------------------------------------------------------------------------- restart policies
@pytest.mark.parametrize(
    "text,parsed",
    [
        (None, "no"), ("no", "no"), ("always", "always"), ("unless-stopped", "unless-stopped"),
        ("on-failure", "on-failure"), ("on-failure:3", "on-failure:3"), ("on-failure:0", "on-failure"),
    ],
)  # fmt: skip
def test_restart_policies_parse(text: str | None, parsed: str) -> None:
    assert str(RestartPolicy.parse(text)) == parsed


@pytest.mark.parametrize("text", ["sometimes", "always:3", "no:1", "on-failure:-1", "on-failure:x", "on-failure:", ""])
def test_an_unknown_restart_policy_is_one_line(text: str) -> None:
    with pytest.raises(InvalidInput) as err:
        RestartPolicy.parse(text)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"invalid --restart {text!r}")


def test_what_each_policy_restarts() -> None:
    always, unless, fail3, never = (RestartPolicy.parse(t) for t in ("always", "unless-stopped", "on-failure:3", "no"))
    assert always.should_restart(0, False, 99) and not always.should_restart(1, True, 0)
    assert always.should_restart(0, True, 0, at_daemon_start=True)  # Docker: always comes back with the daemon
    assert unless.should_restart(0, False, 0) and not unless.should_restart(0, True, 0, at_daemon_start=True)
    assert fail3.should_restart(1, False, 2) and not fail3.should_restart(1, False, 3)
    assert not fail3.should_restart(0, False, 0) and not fail3.should_restart(1, True, 0)
    assert RestartPolicy.parse("on-failure").should_restart(137, False, 10_000)
    assert not never.should_restart(1, False, 0, at_daemon_start=True)


def test_the_backoff_doubles_from_100ms_and_starts_over_after_10s() -> None:
    delays, previous = [], 0.0
    for _ in range(12):
        previous = next_delay(previous, ran_for=0.5)
        delays.append(previous)
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8] and delays[-1] == BACKOFF_MAX
    assert next_delay(delays[-1], ran_for=10.0) == BACKOFF_FIRST


def test_run_refuses_rm_with_a_policy_and_unknown_policies_changing_nothing(ctl: Controller) -> None:
    before = snapshot(ctl)
    with pytest.raises(InvalidInput, match="--rm and --restart always contradict each other"):
        ctl.create_container(["true"], name="a", net="appnet", auto_remove=True, restart="always")
    with pytest.raises(InvalidInput, match="invalid --restart 'sometimes'"):
        ctl.create_container(["true"], name="a", net="appnet", restart="sometimes")
    assert snapshot(ctl) == before
    assert ctl.create_container(["true"], name="a", auto_remove=True, restart="no").value.restart_policy == "no"


def test_on_failure_restarts_n_times_then_leaves_it_exited(ctl: Controller, procs: Processes) -> None:
    c = ctl.create_container(["true"], name="crash", net="appnet", ip="10.1.0.9", detach=True, restart="on-failure:2").value
    for count in (1, 2):
        procs.end("crash", 1)
        ran_for = ctl.handle_exit(c.id)
        assert ran_for is not None and ctl.inspect_container("crash")["networks"] == {}
        ctl.restart_by_policy(c.id)
        info = ctl.inspect_container("crash")
        assert info["state"] == "running" and info["restart_count"] == count
        assert info["networks"]["appnet"]["address"] == "10.1.0.9"
    procs.end("crash", 1)
    assert ctl.handle_exit(c.id) is None  # two restarts were all it had
    ctl.start_container("crash")  # by hand: the count starts over
    assert ctl.inspect_container("crash")["restart_count"] == 0


def test_stop_holds_every_policy_back_until_start(ctl: Controller, procs: Processes) -> None:
    c = ctl.create_container(["true"], name="a", net="appnet", detach=True, restart="always").value
    ctl.stop_container("a", timeout=0)
    assert ctl.handle_exit(c.id) is None
    ctl.restart_by_policy(c.id)
    assert ctl.inspect_container("a")["state"] == "exited" and ctl.inspect_container("a")["manually_stopped"]
    ctl.restart_by_policy(c.id, at_daemon_start=True)  # what a daemon's start does for `always`
    assert ctl.inspect_container("a")["state"] == "running"
    procs.end("a", 0)
    assert ctl.handle_exit(c.id) is not None  # started again: the policy applies again


def test_restart_stops_and_starts(ctl: Controller, procs: Processes) -> None:
    ctl.create_container(["true"], name="a", net="appnet", detach=True, restart="unless-stopped")
    first = ctl.inspect_container("a")["pid"]
    again = ctl.restart_container("a", timeout=0).value
    assert again.state == "running" and again.pid != first and not again.manually_stopped
    assert set(ctl.inspect_container("a")["networks"]) == {"appnet"} and len(dp_of(ctl).veths) == 1


def test_the_monitor_restarts_a_crashing_container_with_backoff(ctl: Controller, procs: Processes) -> None:
    c = ctl.create_container(["true"], name="crash", net="appnet", detach=True, restart="on-failure:3").value
    ctl.start_monitor()
    times = [time.monotonic()]
    for count in (1, 2, 3):
        procs.end("crash", 1)

        def restarted(count: int = count) -> bool:
            info = ctl.inspect_container("crash")
            return info["restart_count"] == count and info["state"] == "running"

        wait_for(restarted, f"restart {count}")
        times.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[2] > 0.35  # 100, 200, then 400 ms before the third restart
    procs.end("crash", 1)
    wait_for(lambda: ctl.inspect_container("crash")["state"] == "exited", "the last exit")
    time.sleep(0.3)
    assert ctl.inspect_container("crash")["restart_count"] == 3 and procs.starts == 4
    assert ctl.inspect_container(c.id)["networks"] == {}  # released by the monitor itself


def test_the_monitor_releases_an_exit_at_once_and_removes_a_detached_rm(ctl: Controller, procs: Processes) -> None:
    ctl.create_container(["true"], name="plain", net="appnet", ip="10.1.0.7", detach=True)
    ctl.create_container(["true"], name="brief", net="appnet", detach=True, auto_remove=True)
    ctl.start_monitor()
    procs.end("plain", 0)
    procs.end("brief", 0)
    # no request came in: the monitor alone frees the address and removes --rm
    wait_for(lambda: ctl.ipam.owner(ctl.get_network("appnet").id, "10.1.0.7") is None, "the lease to go")
    wait_for(lambda: ctl.store.get(CTR_PREFIX + "brief") is None, "brief to be removed")
    assert ctl.store.get(CTR_PREFIX + "plain") is not None


def test_the_monitor_at_a_daemon_start_restarts_what_exited_meanwhile(ctl: Controller, procs: Processes) -> None:
    ctl.create_container(["true"], name="always", net="appnet", detach=True, restart="always")
    ctl.create_container(["true"], name="stopped", net="appnet", detach=True, restart="unless-stopped")
    ctl.create_container(["true"], name="never", net="appnet", detach=True)
    ctl.stop_container("stopped", timeout=0)
    for name in ("always", "never"):
        procs.end(name, 0)  # while no daemon runs: nobody notices
    ctl.reconcile()
    ctl.start_monitor()
    wait_for(lambda: ctl.inspect_container("always")["state"] == "running", "always to come back")
    time.sleep(0.2)
    assert ctl.inspect_container("stopped")["state"] == "exited"
    assert ctl.inspect_container("never")["state"] == "exited"


# ---------------------------------------------------------------------------- the monitor alone
class Recorder:
    def __init__(self, restart_after: float | None) -> None:
        self.exits: list[str] = []
        self.restarts: list[tuple[str, float]] = []
        self.restart_after = restart_after
        self.changed = threading.Event()

    def handle_exit(self, container_id: str) -> float | None:
        self.exits.append(container_id)
        self.changed.set()
        return self.restart_after

    def restart_by_policy(self, container_id: str, at_daemon_start: bool) -> None:
        self.restarts.append((container_id, time.monotonic()))
        self.changed.set()


def test_the_monitor_sees_an_exit_within_milliseconds_and_a_gone_pid_at_once() -> None:
    recorder = Recorder(restart_after=None)
    monitor = ProcessMonitor(recorder)
    monitor.start()
    try:
        child = subprocess.Popen(["sleep", "60"])
        start_time = runtime.process_start_time(child.pid)
        assert start_time is not None
        monitor.watch("c1", child.pid, start_time)
        time.sleep(0.05)
        assert recorder.exits == []
        t0 = time.monotonic()
        child.kill()
        child.wait()
        wait_for(lambda: recorder.exits == ["c1"], "the exit")
        assert time.monotonic() - t0 < 0.5
        monitor.watch("c2", child.pid, start_time)  # already gone
        wait_for(lambda: recorder.exits == ["c1", "c2"], "the gone pid")
    finally:
        monitor.stop()


def test_the_monitor_waits_the_backoff_before_a_restart() -> None:
    recorder = Recorder(restart_after=0.0)
    monitor = ProcessMonitor(recorder)
    monitor.start()
    try:
        child = subprocess.Popen(["true"])
        start_time = runtime.process_start_time(child.pid) or 0
        t0 = time.monotonic()
        monitor.watch("c1", child.pid, start_time)
        child.wait()
        wait_for(lambda: len(recorder.restarts) == 1, "the restart")
        assert recorder.restarts[0][1] - t0 >= BACKOFF_FIRST
    finally:
        monitor.stop()
