"""The per-host daemon: opens the store and the datapath, reconciles, then serves the API.

The daemon holds no container alive: containers run under their own shims and their
namespaces are bind-mounted, so the daemon can be stopped, killed or upgraded while they
keep running and keep their network (live restore). On start it reconciles the kernel
with the store before it answers a single request.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import replace
from types import FrameType
from typing import IO, TYPE_CHECKING

from .api.server import ApiServer
from .controller import Controller
from .control.agent import OverlayAgent
from .control.cluster import Cluster
from .datapath import NetlinkDatapath
from .errors import Conflict, InvalidInput, StoreError, TetherError
from .dns import Resolver
from .firewall import Firewall
from .firewall.dnsredirect import redirect_dns_here
from .store import SqliteStore

if TYPE_CHECKING:
    from .api.docker_plugin import DockerPluginServer

__all__ = ["run_daemon"]

log = logging.getLogger("tether.daemon")


def run_daemon(
    state_dir: str,
    socket_path: str,
    netns_prefix: str = "",
    log_level: str = "info",
    dns_upstreams: list[str] | None = None,
    firewall_table: str = "tether",
    cluster_store: str | None = None,
    cluster_advertise: str | None = None,
    node_name: str | None = None,
    node_grace: float = 60.0,
    docker_plugin: str | None = None,
    docker_plugin_required: bool = True,
    discard_unknown: bool = False,
    ipv6: bool = False,
) -> None:
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    claims = claim(state_dir, socket_path)  # before anything else: one daemon per state dir and netns
    _raise_fd_limit()
    store = SqliteStore(os.path.join(state_dir, "tether.db"))
    datapath = NetlinkDatapath()
    cluster = _join_cluster(cluster_store, cluster_advertise, node_name, node_grace) if cluster_store else None
    firewall = Firewall(firewall_table, loopback_proxy=True)  # [::1] ports: kernel NAT cannot serve them
    # the resolver takes kernel-picked ports in each container namespace and a DNAT there
    # points 127.0.0.11:53 at them, so containers keep port 53 for their own servers
    resolver = Resolver(dns_upstreams or None, port=0, on_serve=redirect_dns_here)
    resolver.start()
    controller = Controller(
        store,
        datapath,
        state_dir,
        netns_prefix=netns_prefix,
        socket_path=socket_path,
        firewall=firewall,
        resolver=resolver,
        cluster=cluster,
    )
    controller.default_ipv6 = ipv6
    agent = _start_agent(cluster, datapath, controller) if cluster is not None else None
    actions = controller.reconcile(discard_unknown=discard_unknown)
    # someone may flush the ruleset or delete our table at any time: put it back within 1 s
    firewall.start_healer(controller.desired_firewall, on_heal=lambda problem, restored, removed: controller.events.emit(
        "firewall", "heal", firewall.table, problem=problem or None, restored=restored, removed=removed))
    log.info("reconciled with %d correction(s)", len(actions))
    server, plugin = _open_sockets(controller, socket_path, docker_plugin, docker_plugin_required)
    log.info("tether daemon serving on %s (state in %s, netns prefix %r)", socket_path, state_dir, netns_prefix)
    # every container's exit acted on at once (network released, restart policy); what
    # exited while no daemon ran is restarted now if its policy says so
    controller.start_monitor()
    try:
        _serve(server, controller)
    finally:
        controller.events.close()  # open `tether events` streams end now
        controller.stop_monitor()
        if plugin is not None:
            plugin.shutdown()  # before exiting: dockerd must not find a dead plugin socket
        if agent is not None:
            agent.stop()
        if cluster is not None:
            cluster.stop()
        firewall.stop_healer()
        resolver.stop()
        datapath.close()
        store.close()
        for held in claims:
            held.close()


def _open_sockets(
    controller: Controller, socket_path: str, docker_plugin: str | None, required: bool
) -> tuple[ApiServer, DockerPluginServer | None]:
    """tether's API socket, and Docker's driver socket (served at once) when asked."""
    plugin = _docker_plugin(controller, docker_plugin, required) if docker_plugin else None
    try:
        server = ApiServer(controller, socket_path)
    except BaseException:
        if plugin is not None:
            plugin.close()  # never served: nothing to stop
        raise
    if plugin is not None:
        plugin.serve_in_thread("tether-docker")
    return server, plugin


def _start_agent(cluster: Cluster, datapath: NetlinkDatapath, controller: Controller) -> OverlayAgent:
    """Join the cluster and follow it: the agent programs the remote side of overlays,
    remote containers' names included (into the resolver, through two callbacks)."""
    cluster.register()
    hooks = replace(controller.agent_hooks(), host_changed=lambda name, up, address: controller.events.emit(
        "host", "up" if up else "down", name, address=address or None))
    if controller.resolver is not None:
        hooks = replace(hooks, add_name=controller.resolver.add_record, remove_name=controller.resolver.remove_record)
    agent = OverlayAgent(cluster, datapath, hooks)
    controller.agent = agent
    agent.start()
    if not agent.synced.wait(30):
        log.warning("the overlay agent has not synced with the cluster store yet; going on")
    return agent


def _docker_plugin(controller: Controller, name: str, required: bool) -> DockerPluginServer | None:
    """Docker's driver socket: a name (in /run/docker/plugins, where dockerd looks) or a
    path. Failing to take it is fatal only when it was asked for."""
    from .api.docker_plugin import DockerPluginServer

    try:
        plugin = DockerPluginServer(controller, name, name if "/" in name else None)
    except (TetherError, OSError) as exc:
        if required:
            raise
        log.warning("not serving Docker's driver %r: %s", name, exc)  # only by default: go on
        return None
    log.info("Docker network and IPAM driver %r on %s", name, plugin.socket_path)
    return plugin


def _serve(server: ApiServer, controller: Controller) -> None:
    """Serve until SIGTERM or SIGINT, removing exited --rm containers every 2 s meanwhile."""
    stopping = threading.Event()

    def reaper() -> None:
        # --rm containers whose shim could not reach us (we were down) are removed here.
        while not stopping.wait(2.0):
            try:
                controller.reap_exited()
            except Exception:
                log.exception("reaper")

    threading.Thread(target=reaper, name="tether-reaper", daemon=True).start()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: shutting down (containers keep running)", signum)
        stopping.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.serve_forever()
    finally:
        stopping.set()


LOCK_DIR = "/run/tether/netns"


def claim(state_dir: str, socket_path: str) -> list[IO[str]]:
    """Hold the two locks that make a daemon the only one of its state dir and of its
    network namespace (whose bridges, links and nftables table it reconciles as its own).
    The kernel drops them when the process dies, however it dies. A second daemon (or
    the ninth of ten parallel autostarts) is refused in one line naming the first."""
    me = {"pid": os.getpid(), "state_dir": os.path.abspath(state_dir), "socket": socket_path}
    try:
        os.makedirs(state_dir, exist_ok=True)
        os.makedirs(LOCK_DIR, exist_ok=True)
        ns = os.stat("/proc/self/ns/net")
        paths = [os.path.join(state_dir, "daemon.lock"), os.path.join(LOCK_DIR, f"{ns.st_dev}-{ns.st_ino}.lock")]
        held = [_lock(path, me) for path in paths]
    except OSError as exc:
        raise InvalidInput(f"cannot start the daemon: {exc.filename}: {exc.strerror}: use a writable --state-dir") from None
    for path, fh in zip(paths, held):
        if fh is None:
            other = _holder(path)
            where = "state dir" if path.startswith(state_dir) else "network namespace"
            raise Conflict(
                f"another tether daemon (pid {other.get('pid', '?')}, state dir {other.get('state_dir', '?')}, "
                f"socket {other.get('socket', '?')}) already runs in this {where}: use it, or stop it first"
            )
    return [fh for fh in held if fh is not None]


def _lock(path: str, me: dict[str, object]) -> IO[str] | None:
    import fcntl
    import json

    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    fh.truncate(0)
    fh.write(json.dumps(me))
    fh.flush()
    return fh


def _holder(path: str) -> dict[str, object]:
    import json

    try:
        with open(path) as fh:
            value = json.loads(fh.read() or "{}")
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def docker_plugin_choice(asked: str | None, socket_path: str) -> tuple[str | None, bool]:
    """Which Docker driver the daemon serves, and whether failing to is fatal.

    The host's own daemon (on the default socket) is Docker's ``tether`` driver unless told
    otherwise, and goes on without it if another process has the name; daemons on other
    sockets (tests, labs, a second daemon) serve Docker only when asked, and then must."""
    from .api.client import DEFAULT_SOCKET

    if asked is None:  # neither --docker-plugin nor TETHER_DOCKER_PLUGIN
        return ("tether" if socket_path == DEFAULT_SOCKET else None), False
    if asked.strip().lower() in ("", "none", "off"):
        return None, False
    return asked.strip(), True


def parse_cluster_store(url: str) -> list[str]:
    """``etcd://HOST:PORT[,HOST:PORT...]`` -> etcd client endpoints."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "etcd" or not rest:
        raise InvalidInput(f"invalid --cluster-store {url!r}: use etcd://HOST:2379[,HOST:2379...]")
    return [f"http://{hostport.strip()}" for hostport in rest.split(",") if hostport.strip()]


def _join_cluster(url: str, advertise: str | None, node: str | None, grace: float) -> Cluster:
    endpoints = parse_cluster_store(url)
    if not advertise:
        raise InvalidInput("--cluster-store needs --cluster-advertise IP: this host's underlay address")
    from .store.etcd import EtcdStore

    delay = 0.5
    while True:
        try:
            # a long per-call timeout: a `run` while etcd restarts waits for it and then
            # converges, instead of failing after a few seconds
            store = EtcdStore(endpoints, timeout=30.0)
            break
        except StoreError as exc:
            # an etcd that is not up yet is normal at boot: say so plainly and keep trying
            log.warning("%s; retrying in %.1f s", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    return Cluster(store, node or socket.gethostname(), advertise, grace)


def _raise_fd_limit() -> None:
    """Every container costs the daemon a few descriptors (its resolver's sockets): lift
    the soft limit to the hard one so a host with thousands of containers fits."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d: %s", soft, exc)
