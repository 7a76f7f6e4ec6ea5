"""A daemon killed in the middle of `tether trace` leaves its armed trace table behind: the
next daemon removes it (its name proves it tether's), and nothing else."""

from __future__ import annotations

import signal

from conftest import Host


def test_a_restarted_daemon_removes_a_left_trace_table(host: Host) -> None:
    host.kill_daemon(signal.SIGKILL)
    script = "table ip tether_trace7x1 {}\ntable ip6 tether_trace7x2 {}\ntable ip admin_trace1x1 {}\n"
    host.in_host("sh", "-c", f"printf '{script}' | nft -f -")
    host.start_daemon()
    tables = host.in_host("nft", "list", "tables").stdout.split("\n")
    assert "table ip admin_trace1x1" in tables  # not tether's: left alone
    assert not [t for t in tables if "tether_trace" in t], tables
