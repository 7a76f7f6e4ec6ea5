"""Address management, IPv4 and IPv6: which addresses an endpoint gets, and which subnets
a new network gets. Pure policy over a Store; no kernel access.

Design note. Policy is kept apart from storage, as in CNI's host-local plugin: a lease is
one key, ``/ipam/<network id>/<address>`` = ``{"owner": ...}``, created with
``compare_and_swap(key, 0, ...)``. The store arbitrates every race, so allocators in many
threads and processes never hand out an address twice; the loser of a race moves on to
the next candidate. Like host-local, allocation continues after the last address handed
out (the cursor at ``/ipam-cursor/<network id>``) and wraps around, so an address freed a
moment ago is not given to the next container while peers may still cache its ARP entry.
The cursor is only a hint: it is written without compare-and-swap, and a lost update just
costs the next allocation a few skipped candidates.

Subnet selection follows Docker's default address pools: the first candidate that
overlaps nothing in use (host routes and addresses, existing networks) wins.

IPv6 (a dual-stack network has one subnet of each family) uses the same lease keys and
the same compare-and-swap; only the cursor has a key of its own per family. In a v6
subnet only the Subnet-Router anycast address (the first) and the gateway are reserved:
v6 has no broadcast. With no v6 subnet given, a random ULA /64 is picked (RFC 4193: a
random 40-bit global ID under fd00::/8), so two hosts or two networks never pick the same
one by following the same order, and it is checked against everything in use.
"""

from __future__ import annotations

import ipaddress
import secrets
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from socket import inet_aton

from .errors import Conflict, Exhausted, InvalidInput, TetherError
from .model import Network
from .store.base import Store

__all__ = [
    "DEFAULT_POOLS",
    "IPAM",
    "choose_subnet",
    "choose_subnet6",
    "cursor_key",
    "default_gateway",
    "find_overlap",
    "lease_key",
    "validate_network_cidrs",
    "validate_network_cidrs6",
    "validate_aux_addresses",
    "validate_ip_range6",
    "pick_free_address",
]

# Docker's default address pools: (pool, prefix length of each network carved from it).
DEFAULT_POOLS: list[tuple[str, int]] = [(f"172.{n}.0.0/16", 16) for n in range(17, 32)] + [
    ("192.168.0.0/16", 20)
]

_LEASES = "/ipam/"
_CURSORS = "/ipam-cursor/"


def _as_int(address: str) -> int:
    """A stored (well-formed) IPv4 address as an int: inet_aton is ~20x cheaper than
    ipaddress, which matters when every allocation reads every lease of the network."""
    return int.from_bytes(inet_aton(address), "big")


def _sort_key(address: str) -> tuple[int, int]:
    """v4 addresses first, each family in numeric order."""
    return (6, int(IPv6Address(address))) if ":" in address else (4, _as_int(address))


def lease_key(network_id: str, address: str) -> str:
    return f"{_LEASES}{network_id}/{address}"


def cursor_key(network_id: str, family: int = 4) -> str:
    return f"{_CURSORS}{network_id}" + ("" if family == 4 else "/6")


_EXAMPLE = {4: ("an IPv4 CIDR such as 10.88.0.0/16", "10.88.0.1"), 6: ("an IPv6 CIDR such as fd00:88::/64", "fd00:88::1")}


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _parse_cidr(what: str, text: str, family: int = 4) -> IPv4Network | IPv6Network:
    """A strict CIDR of ``family``, or InvalidInput saying how to write it."""
    text = (text or "").strip()
    if "/" not in text and _is_address(text):
        length = 24 if ":" not in text else 64
        raise InvalidInput(f"{what} {text!r} needs a prefix length, as in {text}/{length}")
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise InvalidInput(f"invalid {what} {text!r}: use {_EXAMPLE[family][0]}") from None
    if loose.version != family:
        if family == 4:
            raise InvalidInput(f"{what} {text} is IPv6: give it with --ipv6 as a second --subnet, beside an IPv4 one")
        raise InvalidInput(f"{what} {text} is IPv4 where an IPv6 subnet is expected: use {_EXAMPLE[6][0]}")
    if loose.network_address != ipaddress.ip_address(text.split("/", 1)[0]):
        raise InvalidInput(f"{what} {text} has host bits set: did you mean {loose}?")
    return loose


def _parse_address(what: str, text: str, family: int | None = 4) -> IPv4Address | IPv6Address:
    """A plain address of ``family`` (None: either)."""
    text = (text or "").strip()
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        example = _EXAMPLE[family or 4][1]
        raise InvalidInput(f"invalid {what} {text!r}: use a plain address such as {example} (no prefix)") from None
    if family is not None and address.version != family:
        if family == 4:
            raise InvalidInput(f"{what} {text} is IPv6 where an IPv4 address is expected (use --ip6 for IPv6)")
        raise InvalidInput(f"{what} {text} is IPv4 where an IPv6 address is expected (use --ip for IPv4)")
    return address


def _subnet(text: str) -> IPv4Network:
    """A subnet tether can serve: strict IPv4 CIDR with room for a gateway and a host."""
    subnet = _parse_cidr("subnet", text)
    assert isinstance(subnet, IPv4Network)
    if subnet.prefixlen > 30:
        raise InvalidInput(
            f"subnet {subnet} is too small: use a prefix length of 30 or less, "
            f"as in {subnet.supernet(new_prefix=30)}"
        )
    return subnet


def default_gateway(subnet: str) -> str:
    """The first host address of ``subnet``, which tether gives the bridge by default."""
    return str(_subnet(subnet).network_address + 1)


def validate_network_cidrs(
    subnet: str, gateway: str | None, ip_range: str | None
) -> tuple[str, str, str | None]:
    """Check and normalise a network's addressing; returns (subnet, gateway, ip_range).

    The gateway defaults to the first host address; ``ip_range`` (None: the whole subnet)
    must lie inside the subnet. Raises InvalidInput with one line saying how to fix it.
    """
    net = _subnet(subnet)
    if gateway is None or not gateway.strip():
        gw = net.network_address + 1
    else:
        gw = _parse_address("gateway", gateway)
        if gw not in net:
            raise InvalidInput(
                f"gateway {gw} is outside the subnet {net}: pick an address inside it, "
                f"such as {net.network_address + 1}"
            )
        if gw == net.network_address or gw == net.broadcast_address:
            which = "network" if gw == net.network_address else "broadcast"
            raise InvalidInput(
                f"gateway {gw} is the {which} address of {net}: pick a host address, "
                f"such as {net.network_address + 1}"
            )
    range_text: str | None = None
    if ip_range is not None and ip_range.strip():
        pool = _parse_cidr("ip range", ip_range)
        if not pool.subnet_of(net):
            raise InvalidInput(f"ip range {pool} is not inside the subnet {net}: pick a range within {net}")
        range_text = str(pool)
    return str(net), str(gw), range_text


MIN_PREFIX6, MAX_PREFIX6 = 48, 126  # a bridge's v6 subnet: at most a /48, room for anycast, gateway and hosts


def validate_ip_range6(ip_range6: str, subnet6: str) -> str:
    """A v6 ``--ip-range``: inside the v6 subnet; returned normalised."""
    pool = _parse_cidr("IPv6 ip range", ip_range6, 6)
    net = ipaddress.ip_network(subnet6)
    if not pool.subnet_of(net):  # type: ignore[arg-type]
        raise InvalidInput(f"IPv6 ip range {pool} is not inside the subnet {net}: pick a range within {net}")
    return str(pool)


def validate_network_cidrs6(subnet6: str, gateway6: str | None) -> tuple[str, str]:
    """Check and normalise a network's v6 addressing; returns (subnet6, gateway6). The
    gateway defaults to the first address after the Subnet-Router anycast one (``::1``)."""
    net = _parse_cidr("IPv6 subnet", subnet6, 6)
    if net.prefixlen < MIN_PREFIX6:
        raise InvalidInput(
            f"IPv6 subnet {net} is too large for one network: use a prefix length of {MIN_PREFIX6} to "
            f"{MAX_PREFIX6}, such as {next(net.subnets(new_prefix=64))}"
        )
    if net.prefixlen > MAX_PREFIX6:
        raise InvalidInput(
            f"IPv6 subnet {net} is too small: use a prefix length of {MAX_PREFIX6} or less, "
            f"as in {net.supernet(new_prefix=MAX_PREFIX6)}"
        )
    if gateway6 is None or not gateway6.strip():
        return str(net), str(net.network_address + 1)
    gw = _parse_address("IPv6 gateway", gateway6, 6)
    if gw not in net:
        raise InvalidInput(
            f"IPv6 gateway {gw} is outside the subnet {net}: pick an address inside it, such as {net.network_address + 1}"
        )
    if gw == net.network_address:
        raise InvalidInput(
            f"IPv6 gateway {gw} is the Subnet-Router anycast address of {net}: pick another, such as {net.network_address + 1}"
        )
    return str(net), str(gw)


def validate_aux_addresses(
    aux: dict[str, str], subnets: list[str], gateways: list[str], ip_range: str | None = None
) -> dict[str, str]:
    """Check ``--aux-address NAME=IP`` (Docker's): each IP inside one of the network's
    ``subnets``, not a network, broadcast or gateway address, each given once. Returns them
    normalised. ``ip_range`` is not checked: an aux address may sit inside it (IPAM skips it)."""
    out: dict[str, str] = {}
    nets = [ipaddress.ip_network(s) for s in subnets]
    for name, text in aux.items():
        if not name or "=" in name or any(c.isspace() for c in name):
            raise InvalidInput(f"--aux-address {name}={text}: give it as NAME=IP, with a NAME of its own")
        address = _parse_address(f"aux address {name}", text, None)
        net = next((n for n in nets if address in n), None)
        if net is None:
            raise InvalidInput(
                f"aux address {name}={address} is outside the network's subnet ({', '.join(subnets)}): pick an address inside it"
            )
        if address == net.network_address or (net.version == 4 and address == net.broadcast_address):
            raise InvalidInput(f"aux address {name}={address} is the network or broadcast address of {net}: pick a host address")
        if str(address) in gateways:
            raise InvalidInput(f"aux address {name}={address} is the network's gateway: pick another address")
        if str(address) in out.values():
            raise InvalidInput(f"aux address {address} is given twice: give each address once")
        out[name] = str(address)
    return out


def pick_free_address(subnet: str, taken: set[str], avoid: str | None = None) -> str | None:
    """The highest host address of ``subnet`` not in ``taken`` nor inside the range
    ``avoid`` (where IPAM hands addresses out), for an address tether keeps for itself
    (a macvlan network's host side); None if there is none."""
    net = ipaddress.ip_network(subnet)
    pool = ipaddress.ip_network(avoid) if avoid else None
    value = int(net.broadcast_address) - (1 if net.version == 4 else 0)
    for _ in range(len(taken) + 2):  # each step skips one taken address or the whole range
        if value <= int(net.network_address):
            return None
        if pool is not None and int(pool.network_address) <= value <= int(pool.broadcast_address):
            value = int(pool.network_address) - 1
            continue
        address = str(ipaddress.ip_address(value))
        if address not in taken:
            return address
        value -= 1
    return None


def _networks(cidrs: list[str], version: int = 4) -> list[tuple[IPv4Network | IPv6Network, int]]:
    """Parse in-use CIDRs of one family leniently (host addresses carry host bits); skip the
    other family, garbage and default routes, which overlap everything and say nothing."""
    parsed: list[tuple[IPv4Network | IPv6Network, int]] = []
    for index, text in enumerate(cidrs):
        try:
            network = ipaddress.ip_network(str(text).strip(), strict=False)
        except ValueError:
            continue
        if network.version == version and network.prefixlen > 0:
            parsed.append((network, index))
    return parsed


def find_overlap(subnet: str, in_use: dict[str, str]) -> str | None:
    """The owner of the first CIDR in ``in_use`` (cidr -> owner description) of the same
    family that overlaps ``subnet``, or None. Default routes are ignored."""
    try:
        candidate = ipaddress.ip_network(subnet.strip(), strict=False)
    except ValueError:
        raise InvalidInput(f"invalid subnet {subnet!r}: use an IPv4 CIDR such as 10.88.0.0/16") from None
    owners = list(in_use.values())
    for network, index in _networks(list(in_use), candidate.version):
        if candidate.overlaps(network):
            return owners[index]
    return None


def choose_subnet(in_use: list[str], pools: list[tuple[str, int]] = DEFAULT_POOLS) -> str:
    """The first subnet carved from ``pools`` that overlaps nothing in ``in_use`` (host
    routes and addresses, existing networks' subnets). Exhausted when every one does."""
    used = [network for network, _ in _networks(in_use)]
    for pool_text, size in pools:
        pool = ipaddress.ip_network(pool_text)
        for candidate in pool.subnets(new_prefix=size):
            if not any(candidate.overlaps(network) for network in used):
                return str(candidate)
    described = ", ".join(pool for pool, _ in pools)
    raise Exhausted(
        f"no free subnet left in the address pools ({described}): remove unused networks "
        "or create the network with an explicit --subnet"
    )


def choose_subnet6(in_use: list[str], tries: int = 64) -> str:
    """A random ULA /64 (fdXX:XXXX:XXXX::/64) overlapping nothing in ``in_use`` (host
    routes and addresses, existing networks' v6 subnets; v4 entries are ignored)."""
    used = [network for network, _ in _networks(in_use, 6)]
    for _ in range(tries):
        global_id = secrets.randbits(40)
        candidate = IPv6Network(((0xFD << 120) | (global_id << 80), 64))
        if not any(candidate.overlaps(network) for network in used):
            return str(candidate)
    raise Exhausted("no free IPv6 ULA subnet found: create the network with an explicit IPv6 --subnet")


class IPAM:
    """Leases IPv4 addresses of networks to owners (endpoint ids), over a Store.

    Safe to call from many threads and processes sharing the store.
    """

    def __init__(self, store: Store) -> None:
        self._store = store

    def allocate(self, network: Network, owner: str, requested: str | None = None, family: int = 4) -> str:
        """Lease an address of ``network`` (of its v6 subnet when ``family`` is 6) to
        ``owner``: ``requested`` when given (it may lie outside ``ip_range``, as with
        Docker's --ip), else the next free one after the cursor within ``ip_range`` (or
        the subnet). Returns the address.

        Raises InvalidInput (requested address malformed, of the other family or outside
        the subnet; a v6 address on a v4-only network), Conflict (requested address is the
        gateway or leased), Exhausted (nothing free)."""
        if family == 6 and network.subnet6 is None:
            raise InvalidInput(
                f"network {network.name} has no IPv6 subnet: create it with --ipv6 to give containers IPv6 addresses"
            )
        subnet_text, gateway_text = (network.subnet, network.gateway) if family == 4 else (network.subnet6, network.gateway6)
        subnet = _parse_cidr("subnet", subnet_text or "", family)
        gateway = _parse_address("gateway", gateway_text, family) if gateway_text else None
        if requested:  # None or "" both mean "let tether choose"
            return self._allocate_requested(network, subnet, gateway, owner, requested, family)
        pool = subnet
        if family == 4 and network.ip_range:
            pool = _parse_cidr("ip range", network.ip_range)
        elif family == 6 and network.ip_range6:
            pool = _parse_cidr("IPv6 ip range", network.ip_range6, 6)
        first, last = int(pool.network_address), int(pool.broadcast_address)
        reserved = {int(subnet.network_address)}
        if family == 4:
            reserved.add(int(subnet.broadcast_address))
        if gateway is not None:
            reserved.add(int(gateway))
        reserved |= {int(ipaddress.ip_address(a)) for a in network.reserved_addresses if (":" in a) == (family == 6)}
        prefix = f"{_LEASES}{network.id}/"
        keys = [kv.key[len(prefix) :] for kv in self._store.list(prefix)]
        leased = {_as_int(a) for a in keys if ":" not in a} if family == 4 else {int(IPv6Address(a)) for a in keys if ":" in a}
        start = self._start(network.id, family, first, last)
        size = last - first + 1
        make = IPv4Address if family == 4 else IPv6Address
        for offset in range(size):
            if offset > len(leased) + len(reserved):
                break  # more candidates seen than are taken: every one left is taken too (v6: no 2**64 scan)
            candidate = first + (start - first + offset) % size
            if candidate in reserved or candidate in leased:
                continue
            address = str(make(candidate))
            if self._store.compare_and_swap(lease_key(network.id, address), 0, {"owner": owner}):
                try:
                    self._store.put(cursor_key(network.id, family), {"last": address})
                except TetherError:
                    # the cursor is a hint; the lease must not outlive a raise nobody can undo
                    self._store.delete(lease_key(network.id, address))
                    raise
                return address
            leased.add(candidate)  # lost a race for it to another allocator: try the next one
        where = f"range {pool} of subnet {subnet}" if pool != subnet else f"subnet {subnet}"
        raise Exhausted(
            f"no free address left in network {network.name} ({where}): remove unused "
            "containers from it or create a network with a larger subnet"
        )

    def _start(self, network_id: str, family: int, first: int, last: int) -> int:
        """Where the search starts: just after the last address handed out (the cursor)."""
        cursor = self._store.get(cursor_key(network_id, family))
        if cursor is None:
            return first
        try:
            last_given = int(ipaddress.ip_address(cursor.value.get("last", "")))
        except ValueError:
            return first
        if first <= last_given <= last:
            return last_given + 1 if last_given < last else first
        return first

    def _allocate_requested(
        self,
        network: Network,
        subnet: IPv4Network | IPv6Network,
        gateway: IPv4Address | IPv6Address | None,
        owner: str,
        requested: str,
        family: int = 4,
    ) -> str:
        address = _parse_address("address", requested, family)
        if address not in subnet:
            raise InvalidInput(
                f"address {address} is outside the subnet {subnet} of network "
                f"{network.name}: pick an address inside {subnet}"
            )
        if address == subnet.network_address or (family == 4 and address == subnet.broadcast_address):
            which = "network" if address == subnet.network_address else "broadcast"
            raise InvalidInput(f"address {address} is the {which} address of {subnet}: pick a host address")
        if address == gateway:
            raise Conflict(
                f"address {address} is the gateway of network {network.name}: pick another address"
            )
        held = network.reserved_addresses.get(str(address))
        if held is not None:
            raise Conflict(f"address {address} is reserved in network {network.name} ({held}): pick another address")
        key = lease_key(network.id, str(address))
        while True:
            if self._store.compare_and_swap(key, 0, {"owner": owner}):
                return str(address)
            holder = self._store.get(key)
            if holder is not None:
                raise Conflict(
                    f"address {address} in network {network.name} is already in use by "
                    f"{holder.value.get('owner', 'an unknown owner')}: pick another address "
                    "or let tether choose one"
                )
            # Released between our attempt and our look: try again.

    def release(self, network_id: str, address: str, owner: str | None = None) -> None:
        """Give a lease back (only if ``owner`` still holds it, when given). Releasing an
        address that is not leased is not an error."""
        key = lease_key(network_id, str(_parse_address("address", address, None)))
        if owner is None:
            self._store.delete(key)
            return
        kv = self._store.get(key)
        if kv is not None and kv.value.get("owner") == owner:
            self._store.compare_and_swap(key, kv.mod_revision, None)

    def release_owner(self, owner: str) -> list[tuple[str, str]]:
        """Release every lease of ``owner`` in every network; returns the (network id,
        address) pairs released. A lease re-taken meanwhile by someone else is kept."""
        released: list[tuple[str, str]] = []
        for kv in self._store.list(_LEASES):
            if kv.value.get("owner") != owner:
                continue
            network_id, _, address = kv.key[len(_LEASES) :].rpartition("/")
            if self._store.compare_and_swap(kv.key, kv.mod_revision, None):
                released.append((network_id, address))
        return released

    def transfer(self, network_id: str, address: str, from_owner: str, to_owner: str) -> bool:
        """Hand a lease held by ``from_owner`` to ``to_owner`` in one compare-and-swap;
        False (and nothing changed) when someone else holds it or it is free."""
        key = lease_key(network_id, str(_parse_address("address", address, None)))
        kv = self._store.get(key)
        if kv is None or kv.value.get("owner") != from_owner:
            return False
        return self._store.compare_and_swap(key, kv.mod_revision, {"owner": to_owner})

    def owner(self, network_id: str, address: str) -> str | None:
        kv = self._store.get(lease_key(network_id, str(_parse_address("address", address, None))))
        return None if kv is None else str(kv.value.get("owner", ""))

    def leases(self, network_id: str) -> dict[str, str]:
        """address -> owner for every lease of the network, in address order."""
        prefix = f"{_LEASES}{network_id}/"
        found = {kv.key[len(prefix) :]: str(kv.value.get("owner", "")) for kv in self._store.list(prefix)}
        return dict(sorted(found.items(), key=lambda item: _sort_key(item[0])))

    def drop_network(self, network_id: str) -> None:
        """Forget every lease and the cursor of a network (when the network is removed)."""
        for kv in self._store.list(f"{_LEASES}{network_id}/"):
            self._store.delete(kv.key)
        self._store.delete(cursor_key(network_id))
        self._store.delete(cursor_key(network_id, 6))
