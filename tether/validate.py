"""Every check of user input that more than one front end needs, written once.

Front ends (CLI, API, the CNI and Docker doors) and the controller call these at the
boundary, before anything changes; each raises ``InvalidInput`` with one line saying what
is wrong and how to fix it. The module imports nothing heavy (no ``re``, no ``ipaddress``
at import time) because the CNI plugin, a process started per call, uses it too.
"""

from __future__ import annotations

from .errors import InvalidInput

__all__ = [
    "DEFAULT_NETWORK",
    "RESERVED_NETWORK_NAMES",
    "check_labels",
    "validate_name",
    "validate_mac",
    "valid_ifname",
    "check_ifname",
    "check_ipv4",
    "check_ipv6",
    "split_families",
    "split_ranges",
    "check_hostname",
    "parse_bool_option",
    "parse_mtu",
    "parse_seconds",
    "is_plain_name",
]

# names `--net` gives a meaning of its own, so no network may take them
RESERVED_NETWORK_NAMES = ("none", "host", "container", "default")
# the network `--net` means when it names none (re-exported by model.py)
DEFAULT_NETWORK = "bridge"

_NAME_TAIL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_HEX = frozenset("0123456789abcdefABCDEF")


def is_plain_name(value: str) -> bool:
    """Docker's (and CNI's) rule: an ASCII letter or digit, then letters, digits, ``_.-``."""
    return bool(value) and value[0].isascii() and value[0].isalnum() and all(c in _NAME_TAIL for c in value)


def validate_name(kind: str, name: str) -> str:
    """A container, network or alias name: Docker's rule, at most 63 characters."""
    if not isinstance(name, str) or len(name) > 63 or not is_plain_name(name):
        raise InvalidInput(
            f"invalid {kind} name {name!r}: use 1-63 characters from [a-zA-Z0-9_.-], "
            "starting with a letter or digit"
        )
    return name


def validate_mac(mac: str) -> str:
    """A MAC address as six hex pairs; returned in lower case."""
    pairs = mac.split(":") if isinstance(mac, str) else []
    if len(pairs) != 6 or not all(len(p) == 2 and set(p) <= _HEX for p in pairs):
        raise InvalidInput(f"invalid mac {mac!r}: use six hex pairs like 02:42:0a:00:00:05")
    return mac.lower()


def valid_ifname(name: str) -> bool:
    """The kernel's rule for a link name: 1-15 bytes, no '/', ':' or white space."""
    return 0 < len(name) < 16 and name not in (".", "..") and not any(c in "/:" or c.isspace() for c in name)


def check_ifname(what: str, name: str) -> str:
    if not isinstance(name, str) or not valid_ifname(name):
        raise InvalidInput(f"invalid {what} {name!r}: at most 15 characters, no '/', ':' or spaces")
    return name


def check_ipv4(what: str, address: str, example: str = "10.0.0.5") -> str:
    """An IPv4 address given by a user (``--ip``, CNI ``ips``, Docker's Address)."""
    import ipaddress

    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        raise InvalidInput(f"invalid {what} {address!r}: give an IPv4 address such as {example}") from None
    return address


def check_ipv6(what: str, address: str, example: str = "fd00:88::5") -> str:
    """An IPv6 address given by a user (``--ip6``, CNI ``ips``, Docker's AddressIPv6), normalised."""
    import ipaddress

    try:
        return str(ipaddress.IPv6Address(address))
    except ValueError:
        hint = " (that is IPv4: use --ip for it)" if "." in str(address) and ":" not in str(address) else ""
        raise InvalidInput(f"invalid {what} {address!r}: give an IPv6 address such as {example}{hint}") from None


def split_families(
    subnets: list[str], gateways: list[str], ipv6: bool
) -> tuple[str | None, str | None, str | None, str | None]:
    """Docker's repeated ``--subnet``/``--gateway`` as (subnet, gateway, subnet6, gateway6):
    at most one subnet per family, each gateway matched to its subnet by family, and a v6
    subnet only with ``--ipv6``. Nothing is checked beyond the family here."""
    by_family: dict[int, list[str]] = {4: [], 6: []}
    for text in subnets:
        text = (text or "").strip()
        by_family[6 if ":" in text else 4].append(text)
    for family, found in by_family.items():
        if len(found) > 1:
            name = "IPv4" if family == 4 else "IPv6"
            raise InvalidInput(f"--subnet: {name} subnet given twice ({', '.join(found)}): give one subnet per family")
    if by_family[6] and not ipv6:
        raise InvalidInput(f"--subnet {by_family[6][0]} is IPv6: add --ipv6 to make a dual-stack network")
    gw: dict[int, str] = {}
    for text in gateways:
        text = (text or "").strip()
        family = 6 if ":" in text else 4
        if family in gw:
            raise InvalidInput(f"--gateway: two gateways of one family ({gw[family]}, {text}): give one per subnet")
        if not by_family[family]:
            name = "IPv4" if family == 4 else "IPv6"
            raise InvalidInput(f"--gateway {text} needs an {name} --subnet it belongs to")
        gw[family] = text
    first = lambda family: by_family[family][0] if by_family[family] else None  # noqa: E731
    return first(4), gw.get(4), first(6), gw.get(6)


def split_ranges(ranges: list[str], ipv6: bool) -> tuple[str | None, str | None]:
    """Repeated ``--ip-range`` as (v4 range, v6 range): at most one per family, a v6 one
    only with ``--ipv6``."""
    found: dict[int, str] = {}
    for text in ranges:
        text = (text or "").strip()
        family = 6 if ":" in text else 4
        if family in found:
            raise InvalidInput(f"--ip-range: two ranges of one family ({found[family]}, {text}): give one per subnet")
        if family == 6 and not ipv6:
            raise InvalidInput(f"--ip-range {text} is IPv6: add --ipv6 and the IPv6 --subnet it belongs to")
        found[family] = text
    return found.get(4), found.get(6)


def check_hostname(hostname: str) -> str:
    if not (0 < len(hostname) <= 63 and all(c.isalnum() or c in "-." for c in hostname)):
        raise InvalidInput(f"invalid --hostname {hostname!r}: use letters, digits, '-' and '.', at most 63")
    return hostname


def parse_bool_option(flag: str, value: str) -> str:
    """``-o flag=value`` for a yes/no option, normalised to "true" or "false"."""
    lowered = str(value).strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return "true"
    if lowered in ("false", "0", "no", "off"):
        return "false"
    raise InvalidInput(f"invalid -o {flag}={value!r}: use true or false")


MIN_MTU = 576  # IPv4 hosts must take 576-byte datagrams; below it much breaks (IPv6 needs 1280)


def parse_mtu(value: str) -> int:
    try:
        mtu = int(value)
    except ValueError:
        mtu = -1
    if not MIN_MTU <= mtu <= 65535:
        raise InvalidInput(
            f"invalid mtu {value!r}: use a whole number from {MIN_MTU} (the smallest datagram IPv4 "
            "hosts must accept) to 65535"
        )
    return mtu


def parse_seconds(flag: str, value: str) -> float:
    """A duration given on the command line, such as ``-t 10`` or ``-t 2.5``."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < 1e9:
        raise InvalidInput(f"invalid {flag} {value!r}: give a number of seconds, such as 10")
    return seconds


def check_labels(labels: dict[str, str] | None) -> dict[str, str]:
    """``--label`` keys and values as stored on a network or container: a key is not empty
    and has no ``=`` (``label=KEY=VALUE`` filters split at the first one); values are text."""
    for key, value in (labels or {}).items():
        if not isinstance(key, str) or not key or "=" in key:
            raise InvalidInput(f"invalid label key {key!r}: give a non-empty key without '=', as in --label tier=web")
        if not isinstance(value, str):
            raise InvalidInput(f"invalid value of label {key!r}: a label value is text")
    return dict(labels or {})
