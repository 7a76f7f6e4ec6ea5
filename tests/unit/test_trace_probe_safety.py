"""`tether trace` on the fakes: where its probe may go. Only to a namespace tether made:
never to a macvlan network's router (a machine on the LAN), never to a host address a
port is not published on."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tether.controller import Controller
from tether.runtime.process import process_start_time
from tether.testing.datapath import RecordingDatapath
from tether.testing.firewall import RecordingFirewall
from tether.testing.memory import MemoryStore
from tether.trace.tracer import trace


@pytest.fixture
def ctl(tmp_path: Any) -> Controller:
    dp = RecordingDatapath(["192.168.1.0/24"])
    dp.nics = {"eth1": 1500}
    firewall = RecordingFirewall()
    firewall.ensure()
    return Controller(MemoryStore(), dp, str(tmp_path), netns_prefix="u-", firewall=firewall)


def run(c: Controller, name: str, net: str, **kwargs: Any) -> None:
    """A container that runs (this test's own process stands in for it)."""
    c.create_container(["true"], name=name, net=net, **kwargs)
    start_time = process_start_time(os.getpid())
    assert start_time is not None
    c.mark_started(name, os.getpid(), start_time)


def probes(c: Controller) -> list[tuple[str, str, str, int | None]]:
    return list(c.ctx.datapath.probes)  # type: ignore[attr-defined]


def test_a_macvlan_source_is_traced_and_never_probes_through_the_lan(ctl: Controller) -> None:
    ctl.create_network("lan", driver="macvlan", subnet="192.168.1.0/24", options={"parent": "eth1"})
    ctl.create_network("app", subnet="10.20.0.0/24")
    run(ctl, "m", "lan")
    run(ctl, "w", "app", publish=["8080:80"])
    run(ctl, "m2", "lan")
    for destination in ("host:8080", "w", "192.168.1.1"):
        out = trace(ctl, "m", destination)
        assert any(s.hop == "parent" for s in out.steps), out  # no bridge-port hop, no crash
    assert probes(ctl) == []  # each would have left through the LAN's router
    trace(ctl, "m", "m2")  # the same macvlan network: a probe to a container tether made
    assert [p[1] for p in probes(ctl)] == ["192.168.1.3"]


def test_a_port_published_on_one_address_is_probed_there(ctl: Controller) -> None:
    ctl.create_network("a", subnet="10.77.0.0/24")
    ctl.create_network("b", subnet="10.78.0.0/24")
    run(ctl, "s", "a")
    run(ctl, "d", "b", publish=["10.78.0.1:8080:80"])
    trace(ctl, "s", "host:8080")
    assert [p[1:] for p in probes(ctl)] == [("10.78.0.1", "tcp", 8080)]  # not s's gateway 10.77.0.1
