"""The macvlan network driver: each container a machine of its own on the host's LAN.

A container's interface is a macvlan child of the network's parent link (``-o parent``),
made directly inside its namespace: its own MAC, an address of the LAN's subnet, the
LAN's router as its gateway; no bridge, no NAT, no published ports, no firewall rules
(its traffic never crosses the host's IP stack). Options are spelled as Docker's.

Two things Docker leaves to the user are done here:

* A network without a parent (or ``--internal``) needs a parent that leads nowhere.
  Docker makes a dummy link; this kernel may have none, so the parent is a veth pair of
  tether's own, both ends up and attached to nothing ("stub"): children in bridge mode
  reach each other through it and nothing else.
* The host cannot reach its own macvlan children (the kernel keeps a parent and its
  children apart). ``-o host_access=true`` adds a host-side macvlan ("shim") on the same
  parent in bridge mode, with an address of the network kept for it (``-o host_address``,
  else the highest free one outside ``--ip-range``) as a /32 (and /128), and one host
  route per container address through the shim. Host routes, not a subnet route: the
  host may already route the LAN's subnet through the parent, and a /32 wins over any
  route the LAN has, and passes strict reverse-path filtering both ways. The shim is
  restored by ``restore`` and its routes are rebuilt from the endpoint records.
"""

from __future__ import annotations

import ipaddress
import time

from ..errors import Conflict, InvalidInput
from ..ipam import pick_free_address
from ..model import Container, Endpoint, Network, mac_for
from ..storekeys import EP_PREFIX, NET_PREFIX
from ..validate import parse_bool_option, parse_mtu
from .base import DriverContext, NetworkDriver, NetworkSpec, Undo, collect
from .bridge import _check_known

__all__ = ["MacvlanDriver", "MODES"]

MODES = ("bridge", "private", "vepa", "passthru")


class MacvlanDriver(NetworkDriver):
    name = "macvlan"
    options = ("parent", "macvlan_mode", "host_access", "host_address", "host_address6", "mtu")
    lan = True
    publishes_ports = False
    host_link = False

    # ---------------------------------------------------------------- networks
    def validate(self, ctx: DriverContext, options: dict[str, str], internal: bool) -> dict[str, str]:
        _check_known(self, options)
        out = dict(options)
        mode = out.setdefault("macvlan_mode", "bridge")
        if mode not in MODES:
            raise InvalidInput(f"unknown -o macvlan_mode={mode!r}: use one of {', '.join(MODES)}")
        if "mtu" in out:
            parse_mtu(out["mtu"])
        access = out["host_access"] = parse_bool_option("host_access", out.get("host_access", "false"))
        if access == "false" and ("host_address" in out or "host_address6" in out):
            raise InvalidInput("-o host_address needs -o host_access=true: add it, or drop host_address")
        if access == "true" and mode != "bridge":
            raise InvalidInput(
                f"-o host_access=true needs macvlan_mode=bridge: in {mode} mode the host's side cannot "
                "talk to the containers"
            )
        parent = out.get("parent")
        if parent is not None:
            if internal:
                raise InvalidInput(
                    "--internal and -o parent contradict each other: an internal macvlan network has no "
                    "parent (its containers reach only each other); drop one of them"
                )
            candidates = ctx.datapath.parent_candidates()
            if parent not in candidates:
                # missing, or not one a macvlan may sit on: lo, a macvlan, a bridge's port,
                # one of tether's own links
                why = "no such interface on this host" if not ctx.datapath.link_exists(parent) else (
                    "it cannot carry macvlans (loopback, a macvlan, a bridge or bond port, or tether's own)"
                )
                raise InvalidInput(f"-o parent={parent!r}: {why}: use one of {', '.join(candidates) or 'none'}")
        elif mode == "passthru":
            raise InvalidInput("macvlan_mode=passthru needs -o parent: it hands one container the whole interface")
        return out

    def shares_space(self, options: dict[str, str], other: Network) -> bool:
        # a LAN's subnet may appear again on another parent (another LAN); on the same
        # parent, or against any other kind of network, it may not
        if other.driver != self.name:
            return True
        parent = options.get("parent")
        return parent is not None and other.options.get("parent") == parent

    def create_network(self, ctx: DriverContext, spec: NetworkSpec, others: list[Network], undo: Undo) -> Network:
        options = dict(spec.options)
        _check_parent_free(spec.name, options, others)
        mtu = self._mtu(ctx, options)
        if options["host_access"] == "true":
            options.update(self._host_addresses(spec))
        network = Network(
            id=spec.id,
            name=spec.name,
            driver=self.name,
            subnet=spec.subnet,
            gateway=spec.gateway,
            bridge=options.get("parent") or stub_name(spec.id),
            ip_range=spec.ip_range,
            mtu=mtu,
            internal=spec.internal,
            options=options,
            created=time.time(),
            labels=dict(spec.labels),
            subnet6=spec.subnet6,
            gateway6=spec.gateway6,
            aux_addresses=dict(spec.aux_addresses),
            ip_range6=spec.ip_range6,
        )
        ctx.store.put(NET_PREFIX + network.name, network.to_dict())
        undo.push(f"record of network {network.name}", lambda: ctx.store.delete(NET_PREFIX + network.name))
        if "parent" not in options:
            undo.push(f"stub {network.bridge}", lambda: ctx.datapath.delete_lan_stub(network.bridge))
        if options["host_access"] == "true":
            undo.push(f"shim {shim_name(network.id)}", lambda: ctx.datapath.delete_macvlan(shim_name(network.id)))
        self.restore(ctx, network)
        return network

    def _mtu(self, ctx: DriverContext, options: dict[str, str]) -> int:
        """``-o mtu``, at most the parent's; by default the parent's (a stub's: 1500)."""
        wanted = parse_mtu(options["mtu"]) if "mtu" in options else None
        if "parent" not in options:
            return wanted or 1500
        state = ctx.datapath.link_state(options["parent"])
        most = int(state.get("mtu") or 1500) if state else 1500
        if wanted is not None and wanted > most:
            raise InvalidInput(
                f"-o mtu={wanted} is more than parent {options['parent']} carries ({most}): use {most} or less"
            )
        return wanted or most

    def _host_addresses(self, spec: NetworkSpec) -> dict[str, str]:
        """The host side's address per family: ``host_address``(6) checked, or picked."""
        out: dict[str, str] = {}
        taken = {spec.gateway, *(spec.gateway6 and [spec.gateway6] or []), *spec.aux_addresses.values()}
        for key, subnet in (("host_address", spec.subnet), ("host_address6", spec.subnet6)):
            if subnet is None:
                if key in spec.options:
                    raise InvalidInput(f"-o {key}: network {spec.name!r} has no IPv6 subnet (add --ipv6)")
                continue
            given = spec.options.get(key)
            if given is None:
                picked = pick_free_address(subnet, taken, spec.ip_range if key == "host_address" else spec.ip_range6)
                if picked is None:
                    raise InvalidInput(f"no address of {subnet} is left for the host's side: give -o {key}=IP")
                out[key] = picked
                continue
            out[key] = _check_host_address(key, given, subnet, spec.ip_range if key == "host_address" else spec.ip_range6, taken)
        return out

    def restore(self, ctx: DriverContext, network: Network) -> None:
        if "parent" not in network.options:
            ctx.datapath.ensure_lan_stub(name=network.bridge, mark=ctx.mark)
        elif not ctx.datapath.link_exists(network.bridge):
            raise Conflict(
                f"parent interface {network.bridge} of macvlan network {network.name} is gone: bring it back, "
                "or remove the network"
            )
        if network.options.get("host_access") != "true":
            return
        shim = shim_name(network.id)
        ctx.datapath.ensure_macvlan_shim(
            ifname=shim,
            parent=network.bridge,
            mode="bridge",
            address=network.options.get("host_address"),
            address6=network.options.get("host_address6"),
            mark=ctx.mark,
            mac=_shim_mac(network),
        )
        wanted = {address for ep in _endpoints_on(ctx, network) for address in ep.addresses}
        for address in set(ctx.datapath.host_routes(shim)) - wanted:  # a kill between a route and its record
            ctx.datapath.remove_host_route(shim, address)
        for address in sorted(wanted):
            ctx.datapath.add_host_route(shim, address)

    def delete_network(self, ctx: DriverContext, network: Network) -> list[str]:
        errors: list[str] = []
        if network.options.get("host_access") == "true":
            shim = shim_name(network.id)
            errors += [f"shim {shim}: {e}" for e in collect(lambda: ctx.datapath.delete_macvlan(shim))]
        if "parent" not in network.options:
            errors += [f"stub {network.bridge}: {e}" for e in collect(lambda: ctx.datapath.delete_lan_stub(network.bridge))]
        ctx.ipam.drop_network(network.id)
        ctx.store.delete(NET_PREFIX + network.name)
        return errors

    def built_here(self, ctx: DriverContext, network: Network) -> bool:
        return False  # no firewall rules: its traffic never crosses the host's IP stack

    def describe(self, ctx: DriverContext, network: Network, attached: dict[str, object]) -> dict[str, object]:
        out = super().describe(ctx, network, attached)
        out["parent"] = network.options.get("parent")
        out["macvlan_mode"] = network.options.get("macvlan_mode", "bridge")
        if network.options.get("host_access") == "true":
            out["host_interface"] = shim_name(network.id)
        return out

    def owned_links(self, network: Network) -> set[str]:
        owned = set()
        if "parent" not in network.options:
            owned |= {network.bridge, network.bridge + "p"}
        if network.options.get("host_access") == "true":
            owned.add(shim_name(network.id))
        return owned

    # ---------------------------------------------------------------- endpoints
    def attach_endpoint(
        self,
        ctx: DriverContext,
        network: Network,
        container: Container,
        endpoint: Endpoint,
        undo: Undo,
        keep_existing_default: bool = False,
    ) -> bool:
        assert container.netns is not None
        self._check_passthru(ctx, network, endpoint)
        # without a parent there is no way out: no default route
        routed = endpoint.default_route and "parent" in network.options
        installed = ctx.datapath.attach_macvlan(
            netns=container.netns,
            ifname=endpoint.ifname,
            parent=network.bridge,
            mode=network.options.get("macvlan_mode", "bridge"),
            mac=endpoint.mac,
            cidr=endpoint.cidr,
            gateway=endpoint.gateway if routed else None,
            mtu=network.mtu,
            keep_existing_default=keep_existing_default,
            cidr6=endpoint.cidr6,
            gateway6=endpoint.gateway6 if routed else None,
        )
        netns = container.netns
        undo.push(f"macvlan {endpoint.ifname} in {netns}", lambda: ctx.datapath.detach_in_netns(netns, endpoint.ifname))
        self._route_from_host(ctx, network, endpoint, undo)
        return installed

    def _route_from_host(self, ctx: DriverContext, network: Network, endpoint: Endpoint, undo: Undo) -> None:
        if network.options.get("host_access") != "true":
            return
        shim = shim_name(network.id)
        for address in endpoint.addresses:
            ctx.datapath.add_host_route(shim, address)
            undo.push(f"host route {address}", lambda a=address: ctx.datapath.remove_host_route(shim, a))  # type: ignore[misc]

    def _check_passthru(self, ctx: DriverContext, network: Network, endpoint: Endpoint) -> None:
        """passthru hands the parent to one container: a second is refused before the kernel."""
        if network.options.get("macvlan_mode") != "passthru":
            return
        others = [ep for ep in _endpoints_on(ctx, network) if ep.container_id != endpoint.container_id]
        if others:
            raise Conflict(
                f"network {network.name!r} is in passthru mode: parent {network.bridge} takes one container and "
                f"it is in use (endpoint {others[0].address}); disconnect it first or use macvlan_mode=bridge"
            )

    def plug_endpoint(
        self, ctx: DriverContext, network: Network, container: Container, endpoint: Endpoint, peer: str, undo: Undo
    ) -> None:
        self._check_passthru(ctx, network, endpoint)
        ctx.datapath.create_macvlan(
            ifname=peer,
            parent=network.bridge,
            mode=network.options.get("macvlan_mode", "bridge"),
            mac=endpoint.mac,
            mtu=network.mtu,
            mark=ctx.mark,
        )
        undo.push(f"macvlan {peer}", lambda: ctx.datapath.delete_macvlan(peer))
        self._route_from_host(ctx, network, endpoint, undo)

    def detach_endpoint(
        self,
        ctx: DriverContext,
        network: Network,
        endpoint: Endpoint,
        kernel_gone: bool = False,
        netns: str | None = None,
    ) -> list[str]:
        errors: list[str] = []
        if network.options.get("host_access") == "true":
            shim = shim_name(network.id)
            for address in endpoint.addresses:
                errors += collect(lambda a=address: ctx.datapath.remove_host_route(shim, a))  # type: ignore[misc]
        if kernel_gone:
            return errors
        if netns:
            errors += collect(lambda: ctx.datapath.detach_in_netns(netns, endpoint.ifname))
        elif endpoint.ifname in {name for name, _ in ctx.datapath.links_with_mark(ctx.mark)}:
            # a runtime's endpoint never moved into its sandbox: still ours, on the host
            errors += collect(lambda: ctx.datapath.delete_macvlan(endpoint.ifname))
        return [f"macvlan {endpoint.ifname}: {e}" for e in errors]

    def endpoint_present(self, ctx: DriverContext, network: Network, endpoint: Endpoint) -> bool:
        # The child lives in the container's namespace (reconcile looks there). Its one
        # host-side piece, the shim's route, is put back by ``restore``: never a reason to
        # rebuild a working interface (nor to cut it off when the shim cannot be rebuilt).
        return True


def shim_name(network_id: str) -> str:
    return f"tmh{network_id[:10]}"


def stub_name(network_id: str) -> str:
    return f"tms{network_id[:10]}"  # its peer is this + "p"


def _shim_mac(network: Network) -> str:
    """The shim's MAC, the same at every restore (containers cache it): from its v4 address
    as a container's is, else from the network's id (locally administered, unicast)."""
    if network.options.get("host_address"):
        return mac_for(network.options["host_address"])
    return "02:43:" + ":".join(network.id[i : i + 2] for i in range(0, 8, 2))


def _endpoints_on(ctx: DriverContext, network: Network) -> list[Endpoint]:
    return [
        ep for ep in (Endpoint.from_dict(kv.value) for kv in ctx.store.list(EP_PREFIX)) if ep.network_id == network.id
    ]


def _check_parent_free(name: str, options: dict[str, str], others: list[Network]) -> None:
    """passthru takes a parent whole: not beside another macvlan network on it, either way."""
    parent = options.get("parent")
    for other in others:
        if other.driver != "macvlan" or parent is None or other.options.get("parent") != parent:
            continue
        if "passthru" in (options["macvlan_mode"], other.options.get("macvlan_mode")):
            raise Conflict(
                f"parent {parent} already carries macvlan network {other.name!r} and passthru takes the whole "
                f"interface: use another parent for {name!r}, or remove {other.name!r}"
            )


def _check_host_address(key: str, given: str, subnet: str, ip_range: str | None, taken: set[str]) -> str:
    try:
        address = ipaddress.ip_address(given.strip())
    except ValueError:
        raise InvalidInput(f"invalid -o {key}={given!r}: use a plain address of the network's subnet") from None
    net = ipaddress.ip_network(subnet)
    if address.version != net.version or address not in net:
        raise InvalidInput(f"-o {key}={address} is outside the subnet {subnet}: pick an address inside it")
    if address == net.network_address or (net.version == 4 and address == net.broadcast_address):
        raise InvalidInput(f"-o {key}={address} is the network or broadcast address of {subnet}: pick a host address")
    if ip_range is not None and address in ipaddress.ip_network(ip_range):
        raise InvalidInput(
            f"-o {key}={address} is inside --ip-range {ip_range}, where containers get their addresses: "
            "pick an address outside it"
        )
    if str(address) in taken:
        raise InvalidInput(f"-o {key}={address} is the gateway or an aux address: pick another address")
    return str(address)
