"""The container verbs: ``run``, ``ps``, ``inspect``, ``exec``, ``logs``, ``stop``, ``rm``.

The one exception to "the daemon does the work" is a foreground ``run``: the CLI itself
runs the process (stdin/stdout attached) in the sandbox the daemon prepared, and reports
its pid and exit code back.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from rich.table import Table

from ..api.client import Client, q
from ..errors import NotFound, TetherError
from ..validate import parse_seconds
from .common import CTX, RUN_CONTEXT, app, each, fail, out, print_json, warn_lagging

__all__: list[str] = []


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
    warn_lagging(created.get("lagging"))
    if detach:
        out.print(created["id"])
        return
    raise typer.Exit(_run_foreground(client, created, rm))


def _run_foreground(client: Client, created: dict[str, Any], rm: bool) -> int:
    from .. import runtime

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
        print_json(containers)
    else:
        out.print(_container_rows(containers))


@app.command()
def inspect(names: list[str]) -> None:
    """Show containers as JSON (networks, addresses, MACs, netns path, pid)."""
    client = CTX.client()
    print_json([client.get(f"/containers/{q(n)}") for n in names])


@app.command(context_settings=RUN_CONTEXT)
def exec(name: str, cmd: list[str] = typer.Argument(..., help="Command to run (after --).")) -> None:  # noqa: A001
    """Run a command inside a running container."""
    from .. import runtime

    if cmd and cmd[0] == "--":  # Click keeps the separator once a positional came first
        cmd = cmd[1:]
    info = CTX.client().get(f"/containers/{q(name)}")
    if info["state"] != "running":
        fail(f"container {name!r} is not running: start a new one with `tether run`")
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
    each(names, lambda n: client.post(f"/containers/{q(n)}/stop", {"timeout": timeout}))


@app.command()
def rm(names: list[str], force: bool = typer.Option(False, "-f", "--force", help="Kill it if running.")) -> None:
    """Remove containers."""
    client = CTX.client()
    each(names, lambda n: client.delete(f"/containers/{q(n)}" + ("?force=1" if force else "")))


@app.command(hidden=True)
def reap(container_id: str) -> None:
    """Called by a detached --rm container's shim when it exits."""
    try:
        Client(CTX.socket).post(f"/containers/reap/{q(container_id)}")
    except TetherError:
        pass  # the daemon's reaper or its next start will do it


