"""Reconcile's decisions, one situation each, on fakes: what a crash, a reboot, another
runtime or an admin may leave behind, and what reconcile does about it. Each test also
reconciles a second time, which must find nothing more to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from controllerkit import make_controller, runtime_netns, snapshot

from tether.controller import Controller
from tether.doors import CniDoor
from tether.storekeys import CTR_PREFIX
from tether.testing.datapath import RecordingDatapath
from tether.testing.firewall import RecordingFirewall


@pytest.fixture
def ctl(tmp_path: Path) -> Controller:
    ctl = make_controller(tmp_path)
    ctl.create_network("appnet", subnet="10.1.0.0/24")
    return ctl


def dp_of(ctl: Controller) -> RecordingDatapath:
    return ctl.ctx.datapath  # type: ignore[return-value]


def fw_of(ctl: Controller) -> RecordingFirewall:
    return ctl.firewall  # type: ignore[return-value]


def set_record(ctl: Controller, name: str, **changes: Any) -> None:
    """What a daemon killed at the wrong moment (or a process that exited) leaves in the record."""
    container = ctl._container(name)
    ctl.store.put(CTR_PREFIX + name, container.with_(**changes).to_dict())


def reconcile_until_quiet(ctl: Controller) -> list[str]:
    """Reconcile, then check a second reconcile changes nothing and reports nothing."""
    actions = ctl.reconcile()
    settled = snapshot(ctl)
    assert ctl.reconcile() == []
    assert snapshot(ctl) == settled
    return actions


def test_a_container_left_creating_is_removed_with_everything_it_held(ctl: Controller) -> None:
    before = snapshot(ctl)
    ctl.create_container(["true"], name="a", net="appnet", publish=["8080:80"])
    set_record(ctl, "a", state="creating")  # killed between its first record and its last
    assert reconcile_until_quiet(ctl) == ["removed container a (creating)"]
    assert snapshot(ctl) == before  # netns, veth, lease, records, port mapping, state dir


def test_a_container_killed_while_its_namespace_was_made_leaves_no_namespace(ctl: Controller) -> None:
    """Killed inside the sandbox step: the record says 'creating' with no namespace yet,
    but the namespace (marked first) exists (seen in the fault-injection rounds)."""
    before = snapshot(ctl)
    ctl.create_container(["true"], name="a", net="none")
    set_record(ctl, "a", state="creating", netns=None)
    assert reconcile_until_quiet(ctl) == ["removed container a (creating)", "deleted namespace u-a: no record holds it"]
    assert snapshot(ctl) == before


def test_an_exited_rm_container_is_removed_and_an_exited_one_without_rm_is_kept(ctl: Controller) -> None:
    ctl.create_container(["true"], name="keep", net="appnet")
    before = snapshot(ctl)
    ctl.create_container(["true"], name="gone", net="appnet", auto_remove=True)
    set_record(ctl, "gone", state="exited", exit_code=0)
    # exited, but the daemon died before it released keep's network: reconcile does
    set_record(ctl, "keep", state="exited", exit_code=0)
    assert reconcile_until_quiet(ctl) == [
        "removed container gone (exited)",
        "released the network of exited container keep",
    ]
    after = snapshot(ctl)
    kept = after["store"].pop(CTR_PREFIX + "keep")
    assert kept["state"] == "exited" and kept["attachments"] == [{"network": "appnet", "ip": None, "aliases": []}]
    assert not [key for key in after["store"] if key.startswith(("/endpoints/", "/ipam/"))]
    assert after["kernel"]["veths"] == {} and after["kernel"]["netns"] == before["kernel"]["netns"]  # the netns stays
    assert after["firewall"] == before["firewall"] and after["state dir"] == before["state dir"]


def test_an_endpoint_whose_host_veth_vanished_is_attached_again(ctl: Controller) -> None:
    ctl.create_container(["true"], name="a", net="appnet")
    dp = dp_of(ctl)
    (host_ifname, attached), = dp.veths.items()
    dp.detach_veth(host_ifname)  # say, an admin's `ip link del`
    assert reconcile_until_quiet(ctl) == ["re-attached a to appnet"]
    again = dp.veths[host_ifname]
    same = ("netns", "ifname", "bridge", "mac", "cidr", "gateway", "mtu", "mark")
    assert {k: again[k] for k in same} == {k: attached[k] for k in same}


def test_an_endpoint_attached_half_way_is_attached_again(ctl: Controller) -> None:
    """A daemon killed inside an attach: the host side is on its bridge, but the address
    never reached the container's interface (seen in the fault-injection rounds)."""
    ctl.create_container(["true"], name="a", net="appnet")
    dp = dp_of(ctl)
    (host_ifname, attached), = dp.veths.items()
    dp.veths[host_ifname] = dict(attached, cidr="")  # the inside has no address
    assert reconcile_until_quiet(ctl) == ["re-attached a to appnet"]
    assert dp.veths[host_ifname]["cidr"] == attached["cidr"]


def test_an_endpoint_left_down_is_attached_again(ctl: Controller, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed between the address and the link's "up" inside the namespace (seen in the
    fault-injection rounds): the address is there, the link is down."""
    ctl.create_container(["true"], name="a", net="appnet")
    dp = dp_of(ctl)
    real = dp.container_interfaces
    down = {"once": True}

    def first_time_down(netns: str) -> list[dict[str, Any]]:
        links = real(netns)
        if down.pop("once", False):
            return [dict(i, state="down") if i["ifname"] != "lo" else i for i in links]
        return links

    monkeypatch.setattr(dp, "container_interfaces", first_time_down)
    assert reconcile_until_quiet(ctl) == ["re-attached a to appnet"]


def test_a_namespace_lost_by_a_stopped_container_is_made_again_with_its_endpoints(ctl: Controller) -> None:
    ctl.create_container(["true"], name="a", net="appnet")
    dp = dp_of(ctl)
    before = snapshot(ctl)
    dp.delete_netns("u-a")  # a reboot: namespaces and their veths are gone, the records are not
    assert reconcile_until_quiet(ctl) == ["recreated namespace of a", "re-attached a to appnet"]
    assert snapshot(ctl)["kernel"]["netns"] == before["kernel"]["netns"]
    assert set(dp.veths) == set(before["kernel"]["veths"])


def test_only_orphan_links_with_this_daemons_mark_are_deleted(ctl: Controller, tmp_path: Path) -> None:
    ctl.create_container(["true"], name="a", net="appnet")
    dp = dp_of(ctl)
    before = snapshot(ctl)
    bridge = ctl.get_network("appnet").bridge
    ours, theirs = ctl.ctx.mark, make_controller(tmp_path, node="other", netns_prefix="v-").ctx.mark
    assert ours != theirs
    dp.ensure_bridge("tbr-orphan", "10.8.0.1/24", 1500, ours)  # a network removed while we were down
    dp.create_veth_pair(
        host_ifname="vtorphan", peer_ifname="p0", bridge=bridge, mac="02:00:00:00:00:09", mtu=1500, mark=ours
    )
    dp.ensure_bridge("tbr-theirs", "10.9.0.1/24", 1500, theirs)  # another daemon's, prefix v-
    dp.create_veth_pair(
        host_ifname="vttheirs", peer_ifname="p1", bridge="tbr-theirs", mac="02:00:00:00:00:0a", mtu=1500, mark=theirs
    )
    actions = reconcile_until_quiet(ctl)
    assert sorted(actions) == ["deleted orphan link tbr-orphan", "deleted orphan link vtorphan"]
    assert {"tbr-theirs", "vttheirs"} <= set(dp.marks)
    kept = snapshot(ctl)
    for table in ("bridges", "veths", "marks"):
        for link in ("tbr-theirs", "vttheirs"):
            kept["kernel"][table].pop(link, None)
    assert kept == before


def test_a_lease_without_an_owner_is_released(ctl: Controller) -> None:
    ctl.create_container(["true"], name="a", net="appnet")
    network = ctl.get_network("appnet")
    before = snapshot(ctl)
    ghost = ctl.ipam.allocate(network, "no-such-container")  # a crash between lease and record
    ctl.store.put("/ipam/removed-network-id/10.77.0.5", {"owner": "whoever"})  # of a network gone meanwhile
    actions = reconcile_until_quiet(ctl)
    assert sorted(actions) == ["released lease 10.77.0.5 of a removed network", f"released orphan lease {ghost}"]
    assert snapshot(ctl) == before
    assert list(ctl.ipam.leases(network.id).values()) == [ctl.inspect_container("a")["id"]]


def test_a_live_owners_lease_that_no_endpoint_holds_is_released(ctl: Controller) -> None:
    """Killed between taking the lease and writing the endpoint record (a `network connect`)."""
    ctl.create_container(["true"], name="a", net="appnet")
    network = ctl.get_network("appnet")
    before = snapshot(ctl)
    extra = ctl.ipam.allocate(network, ctl.inspect_container("a")["id"])
    assert reconcile_until_quiet(ctl) == [f"released orphan lease {extra}"]
    assert snapshot(ctl) == before


def test_an_endpoint_that_lost_its_lease_takes_it_back(ctl: Controller) -> None:
    """Killed between releasing the lease and deleting the endpoint record (an older order)."""
    ctl.create_container(["true"], name="a", net="appnet")
    network = ctl.get_network("appnet")
    address = ctl.inspect_container("a")["networks"]["appnet"]["address"]
    before = snapshot(ctl)
    ctl.ipam.release(network.id, address)
    assert reconcile_until_quiet(ctl) == [f"leased {address} again to a"]
    assert snapshot(ctl)["store"] == before["store"]


def test_a_cni_sandbox_whose_namespace_is_gone_is_dropped(ctl: Controller, tmp_path: Path) -> None:
    ns = runtime_netns(ctl, tmp_path / "pod1")
    CniDoor(ctl).add("pod2", runtime_netns(ctl, tmp_path / "pod2"), "eth0", "appnet")  # its namespace stays
    before = snapshot(ctl)
    CniDoor(ctl).add("pod1", ns, "eth0", "appnet", publish=[{"hostPort": 8080, "containerPort": 80}])
    (tmp_path / "pod1").unlink()  # the runtime deleted the pod without a DEL (a reboot, a crash)
    dp_of(ctl).delete_netns(ns)
    assert reconcile_until_quiet(ctl) == ["removed CNI attachment cni-pod1: its runtime's namespace is gone"]
    after = snapshot(ctl)
    before["kernel"]["netns"].discard(ns)
    assert after == before  # pod1's record, index, lease and published port are gone; pod2 is untouched
    assert [c["name"] for c in ctl.list_containers(all_=True)] == ["cni-pod2"]


def test_an_orphan_endpoint_record_is_dropped(ctl: Controller) -> None:
    before = snapshot(ctl)
    ctl.create_container(["true"], name="a", net="appnet")
    ctl.store.delete(CTR_PREFIX + "a")  # the record went, its endpoint's did not
    actions = reconcile_until_quiet(ctl)
    assert any(a.startswith("dropped orphan endpoint vt") for a in actions)
    after = snapshot(ctl)
    assert after["store"] == before["store"]
    assert after["firewall"] == before["firewall"]
    assert after["state dir"] == before["state dir"]
    assert after["kernel"]["veths"] == {}


def test_the_firewall_built_step_by_step_is_what_reconcile_rebuilds_from_the_store(
    ctl: Controller, tmp_path: Path
) -> None:
    ctl.create_network("quiet", subnet="10.2.0.0/24", internal=True)
    ctl.create_network("noicc", subnet="10.3.0.0/24", options={"icc": "false", "masquerade": "false"})
    ctl.create_container(["true"], name="a", net="appnet", publish=["8080:80", "127.0.0.1:8443:443/tcp"])
    ctl.create_container(["true"], name="b", net="noicc", publish=["5353:53/udp"])
    pod = runtime_netns(ctl, tmp_path / "pod")
    CniDoor(ctl).add("pod", pod, "eth0", "appnet", publish=[{"hostPort": 9090, "containerPort": 90}])
    ctl.connect("quiet", "a")
    ctl.remove_container("b")
    built = fw_of(ctl).elements
    assert reconcile_until_quiet(ctl) == []
    assert fw_of(ctl).elements == built
    fw_of(ctl).delete()  # `nft flush ruleset`
    assert reconcile_until_quiet(ctl) == []
    assert fw_of(ctl).elements == built
