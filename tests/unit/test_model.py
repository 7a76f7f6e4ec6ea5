"""Pure parsing in the model: names, net modes, published ports."""

from __future__ import annotations

import pytest

from tether.errors import InvalidInput
from tether.model import Container, NetMode, PortMapping, parse_net_mode, parse_port_spec, validate_name


def test_net_modes() -> None:
    assert parse_net_mode(None) == NetMode("network", "bridge")
    assert parse_net_mode("none") == NetMode("none")
    assert parse_net_mode("host") == NetMode("host")
    assert parse_net_mode("container:web") == NetMode("container", "web")
    assert parse_net_mode("appnet") == NetMode("network", "appnet")
    assert str(parse_net_mode("container:web")) == "container:web"
    with pytest.raises(InvalidInput):
        parse_net_mode("container:")
    with pytest.raises(InvalidInput):
        parse_net_mode("bad/net")


@pytest.mark.parametrize("name", ["a", "web-1", "db.prod", "x_y", "A" * 63])
def test_valid_names(name: str) -> None:
    assert validate_name("container", name) == name


@pytest.mark.parametrize("name", ["", "-a", ".a", "a b", "a/b", "A" * 64, "é"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidInput, match="invalid container name"):
        validate_name("container", name)


def test_port_specs() -> None:
    assert parse_port_spec("8080:8000") == [PortMapping("tcp", 8080, 8000)]
    assert parse_port_spec("127.0.0.1:9090:9000/udp") == [PortMapping("udp", 9090, 9000, "127.0.0.1")]
    assert parse_port_spec("8000-8002:9000-9002/TCP") == [
        PortMapping("tcp", 8000, 9000),
        PortMapping("tcp", 8001, 9001),
        PortMapping("tcp", 8002, 9002),
    ]
    assert parse_port_spec("80") == [PortMapping("tcp", 0, 80)]
    assert parse_port_spec("127.0.0.1::80") == [PortMapping("tcp", 0, 80, "127.0.0.1")]
    assert str(PortMapping("udp", 53, 5353, "10.0.0.1")) == "10.0.0.1:53:5353/udp"


@pytest.mark.parametrize(
    "spec,needle",
    [
        ("0:80", "out of range"),
        ("8080:70000", "out of range"),
        ("8000-8002:9000-9001", "same length"),
        ("8080:80/sctp", "unknown protocol"),
        ("a:80", "not a port"),
        ("8010-8000:80-90", "ends before"),
        ("1.2.3:80:80", "not an IPv4"),
        ("1:2:3:4", "use [HOSTIP:]"),
        ("8080:", "use [HOSTIP:]"),
        ("80-82", "host port range"),
    ],
)
def test_bad_port_specs(spec: str, needle: str) -> None:
    with pytest.raises(InvalidInput, match="invalid -p") as info:
        parse_port_spec(spec)
    assert needle in str(info.value)


def test_container_round_trip() -> None:
    c = Container(id="i", name="n", hostname="h", net_mode="bridge", netns="n", cmd=["true"],
                  ports=[PortMapping("tcp", 1, 2).to_dict()])
    assert Container.from_dict(c.to_dict()) == c
    assert c.port_mappings == [PortMapping("tcp", 1, 2)]
