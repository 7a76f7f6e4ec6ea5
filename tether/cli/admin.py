"""The commands that are not plain clients of the daemon's API: ``daemon`` itself,
``demo`` and ``lab``."""

from __future__ import annotations

import os

import typer

from .common import CTX, app, lab_app, out

__all__: list[str] = []


@app.command()
def daemon(
    state_dir: str = typer.Option(None, "--state-dir", help="State directory [env TETHER_STATE_DIR]."),
    socket: str = typer.Option(None, "--socket", help="API socket [env TETHER_SOCKET]."),
    netns_prefix: str = typer.Option(
        os.environ.get("TETHER_NETNS_PREFIX", ""), "--netns-prefix", help="Prefix for namespace names."
    ),
    log_level: str = typer.Option("info", "--log-level"),
    dns_upstream: list[str] = typer.Option(
        None, "--dns-upstream", help="Upstream resolver IP[:PORT] for names tether does not know (default: /etc/resolv.conf)."
    ),
    cluster_store: str = typer.Option(
        None, "--cluster-store", help="etcd://HOST:PORT[,HOST:PORT...]: the multi-host store (enables overlay)."
    ),
    cluster_advertise: str = typer.Option(None, "--cluster-advertise", help="This host's underlay address (VTEP)."),
    node_name: str = typer.Option(None, "--node-name", help="This host's name in the cluster (default: hostname)."),
    node_grace: float = typer.Option(
        60.0, "--node-grace", help="Seconds a host may stay down before its endpoints are withdrawn elsewhere."
    ),
    docker_plugin: str = typer.Option(
        None,
        "--docker-plugin",
        envvar="TETHER_DOCKER_PLUGIN",
        help="Serve Docker's network and IPAM driver as NAME (/run/docker/plugins/NAME.sock) or on a socket path; "
        "'none' to not serve it [default: 'tether' for the daemon on the default socket].",
    ),
    discard_unknown: bool = typer.Option(
        False, "--discard-unknown", help="With an empty store, remove tether's links it finds instead of refusing."
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
        docker_plugin_required=required,
        discard_unknown=discard_unknown,
    )


# ---------------------------------------------------------------------- networks
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
    hosts: int = typer.Option(3, "--hosts", help="Number of hosts (h1..hN)."),
    grace: float = typer.Option(10.0, "--grace", help="The daemons' --node-grace, in seconds."),
    prefix: str = typer.Option("", "--prefix", hidden=True, help="Prefix for every namespace name (tests)."),
) -> None:
    """Build the lab: fabric, internet, etcd, and a daemon per host (files: env TETHER_LAB_ROOT)."""
    from .. import lab

    lab.run_up(hosts, grace, name_prefix=prefix)


@lab_app.command("status")
def lab_status(fmt: str = typer.Option("table", "--format", help="table or json.")) -> None:
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


