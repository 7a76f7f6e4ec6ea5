"""The Firewall protocol, the real nftables Firewall and the test fake: both have its
public methods, and the fake behaves as the protocol says where the controller's tests
rely on it (idempotent adds and removals, clashes, failure injection)."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

import pytest

from tether.errors import Conflict, SystemFailure
from tether.firewall import NetworkRules, PortRule, nft
from tether.firewall.base import Firewall
from tether.firewall.nftrace import TraceMatch
from tether.testing.firewall import RecordingFirewall

NET = NetworkRules(bridge="tbr-1", subnet="10.1.0.0/24", masquerade=True, internal=False, icc=True)
PORT = PortRule(protocol="tcp", host_ip=None, host_port=8080, container_ip="10.1.0.2", container_port=80)


def public_methods(cls: type) -> dict[str, Callable[..., Any]]:
    return {name: fn for name, fn in inspect.getmembers(cls, inspect.isfunction) if not name.startswith("_")}


def params(fn: Callable[..., Any]) -> list[tuple[str, Any, Any, Any]]:
    hints = typing.get_type_hints(fn)
    return [(p.name, p.kind, p.default, hints.get(p.name)) for p in inspect.signature(fn).parameters.values()]


def test_the_fake_has_exactly_the_protocol() -> None:
    wanted, found = public_methods(Firewall), public_methods(RecordingFirewall)
    assert sorted(found) == sorted(wanted)
    for name, fn in wanted.items():
        assert params(found[name]) == params(fn), name
        assert typing.get_type_hints(found[name]).get("return") == typing.get_type_hints(fn).get("return"), name


def test_the_real_firewall_has_the_protocol_and_only_optional_extras() -> None:
    wanted, found = public_methods(Firewall), public_methods(nft.Firewall)
    assert sorted(found) == sorted(wanted)
    for name, fn in wanted.items():
        mine, theirs = params(fn), params(found[name])
        assert theirs[: len(mine)] == mine, name
        assert all(default is not inspect.Parameter.empty for _, _, default, _ in theirs[len(mine):]), name


def _static_check(real: nft.Firewall, fake: RecordingFirewall) -> list[Firewall]:
    return [real, fake]  # mypy checks both against the protocol


# ---------------------------------------------------------------------------- the fake
@pytest.fixture
def fw() -> RecordingFirewall:
    fw = RecordingFirewall()
    fw.ensure()
    return fw


def test_adds_are_idempotent_and_removals_take_exactly_what_is_there(fw: RecordingFirewall) -> None:
    fw.add_network(NET)
    fw.add_network(NET)
    fw.add_ports([PORT])
    fw.add_ports([PORT])
    assert fw.elements["ports"] == {"tcp . 8080 : 10.1.0.2 . 80"}
    assert fw.elements["bridges"] == {'"tbr-1"'} and fw.elements["masq_subnets"] == {"10.1.0.0/24"}
    fw.remove_ports([PortRule("tcp", None, 8080, "10.1.0.9", 80)])  # the key, mapped elsewhere: left alone
    assert fw.elements["ports"] == {"tcp . 8080 : 10.1.0.2 . 80"}
    fw.remove_network(NetworkRules("tbr-1", "10.1.0.0/24", False, True, False))  # other flags: still all of it
    fw.remove_ports([PORT])
    fw.remove_ports([PORT])
    assert all(not items for items in fw.elements.values())


def test_clashes_are_conflicts_that_change_nothing(fw: RecordingFirewall) -> None:
    fw.add_network(NET)
    fw.add_ports([PORT])
    before = {k: set(v) for k, v in fw.elements.items()}
    with pytest.raises(Conflict):
        fw.add_ports([PortRule("tcp", None, 8080, "10.1.0.3", 80)])  # the host port, to another target
    with pytest.raises(Conflict):
        fw.add_network(NetworkRules("tbr-2", "10.1.0.0/16", True, False, True))  # overlapping subnet
    with pytest.raises(Conflict):
        fw.add_ports([PORT, PortRule("tcp", None, 8080, "10.1.0.3", 80)])  # twice in one call
    assert fw.elements == before
    fw.add_ports([PortRule("tcp", "127.0.0.1", 8080, "10.1.0.3", 80)])  # on one address: another map


def test_no_table_refuses_adds_but_not_removals_and_sync_rebuilds(fw: RecordingFirewall) -> None:
    fw.add_ports([PORT])
    fw.delete()
    assert not fw.present() and fw.rule_count() == 0
    fw.remove_ports([PORT])
    with pytest.raises(SystemFailure):
        fw.add_network(NET)
    fw.sync([NET], [PORT])
    assert fw.present() and fw.rule_count() > 0
    assert fw.elements["ports"] == {"tcp . 8080 : 10.1.0.2 . 80"} and fw.elements["bridges"] == {'"tbr-1"'}
    assert fw.ensure() is False


@pytest.mark.parametrize("verb", sorted(public_methods(Firewall)))
def test_any_verb_fails_on_request_before_changing_anything(verb: str) -> None:
    fw = RecordingFirewall()
    fw.fail.add(verb)
    args: dict[str, Any] = {"net": NET, "ports": [PORT], "networks": [NET], "desired": lambda: ([], []),
                            "match": TraceMatch("10.1.0.2", "10.1.0.3", "tcp", 80), "send": lambda: None}
    method = getattr(fw, verb)
    required = [p.name for p in inspect.signature(method).parameters.values() if p.default is p.empty]
    with pytest.raises(SystemFailure, match=f"injected failure in {verb}$"):
        method(**{name: args[name] for name in required})
    assert not fw.installed and all(not items for items in fw.elements.values())
