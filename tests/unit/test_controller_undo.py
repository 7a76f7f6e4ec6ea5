"""Every mutating verb undoes exactly what it did when any one of its steps fails.

For each operation, a successful run on the fakes lists the datapath verbs it calls
(reads included), the firewall verbs and its store writes; then, once per verb (and once
per store write), the operation runs again with that step failing. Afterwards the
host's store, the cluster's, the fake kernel, the fake firewall and the state dir must be
exactly as before, and the same operation must then succeed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from controllerkit import FlakyStore, StoreFaults, TracingDatapath, make_controller, runtime_netns, snapshot

from tether.controller import Controller
from tether.doors import CniDoor
from tether.errors import DatapathError, StoreError, SystemFailure, TetherError
from tether.testing.firewall import RecordingFirewall
from tether.testing.memory import MemoryStore

FIREWALL = "firewall:"


# ---------------------------------------------------------------------------- the operations
def nothing(ctl: Controller, root: Path) -> None:
    pass


def appnet_with_x(ctl: Controller, root: Path) -> None:
    ctl.create_network("appnet", subnet="10.1.0.0/24")
    ctl.create_container(["true"], name="x", net="appnet", publish=["8080:80"])


def appnet_and_loner(ctl: Controller, root: Path) -> None:
    appnet_with_x(ctl, root)
    ctl.create_container(["true"], name="b", net="none")


def two_networks(ctl: Controller, root: Path) -> None:
    appnet_with_x(ctl, root)
    ctl.create_network("n2", subnet="10.2.0.0/24")


def appnet_and_runtime_netns(ctl: Controller, root: Path) -> None:
    appnet_with_x(ctl, root)
    runtime_netns(ctl, root / "pod-ns")


def overlay(ctl: Controller, root: Path) -> None:
    ctl.create_network("ov", driver="overlay", subnet="10.50.0.0/24")


@dataclass(frozen=True)
class Case:
    prepare: Callable[[Controller, Path], None]
    act: Callable[[Controller, Path], object]
    cluster: bool = False


CASES = {
    "create_network bridge": Case(nothing, lambda c, r: c.create_network("n2", subnet="10.2.0.0/24")),
    "create_network internal": Case(nothing, lambda c, r: c.create_network("n2", subnet="10.2.0.0/24", internal=True)),
    "create_network overlay": Case(
        nothing, lambda c, r: c.create_network("ov", driver="overlay", subnet="10.50.0.0/24"), cluster=True
    ),
    "run on a bridge network": Case(
        appnet_with_x,
        lambda c, r: c.create_container(["true"], name="a", net="appnet", publish=["8081:80"], aliases=["web"]),
    ),
    "run --net none": Case(appnet_with_x, lambda c, r: c.create_container(["true"], name="a", net="none")),
    "run --net container:x": Case(
        appnet_with_x, lambda c, r: c.create_container(["true"], name="a", net="container:x")
    ),
    "run on an overlay": Case(overlay, lambda c, r: c.create_container(["true"], name="a", net="ov"), cluster=True),
    "connect": Case(appnet_and_loner, lambda c, r: c.connect("appnet", "b", aliases=["solo"])),
    "connect a second network": Case(two_networks, lambda c, r: c.connect("n2", "x")),
    "CNI ADD": Case(
        appnet_and_runtime_netns,
        lambda c, r: CniDoor(c).add(
            "pod1", str(r / "pod-ns"), "eth0", "appnet", publish=[{"hostPort": 8082, "containerPort": 80}]
        ),
    ),
}

def build(case: Case, root: Path, faults: StoreFaults | None = None) -> Controller:
    store = FlakyStore(faults) if faults is not None else MemoryStore()
    cluster_store = (FlakyStore(faults) if faults is not None else MemoryStore()) if case.cluster else None
    ctl = make_controller(root, store=store, cluster_store=cluster_store)
    case.prepare(ctl, root)
    return ctl


def parts(ctl: Controller) -> tuple[TracingDatapath, RecordingFirewall]:
    return ctl.ctx.datapath, ctl.firewall  # type: ignore[return-value]


def discover(case: Case) -> tuple[list[str], list[str]]:
    """(datapath and firewall verbs, store writes) of one successful run of ``case``."""
    with tempfile.TemporaryDirectory() as tmp:
        faults = StoreFaults()
        ctl = build(case, Path(tmp), faults)
        dp, firewall = parts(ctl)
        dp.trace.clear()
        firewall.calls.clear()
        faults.writes.clear()
        case.act(ctl, Path(tmp))
        verbs = list(dict.fromkeys(dp.trace)) + [FIREWALL + v for v in dict.fromkeys(firewall.calls)]
        return verbs, list(faults.writes)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "verb" in metafunc.fixturenames:
        params = []
        for name, case in CASES.items():
            for verb in discover(case)[0]:
                params.append(pytest.param(name, verb, id=f"{name}-{verb}"))
        metafunc.parametrize(("case_name", "verb"), params)
    if "write" in metafunc.fixturenames:
        params = []
        for name, case in CASES.items():
            for step, write in enumerate(discover(case)[1], 1):
                params.append(pytest.param(name, step, write, id=f"{name}-{step}-{write}"))
        metafunc.parametrize(("case_name", "step", "write"), params)


# ---------------------------------------------------------------------------- the tests
def test_each_operation_calls_the_verbs_it_should() -> None:
    """The matrix below is only as good as the verbs found: check the main ones are there."""
    found = {name: discover(case)[0] for name, case in CASES.items()}
    assert {"ensure_bridge", "set_interface_sysctl", FIREWALL + "add_network"} <= set(found["create_network bridge"])
    assert {"ensure_bridge", "ensure_vxlan", FIREWALL + "add_network"} <= set(found["create_network overlay"])
    assert {"create_netns", "attach_veth", FIREWALL + "add_ports"} <= set(found["run on a bridge network"])
    assert "create_netns" in found["run --net none"] and "attach_veth" not in found["run --net none"]
    assert not {"create_netns", "attach_veth"} & set(found["run --net container:x"])  # its steps: store writes
    assert {"create_netns", "attach_veth"} <= set(found["run on an overlay"])
    assert "attach_veth" in found["connect"] and "create_netns" not in found["connect"]
    assert {"attach_veth", FIREWALL + "add_ports"} <= set(found["CNI ADD"])


def test_failure_at_a_verb_is_undone_and_the_operation_can_succeed(case_name: str, verb: str, tmp_path: Path) -> None:
    case = CASES[case_name]
    ctl = build(case, tmp_path)
    dp, firewall = parts(ctl)
    before = snapshot(ctl)
    if verb.startswith(FIREWALL):
        firewall.fail.add(verb[len(FIREWALL):])
    else:
        dp.fail.add(verb)
    with pytest.raises(SystemFailure, match=f"injected failure in {verb.removeprefix(FIREWALL)}$"):
        case.act(ctl, tmp_path)
    assert snapshot(ctl) == before
    dp.fail.clear()
    firewall.fail.clear()
    case.act(ctl, tmp_path)


def test_failure_at_a_store_write_is_undone_and_the_operation_can_succeed(
    case_name: str, step: int, write: str, tmp_path: Path
) -> None:
    case = CASES[case_name]
    faults = StoreFaults()
    ctl = build(case, tmp_path, faults)
    before = snapshot(ctl)
    faults.fail_at = len(faults.writes) + step
    with pytest.raises(StoreError, match="injected failure"):
        case.act(ctl, tmp_path)
    assert faults.fail_at is None  # the step that failed is the one we meant
    assert snapshot(ctl) == before
    case.act(ctl, tmp_path)


# ---------------------------------------------------------------------------- how undo behaves
def test_undo_goes_on_past_a_failing_step_and_the_first_error_is_reported(tmp_path: Path) -> None:
    """attach_veth fails, then the namespace's own undo fails too: every other step is still
    undone, the caller sees the attach's error, and only the namespace is left."""
    ctl = build(CASES["run on a bridge network"], tmp_path)
    dp, _ = parts(ctl)
    before = snapshot(ctl)
    dp.fail |= {"attach_veth", "delete_netns"}
    with pytest.raises(DatapathError, match="injected failure in attach_veth$"):
        ctl.create_container(["true"], name="a", net="appnet")
    after = snapshot(ctl)
    assert after["kernel"].pop("netns") == before["kernel"].pop("netns") | {"u-a"}
    for part in ("store", "kernel", "firewall"):
        assert after[part] == before[part]


def test_a_namespace_left_by_a_failed_undo_is_removed_by_the_next_reconcile(tmp_path: Path) -> None:
    ctl = build(CASES["run on a bridge network"], tmp_path)
    dp, _ = parts(ctl)
    before = snapshot(ctl)
    dp.fail |= {"attach_veth", "delete_netns"}
    with pytest.raises(DatapathError, match="injected failure in attach_veth$"):
        ctl.create_container(["true"], name="a", net="appnet")
    dp.fail.clear()
    assert ctl.reconcile() == ["deleted namespace u-a: no record holds it"]
    assert snapshot(ctl) == before
    ctl.create_container(["true"], name="a", net="appnet")


def test_validation_refusals_change_nothing(tmp_path: Path) -> None:
    """Refusals found before any step (a taken name, address or host port) leave no trace."""
    ctl = build(CASES["connect"], tmp_path)
    dp, firewall = parts(ctl)
    before, calls = snapshot(ctl), (len(dp.calls), len(firewall.calls))
    refusals: list[Callable[[], Any]] = [
        lambda: ctl.create_container(["true"], name="x", net="appnet"),  # name in use
        lambda: ctl.create_container(["true"], name="a", net="appnet", publish=["8080:80"]),  # x has 8080
        lambda: ctl.create_container(["true"], name="a", net="appnet", ip="10.1.0.2"),  # x's address
        lambda: ctl.create_container(["true"], name="a", net="appnet", aliases=["x"]),  # x's name
        lambda: ctl.connect("appnet", "x"),  # already connected
        lambda: ctl.create_network("appnet", subnet="10.9.0.0/24"),  # name taken
        lambda: ctl.create_network("n3", subnet="10.1.0.0/16"),  # overlaps appnet
        lambda: ctl.create_network("n3", driver="bridge", options={"colour": "blue"}),  # unknown option
    ]
    for refuse in refusals:
        with pytest.raises(TetherError) as info:
            refuse()
        assert "\n" not in str(info.value)
    assert snapshot(ctl) == before
    assert (len(dp.calls), len(firewall.calls)) == calls
