"""`tether run` as a Docker user expects it, end to end with a real daemon: the environment
(exactly what was given, on nobody's command line), the working directory, /etc/hosts and
/etc/hostname, --dns per container, --mac-address, -P/--expose with `tether port`, and bad
input refused in one line with nothing changed.

Everything outside the host is a namespace the test made (the ``world`` fixture: a LAN at
198.51.100.1 and an "internet" at 203.0.113.10); the fake DNS servers run there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Host, World, sh
from probes import TCP_ASK, TCP_WHO

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root")]

DOCKER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def env_of(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def wait_for(predicate: object, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def logs_when(host: Host, name: str, needle: str) -> str:
    holder: list[str] = []

    def has() -> bool:
        holder[:] = [host.tether("logs", name).stdout]
        return needle in holder[0]

    wait_for(has, what=f"{needle!r} in the logs of {name}")
    return holder[0]


def command_lines() -> list[str]:
    """Every process' command line, as ``ps -ww -eo args`` shows it to any user, and as
    /proc says (nothing is cut)."""
    lines = sh("ps", "-ww", "-eo", "args").stdout.splitlines()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                lines.append(Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass
    return lines


# ---------------------------------------------------------------------- the environment


def test_environment_is_exactly_what_was_given(host: Host, tmp_path: Path) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_bytes(
        b"\xef\xbb\xbf# a comment\n"
        b"\n"
        b"FROM_FILE=file value with spaces  \n"
        b'   QUOTED="kept as is"\r\n'
        b"OVERRIDDEN=from-file\n"
        b"PASSED_THROUGH\n"
        b"NOT_SET_ANYWHERE_XYZ\n"
        b"EMPTY=\n"
    )
    client_env = {"PASSED_THROUGH": "from-the-client", "CLIENT_ONLY": "must-not-leak", "MAKELEVEL": "1"}
    args = ["-e", "A=1", "-e", "OVERRIDDEN=from-e", "-e", "PASSED_THROUGH", "-e", "NOT_SET_EITHER_XYZ",
            "--env-file", str(env_file)]
    expected = {
        "PATH": DOCKER_PATH,
        "FROM_FILE": "file value with spaces  ",
        "QUOTED": '"kept as is"',
        "OVERRIDDEN": "from-e",
        "PASSED_THROUGH": "from-the-client",
        "EMPTY": "",
        "A": "1",
    }
    # foreground: the CLI runs it, yet none of the CLI's environment gets in
    fg = host.tether("run", "--rm", "--name", "fg", "--net", "none", *args, "--", "env", env=client_env)
    assert env_of(fg.stdout) == {**expected, "HOSTNAME": "fg"}
    # detached: the daemon's shim runs it, yet none of the daemon's environment gets in
    host.tether("run", "-d", "--name", "bg", "--net", "none", *args, "--", "sh", "-c", "env; echo done; sleep 600",
                env=client_env)
    out = logs_when(host, "bg", "done")
    assert env_of(out) == {**expected, "HOSTNAME": "bg", "PWD": "/", "SHLVL": "1"} or (
        # dash exports only PWD; other shells add SHLVL
        env_of(out) == {**expected, "HOSTNAME": "bg", "PWD": "/"}
    )
    # stored with the container: inspect shows the user's entries, in order
    assert host.inspect("bg")["env"][-2:] == ["OVERRIDDEN=from-e", "PASSED_THROUGH=from-the-client"]
    # exec gets the container's environment too, not the CLI's
    r = host.tether("exec", "-e", "EXTRA=x", "bg", "--", "env", env=client_env)
    assert env_of(r.stdout) == {**expected, "HOSTNAME": "bg", "EXTRA": "x"}
    # a later start runs it with the same environment, whoever starts it
    host.tether("stop", "-t", "0", "bg")
    host.tether("start", "bg", env={"ANOTHER_CLIENT_VAR": "no"})
    r = host.tether("exec", "bg", "--", "env")
    assert env_of(r.stdout) == {**expected, "HOSTNAME": "bg"}


def test_environment_is_on_no_command_line(host: Host, tmp_path: Path) -> None:
    secrets = {k: f"s3cret-{uuid.uuid4().hex}" for k in ("ENV_D", "FILE_FG", "CLIENT_FG")}
    host.tether("run", "-d", "--name", "quiet", "--net", "none", "-e", f"ENV_D={secrets['ENV_D']}",
                "--", "sleep", "600")
    env_file = tmp_path / "fg.env"
    env_file.write_text(f"FILE_FG={secrets['FILE_FG']}\n")
    # a foreground run that stays up while we look: --env-file and -e KEY keep values off its line
    fg = subprocess.Popen(
        [*host.enter(), sys.executable, "-m", "tether.cli", "--socket", host.socket, "--state-dir", host.state_dir,
         "run", "--rm", "--name", "fgquiet", "--net", "none", "--env-file", str(env_file), "-e", "CLIENT_FG",
         "--", "sh", "-c", "echo up; sleep 30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TETHER_NO_AUTOSTART": "1", "CLIENT_FG": secrets["CLIENT_FG"]},
    )
    try:
        assert fg.stdout is not None and fg.stdout.readline().strip() == "up"
        lines = command_lines()
        # the detached container's shim (its parent) was given nothing on its command line
        shim = int(Path(f"/proc/{host.inspect('quiet')['pid']}/status").read_text().split("PPid:")[1].split()[0])
        assert Path(f"/proc/{shim}/cmdline").read_bytes().split(b"\0")[-3:] == [b"-m", b"tether.runtime.shim", b""]
        for value in secrets.values():
            assert not [line for line in lines if value in line]
        # the containers do have them
        inside = host.tether("exec", "quiet", "--", "env").stdout
        assert f"ENV_D={secrets['ENV_D']}" in inside
        wait_for(lambda: host.inspect("fgquiet")["pid"] > 0, what="the foreground run to report its pid")
        fg_pid = host.inspect("fgquiet")["pid"]
        environ = Path(f"/proc/{fg_pid}/environ").read_bytes().split(b"\0")
        assert f"FILE_FG={secrets['FILE_FG']}".encode() in environ
        assert f"CLIENT_FG={secrets['CLIENT_FG']}".encode() in environ
        # and no spec file with them was left behind in the state dir
        for path in Path(host.state_dir, "containers").rglob("*"):
            if path.is_file() and path.name not in ("log",):
                assert not any(v.encode() in path.read_bytes() for v in secrets.values()), path
    finally:
        fg.kill()
        fg.wait()


def test_workdir(host: Host) -> None:
    r = host.tether("run", "--rm", "--net", "none", "--", "pwd")
    assert r.stdout.strip() == "/"
    r = host.tether("run", "--rm", "--net", "none", "-w", "/tmp", "--", "pwd")
    assert r.stdout.strip() == "/tmp"
    host.tether("run", "-d", "--name", "wd", "--net", "none", "--workdir", "/usr", "--", "sh", "-c", "pwd; sleep 600")
    assert logs_when(host, "wd", "/usr").strip() == "/usr"
    assert host.tether("exec", "wd", "--", "pwd").stdout.strip() == "/usr"
    assert host.tether("exec", "-w", "/etc", "wd", "--", "pwd").stdout.strip() == "/etc"
    r = host.tether("run", "--rm", "--net", "none", "-w", "/no/such/dir", "--", "true", check=False)
    assert r.returncode != 0 and "working directory" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------- /etc/hosts, /etc/hostname


def test_hosts_and_hostname_files(world: World) -> None:
    host = world.host
    host_hosts, host_hostname = Path("/etc/hosts").read_text(), Path("/etc/hostname").read_text()
    host.tether("network", "create", "--subnet", "10.221.0.0/24", "appnet")
    host.tether("run", "-d", "--name", "web", "--net", "appnet", "--hostname", "www.example.test",
                "--add-host", "lanbox:198.51.100.1", "--add-host", "gw:host-gateway",
                "--add-host", "six:2001:db8::6", "--", "sleep", "600")
    assert host.tether("exec", "web", "--", "cat", "/etc/hostname").stdout == "www.example.test\n"
    assert host.tether("exec", "web", "--", "hostname").stdout.strip() == "www.example.test"
    hosts = host.tether("exec", "web", "--", "cat", "/etc/hosts").stdout.splitlines()
    assert hosts[0] == "127.0.0.1\tlocalhost"
    assert "::1\tlocalhost ip6-localhost ip6-loopback" in hosts
    assert "10.221.0.2\twww.example.test" in hosts
    assert "198.51.100.1\tlanbox" in hosts
    assert "10.221.0.1\tgw" in hosts
    assert "2001:db8::6\tsix" in hosts
    # glibc reads it: names resolve, and the LAN machine answers a ping by name
    assert host.tether("exec", "web", "--", "getent", "hosts", "lanbox").stdout.split() == ["198.51.100.1", "lanbox"]
    assert host.tether("exec", "web", "--", "getent", "hosts", "www.example.test").stdout.split()[0] == "10.221.0.2"
    r = host.tether("exec", "web", "--", "ping", "-c1", "-W2", "lanbox", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert host.tether("exec", "web", "--", "ping", "-c1", "-W2", "gw", check=False).returncode == 0
    # a foreground container gets its files too; the default hostname is the name
    r = host.tether("run", "--rm", "--name", "fgbox", "--net", "appnet", "--", "sh", "-c",
                    "cat /etc/hostname; grep fgbox /etc/hosts")
    lines = r.stdout.splitlines()
    assert lines[0] == "fgbox" and re.fullmatch(r"10\.221\.0\.\d+\tfgbox", lines[1])
    # none: localhost only (and its --add-host); host mode: the host's own file plus --add-host
    r = host.tether("run", "--rm", "--net", "none", "--add-host", "db:192.0.2.5", "--", "cat", "/etc/hosts")
    assert r.stdout.splitlines()[-1] == "192.0.2.5\tdb" and "127.0.0.1\tlocalhost" in r.stdout
    r = host.tether("run", "--rm", "--net", "host", "--add-host", "db:192.0.2.5", "--", "cat", "/etc/hosts")
    assert r.stdout == host_hosts + ("" if host_hosts.endswith("\n") else "\n") + "192.0.2.5\tdb\n"
    # nothing of it reached the machine's own files
    assert Path("/etc/hosts").read_text() == host_hosts
    assert Path("/etc/hostname").read_text() == host_hostname


# ---------------------------------------------------------------------- --dns

FAKE_DNS = (
    "import socket,struct,sys\n"
    "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 53))\n"
    "answer=socket.inet_aton(sys.argv[1])\n"
    "while True:\n"
    "    q, a = s.recvfrom(512)\n"
    "    end = 12\n"
    "    while q[end]: end += q[end] + 1\n"
    "    question = q[12:end + 5]\n"
    "    qtype = struct.unpack('!H', q[end + 1:end + 3])[0]\n"
    "    count = 1 if qtype == 1 else 0\n"
    "    hdr = q[:2] + b'\\x81\\x80' + struct.pack('!HHHH', 1, count, 0, 0)\n"
    "    ans = b'\\xc0\\x0c' + struct.pack('!HHIH', 1, 1, 5, 4) + answer if count else b''\n"
    "    s.sendto(hdr + question + ans, a)\n"
)


@pytest.fixture
def dns_servers(world: World) -> Iterator[None]:
    """Two fake upstreams: the daemon's own (the internet's, 203.0.113.10, answers
    203.0.113.99) and a LAN one (198.51.100.1, answers 192.0.2.77) for --dns."""
    procs = [
        subprocess.Popen(["ip", "netns", "exec", world.inet, "python3", "-c", FAKE_DNS, "203.0.113.99"]),
        subprocess.Popen(["ip", "netns", "exec", world.lan, "python3", "-c", FAKE_DNS, "192.0.2.77"]),
    ]
    try:
        time.sleep(0.3)  # bound before the first query
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def resolve(host: Host, name: str, what: str) -> str:
    r = host.tether("exec", name, "--", "getent", "ahostsv4", what, check=False)
    return r.stdout.split()[0] if r.returncode == 0 and r.stdout else f"FAIL({r.returncode})"


def test_dns_servers_per_container(world: World, dns_servers: None) -> None:
    host = world.host
    host.tether("network", "create", "--subnet", "10.222.0.0/24", "appnet")
    host.tether("run", "-d", "--name", "own", "--net", "appnet", "--dns", "198.51.100.1",
                "--dns-search", "corp.example", "--dns-option", "timeout:2", "--", "sleep", "600")
    host.tether("run", "-d", "--name", "plain", "--net", "appnet", "--", "sleep", "600")
    host.tether("run", "-d", "--name", "direct", "--dns", "198.51.100.1", "--dns-search", "corp.example",
                "--dns-option", "ndots:2", "--", "sleep", "600")  # the default network
    # a user-defined network keeps the embedded resolver; --dns became its upstream for `own` alone
    own_conf = host.tether("exec", "own", "--", "cat", "/etc/resolv.conf").stdout
    assert own_conf == "nameserver 127.0.0.11\nsearch corp.example\noptions ndots:0 timeout:2\n"
    assert resolve(host, "own", "anything.example.org") == "192.0.2.77"
    assert resolve(host, "plain", "anything.example.org") == "203.0.113.99"
    assert resolve(host, "own", "plain") == host.inspect("plain")["networks"]["appnet"]["address"]  # names still local
    # the default network: the servers are written directly and asked directly (through NAT)
    direct_conf = host.tether("exec", "direct", "--", "cat", "/etc/resolv.conf").stdout
    assert direct_conf == "nameserver 198.51.100.1\nsearch corp.example\noptions ndots:2\n"
    assert resolve(host, "direct", "anything.example.org") == "192.0.2.77"
    # --net none gets the file as asked; host mode too
    r = host.tether("run", "--rm", "--net", "none", "--dns", "192.0.2.53", "--", "cat", "/etc/resolv.conf")
    assert r.stdout == "nameserver 192.0.2.53\n"
    r = host.tether("run", "--rm", "--net", "host", "--dns", "192.0.2.53", "--", "cat", "/etc/resolv.conf")
    assert r.stdout == "nameserver 192.0.2.53\n"
    # the upstreams survive a daemon restart (they are kept in the record, not just in memory)
    host.kill_daemon()
    host.start_daemon()
    assert resolve(host, "own", "again.example.org") == "192.0.2.77"
    assert resolve(host, "plain", "again.example.org") == "203.0.113.99"


# ---------------------------------------------------------------------- --mac-address


def test_mac_address(host: Host) -> None:
    host.tether("network", "create", "--subnet", "10.223.0.0/24", "appnet")
    host.tether("run", "-d", "--name", "m", "--net", "appnet", "--mac-address", "02:42:AC:11:00:99", "--",
                "sleep", "600")
    assert "link/ether 02:42:ac:11:00:99 " in host.tether("exec", "m", "--", "ip", "-o", "link", "show", "eth0").stdout
    assert host.inspect("m")["networks"]["appnet"]["mac"] == "02:42:ac:11:00:99"
    assert host.inspect("m")["mac_address"] == "02:42:ac:11:00:99"
    # the bridge side learns it: the host reaches the container by it
    addr = host.inspect("m")["networks"]["appnet"]["address"]
    assert host.in_host("ping", "-c1", "-W2", addr, check=False).returncode == 0
    # a start after a stop attaches it again with the same MAC
    host.tether("stop", "-t", "0", "m")
    host.tether("start", "m")
    assert "link/ether 02:42:ac:11:00:99 " in host.tether("exec", "m", "--", "ip", "-o", "link", "show", "eth0").stdout


# ---------------------------------------------------------------------- -P, --expose, port


def test_publish_all_and_port(world: World) -> None:
    host = world.host
    host.tether("network", "create", "--subnet", "10.224.0.0/24", "appnet")
    host.tether("run", "-d", "--name", "svc", "--net", "appnet", "-P", "--expose", "8000", "--expose", "9000/udp",
                "-p", "7000:7000", "--expose", "7000", "--", "python3", "-c", TCP_WHO, "8000")
    ports = sorted((p["container_port"], p["protocol"], p["host_port"]) for p in host.inspect("svc")["ports"])
    assert [(c, proto) for c, proto, _ in ports] == [(7000, "tcp"), (8000, "tcp"), (9000, "udp")]
    by_port = {c: hp for c, _, hp in ports}
    assert by_port[7000] == 7000 and 32768 <= by_port[8000] < 61000 and 32768 <= by_port[9000] < 61000
    listing = host.tether("port", "svc").stdout.splitlines()
    assert listing == [
        "7000/tcp -> 0.0.0.0:7000",
        f"8000/tcp -> 0.0.0.0:{by_port[8000]}",
        f"9000/udp -> 0.0.0.0:{by_port[9000]}",
    ]
    assert host.tether("port", "svc", "8000").stdout == f"0.0.0.0:{by_port[8000]}\n"
    assert host.tether("port", "svc", "9000/udp").stdout == f"0.0.0.0:{by_port[9000]}\n"
    r = host.tether("port", "svc", "8001", check=False)
    assert r.returncode != 0 and r.stderr.startswith("Error: ") and "8001/tcp" in r.stderr
    # real TCP to the published port: from the host itself, and from a machine on the LAN
    deadline = time.monotonic() + 10
    got = ""
    while time.monotonic() < deadline:
        got = host.in_host("python3", "-c", TCP_ASK, "127.0.0.1", str(by_port[8000]), check=False).stdout.strip()
        if got and not got.startswith("FAIL"):
            break
        time.sleep(0.1)
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", got), got
    got = world.in_lan("python3", "-c", TCP_ASK, world.host_ip, str(by_port[8000]), check=False).stdout.strip()
    assert got == world.lan_ip  # DNAT keeps the client's address


# ---------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def populated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Host, Path]:
    from conftest import _new_host

    host = _new_host()
    request.addfinalizer(host.cleanup)
    host.start_daemon()
    host.tether("network", "create", "--subnet", "10.225.0.0/24", "base")
    host.tether("run", "-d", "--name", "held", "--net", "base", "--", "sleep", "600")
    files = tmp_path_factory.mktemp("envfiles")
    (files / "bad-key.env").write_text("GOOD=1\nBAD KEY=2\n")
    (files / "no-key.env").write_text("=value\n")
    (files / "latin1.env").write_bytes(b"NAME=caf\xe9\n")
    return host, files


BAD = [
    ("add-host without address", ["--add-host", "lonely"], "--add-host"),
    ("add-host bad address", ["--add-host", "db:10.0.0.999"], "--add-host"),
    ("add-host bad name", ["--add-host", "bad name:10.0.0.1"], "--add-host"),
    ("add-host empty name", ["--add-host", ":10.0.0.1"], "--add-host"),
    ("host-gateway without network", ["--net", "none", "--add-host", "h:host-gateway"], "host-gateway"),
    ("dns not an address", ["--dns", "dns.example.com"], "--dns"),
    ("dns-search bad", ["--dns-search", "bad domain"], "--dns-search"),
    ("dns-option with space", ["--dns-option", "ndots: 2"], "--dns-option"),
    ("dns on container mode", ["--net", "container:held", "--dns", "192.0.2.1"], "--dns"),
    ("env without name", ["-e", "=oops"], "-e"),
    ("env file missing", ["--env-file", "/no/such/file.env"], "--env-file"),
    ("env file key with space", ["--env-file", "{tmp}/bad-key.env"], "whitespace"),
    ("env file without key", ["--env-file", "{tmp}/no-key.env"], "no variable name"),
    ("env file not utf-8", ["--env-file", "{tmp}/latin1.env"], "UTF-8"),
    ("mac not a mac", ["--mac-address", "02:42:zz:00:00:01"], "mac"),
    ("mac too short", ["--mac-address", "02:42:00:01"], "mac"),
    ("mac multicast", ["--mac-address", "01:00:5e:00:00:01"], "multicast"),
    ("mac without network", ["--net", "none", "--mac-address", "02:42:00:00:00:01"], "--mac-address"),
    ("workdir relative", ["-w", "relative/dir"], "--workdir"),
    ("publish on host", ["--net", "host", "-p", "8080:80"], "-p"),
    ("publish on none", ["--net", "none", "-p", "8080:80"], "-p"),
    ("publish-all on host", ["--net", "host", "-P", "--expose", "80"], "-P"),
    ("publish-all on none", ["--net", "none", "-P"], "-P"),
    ("expose bad", ["--expose", "80/sctp"], "--expose"),
    ("expose out of range", ["--expose", "70000"], "--expose"),
]


@pytest.mark.parametrize("label,flags,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_run_input_changes_nothing(populated: tuple[Host, Path], label: str, flags: list[str], needle: str) -> None:
    host, files = populated
    flags = [f.replace("{tmp}", str(files)) for f in flags]
    args = ["run", "-d", *(["--net", "base"] if "--net" not in flags else []), *flags, "--", "sleep", "1"]
    before = host.snapshot()
    r = host.tether(*args, check=False)
    assert r.returncode != 0, f"{label}: succeeded: {r.stdout}"
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"{label}: expected one line, got {r.stderr!r}"
    assert lines[0].startswith("Error: ") and needle.lower() in lines[0].lower(), lines[0]
    assert host.snapshot() == before
