"""The controller: the one orchestrator of tether. Only it combines store, IPAM and drivers.

One class, in rooms by noun, each a layer over the one below (no circles):

    core.py        ControllerCore  parts, lookups, ``_operation`` (undo, barrier, lagging)
    networks.py    NetworkVerbs    create (subnet placement), ls, inspect, rm, prune
    endpoints.py   EndpointVerbs   attach/detach, requested addresses, ports, names
    processes.py   ProcessVerbs    a container's process: start, started, exited, logs
    containers.py  ContainerVerbs  run, start, stop, restart, rm, ps, inspect, connect, disconnect
    external.py    ExternalVerbs   other runtimes' sandboxes (what the CNI and Docker doors call)
    reconcile.py   Reconciler      kernel and store agree again after a restart or a crash

Beside them: ``names.py`` (names for containers run without one) and ``restarts.py``
(restart policies, and the daemon's thread that watches every container's process).

Front ends (API, CLI through it, the doors) call only public verbs; what is specific to a
kind of network lives in its driver (``drivers/``), never here.
"""

from .core import Operation, Outcome
from .external import RUNTIMES, Attachment, external_name
from .reconcile import Reconciler

__all__ = ["Controller", "Outcome", "Operation", "Attachment", "RUNTIMES", "external_name"]


class Controller(Reconciler):
    """Every verb of tether's daemon; see the rooms above."""
