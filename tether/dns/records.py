"""What the embedded resolver knows and answers itself: names, reverse names, no I/O.

This module owns the tables (``network -> name -> [address]`` over both families, each
network's subnets, ``sandbox -> [network]``) and the decision for each question: answer
it here (``LocalAnswer``) or let it go upstream (None). The resolver (``resolver.py``)
owns the sockets and the forwarding.

Design note.
* Names. A sandbox sees the names of its networks as ``NAME`` (its networks in order)
  and ``NAME.NETWORK``. As in Docker, each family is looked up on its own: A takes the
  first network whose ``NAME`` has an IPv4 address, AAAA the first with an IPv6 one. A
  known name with no address of the asked family (or asked for any other type) gets
  NOERROR with no answer, which ends the asker's search at once instead of a timeout or
  a walk through its search domains. ANY gets both families.
* Reverse names. ``in-addr.arpa`` and ``ip6.arpa`` (nibble) names are read as the
  network they stand for (``2.0.210.10.in-addr.arpa`` is 10.210.0.2/32, ``210.10...``
  is 10.210.0.0/16). An address the sandbox can see (a record on one of its networks)
  gets a PTR to ``NAME.NETWORK``, which is what Docker answers on user-defined networks
  (libnetwork's ``ResolveIP``: ``name + "." + network``). Any other reverse name inside
  a tether network's subnet, or of an address known on a network the sandbox cannot
  see, is NXDOMAIN here: it is never forwarded, so ``getfqdn`` of a container costs one
  local round trip even when the upstream is unreachable, and no upstream learns the
  private addresses. A shorter reverse name inside a subnet (a zone cut, as some tools
  ask) is NOERROR with no answer when a visible address lies below it, else NXDOMAIN.
  Every other reverse name goes upstream as before.
* Which name a PTR gives. The controller adds a container's name and its aliases under
  each of its addresses, and nothing says which is which. Docker answers the container
  name, never an alias. Here, of the names an address has on a network, the first added
  that belongs to that address alone (of its family) wins, else the first added: the
  controller adds the container name first, and an alias shared by several containers
  (a round-robin name) is never chosen while the address has a name of its own. A
  whole-table ``set_records`` keeps that rule whatever order its dict has.
* One lock over everything, held for dict lookups only: the controller's threads write,
  the serving thread reads per query.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from ..errors import InvalidInput
from .message import (
    AAAA,
    ANY,
    CLASS_IN,
    NOERROR,
    NXDOMAIN,
    PTR,
    A,
    MalformedMessage,
    Question,
    name_labels,
)

__all__ = ["LocalAnswer", "Records", "normalise_address", "reverse_network"]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_IN_ADDR = (b"in-addr", b"arpa")
_IP6 = (b"ip6", b"arpa")
_HEX_NIBBLES = frozenset(b"0123456789abcdef")
_FAMILIES = {A: (4,), AAAA: (6,), ANY: (4, 6)}


@dataclass(frozen=True)
class LocalAnswer:
    """A reply the resolver makes itself: a response code, addresses (A or AAAA by
    family) and PTR targets."""

    rcode: int
    addresses: tuple[str, ...] = ()
    pointers: tuple[str, ...] = ()


def normalise_address(address: str) -> str:
    """The canonical text of an IPv4 or IPv6 address; ``InvalidInput`` for anything else
    (a scoped address such as ``fe80::1%eth0`` included: a record has no interface)."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError as exc:
        raise InvalidInput(f"invalid IP address {address!r} for a DNS record") from exc
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.scope_id is not None:
        raise InvalidInput(f"invalid IP address {address!r} for a DNS record: scoped")
    return str(parsed)


def _version(address: str) -> int:
    """4 or 6, for an address already normalised."""
    return 6 if ":" in address else 4


def _normalise_name(name: str) -> str:
    return name.lower().rstrip(".")


def _is_octet(label: bytes) -> bool:
    """A decimal 0-255 as reverse names write it: digits, no leading zero."""
    return label.isdigit() and len(label) <= 3 and (label == b"0" or label[:1] != b"0") and int(label) <= 255


def reverse_network(labels: Sequence[bytes]) -> IPNetwork | None:
    """The network a reverse name stands for, or None if it is not one.

    ``d.c.b.a.in-addr.arpa`` (1 to 4 octets, most specific first) and the nibble form
    under ``ip6.arpa`` (1 to 32 hex digits); a full name is a /32 or /128. Case is
    ignored; anything else (classless delegation names, ``ip6.int``) is None.
    """
    if len(labels) < 3 or labels[-1].lower() != b"arpa":
        return None  # most questions: one comparison
    lowered = [label.lower() for label in labels]
    suffix, parts = tuple(lowered[-2:]), lowered[:-2]
    if suffix == _IN_ADDR and 1 <= len(parts) <= 4 and all(_is_octet(p) for p in parts):
        octets = [int(p) for p in reversed(parts)] + [0] * (4 - len(parts))
        return ipaddress.IPv4Network((bytes(octets), 8 * len(parts)))
    if suffix == _IP6 and 1 <= len(parts) <= 32 and all(len(p) == 1 and p[0] in _HEX_NIBBLES for p in parts):
        digits = b"".join(reversed(parts)).decode("ascii").ljust(32, "0")
        return ipaddress.IPv6Network((int(digits, 16), 4 * len(parts)))
    return None


class _NetworkTable:
    """One network's names: name -> addresses, and address -> names, both in the order
    they were added."""

    def __init__(self) -> None:
        self.names: dict[str, list[str]] = {}  # normalised name -> normalised addresses
        self.spelling: dict[str, str] = {}  # normalised name -> as first given (for PTR)
        self.by_address: dict[str, list[str]] = {}  # address -> normalised names

    def add(self, name: str, address: str) -> None:
        key = _normalise_name(name)
        addresses = self.names.setdefault(key, [])
        self.spelling.setdefault(key, name.rstrip("."))
        if address not in addresses:
            addresses.append(address)
            self.by_address.setdefault(address, []).append(key)

    def remove(self, name: str, address: str) -> None:
        key = _normalise_name(name)
        addresses = self.names.get(key)
        if addresses is None or address not in addresses:
            return
        addresses.remove(address)
        if not addresses:
            del self.names[key]
            del self.spelling[key]
        names = self.by_address[address]
        names.remove(key)
        if not names:
            del self.by_address[address]

    def pointer_name(self, address: str) -> str | None:
        """The name a PTR for ``address`` gives (see the design note), or None."""
        keys = self.by_address.get(address, [])
        family = _version(address)
        own = [k for k in keys if all(a == address for a in self.names[k] if _version(a) == family)]
        chosen = own or keys
        return self.spelling[chosen[0]] if chosen else None


class Records:
    """The resolver's tables. Every method may be called from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tables: dict[str, _NetworkTable] = {}
        self._subnets: dict[str, list[IPNetwork]] = {}
        self._sandbox_networks: dict[str, list[str]] = {}

    # ---- writing --------------------------------------------------------------------

    def set_records(self, network: str, records: dict[str, list[str]]) -> None:
        """Replace every name of ``network`` at once: name -> addresses, either family."""
        table = _NetworkTable()
        for name, addresses in records.items():
            for address in addresses:
                table.add(name, normalise_address(address))
        with self._lock:
            self._tables[network] = table

    def add_record(self, network: str, name: str, address: str) -> None:
        """One more address (IPv4 or IPv6) under ``name`` on ``network``; idempotent."""
        normalised = normalise_address(address)
        with self._lock:
            self._tables.setdefault(network, _NetworkTable()).add(name, normalised)

    def remove_record(self, network: str, name: str, address: str) -> None:
        """Forget one address of a name; a name or address not there (or not an address
        at all: it cannot have been added) is not an error."""
        try:
            normalised = normalise_address(address)
        except InvalidInput:
            return
        with self._lock:
            table = self._tables.get(network)
            if table is not None:
                table.remove(name, normalised)

    def set_subnets(self, network: str, subnets: Sequence[str]) -> None:
        """The subnets of ``network`` (v4 and v6): reverse names inside them are answered
        here, never forwarded. [] forgets them."""
        try:
            parsed = [ipaddress.ip_network(subnet, strict=False) for subnet in subnets]
        except ValueError as exc:
            raise InvalidInput(f"invalid subnet for the DNS resolver: {exc}") from exc
        with self._lock:
            if parsed:
                self._subnets[network] = parsed
            else:
                self._subnets.pop(network, None)

    def set_networks(self, sandbox: str, networks: Sequence[str]) -> None:
        """The networks whose names ``sandbox`` sees, preferred first; [] forgets it."""
        with self._lock:
            if networks:
                self._sandbox_networks[sandbox] = list(networks)
            else:
                self._sandbox_networks.pop(sandbox, None)

    def drop_network(self, network: str) -> None:
        """Forget a network's names and subnets, and take it off every sandbox's list."""
        with self._lock:
            self._tables.pop(network, None)
            self._subnets.pop(network, None)
            for sandbox, networks in list(self._sandbox_networks.items()):
                if network in networks:
                    remaining = [n for n in networks if n != network]
                    if remaining:
                        self._sandbox_networks[sandbox] = remaining
                    else:
                        del self._sandbox_networks[sandbox]

    # ---- reading --------------------------------------------------------------------

    def resolve(self, sandbox: str, name: str, version: int | None = None) -> list[str]:
        """The addresses ``name`` has for ``sandbox``: IPv4 then IPv6, or only ``version``
        (4 or 6); [] if none. Case-insensitive, trailing dot ignored."""
        with self._lock:
            return _by_family(self._matches(sandbox, _normalise_name(name)), (version,) if version else (4, 6))

    def reverse(self, sandbox: str, address: str) -> str | None:
        """The PTR target of ``address`` for ``sandbox`` (``NAME.NETWORK``), or None."""
        normalised = normalise_address(address)
        with self._lock:
            return self._pointer(sandbox, normalised)

    def answer(self, sandbox: str, question: Question) -> LocalAnswer | None:
        """The reply to ``question`` if it is the resolver's own to give, else None
        (the question goes upstream)."""
        if question.qclass not in (CLASS_IN, ANY):
            return None
        network = reverse_network(question.labels)
        if network is not None:
            return self._answer_reverse(sandbox, network, question.qtype)
        with self._lock:
            matches = list(self._matches(sandbox, _normalise_name(question.name)))
            if not matches:
                return None
            return LocalAnswer(NOERROR, tuple(_by_family(matches, _FAMILIES.get(question.qtype, ()))))

    # ---- under the lock -------------------------------------------------------------

    def _matches(self, sandbox: str, wanted: str) -> Iterator[list[str]]:
        """The address lists ``wanted`` names for ``sandbox``, most preferred first:
        ``NAME`` on each of its networks in order, then ``NAME.NETWORK``."""
        networks = self._sandbox_networks.get(sandbox, ())
        for network in networks:
            table = self._tables.get(network)
            addresses = table.names.get(wanted) if table is not None else None
            if addresses:
                yield addresses
        for network in networks:
            suffix = "." + network.lower()
            table = self._tables.get(network)
            if table is not None and wanted.endswith(suffix):
                addresses = table.names.get(wanted[: -len(suffix)])
                if addresses:
                    yield addresses

    def _answer_reverse(self, sandbox: str, network: IPNetwork, qtype: int) -> LocalAnswer | None:
        with self._lock:
            if network.prefixlen == network.max_prefixlen:
                address = str(network.network_address)
                target = self._pointer(sandbox, address)
                if target is not None:
                    return LocalAnswer(NOERROR, pointers=(target,) if qtype in (PTR, ANY) else ())
                known = any(address in table.by_address for table in self._tables.values())
                return LocalAnswer(NXDOMAIN) if known or self._inside_subnets(network) else None
            if not self._inside_subnets(network):
                return None
            return LocalAnswer(NOERROR if self._visible_under(sandbox, network) else NXDOMAIN)

    def _pointer(self, sandbox: str, address: str) -> str | None:
        for network in self._sandbox_networks.get(sandbox, ()):
            table = self._tables.get(network)
            name = table.pointer_name(address) if table is not None else None
            if name is None:
                continue
            target = f"{name}.{network}"
            try:
                name_labels(target)
            except MalformedMessage:
                continue  # not a name DNS can carry; another network's may be
            return target
        return None

    def _inside_subnets(self, network: IPNetwork) -> bool:
        return any(
            network.version == subnet.version and network.subnet_of(subnet)  # type: ignore[arg-type]
            for subnets in self._subnets.values()
            for subnet in subnets
        )

    def _visible_under(self, sandbox: str, network: IPNetwork) -> bool:
        """Whether an address the sandbox can see lies inside ``network``."""
        for name in self._sandbox_networks.get(sandbox, ()):
            table = self._tables.get(name)
            if table is not None and any(ipaddress.ip_address(a) in network for a in table.by_address):
                return True
        return False


def _by_family(matches: Iterable[list[str]], versions: Sequence[int]) -> list[str]:
    """For each version in turn, the addresses of that family in the first match that
    has any (Docker's rule: a network without the family does not hide the next).
    Called under the lock: the lists are the tables' own."""
    matches = list(matches)
    found: list[str] = []
    for version in versions:
        for addresses in matches:
            wanted = [a for a in addresses if _version(a) == version]
            if wanted:
                found += wanted
                break
    return found
