"""The container runtime: start, watch, stop and exec into container processes.

It only joins a network namespace it is given; building networking is the controller's.
"""

from tether.runtime.process import (
    ProcessSpec,
    exec_in,
    process_alive,
    process_start_time,
    read_exit_code,
    read_started,
    run_foreground,
    spawn_detached,
    stop_process,
)

__all__ = [
    "ProcessSpec",
    "exec_in",
    "process_alive",
    "process_start_time",
    "read_exit_code",
    "read_started",
    "run_foreground",
    "spawn_detached",
    "stop_process",
]
