"""``tether run``, ``tether exec`` and ``tether port``: running a process in a container.

A foreground ``run`` is the one exception to "the daemon does the work": the CLI itself
runs the process (stdin/stdout attached, or with ``-t`` a pty relayed to the user's
terminal) in the sandbox the daemon prepared, and reports its pid and exit code back.

The environment is resolved here, as Docker's CLI does: ``-e KEY`` takes this client's
value, ``--env-file`` is read here; the daemon gets ``KEY=VALUE`` entries only. Values
given as ``-e KEY=VALUE`` are on this command's own line while it runs (as with
``docker run``); ``-e KEY`` and ``--env-file`` keep them off every command line.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer

from ..api.client import Client, q
from ..errors import NotFound, TetherError
from .common import CTX, RUN_CONTEXT, app, fail, out, warn_lagging
from .filters import parse_labels

__all__: list[str] = []


@app.command(context_settings=RUN_CONTEXT)
def run(
    cmd: list[str] = typer.Argument(None, help="Command to run (after --)."),
    detach: bool = typer.Option(False, "-d", "--detach", help="Run in the background; print the id."),
    rm: bool = typer.Option(False, "--rm", help="Remove the container when it exits."),
    name: str = typer.Option(None, "--name", help="Container name."),
    net: str = typer.Option("bridge", "--net", "--network", help="none, host, bridge, container:NAME or a network."),
    ip: str = typer.Option(None, "--ip", help="IPv4 address on the network."),
    ip6: str = typer.Option(None, "--ip6", help="IPv6 address on a dual-stack network."),
    hostname: str = typer.Option(None, "--hostname", help="Hostname (default: the name)."),
    rootfs: str = typer.Option(None, "--rootfs", help="Directory to use as the root filesystem."),
    publish: list[str] = typer.Option(
        None, "-p", "--publish", help="Publish [HOSTIP:][HOSTPORT[-END]:]CPORT[-END][/tcp|udp]; repeatable."
    ),
    network_alias: list[str] = typer.Option(None, "--network-alias", help="Extra DNS name on the network."),
    label: list[str] = typer.Option(None, "-l", "--label", help="Label KEY=VALUE (or KEY) on the container; repeatable."),
    restart: str = typer.Option(
        "no", "--restart", help="When it exits: no, on-failure[:N], always or unless-stopped (kept across daemon restarts)."
    ),
    env: list[str] = typer.Option(
        None, "-e", "--env", metavar="KEY[=VALUE]", help="Set a variable (KEY alone: this shell's value); repeatable."
    ),
    env_file: list[str] = typer.Option(
        None, "--env-file", metavar="FILE", help="Read KEY=VALUE lines (# comments) from FILE; repeatable."
    ),
    workdir: str = typer.Option(None, "-w", "--workdir", metavar="DIR", help="Working directory (default: /)."),
    interactive: bool = typer.Option(False, "-i", "--interactive", help="Keep stdin attached (with -d: kept open)."),
    tty: bool = typer.Option(False, "-t", "--tty", help="Give the container a terminal (-it: an interactive one)."),
    add_host: list[str] = typer.Option(
        None, "--add-host", metavar="NAME:IP", help="Add NAME to /etc/hosts (IP may be host-gateway); repeatable."
    ),
    dns: list[str] = typer.Option(None, "--dns", metavar="IP", help="Nameserver for the container; repeatable."),
    dns_search: list[str] = typer.Option(None, "--dns-search", metavar="DOMAIN", help="DNS search domain; repeatable."),
    dns_option: list[str] = typer.Option(None, "--dns-option", metavar="OPT", help="resolv.conf option; repeatable."),
    mac_address: str = typer.Option(None, "--mac-address", metavar="MAC", help="MAC of its interface on the network."),
    publish_all: bool = typer.Option(False, "-P", "--publish-all", help="Publish every --expose port on a free host port."),
    expose: list[str] = typer.Option(None, "--expose", metavar="PORT[/PROTO]", help="Expose a port or range; repeatable."),
) -> None:
    """Run a command in a new container."""
    if tty and interactive and not detach and not os.isatty(0):
        fail("the input device is not a TTY: -it needs a terminal on stdin (leave out -t to pipe input in)")
    environment = _environment(env or [], env_file or [])
    client = CTX.client()
    created = client.post(
        "/containers",
        {
            "cmd": cmd or [],
            "name": name,
            "net": net,
            "ip": ip,
            "ip6": ip6,
            "hostname": hostname,
            "detach": detach,
            "auto_remove": rm,
            "rootfs": os.path.abspath(rootfs) if rootfs else None,
            "publish": publish or [],
            "aliases": network_alias or [],
            "labels": parse_labels(label),
            "restart": restart,
            "env": environment,
            "workdir": workdir,
            "tty": tty,
            "interactive": interactive,
            "dns": dns or [],
            "dns_search": dns_search or [],
            "dns_options": dns_option or [],
            "extra_hosts": add_host or [],
            "mac_address": mac_address,
            "expose": expose or [],
            "publish_all": publish_all,
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
def exec(  # noqa: A001
    name: str,
    cmd: list[str] = typer.Argument(..., help="Command to run (after --)."),
    interactive: bool = typer.Option(False, "-i", "--interactive", help="Keep stdin attached."),
    tty: bool = typer.Option(False, "-t", "--tty", help="Give the command a terminal (-it: an interactive one)."),
    env: list[str] = typer.Option(
        None, "-e", "--env", metavar="KEY[=VALUE]", help="Set a variable (KEY alone: this shell's value); repeatable."
    ),
    workdir: str = typer.Option(None, "-w", "--workdir", metavar="DIR", help="Working directory (default: the container's)."),
) -> None:
    """Run a command inside a running container, in its environment (plus -e)."""
    from .. import runtime

    if cmd and cmd[0] == "--":  # Click keeps the separator once a positional came first
        cmd = cmd[1:]
    if tty and interactive and not os.isatty(0):
        fail("the input device is not a TTY: -it needs a terminal on stdin (leave out -t to pipe input in)")
    if workdir is not None and not workdir.startswith("/"):
        fail(f"invalid --workdir {workdir!r}: give an absolute path, such as /app")
    extra = _environment(env or [], [])
    info = CTX.client().get(f"/containers/{q(name)}")
    if info["state"] != "running":
        fail(f"container {name!r} is not running: start it with `tether start {name}`")
    environment = runtime.container_environment([*info.get("env", []), *extra], info["hostname"], tty)
    raise typer.Exit(
        runtime.exec_in(info["pid"], cmd, env=environment, tty=tty, interactive=interactive, workdir=workdir)
    )


@app.command()
def port(
    name: str,
    which: str = typer.Argument(None, metavar="[PORT[/PROTO]]", help="Only this container port (default protocol tcp)."),
) -> None:
    """List a container's published ports, as `docker port` does: 80/tcp -> 0.0.0.0:32768."""
    info = CTX.client().get(f"/containers/{q(name)}")
    mappings = sorted(info.get("ports") or [], key=lambda p: (p["container_port"], p["protocol"], p["host_port"]))
    dual = any(n.get("address6") for n in (info.get("networks") or {}).values())
    if which is None:
        for p in mappings:
            for where in _port_addresses(p, dual):
                out.print(f"{p['container_port']}/{p['protocol']} -> {where}")
        return
    port_text, _, protocol = which.partition("/")
    protocol = (protocol or "tcp").lower()
    if not (port_text.isascii() and port_text.isdigit()) or protocol not in ("tcp", "udp"):
        fail(f"invalid port {which!r}: use PORT or PORT/tcp or PORT/udp, as in `tether port {name} 80`")
    found = [p for p in mappings if p["container_port"] == int(port_text) and p["protocol"] == protocol]
    if not found:
        fail(f"no public port {int(port_text)}/{protocol} published for container {name!r}")
    for p in found:
        for where in _port_addresses(p, dual):
            out.print(where)


def _port_addresses(p: dict[str, Any], dual: bool) -> list[str]:
    """Where a published port listens, as Docker prints it: ``0.0.0.0:8080``, and
    ``[::]:8080`` too on a dual-stack container; ``[::1]:8080`` for a v6 host address."""
    host_ip, port = p["host_ip"], p["host_port"]
    if host_ip:
        return [f"[{host_ip}]:{port}" if ":" in host_ip else f"{host_ip}:{port}"]
    return [f"0.0.0.0:{port}", *([f"[::]:{port}"] if dual else [])]


# ---------------------------------------------------------------------- the environment
def _environment(options: list[str], files: list[str]) -> list[str]:
    """``--env-file`` lines, then ``-e`` options, as KEY=VALUE entries (a later one of the
    same KEY wins in the container); a KEY that is not set here is left out."""
    entries = [entry for path in files for entry in _read_env_file(path)]
    for item in options:
        key, sep, _ = item.partition("=")
        if not key:
            fail(f"invalid -e {item!r}: the variable name is empty; use -e KEY=VALUE or -e KEY")
        if "\0" in item:
            fail(f"invalid -e for {key!r}: it contains a NUL byte")
        if sep:
            entries.append(item)
        elif key in os.environ:
            entries.append(f"{key}={os.environ[key]}")
    return entries


def _read_env_file(path: str) -> list[str]:
    """Docker's --env-file: one KEY=VALUE per line, taken as it is (no quotes removed, no
    spaces trimmed but those before KEY); blank lines and lines starting with # skipped;
    a line with KEY alone takes this shell's value, or is left out when it has none."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        fail(f"cannot read --env-file {path}: {exc.strerror}")
    entries = []
    for number, line_bytes in enumerate(raw.split(b"\n"), start=1):
        if number == 1 and line_bytes.startswith(b"\xef\xbb\xbf"):
            line_bytes = line_bytes[3:]  # a UTF-8 byte order mark
        try:
            line = line_bytes.decode("utf-8").removesuffix("\r").lstrip()
        except UnicodeDecodeError:
            fail(f"invalid --env-file {path}: line {number} is not valid UTF-8")
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not key:
            fail(f"invalid --env-file {path}: line {number} has no variable name: {line!r}")
        if any(c in key for c in " \t"):
            fail(f"invalid --env-file {path}: line {number}: variable {key!r} contains whitespace")
        if "\0" in line:
            fail(f"invalid --env-file {path}: line {number}: variable {key!r} contains a NUL byte")
        if sep:
            entries.append(f"{key}={value}")
        elif key in os.environ:
            entries.append(f"{key}={os.environ[key]}")
    return entries
