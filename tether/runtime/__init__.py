"""The container runtime: start, watch, stop and exec into container processes.

It only joins a network namespace it is given; building networking is the controller's.
"""

from tether.runtime.environ import (
    DEFAULT_PATH,
    check_environment,
    container_environment,
)
from tether.runtime.logs import LogChunk, read_log
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
    "DEFAULT_PATH",
    "LogChunk",
    "ProcessSpec",
    "check_environment",
    "container_environment",
    "exec_in",
    "process_alive",
    "process_start_time",
    "read_exit_code",
    "read_log",
    "read_started",
    "run_foreground",
    "spawn_detached",
    "stop_process",
]
