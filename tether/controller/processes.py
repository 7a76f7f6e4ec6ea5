"""Process verbs: a container's process under its shim, and what the record says of it.

The daemon starts detached containers itself (``runtime.spawn_detached``); a foreground
one is run by the CLI, which reports its pid and exit code back. The record's state
(running, exited) only caches what the process says: ``_refresh`` derives it, and adopts
a process the shim started while the daemon died before recording it.

What a process gets is derived from the record at each start: its environment (the
user's ``-e``/``--env-file`` entries on Docker's defaults), working directory, terminal,
and the files bound over its /etc/resolv.conf, /etc/hosts and /etc/hostname, written
into the container's state dir (``check_run_options`` checks ``run``'s input for them).
"""

from __future__ import annotations

import ipaddress
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from .. import runtime
from ..errors import InvalidInput
from ..model import DEFAULT_NETWORK, Container, NetMode, PortMapping, validate_mac
from .core import ControllerCore

__all__ = ["ProcessVerbs", "RunOptions", "check_run_options"]

# What Docker writes at the top of every container's /etc/hosts.
_DEFAULT_HOSTS = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\n"
    "ff02::2\tip6-allrouters\n"
)
HOST_GATEWAY = "host-gateway"  # `--add-host NAME:host-gateway`: the gateway of its first network


class ProcessVerbs(ControllerCore):
    def start_detached(self, name: str) -> Container:
        container = self._container(name)
        spec = self._process_spec(container, detach=True)
        pid, start_time = runtime.spawn_detached(spec)
        with self.lock:
            current = self._container(name)
            started = self._save(
                current.with_(
                    state="running", pid=pid, start_time=start_time, exit_code=None, detach=True, started_at=time.time()
                )
            )
            self._watch(started)
            return started

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
            workdir=container.workdir,
            env=runtime.container_environment(container.env, container.hostname, container.tty),
            rootfs=container.rootfs,
            resolv_conf=self._resolv_conf(container),
            hosts_file=self._etc_file(container, "hosts", self._hosts_text(container)),
            hostname_file=self._etc_file(container, "hostname", container.hostname + "\n"),
            tty=container.tty,
            interactive=container.interactive,
            on_exit=on_exit,
        )

    def process_spec(self, name: str) -> dict[str, Any]:
        """What a front end needs to run a created container in the foreground itself."""
        spec = self._process_spec(self._container(name), detach=False)
        return {k: getattr(spec, k) for k in spec.__dataclass_fields__}

    def mark_started(self, name: str, pid: int, start_time: int) -> Container:
        with self.lock:
            running = self._container(name).with_(state="running", pid=pid, start_time=start_time, started_at=time.time())
            started = self._save(running)
            self._watch(started)
            return started

    def mark_exited(self, name: str, code: int) -> Container:
        """A front end's process ended with ``code``; its endpoints are released."""
        with self.lock:
            container_id = self._container(name).id
        with self._container_lock(container_id), self.lock:  # not in the middle of a start
            container = self._refresh(self._container(name))
            if container.state == "running":
                return container  # another process by now: its restart policy started it again
            exited = self._save(container.with_(state="exited", exit_code=code))
            return exited if container.state == "exited" else self._on_exit(exited)

    def _refresh(self, container: Container) -> Container:
        """Derive running/exited from the process itself; the record only caches it. A
        ``created`` record whose shim reports a live process is adopted as running (the
        daemon was killed between starting it and recording that)."""
        if container.state == "created" and not container.pid and container.detach:
            started = runtime.read_started(self.container_dir(container))
            if started is not None and self._in_own_netns(container, started[0]):
                pid, start_time = started
                container = self._save(container.with_(state="running", pid=pid, start_time=start_time))
                self._watch(container)
        if container.state == "running" and not runtime.process_alive(container.pid, container.start_time):
            code = runtime.read_exit_code(self.container_dir(container))
            deadline = time.monotonic() + 0.5
            while code is None and time.monotonic() < deadline:  # the shim writes it just after
                time.sleep(0.01)
                code = runtime.read_exit_code(self.container_dir(container))
            container = self._save(container.with_(state="exited", exit_code=code if code is not None else -1))
            container = self._on_exit(container)  # its endpoints are released
        return container

    def _in_own_netns(self, container: Container, pid: int) -> bool:
        """Whether process ``pid`` lives in the container's network namespace (so a pid
        file can not make tether adopt a stranger that reused the pid)."""
        if container.netns is None:
            return True
        try:
            inside = os.stat(f"/proc/{pid}/ns/net")
            bound = os.stat(self.ctx.datapath.netns_path(container.netns))
        except OSError:
            return False
        return (inside.st_dev, inside.st_ino) == (bound.st_dev, bound.st_ino)

    def logs(
        self, name: str, since: int | None = None, tail: int | None = None, timestamps: bool = False
    ) -> dict[str, Any]:
        """Part of a detached container's output (``runtime.read_log``): from byte ``since``
        (what ``offset`` said last time), or its last ``tail`` lines, or all of it; with
        ``running``, so a follower knows when to stop (after one more read)."""
        with self.lock:
            container = self._refresh(self._container(name))
        running = container.state == "running"
        path = os.path.join(self.container_dir(container), "log")
        chunk = runtime.read_log(path, since=since, tail=tail, timestamps=timestamps, final=not running)
        return {"log": chunk.text, "offset": chunk.offset, "more": chunk.more, "running": running}

    def _resolv_conf(self, container: Container) -> str | None:
        """The container's /etc/resolv.conf, as Docker writes it. On a user-defined network
        the embedded resolver stays its nameserver and ``--dns`` servers become the
        resolver's upstreams for it; on the default network, ``none`` and ``host`` the
        ``--dns`` servers are written directly. None: the host's file (host mode, no flags)."""
        from ..dns import resolv_conf_text, upstreams_from_resolv_conf

        asked = bool(container.dns or container.dns_search or container.dns_options)
        search, options = container.dns_search, container.dns_options
        embedded = self.resolver is not None and container.netns is not None
        if not embedded and not asked:
            return None
        if embedded and (_on_user_network(container) or not container.dns):
            text = resolv_conf_text(search, options)
            self._set_dns_upstreams(container)
        else:
            text = resolv_conf_text(search, options, container.dns or upstreams_from_resolv_conf())
        return self._etc_file(container, "resolv.conf", text)

    def _set_dns_upstreams(self, container: Container) -> None:
        """Where the embedded resolver sends the names it does not know for this container:
        its ``--dns`` servers on a user-defined network, else the daemon's upstreams. At
        each start, and when the daemon restores its resolver (it keeps them in memory)."""
        if self.resolver is None or container.joined is not None or container.external:
            return
        self.resolver.set_upstreams(container.id, container.dns if _on_user_network(container) else None)

    def _hosts_text(self, container: Container) -> str:
        """/etc/hosts as Docker writes it: localhost, the container's own addresses with its
        hostname, then ``--add-host`` entries. Host mode: the host's file, then those."""
        owner = self._container_by_id(container.joined) if container.joined else container
        endpoints = sorted(self._endpoints(owner.id) if owner else [], key=_ifname_order)
        if container.mode.kind == "host":
            try:
                with open("/etc/hosts", encoding="utf-8", errors="replace") as fh:
                    text = fh.read()
            except OSError:
                text = _DEFAULT_HOSTS
            text += "" if not text or text.endswith("\n") else "\n"
            gateway: str | None = "127.0.0.1"  # the host is this very namespace
        else:
            text = _DEFAULT_HOSTS + "".join(f"{ep.address}\t{container.hostname}\n" for ep in endpoints)
            gateway = endpoints[0].gateway if endpoints else None
        for entry in container.extra_hosts:
            name, address = split_host_entry(entry)
            if address == HOST_GATEWAY:
                address = gateway or ""
            if address:
                text += f"{address}\t{name}\n"
        return text

    def _etc_file(self, container: Container, name: str, text: str) -> str:
        """Write ``text`` as the container's file ``name`` (in place: a running container's
        bind mount keeps the same inode) and return its path."""
        path = os.path.join(self.container_dir(container), name)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        return path


@dataclass(frozen=True)
class RunOptions:
    """``run``'s options for its process and its /etc files, checked; the record's fields."""

    env: list[str]
    workdir: str
    tty: bool
    interactive: bool
    dns: list[str]
    dns_search: list[str]
    dns_options: list[str]
    extra_hosts: list[str]
    mac_address: str | None
    expose: list[str]
    publish_all: bool

    def record(self) -> dict[str, Any]:
        return asdict(self)

    def published(self, mappings: list[PortMapping]) -> list[PortMapping]:
        """``mappings`` (``-p``) and, with ``-P``, every exposed port they leave out, each on
        a host port the daemon picks."""
        if not self.publish_all:
            return mappings
        taken = {(m.container_port, m.protocol) for m in mappings}
        extra = []
        for item in self.expose:
            port_text, _, protocol = item.partition("/")
            if (int(port_text), protocol) not in taken:
                extra.append(PortMapping(protocol, 0, int(port_text)))
        return [*mappings, *extra]


def check_run_options(
    mode: NetMode,
    env: list[str] | None = None,
    workdir: str | None = None,
    tty: bool = False,
    interactive: bool = False,
    dns: list[str] | None = None,
    dns_search: list[str] | None = None,
    dns_options: list[str] | None = None,
    extra_hosts: list[str] | None = None,
    mac_address: str | None = None,
    expose: list[str] | None = None,
    publish_all: bool = False,
) -> RunOptions:
    """Every check of these ``run`` options that needs no state, each a one-line InvalidInput."""
    kind = mode.kind
    if kind == "container" and (dns or dns_search or dns_options or extra_hosts):
        raise InvalidInput(
            f"--dns, --dns-search, --dns-option and --add-host do not go with --net {mode}: "
            "the container shares that one's network and takes its settings from its own run"
        )
    if workdir is not None and (not workdir.startswith("/") or "\0" in workdir):
        raise InvalidInput(f"invalid --workdir {workdir!r}: give an absolute path, such as /app")
    for server in dns or []:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise InvalidInput(f"invalid --dns {server!r}: give a nameserver's IP address, such as 192.0.2.53") from None
    for domain in dns_search or []:
        if not _is_domain(domain):
            raise InvalidInput(f"invalid --dns-search {domain!r}: give a domain name such as example.com (or '.' for none)")
    for option in dns_options or []:
        if not option or any(c.isspace() for c in option) or "\0" in option:
            raise InvalidInput(f"invalid --dns-option {option!r}: give one resolver option without spaces, such as ndots:2")
    hosts = [_check_host_entry(entry) for entry in extra_hosts or []]
    if kind == "none" and any(entry.endswith(":" + HOST_GATEWAY) for entry in hosts):
        raise InvalidInput("--add-host NAME:host-gateway needs a network: --net none has no gateway")
    if mac_address is not None:
        mac_address = validate_mac(mac_address)
        if int(mac_address[:2], 16) & 1:
            raise InvalidInput(f"invalid --mac-address {mac_address!r}: a multicast address; the first byte must be even")
        if kind != "network":
            raise InvalidInput(f"--mac-address needs a network to attach to, not --net {mode}")
    exposed = [port for spec in expose or [] for port in _parse_expose(spec)]
    if publish_all and kind != "network":
        raise InvalidInput(f"-P needs a bridge network: --net {mode} has no address of its own to publish")
    return RunOptions(
        env=runtime.check_environment(env or []),
        workdir=workdir or "/",
        tty=tty,
        interactive=interactive,
        dns=list(dns or []),
        dns_search=list(dns_search or []),
        dns_options=list(dns_options or []),
        extra_hosts=hosts,
        mac_address=mac_address,
        expose=list(dict.fromkeys(exposed)),
        publish_all=publish_all,
    )


def _on_user_network(container: Container) -> bool:
    """Attached to a network of its own choosing, where names resolve (not the default one)."""
    mode = container.mode
    return mode.kind == "network" and mode.target != DEFAULT_NETWORK


def split_host_entry(entry: str) -> tuple[str, str]:
    """``NAME:IP`` (or Docker's newer ``NAME=IP``) as (NAME, IP); IP may be IPv6, bracketed or not."""
    sep = "=" if "=" in entry else ":"
    name, _, address = entry.partition(sep)
    if address.startswith("[") and address.endswith("]"):
        address = address[1:-1]
    return name, address


def _check_host_entry(entry: str) -> str:
    name, address = split_host_entry(entry)
    usage = f"invalid --add-host {entry!r}: use NAME:IP, as in --add-host db:10.0.0.5 (or NAME:host-gateway)"
    if not name or not _is_domain(name) or name == "." or not address:
        raise InvalidInput(usage)
    if address != HOST_GATEWAY:
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            raise InvalidInput(usage) from None
    return f"{name}:{address}"


def _is_domain(text: str) -> bool:
    if text == ".":
        return True
    labels = text.rstrip(".").split(".")
    return 0 < len(text) <= 253 and all(
        0 < len(label) <= 63 and all(c.isascii() and (c.isalnum() or c in "-_") for c in label) for label in labels
    )


def _parse_expose(spec: str) -> list[str]:
    """Docker's ``--expose PORT[-END][/tcp|udp]`` as ``PORT/PROTO`` entries."""
    ports, _, protocol = spec.partition("/")
    protocol = (protocol or "tcp").lower()
    usage = f"invalid --expose {spec!r}: use PORT[-END][/tcp|udp], as in --expose 80 or --expose 8000-8010/udp"
    if protocol not in ("tcp", "udp"):
        raise InvalidInput(usage)
    low, sep, high = ports.partition("-")
    try:
        first, last = int(low), int(high) if sep else int(low)
    except ValueError:
        raise InvalidInput(usage) from None
    if not 1 <= first <= last <= 65535:
        raise InvalidInput(usage)
    return [f"{port}/{protocol}" for port in range(first, last + 1)]


def _ifname_order(endpoint: Any) -> tuple[int, str]:
    """eth0, eth1, ... eth10 in attach order (an ifname without a number last)."""
    digits = endpoint.ifname.lstrip("abcdefghijklmnopqrstuvwxyz")
    return (int(digits) if digits.isdigit() else 1 << 30, endpoint.ifname)
