"""`run`'s process and /etc options without a kernel: the environment (Docker's defaults,
-e and --env-file as Docker reads them), the checks of every option, what the controller
writes for /etc/hosts, /etc/hostname and /etc/resolv.conf, and per-sandbox DNS upstreams."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer

from tether.cli import run as cli_run
from tether.controller import Controller
from tether.controller.processes import check_run_options, split_host_entry
from tether.dns import Resolver, resolv_conf_text
from tether.errors import InvalidInput
from tether.model import NetMode, PortMapping
from tether.runtime import DEFAULT_PATH, check_environment, container_environment
from tether.testing.datapath import RecordingDatapath
from tether.testing.memory import MemoryStore

NET = NetMode("network", "appnet")


# ---------------------------------------------------------------------- environment


def test_container_environment_is_docker_defaults_then_the_users() -> None:
    assert container_environment([], "web", tty=False) == {"PATH": DEFAULT_PATH, "HOSTNAME": "web"}
    assert container_environment([], "web", tty=True)["TERM"] == "xterm"
    env = container_environment(["A=1", "PATH=/bin", "A=2", "EMPTY=", "EQ=a=b"], "web", tty=False)
    assert env == {"PATH": "/bin", "HOSTNAME": "web", "A": "2", "EMPTY": "", "EQ": "a=b"}


@pytest.mark.parametrize("entry", ["NOVALUE", "=x", "A=\0"])
def test_check_environment_refuses(entry: str) -> None:
    with pytest.raises(InvalidInput):
        check_environment([entry])


def test_env_options_and_files_as_docker_reads_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_SHELL", "shell value")
    monkeypatch.delenv("NOT_SET_XYZ", raising=False)
    env_file = tmp_path / "a.env"
    env_file.write_bytes(
        b"\xef\xbb\xbfFIRST=1\n# comment\n   \n  INDENTED=x y \r\nFROM_SHELL\nNOT_SET_XYZ\nQ='q'\nLAST=last"
    )
    entries = cli_run._environment(["-A=1"[1:], "FROM_SHELL", "NOT_SET_XYZ", "B="], [str(env_file)])
    assert entries == [
        "FIRST=1", "INDENTED=x y ", "FROM_SHELL=shell value", "Q='q'", "LAST=last",
        "A=1", "FROM_SHELL=shell value", "B=",
    ]


@pytest.mark.parametrize(
    "content,needle",
    [(b"A B=1\n", "whitespace"), (b"=1\n", "no variable name"), (b"A=\xff\n", "UTF-8"), (b"A=\0\n", "NUL")],
)
def test_bad_env_file_lines(tmp_path: Path, content: bytes, needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.env"
    bad.write_bytes(content)
    with pytest.raises(typer.Exit):
        cli_run._environment([], [str(bad)])
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and needle in err and len(err.splitlines()) == 1


def test_bad_env_option_and_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit):
        cli_run._environment(["=x"], [])
    assert "variable name is empty" in capsys.readouterr().err
    with pytest.raises(typer.Exit):
        cli_run._environment([], ["/no/such.env"])
    assert "cannot read --env-file /no/such.env" in capsys.readouterr().err


# ---------------------------------------------------------------------- option checks


def test_options_are_normalised() -> None:
    opts = check_run_options(
        NET, env=["A=1"], workdir="/app", dns=["192.0.2.1", "2001:db8::1"], dns_search=["corp.example", "."],
        dns_options=["ndots:2"], extra_hosts=["db:10.0.0.5", "six:2001:DB8::6", "gw:host-gateway", "new=10.0.0.7"],
        mac_address="02:42:AC:11:00:02", expose=["80", "53/udp", "8000-8002/tcp", "80/tcp"], publish_all=True,
    )
    assert opts.workdir == "/app" and opts.mac_address == "02:42:ac:11:00:02"
    assert opts.extra_hosts == ["db:10.0.0.5", "six:2001:db8::6", "gw:host-gateway", "new:10.0.0.7"]
    assert opts.expose == ["80/tcp", "53/udp", "8000/tcp", "8001/tcp", "8002/tcp"]
    assert check_run_options(NET).workdir == "/"
    assert split_host_entry("six:2001:db8::6") == ("six", "2001:db8::6")
    assert split_host_entry("b=[::1]") == ("b", "::1")


def test_publish_all_adds_the_exposed_ports_not_published_already() -> None:
    opts = check_run_options(NET, expose=["80", "53/udp", "8080"], publish_all=True)
    mapped = opts.published([PortMapping("tcp", 8080, 8080)])
    assert mapped == [PortMapping("tcp", 8080, 8080), PortMapping("tcp", 0, 80), PortMapping("udp", 0, 53)]
    assert check_run_options(NET, expose=["80"]).published([]) == []  # --expose alone publishes nothing


@pytest.mark.parametrize(
    "mode,kwargs,needle",
    [
        (NET, {"extra_hosts": ["nocolon"]}, "--add-host"),
        (NET, {"extra_hosts": ["db:300.1.1.1"]}, "--add-host"),
        (NET, {"extra_hosts": ["two words:10.0.0.1"]}, "--add-host"),
        (NetMode("none"), {"extra_hosts": ["h:host-gateway"]}, "host-gateway"),
        (NetMode("container", "web"), {"extra_hosts": ["h:10.0.0.1"]}, "--add-host"),
        (NET, {"dns": ["resolver.example"]}, "--dns"),
        (NET, {"dns": ["192.0.2.1:53"]}, "--dns"),
        (NET, {"dns_search": ["bad domain"]}, "--dns-search"),
        (NET, {"dns_options": ["a b"]}, "--dns-option"),
        (NET, {"dns_options": [""]}, "--dns-option"),
        (NET, {"mac_address": "zz:42:00:00:00:01"}, "mac"),
        (NET, {"mac_address": "03:42:00:00:00:01"}, "multicast"),
        (NetMode("host"), {"mac_address": "02:42:00:00:00:01"}, "--mac-address"),
        (NET, {"workdir": "app"}, "--workdir"),
        (NetMode("host"), {"publish_all": True}, "-P"),
        (NetMode("none"), {"publish_all": True, "expose": ["80"]}, "-P"),
        (NET, {"expose": ["80/sctp"]}, "--expose"),
        (NET, {"expose": ["0"]}, "--expose"),
        (NET, {"expose": ["90-80"]}, "--expose"),
        (NET, {"env": ["=x"]}, "environment"),
    ],
)
def test_bad_options(mode: NetMode, kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidInput) as err:
        check_run_options(mode, **kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------- /etc files


def test_resolv_conf_text() -> None:
    assert resolv_conf_text() == "nameserver 127.0.0.11\noptions ndots:0\n"
    assert resolv_conf_text(["a.example", "b.example"], ["timeout:2"]) == (
        "nameserver 127.0.0.11\nsearch a.example b.example\noptions ndots:0 timeout:2\n"
    )
    assert resolv_conf_text([], ["ndots:3"]) == "nameserver 127.0.0.11\noptions ndots:3\n"
    assert resolv_conf_text(["."], [], ["192.0.2.1", "192.0.2.2"]) == "nameserver 192.0.2.1\nnameserver 192.0.2.2\n"


class NoSocketResolver(Resolver):
    """The resolver's names and upstreams, without sockets in namespaces the fake kernel lacks."""

    def serve(self, sandbox: str, netns_path: str) -> None:
        pass


@pytest.fixture
def ctl(tmp_path: Path) -> Controller:
    resolver = NoSocketResolver(["192.0.2.53"])
    return Controller(
        MemoryStore(), RecordingDatapath(["192.168.1.0/24"]), str(tmp_path), netns_prefix="u-", resolver=resolver
    )


def test_process_spec_from_the_record(ctl: Controller) -> None:
    ctl.create_network("appnet", subnet="10.1.0.0/24")
    ctl.create_container(
        ["sh"], name="web", net="appnet", hostname="www", env=["A=1"], workdir="/srv", tty=True, interactive=True,
        dns=["192.0.2.1"], dns_search=["corp.example"], extra_hosts=["db:10.9.9.9", "gw:host-gateway"],
    )
    spec = ctl._process_spec(ctl._container("web"), detach=True)
    assert spec.env == {"PATH": DEFAULT_PATH, "HOSTNAME": "www", "TERM": "xterm", "A": "1"}
    assert (spec.workdir, spec.tty, spec.interactive) == ("/srv", True, True)
    assert spec.hostname_file is not None and Path(spec.hostname_file).read_text() == "www\n"
    assert spec.hosts_file is not None
    hosts = Path(spec.hosts_file).read_text().splitlines()
    assert hosts[0] == "127.0.0.1\tlocalhost" and hosts[-3:] == ["10.1.0.2\twww", "10.9.9.9\tdb", "10.1.0.1\tgw"]
    assert spec.resolv_conf is not None
    assert Path(spec.resolv_conf).read_text() == "nameserver 127.0.0.11\nsearch corp.example\noptions ndots:0\n"
    assert ctl.resolver is not None and ctl.resolver.upstreams_of(ctl._container("web").id) == ["192.0.2.1"]
    # the record keeps it all for the next start
    record = ctl.inspect_container("web")
    assert record["env"] == ["A=1"] and record["dns"] == ["192.0.2.1"] and record["tty"] is True


def test_default_network_and_none_write_dns_servers_directly(ctl: Controller) -> None:
    ctl.create_container(["true"], name="d", dns=["192.0.2.1"], dns_options=["ndots:2"])
    spec = ctl._process_spec(ctl._container("d"), detach=False)
    assert spec.resolv_conf is not None
    assert Path(spec.resolv_conf).read_text() == "nameserver 192.0.2.1\noptions ndots:2\n"
    assert ctl.resolver is not None and ctl.resolver.upstreams_of(ctl._container("d").id) == ["192.0.2.53"]
    ctl.create_container(["true"], name="n", net="none")
    spec = ctl._process_spec(ctl._container("n"), detach=False)
    assert spec.resolv_conf is not None and Path(spec.resolv_conf).read_text().startswith("nameserver 127.0.0.11\n")
    ctl.create_container(["true"], name="h", net="host")
    assert ctl._process_spec(ctl._container("h"), detach=False).resolv_conf is None  # the host's own


def test_mac_address_reaches_the_endpoint(ctl: Controller) -> None:
    ctl.create_network("appnet", subnet="10.1.0.0/24")
    ctl.create_container(["true"], name="m", net="appnet", mac_address="02:42:0A:01:00:99")
    assert ctl.inspect_container("m")["networks"]["appnet"]["mac"] == "02:42:0a:01:00:99"


def test_resolver_upstreams_per_sandbox() -> None:
    resolver = Resolver(["192.0.2.53", "192.0.2.54:5353"])
    assert resolver.upstreams_of("a") == ["192.0.2.53", "192.0.2.54:5353"]
    resolver.set_upstreams("a", ["198.51.100.1"])
    assert resolver.upstreams_of("a") == ["198.51.100.1"]
    assert resolver.upstreams_of("b") == ["192.0.2.53", "192.0.2.54:5353"]
    resolver.unserve("a")  # forgets them with the sandbox
    assert resolver.upstreams_of("a") == ["192.0.2.53", "192.0.2.54:5353"]
    with pytest.raises(InvalidInput):
        resolver.set_upstreams("a", ["not-an-address"])
