"""The controller: the one orchestrator of tether. Only it combines store, IPAM and drivers.

Every operation has the same shape: validate all input against the store (names, modes,
networks, addresses) before touching the kernel; then act step by step, pushing each
step's inverse on an ``Undo``; on any failure unwind and re-raise. Records are written
*before* the kernel change they describe (a container starts in state ``creating``), so
a daemon killed at any instant leaves a record that ``reconcile`` finishes or removes:
nothing the kernel holds is ever unknown to the store. Mutations run under one lock (they
take milliseconds); waiting on processes (start, stop) happens outside it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from . import runtime
from .datapath import Datapath
from .drivers import (
    NETWORK_DRIVERS,
    DriverContext,
    HostNamespace,
    NetworkDriver,
    OwnNamespace,
    SandboxMode,
    SharedNamespace,
    Undo,
)
from .errors import Conflict, InvalidInput, NotFound, TetherError
from .ipam import IPAM, choose_subnet, find_overlap, validate_network_cidrs
from .model import (
    DEFAULT_BRIDGE,
    DEFAULT_NETWORK,
    Container,
    Endpoint,
    Network,
    bridge_name_for,
    host_ifname_for,
    mac_for,
    parse_net_mode,
    validate_name,
)
from .store import Store

__all__ = ["Controller", "NETWORK_OPTIONS"]

log = logging.getLogger("tether.controller")

NET_PREFIX = "/networks/"
CTR_PREFIX = "/containers/"
EP_PREFIX = "/endpoints/"
NETWORK_OPTIONS = ("bridge_name", "mtu")
_RESERVED_NETWORK_NAMES = ("none", "host", "container", "default")

T = TypeVar("T")


def _ep_key(container_id: str, network_id: str) -> str:
    return f"{EP_PREFIX}{container_id}/{network_id}"


def _valid_ifname(name: str) -> bool:
    return 0 < len(name) <= 15 and all(c not in name for c in "/: \t\n") and name not in (".", "..")


class Controller:
    def __init__(
        self,
        store: Store,
        datapath: Datapath,
        state_dir: str,
        netns_prefix: str = "",
        socket_path: str | None = None,
    ) -> None:
        self.store = store
        self.ipam = IPAM(store)
        self.ctx = DriverContext(datapath=datapath, mark=f"tether:{netns_prefix}", netns_prefix=netns_prefix)
        self.state_dir = state_dir
        self.socket_path = socket_path
        self.lock = threading.RLock()
        os.makedirs(os.path.join(state_dir, "containers"), exist_ok=True)

    # ------------------------------------------------------------------ lookups
    def _network(self, name: str) -> Network:
        kv = self.store.get(NET_PREFIX + name)
        if kv is None:
            raise NotFound(
                f"network {name!r} not found: create it with `tether network create {name}` "
                "or list networks with `tether network ls`"
            )
        return Network.from_dict(kv.value)

    def _container(self, name: str) -> Container:
        kv = self.store.get(CTR_PREFIX + name)
        if kv is None:
            raise NotFound(f"container {name!r} not found: list containers with `tether ps -a`")
        return Container.from_dict(kv.value)

    def _networks(self) -> list[Network]:
        return [Network.from_dict(kv.value) for kv in self.store.list(NET_PREFIX)]

    def _containers(self) -> list[Container]:
        return [Container.from_dict(kv.value) for kv in self.store.list(CTR_PREFIX)]

    def _endpoints(self, container_id: str | None = None) -> list[Endpoint]:
        prefix = EP_PREFIX + (f"{container_id}/" if container_id else "")
        return [Endpoint.from_dict(kv.value) for kv in self.store.list(prefix)]

    def _driver(self, network: Network) -> NetworkDriver:
        return NETWORK_DRIVERS[network.driver]

    def _sandbox(self, container: Container) -> SandboxMode:
        mode = container.mode
        if mode.kind == "host":
            return HostNamespace()
        if mode.kind == "container":
            return SharedNamespace(container.netns)
        return OwnNamespace()

    def _save(self, container: Container) -> Container:
        self.store.put(CTR_PREFIX + container.name, container.to_dict())
        return container

    def container_dir(self, container: Container) -> str:
        return os.path.join(self.state_dir, "containers", container.id)

    # ------------------------------------------------------------------ networks
    def create_network(
        self,
        name: str,
        driver: str = "bridge",
        subnet: str | None = None,
        gateway: str | None = None,
        ip_range: str | None = None,
        options: dict[str, str] | None = None,
        internal: bool = False,
    ) -> Network:
        validate_name("network", name)
        if name in _RESERVED_NETWORK_NAMES or name == DEFAULT_NETWORK:
            raise Conflict(f"network name {name!r} is reserved: choose another name")
        return self._create_network(name, driver, subnet, gateway, ip_range, options or {}, internal)

    def _create_network(
        self,
        name: str,
        driver: str,
        subnet: str | None,
        gateway: str | None,
        ip_range: str | None,
        options: dict[str, str],
        internal: bool,
        bridge: str | None = None,
    ) -> Network:
        if driver not in NETWORK_DRIVERS:
            raise InvalidInput(f"unknown network driver {driver!r}: use one of {', '.join(sorted(NETWORK_DRIVERS))}")
        unknown = sorted(set(options) - set(NETWORK_OPTIONS))
        if unknown:
            raise InvalidInput(
                f"unknown network option {unknown[0]!r}: known options are {', '.join(NETWORK_OPTIONS)}"
            )
        mtu = 1500
        if "mtu" in options:
            try:
                mtu = int(options["mtu"])
            except ValueError:
                mtu = -1
            if not 68 <= mtu <= 65535:
                raise InvalidInput(f"invalid mtu {options['mtu']!r}: use a whole number from 68 to 65535")
        if subnet is None and (gateway or ip_range):
            raise InvalidInput("--gateway and --ip-range need --subnet: give the subnet they belong to")
        with self.lock:
            if self.store.get(NET_PREFIX + name) is not None:
                raise Conflict(f"network {name!r} already exists: choose another name or remove it first")
            networks = self._networks()
            net_id = uuid.uuid4().hex
            bridge = options.get("bridge_name") or bridge or bridge_name_for(net_id)
            if not _valid_ifname(bridge):
                raise InvalidInput(f"invalid bridge_name {bridge!r}: use at most 15 characters, no '/', ':' or spaces")
            for other in networks:
                if other.bridge == bridge:
                    raise Conflict(f"bridge {bridge!r} is already used by network {other.name!r}: choose another bridge_name")
            if self.ctx.datapath.link_exists(bridge):
                raise Conflict(f"a device named {bridge!r} already exists on the host: choose another bridge_name")
            in_use = {n.subnet: f"network {n.name!r}" for n in networks}
            if subnet is not None:
                subnet, gateway, ip_range = validate_network_cidrs(subnet, gateway, ip_range)
                owner = find_overlap(subnet, in_use)
                if owner is None:
                    host = {c: "a route or address on the host" for c in self.ctx.datapath.host_networks()}
                    owner = find_overlap(subnet, host)
                if owner is not None:
                    raise Conflict(f"subnet {subnet} overlaps {owner}: choose a subnet that does not overlap")
            else:
                subnet = choose_subnet(list(in_use) + self.ctx.datapath.host_networks())
                subnet, gateway, ip_range = validate_network_cidrs(subnet, None, None)
            network = Network(
                id=net_id,
                name=name,
                driver=driver,
                subnet=subnet,
                gateway=gateway,
                bridge=bridge,
                ip_range=ip_range,
                mtu=mtu,
                internal=internal,
                options=dict(options),
                created=time.time(),
            )
            undo = Undo()
            try:
                self.store.put(NET_PREFIX + name, network.to_dict())
                undo.push(f"record of network {name}", lambda: self.store.delete(NET_PREFIX + name))
                self._driver(network).create(self.ctx, network, undo)
            except BaseException:
                self._log_undo(undo.unwind())
                raise
            return network

    def default_network(self) -> Network:
        """The network ``bridge`` (device tether0), created on first use like Docker's."""
        with self.lock:
            kv = self.store.get(NET_PREFIX + DEFAULT_NETWORK)
            if kv is not None:
                return Network.from_dict(kv.value)
            return self._create_network(DEFAULT_NETWORK, "bridge", None, None, None, {}, False, bridge=DEFAULT_BRIDGE)

    def _resolve_network(self, name: str) -> Network:
        if name == DEFAULT_NETWORK:
            return self.default_network()
        return self._network(name)

    def list_networks(self) -> list[dict[str, Any]]:
        counts: dict[str, int] = {}
        for ep in self._endpoints():
            counts[ep.network_id] = counts.get(ep.network_id, 0) + 1
        return [dict(n.to_dict(), containers=counts.get(n.id, 0)) for n in self._networks()]

    def inspect_network(self, name: str) -> dict[str, Any]:
        network = self._network(name)
        names = {c.id: c.name for c in self._containers()}
        attached = {
            names.get(ep.container_id, ep.container_id): {
                "ifname": ep.ifname,
                "address": ep.cidr,
                "mac": ep.mac,
                "host_ifname": ep.host_ifname,
            }
            for ep in self._endpoints()
            if ep.network_id == network.id
        }
        return dict(network.to_dict(), containers=attached)

    def remove_network(self, name: str) -> None:
        with self.lock:
            network = self._network(name)
            if name == DEFAULT_NETWORK:
                raise Conflict("bridge is the predefined default network and cannot be removed")
            users = self._network_users(network)
            if users:
                raise Conflict(
                    f"network {name!r} has containers attached ({', '.join(users)}): "
                    f"disconnect or remove them first"
                )
            errors = self._driver(network).delete(self.ctx, network)
            self.ipam.drop_network(network.id)
            self.store.delete(NET_PREFIX + name)
            self._log_undo(errors)

    def _network_users(self, network: Network) -> list[str]:
        names = {c.id: c.name for c in self._containers()}
        return sorted(names.get(ep.container_id, ep.container_id) for ep in self._endpoints() if ep.network_id == network.id)

    def prune_networks(self) -> list[str]:
        removed = []
        with self.lock:
            for network in self._networks():
                if network.name != DEFAULT_NETWORK and not self._network_users(network):
                    self.remove_network(network.name)
                    removed.append(network.name)
        return removed

    # ------------------------------------------------------------------ containers
    def create_container(
        self,
        cmd: list[str],
        name: str | None = None,
        net: str | None = None,
        ip: str | None = None,
        hostname: str | None = None,
        detach: bool = False,
        auto_remove: bool = False,
        rootfs: str | None = None,
    ) -> Container:
        """Validate everything, build the sandbox and its endpoint, record it; start it if
        ``detach`` (the CLI starts foreground containers itself and reports the pid)."""
        if not cmd:
            raise InvalidInput("no command given: put the command after `--`, as in `tether run -- sleep 60`")
        if name is None:
            name = f"t{uuid.uuid4().hex[:11]}"
        validate_name("container", name)
        mode = parse_net_mode(net)
        if ip is not None:
            if mode.kind != "network":
                raise InvalidInput(f"--ip needs a network to attach to, not --net {mode}")
            try:
                ipaddress.IPv4Address(ip)
            except ValueError:
                raise InvalidInput(f"invalid --ip {ip!r}: give an IPv4 address such as 10.0.0.5") from None
        if hostname is not None and not (0 < len(hostname) <= 63 and all(c.isalnum() or c in "-." for c in hostname)):
            raise InvalidInput(f"invalid --hostname {hostname!r}: use letters, digits, '-' and '.', at most 63")
        if rootfs is not None and not os.path.isdir(rootfs):
            raise InvalidInput(f"--rootfs {rootfs!r} is not a directory")
        with self.lock:
            if self.store.get(CTR_PREFIX + name) is not None:
                raise Conflict(f"container name {name!r} is already in use: choose another name or remove it first")
            network: Network | None = None
            joined: Container | None = None
            if mode.kind == "network":
                assert mode.target is not None
                network = self._resolve_network(mode.target)
                if ip is not None:
                    self._check_requested_ip(network, ip)
            elif mode.kind == "container":
                assert mode.target is not None
                joined = self._refresh(self._container(mode.target))
                if joined.state == "creating":
                    raise Conflict(f"container {joined.name!r} is still being created: try again")
                if joined.joined is not None:
                    # chain to the owner of the namespace, as Docker does
                    joined = self._container_by_id(joined.joined) or joined
            container = Container(
                id=uuid.uuid4().hex,
                name=name,
                hostname=hostname or name,
                net_mode=str(mode),
                netns=joined.netns if joined else None,
                cmd=list(cmd),
                state="creating",
                detach=detach,
                auto_remove=auto_remove,
                joined=joined.id if joined else None,
                rootfs=rootfs,
                created=time.time(),
            )
            undo = Undo()
            try:
                self._save(container)
                undo.push(f"record of container {name}", lambda: self.store.delete(CTR_PREFIX + name))
                os.makedirs(self.container_dir(container), exist_ok=True)
                undo.push("state dir", lambda: shutil.rmtree(self.container_dir(container), ignore_errors=True))
                netns = self._sandbox(container).setup(self.ctx, container, undo)
                container = container.with_(netns=netns)
                if network is not None:
                    assert netns is not None
                    self._attach(container, network, ip, undo, default_route=True)
                container = self._save(container.with_(state="created"))
            except BaseException:
                self._log_undo(undo.unwind())
                raise
            undo.commit()
        if detach:
            try:
                container = self.start_detached(container.name)
            except TetherError:
                self.remove_container(container.name, force=True)
                raise
        return container

    def _container_by_id(self, container_id: str) -> Container | None:
        for c in self._containers():
            if c.id == container_id:
                return c
        return None

    def _check_requested_ip(self, network: Network, ip: str) -> None:
        if ipaddress.IPv4Address(ip) not in ipaddress.ip_network(network.subnet):
            raise InvalidInput(f"--ip {ip} is outside network {network.name!r} ({network.subnet}): pick an address inside it")
        if ip == network.gateway:
            raise Conflict(f"--ip {ip} is the gateway of network {network.name!r}: pick another address")
        holder = self.ipam.leases(network.id).get(ip)
        if holder is not None:
            owner = self._container_by_id(holder)
            raise Conflict(
                f"address {ip} on network {network.name!r} is in use by "
                f"{'container ' + repr(owner.name) if owner else holder}: pick another address"
            )

    def _attach(self, container: Container, network: Network, ip: str | None, undo: Undo, default_route: bool) -> Endpoint:
        assert container.netns is not None
        used = {ep.ifname for ep in self._endpoints(container.id)}
        index = 0
        while f"eth{index}" in used:
            index += 1
        address = self.ipam.allocate(network, container.id, ip)
        undo.push(f"lease {address}", lambda: self.ipam.release(network.id, address))
        endpoint = Endpoint(
            id=uuid.uuid4().hex,
            network_id=network.id,
            network=network.name,
            container_id=container.id,
            ifname=f"eth{index}",
            host_ifname=host_ifname_for(container.id, network.id),
            address=address,
            prefixlen=network.prefixlen,
            gateway=network.gateway,
            mac=mac_for(address),
            default_route=default_route,
        )
        key = _ep_key(container.id, network.id)
        self.store.put(key, endpoint.to_dict())
        undo.push(f"record of endpoint {endpoint.ifname}", lambda: self.store.delete(key))
        self._driver(network).attach(self.ctx, network, endpoint, container.netns, undo)
        return endpoint

    def _detach(self, container: Container, endpoint: Endpoint) -> list[str]:
        errors: list[str] = []
        kv = self.store.get(NET_PREFIX + endpoint.network)
        network = Network.from_dict(kv.value) if kv else None
        if network is not None:
            errors += self._driver(network).detach(self.ctx, network, endpoint, container.netns)
        else:
            errors += _collect(lambda: self.ctx.datapath.detach_veth(endpoint.host_ifname))
        errors += _collect(lambda: self.ipam.release(endpoint.network_id, endpoint.address))
        errors += _collect(lambda: self.store.delete(_ep_key(container.id, endpoint.network_id)))
        return errors

    def start_detached(self, name: str) -> Container:
        container = self._container(name)
        spec = self._process_spec(container, detach=True)
        pid, start_time = runtime.spawn_detached(spec)
        with self.lock:
            current = self._container(name)
            return self._save(current.with_(state="running", pid=pid, start_time=start_time, exit_code=None))

    def _process_spec(self, container: Container, detach: bool) -> runtime.ProcessSpec:
        cdir = self.container_dir(container)
        on_exit = None
        if detach and container.auto_remove and self.socket_path:
            on_exit = [sys.executable, "-m", "tether.cli", "--socket", self.socket_path, "reap", container.id]
        return runtime.ProcessSpec(
            cmd=container.cmd,
            state_dir=cdir,
            netns_path=self.ctx.datapath.netns_path(container.netns) if container.netns else None,
            hostname=container.hostname,
            log_path=os.path.join(cdir, "log") if detach else None,
            rootfs=container.rootfs,
            on_exit=on_exit,
        )

    def process_spec(self, name: str) -> dict[str, Any]:
        """What a front end needs to run a created container in the foreground itself."""
        spec = self._process_spec(self._container(name), detach=False)
        return {k: getattr(spec, k) for k in spec.__dataclass_fields__}

    def mark_started(self, name: str, pid: int, start_time: int) -> Container:
        with self.lock:
            return self._save(self._container(name).with_(state="running", pid=pid, start_time=start_time))

    def mark_exited(self, name: str, code: int) -> Container:
        with self.lock:
            return self._save(self._container(name).with_(state="exited", exit_code=code))

    def _refresh(self, container: Container) -> Container:
        """Derive running/exited from the process itself; the record only caches it."""
        if container.state == "running" and not runtime.process_alive(container.pid, container.start_time):
            code = runtime.read_exit_code(self.container_dir(container))
            deadline = time.monotonic() + 0.5
            while code is None and time.monotonic() < deadline:  # the shim writes it just after
                time.sleep(0.01)
                code = runtime.read_exit_code(self.container_dir(container))
            container = self._save(container.with_(state="exited", exit_code=code if code is not None else -1))
        return container

    def list_containers(self, all_: bool = False) -> list[dict[str, Any]]:
        with self.lock:
            out = []
            for c in self._containers():
                c = self._refresh(c)
                if all_ or c.state == "running":
                    out.append(self._describe(c))
            return out

    def inspect_container(self, name: str) -> dict[str, Any]:
        with self.lock:
            return self._describe(self._refresh(self._container(name)))

    def _describe(self, container: Container) -> dict[str, Any]:
        owner = container
        if container.joined:
            owner = self._container_by_id(container.joined) or container
        networks = {
            ep.network: {
                "ifname": ep.ifname,
                "address": ep.address,
                "prefixlen": ep.prefixlen,
                "gateway": ep.gateway,
                "mac": ep.mac,
                "host_ifname": ep.host_ifname,
                "network_id": ep.network_id,
            }
            for ep in self._endpoints(owner.id)
        }
        return dict(
            container.to_dict(),
            networks=networks,
            netns_path=self.ctx.datapath.netns_path(container.netns) if container.netns else None,
            log_path=os.path.join(self.container_dir(container), "log"),
        )

    def logs(self, name: str) -> str:
        path = os.path.join(self.container_dir(self._container(name)), "log")
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    def stop_container(self, name: str, timeout: float = 10.0) -> Container:
        container = self.inspect_container(name)
        if container["state"] == "running":
            runtime.stop_process(container["pid"], container["start_time"], timeout)
        with self.lock:
            return self._refresh(self._container(name))

    def remove_container(self, name: str, force: bool = False) -> None:
        with self.lock:
            container = self._refresh(self._container(name))
            if container.state == "running" and not force:
                raise Conflict(f"container {name!r} is running: stop it first (`tether stop {name}`) or use `tether rm -f`")
            joiners = [
                c.name
                for c in (self._refresh(c) for c in self._containers())
                if c.joined == container.id and c.state == "running"
            ]
            if joiners and not force:
                raise Conflict(
                    f"container {name!r} shares its network namespace with running "
                    f"{', '.join(joiners)}: remove {'them' if len(joiners) > 1 else 'it'} first, or use `tether rm -f`"
                )
        if container.state == "running":
            runtime.stop_process(container.pid, container.start_time, 0)
        with self.lock:
            container = self._container(name)
            self._log_undo(self._teardown(container))

    def _teardown(self, container: Container) -> list[str]:
        """Remove everything a container holds. Keeps going past errors; idempotent."""
        errors: list[str] = []
        sandbox = self._sandbox(container)
        # Deleting the namespace first takes its veth ends with it, which is much faster
        # than deleting links one by one; detach then only finds leftovers.
        errors += sandbox.teardown(self.ctx, container)
        for ep in self._endpoints(container.id):
            errors += self._detach(container, ep)
        errors += _collect(lambda: self.ipam.release_owner(container.id))
        shutil.rmtree(self.container_dir(container), ignore_errors=True)
        errors += _collect(lambda: self.store.delete(CTR_PREFIX + container.name))
        return errors

    def reap(self, container_id: str) -> bool:
        """Called when a detached --rm container exits: remove it if it really has."""
        with self.lock:
            container = self._container_by_id(container_id)
            if container is None or not container.auto_remove:
                return False
            container = self._refresh(container)
            if container.state != "exited":
                return False
            self._log_undo(self._teardown(container))
            return True

    def reap_exited(self) -> None:
        with self.lock:
            for c in self._containers():
                if c.auto_remove and c.state == "running":
                    c = self._refresh(c)
                    if c.state == "exited":
                        self._log_undo(self._teardown(c))

    # ------------------------------------------------------------------ connect
    def connect(self, network_name: str, container_name: str, ip: str | None = None) -> Endpoint:
        if ip is not None:
            try:
                ipaddress.IPv4Address(ip)
            except ValueError:
                raise InvalidInput(f"invalid --ip {ip!r}: give an IPv4 address such as 10.0.0.5") from None
        with self.lock:
            container = self._refresh(self._container(container_name))
            network = self._resolve_network(network_name)
            kind = container.mode.kind
            if kind == "host":
                raise Conflict(f"container {container_name!r} uses the host's network: it cannot be connected to networks")
            if kind == "container":
                raise Conflict(
                    f"container {container_name!r} shares the network of another container: connect that one instead"
                )
            if container.state == "creating":
                raise Conflict(f"container {container_name!r} is still being created: try again")
            if self.store.get(_ep_key(container.id, network.id)) is not None:
                raise Conflict(f"container {container_name!r} is already connected to network {network.name!r}")
            if ip is not None:
                self._check_requested_ip(network, ip)
            assert container.netns is not None
            default_route = not self.ctx.datapath.has_default_route(container.netns)
            undo = Undo()
            try:
                endpoint = self._attach(container, network, ip, undo, default_route=default_route)
            except BaseException:
                self._log_undo(undo.unwind())
                raise
            undo.commit()
            return endpoint

    def disconnect(self, network_name: str, container_name: str) -> None:
        with self.lock:
            container = self._container(container_name)
            network = self._network(network_name)
            kv = self.store.get(_ep_key(container.id, network.id))
            if kv is None:
                raise NotFound(f"container {container_name!r} is not connected to network {network_name!r}")
            self._log_undo(self._detach(container, Endpoint.from_dict(kv.value)))

    # ------------------------------------------------------------------ reconcile
    def reconcile(self) -> list[str]:
        """Make the kernel and the store agree after a restart or a crash at any point.

        Networks the store has are rebuilt; half-created containers are removed; exited
        --rm containers are removed; missing namespaces and endpoints of live records are
        recreated; links carrying this daemon's mark that no record owns are deleted; and
        leases whose owner no longer exists are released."""
        actions: list[str] = []
        with self.lock:
            networks = {n.id: n for n in self._networks()}
            for network in networks.values():
                try:
                    self._driver(network).restore(self.ctx, network)
                except TetherError as exc:
                    actions.append(f"network {network.name}: {exc}")
            containers = self._containers()
            live_ids: set[str] = set()
            for c in containers:
                c = self._refresh(c)
                if c.state == "creating" or (c.auto_remove and c.state == "exited"):
                    actions.append(f"removed container {c.name} ({c.state})")
                    actions += self._teardown(c)
                    continue
                live_ids.add(c.id)
                if self._sandbox(c).owns_netns() and c.netns and not self.ctx.datapath.netns_exists(c.netns):
                    if c.state == "running":
                        actions.append(f"container {c.name}: its namespace binding is gone while it runs")
                        continue
                    self.ctx.datapath.create_netns(c.netns)
                    actions.append(f"recreated namespace of {c.name}")
                for ep in self._endpoints(c.id):
                    network = networks.get(ep.network_id)
                    if network is None:
                        actions.append(f"dropped endpoint of {c.name} on a removed network")
                        actions += self._detach(c, ep)
                        continue
                    if c.netns and not self._driver(network).endpoint_present(self.ctx, network, ep):
                        try:
                            self.ctx.datapath.detach_veth(ep.host_ifname)
                            self.ctx.datapath.detach_in_netns(c.netns, ep.ifname)
                            undo = Undo()
                            self._driver(network).attach(self.ctx, network, ep, c.netns, undo)
                            actions.append(f"re-attached {c.name} to {network.name}")
                        except TetherError as exc:
                            actions.append(f"could not re-attach {c.name} to {network.name}: {exc}")
            # endpoint records whose container is gone
            for ep in self._endpoints():
                if ep.container_id not in live_ids:
                    actions += _collect(lambda: self.ctx.datapath.detach_veth(ep.host_ifname))
                    self.store.delete(_ep_key(ep.container_id, ep.network_id))
                    actions.append(f"dropped orphan endpoint {ep.host_ifname}")
            # links with our mark that nothing owns
            expected = {ep.host_ifname for ep in self._endpoints()}
            for network in networks.values():
                expected |= self._driver(network).owned_links(network)
            for ifname, kind in self.ctx.datapath.links_with_mark(self.ctx.mark):
                if ifname in expected:
                    continue
                if kind == "bridge":
                    actions += _collect(lambda: self.ctx.datapath.delete_bridge(ifname))
                else:
                    actions += _collect(lambda: self.ctx.datapath.detach_veth(ifname))
                actions.append(f"deleted orphan link {ifname}")
            # leases without an owner
            for net_id in networks:
                for address, owner in self.ipam.leases(net_id).items():
                    if owner not in live_ids:
                        self.ipam.release(net_id, address)
                        actions.append(f"released orphan lease {address}")
            # leases of networks that no longer exist
            for kv in self.store.list("/ipam/"):
                parts = kv.key.split("/")
                if len(parts) >= 4 and parts[2] not in networks:
                    self.store.delete(kv.key)
                    actions.append(f"released lease {parts[3]} of a removed network")
            # state dirs without a record
            root = os.path.join(self.state_dir, "containers")
            for entry in os.listdir(root):
                if entry not in live_ids:
                    shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
        for line in actions:
            log.info("reconcile: %s", line)
        return actions

    def _log_undo(self, failures: list[str]) -> None:
        for line in failures:
            log.warning("%s", line)


def _collect(step: Callable[[], object]) -> list[str]:
    try:
        step()
    except Exception as exc:
        return [str(exc)]
    return []

