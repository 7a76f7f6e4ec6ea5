"""End to end: what ``ps``, ``inspect``, ``network ls``, ``network inspect`` and ``node ls``
show, through the CLI against a real daemon: tables never cut when piped, Docker's
shortening on a terminal, ``--format`` templates, ``-q``, ``--filter``, labels, and
``network prune``'s confirmation."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from conftest import Host

from tether.api.client import Client
from tether.errors import InvalidInput
from tether.lab import lab_down, lab_up

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# the longest names tether takes (63), and a subnet, address and port that fill their columns
LONG_NET = "a-network-whose-name-is-as-long-as-tether-allows-it-to-be-12345"
LONG_CTR = "a-container-whose-name-is-as-long-as-tether-allows-it-to-be-123"
LONG_SUBNET = "10.213.128.0/17"
LONG_CMD = ["sh", "-c", "sleep 600", "an-argument-that-no-terminal-would-show-whole"]


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def on_terminal(host: Host, *args: str, stdin_text: str | None = None, columns: int = 80) -> str:
    """``tether ARGS`` with stdout (and stdin) on a pseudo-terminal ``columns`` wide; what
    it printed, with the terminal's \\r\\n made \\n. ``stdin_text`` is typed once the
    command has asked something."""
    master, slave = pty.openpty()
    env = {**os.environ, "TETHER_NO_AUTOSTART": "1", "COLUMNS": str(columns), "LINES": "40", "TERM": "xterm"}
    proc = subprocess.Popen(
        [*host.enter(), sys.executable, "-m", "tether.cli", "--socket", host.socket, "--state-dir", host.state_dir,
         *args],
        stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=env, start_new_session=True,
    )
    os.close(slave)
    output = b""
    typed = stdin_text is None
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer is gone
                    break
                if not chunk:
                    break
                output += chunk
            if not typed and b"[y/N]" in output:
                os.write(master, (stdin_text or "").encode())
                typed = True
            if proc.poll() is not None and not ready:
                break
        proc.wait(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, (proc.returncode, output, proc.stderr.read() if proc.stderr else "")
    if proc.stderr:
        proc.stderr.close()
    return output.decode().replace("\r\n", "\n")


@pytest.fixture
def wide(host: Host) -> Host:
    """A long network name and subnet, and a container with a long name, command and port."""
    host.tether("network", "create", "--subnet", LONG_SUBNET, "--label", "tier=web", LONG_NET)
    host.tether("run", "-d", "--name", LONG_CTR, "--net", LONG_NET, "-p", "127.0.0.1:18080:8000",
                "--label", "tier=web", "--label", "owner", "--", *LONG_CMD)
    return host


# ---------------------------------------------------------------------- 1. nothing cut
@pytest.mark.parametrize("columns", ["80", "120"])
def test_piped_tables_are_never_cut(wide: Host, columns: str) -> None:
    host = wide
    ctr = host.inspect(LONG_CTR)
    net = host.json("network", "inspect", LONG_NET)[0]
    address = ctr["networks"][LONG_NET]["address"]
    env = {"COLUMNS": columns}
    ps = host.tether("ps", env=env).stdout
    command = json.dumps(" ".join(LONG_CMD))
    for whole in (ctr["id"], LONG_CTR, f"{LONG_NET}={address}", "127.0.0.1:18080->8000/tcp", command):
        assert whole in ps, (whole, ps)
    nets = host.tether("network", "ls", env=env).stdout
    for whole in (net["id"], LONG_NET, LONG_SUBNET):
        assert whole in nets, (whole, nets)
    for table in (ps, nets):
        assert "…" not in table
        assert max(len(line) for line in table.splitlines()) > int(columns)  # wider than the terminal: not wrapped
    # one row per record, the header first, columns lined up
    header, row = ps.splitlines()
    assert header.split("   ")[0] == "CONTAINER ID"
    assert header.index("NAME") == row.index(LONG_CTR)


def test_terminal_cuts_only_the_id_and_the_command(wide: Host) -> None:
    host = wide
    ctr = host.inspect(LONG_CTR)
    net = host.json("network", "inspect", LONG_NET)[0]
    ps = on_terminal(host, "ps")
    row = next(line for line in ps.splitlines() if LONG_CTR in line)
    assert row.split()[0] == ctr["id"][:12] and ctr["id"] not in ps
    assert '"sh -c sleep 600 an-…"' in row  # Docker: 20 characters, quoted
    assert "127.0.0.1:18080->8000/tcp" in row and ctr["networks"][LONG_NET]["address"] in row
    whole = on_terminal(host, "ps", "--no-trunc")
    assert ctr["id"] in whole and json.dumps(" ".join(LONG_CMD)) in whole and "…" not in whole
    nets = on_terminal(host, "network", "ls", columns=120)
    assert net["id"][:12] in nets and net["id"] not in nets and LONG_NET in nets and LONG_SUBNET in nets
    assert net["id"] in on_terminal(host, "network", "ls", "--no-trunc")


# ---------------------------------------------------------------------- 2. --format templates
def test_format_templates(wide: Host) -> None:
    host = wide
    host.tether("network", "create", "--subnet", "10.214.0.0/24", "side")
    host.tether("network", "connect", "side", LONG_CTR)
    ctr = host.inspect(LONG_CTR)
    nets = {n["name"]: n for n in host.json("network", "ls", "--format", "json")}

    names = host.tether("network", "ls", "--format", "{{.name}}").stdout.splitlines()
    assert sorted(names) == sorted(nets)
    assert host.tether("network", "ls", "--format", "{{.Name}}").stdout.splitlines() == names  # Docker's spelling
    assert host.tether("network", "ls", "--format", "{{.ID}}").stdout.split() == [nets[n]["id"] for n in names]

    table = host.tether("network", "ls", "--format", "table {{.name}}\\t{{.driver}}\\t{{.Subnet}}").stdout.splitlines()
    assert table[0].split() == ["NAME", "DRIVER", "SUBNET"]
    assert [line.split() for line in table[1:]] == [[n, nets[n]["driver"], nets[n]["subnet"]] for n in names]
    assert table[0].index("DRIVER") == table[1].index(nets[names[0]]["driver"])
    ids = host.tether("network", "ls", "--format", "table {{.ID}}\t{{.Name}}").stdout.splitlines()
    assert ids[0].split("   ")[0] == "NETWORK ID"

    as_json = [json.loads(line) for line in host.tether("network", "ls", "--format", "{{json .}}").stdout.splitlines()]
    assert as_json == [nets[n] for n in names]

    # range, index, if, functions, over what `inspect` shows
    addrs = host.tether("ps", "--format", "{{range .networks}}{{.address}} {{end}}").stdout.split()
    assert addrs == [ctr["networks"][n]["address"] for n in sorted(ctr["networks"])]
    inspected = host.tether("inspect", "-f", '{{(index .networks "side").address}}', LONG_CTR).stdout
    assert inspected == ctr["networks"]["side"]["address"] + "\n"
    index = host.tether("inspect", "--format", '{{index .networks "side"}}', LONG_CTR).stdout
    assert index.startswith("map[") and ctr["networks"]["side"]["mac"] in index
    labelled = '{{if .labels.tier}}{{.labels.tier}}{{else}}none{{end}} {{if .internal}}in{{else}}out{{end}}'
    assert host.tether("network", "inspect", "-f", labelled, LONG_NET, "side").stdout == "web out\nnone out\n"
    funcs = '{{upper .name}}|{{lower .State}}|{{join .cmd ","}}|{{printf "%.5s" .Names}}|{{len .networks}}'
    assert host.tether("ps", "--format", funcs).stdout == (
        f"{LONG_CTR.upper()}|running|{','.join(LONG_CMD)}|{LONG_CTR[:5]}|2\n"
    )
    assert host.tether("ps", "--format", "table {{.ID}}\t{{.Names}}\t{{.Status}}").stdout.splitlines() == [
        f"CONTAINER ID{' ' * (len(ctr['id']) + 3 - 12)}NAMES{' ' * (len(LONG_CTR) + 3 - 5)}STATUS",
        f"{ctr['id']}   {LONG_CTR}   running",
    ]
    net = host.tether("network", "inspect", "-f", "{{.Subnet}} {{json .labels}} {{.containers}}", LONG_NET).stdout
    assert net.startswith(f'{LONG_SUBNET} {{"tier":"web"}} map[{LONG_CTR}:map[')
    assert json.loads(host.tether("inspect", "-f", "{{json .}}", LONG_CTR).stdout) == host.inspect(LONG_CTR)
    # `json` and `table` are kept
    assert host.json("inspect", "--format", "json", LONG_CTR)[0]["name"] == LONG_CTR
    assert host.tether("ps", "--format", "table").stdout.startswith("CONTAINER ID")


@pytest.mark.parametrize(
    "command",
    [["ps"], ["network", "ls"], ["node", "ls"], ["inspect", "web"], ["network", "inspect", "appnet"]],
)
def test_unknown_format_words_are_refused(host: Host, command: list[str]) -> None:
    for word in ("bogus", "yaml"):
        one_line_error(host.tether(*command, "--format", word, check=False), f"unknown --format {word!r}")


@pytest.mark.parametrize(
    ("template", "position", "what"),
    [
        ("{{.name", "column 1", "unclosed action"),
        ("{{.name}", "column 8", "unexpected '}'"),
        ("{{bogus .name}}", "column 3", 'function "bogus" not defined'),
        ("{{if .name}}x", "column 14", "missing {{end}}"),
        ("table {{.name}}\t{{end}}", "column 17", "unexpected {{end}}"),  # counted in what was typed
    ],
)
def test_bad_templates_are_one_line_errors(host: Host, template: str, position: str, what: str) -> None:
    for command in (["ps"], ["network", "ls"], ["node", "ls"], ["inspect", "x"], ["network", "inspect", "x"]):
        one_line_error(host.tether(*command, "--format", template, check=False), f"at {position}: ", what)


def test_template_errors_while_running_name_the_field(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.215.0.0/24", "appnet")
    line = one_line_error(host.tether("network", "ls", "--format", "{{.nmae}}", check=False), "at column 3")
    assert "no field 'nmae'" in line and "name" in line
    one_line_error(host.tether("network", "inspect", "-f", "{{.subnet.x}}", "appnet", check=False),
                   "can't evaluate field x in type string")


# ---------------------------------------------------------------------- 3. -q and --filter
def test_quiet_lists_ids(wide: Host) -> None:
    host = wide
    host.tether("run", "--name", "done", "--net", "none", "--", "true")
    ctr, done = host.inspect(LONG_CTR), host.inspect("done")
    assert host.tether("ps", "-q").stdout == ctr["id"][:12] + "\n"
    assert sorted(host.tether("ps", "-aq").stdout.split()) == sorted([ctr["id"][:12], done["id"][:12]])
    assert host.tether("ps", "-q", "--no-trunc").stdout == ctr["id"] + "\n"
    nets = host.json("network", "ls", "--format", "json")
    assert host.tether("network", "ls", "-q").stdout.split() == [n["id"][:12] for n in nets]
    assert host.tether("network", "ls", "--quiet", "--no-trunc").stdout.split() == [n["id"] for n in nets]
    assert host.tether("ps", "-q", "--format", "{{.name}}").stdout == ctr["id"][:12] + "\n"  # -q wins, as Docker


def test_network_filters(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.216.0.0/24", "--label", "tier=web", "--label", "env=prod", "front")
    host.tether("network", "create", "--subnet", "10.216.1.0/24", "--label", "tier=db", "back")
    host.tether("network", "create", "--subnet", "10.216.2.0/24", "--label", "solo", "frontier")
    host.tether("run", "-d", "--name", "c1", "--net", "front", "--", "sleep", "600")  # also makes `bridge`
    host.tether("run", "-d", "--name", "c2", "--", "sleep", "600")
    ids = {n["name"]: n["id"] for n in host.json("network", "ls", "--format", "json")}

    def names(*filters: str) -> list[str]:
        args = [a for f in filters for a in ("--filter", f)]
        return sorted(host.tether("network", "ls", *args, "--format", "{{.name}}").stdout.split())

    assert names() == ["back", "bridge", "front", "frontier"]
    assert names("name=front") == ["front", "frontier"]
    assert names("name=^front$") == ["front"]
    assert names("name=^back$", "name=^front$") == ["back", "front"]  # one key: OR
    assert names("id=" + ids["back"][:12]) == ["back"]
    assert names("driver=bridge") == ["back", "bridge", "front", "frontier"]
    assert names("driver=overlay") == []
    assert names("scope=local") == names() and names("scope=global") == []
    assert names("type=builtin") == ["bridge"]
    assert names("type=custom") == ["back", "front", "frontier"]
    assert names("dangling=true") == ["back", "frontier"]
    assert names("dangling=false") == ["bridge", "front"]
    assert names("label=tier") == ["back", "front"]
    assert names("label=tier=db") == ["back"]
    assert names("label=tier", "label=env=prod") == ["front"]  # labels: every one holds, as Docker
    assert names("label=solo") == ["frontier"]
    assert names("name=front", "dangling=true") == ["frontier"]  # different keys: AND
    short = host.tether("network", "ls", "-f", "type=custom", "-f", "dangling=false", "-q").stdout.split()
    assert short == [ids["front"][:12]]
    one_line_error(host.tether("network", "ls", "--filter", "colour=red", check=False),
                   "invalid filter key 'colour'", "dangling, driver, id, label, name, scope, type")
    one_line_error(host.tether("network", "ls", "--filter", "name", check=False), "use --filter KEY=VALUE")
    one_line_error(host.tether("network", "ls", "--filter", "type=mine", check=False), "type=builtin or type=custom")
    one_line_error(host.tether("network", "ls", "--filter", "dangling=perhaps", check=False), "dangling=true")


def test_container_filters(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.217.0.0/24", "appnet")
    host.tether("run", "-d", "--name", "web", "--net", "appnet", "--label", "tier=web", "--", "sleep", "600")
    host.tether("run", "-d", "--name", "web2", "--net", "appnet", "--label", "tier=web", "--label", "canary",
                "--", "sleep", "600")
    host.tether("run", "-d", "--name", "db", "--net", "none", "--label", "tier=db", "--", "sleep", "600")
    host.tether("run", "--name", "job", "--net", "appnet", "--", "true")
    ids = {c["name"]: c["id"] for c in host.json("ps", "-a", "--format", "json")}
    appnet_id = host.json("network", "inspect", "appnet")[0]["id"]

    def names(*filters: str, all_: bool = False) -> list[str]:
        args = [a for f in filters for a in ("-f", f)] + (["-a"] if all_ else [])
        return sorted(host.tether("ps", *args, "--format", "{{.name}}").stdout.split())

    assert names() == ["db", "web", "web2"]
    assert names("name=web") == ["web", "web2"]
    assert names("name=^web$") == ["web"] == names("name=^/web$")
    assert names("name=^db$", "name=^web$") == ["db", "web"]
    assert names("id=" + ids["db"][:12]) == ["db"]
    assert names("label=tier=web") == ["web", "web2"]
    assert names("label=tier=web", "label=canary") == ["web2"]
    assert names("network=appnet") == ["web", "web2"]
    assert names("network=" + appnet_id[:12]) == ["web", "web2"]
    assert names("network=appnet", all_=True) == ["job", "web", "web2"]
    assert names("status=exited") == ["job"]  # a status filter needs no -a, as in Docker
    assert names("status=running") == ["db", "web", "web2"]
    assert names("status=exited", "status=running") == ["db", "job", "web", "web2"]
    assert names("status=exited", "network=appnet") == ["job"]  # different keys: AND
    assert host.tether("ps", "-q", "-f", "name=^db$").stdout == ids["db"][:12] + "\n"
    one_line_error(host.tether("ps", "--filter", "driver=bridge", check=False),
                   "invalid filter key 'driver'", "id, label, name, network, status")
    one_line_error(host.tether("ps", "--filter", "status=up", check=False), "invalid filter 'status=up'")
    one_line_error(host.tether("ps", "--filter", "name=(", check=False), "not a regular expression")
    one_line_error(host.tether("ps", "--filter", "=x", check=False), "use --filter KEY=VALUE")


# ---------------------------------------------------------------------- 4. labels
def test_labels_round_trip(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.218.0.0/24", "--label", "tier=web",
                "--label", "com.example.team=a=b", "--label", "flag", "appnet")
    host.tether("run", "-d", "--name", "web", "--net", "appnet", "-l", "tier=web", "--label", "empty=",
                "--", "sleep", "600")
    labels = {"tier": "web", "com.example.team": "a=b", "flag": ""}
    assert host.json("network", "inspect", "appnet")[0]["labels"] == labels
    assert {n["name"]: n["labels"] for n in host.json("network", "ls", "--format", "json")}["appnet"] == labels
    assert host.inspect("web")["labels"] == {"tier": "web", "empty": ""}
    assert host.json("ps", "--format", "json")[0]["labels"] == {"tier": "web", "empty": ""}
    assert host.tether("inspect", "-f", '{{index .labels "tier"}}', "web").stdout == "web\n"
    assert host.tether("network", "inspect", "-f", '{{index .Labels "com.example.team"}}', "appnet").stdout == "a=b\n"
    # a network made without labels has none
    host.tether("network", "create", "--subnet", "10.218.1.0/24", "plain")
    assert host.json("network", "inspect", "plain")[0]["labels"] == {}
    # refused in one line, nothing made
    before = host.snapshot()
    one_line_error(host.tether("network", "create", "--label", "=x", "bad", check=False), "invalid --label '=x'")
    one_line_error(host.tether("run", "--name", "bad", "--label", "=x", "--", "true", check=False),
                   "invalid --label '=x'")
    client = Client(host.socket)
    with pytest.raises(InvalidInput, match="invalid label key 'a=b'"):
        client.post("/networks", {"name": "bad", "labels": {"a=b": "c"}})
    with pytest.raises(InvalidInput, match="invalid label key ''"):
        client.post("/containers", {"cmd": ["true"], "name": "bad", "labels": {"": "c"}})
    with pytest.raises(InvalidInput, match="labels"):
        client.post("/networks", {"name": "bad", "labels": {"a": 1}})
    assert host.snapshot() == before


# ---------------------------------------------------------------------- 5. prune
def test_prune_asks_unless_forced_and_takes_a_label_filter(host: Host) -> None:
    for i, (name, labels) in enumerate(
        [("used", []), ("keep", ["keep"]), ("old1", ["stage=old"]), ("old2", ["stage=old", "keep"]), ("new", [])]
    ):
        host.tether("network", "create", "--subnet", f"10.219.{i}.0/24", *[f"--label={la}" for la in labels], name)
    host.tether("run", "-d", "--name", "c", "--net", "used", "--", "sleep", "600")

    def names() -> list[str]:
        return sorted(host.tether("network", "ls", "--format", "{{.name}}").stdout.split())

    everything = names()
    # no terminal to ask on, no -f: refused in one line, nothing removed
    line = one_line_error(host.tether("network", "prune", check=False, input=""), "-f")
    assert "not a terminal" in line
    assert names() == everything
    # asked on a terminal: anything but yes keeps everything
    said_no = on_terminal(host, "network", "prune", stdin_text="n\n")
    assert "WARNING! This will remove all custom networks not used by at least one container." in said_no
    assert "Are you sure you want to continue? [y/N]" in said_no
    assert names() == everything
    # a label filter, with -f: only those networks, only unused ones
    pruned = host.tether("network", "prune", "-f", "--filter", "label=stage=old", "--filter", "label!=keep")
    assert pruned.stdout == "Deleted Networks:\nold1\n"
    assert names() == sorted(set(everything) - {"old1"})
    assert host.tether("network", "prune", "--force", "--filter", "label=nothing").stdout == ""
    one_line_error(host.tether("network", "prune", "-f", "--filter", "name=x", check=False),
                   "invalid filter key 'name'")
    # yes on the terminal: every unused custom network goes, the used one and bridge stay
    said_yes = on_terminal(host, "network", "prune", stdin_text="y\n")
    assert "Deleted Networks:" in said_yes
    assert names() == [n for n in everything if n in ("bridge", "used")]
    assert host.tether("network", "prune", "-f").stdout == ""


# ---------------------------------------------------------------------- node ls
def test_node_ls_table_and_templates() -> None:
    """Two lab hosts (etcd and a daemon each): ``node ls`` as a table and through templates."""
    prefix = "tt" + uuid.uuid4().hex[:6]
    base = tempfile.mkdtemp(prefix=f"tether-lab-{prefix}-")
    root, state_root = os.path.join(base, "run"), os.path.join(base, "state")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env |= {"PYTHONPATH": REPO, "TETHER_LAB_ROOT": root, "TETHER_LAB_STATE_ROOT": state_root}

    def tether(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tether.cli", "--host", "h1", *args], capture_output=True,
                              text=True, env=env, timeout=60, cwd=REPO, check=False)

    try:
        lab_up(2, grace=5.0, root=root, state_root=state_root, name_prefix=prefix)
        nodes = json.loads(tether("node", "ls", "--format", "json").stdout)
        names = sorted(n["name"] for n in nodes)
        table = tether("node", "ls").stdout.splitlines()
        assert table[0].split("   ")[0] == "NAME" and "APPLIED REVISION" in table[0]
        assert sorted(line.split()[0] for line in table[1:]) == names
        assert all("up" in line.split() for line in table[1:])
        assert sorted(tether("node", "ls", "--format", "{{.Name}}").stdout.split()) == names
        mine = tether("node", "ls", "--format", "{{if .self}}{{.name}} {{.address}}{{end}}").stdout.split()
        me = next(n for n in nodes if n["self"])
        assert mine == [me["name"], me["address"]]
        titled = tether("node", "ls", "--format", "table {{.name}}\t{{.up}}").stdout.splitlines()
        assert titled[0].split() == ["NAME", "UP"] and sorted(line.split()[1] for line in titled[1:]) == ["true", "true"]
        bad = tether("node", "ls", "--format", "{{.nmae}}")
        assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "no field 'nmae'" in bad.stderr
    finally:
        lab_down(root, state_root=state_root, name_prefix=prefix)
        shutil.rmtree(base, ignore_errors=True)
