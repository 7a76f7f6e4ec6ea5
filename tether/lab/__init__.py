"""The lab: several simulated hosts on this one machine, for trying tether's overlay networks.

A lab host is a network namespace (``h1`` ... ``hN``) running its own tether daemon; the
hosts share an underlay the way machines share a LAN:

    h1 (10.99.0.1) --eth0/veth--+
    h2 (10.99.0.2) --eth0/veth--+-- bridge "underlay" (10.99.0.254) in tl-fabric --- tl-inet
    ...                         |   etcd on 10.99.0.254:2379, ip_forward=1         (203.0.113.10)
    hN (10.99.0.N) --eth0/veth--+

* Namespaces, not containers: every host is a plain named netns, so ``ip netns exec h3
  ping ...`` works and the daemons' container namespaces (``h3-web``) sit beside them in
  /var/run/netns.
* The underlay MTU is 1400, as on this machine's real eth0, so overlay MTUs are derived
  the way they will be on real hosts.
* Each host's ``eth0`` is its LAN-facing interface, and a macvlan parent too (``LAN_PARENT``):
  macvlan containers on different hosts meet on the fabric's LAN directly, with no overlay.

The modules, each owning one part (this file only re-exports):

    plan       what a lab is: LabInfo, LabHost, names, addresses, paths, lab.json (no I/O
               beyond lab.json)
    underlay   namespaces, bridge and veths, built with ``ip -batch``
    etcd       the etcd binary and a member's command line; EtcdServer for tests
    processes  etcd and the daemons as processes; lab_up, lab_down, lab_status
    present    what ``tether lab up|down|status`` print
    enter      ``tether --host NAME``: the CLI re-run inside a host

This is product code: it imports nothing from ``tether.testing``.
"""

from __future__ import annotations

from .enter import enter_host
from .etcd import log_tail
from .plan import (
    DEFAULT_ROOT,
    DEFAULT_STATE_ROOT,
    FABRIC_IP,
    INET_IP,
    LAN_PARENT,
    UNDERLAY_MTU,
    LabHost,
    LabInfo,
    default_root,
    default_state_root,
    find_host,
    host_socket,
    lab_json_path,
    load_lab,
    plan_lab,
    with_pythonpath,
)
from .present import print_status, run_down, run_up
from .processes import (
    LabDaemonFailed,
    daemon_argv,
    etcd_healthy,
    is_daemon_of,
    lab_down,
    lab_status,
    lab_up,
    pids_in_namespaces,
    process_alive,
)

__all__ = [
    "DEFAULT_ROOT",
    "DEFAULT_STATE_ROOT",
    "FABRIC_IP",
    "INET_IP",
    "LAN_PARENT",
    "UNDERLAY_MTU",
    "LabDaemonFailed",
    "LabHost",
    "LabInfo",
    "daemon_argv",
    "default_root",
    "default_state_root",
    "enter_host",
    "etcd_healthy",
    "find_host",
    "host_socket",
    "is_daemon_of",
    "lab_down",
    "lab_json_path",
    "lab_status",
    "lab_up",
    "load_lab",
    "log_tail",
    "pids_in_namespaces",
    "plan_lab",
    "print_status",
    "process_alive",
    "run_down",
    "run_up",
    "with_pythonpath",
]
