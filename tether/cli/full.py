"""The full ``tether`` command: every command module registered on the Typer app, and the
loop that runs a command line through Click with tether's error handling.

Importing this imports Typer, Click and Rich (tens of ms): ``tether/cli/__init__.py``
does so only when the fast path (``fast.py``) leaves the command line to it, or when
``app``/``cli_command`` are asked for.
"""

from __future__ import annotations

import sys

import typer

from ..errors import TetherError
from . import admin, containers, events, graph, listing, networks, run, trace
from .common import app, cli_command, click_errors, usage_error_text

__all__ = ["COMMAND_MODULES", "app", "cli_command", "click_errors", "run_full", "usage_error_text"]

# imported for what they do on import: each registers its commands on `app`
COMMAND_MODULES = (admin, containers, events, graph, listing, networks, run, trace)


def run_full(argv: list[str]) -> int:
    """Run one command line through the Typer app and return its exit status: 0, a
    command's own code, 1 for an error the daemon or the system reported, 2 for a usage
    error; each error in one line (a usage error adds a second, pointing at the help)."""
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
    return code if isinstance(code, int) else 0
