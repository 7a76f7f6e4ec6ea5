"""The Go-template subset of ``--format``: parsing, evaluation, errors with positions,
Docker's header mode and table alignment."""

from __future__ import annotations

from typing import Any

import pytest

from tether.cli.template import Template, TemplateError, align_tabs, go_str

NET: dict[str, Any] = {
    "id": "3f2a9c1b7d6e5f4a3b2c1d0e9f8a7b6c",
    "name": "appnet",
    "driver": "bridge",
    "subnet": "10.210.0.0/24",
    "internal": False,
    "containers": 2,
    "labels": {"tier": "web", "env": "prod"},
    "options": {},
    "ip_range": None,
}
CTR: dict[str, Any] = {
    "id": "0123456789abcdef0123456789abcdef",
    "name": "web",
    "state": "running",
    "exit_code": None,
    "cmd": ["python3", "-m", "http.server"],
    "netns_path": "/run/netns/web",
    "networks": {
        "appnet": {"address": "10.210.0.2", "mac": "02:42:0a:d2:00:02"},
        "backend": {"address": "10.211.0.5", "mac": "02:42:0a:d3:00:05"},
    },
    "ports": [{"host_port": 8080, "container_port": 80}],
}


def run(source: str, data: Any = CTR, **kw: Any) -> str:
    return Template(source, **kw).execute(data)


def error(source: str, data: Any = CTR, **kw: Any) -> str:
    with pytest.raises(TemplateError) as info:
        run(source, data, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------ fields and text
@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{.name}}", "web"),
        ("name: {{.name}}!", "name: web!"),
        ("{{ .name }}", "web"),
        ("{{.networks.appnet.address}}", "10.210.0.2"),
        ("{{.}}", go_str(CTR)),
        ("plain text", "plain text"),
        ("", ""),
        ("{{.name}}\\t{{.state}}", "web\trunning"),  # typed escapes made real, as Docker does
        ("a\\nb", "a\nb"),
        ("{{$.name}}", "web"),
        ("{{$.networks.appnet.mac}}", "02:42:0a:d2:00:02"),
    ],
)
def test_fields_and_text(source: str, expected: str) -> None:
    assert run(source) == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{.Name}}", "web"),
        ("{{.ID}}", CTR["id"]),
        ("{{.NetnsPath}}", "/run/netns/web"),
        ("{{.netnsPath}}", "/run/netns/web"),
        ("{{.Networks.appnet.Address}}", "10.210.0.2"),
        ("{{.Names}}", "web"),  # a command's own alias
        ("{{.Status}}", "running"),
    ],
)
def test_docker_spellings(source: str, expected: str) -> None:
    assert run(source, aliases={"Names": "name", "Status": "state"}) == expected


def test_missing_fields_error_on_the_record_only() -> None:
    assert "no field 'nmae' here" in error("{{.nmae}}")
    assert "no field 'nmae' here" in error("{{range .cmd}}{{$.nmae}}{{end}}")
    # below the record, maps are the user's: a missing key is Go's zero value
    assert run("{{.networks.other}}") == "<no value>"
    assert run("{{if .networks.other}}yes{{else}}no{{end}}") == "no"
    assert run("{{range .networks}}{{.nope}}{{end}}") == "<no value><no value>"


def test_exact_key_wins_over_alias() -> None:
    assert run("{{.Names}}", {"Names": "exact", "name": "alias"}, aliases={"Names": "name"}) == "exact"


@pytest.mark.parametrize(
    ("value", "printed"),
    [
        (None, "<no value>"),
        (True, "true"),
        (False, "false"),
        (3, "3"),
        (1500.0, "1500"),
        (1.5, "1.5"),
        ("s", "s"),
        (["a", "b"], "[a b]"),
        ([], "[]"),
        ({"b": 1, "a": [True]}, "map[a:[true] b:1]"),
        ({}, "map[]"),
    ],
)
def test_values_print_as_go_prints_them(value: Any, printed: str) -> None:
    assert run("{{.v}}", {"v": value}) == printed


# ------------------------------------------------------------------ control
def test_range_over_a_map_is_in_key_order() -> None:
    assert run("{{range .networks}}{{.address}} {{end}}") == "10.210.0.2 10.211.0.5 "


def test_range_with_variables() -> None:
    assert run("{{range $k, $v := .networks}}{{$k}}={{$v.address}};{{end}}") == "appnet=10.210.0.2;backend=10.211.0.5;"
    assert run("{{range $i, $c := .cmd}}{{$i}}:{{$c}} {{end}}") == "0:python3 1:-m 2:http.server "
    assert run("{{range $c := .cmd}}{{$c}}{{end}}") == "python3-mhttp.server"


def test_range_else_and_dot_outside() -> None:
    assert run("{{range .ports}}{{.host_port}}{{else}}none{{end}}") == "8080"
    assert run("{{range .v}}x{{else}}none{{end}}", {"v": []}) == "none"
    assert run("{{range .v}}x{{else}}none{{end}}", {"v": None}) == "none"
    assert run("{{range .cmd}}{{$.name}}{{end}}") == "webwebweb"
    assert run("{{range 3}}{{.}}{{end}}", {}) == "012"


def test_if_else_if_else() -> None:
    template = Template('{{if eq .state "running"}}up{{else if eq .state "exited"}}down{{else}}?{{end}}')
    assert template.execute({"state": "running"}) == "up"
    assert template.execute({"state": "exited"}) == "down"
    assert template.execute({"state": "created"}) == "?"


@pytest.mark.parametrize(
    ("value", "truth"), [(None, False), (0, False), ("", False), ([], False), ({}, False), (False, False),
                         (1, True), ("x", True), ([0], True), ({"a": 1}, True), (True, True), (0.5, True)]
)
def test_truth_is_gos(value: Any, truth: bool) -> None:
    assert run("{{if .v}}yes{{else}}no{{end}}", {"v": value}) == ("yes" if truth else "no")


def test_with_sets_dot() -> None:
    assert run("{{with .networks.appnet}}{{.mac}}{{end}}") == "02:42:0a:d2:00:02"
    assert run("{{with .exit_code}}{{.}}{{else}}still running{{end}}") == "still running"
    assert run("{{with $x := .name}}{{$x}}{{end}}") == "web"


def test_variables_scope_and_assignment() -> None:
    assert run("{{$n := .name}}{{$n}}-{{$n}}") == "web-web"
    assert run("{{$x := 1}}{{if true}}{{$x = 2}}{{end}}{{$x}}", {}) == "2"
    assert "undefined variable: $y" in error("{{if true}}{{$y := 1}}{{end}}{{$y}}", {})
    assert "undefined variable: $z" in error("{{$z = 1}}", {})


def test_trim_markers_and_comments() -> None:
    assert run("a  {{- .name -}}  b") == "awebb"
    assert run("a {{-3}}", {}) == "a -3"  # no space after {{-: a negative number
    assert run("{{/* a comment */}}x{{- /* trimmed */ -}}  y") == "xy"


def test_pipelines_and_parentheses() -> None:
    assert run("{{.name | upper}}") == "WEB"
    assert run('{{.name | printf "%s!" | upper}}') == "WEB!"
    assert run('{{(index .networks "appnet").address}}') == "10.210.0.2"
    assert run("{{(.name)}}") == "web"
    assert run('{{len (index .networks "appnet")}}') == "2"


def test_literals() -> None:
    source = '{{"a\\tb"}}|{{`raw\\t`}}|{{3}}|{{-2}}|{{1.5}}|{{true}}|{{nil}}'
    assert run(source, {}) == "a\tb|raw\\t|3|-2|1.5|true|<no value>"


# ------------------------------------------------------------------ functions
@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{json .labels}}", '{"tier":"web","env":"prod"}'),
        ("{{json .name}}", '"appnet"'),
        ("{{json .ip_range}}", "null"),
        ('{{index .labels "tier"}}', "web"),
        ('{{index .labels "missing"}}', "<no value>"),
        ('{{join (split .subnet "/") " slash "}}', "10.210.0.0 slash 24"),
        ('{{join .labels ","}}', "tier,env"),
        ("{{upper .name}} {{lower .driver | upper}} {{title \"hello big world\"}}", "APPNET BRIDGE Hello Big World"),
        ("{{truncate .id 12}}", "3f2a9c1b7d6e"),
        ("[{{pad .name 1 2}}]", "[ appnet  ]"),
        ("{{len .labels}} {{len .name}}", "2 6"),
        ('{{printf "%-8s|%4d|%q|%v|%x|%.2f|%t|%%" .name .containers .driver .labels 255 1.5 .internal}}',
         'appnet  |   2|"bridge"|map[env:prod tier:web]|ff|1.50|false|%'),
        ('{{printf "%d" .name}}', "%!d(string=appnet)"),
        ('{{printf "%s %s" .name}}', "appnet %!s(MISSING)"),
        ('{{printf "%s" .name 1}}', "appnet%!(EXTRA int=1)"),
        ('{{print .name 1 2 "x" 3}}', "appnet1 2x3"),
        ("{{println .name .containers}}", "appnet 2\n"),
        ("{{if and .containers .name}}y{{end}}{{if or .internal .ip_range}}n{{end}}{{if not .internal}}!{{end}}", "y!"),
        ("{{and 1 0 2}} {{or 0 \"\" 3}} {{and 1 2}}", "0 3 2"),
        ('{{if eq .driver "overlay" "bridge"}}match{{end}}', "match"),
        ('{{if ne .driver "overlay"}}ne{{end}}', "ne"),
        ("{{if lt .containers 3}}lt{{end}}{{if le .containers 2}}le{{end}}{{if gt 3 .containers}}gt{{end}}"
         "{{if ge .containers 2.0}}ge{{end}}", "ltlegtge"),
        ('{{if lt "a" "b"}}str{{end}}', "str"),
        ("{{eq .ip_range nil}}", "true"),
        ("{{index .cmd 1}}", "-m"),
    ],
)
def test_functions(source: str, expected: str) -> None:
    assert run(source, dict(NET, cmd=["a", "-m"])) == expected


# ------------------------------------------------------------------ errors: one line, with a position
@pytest.mark.parametrize(
    ("source", "where", "what"),
    [
        ("{{.name", "column 1", "unclosed action"),
        ("x {{.name}", "column 10", "unexpected '}'"),
        ("{{end}}", "column 1", "unexpected {{end}}"),
        ("{{else}}", "column 1", "unexpected {{else}}"),
        ("{{if .name}}x", "column 14", "missing {{end}}"),
        ("{{range .cmd}}", "column 15", "missing {{end}}"),
        ("{{bogus .name}}", "column 3", 'function "bogus" not defined'),
        ("{{}}", "column 1", "missing value"),
        ("{{ }}", "column 1", "missing value"),
        ("{{(.name}}", "column 3", "unclosed left paren"),
        ("{{.name)}}", "column 8", "unexpected ')'"),
        ("{{.name | }}", "column 9", "missing value"),
        ("{{/* never closed }}", "column 1", "unclosed comment"),
        ('{{"unterminated}}', "column 3", "unexpected '\"'"),
        ("{{template \"x\"}}", "column 1", "not supported"),
        ("{{define \"x\"}}{{end}}", "column 1", "not supported"),
        ("{{if .a}}{{else}}{{else}}{{end}}", "column 18", "unexpected {{else}}"),
        ("{{range .a}}{{else if .b}}{{end}}", "column 20", "unexpected 'if' after {{else}}"),
        ("{{end x}}", "column 1", "unexpected {{end}}"),
        ("{{.name # }}", "column 9", "unexpected '#'"),
        ('{{"a".b}}', "column 6", "unexpected .b"),
        ("line one\n{{.name", "line 2, column 1", "unclosed action"),
    ],
)
def test_parse_errors(source: str, where: str, what: str) -> None:
    with pytest.raises(TemplateError) as info:
        Template(source)
    message = str(info.value)
    assert message.startswith(where + ": "), message
    assert what in message and "\n" not in message


@pytest.mark.parametrize(
    ("source", "where", "what"),
    [
        ("{{.nmae}}", "column 3", "no field 'nmae' here (there are: id, name, state"),
        ("{{.name.first}}", "column 3", "can't evaluate field first in type string"),
        ("{{.cmd.x}}", "column 3", "in type slice"),
        ("{{range .name}}{{end}}", "column 1", "range can't iterate over web"),
        ("{{.name 1}}", "column 3", "can't give argument to non-function .name"),
        ("{{.name | .state}}", "column 11", "can't give argument to non-function .state"),
        ("{{upper}}", "column 3", "wrong number of arguments for upper: want 1, got 0"),
        ("{{join .cmd}}", "column 3", "want 2, got 1"),
        ("{{upper .cmd}}", "column 3", "error calling upper: expected a string, not slice"),
        ('{{eq .exit_code "0"}}x{{eq .state 1}}', "column 25", "incompatible types for comparison: string and int"),
        ("{{lt .cmd 1}}", "column 3", "incompatible types"),
        ("{{index .cmd 9}}", "column 3", "index out of range: 9"),
        ('{{index .cmd "a"}}', "column 3", "cannot index slice with string"),
        ("{{len 3}}", "column 3", "len of int"),
        ("{{$nope}}", "column 3", "undefined variable: $nope"),
        ("ok\n  {{.bad}}", "line 2, column 5", "no field 'bad'"),
    ],
)
def test_execution_errors(source: str, where: str, what: str) -> None:
    message = error(source)
    assert message.startswith(where + ": "), message
    assert what in message, message


def test_a_template_runs_many_times_with_no_leftovers() -> None:
    template = Template("{{$n := .name}}{{range .cmd}}{{$n}}{{end}}")
    assert template.execute({"name": "a", "cmd": [1]}) == "a"
    assert template.execute({"name": "b", "cmd": [1, 2]}) == "bb"


# ------------------------------------------------------------------ header mode and tables
def test_header_mode_titles() -> None:
    # (a comparison with a title is no error in header mode; which branch it takes is arbitrary)
    template = Template(
        '{{.ID}}\t{{.name}}\t{{.Names}}\t{{.exit_code}}\t{{.NetnsPath}}\t{{range .networks}}{{.address}}{{end}}'
        '\t{{json .labels}}\t{{index .labels "tier"}}\t{{.name | upper}}\t{{if eq .containers 0}}none{{end}}'
        '\t{{(index .networks "a").mac}}',
        aliases={"Names": "name"},
        titles={"id": "CONTAINER ID", "names": "NAMES"},
    )
    assert template.render_header().split("\t") == [
        "CONTAINER ID", "NAME", "NAMES", "EXIT CODE", "NETNS PATH", "ADDRESS", "LABELS", "TIER", "NAME", "none", "MAC"
    ]


def test_align_tabs_is_dockers_tabwriter() -> None:
    text = align_tabs(["NETWORK ID\tNAME\tDRIVER", "abc\ta-very-long-network-name\tbridge", "x\ty\tz"])
    assert text.splitlines() == [
        "NETWORK ID   NAME                       DRIVER",
        "abc          a-very-long-network-name   bridge",
        "x            y                          z",
    ]
    assert align_tabs(["a\tb", "c"]) == "a         b\nc\n"  # at least 10 wide; the last cell is not padded
    assert align_tabs([]) == ""


def test_align_tabs_never_cuts() -> None:
    long = "x" * 300
    assert long in align_tabs([f"{long}\t{long}", "a\tb"])
