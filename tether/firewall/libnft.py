"""In-process libnftables through ctypes: the only code in tether that talks to nf_tables.

Design note. ``nft -f -`` as a subprocess costs 3-26 ms per call; the same library called
in-process adds a map element in well under 0.1 ms, which is what keeps publishing a port
cheap. Debian's ``python3-nftables`` binding is not needed: the C API is eight functions.

Every change goes in nft's *text* syntax. JSON input is broken in nft 1.0.6 for maps with
concatenated data (the ``ports`` maps): the string form is rejected and the array form
segfaults the library. JSON *output* is fine and is used to read the ruleset back.

Namespaces: ``nft_ctx_new`` opens the context's netlink socket at once, and a socket stays
in the network namespace it was created in. So an :class:`Nft` acts on the namespace of
the thread that *constructed* it, whichever thread calls :meth:`Nft.run` later (measured:
a context made in a thread that had ``setns``'ed into another namespace keeps changing
that namespace when used from the main thread).

A context is not thread-safe; every call takes the instance's lock.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import threading
from typing import Any

from ..errors import SystemFailure

__all__ = ["Nft"]

# From libnftables' nftables.h (1.0.6): output flags.
_OUTPUT_HANDLE = 1 << 3
_OUTPUT_JSON = 1 << 4
_OUTPUT_TERSE = 1 << 11  # omit set elements from listings

_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def _load() -> ctypes.CDLL:
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        try:
            lib = ctypes.CDLL("libnftables.so.1")
        except OSError as exc:
            raise SystemFailure(
                "libnftables.so.1 not found: install the Debian package libnftables1"
            ) from exc
        ctx = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_new.restype = ctx
        lib.nft_ctx_free.argtypes = [ctx]
        lib.nft_ctx_free.restype = None
        lib.nft_ctx_buffer_output.argtypes = [ctx]
        lib.nft_ctx_buffer_output.restype = ctypes.c_int
        lib.nft_ctx_buffer_error.argtypes = [ctx]
        lib.nft_ctx_buffer_error.restype = ctypes.c_int
        lib.nft_ctx_get_output_buffer.argtypes = [ctx]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctx]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_output_get_flags.argtypes = [ctx]
        lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
        lib.nft_ctx_output_set_flags.argtypes = [ctx, ctypes.c_uint]
        lib.nft_ctx_output_set_flags.restype = None
        lib.nft_run_cmd_from_buffer.argtypes = [ctx, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        _lib = lib
        return lib


def _error_message(text: str) -> str:
    """One line from nft's error output: its first ``Error:`` line and the command it
    points at (nft prints the offending command on the next line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("Error:"):
            message = "nftables: " + line[len("Error:"):].strip()
            if i + 1 < len(lines) and not lines[i + 1].startswith(("^", "Error:")):
                command = lines[i + 1]
                message += f" (in: {command[:160]}{'...' if len(command) > 160 else ''})"
            return message
    return "nftables: " + (lines[0] if lines else "failed without a message")


class Nft:
    """One libnftables context, bound to the network namespace of the constructing thread."""

    def __init__(self) -> None:
        self._lib = _load()
        self._lock = threading.Lock()
        ctx = self._lib.nft_ctx_new(0)  # 0 = NFT_CTX_DEFAULT
        if not ctx:
            raise SystemFailure("nft_ctx_new failed")
        self._ctx: int | None = ctx
        self._lib.nft_ctx_buffer_output(ctx)
        self._lib.nft_ctx_buffer_error(ctx)
        self._base_flags = self._lib.nft_ctx_output_get_flags(ctx)

    def run(self, commands: str, handles: bool = False) -> str:
        """Run nft text commands as one transaction; return nft's text output (with each
        rule's ``# handle N`` if ``handles``).

        Raises ``SystemFailure`` with the first line of nft's error (and the command it names);
        nothing of a failed batch is applied.
        """
        return self._run(commands, self._base_flags | (_OUTPUT_HANDLE if handles else 0))

    def run_json(self, command: str, terse: bool = False) -> list[dict[str, Any]]:
        """Run one listing command and return the ``nftables`` array of its JSON output."""
        flags = self._base_flags | _OUTPUT_JSON | (_OUTPUT_TERSE if terse else 0)
        out = self._run(command, flags)
        if not out.strip():
            return []
        try:
            items: list[dict[str, Any]] = json.loads(out)["nftables"]
        except (ValueError, KeyError) as exc:
            raise SystemFailure(f"unreadable JSON from nft: {out[:80]!r}") from exc
        return items

    def _run(self, commands: str, flags: int) -> str:
        with self._lock:
            ctx = self._ctx
            if ctx is None:
                raise SystemFailure("nftables context is closed")
            self._lib.nft_ctx_output_set_flags(ctx, flags)
            rc = self._lib.nft_run_cmd_from_buffer(ctx, commands.encode())
            out = self._lib.nft_ctx_get_output_buffer(ctx) or b""
            err = self._lib.nft_ctx_get_error_buffer(ctx) or b""
        if rc != 0:
            raise SystemFailure(_error_message(err.decode(errors="replace")))
        return out.decode(errors="replace")

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()
