"""The controller's validate-then-act discipline and its undo, against in-memory fakes."""

from __future__ import annotations

from typing import Any

import pytest

from tether.controller import Controller
from tether.errors import Conflict, DatapathError, InvalidInput, NotFound
from tether.testing.datapath import RecordingDatapath
from tether.testing.memory import MemoryStore


@pytest.fixture
def ctl(tmp_path: Any) -> Controller:
    return Controller(MemoryStore(), RecordingDatapath(["192.168.1.0/24"]), str(tmp_path), netns_prefix="u-")


def state(c: Controller) -> dict[str, Any]:
    dp: RecordingDatapath = c.ctx.datapath  # type: ignore[assignment]
    return {
        "keys": [kv.key for kv in c.store.list("/") if not kv.key.startswith("/ipam-cursor/")],
        "netns": sorted(dp.netns),
        "bridges": dict(dp.bridges),
        "veths": sorted(dp.veths),
    }


def test_network_create_and_default_subnet(ctl: Controller) -> None:
    net = ctl.create_network("appnet", subnet="10.1.0.0/24")
    assert net.gateway == "10.1.0.1" and net.bridge.startswith("tbr-")
    default = ctl.default_network()
    assert default.bridge == "tether0" and default.subnet == "172.17.0.0/16"


def test_failed_bridge_creation_leaves_nothing(ctl: Controller) -> None:
    before = state(ctl)
    ctl.ctx.datapath.fail.add("ensure_bridge")  # type: ignore[attr-defined]
    with pytest.raises(DatapathError):
        ctl.create_network("appnet", subnet="10.1.0.0/24")
    assert state(ctl) == before


def test_failed_attach_undoes_netns_lease_and_records(ctl: Controller) -> None:
    ctl.create_network("appnet", subnet="10.1.0.0/24")
    before = state(ctl)
    ctl.ctx.datapath.fail.add("attach_veth")  # type: ignore[attr-defined]
    with pytest.raises(DatapathError):
        ctl.create_container(["sleep", "1"], name="web", net="appnet")
    assert state(ctl) == before
    assert ctl.ipam.leases(ctl.inspect_network("appnet")["id"]) == {}
    # and the name is usable again
    ctl.ctx.datapath.fail.clear()  # type: ignore[attr-defined]
    c = ctl.create_container(["sleep", "1"], name="web", net="appnet").value
    assert c.state == "created"


def test_validation_happens_before_any_kernel_change(ctl: Controller) -> None:
    ctl.create_network("appnet", subnet="10.1.0.0/24")
    dp: RecordingDatapath = ctl.ctx.datapath  # type: ignore[assignment]
    calls = len(dp.calls)
    for kwargs, err in [
        (dict(net="nosuch"), NotFound),
        (dict(net="appnet", ip="10.2.0.5"), InvalidInput),
        (dict(net="appnet", ip="10.1.0.1"), Conflict),
        (dict(net="container:nosuch"), NotFound),
        (dict(net="none", ip="10.1.0.5"), InvalidInput),
        (dict(name="bad name"), InvalidInput),
    ]:
        with pytest.raises(err):
            ctl.create_container(["true"], **kwargs)  # type: ignore[arg-type]
    assert dp.calls[calls:] == []


def test_remove_releases_everything(ctl: Controller) -> None:
    ctl.create_network("appnet", subnet="10.1.0.0/24")
    before = state(ctl)
    ctl.create_container(["true"], name="a", net="appnet")
    ctl.create_container(["true"], name="b", net="none")
    ctl.connect("appnet", "b")
    ctl.remove_container("a")
    ctl.remove_container("b")
    assert state(ctl) == before


def test_reconcile_finishes_half_created_container(ctl: Controller) -> None:
    ctl.create_network("appnet", subnet="10.1.0.0/24")
    before = state(ctl)
    ctl.create_container(["true"], name="a", net="appnet")
    # pretend the daemon died right after the attach: the record still says 'creating'
    kv = ctl.store.get("/containers/a")
    assert kv is not None
    ctl.store.put("/containers/a", dict(kv.value, state="creating"))
    ctl.reconcile()
    assert state(ctl) == before


def test_overlap_and_taken_names(ctl: Controller) -> None:
    ctl.create_network("appnet", subnet="10.1.0.0/24")
    with pytest.raises(Conflict, match="overlaps network 'appnet'"):
        ctl.create_network("other", subnet="10.1.0.0/16")
    with pytest.raises(Conflict, match="overlaps a route"):
        ctl.create_network("other", subnet="192.168.1.128/25")
    with pytest.raises(Conflict, match="already exists"):
        ctl.create_network("appnet", subnet="10.9.0.0/24")
    ctl.create_container(["true"], name="a", net="appnet")
    with pytest.raises(Conflict, match="has containers attached"):
        ctl.remove_network("appnet")
