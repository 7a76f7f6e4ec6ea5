"""The ``tether`` command: a thin Typer front end over the daemon API.

Every command but ``daemon`` is a client: it parses flags into a request, sends it over
the unix socket (starting a background daemon if none answers), and renders the reply
with Rich. The one exception to "the daemon does the work" is a foreground ``run``: the
CLI itself runs the process (stdin/stdout attached) in the sandbox the daemon prepared,
and reports its pid and exit code back.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from .api.client import Client, default_socket, default_state_dir, q
from .errors import NotFound, TetherError
from .validate import parse_seconds, validate_name

__all__ = ["app", "main"]

app = typer.Typer(
    name="tether",
    help="Container networking for Linux: none, host, container, bridge (and overlay) modes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
network_app = typer.Typer(help="Manage networks.", no_args_is_help=True)
app.add_typer(network_app, name="network")
node_app = typer.Typer(help="The hosts of the cluster (overlay networks).", no_args_is_help=True)
app.add_typer(node_app, name="node")

out = Console(highlight=False, soft_wrap=True)
RUN_CONTEXT = {"allow_interspersed_args": False}


class Ctx:
    socket: str
    state_dir: str

    def client(self, autostart: bool = True) -> Client:
        client = Client(self.socket)
        if autostart and not os.environ.get("TETHER_NO_AUTOSTART"):
            client.ensure_daemon(self.state_dir)
        return client


CTX = Ctx()


@app.callback()
def _global(
    ctx: typer.Context,
    socket: str = typer.Option(None, "--socket", help="Daemon socket [env TETHER_SOCKET]."),
    state_dir: str = typer.Option(None, "--state-dir", help="State directory [env TETHER_STATE_DIR]."),
    host: str = typer.Option(
        None, "--host", envvar="TETHER_HOST", help="Run the command on this `tether lab` host (h1, h2 ...)."
    ),
) -> None:
    CTX.socket = socket or default_socket()
    CTX.state_dir = state_dir or default_state_dir()
    if host:  # re-executes in the host's netns, or returns its daemon's socket and state dir
        from .lab import enter_host

        CTX.socket, CTX.state_dir = enter_host(host, ctx, CTX.socket, CTX.state_dir, bool(socket or state_dir))


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _fail(message: str, code: int = 1) -> NoReturn:
    sys.stderr.write(f"Error: {message}\n")
    raise typer.Exit(code)


def _parse_options(options: list[str] | None) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for item in options or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"invalid option {item!r}: use -o KEY=VALUE")
        parsed[key] = value
    return parsed


# ---------------------------------------------------------------------- daemon
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
    from .daemon import docker_plugin_choice, run_daemon

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
@network_app.command("create")
def network_create(
    name: str,
    driver: str = typer.Option("bridge", "-d", "--driver", help="Network driver."),
    subnet: str = typer.Option(None, "--subnet", help="Subnet in CIDR form, e.g. 10.210.0.0/24."),
    gateway: str = typer.Option(None, "--gateway", help="Gateway address (default: first in subnet)."),
    ip_range: str = typer.Option(None, "--ip-range", help="Allocate container addresses from this sub-range."),
    opt: list[str] = typer.Option(
        None, "-o", "--opt", help="Driver option KEY=VALUE: bridge_name, mtu, masquerade=true|false, icc=true|false."
    ),
    internal: bool = typer.Option(False, "--internal", help="No route to the outside."),
) -> None:
    """Create a network."""
    validate_name("network", name)  # before the daemon is asked (and started) at all
    net = CTX.client().post(
        "/networks",
        {
            "name": name,
            "driver": driver,
            "subnet": subnet,
            "gateway": gateway,
            "ip_range": ip_range,
            "options": _parse_options(opt),
            "internal": internal,
        },
    )
    out.print(net["id"])


@network_app.command("ls")
def network_ls(fmt: str = typer.Option("table", "--format", help="table or json.")) -> None:
    """List networks."""
    nets = CTX.client().get("/networks")
    if fmt == "json":
        _print_json(nets)
        return
    table = Table(box=None, header_style="bold")
    for col in ("NETWORK ID", "NAME", "DRIVER", "SCOPE", "SUBNET", "BRIDGE", "CONTAINERS"):
        table.add_column(col)
    for n in nets:
        table.add_row(
            n["id"][:12], n["name"], n["driver"], n.get("scope", "local"), n["subnet"], n["bridge"], str(n["containers"])
        )
    out.print(table)


@network_app.command("inspect")
def network_inspect(names: list[str]) -> None:
    """Show networks as JSON."""
    client = CTX.client()
    _print_json([client.get(f"/networks/{q(n)}") for n in names])


def _each(names: list[str], action: Any) -> None:
    """Apply ``action`` to every name, report each failure, and fail at the end (as Docker)."""
    failed = False
    for name in names:
        try:
            action(name)
            out.print(name)
        except TetherError as exc:
            sys.stderr.write(f"Error: {exc}\n")
            failed = True
    if failed:
        raise typer.Exit(1)


@network_app.command("rm")
def network_rm(names: list[str]) -> None:
    """Remove networks."""
    client = CTX.client()
    _each(names, lambda n: client.delete(f"/networks/{q(n)}"))


@network_app.command("connect")
def network_connect(
    network: str,
    container: str,
    ip: str = typer.Option(None, "--ip", help="Address on the network."),
    alias: list[str] = typer.Option(None, "--alias", help="Extra DNS name on the network."),
) -> None:
    """Connect a container to a network."""
    reply = CTX.client().post(
        f"/networks/{q(network)}/connect", {"container": container, "ip": ip, "aliases": alias or []}
    )
    _warn_lagging(reply.get("lagging"))


def _warn_lagging(lagging: list[str] | None) -> None:
    if lagging:
        sys.stderr.write(
            f"Warning: not yet programmed on {', '.join(lagging)}: "
            "the endpoint may be unreachable from there for a moment\n"
        )


@node_app.command("ls")
def node_ls(fmt: str = typer.Option("table", "--format", help="table or json.")) -> None:
    """List the hosts of the cluster and whether each is up."""
    nodes = CTX.client().get("/nodes")
    if fmt == "json":
        _print_json(nodes)
        return
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "ADDRESS", "STATUS", "APPLIED REVISION"):
        table.add_column(col)
    for n in nodes:
        status = "[green]up[/green]" if n["up"] else "[red]down[/red]"
        table.add_row(n["name"] + (" (this host)" if n["self"] else ""), n["address"], status, str(n["applied_revision"]))
    out.print(table)


@network_app.command("disconnect")
def network_disconnect(network: str, container: str) -> None:
    """Disconnect a container from a network."""
    CTX.client().post(f"/networks/{q(network)}/disconnect", {"container": container})


@network_app.command("prune")
def network_prune() -> None:
    """Remove every user-defined network with no containers."""
    for name in CTX.client().post("/networks/prune")["removed"]:
        out.print(name)


# ---------------------------------------------------------------------- containers
@app.command(context_settings=RUN_CONTEXT)
def run(
    cmd: list[str] = typer.Argument(None, help="Command to run (after --)."),
    detach: bool = typer.Option(False, "-d", "--detach", help="Run in the background; print the id."),
    rm: bool = typer.Option(False, "--rm", help="Remove the container when it exits."),
    name: str = typer.Option(None, "--name", help="Container name."),
    net: str = typer.Option("bridge", "--net", "--network", help="none, host, bridge, container:NAME or a network."),
    ip: str = typer.Option(None, "--ip", help="Address on the network."),
    hostname: str = typer.Option(None, "--hostname", help="Hostname (default: the name)."),
    rootfs: str = typer.Option(None, "--rootfs", help="Directory to use as the root filesystem."),
    publish: list[str] = typer.Option(
        None, "-p", "--publish", help="Publish [HOSTIP:][HOSTPORT[-END]:]CPORT[-END][/tcp|udp]; repeatable."
    ),
    network_alias: list[str] = typer.Option(None, "--network-alias", help="Extra DNS name on the network."),
) -> None:
    """Run a command in a new container."""
    client = CTX.client()
    created = client.post(
        "/containers",
        {
            "cmd": cmd or [],
            "name": name,
            "net": net,
            "ip": ip,
            "hostname": hostname,
            "detach": detach,
            "auto_remove": rm,
            "rootfs": os.path.abspath(rootfs) if rootfs else None,
            "publish": publish or [],
            "aliases": network_alias or [],
        },
    )
    _warn_lagging(created.get("lagging"))
    if detach:
        out.print(created["id"])
        return
    raise typer.Exit(_run_foreground(client, created, rm))


def _run_foreground(client: Client, created: dict[str, Any], rm: bool) -> int:
    from . import runtime

    name = created["name"]
    spec = runtime.ProcessSpec(**created["process"])

    def started(pid: int, start_time: int) -> None:
        client.post(f"/containers/{q(name)}/started", {"pid": pid, "start_time": start_time})

    try:
        code = runtime.run_foreground(spec, started)
    except TetherError as exc:
        sys.stderr.write(f"Error: {exc}\n")
        code = 127
    if rm:
        try:
            client.delete(f"/containers/{q(name)}?force=1")
        except NotFound:
            pass  # already gone (removed by the daemon after it saw the exit)
    else:
        client.post(f"/containers/{q(name)}/exited", {"code": code})
    return code


def _container_rows(containers: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    for col in ("CONTAINER ID", "NAME", "STATUS", "NET", "ADDRESSES", "PORTS", "COMMAND"):
        table.add_column(col)
    for c in containers:
        status = c["state"] if c["state"] != "exited" else f"exited ({c['exit_code']})"
        addrs = ", ".join(f"{n}={v['address']}" for n, v in sorted(c["networks"].items()))
        ports = ", ".join(
            f"{p['host_ip'] or '0.0.0.0'}:{p['host_port']}->{p['container_port']}/{p['protocol']}"
            for p in c.get("ports", [])
        )
        table.add_row(
            c["id"][:12], c["name"], status, c["net_mode"], addrs or "-", ports or "-", " ".join(c["cmd"])[:40]
        )
    return table


@app.command()
def ps(
    all_: bool = typer.Option(False, "-a", "--all", help="Show exited containers too."),
    fmt: str = typer.Option("table", "--format", help="table or json."),
) -> None:
    """List containers."""
    containers = CTX.client().get("/containers" + ("?all=1" if all_ else ""))
    if fmt == "json":
        _print_json(containers)
    else:
        out.print(_container_rows(containers))


@app.command()
def inspect(names: list[str]) -> None:
    """Show containers as JSON (networks, addresses, MACs, netns path, pid)."""
    client = CTX.client()
    _print_json([client.get(f"/containers/{q(n)}") for n in names])


@app.command(context_settings=RUN_CONTEXT)
def exec(name: str, cmd: list[str] = typer.Argument(..., help="Command to run (after --).")) -> None:  # noqa: A001
    """Run a command inside a running container."""
    from . import runtime

    if cmd and cmd[0] == "--":  # Click keeps the separator once a positional came first
        cmd = cmd[1:]
    info = CTX.client().get(f"/containers/{q(name)}")
    if info["state"] != "running":
        _fail(f"container {name!r} is not running: start a new one with `tether run`")
    raise typer.Exit(runtime.exec_in(info["pid"], cmd))


@app.command()
def logs(name: str) -> None:
    """Print the output of a detached container."""
    sys.stdout.write(CTX.client().get(f"/containers/{q(name)}/logs")["log"])


@app.command()
def stop(
    names: list[str], time_: str = typer.Option("10", "-t", "--time", help="Seconds to wait before SIGKILL.")
) -> None:
    """Stop running containers (SIGTERM, then SIGKILL)."""
    timeout = parse_seconds("-t", time_)
    client = CTX.client()
    _each(names, lambda n: client.post(f"/containers/{q(n)}/stop", {"timeout": timeout}))


@app.command()
def rm(names: list[str], force: bool = typer.Option(False, "-f", "--force", help="Kill it if running.")) -> None:
    """Remove containers."""
    client = CTX.client()
    _each(names, lambda n: client.delete(f"/containers/{q(n)}" + ("?force=1" if force else "")))


@app.command(hidden=True)
def reap(container_id: str) -> None:
    """Called by a detached --rm container's shim when it exits."""
    try:
        Client(CTX.socket).post(f"/containers/reap/{q(container_id)}")
    except TetherError:
        pass  # the daemon's reaper or its next start will do it


@app.command()
def demo(
    keep: bool = typer.Option(False, "--keep", help="Leave the single-host demo containers running."),
    overlay: bool = typer.Option(True, "--overlay/--no-overlay", help="Also run the multi-host part on a lab."),
) -> None:
    """Show every mode working: start containers and print connectivity matrices."""
    from .demo import run_demo, run_overlay_demo

    code = run_demo(CTX.client(), out, keep=keep)
    if overlay:
        code = code or run_overlay_demo(out)
    raise typer.Exit(code)


# ---------------------------------------------------------------------- lab
lab_app = typer.Typer(
    help="A multi-host lab on this machine: hosts h1..hN in namespaces, etcd, a fabric.", no_args_is_help=True
)
app.add_typer(lab_app, name="lab")


@lab_app.command("up")
def lab_up(
    hosts: int = typer.Option(3, "--hosts", help="Number of hosts (h1..hN)."),
    grace: float = typer.Option(10.0, "--grace", help="The daemons' --node-grace, in seconds."),
    prefix: str = typer.Option("", "--prefix", hidden=True, help="Prefix for every namespace name (tests)."),
) -> None:
    """Build the lab: fabric, internet, etcd, and a daemon per host (files: env TETHER_LAB_ROOT)."""
    from . import lab

    lab.run_up(hosts, grace, name_prefix=prefix)


@lab_app.command("status")
def lab_status(fmt: str = typer.Option("table", "--format", help="table or json.")) -> None:
    """Show the lab's hosts and etcd, and whether each is alive."""
    from . import lab

    lab.print_status(fmt)


@lab_app.command("down")
def lab_down(
    prefix: str = typer.Option(None, "--prefix", hidden=True, help="The lab's prefix, if lab.json is lost."),
) -> None:
    """Remove the lab: containers, daemons, etcd, namespaces, files."""
    from . import lab

    lab.run_down(prefix)


def main() -> None:
    try:
        app()
    except TetherError as exc:
        sys.stderr.write(f"Error: {exc}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
