"""Docker's ``--filter`` and ``--label`` as the CLI reads and applies them (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from tether.cli.filters import (
    CONTAINER_FILTERS,
    NETWORK_FILTERS,
    PRUNE_FILTERS,
    container_matches,
    labels_match,
    network_matches,
    parse_filters,
    parse_labels,
    prunable,
)
from tether.errors import InvalidInput
from tether.model import check_labels


def net(name: str, **kw: Any) -> dict[str, Any]:
    record = {"id": f"{name}-0123456789abcdef", "name": name, "driver": "bridge", "scope": "local",
              "containers": 0, "labels": {}}
    return record | kw


NETS = [
    net("bridge", id="b0b0b0b0b0b0ffff", containers=1),
    net("appnet", id="aaaa1111bbbb2222", containers=2, labels={"tier": "web", "env": "prod"}),
    net("idle", id="cccc3333dddd4444", labels={"tier": "db"}),
    net("idle2", id="eeee5555ffff6666", labels={"env": ""}),
    net("ov1", id="9999888877776666", driver="overlay", scope="global"),
]


def ctr(name: str, **kw: Any) -> dict[str, Any]:
    record = {"id": f"{name}00112233445566778899", "name": name, "state": "running", "labels": {}, "networks": {}}
    return record | kw


CTRS = [
    ctr("web", labels={"tier": "web"}, networks={"appnet": {"network_id": "aaaa1111bbbb2222"}}),
    ctr("web2", state="exited", networks={"appnet": {"network_id": "aaaa1111bbbb2222"},
                                          "idle": {"network_id": "cccc3333dddd4444"}}),
    ctr("db", labels={"tier": "db", "backup": ""}, networks={"idle": {"network_id": "cccc3333dddd4444"}}),
    ctr("solo", state="created"),
    ctr("stopped", state="exited", attachments=[{"network": "backend", "ip": None, "aliases": []}]),
]


def networks(*items: str) -> list[str]:
    filters = parse_filters(items, "network ls", NETWORK_FILTERS)
    return [n["name"] for n in NETS if network_matches(n, filters)]


def containers(*items: str) -> list[str]:
    filters = parse_filters(items, "ps", CONTAINER_FILTERS)
    return [c["name"] for c in CTRS if container_matches(c, filters)]


# ------------------------------------------------------------------ parsing
def test_parse_groups_values_by_key() -> None:
    assert parse_filters(["name=a", "driver=bridge", "name=b"], "network ls", NETWORK_FILTERS) == {
        "name": ["a", "b"], "driver": ["bridge"]
    }
    assert parse_filters(None, "ps", CONTAINER_FILTERS) == {}
    assert parse_filters(["label=a=b=c"], "ps", CONTAINER_FILTERS) == {"label": ["a=b=c"]}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("name", "invalid filter 'name': use --filter KEY=VALUE"),
        ("=x", "invalid filter '=x': use --filter KEY=VALUE"),
        ("colour=red", "invalid filter key 'colour': network ls filters by dangling, driver, id, label, name, scope"),
        ("Name=x", "invalid filter key 'Name'"),
        ("type=mine", "invalid filter 'type=mine': use type=builtin or type=custom"),
        ("dangling=maybe", "invalid filter 'dangling=maybe': use dangling=true or dangling=false"),
        ("label=", "invalid filter 'label=': use label=KEY or label=KEY=VALUE"),
        ("label==v", "use label=KEY or label=KEY=VALUE"),
        ("name=[", "invalid filter 'name=[': not a regular expression"),
        ("driver=", "invalid filter 'driver=': give a value after '='"),
    ],
)
def test_bad_network_filters(item: str, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_filters(["driver=bridge", item], "network ls", NETWORK_FILTERS)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("driver=bridge", "invalid filter key 'driver': ps filters by id, label, name, network, status"),
        ("status=up", "invalid filter 'status=up': the status is one of created"),
        ("id=(", "not a regular expression"),
    ],
)
def test_bad_container_filters(item: str, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_filters([item], "ps", CONTAINER_FILTERS)
    assert message in str(info.value)


# ------------------------------------------------------------------ network ls
def test_network_name_and_id_are_searched_as_docker_does() -> None:
    assert networks("name=idle") == ["idle", "idle2"]
    assert networks("name=^idle$") == ["idle"]
    assert networks("name=net") == ["appnet"]
    assert networks("id=aaaa1111") == ["appnet"]
    assert networks("id=1111bbbb") == ["appnet"]  # part of the ID, as Docker's
    assert networks("name=nothing") == []


def test_network_same_key_ors_different_keys_and() -> None:
    assert networks("name=^idle$", "name=^ov1$") == ["idle", "ov1"]
    assert networks("name=idle", "name=ov1", "driver=overlay") == ["ov1"]
    assert networks("driver=bridge", "driver=overlay") == [n["name"] for n in NETS]


def test_network_driver_scope_type_dangling() -> None:
    assert networks("driver=overlay") == ["ov1"]
    assert networks("scope=global") == ["ov1"]
    assert networks("scope=local") == ["bridge", "appnet", "idle", "idle2"]
    assert networks("type=builtin") == ["bridge"]
    assert networks("type=custom") == ["appnet", "idle", "idle2", "ov1"]
    assert networks("dangling=true") == ["idle", "idle2", "ov1"]
    assert networks("dangling=1") == networks("dangling=TRUE") == networks("dangling=true")
    assert networks("dangling=false") == ["bridge", "appnet"]  # the predefined network is never dangling


def test_network_labels_all_must_hold() -> None:
    assert networks("label=tier") == ["appnet", "idle"]
    assert networks("label=tier=web") == ["appnet"]
    assert networks("label=env=") == ["idle2"]  # an empty value is a value
    assert networks("label=env") == ["appnet", "idle2"]
    assert networks("label=tier", "label=env") == ["appnet"]  # Docker: every label filter holds
    assert networks("label=tier=db", "label=env") == []


# ------------------------------------------------------------------ ps
def test_container_filters() -> None:
    assert containers("name=web") == ["web", "web2"]
    assert containers("name=^web$") == ["web"]
    assert containers("name=^/web$") == ["web"]  # Docker's names start with a slash
    assert containers("id=^db0011") == ["db"]
    assert containers("status=exited") == ["web2", "stopped"]
    assert containers("status=running", "status=created") == ["web", "db", "solo"]
    assert containers("network=appnet") == ["web", "web2"]
    assert containers("network=cccc3333") == ["web2", "db"]  # a network ID prefix
    assert containers("network=appnet", "network=idle") == ["web", "web2", "db"]
    assert containers("network=none") == []
    assert containers("network=backend") == ["stopped"]  # no endpoint while stopped, still a member
    assert containers("label=tier") == ["web", "db"]
    assert containers("label=tier=db", "label=backup") == ["db"]
    assert containers("label=backup=") == ["db"]
    assert containers("network=appnet", "status=running") == ["web"]


# ------------------------------------------------------------------ prune
def prune(*items: str) -> list[str]:
    filters = parse_filters(items, "network prune", PRUNE_FILTERS)
    return [n["name"] for n in NETS if prunable(n, filters)]


def test_prune_selects_unused_local_custom_networks() -> None:
    assert prune() == ["idle", "idle2"]  # not bridge, not in use, not the cluster's
    assert prune("label=tier") == ["idle"]
    assert prune("label=tier=web") == []
    assert prune("label!=tier") == ["idle2"]
    assert prune("label!=tier=db") == ["idle2"]
    with pytest.raises(InvalidInput, match="network prune filters by label, label!"):
        prune("name=idle")


# ------------------------------------------------------------------ labels
def test_labels_match() -> None:
    assert labels_match({"a": "1"}, [])
    assert labels_match(None, [])
    assert not labels_match(None, ["a"])
    assert labels_match({"a": "1", "b": ""}, ["a=1", "b"])
    assert not labels_match({"a": "1"}, ["a=2"])


def test_parse_labels() -> None:
    assert parse_labels(["tier=web", "empty", "eq=a=b", "blank=", "tier=db"]) == {
        "tier": "db", "empty": "", "eq": "a=b", "blank": ""
    }
    assert parse_labels(None) == {}
    with pytest.raises(InvalidInput, match="invalid --label '=x': use KEY=VALUE"):
        parse_labels(["=x"])
    with pytest.raises(InvalidInput):
        parse_labels([""])


@pytest.mark.parametrize("labels", [{"": "x"}, {"a=b": "c"}, {"k": 1}, {"k": None}])
def test_check_labels_refuses(labels: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput) as info:
        check_labels(labels)
    assert "\n" not in str(info.value)
