"""``tether demo``: every mode, started for real and probed with real packets.

It starts one container per mode on the daemon the CLI talks to, probes each pair with
ICMP and TCP from inside the containers (through ``tether exec``'s runtime path), prints
the matrix against what each mode should allow, and removes everything it made. Packets
only ever go to the demo's own containers, the host's bridge address and loopback.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from .api.client import Client, q
from .errors import TetherError

if TYPE_CHECKING:
    from .lab import LabHost

__all__ = ["run_demo"]


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_EXEC = "import sys; from tether import runtime; sys.exit(runtime.exec_in(int(sys.argv[1]), sys.argv[2:]))"


def _exec(pid: int, cmd: list[str]) -> tuple[int, str]:
    """Run ``cmd`` inside the container, quietly; (exit status, stdout)."""
    result = subprocess.run(
        [sys.executable, "-c", _EXEC, str(pid), *cmd], capture_output=True, text=True, timeout=30
    )
    return result.returncode, result.stdout


def _probe(pid: int, cmd: list[str]) -> bool:
    return _exec(pid, cmd)[0] == 0


def run_demo(client: Client, console: Console, keep: bool = False) -> int:
    """The single-host part: one container per mode on the daemon behind ``client``, the
    connectivity matrix probed from inside each and checked against what the mode promises;
    0 if every cell matches. Removes its containers afterwards unless ``keep``."""
    tag = uuid.uuid4().hex[:4]
    names = {k: f"demo-{tag}-{k}" for k in ("c1", "c2", "none", "host", "join", "late")}
    port = _free_loopback_port()
    made: list[str] = []
    try:
        console.print(
            f"[bold]tether demo[/bold]: one container per mode, probed with real packets "
            f"(containers demo-{tag}-*, removed at the end)"
        )
        started = _start_mode_containers(client, names, port, made)
        c1, c2 = started["c1"], started["c2"]
        bridge_net = client.get(f"/networks/{q('bridge')}")
        a1 = c1["networks"]["bridge"]["address"]
        a2 = c2["networks"]["bridge"]["address"]
        gw = bridge_net["gateway"]
        # wait for c1's loopback-only service to listen
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _probe(c1["pid"], _tcp(port)):
            time.sleep(0.1)

        targets = [
            ("→c1", ["ping", "-c1", "-W1", a1]),
            ("→c2", ["ping", "-c1", "-W1", a2]),
            ("→host", ["ping", "-c1", "-W1", gw]),
            ("→c1 lo", _tcp(port)),
        ]
        rows = [
            ("host", started["host"], [True, True, True, False]),
            ("none", started["none"], [False, False, False, False]),
            ("bridge c1", c1, [True, True, True, True]),
            ("bridge c2", c2, [True, True, True, False]),
            ("container:c1", started["join"], [True, True, True, True]),
            ("none+connect", started["late"], [True, True, True, False]),
        ]
        console.print(
            f"columns: c1 = ping {a1} and c2 = ping {a2} (two containers on the default bridge), "
            f"host = ping {gw} (the host's address on that bridge), "
            f"c1 lo = TCP to 127.0.0.1:{port}, which c1 serves on its own loopback only"
        )
        console.print(
            "rows: where each probe runs; none+connect was started with --net none, then connected to the bridge"
        )
        table, mismatches = _mode_matrix(targets, rows)
        console.print(table)
        console.print(
            "[green]✓[/green] answered, [red]✗[/red] no answer: blocked, as it should be (a none container has "
            "only lo; c1's loopback is reachable only inside c1's namespace, which container:c1 shares). A cell that "
            "breaks a mode's promise would be marked (unexpected)."
        )
        if mismatches:
            console.print(f"[bold red]{mismatches} cell(s) differ from what the modes promise[/bold red]")
            return 1
        console.print("[bold green]every mode behaves as promised[/bold green]")
        return 0
    finally:
        if not keep:
            _remove_containers(client, console, made)


def _start_mode_containers(
    client: Client, names: dict[str, str], port: int, made: list[str]
) -> dict[str, dict[str, Any]]:
    """Start the demo's containers (c1 serving TCP on its loopback ``port``; "late"
    connected to the bridge after it started), each name appended to ``made`` as soon as
    it exists; their records by key of ``names``. From ``run_demo`` only."""
    sleeper = ["sleep", "3600"]

    def run(name: str, net: str, cmd: list[str]) -> dict[str, Any]:
        client.post("/containers", {"name": name, "net": net, "cmd": cmd, "detach": True})
        made.append(name)
        return dict(client.get(f"/containers/{q(name)}"))

    started = {
        "c1": run(names["c1"], "bridge", ["python3", "-m", "http.server", str(port), "--bind", "127.0.0.1"]),
        "c2": run(names["c2"], "bridge", sleeper),
        "none": run(names["none"], "none", sleeper),
        "host": run(names["host"], "host", sleeper),
        "join": run(names["join"], f"container:{names['c1']}", sleeper),
        "late": run(names["late"], "none", sleeper),
    }
    client.post(f"/networks/{q('bridge')}/connect", {"container": names["late"]})
    started["late"] = dict(client.get(f"/containers/{q(names['late'])}"))
    return started


def _mode_matrix(
    targets: list[tuple[str, list[str]]], rows: list[tuple[str, dict[str, Any], list[bool]]]
) -> tuple[Table, int]:
    """The connectivity table, each cell probed from inside the row's container, and how
    many cells differ from the row's expectations. From ``run_demo`` only."""
    table = Table(title="connectivity, measured with real packets", header_style="bold")
    table.add_column("from")
    table.add_column("interfaces")
    for label, _ in targets:
        table.add_column(label, justify="center")
    mismatches = 0
    for label, info, expected in rows:
        links = _exec(info["pid"], ["ip", "-o", "link"])[1]
        ifnames = _link_names(links)
        if label == "host":
            ifnames = f"the host's ({len(links.splitlines())})"
        cells = []
        for (tlabel, cmd), want in zip(targets, expected):
            got = _probe(info["pid"], cmd)
            mark = "[green]✓[/green]" if got else "[red]✗[/red]"
            if got != want:
                mismatches += 1
                mark += " [bold yellow](unexpected)[/bold yellow]"
            cells.append(mark)
        table.add_row(label, ifnames, *cells)
    return table, mismatches


def _remove_containers(client: Client, console: Console, made: list[str]) -> None:
    """Force-remove the containers in ``made``, newest first, reporting (not raising) each
    failure. From ``run_demo``'s cleanup."""
    for name in reversed(made):
        try:
            client.delete(f"/containers/{q(name)}?force=1")
        except TetherError as exc:
            console.print(f"cleanup of {name}: {exc}")


def run_overlay_demo(console: Console, hosts: int = 3) -> int:
    """The multi-host part: a throwaway lab of ``hosts`` hosts with etcd, one overlay
    network, one container per host; every container and every host pings every container
    and the lab's internet. Then, on the same lab, macvlan: two hosts' containers on the
    lab's LAN (``_macvlan_part``). Skipped (with a word) when etcd is not installed."""
    import shutil as _shutil
    import tempfile

    from . import lab

    if _shutil.which("etcd") is None:  # the demo installs nothing (`make demo` has it installed)
        console.print("[yellow]multi-host part skipped[/yellow]: etcd is not installed (apt-get install etcd-server)")
        return 0
    tag = f"dm{uuid.uuid4().hex[:4]}"  # the lab's namespace names start with it: no clash with another lab
    root, state_root = tempfile.mkdtemp(prefix="tether-demo-lab-"), tempfile.mkdtemp(prefix="tether-demo-state-")
    console.print(
        f"[bold]multi-host[/bold]: {hosts} simulated hosts (h1..h{hosts}, network namespaces on this machine) "
        f"sharing etcd as the cluster store; one overlay network, one container on each host"
    )
    try:
        def report(step: str) -> None:
            console.print(f"  ready: {_lab_step(step.removeprefix(tag))}")

        info = lab.lab_up(hosts, 10.0, root, state_root, tag, report=report)
        containers = _start_overlay_containers(info.hosts)
        inet_ip = lab.INET_IP
        targets = [(f"→{label.split('@')[0]}", addr) for label, _, addr, _ in containers] + [("→internet", inet_ip)]
        table, misses = _overlay_matrix(info.hosts, containers, targets)
        console.print(table)
        console.print(
            f"columns: each container's overlay address; internet = ping {inet_ip}, a namespace standing for "
            f"the internet, reached through the host's NAT; own host = the container's gateway, its own host"
        )
        if misses:
            console.print(f"[bold red]{misses} overlay probe(s) failed[/bold red]")
        else:
            console.print("[bold green]one interface per container; every host and container reaches every "
                          "container, its host and the outside[/bold green]")
        if len(info.hosts) >= 2:
            misses += _macvlan_part(console, info.hosts[0], info.hosts[1], lab.LAN_PARENT)
        return 1 if misses else 0
    finally:
        lab.lab_down(root, state_root, tag)
        _shutil.rmtree(root, ignore_errors=True)
        _shutil.rmtree(state_root, ignore_errors=True)


def _lab_step(step: str) -> str:
    """A step of ``lab.lab_up`` ("fabric", "etcd", "h1 daemon", the lab's prefix taken off) in words."""
    if step == "fabric":
        return 'the hosts\' shared LAN (the "fabric") and a namespace "internet" standing for the outside world'
    if step == "etcd":
        return "etcd, the cluster store"
    if step.endswith(" daemon"):
        return f"the tether daemon on {step.removesuffix(' daemon')}"
    return step


def _start_overlay_containers(hosts: list[LabHost]) -> list[tuple[str, int, str, str]]:
    """Create the overlay network "demo-ov" (on the first host) and one container on each
    host; (label, pid, address, gateway) of each. From ``run_overlay_demo`` only."""
    clients = {h.name: Client(h.socket) for h in hosts}
    first = hosts[0]
    clients[first.name].post("/networks", {"name": "demo-ov", "driver": "overlay"})
    containers = []
    for i, h in enumerate(hosts, 1):
        reply = clients[h.name].post(
            "/containers", {"name": f"c{i}", "net": "demo-ov", "cmd": ["sleep", "3600"], "detach": True}
        )
        net = reply["networks"]["demo-ov"]
        containers.append((f"c{i}@h{h.index}", reply["pid"], net["address"], net["gateway"]))
    return containers


def _overlay_matrix(
    hosts: list[LabHost], containers: list[tuple[str, int, str, str]], targets: list[tuple[str, str]]
) -> tuple[Table, int]:
    """The overlay reachability table, pinged from inside each container (to every target
    and its own host) and from each lab host's namespace, and how many pings failed.
    From ``run_overlay_demo`` only."""
    table = Table(title="overlay reachability, measured with real packets", header_style="bold")
    table.add_column("from")
    table.add_column("interfaces")
    for label, _ in targets:
        table.add_column(label, justify="center")
    table.add_column("→own host", justify="center")
    misses = 0
    for label, pid, _, gateway in containers:
        links = _exec(pid, ["ip", "-o", "link"])[1]
        cells = []
        for addr in [a for _, a in targets] + [gateway]:
            ok = _probe(pid, ["ping", "-c1", "-W1", addr])
            misses += not ok
            cells.append("[green]✓[/green]" if ok else "[red]✗[/red]")
        table.add_row(label, _link_names(links), *cells)
    for h in hosts:
        cells = []
        for _, addr in targets:
            ok = subprocess.run(["ip", "netns", "exec", h.netns, "ping", "-c1", "-W1", addr],
                                capture_output=True).returncode == 0
            misses += not ok
            cells.append("[green]✓[/green]" if ok else "[red]✗[/red]")
        table.add_row(f"host h{h.index}", "(the host)", *cells, "-")
    return table, misses


# The LAN of the macvlan part: a documentation prefix the lab's underlay does not use, one
# --ip-range per host (two daemons share the LAN: their ranges must not meet).
_LAN_SUBNET, _LAN_GATEWAY = "198.51.100.0/24", "198.51.100.1"
_LAN_RANGES = ("198.51.100.32/28", "198.51.100.48/28")


def _macvlan_part(console: Console, first: LabHost, second: LabHost, parent: str) -> int:
    """macvlan on the lab's LAN: a network on ``parent`` (its MTU, the LAN's, taken by the
    driver) on each of two hosts (the first with ``host_access``),
    a container on each; pings container to container across the hosts, and
    host to its own container, each against what should happen. The number of cells that
    differ. From ``run_overlay_demo`` only (the lab goes with it)."""
    console.print(
        f"[bold]macvlan[/bold]: on h{first.index} and h{second.index}, a macvlan network on their LAN interface "
        f"{parent} (subnet {_LAN_SUBNET}, --ip-range {_LAN_RANGES[0]} and {_LAN_RANGES[1]}), "
        f"h{first.index}'s with -o host_access=true; one container on each"
    )
    started = {}
    try:
        for host, ip_range, name in ((first, _LAN_RANGES[0], "m1"), (second, _LAN_RANGES[1], "m2")):
            client = Client(host.socket)
            options = {"parent": parent, **({"host_access": "true"} if host is first else {})}
            client.post("/networks", {"name": "demo-lan", "driver": "macvlan", "subnet": _LAN_SUBNET,
                                      "gateway": _LAN_GATEWAY, "ip_range": ip_range, "options": options})
            reply = client.post("/containers", {"name": name, "net": "demo-lan", "cmd": ["sleep", "3600"],
                                                "detach": True})
            started[name] = (f"{name}@h{host.index}", reply["pid"], reply["networks"]["demo-lan"]["address"])
        shim = Client(first.socket).get(f"/networks/{q('demo-lan')}").get("host_interface", "?")
    except TetherError as exc:  # the lab goes with everything in it: nothing to undo here
        console.print(f"[bold red]the macvlan part could not start[/bold red]: {exc}")
        return 1
    (l1, pid1, a1), (l2, pid2, a2) = started["m1"], started["m2"]

    def from_host(host: LabHost, address: str) -> bool:
        return subprocess.run(["ip", "netns", "exec", host.netns, "ping", "-c1", "-W1", address],
                              capture_output=True).returncode == 0

    checks = [
        (l1, f"{l2} {a2}", "across the LAN, no overlay", True, lambda: _probe(pid1, ["ping", "-c1", "-W1", a2])),
        (l2, f"{l1} {a1}", "across the LAN, no overlay", True, lambda: _probe(pid2, ["ping", "-c1", "-W1", a1])),
        (f"host h{first.index}", f"{l1} {a1}", f"host_access: via {shim}", True, lambda: from_host(first, a1)),
        (f"host h{second.index}", f"{l2} {a2}", "no host_access: the kernel keeps them apart", False,
         lambda: from_host(second, a2)),
    ]
    table = Table(title="macvlan on the lab's LAN, measured with real packets", header_style="bold")
    for col in ("from", "to", "how", "ping"):
        table.add_column(col, justify="center" if col == "ping" else "left")
    misses = 0
    for src, dst, why, want, probe in checks:
        got = probe()
        mark = "[green]✓[/green]" if got else "[red]✗[/red]"
        if got != want:
            misses += 1
            mark += " [bold yellow](unexpected)[/bold yellow]"
        table.add_row(src, dst, why, mark)
    console.print(table)
    if misses:
        console.print(f"[bold red]{misses} macvlan probe(s) differ from what should happen[/bold red]")
    else:
        console.print("[bold green]containers on two hosts meet on the LAN directly; the host reaches its own "
                      "macvlan container only with host_access[/bold green]")
    return misses


def _link_names(links: str) -> str:
    """The interface names in ``ip -o link`` output, comma-separated (``@peer`` dropped)."""
    return ",".join(line.split(":")[1].strip().split("@")[0] for line in links.splitlines() if ":" in line)


def _tcp(port: int) -> list[str]:
    return [
        "python3",
        "-c",
        f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1).close()",
    ]
