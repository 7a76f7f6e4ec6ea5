"""A container's environment: exactly what it was given, on Docker's defaults.

A container never inherits the environment of whoever starts it (the daemon for ``-d``,
the CLI in the foreground): it gets ``PATH`` and ``HOSTNAME`` as Docker sets them,
``TERM=xterm`` when it has a terminal, then the user's ``KEY=VALUE`` entries (``-e``,
``--env-file``) in order, a later one replacing an earlier one of the same name.
"""

from __future__ import annotations

from collections.abc import Iterable

from tether.errors import InvalidInput

__all__ = ["DEFAULT_PATH", "check_environment", "container_environment"]

# Docker's default PATH for Linux containers (moby's oci.DefaultPathEnv).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def container_environment(entries: Iterable[str], hostname: str, tty: bool) -> dict[str, str]:
    """The environment a container's (or an exec'd) process starts with."""
    env = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname}
    if tty:
        env["TERM"] = "xterm"
    for entry in entries:
        key, _, value = entry.partition("=")
        env[key] = value
    return env


def check_environment(entries: Iterable[str]) -> list[str]:
    """User entries as the daemon stores them: each ``KEY=VALUE`` with a non-empty KEY and
    no NUL byte (exec could not pass one)."""
    checked = []
    for entry in entries:
        key, sep, _ = entry.partition("=")
        if not sep or not key:
            raise InvalidInput(f"invalid environment entry {entry!r}: use KEY=VALUE")
        if "\0" in entry:
            raise InvalidInput(f"invalid environment entry for {key!r}: it contains a NUL byte")
        checked.append(entry)
    return checked
