"""``tether run`` and ``tether exec``: the commands that run a process in a container.

A foreground ``run`` is the one exception to "the daemon does the work": the CLI itself
runs the process (stdin/stdout attached) in the sandbox the daemon prepared, and reports
its pid and exit code back.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer

from ..api.client import Client, q
from ..errors import NotFound, TetherError
from .common import CTX, RUN_CONTEXT, app, fail, out, warn_lagging

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
