"""The commands that are not plain clients of the daemon's API: ``daemon`` itself,
``version`` and ``info`` (which never start one), ``demo`` and ``lab``."""

from __future__ import annotations

import os
import platform
from collections import Counter
from typing import Any

import typer

from .. import __version__
from ..api.client import Client
from ..errors import DaemonUnavailable, InvalidInput, TetherError
from .common import CTX, app, fail, lab_app, out, print_json

__all__: list[str] = []


@app.command()
def daemon(
    state_dir: str = typer.Option(
        None, "--state-dir", metavar="DIR",
        help="State directory (default: $TETHER_STATE_DIR, else /var/lib/tether).",
    ),
    socket: str = typer.Option(
        None, "--socket", metavar="PATH", help="API socket (default: $TETHER_SOCKET, else /run/tether/tether.sock)."
    ),
    netns_prefix: str = typer.Option(
        os.environ.get("TETHER_NETNS_PREFIX", ""), "--netns-prefix", metavar="PREFIX", show_default=False,
        help="Prefix for the names of the containers' namespaces (default: $TETHER_NETNS_PREFIX, else none).",
    ),
    log_level: str = typer.Option("info", "--log-level", metavar="LEVEL", help="debug, info, warning or error."),
    dns_upstream: list[str] = typer.Option(
        None, "--dns-upstream", metavar="IP[:PORT]",
        help="Upstream resolver for names tether does not know (default: those of /etc/resolv.conf); repeatable.",
    ),
    cluster_store: str = typer.Option(
        None, "--cluster-store", metavar="URL",
        help="etcd://HOST:PORT[,HOST:PORT...]: the multi-host store (enables overlay).",
    ),
    cluster_advertise: str = typer.Option(
        None, "--cluster-advertise", metavar="IP", help="This host's underlay address (VTEP)."
    ),
    node_name: str = typer.Option(
        None, "--node-name", metavar="NAME", help="This host's name in the cluster (default: hostname)."
    ),
    node_grace: float = typer.Option(
        60.0, "--node-grace", metavar="SECONDS",
        help="Seconds a host may stay down before its endpoints are withdrawn elsewhere.",
    ),
    docker_plugin: str = typer.Option(
        None,
        "--docker-plugin",
        envvar="TETHER_DOCKER_PLUGIN",
        metavar="NAME|PATH",
        help="Serve Docker's network and IPAM driver as NAME (/run/docker/plugins/NAME.sock) or on a socket path; "
        "'none' to not serve it (default: 'tether' for the daemon on the default socket, else none).",
    ),
    discard_unknown: bool = typer.Option(
        False, "--discard-unknown", help="With an empty store, remove tether's links it finds instead of refusing."
    ),
    ipv6: bool = typer.Option(
        False, "--ipv6", help="Make the default network 'bridge' dual stack (a ULA /64) when it is first created."
    ),
) -> None:
    """Run the per-host daemon in the foreground."""
    from ..daemon import docker_plugin_choice, run_daemon

    plugin, required = docker_plugin_choice(docker_plugin, socket or CTX.socket)

    run_daemon(
        state_dir or CTX.state_dir,
        socket or CTX.socket,
        netns_prefix=netns_prefix,
        log_level=log_level,
        dns_upstreams=dns_upstream or None,
        cluster_store=cluster_store,
        cluster_advertise=cluster_advertise,
        node_name=node_name,
        node_grace=node_grace,
        docker_plugin=plugin,
        ipv6=ipv6,
        docker_plugin_required=required,
        discard_unknown=discard_unknown,
    )


@app.command()
def version() -> None:
    """Show the versions of this client and of the daemon, if one answers (none is started)."""
    out.print(f"Client: tether {__version__} (Python {platform.python_version()})")
    try:
        ping = Client(CTX.socket, timeout=5.0).get("/ping")
    except DaemonUnavailable:
        out.print(f"Daemon: none answers on {CTX.socket}")
        return
    # a daemon older than `tether version` does not say its version in /ping
    said = f"tether {ping['version']}" if ping.get("version") else "version not reported"
    out.print(f"Daemon: {said} (pid {ping.get('pid')}, on {CTX.socket})")


@app.command()
def info(fmt: str = typer.Option("text", "--format", metavar="FORMAT", help="text or json.")) -> None:
    """Show what the daemon runs with and what it holds (none is started)."""
    try:
        facts = _daemon_facts(Client(CTX.socket, timeout=10.0))
    except DaemonUnavailable as exc:
        fail(f"{exc}")  # any other tether command starts one
    if fmt == "json":
        print_json(facts)
        return
    if fmt != "text":
        fail(f"unknown format {fmt!r}: use text or json", code=2)
    nets, conts, cluster = facts["networks"], facts["containers"], facts["cluster"]
    rows = [
        ("Client", f"tether {__version__}"),
        ("Daemon", f"pid {facts['pid']}" + (f", tether {facts['version']}" if facts["version"] else "")),
        ("Socket", facts["socket"]),
        ("State dir", facts["state_dir"]),
        ("Store", f"{facts['store']} (SQLite)" + ("; overlay networks in the cluster's etcd" if cluster else "")),
        ("Netns prefix", facts["netns_prefix"] or "(none: containers' namespaces carry their names)"),
        ("Networks", _counted(nets["total"], nets["by_driver"])),
        ("Containers", _counted(conts["total"], conts["by_state"])),
        ("Cluster", "none (no --cluster-store)" if cluster is None else _cluster_line(cluster)),
    ]
    width = max(len(key) for key, _ in rows) + 2
    for key, value in rows:
        out.print(f"{key + ':':<{width}}{value}")


def _daemon_facts(client: Client) -> dict[str, Any]:
    """What ``info`` shows, from the API's existing routes: /ping, /networks,
    /containers?all=1 and /nodes (which a daemon without a cluster store refuses)."""
    ping = client.get("/ping")
    networks = client.get("/networks")
    containers = client.get("/containers?all=1")
    cluster: dict[str, Any] | None
    try:
        nodes = client.get("/nodes")
        me = next((n["name"] for n in nodes if n.get("self")), None)
        cluster = {"node": me, "nodes": len(nodes), "up": sum(1 for n in nodes if n.get("up"))}
    except InvalidInput:  # "this daemon has no cluster store"
        cluster = None
    except TetherError as exc:  # the store is configured but does not answer
        cluster = {"error": str(exc)}
    by_state = Counter(c["state"] for c in containers)
    return {
        "version": ping.get("version"),
        "pid": ping.get("pid"),
        "socket": CTX.socket,
        "state_dir": ping.get("state_dir"),
        "store": os.path.join(ping.get("state_dir") or CTX.state_dir, "tether.db"),
        "netns_prefix": ping.get("netns_prefix", ""),
        "networks": {"total": len(networks), "by_driver": dict(Counter(n["driver"] for n in networks))},
        "containers": {
            "total": len(containers),
            # running first, then exited, then the rarer states
            "by_state": dict(sorted(by_state.items(), key=lambda kv: (kv[0] != "running", kv[0] != "exited", kv[0]))),
        },
        "cluster": cluster,
    }


def _counted(total: int, parts: dict[str, int]) -> str:
    detail = ", ".join(f"{n} {what}" for what, n in parts.items())
    return f"{total} ({detail})" if detail else str(total)


def _cluster_line(cluster: dict[str, Any]) -> str:
    if "error" in cluster:
        return f"unreachable: {cluster['error']}"
    return f"this host is {cluster['node']}; {cluster['up']} of {cluster['nodes']} nodes up"


@app.command()
def demo(
    keep: bool = typer.Option(False, "--keep", help="Leave the single-host demo containers running."),
    overlay: bool = typer.Option(True, "--overlay/--no-overlay", help="Also run the multi-host part on a lab."),
) -> None:
    """Show every mode working: start containers and print connectivity matrices."""
    from ..demo import run_demo, run_overlay_demo

    code = run_demo(CTX.client(), out, keep=keep)
    if overlay:
        code = code or run_overlay_demo(out)
    raise typer.Exit(code)


@lab_app.command("up")
def lab_up(
    hosts: int = typer.Option(3, "--hosts", metavar="N", help="Number of hosts (h1..hN)."),
    grace: float = typer.Option(10.0, "--grace", metavar="SECONDS", help="The daemons' --node-grace, in seconds."),
    prefix: str = typer.Option("", "--prefix", hidden=True, help="Prefix for every namespace name (tests)."),
) -> None:
    """Build the lab: fabric, internet, etcd, and a daemon per host (files: env TETHER_LAB_ROOT)."""
    from .. import lab

    lab.run_up(hosts, grace, name_prefix=prefix)


@lab_app.command("status")
def lab_status(fmt: str = typer.Option("table", "--format", metavar="FORMAT", help="table or json.")) -> None:
    """Show the lab's hosts and etcd, and whether each is alive."""
    from .. import lab

    lab.print_status(fmt)


@lab_app.command("down")
def lab_down(
    prefix: str = typer.Option(None, "--prefix", hidden=True, help="The lab's prefix, if lab.json is lost."),
) -> None:
    """Remove the lab: containers, daemons, etcd, namespaces, files."""
    from .. import lab

    lab.run_down(prefix)


