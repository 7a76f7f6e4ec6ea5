"""``tether graph``: the topology as a picture (SVG or PNG through Graphviz's ``dot``), as
DOT text, or as a tree for a terminal.

One daemon request (``GET /graph``) gives the model; ``tether/graph.py`` turns it into DOT
or a Rich tree; ``dot`` (Debian's ``graphviz``) does the layout, run as a subprocess on
that DOT. Everything past the option parsing is imported in the command itself: the
module is loaded by every ``tether`` call (it registers the command), and only this
command needs the renderer.
"""

from __future__ import annotations

import os
import sys

import typer

from .common import CTX, app, fail

__all__: list[str] = []

FORMATS = ("text", "dot", "svg", "png")
BINARY = ("svg", "png")  # pictures: to a file, or to a pipe, never onto a terminal
DOT_MISSING = "Graphviz's dot is not installed: install the Debian package graphviz (apt-get install graphviz)"


@app.command()
def graph(
    fmt: str = typer.Option(None, "--format", metavar="FORMAT", help="svg, png, dot or text (default: from -o's "
                            "extension, else text)."),
    output: str = typer.Option(None, "-o", "--output", metavar="FILE", help="Write to FILE instead of stdout."),
    all_: bool = typer.Option(False, "-a", "--all", help="Show containers that are not running too."),
) -> None:
    """Draw the topology: hosts, networks, containers, addresses, ports."""
    kind = _format(fmt, output)
    if output is None and kind in BINARY and sys.stdout.isatty():
        fail(f"{kind.upper()} does not go to a terminal: use -o FILE (or redirect stdout), or --format text")
    model = CTX.client().graph(all_=all_)
    if kind == "text":
        _write_text(model, output)
        return
    from ..graph import to_dot

    data = to_dot(model).encode()
    if kind in BINARY:
        data = _run_dot(data, kind)
    _write(data, output)


def _format(fmt: str | None, output: str | None) -> str:
    """The format asked for, or the one -o's extension names (``.svg``), else text."""
    if fmt is not None:
        kind = fmt.strip().lower()
        if kind not in FORMATS:
            raise typer.BadParameter(f"unknown format {fmt!r}: use svg, png, dot or text", param_hint="'--format'")
        return kind
    extension = os.path.splitext(output or "")[1].lower().lstrip(".")
    return {"gv": "dot", "txt": "text"}.get(extension, extension if extension in FORMATS else "text")


def _run_dot(source: bytes, kind: str) -> bytes:
    """Lay out and draw ``source`` with Graphviz's ``dot``; its error in one line."""
    import shutil
    import subprocess

    dot = shutil.which("dot")
    if dot is None:
        fail(DOT_MISSING)
    try:
        done = subprocess.run([dot, f"-T{kind}"], input=source, capture_output=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        fail(f"running Graphviz's dot failed: {exc}")
    if done.returncode != 0:
        said = " ".join(done.stderr.decode(errors="replace").split()) or f"exit status {done.returncode}"
        fail(f"Graphviz's dot failed: {said}")
    return done.stdout


def _write(data: bytes, output: str | None) -> None:
    if output is None:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        with open(output, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}")


def _write_text(model: dict[str, object], output: str | None) -> None:
    from rich.console import Console

    from ..graph import to_tree

    tree = to_tree(model)
    if output is None:  # piped: as wide as it is, never cut or wrapped (as `ps`)
        Console(highlight=False, width=None if sys.stdout.isatty() else 1000).print(tree)
        return
    try:
        with open(output, "w", encoding="utf-8") as fh:
            Console(file=fh, highlight=False, width=1000, color_system=None).print(tree)
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}")
