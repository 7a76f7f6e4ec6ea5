"""What ``tether lab up``, ``down`` and ``status`` print: a Rich progress bar and table on
a terminal, plain lines in a pipe or log.

Design note. The work is ``processes``'; this module only turns its reports and results
into output and its errors into an exit status, so the library calls (``lab_up`` ...)
stay quiet for tests, benchmarks and ``tether demo``. Rich is imported inside the
functions: ``import tether.lab`` (``tether --host`` needs it) stays light.
"""

from __future__ import annotations

import json
import os
import sys
import time

from ..errors import InvalidInput, SystemFailure
from .plan import (
    DEFAULT_ROOT,
    DEFAULT_STATE_ROOT,
    FABRIC_IP,
    LAN_PARENT,
    UNDERLAY_NET,
    UNDERLAY_PREFIXLEN,
    default_root,
    default_state_root,
)
from .processes import lab_down, lab_status, lab_up

__all__ = ["print_status", "run_down", "run_up"]


def run_up(hosts: int, grace: float, name_prefix: str = "", state_root: str | None = None) -> None:
    """``tether lab up``: build the lab with a progress bar, then say how to use it."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    started = time.monotonic()
    with Progress(
        TextColumn("[bold]lab up[/bold] {task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # in a log, the "ok" lines alone say it all
    ) as progress:
        task = progress.add_task("fabric", total=hosts + 2)

        def report(step: str) -> None:
            progress.console.print(f"  [green]ok[/green] {step}  [dim]{time.monotonic() - started:.2f} s[/dim]")
            progress.update(task, advance=1, description="etcd" if step == "fabric" else "daemons")

        info = lab_up(
            hosts,
            grace,
            root=default_root(),
            state_root=state_root or default_state_root(),
            name_prefix=name_prefix,
            report=report,
        )
    first = info.hosts[0].name
    console.print(
        f"lab up: {len(info.hosts)} host(s) {info.hosts[0].name}..{info.hosts[-1].name} on "
        f"{UNDERLAY_NET}.0/{UNDERLAY_PREFIXLEN} (each host's {LAN_PARENT}, also the macvlan parent), "
        f"etcd at {info.etcd_url}, "
        f"in {time.monotonic() - started:.1f} s\n"
        f"try: tether --host {first} network ls    ip netns exec {first} ping {FABRIC_IP}"
    )


def run_down(name_prefix: str | None = None) -> None:
    """``tether lab down``: remove everything; exit 1 after the end if anything failed.

    Should lab.json be lost, the names of the standard lab (no prefix, under
    /run/tether-lab) are assumed; under another root only with an explicit prefix, so
    that a test's ``lab down`` can never take a user's lab with it."""
    root = default_root()
    standard = os.path.abspath(root) == DEFAULT_ROOT
    if name_prefix is None and standard:
        name_prefix = ""
    state_root = os.environ.get("TETHER_LAB_STATE_ROOT") or (DEFAULT_STATE_ROOT if standard else None)
    errors = lab_down(root, state_root=state_root, name_prefix=name_prefix)
    for error in errors:
        sys.stderr.write(f"Warning: {error}\n")
    if errors:
        raise SystemFailure(f"lab down finished with {len(errors)} error(s) (above); run it again to retry")
    sys.stdout.write("lab down\n")


def print_status(fmt: str = "table") -> None:
    """``tether lab status``: a table of hosts and etcd, or the same as JSON."""
    status = lab_status(default_root())
    if fmt == "json":
        sys.stdout.write(json.dumps(status, indent=2, sort_keys=True) + "\n")
        return
    if fmt != "table":
        raise InvalidInput(f"--format {fmt!r}: use table or json")
    from rich.console import Console
    from rich.table import Table

    def yes_no(ok: bool) -> str:
        return "[green]yes[/green]" if ok else "[red]no[/red]"

    table = Table(box=None, header_style="bold")
    for col in ("HOST", "UNDERLAY", "DAEMON PID", "ALIVE", "SOCKET"):
        table.add_column(col)
    for h in status["hosts"]:
        table.add_row(h["name"], h["underlay_ip"], str(h["daemon_pid"] or "-"), yes_no(h["alive"]), h["socket"])
    etcd = status["etcd"]
    console = Console(highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = 1000  # a pipe gets whole socket paths, not an 80-column cut
    console.print(table)
    console.print(
        f"etcd {etcd['url']} (pid {etcd['pid'] or '-'}, in {status['fabric']['netns']}): alive {yes_no(etcd['alive'])}"
    )
    lan = status["lan"]
    console.print(
        f"LAN parent {lan['parent']} on every host ({lan['subnet']}, bridged in {status['fabric']['netns']}): "
        f"macvlan networks use -o parent={lan['parent']}"
    )
