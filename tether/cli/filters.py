"""Docker's ``--filter KEY=VALUE`` and ``--label KEY=VALUE``, as the CLI reads them.

Filtering happens here, in the client, over what the daemon lists (``--format json``'s
records): the daemon's API stays as it is, and the rules are Docker's, kept in one pure
place. As in Docker, values of one key OR (``--filter name=a --filter name=b``) and
different keys AND; ``label`` is Docker's exception: every label filter must hold.
``name`` and ``id`` are regular expressions searched anywhere in the value, as Docker's
are (``name=web`` also finds ``web2``; ``name=^web$`` only ``web``; a container name also
matches with Docker's leading slash, ``name=^/web$``). A malformed filter, an unknown key or
a value the key cannot take is ``InvalidInput`` with one line.
"""

from __future__ import annotations

from ..errors import InvalidInput
from ..validate import DEFAULT_NETWORK, check_labels

TYPE_CHECKING = False
if TYPE_CHECKING:  # not at run time: `ps` and `network ls` import this module on every call
    from collections.abc import Callable, Iterable
    from typing import Any

__all__ = [
    "CONTAINER_FILTERS",
    "NETWORK_FILTERS",
    "PRUNE_FILTERS",
    "Filters",
    "container_matches",
    "labels_match",
    "network_matches",
    "parse_filters",
    "parse_labels",
    "prunable",
]

Filters = dict[str, list[str]]

NETWORK_FILTERS = ("dangling", "driver", "id", "label", "name", "scope", "type")
CONTAINER_FILTERS = ("id", "label", "name", "network", "status")
PRUNE_FILTERS = ("label", "label!")
# Docker's states and tether's own (a script written for Docker must not fail on them)
STATUSES = ("created", "creating", "running", "exited", "external", "restarting", "removing", "paused", "dead")
_TRUE, _FALSE = ("true", "1"), ("false", "0")


def parse_labels(items: Iterable[str] | None) -> dict[str, str]:
    """``--label KEY=VALUE`` (or ``KEY``: an empty value), repeatable; the last one wins."""
    labels: dict[str, str] = {}
    for item in items or []:
        key, _, value = item.partition("=")
        if not key:
            raise InvalidInput(f"invalid --label {item!r}: use KEY=VALUE, or KEY alone for an empty value")
        labels[key] = value
    return check_labels(labels)


def parse_filters(items: Iterable[str] | None, command: str, keys: Iterable[str]) -> Filters:
    """``--filter KEY=VALUE`` items, each checked: the key is one ``command`` knows and the
    value one the key can take."""
    filters: Filters = {}
    known = tuple(keys)
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"invalid filter {item!r}: use --filter KEY=VALUE")
        if key not in known:
            raise InvalidInput(f"invalid filter key {key!r}: {command} filters by {', '.join(known)}")
        _check_value(key, value, item)
        filters.setdefault(key, []).append(value)
    return filters


def _check_value(key: str, value: str, item: str) -> None:
    problem = ""
    if key in ("name", "id"):
        import re  # here: `ps` and `network ls` without a name or id filter never need it

        try:
            re.compile(value)
        except re.error as exc:
            problem = f"not a regular expression ({exc})"
    elif key in ("label", "label!") and not value.partition("=")[0]:
        problem = "use label=KEY or label=KEY=VALUE"
    elif key == "type" and value not in ("builtin", "custom"):
        problem = "use type=builtin or type=custom"
    elif key == "dangling" and value.lower() not in _TRUE + _FALSE:
        problem = "use dangling=true or dangling=false"
    elif key == "status" and value not in STATUSES:
        problem = f"the status is one of {', '.join(STATUSES)}"
    elif not value:
        problem = "give a value after '='"
    if problem:
        raise InvalidInput(f"invalid filter {item!r}: {problem}")


def labels_match(labels: dict[str, str] | None, wanted: list[str]) -> bool:
    """Every ``KEY`` or ``KEY=VALUE`` of ``wanted`` holds (Docker's rule for labels)."""
    labels = labels or {}
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def _search(pattern: str, text: str) -> bool:
    import re  # only a name or id filter gets here

    return re.search(pattern, text) is not None


def _any(values: list[str] | None, test: Callable[[str], bool]) -> bool:
    """No filter of this key, or one of its values passes (values of one key OR)."""
    return values is None or any(test(v) for v in values)


def network_matches(net: dict[str, Any], filters: Filters) -> bool:
    """A ``network ls`` record against ``network ls`` filters."""
    builtin = net["name"] == DEFAULT_NETWORK
    dangling = not builtin and not net.get("containers")
    return (
        _any(filters.get("name"), lambda v: _search(v, net["name"]))
        and _any(filters.get("id"), lambda v: _search(v, net["id"]))
        and _any(filters.get("driver"), lambda v: v == net.get("driver"))
        and _any(filters.get("scope"), lambda v: v == net.get("scope", "local"))
        and _any(filters.get("type"), lambda v: (v == "builtin") == builtin)
        and _any(filters.get("dangling"), lambda v: (v.lower() in _TRUE) == dangling)
        and labels_match(net.get("labels"), filters.get("label", []))
    )


def container_matches(container: dict[str, Any], filters: Filters) -> bool:
    """A ``ps`` record against ``ps`` filters."""
    name, networks = container["name"], container.get("networks") or {}
    # a stopped container has no endpoint but still belongs to its networks (`attachments`)
    member = set(networks) | {a.get("network") for a in container.get("attachments") or []}
    return (
        _any(filters.get("name"), lambda v: any(_search(v, n) for n in (name, "/" + name)))
        and _any(filters.get("id"), lambda v: _search(v, container["id"]))
        and _any(filters.get("status"), lambda v: v == container.get("state"))
        and _any(
            filters.get("network"),
            lambda v: v in member or any(str(n.get("network_id", "")).startswith(v) for n in networks.values()),
        )
        and labels_match(container.get("labels"), filters.get("label", []))
    )


def prunable(net: dict[str, Any], filters: Filters) -> bool:
    """What ``network prune`` removes: this host's custom networks with no container, and
    with ``label`` (all of them) and without ``label!`` (any of them)."""
    unused = net.get("scope", "local") == "local" and net["name"] != DEFAULT_NETWORK and not net.get("containers")
    labels = net.get("labels")
    return (
        unused
        and labels_match(labels, filters.get("label", []))
        and not any(labels_match(labels, [v]) for v in filters.get("label!", []))
    )
