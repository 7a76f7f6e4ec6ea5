"""``tether trace``: why can (or can't) container A reach B? Hop by hop, with the fix.

    model.py    Step, Trace, Target (the destination as typed): values, no I/O
    checks.py   the verdict logic: facts in, Steps out (tether's forward chain evaluated
                from its model; a probe's nftables trace weighed against it)
    tracer.py   the walk, in the daemon: records, kernel reads and one probe packet

Only the values are re-exported here, so the CLI can parse a destination without loading
the daemon's side (``from tether.trace.tracer import trace`` there).
"""

from __future__ import annotations

from .model import MARKS, Step, Target, Trace, parse_target

__all__ = ["MARKS", "Step", "Target", "Trace", "parse_target"]
