"""The ``tether`` command: a thin Typer front end over the daemon API, a module per noun.

    common.py      the apps, the console, the daemon client, output and error helpers
    run.py         run, exec
    containers.py  logs, stop, rm
    listing.py     ps, inspect, network ls, network inspect, node ls
    networks.py    network create, rm, connect, disconnect, prune
    admin.py       daemon, demo, lab, version, info
"""

from __future__ import annotations

import sys

import typer

from ..errors import TetherError
from . import admin, containers, listing, networks, run  # noqa: F401  (they register their commands)
from .common import app, cli_command, click_errors, usage_error_text

__all__ = ["app", "main"]


def main(args: list[str] | None = None) -> None:
    """Run one command line and exit with its status: 0, a command's own code, 1 for an
    error the daemon or the system reported, 2 for a usage error; each error in one line
    (a usage error adds a second, pointing at the command's help)."""
    argv = sys.argv[1:] if args is None else list(args)
    command = cli_command()
    try:
        code = command.main(args=argv, prog_name="tether", standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:  # `tether`, `tether network`: the help, as Docker
        sys.stdout.write(exc.ctx.get_help() + "\n")
        code = 0
    except click_errors.UsageError as exc:
        sys.stderr.write(usage_error_text(exc, command, argv))
        code = exc.exit_code
    except click_errors.ClickException as exc:
        sys.stderr.write(f"Error: {' '.join(exc.format_message().split())}\n")
        code = exc.exit_code
    except typer.Abort:
        sys.stderr.write("Aborted.\n")
        code = 1
    except TetherError as exc:
        sys.stderr.write(f"Error: {exc}\n")
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code if isinstance(code, int) else 0)
