"""IPv4 address management: which address an endpoint gets, and which subnet a new
network gets. Pure policy over a Store; no kernel access.

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
"""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv4Network
from socket import inet_aton

from .errors import Conflict, Exhausted, InvalidInput, TetherError
from .model import Network
from .store.base import Store

__all__ = [
    "DEFAULT_POOLS",
    "IPAM",
    "choose_subnet",
    "cursor_key",
    "default_gateway",
    "find_overlap",
    "lease_key",
    "validate_network_cidrs",
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


def lease_key(network_id: str, address: str) -> str:
    return f"{_LEASES}{network_id}/{address}"


def cursor_key(network_id: str) -> str:
    return f"{_CURSORS}{network_id}"


def _is_ipv4(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), IPv4Address)
    except ValueError:
        return False


def _parse_cidr(what: str, text: str) -> IPv4Network:
    """A strict IPv4 CIDR, or InvalidInput saying how to write it."""
    text = (text or "").strip()
    if "/" not in text and _is_ipv4(text):
        raise InvalidInput(f"{what} {text!r} needs a prefix length, as in {text}/24")
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise InvalidInput(f"invalid {what} {text!r}: use an IPv4 CIDR such as 10.88.0.0/16") from None
    if not isinstance(loose, IPv4Network):
        raise InvalidInput(f"{what} {text} is IPv6: only IPv4 subnets are supported")
    if loose.network_address != ipaddress.ip_address(text.split("/", 1)[0]):
        raise InvalidInput(f"{what} {text} has host bits set: did you mean {loose}?")
    return loose


def _parse_address(what: str, text: str) -> IPv4Address:
    text = (text or "").strip()
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidInput(
            f"invalid {what} {text!r}: use a plain IPv4 address such as 10.88.0.1 (no prefix)"
        ) from None
    if not isinstance(address, IPv4Address):
        raise InvalidInput(f"{what} {text} is IPv6: only IPv4 addresses are supported")
    return address


def _subnet(text: str) -> IPv4Network:
    """A subnet tether can serve: strict IPv4 CIDR with room for a gateway and a host."""
    subnet = _parse_cidr("subnet", text)
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


def _ipv4_networks(cidrs: list[str]) -> list[tuple[IPv4Network, int]]:
    """Parse in-use CIDRs leniently (host addresses carry host bits); skip IPv6, garbage
    and default routes, which overlap everything and say nothing about a subnet."""
    parsed: list[tuple[IPv4Network, int]] = []
    for index, text in enumerate(cidrs):
        try:
            network = ipaddress.ip_network(str(text).strip(), strict=False)
        except ValueError:
            continue
        if isinstance(network, IPv4Network) and network.prefixlen > 0:
            parsed.append((network, index))
    return parsed


def find_overlap(subnet: str, in_use: dict[str, str]) -> str | None:
    """The owner of the first CIDR in ``in_use`` (cidr -> owner description) that
    overlaps ``subnet``, or None. Default routes and IPv6 entries are ignored."""
    try:
        candidate = ipaddress.ip_network(subnet.strip(), strict=False)
    except ValueError:
        raise InvalidInput(f"invalid subnet {subnet!r}: use an IPv4 CIDR such as 10.88.0.0/16") from None
    owners = list(in_use.values())
    for network, index in _ipv4_networks(list(in_use)):
        if candidate.overlaps(network):
            return owners[index]
    return None


def choose_subnet(in_use: list[str], pools: list[tuple[str, int]] = DEFAULT_POOLS) -> str:
    """The first subnet carved from ``pools`` that overlaps nothing in ``in_use`` (host
    routes and addresses, existing networks' subnets). Exhausted when every one does."""
    used = [network for network, _ in _ipv4_networks(in_use)]
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


class IPAM:
    """Leases IPv4 addresses of networks to owners (endpoint ids), over a Store.

    Safe to call from many threads and processes sharing the store.
    """

    def __init__(self, store: Store) -> None:
        self._store = store

    def allocate(self, network: Network, owner: str, requested: str | None = None) -> str:
        """Lease an address of ``network`` to ``owner``: ``requested`` when given (it may
        lie outside ``ip_range``, as with Docker's --ip), else the next free one after the
        cursor within ``ip_range`` (or the subnet). Returns the address.

        Raises InvalidInput (requested address malformed or outside the subnet), Conflict
        (requested address is the gateway or leased), Exhausted (nothing free)."""
        subnet = _parse_cidr("subnet", network.subnet)
        gateway = _parse_address("gateway", network.gateway) if network.gateway else None
        if requested:  # None or "" both mean "let tether choose"
            return self._allocate_requested(network, subnet, gateway, owner, requested)

        pool = _parse_cidr("ip range", network.ip_range) if network.ip_range else subnet
        first, last = int(pool.network_address), int(pool.broadcast_address)
        reserved = {int(subnet.network_address), int(subnet.broadcast_address)}
        if gateway is not None:
            reserved.add(int(gateway))
        prefix = f"{_LEASES}{network.id}/"
        leased = {_as_int(kv.key[len(prefix) :]) for kv in self._store.list(prefix)}

        cursor = self._store.get(cursor_key(network.id))
        start = first
        if cursor is not None:
            try:
                last_given = int(ipaddress.ip_address(cursor.value.get("last", "")))
            except ValueError:
                last_given = -1
            if first <= last_given <= last:
                start = last_given + 1 if last_given < last else first

        size = last - first + 1
        for offset in range(size):
            candidate = first + (start - first + offset) % size
            if candidate in reserved or candidate in leased:
                continue
            address = str(IPv4Address(candidate))
            if self._store.compare_and_swap(lease_key(network.id, address), 0, {"owner": owner}):
                try:
                    self._store.put(cursor_key(network.id), {"last": address})
                except TetherError:
                    # the cursor is a hint; the lease must not outlive a raise nobody can undo
                    self._store.delete(lease_key(network.id, address))
                    raise
                return address
            # Lost a race for this address to another allocator: try the next one.
        where = f"range {pool} of subnet {subnet}" if network.ip_range else f"subnet {subnet}"
        raise Exhausted(
            f"no free address left in network {network.name} ({where}): remove unused "
            "containers from it or create a network with a larger subnet"
        )

    def _allocate_requested(
        self,
        network: Network,
        subnet: IPv4Network,
        gateway: IPv4Address | None,
        owner: str,
        requested: str,
    ) -> str:
        address = _parse_address("address", requested)
        if address not in subnet:
            raise InvalidInput(
                f"address {address} is outside the subnet {subnet} of network "
                f"{network.name}: pick an address inside {subnet}"
            )
        if address in (subnet.network_address, subnet.broadcast_address):
            which = "network" if address == subnet.network_address else "broadcast"
            raise InvalidInput(f"address {address} is the {which} address of {subnet}: pick a host address")
        if address == gateway:
            raise Conflict(
                f"address {address} is the gateway of network {network.name}: pick another address"
            )
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
        key = lease_key(network_id, str(_parse_address("address", address)))
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
        key = lease_key(network_id, str(_parse_address("address", address)))
        kv = self._store.get(key)
        if kv is None or kv.value.get("owner") != from_owner:
            return False
        return self._store.compare_and_swap(key, kv.mod_revision, {"owner": to_owner})

    def owner(self, network_id: str, address: str) -> str | None:
        kv = self._store.get(lease_key(network_id, str(_parse_address("address", address))))
        return None if kv is None else str(kv.value.get("owner", ""))

    def leases(self, network_id: str) -> dict[str, str]:
        """address -> owner for every lease of the network, in address order."""
        prefix = f"{_LEASES}{network_id}/"
        found = {kv.key[len(prefix) :]: str(kv.value.get("owner", "")) for kv in self._store.list(prefix)}
        return dict(sorted(found.items(), key=lambda item: _as_int(item[0])))

    def drop_network(self, network_id: str) -> None:
        """Forget every lease and the cursor of a network (when the network is removed)."""
        for kv in self._store.list(f"{_LEASES}{network_id}/"):
            self._store.delete(kv.key)
        self._store.delete(cursor_key(network_id))
