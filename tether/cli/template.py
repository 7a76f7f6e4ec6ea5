"""Go's text/template, the part Docker users write in ``--format``.

No well-kept Python library speaks Go templates, so this is a small one: a tokenizer
(``_lex``), a parser to a tree (``_Parser``), an evaluator (``_Run``). It covers what
``docker ... --format`` users type: ``{{.name}}``, field chains, ``$`` and variables
(``{{range $k, $v := .networks}}``, ``{{$x := .id}}``), ``if``/``else if``/``else``,
``range`` and ``with`` (each with ``else``), pipelines (``{{.name | upper}}``),
parentheses, ``{{- trim -}}`` markers, ``{{/* comments */}}``, Go's functions (``index len
printf print println eq ne lt le gt ge and or not``) and Docker's (``json join split upper
lower title truncate pad``). Left out: ``define``/``template``/``block``, ``break``/
``continue``, method calls.

Data is what ``--format json`` shows. A field also answers to Docker's spelling: ``.Name``,
``.ID``, ``.NetnsPath`` find ``name``, ``id``, ``netns_path`` (case and underscores
ignored), and a command may add aliases (``.Names`` for ``name``). A field the record
does not have is an error naming the fields it has, not Go's silent ``<no value>``: a typo
must not look like an empty result. Below the record, in maps whose keys are the user's
(``.labels.tier``, ``.networks.appnet``), a missing key is Go's ``<no value>``, so ``{{if
.labels.tier}}`` works on records without it. Values print as Go prints them (``true``,
``map[k:v]``, ``[a b]``).

``render_header`` runs a template in Docker's header mode, where every field yields its
column title (``table TEMPLATE`` prints it above the rows), and ``align_tabs`` lines cells
up as Docker's tabwriter does. Every error is a ``TemplateError`` naming line and column.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .output import align_tabs  # re-exported: tables print through it without the template engine

__all__ = ["Template", "TemplateError", "align_tabs", "go_str"]


class TemplateError(ValueError):
    """A template that does not parse or does not run; ``str()`` is one line."""

    def __init__(self, message: str, source: str = "", offset: int = 0) -> None:
        self.message, self.multiline = message, "\n" in source
        self.line = source.count("\n", 0, offset) + 1
        self.column = offset - (source.rfind("\n", 0, offset) + 1) + 1
        super().__init__(f"{self.where()}: {message}")

    def where(self, shift: int = 0) -> str:
        """``column N`` (``line L, column N`` in a template of several lines); ``shift``
        moves columns of the first line, for a template that began after a prefix."""
        column = self.column + (shift if self.line == 1 else 0)
        return f"line {self.line}, column {column}" if self.multiline else f"column {column}"


class _Fail(Exception):
    """Raised inside a function; becomes a TemplateError at the call's position."""


# ------------------------------------------------------------------------------ tokens
_TOKEN = re.compile(
    r"""(?P<space>\s+)|(?P<field>\.[A-Za-z_]\w*)|(?P<dot>\.)|(?P<var>\$\w*)
    |(?P<num>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<str>"(?:[^"\\\n]|\\.)*")|(?P<raw>`[^`]*`)
    |(?P<ident>[A-Za-z_]\w*)|(?P<op>:=|[()|,=])""",
    re.VERBOSE,
)
_COMMENT_END = re.compile(r"\s*(-?)}}")


@dataclass
class _Tok:
    kind: str  # field dot var num str ident op
    value: Any
    pos: int
    space: bool  # white space before it: `.a.b` is one chain, `.a .b` two operands


def _lex(src: str, start: int, i: int) -> tuple[list[_Tok], int, bool]:
    """The tokens of the action opened at ``start`` whose body begins at ``i``; returns
    them, the offset after its ``}}`` and whether that was ``-}}`` (trim what follows)."""
    toks: list[_Tok] = []
    space = True
    while not src.startswith("}}", i):
        m = _TOKEN.match(src, i)
        if m is None:
            if i >= len(src):
                raise TemplateError("unclosed action: missing }}", src, start)
            raise TemplateError(f"unexpected {src[i]!r} in action", src, i)
        kind, text = m.lastgroup or "", m.group()
        if kind == "space":
            if src.startswith("-}}", m.end()):
                return toks, m.end() + 3, True
            space, i = True, m.end()
            continue
        value: Any = text
        if kind == "num":
            value = float(text) if any(c in text for c in ".eE") else int(text)
        elif kind == "str":
            try:
                value = json.loads(text)  # Go's escapes people use are JSON's
            except ValueError:
                raise TemplateError(f"bad string {text}", src, i) from None
        elif kind == "raw":
            kind, value = "str", text[1:-1]
        elif kind == "field":
            value = text[1:]
        toks.append(_Tok(kind, value, i, space))
        space, i = False, m.end()
    return toks, i + 2, False


# ------------------------------------------------------------------------------ tree
@dataclass
class _Text:
    pos: int
    text: str


@dataclass
class _Operand:
    pos: int
    kind: str  # dot field var lit func pipe
    value: Any = None  # the variable's or function's name, the literal, the _Pipe in parentheses
    chain: list[str] = field(default_factory=list)  # fields read after it


@dataclass
class _Pipe:
    pos: int
    decl: list[str]  # variables declared (:=) or assigned (=)
    assign: bool
    cmds: list[list[_Operand]]


@dataclass
class _Block:
    pos: int
    kind: str  # action if range with
    pipe: _Pipe
    body: list[Any] = field(default_factory=list)
    orelse: list[Any] = field(default_factory=list)


class _Parser:
    def __init__(self, src: str) -> None:
        self.src = src
        self.items = self._split()
        self.at = 0
        self.toks: list[_Tok] = []
        self.i = 0

    def fail(self, message: str, pos: int) -> TemplateError:
        return TemplateError(message, self.src, pos)

    def _split(self) -> list[Any]:
        """Text (``\\t`` and ``\\n`` typed as escapes made real, as Docker does) and actions
        as ``(pos, tokens)``, trim markers and comments applied."""
        src, items, i, trim_next = self.src, [], 0, False
        while i < len(src):
            j = src.find("{{", i)
            text = src[i:] if j < 0 else src[i:j]
            trim = j >= 0 and src.startswith("{{-", j) and src[j + 3 : j + 4].isspace()
            text = text.lstrip() if trim_next else text
            text = text.rstrip() if trim else text
            if text:
                items.append(_Text(i, text.replace("\\t", "\t").replace("\\n", "\n")))
            if j < 0:
                break
            body = j + (4 if trim else 2)
            body += len(src[body:]) - len(src[body:].lstrip())
            if src.startswith("/*", body):
                end = src.find("*/", body)
                close = _COMMENT_END.match(src, end + 2) if end >= 0 else None
                if close is None:
                    raise self.fail("unclosed comment: end it with */}}", j)
                i, trim_next = close.end(), close.group(1) == "-"
                continue
            toks, i, trim_next = _lex(src, j, body)
            if not toks:
                raise self.fail("missing value for command", j)
            items.append((j, toks))
        return items

    def parse(self) -> list[Any]:
        return self.nodes_until(())[0]

    def nodes_until(self, stops: tuple[str, ...]) -> tuple[list[Any], str, list[_Tok]]:
        """Nodes up to an action whose first word is in ``stops``; returns that word and the
        rest of its tokens."""
        nodes: list[Any] = []
        while self.at < len(self.items):
            item = self.items[self.at]
            self.at += 1
            if isinstance(item, _Text):
                nodes.append(item)
                continue
            pos, toks = item
            word = toks[0].value if toks[0].kind == "ident" else ""
            if word in ("end", "else"):
                if word not in stops:
                    raise self.fail(f"unexpected {{{{{word}}}}}", pos)
                return nodes, word, toks[1:]
            if word in ("if", "range", "with"):
                nodes.append(self.block(word, pos, toks[1:]))
            elif word in ("define", "template", "block", "break", "continue"):
                raise self.fail(f"{{{{{word}}}}} is not supported", pos)
            else:
                nodes.append(_Block(pos, "action", self.pipe(toks, pos)))
        if stops:
            raise self.fail("unexpected end of template: missing {{end}}", len(self.src))
        return nodes, "", []

    def block(self, kind: str, pos: int, toks: list[_Tok]) -> _Block:
        node = _Block(pos, kind, self.pipe(toks, pos, two_vars=kind == "range"))
        node.body, stop, rest = self.nodes_until(("end", "else"))
        if stop == "else" and rest and rest[0].kind == "ident" and rest[0].value == kind != "range":
            node.orelse = [self.block(kind, rest[0].pos, rest[1:])]  # else if, else with: one {{end}}
        elif rest:
            raise self.fail(f"unexpected {rest[0].value!r} after {{{{{stop}}}}}", rest[0].pos)
        elif stop == "else":
            node.orelse = self.nodes_until(("end",))[0]
        return node

    def pipe(self, toks: list[_Tok], pos: int, two_vars: bool = False) -> _Pipe:
        """``[$x := | $x = | $k, $v :=] command | command ...``"""
        decl: list[str] = []
        shape = [(t.kind, t.value if t.kind == "op" else "") for t in toks[:4]]
        if shape[:2] in ([("var", ""), ("op", ":=")], [("var", ""), ("op", "=")]):
            decl = [toks[0].value]
        elif two_vars and shape == [("var", ""), ("op", ","), ("var", ""), ("op", ":=")]:
            decl = [toks[0].value, toks[2].value]
        assign = bool(decl) and toks[2 * len(decl) - 1].value == "="
        self.toks, self.i = toks[2 * len(decl) :], 0
        if not self.toks:
            raise self.fail("missing value for command", pos)
        cmds = self.commands(pos)
        if self.i < len(self.toks):
            raise self.fail(f"unexpected {self.toks[self.i].value!r}", self.toks[self.i].pos)
        return _Pipe(pos, decl, assign, cmds)

    def peek(self, *ops: str) -> bool:
        return self.i < len(self.toks) and self.toks[self.i].kind == "op" and self.toks[self.i].value in ops

    def commands(self, pos: int) -> list[list[_Operand]]:
        cmds: list[list[_Operand]] = []
        while not cmds or self.peek("|"):
            self.i += bool(cmds)
            args: list[_Operand] = []
            while self.i < len(self.toks) and not self.peek("|", ")"):
                args.append(self.operand())
            if not args:
                at = self.toks[min(self.i, len(self.toks) - 1)].pos if self.toks else pos
                raise self.fail("missing value for command", at)
            cmds.append(args)
        return cmds

    def operand(self) -> _Operand:
        t = self.toks[self.i]
        self.i += 1
        if t.kind in ("field", "dot", "var"):
            op = _Operand(t.pos, t.kind, t.value, [t.value] if t.kind == "field" else [])
        elif t.kind in ("num", "str") or t.value in ("true", "false", "nil"):
            op = _Operand(t.pos, "lit", {"true": True, "false": False, "nil": None}.get(t.value, t.value))
        elif t.kind == "ident":
            if t.value not in FUNCS:
                raise self.fail(f'function "{t.value}" not defined', t.pos)
            op = _Operand(t.pos, "func", t.value)
        elif t.value == "(":
            inner = self.commands(t.pos)
            if not self.peek(")"):
                raise self.fail("unclosed left paren", t.pos)
            self.i += 1
            op = _Operand(t.pos, "pipe", _Pipe(t.pos, [], False, inner))
        else:
            raise self.fail(f"unexpected {t.value!r} in operand", t.pos)
        while self.i < len(self.toks) and self.toks[self.i].kind == "field" and not self.toks[self.i].space:
            if op.kind in ("lit", "func"):
                raise self.fail(f"unexpected .{self.toks[self.i].value} after {t.value!r}", self.toks[self.i].pos)
            op.chain.append(self.toks[self.i].value)
            self.i += 1
        return op


# ------------------------------------------------------------------------------ values and functions
class _Header(str):
    """A column title standing in for a value in header mode: its fields are titles too."""

    def __bool__(self) -> bool:
        return True


def go_str(value: Any) -> str:
    """A value as Go's text/template prints it."""
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{go_str(k)}:{go_str(value[k])}" for k in sorted(value, key=str)) + "]"
    if isinstance(value, list):
        return "[" + " ".join(go_str(v) for v in value) + "]"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return str(value)


def _type(value: Any) -> str:
    names = {dict: "map", list: "slice", str: "string", _Header: "string", bool: "bool", int: "int", float: "float64"}
    return names.get(type(value), "nil" if value is None else type(value).__name__)


def _fail(message: str) -> Any:
    raise _Fail(message)


def _kind(value: Any) -> str:
    return "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else _type(value)


def _equal(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    if _kind(a) != _kind(b) or _kind(a) in ("map", "slice"):
        _fail(f"incompatible types for comparison: {_type(a)} and {_type(b)}")
    return bool(a == b)


def _order(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(a: Any, b: Any) -> bool:
        if _kind(a) != _kind(b) or _kind(a) not in ("string", "number"):
            _fail(f"incompatible types for comparison: {_type(a)} and {_type(b)}")
        return op(a, b)

    return compare


def _index(item: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(item, _Header):  # header mode: the title of the key
            item = _Header(str(key).upper())
        elif isinstance(item, dict) and isinstance(key, str):
            item = item.get(key)  # Go: a missing key is the zero value, no error
        elif isinstance(item, (list, str)) and _kind(key) == "number" and isinstance(key, int):
            item = item[key] if 0 <= key < len(item) else _fail(f"index out of range: {key}")
        else:
            _fail(f"cannot index {_type(item)} with {_type(key)}")
    return item


def _join(items: Any, sep: Any) -> str:
    items = list(items) if isinstance(items, dict) else items  # a label map: its keys
    if not isinstance(items, list) or not isinstance(sep, str):
        _fail(f"join of {_type(items)} with {_type(sep)}")
    return sep.join(go_str(i) for i in items)


def _split(s: Any, sep: Any) -> list[str]:
    if not isinstance(s, str) or not isinstance(sep, str):
        _fail(f"split of {_type(s)} by {_type(sep)}")
    return s.split(sep) if sep else list(s)


def _text(fn: Callable[[str], str]) -> Callable[[Any], str]:
    return lambda s: fn(s) if isinstance(s, str) else _fail(f"expected a string, not {_type(s)}")


_VERB = re.compile(r"%([-+# 0]*)(\d*)(?:\.(\d*))?([a-zA-Z%])")


def _printf(fmt: Any, *args: Any) -> str:
    """Go's Sprintf for the verbs people use: %v %s %q %d %x %X %o %b %f %e %g %t %%; a
    wrong argument prints as Go prints it (``%!d(string=web)``), it is no error."""
    rest = list(args)

    def one(m: re.Match[str]) -> str:
        flags, width, prec, verb = m.groups()
        if verb == "%":
            return "%"
        if not rest:
            return f"%!{verb}(MISSING)"
        arg, spec = rest.pop(0), "%" + flags + width + (f".{prec or 0}" if prec is not None else "")
        kind = _kind(arg)
        if verb in "vs" or (verb == "t" and kind == "bool"):
            return (spec + "s") % go_str(arg)
        if verb == "q":
            return (spec + "s") % json.dumps(arg if kind == "string" else go_str(arg), ensure_ascii=False)
        if verb in "dxXob" and kind == "number" and isinstance(arg, int):
            return (spec + "s") % format(arg, "b") if verb == "b" else (spec + verb) % arg
        if verb in "feEgG" and kind == "number":
            return (spec + verb) % arg
        return f"%!{verb}({_type(arg)}={go_str(arg)})"

    if not isinstance(fmt, str):
        _fail(f"the format must be a string, not {_type(fmt)}")
    return _VERB.sub(one, fmt) + "".join(f"%!(EXTRA {_type(a)}={go_str(a)})" for a in rest)


def _print(*args: Any) -> str:
    """Go's Sprint: a space between two operands when neither is a string."""
    return "".join(
        (" " if i and not isinstance(a, str) and not isinstance(args[i - 1], str) else "") + go_str(a)
        for i, a in enumerate(args)
    )


# name: (function, least and most arguments, None for any number)
FUNCS: dict[str, tuple[Callable[..., Any], int, int | None]] = {
    "json": (lambda v: json.dumps(v, separators=(",", ":"), ensure_ascii=False), 1, 1),
    "join": (_join, 2, 2),
    "split": (_split, 2, 2),
    "upper": (_text(str.upper), 1, 1),
    "lower": (_text(str.lower), 1, 1),
    "title": (_text(lambda s: re.sub(r"(^|\s)(\S)", lambda m: m.group(1) + m.group(2).upper(), s)), 1, 1),
    "truncate": (lambda s, n: go_str(s)[: max(int(n), 0)], 2, 2),
    "pad": (lambda s, before, after: " " * int(before) + go_str(s) + " " * int(after), 3, 3),
    "index": (_index, 1, None),
    "len": (lambda v: len(v) if isinstance(v, (str, list, dict)) else _fail(f"len of {_type(v)}"), 1, 1),
    "printf": (_printf, 1, None),
    "print": (_print, 0, None),
    "println": (lambda *a: " ".join(go_str(x) for x in a) + "\n", 0, None),
    "eq": (lambda a, *bs: any(_equal(a, b) for b in bs), 2, None),
    "ne": (lambda a, b: not _equal(a, b), 2, 2),
    "lt": (_order(lambda a, b: a < b), 2, 2),
    "le": (_order(lambda a, b: a <= b), 2, 2),
    "gt": (_order(lambda a, b: a > b), 2, 2),
    "ge": (_order(lambda a, b: a >= b), 2, 2),
    "and": (lambda *a: next((x for x in a if not bool(x)), a[-1]), 1, None),
    "or": (lambda *a: next((x for x in a if bool(x)), a[-1]), 1, None),
    "not": (lambda a: not bool(a), 1, 1),
}
# Docker's own functions pass column titles through unchanged in header mode
_DOCKER_FUNCS = frozenset({"json", "join", "split", "upper", "lower", "title", "truncate", "pad"})


# ------------------------------------------------------------------------------ evaluation
def _norm(key: str) -> str:
    return key.replace("_", "").lower()


def _title_of(name: str) -> str:
    """``exit_code``, ``ExitCode`` -> ``EXIT CODE``."""
    return re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name).replace("_", " ").upper()


_NOTHING = object()  # no value piped into a command


class _Run:
    def __init__(self, tmpl: Template, root: Any) -> None:
        self.tmpl = tmpl
        self.root = root
        self.vars: list[tuple[str, Any]] = [("$", root)]
        self.out: list[str] = []

    def fail(self, message: str, pos: int) -> TemplateError:
        return TemplateError(message, self.tmpl.source, pos)

    def walk(self, dot: Any, nodes: list[Any]) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                self.out.append(node.text)
                continue
            mark = len(self.vars)  # variables declared in a block end with it
            value = self.pipe(dot, node.pipe, declare=node.kind != "range")
            if node.kind == "action":
                if not node.pipe.decl:
                    self.out.append(go_str(value))
                continue
            if node.kind == "range":
                self.range(dot, node, value)
            elif bool(value):
                self.walk(value if node.kind == "with" else dot, node.body)
            else:
                self.walk(dot, node.orelse)
            del self.vars[mark:]

    def range(self, dot: Any, node: _Block, value: Any) -> None:
        if isinstance(value, _Header):  # header mode: the body once, for its titles
            pairs: list[tuple[Any, Any]] = [(value, value)]
        elif isinstance(value, dict):
            pairs = [(k, value[k]) for k in sorted(value, key=str)]  # Go ranges a map in key order
        elif isinstance(value, list):
            pairs = list(enumerate(value))
        elif _kind(value) == "number" and isinstance(value, int):
            pairs = [(i, i) for i in range(value)]
        elif value is None:
            pairs = []
        else:
            raise self.fail(f"range can't iterate over {go_str(value)}", node.pos)
        if not pairs:
            self.walk(dot, node.orelse)
        names = node.pipe.decl
        for key, item in pairs:
            mark = len(self.vars)
            self.vars += list(zip(names, [item] if len(names) == 1 else [key, item]))
            self.walk(item, node.body)
            del self.vars[mark:]

    def pipe(self, dot: Any, pipe: _Pipe, declare: bool = True) -> Any:
        value: Any = _NOTHING
        for cmd in pipe.cmds:
            value = self.command(dot, cmd, value)
        if pipe.decl and declare:
            name = pipe.decl[0]
            if not pipe.assign:
                self.vars.append((name, value))
            else:
                slot = next((i for i in range(len(self.vars) - 1, -1, -1) if self.vars[i][0] == name), None)
                if slot is None:
                    raise self.fail(f"undefined variable: {name}", pipe.pos)
                self.vars[slot] = (name, value)
        return value

    def command(self, dot: Any, cmd: list[_Operand], piped: Any) -> Any:
        first = cmd[0]
        if first.kind != "func":
            if len(cmd) > 1 or piped is not _NOTHING:
                base = {"dot": ".", "field": "", "var": first.value, "lit": repr(first.value)}.get(first.kind, "(...)")
                what = base + "".join(f".{c}" for c in first.chain)
                raise self.fail(f"can't give argument to non-function {what}", first.pos)
            return self.operand(dot, first)
        fn, least, most = FUNCS[first.value]
        args = [self.operand(dot, a) for a in cmd[1:]] + ([] if piped is _NOTHING else [piped])
        if len(args) < least or (most is not None and len(args) > most):
            want = str(least) if least == most else f"at least {least}"
            raise self.fail(f"wrong number of arguments for {first.value}: want {want}, got {len(args)}", first.pos)
        title = next((a for a in args if isinstance(a, _Header)), None)
        if title is not None and first.value in _DOCKER_FUNCS:
            return title  # header mode: Docker's functions leave titles as they are
        try:
            return fn(*args)
        except (_Fail, TypeError, ValueError) as exc:
            if title is not None:  # header mode: `eq .containers 0` compares a title
                return title
            raise self.fail(f"error calling {first.value}: {exc}", first.pos) from None

    def operand(self, dot: Any, op: _Operand) -> Any:
        if op.kind == "lit":
            return op.value
        if op.kind == "func":  # a bare function name as an argument: called with none
            return self.command(dot, [op], _NOTHING)
        value = dot
        if op.kind == "var":
            value = next((v for n, v in reversed(self.vars) if n == op.value), _NOTHING)
            if value is _NOTHING:
                raise self.fail(f"undefined variable: {op.value}", op.pos)
        elif op.kind == "pipe":
            value = self.pipe(dot, op.value)
        for name in op.chain:
            value = self.field(value, name, op.pos)
        return value

    def field(self, value: Any, name: str, pos: int) -> Any:
        tmpl = self.tmpl
        if isinstance(value, _Header):
            title = tmpl.titles.get(_norm(name)) or tmpl.titles.get(_norm(tmpl.aliases.get(name, "")))
            return _Header(title or _title_of(name))
        if not isinstance(value, dict):
            raise self.fail(f"can't evaluate field {name} in type {_type(value)}", pos)
        if name in value:
            return value[name]
        alias = tmpl.aliases.get(name)
        if alias is not None and alias in value:
            return value[alias]
        key = next((k for k in value if isinstance(k, str) and _norm(k) == _norm(name)), None)
        if key is None and value is self.root:
            raise self.fail(f"no field {name!r} here (there are: {', '.join(map(str, value))})", pos)
        if key is None:  # inside the record, a map of the user's (labels, networks): Go's zero value
            return None
        return value[key]


class Template:
    """A parsed template; ``execute(data)`` runs it. ``aliases`` maps field names (Docker's)
    to keys; ``titles`` maps a field name to its column title in header mode (others are
    the name in capitals)."""

    def __init__(
        self, source: str, aliases: Mapping[str, str] | None = None, titles: Mapping[str, str] | None = None
    ) -> None:
        self.source = source
        self.aliases = dict(aliases or {})
        self.titles = {_norm(k): v for k, v in (titles or {}).items()}
        self.tree = _Parser(source).parse()

    def execute(self, data: Any) -> str:
        run = _Run(self, data)
        run.walk(data, self.tree)
        return "".join(run.out)

    def render_header(self) -> str:
        """The template in Docker's header mode: each field shows its column title."""
        return self.execute(_Header(""))
