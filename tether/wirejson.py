"""JSON for short-lived clients (``tether-cni``, the CLI's requests), without ``json``.

Importing the stdlib's ``json`` pulls in ``re`` (and with it ``enum``, ``functools``,
``collections``): about 7 ms of every CNI plugin call on these machines, more than the
rest of the plugin's imports together. The parsing and encoding themselves live in the
C module ``_json`` that ``json`` wraps; this module drives it directly, with the same
settings as ``json.loads``/``json.dumps`` defaults (strict, ASCII output, no NaN
surprises beyond json's own). Where ``_json`` is missing (another Python), it falls back
to ``json``.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["loads", "dumps", "dumps_indented", "JSONDecodeError"]

try:
    import _json
except ImportError:  # pragma: no cover - CPython always has it
    _json = None  # type: ignore[assignment]


class JSONDecodeError(ValueError):
    """Malformed JSON (a ValueError, like json's)."""


_WS = " \t\n\r"


class _Context:
    # the attributes _json.make_scanner reads (json.JSONDecoder's defaults)
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}[name]


if _json is not None:
    _scan = _json.make_scanner(_Context())

    def loads(text: str | bytes) -> Any:
        if isinstance(text, (bytes, bytearray)):
            try:
                text = bytes(text).decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise JSONDecodeError(f"not UTF-8: {exc}") from None
        start = len(text) - len(text.lstrip(_WS))
        try:
            value, end = _scan(text, start)
        except StopIteration as exc:
            raise JSONDecodeError(f"expecting a value at offset {exc.value}") from None
        except (ValueError, SystemError):
            # _json builds its error from json.decoder, and fails (SystemError) when that
            # was never imported: on this path only, let json say what is wrong
            import json

            try:
                json.loads(text)
            except ValueError as exc:
                raise JSONDecodeError(str(exc)) from None
            raise JSONDecodeError("malformed JSON") from None
        if text[end:].strip(_WS):
            raise JSONDecodeError(f"extra data at offset {end}")
        return value

    def _default(value: Any) -> Any:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")

    def dumps(value: Any, ensure_ascii: bool = True) -> str:
        # json.dumps' defaults; a fresh markers dict per call, as json does
        strings = _json.encode_basestring_ascii if ensure_ascii else _json.encode_basestring
        encode = _json.make_encoder({}, _default, strings, None, ": ", ", ", False, False, True)
        return "".join(encode(value, 0))

    def dumps_indented(value: Any) -> str:
        """``json.dumps(value, indent=2, sort_keys=True)``, byte for byte (``_json``'s C
        encoder ignores ``indent``: the nesting is done here, every scalar by the C encoder)."""
        scalar = _json.make_encoder(None, _default, _json.encode_basestring_ascii, None, ": ", ", ", True, False, True)
        out: list[str] = []
        _indented(value, 0, out, scalar)
        return "".join(out)

    def _key(key: Any) -> str:
        if isinstance(key, str):
            return key
        if key is True or key is False or key is None:
            return {True: "true", False: "false", None: "null"}[key]
        if isinstance(key, (int, float)):
            return "".join(_json.make_encoder(None, _default, str, None, "", "", False, False, True)(key, 0))
        raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")

    def _first(pair: tuple[str, Any]) -> str:
        return pair[0]

    def _indented(value: Any, depth: int, out: list[str], scalar: Any) -> None:
        inner = "\n" + "  " * (depth + 1)
        if isinstance(value, dict) and value:
            out.append("{")
            for i, (key, item) in enumerate(sorted(((_key(k), v) for k, v in value.items()), key=_first)):
                out.append(("," if i else "") + inner + _json.encode_basestring_ascii(key) + ": ")
                _indented(item, depth + 1, out, scalar)
            out.append("\n" + "  " * depth + "}")
        elif isinstance(value, (list, tuple)) and value:
            out.append("[")
            for i, item in enumerate(value):
                out.append(("," if i else "") + inner)
                _indented(item, depth + 1, out, scalar)
            out.append("\n" + "  " * depth + "]")
        else:
            out.append("".join(scalar(value, 0)))

else:  # pragma: no cover
    import json as _std

    JSONDecodeError = _std.JSONDecodeError  # type: ignore[misc, assignment]  # noqa: F811

    def loads(text: str | bytes) -> Any:
        return _std.loads(text)

    def dumps(value: Any, ensure_ascii: bool = True) -> str:
        return _std.dumps(value, ensure_ascii=ensure_ascii)

    def dumps_indented(value: Any) -> str:
        return _std.dumps(value, indent=2, sort_keys=True)
