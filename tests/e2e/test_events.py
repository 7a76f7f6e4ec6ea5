"""``tether events`` against a real daemon: the stream read while a scripted sequence of
CLI commands runs, ``--since`` replays, ``--until`` ends, the firewall healer's repair and
a reconcile correction show up, the daemon's stop ends the stream (and is not held up by
it), Ctrl-C exits quietly."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from conftest import Host

pytestmark = pytest.mark.e2e


class Reader:
    """``tether events --format json ARGS`` in the host, its lines parsed as they come."""

    def __init__(self, host: Host, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*host.enter(), sys.executable, "-m", "tether.cli", "--socket", host.socket, "--state-dir",
             host.state_dir, "events", "--format", "json", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "TETHER_NO_AUTOSTART": "1"},
        )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def take(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            try:
                event = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if event is None:
                break
            got.append(event)
        return got

    def quiet_for(self, seconds: float) -> list[dict[str, Any]]:
        """Whatever else arrives within ``seconds`` (expected: nothing)."""
        return self.take(1000, seconds)

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=10)
        return self.proc.returncode, err


def brief(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(e["type"], e["action"], e["actor"]["name"]) for e in events]


def follow_live(host: Host, *args: str) -> Reader:
    """A reader without --since, once its stream is known to be live: networks are made
    until it sees one (only new events: what came before never shows)."""
    reader = Reader(host, "--filter", "type=network", *args) if not args else Reader(host, *args)
    for i in range(50):
        host.tether("network", "create", f"probe{i}")
        seen = reader.take(1, 0.3)
        while seen and brief(seen) != [("network", "create", f"probe{i}")]:
            # the stream came up between an earlier probe's create and its removal
            assert seen[0]["action"] == "destroy" and seen[0]["actor"]["name"].startswith("probe"), seen
            seen = reader.take(1, 0.3)
        if seen:
            assert brief(seen) == [("network", "create", f"probe{i}")], seen
            host.tether("network", "rm", f"probe{i}")
            assert brief(reader.take(1)) == [("network", "destroy", f"probe{i}")]
            return reader
        host.tether("network", "rm", f"probe{i}")
    raise AssertionError("the event stream never came up")


def test_a_scripted_sequence_streams_exactly_its_events_in_order(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.231.9.0/24", "before")  # before the stream: never shown
    reader = follow_live(host, "--filter", "type=network", "--filter", "type=container", "--filter", "type=endpoint",
                         "--filter", "type=port")
    try:
        host.tether("network", "create", "--subnet", "10.231.0.0/24", "app")
        host.tether("run", "-d", "--name", "web", "--net", "app", "-p", "18080:80", "--", "sleep", "600")
        host.tether("network", "create", "--subnet", "10.232.0.0/24", "other")
        host.tether("network", "connect", "other", "web")
        web = host.inspect("web")
        host.tether("network", "disconnect", "other", "web")
        host.tether("stop", "-t", "1", "web")
        exit_code = host.inspect("web")["exit_code"]
        host.tether("rm", "web")
        host.tether("network", "rm", "app")
        host.tether("network", "rm", "other")
        expected = [
            ("network", "create", "app"),
            ("container", "create", "web"),
            ("endpoint", "attach", "web.app"),
            ("port", "publish", "web"),
            ("container", "start", "web"),
            ("network", "create", "other"),
            ("endpoint", "attach", "web.other"),
            ("endpoint", "detach", "web.other"),
            ("container", "die", "web"),
            ("port", "unpublish", "web"),
            ("endpoint", "detach", "web.app"),
            ("container", "stop", "web"),
            ("container", "destroy", "web"),
            ("network", "destroy", "app"),
            ("network", "destroy", "other"),
        ]
        events = reader.take(len(expected))
        assert brief(events) == expected
        assert reader.quiet_for(0.5) == []  # and nothing else
        by = {(t, a, n): e for (t, a, n), e in zip(expected, events)}
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs) and [e["time"] for e in events] == sorted(e["time"] for e in events)
        assert by[("network", "create", "app")]["attributes"] == {"driver": "bridge", "subnet": "10.231.0.0/24"}
        attach = by[("endpoint", "attach", "web.app")]["attributes"]
        assert attach["container"] == "web" and attach["network"] == "app" and attach["ifname"] == "eth0"
        assert attach["address"] == web["networks"]["app"]["address"] + "/24"
        assert attach["container_id"] == web["id"]
        other = by[("endpoint", "attach", "web.other")]["attributes"]
        assert (other["ifname"], other["address"]) == ("eth1", web["networks"]["other"]["address"] + "/24")
        assert by[("endpoint", "detach", "web.other")]["attributes"] == other
        publish = by[("port", "publish", "web")]
        assert publish["actor"]["id"] == web["id"]
        assert publish["attributes"] == {"port": "18080->80/tcp", "host_port": 18080, "container_port": 80,
                                         "protocol": "tcp", "network": "app"}
        assert by[("port", "unpublish", "web")]["attributes"] == publish["attributes"]
        assert by[("container", "start", "web")]["attributes"]["pid"] == web["pid"]
        assert by[("container", "die", "web")]["attributes"] == {"exit_code": exit_code}
        assert by[("container", "stop", "web")]["attributes"] == {"exit_code": exit_code}
    finally:
        code, err = reader.stop()
    assert code == 130 and err == ""  # Ctrl-C: quietly


def test_since_replays_and_until_ends(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.233.0.0/24", "kept")
    after = time.time()
    host.tether("network", "create", "--subnet", "10.234.0.0/24", "later")
    args = ["--format", "json", "--filter", "type=network"]
    # a past --until: the kept events between, then the end
    done = host.tether("events", "--since", "1m", "--until", "0s", *args)
    assert [json.loads(line)["actor"]["name"] for line in done.stdout.splitlines()] == ["kept", "later"]
    done = host.tether("events", "--since", repr(after), "--until", repr(time.time()), *args)
    assert [json.loads(line)["actor"]["name"] for line in done.stdout.splitlines()] == ["later"]
    # an --until ahead: replay, follow, then the end by itself
    reader = Reader(host, "--since", "1m", "--until", "-3s", "--filter", "type=network")
    assert brief(reader.take(2)) == [("network", "create", "kept"), ("network", "create", "later")]
    host.tether("network", "create", "--subnet", "10.235.0.0/24", "during")
    assert brief(reader.take(1)) == [("network", "create", "during")]
    assert reader.proc.wait(timeout=10) == 0
    text = host.tether("events", "--since", "1m", "--until", "0s", "--filter", "network=kept").stdout.splitlines()
    assert len(text) == 1 and " network create kept (id=" in text[0] and "subnet=10.233.0.0/24" in text[0]


def test_the_firewall_heal_shows_what_was_put_back(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.236.0.0/24", "app")
    host.tether("run", "-d", "--name", "web", "--net", "app", "-p", "18090:80", "--", "sleep", "600")
    before = time.time()
    reader = Reader(host, "--since", repr(before), "--filter", "type=firewall")
    try:
        host.in_host("nft", "delete table ip tether")
        heal = reader.take(1)
        assert brief(heal) == [("firewall", "heal", "tether")], heal
        attributes = heal[0]["attributes"]
        assert "missing" in attributes["problem"] and "in ports" in attributes["restored"], attributes
    finally:
        reader.stop()


def test_a_reconcile_correction_is_an_event(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.237.0.0/24", "app")
    host.tether("run", "-d", "--name", "a", "--net", "app", "--", "sleep", "600")
    veth = host.inspect("a")["networks"]["app"]["host_ifname"]
    host.kill_daemon(signal.SIGKILL)
    host.in_host("ip", "link", "del", veth)
    host.start_daemon()
    done = host.tether("events", "--since", "5m", "--until", "0s", "--format", "json", "--filter", "type=reconcile")
    corrections = [json.loads(line) for line in done.stdout.splitlines()]
    assert corrections and {c["action"] for c in corrections} == {"correct"}
    log = open(os.path.join(host.state_dir, "daemon.log"), errors="replace").read()
    for c in corrections:
        assert f"reconcile: {c['attributes']['message']}" in log


def test_the_daemon_stopping_ends_the_stream_and_is_not_held_up(host: Host) -> None:
    reader = Reader(host)
    time.sleep(0.5)
    assert host.daemon is not None
    started = time.monotonic()
    host.daemon.send_signal(signal.SIGTERM)
    host.daemon.wait(timeout=10)
    assert time.monotonic() - started < 5
    assert reader.proc.wait(timeout=5) == 1
    err = reader.proc.stderr.read() if reader.proc.stderr else ""
    assert err.count("\n") == 1 and err.startswith("Error: ") and "Traceback" not in err
    host.daemon = None


def test_bad_input_and_no_daemon_are_one_line(bare_host: Host) -> None:
    for args in (["--since", "yesterday"], ["--until", "10x"], ["--filter", "type=volume"], ["--filter", "colour"]):
        done = bare_host.tether("events", *args, check=False)
        assert done.returncode == 1 and done.stderr.count("\n") == 1 and done.stderr.startswith("Error: invalid")
    done = bare_host.tether("events", check=False)
    assert done.returncode == 1 and done.stderr.startswith("Error: no tether daemon answers on")
    assert not os.path.exists(bare_host.socket)  # it never starts one
