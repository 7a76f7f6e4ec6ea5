"""``tether-cni``: the CNI plugin front end, for runtimes that speak CNI (Podman's CNI
backend, containerd/nerdctl, CRI-O).

A runtime executes the plugin once per operation, with the operation in ``CNI_*``
environment variables and the network configuration as JSON on stdin (CNI spec 1.1.0).
The plugin is a thin client of the tether daemon: it turns that input into one API
request (``POST /cni/add|del|check|gc``, ``GET /ping``) and the daemon's answer into the
spec's result or error on stdout. All state and all kernel work stay in the daemon, so
attachments made through CNI live beside ``tether run`` containers: same IPAM, same
bridges, same names, same published-port map.

A process per call makes start-up the cost that matters: this module imports only
``tether.api.client``, ``tether.errors``, ``tether.wirejson``, os and sys (no Typer, Rich
or pyroute2; not even ``json``, ``typing`` or ``socket``, which cost milliseconds per call),
and it never starts a daemon (a runtime must not get a daemon as a side effect of an ADD).

Configuration (one plugin object; ``type`` must match the installed binary's name)::

    {"cniVersion": "1.0.0", "name": "appnet", "type": "tether",
     "network": "appnet",                       # tether network; default: "name"
     "socket": "/run/tether/tether.sock",       # default: $TETHER_SOCKET, else this
     "capabilities": {"portMappings": true, "ips": true, "mac": true, "aliases": true}}

Capabilities read from ``runtimeConfig``: ``portMappings`` (a v6 ``hostIP`` needs a
dual-stack network), ``ips`` (at most one IPv4 and one IPv6 address, prefixes ignored; a
v6 one needs a network made with ``--ipv6``), ``mac``, ``aliases`` (a list, or Podman's
``{network: [names]}``); ``CNI_ARGS`` ``IP=`` (comma-separated, one per family) and
``MAC=`` are used when the capability is absent.

On a dual-stack network the ADD result lists both addresses on the container's interface
(each with its gateway) and both default routes, ``0.0.0.0/0`` and ``::/0``; CHECK
verifies both, DEL frees both.

Error codes (the spec's well-known ones, 999 for the rest):

    1   incompatible CNI version (also CHECK below 0.4.0, GC/STATUS below 1.1.0)
    2   unsupported field ("ipam": tether allocates addresses itself)
    4   missing or invalid CNI_* environment variable
    5   stdin could not be read
    6   stdin is not a JSON object (or prevResult is not one)
    7   invalid network configuration, or a network tether does not have (ADD, GC)
    11  no daemon answers on the socket: try again later
    50  STATUS: the daemon is not available
    999 anything else the daemon refused (address or port in use, subnet exhausted,
        a kernel failure), with the daemon's one-line message
"""

from __future__ import annotations

import os
import sys

from . import wirejson as json  # the stdlib's json costs every call ~7 ms of imports (re)
from .api.client import Client
from .errors import DaemonUnavailable, InvalidInput, NotFound, TetherError
from .validate import is_plain_name, valid_ifname

TYPE_CHECKING = False  # typing itself costs every plugin call ~2 ms: annotations only
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "SUPPORTED_VERSIONS",
    "CniError",
    "Invocation",
    "NetConf",
    "check_version",
    "error_from_daemon",
    "main",
    "merge_result",
    "parse_cni_args",
    "parse_config",
    "read_invocation",
    "run",
    "version_result",
]

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = SUPPORTED_VERSIONS[-1]
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")

# Well-known error codes (CNI spec 1.1.0, section 5), and the plugin's catch-all.
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN = 11
ERR_NOT_AVAILABLE = 50
ERR_GENERIC = 999

# Required environment per command (CNI_NETNS is optional for DEL: the runtime may have
# removed the namespace already; CNI_PATH is never needed, tether delegates nothing).
REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": (),
    "STATUS": (),
    "VERSION": (),
}

# A daemon call that takes longer than this is stuck: the runtime gets "try again later"
# (11) instead of hanging with it.
DAEMON_TIMEOUT = 60.0


class CniError(Exception):
    """An error result: ``code`` from the table above, ``msg`` one line a person
    understands, ``details`` anything longer."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = " ".join(msg.split())  # one line, whatever the source
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


class _Record:
    """A small immutable record (typing.NamedTuple and collections.namedtuple cost a
    plugin call their imports): positional or keyword construction, equality, repr."""

    __slots__: tuple[str, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(self.__slots__):
            raise TypeError(f"{type(self).__name__} takes {len(self.__slots__)} fields")
        values = dict(zip(self.__slots__, args), **kwargs)
        if set(values) != set(self.__slots__):
            raise TypeError(f"{type(self).__name__} needs exactly {', '.join(self.__slots__)}")
        for name in self.__slots__:
            object.__setattr__(self, name, values[name])

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self.__slots__)})"


class Invocation(_Record):
    """The ``CNI_*`` environment of one call; ``args`` is ``CNI_ARGS``, parsed."""

    __slots__ = ("command", "container_id", "netns", "ifname", "args", "path")
    command: str
    container_id: str
    netns: str
    ifname: str
    args: dict[str, str]
    path: str


class NetConf(_Record):
    """What tether uses from the network configuration on stdin."""

    __slots__ = (
        "cni_version", "name", "network", "socket", "prev_result", "port_mappings", "ip", "ip6", "mac", "aliases",
        "valid_attachments",
    )
    cni_version: str
    name: str  # the CNI network (config) name
    network: str  # the tether network
    socket: str | None
    prev_result: dict[str, Any] | None
    port_mappings: list[dict[str, Any]]
    ip: str | None  # the IPv4 address asked for
    ip6: str | None  # the IPv6 address asked for
    mac: str | None
    aliases: list[str]
    valid_attachments: list[dict[str, str]] | None  # GC only; None: the runtime gave none


# ---------------------------------------------------------------------------- input
def parse_cni_args(raw: str) -> dict[str, str]:
    """``CNI_ARGS``: ``KEY=VALUE`` pairs separated by ``;``. Unknown keys are ignored
    (runtimes pass ``IgnoreUnknown=1``, ``K8S_POD_NAME=...`` and the like)."""
    out: dict[str, str] = {}
    for pair in raw.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(ERR_INVALID_ENV, f"CNI_ARGS has an invalid pair {pair!r}: expected KEY=VALUE;KEY=VALUE")
        out[key] = value
    return out


def read_invocation(environ: dict[str, str] | os._Environ[str]) -> Invocation:
    """The call's parameters; a missing or malformed variable is error 4, naming it."""
    command = environ.get("CNI_COMMAND", "")
    if not command:
        raise CniError(
            ERR_INVALID_ENV,
            "CNI_COMMAND is not set: tether-cni is a CNI plugin, run by a container runtime "
            "with CNI_COMMAND=ADD|DEL|CHECK|GC|STATUS|VERSION",
        )
    if command not in COMMANDS:
        raise CniError(ERR_INVALID_ENV, f"CNI_COMMAND={command} is not a CNI operation: use one of {', '.join(COMMANDS)}")
    missing = [name for name in REQUIRED_ENV[command] if not environ.get(name)]
    if missing:
        raise CniError(ERR_INVALID_ENV, f"required environment variable(s) {', '.join(missing)} missing for {command}")
    container_id = environ.get("CNI_CONTAINERID", "")
    if container_id and not is_plain_name(container_id):
        raise CniError(
            ERR_INVALID_ENV,
            f"CNI_CONTAINERID {container_id!r} is invalid: it must start with a letter or digit, "
            "then letters, digits, '_', '.' or '-'",
        )
    ifname = environ.get("CNI_IFNAME", "")
    if ifname and not valid_ifname(ifname):
        raise CniError(
            ERR_INVALID_ENV, f"CNI_IFNAME {ifname!r} is invalid: at most 15 characters, no '/', ':' or spaces"
        )
    return Invocation(
        command=command,
        container_id=container_id,
        netns=environ.get("CNI_NETNS", ""),
        ifname=ifname,
        args=parse_cni_args(environ.get("CNI_ARGS", "")),
        path=environ.get("CNI_PATH", ""),
    )


def _version_key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        raise CniError(ERR_DECODE, f"cniVersion {version!r} is not a version number like 1.0.0") from None


def check_version(version: str, command: str) -> None:
    """Error 1 unless this plugin speaks ``version`` and ``version`` has ``command``."""
    _version_key(version)
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            ERR_INCOMPATIBLE_VERSION,
            f"cniVersion {version} is not supported by tether: use one of {', '.join(SUPPORTED_VERSIONS)}",
        )
    minimum = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}.get(command)
    if minimum and _version_key(version) < _version_key(minimum):
        raise CniError(
            ERR_INCOMPATIBLE_VERSION, f"cniVersion {version} has no {command}: it needs cniVersion {minimum} or later"
        )


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise CniError(ERR_DECODE, "the network configuration on stdin is not valid JSON", str(exc)) from None
    if not isinstance(data, dict):
        raise CniError(ERR_DECODE, "the network configuration on stdin must be a JSON object")
    return data


def _by_family(values: Any, source: str) -> tuple[str | None, str | None]:
    """(IPv4, IPv6) of a list like ``["10.0.0.5/24", "fd00::5"]``, prefixes dropped: at
    most one of each family. Whether each is an address at all, the daemon checks."""
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise CniError(ERR_INVALID_CONFIG, f"{source} must be a list of addresses like [\"10.0.0.5\", \"fd00::5\"]")
    found: dict[int, str] = {}
    for value in values:
        address = value.strip().split("/", 1)[0]
        family = 6 if ":" in address else 4
        if family in found:
            raise CniError(
                ERR_INVALID_CONFIG,
                f"{source} has two IPv{family} addresses ({found[family]}, {address}): give at most one per family",
            )
        found[family] = address
    return found.get(4), found.get(6)


def _config_error(msg: str) -> CniError:
    return CniError(ERR_INVALID_CONFIG, msg)


def parse_config(raw: bytes | dict[str, Any], inv: Invocation) -> NetConf:
    """The network configuration on stdin (bytes, or already decoded), validated for
    ``inv.command``."""
    data = raw if isinstance(raw, dict) else _decode(raw)
    version = data.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(ERR_INCOMPATIBLE_VERSION, "the network configuration has no cniVersion: add \"cniVersion\": \"1.0.0\"")
    check_version(version, inv.command)
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise _config_error("the network configuration has no \"name\"")
    if not is_plain_name(name):
        raise _config_error(f"network name {name!r} is invalid: letters, digits, '_', '.' or '-', starting alphanumeric")
    if "ipam" in data:
        raise CniError(
            ERR_UNSUPPORTED_FIELD,
            f"unsupported field \"ipam\": {json.dumps(data['ipam'])}: tether allocates addresses itself "
            "(choose them with `tether network create --subnet`); remove the key",
        )
    network = data.get("network", name)
    if not isinstance(network, str) or not network:
        raise _config_error("\"network\" must be the name of a tether network, such as \"appnet\"")
    socket = data.get("socket")
    if socket is not None and (not isinstance(socket, str) or not socket.startswith("/")):
        raise _config_error("\"socket\" must be an absolute path such as \"/run/tether/tether.sock\"")

    prev = data.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(ERR_DECODE, "prevResult must be a JSON object (the previous plugin's result)")

    runtime = data.get("runtimeConfig") or {}
    if not isinstance(runtime, dict):
        raise _config_error("runtimeConfig must be a JSON object")
    (ip, ip6), mac, aliases = _requested(data, runtime, inv, (name, network))
    return NetConf(
        cni_version=version,
        name=name,
        network=network,
        socket=socket,
        prev_result=prev,
        port_mappings=_port_mappings(runtime),
        ip=ip,
        ip6=ip6,
        mac=mac,
        aliases=aliases,
        valid_attachments=_valid_attachments(data),
    )


def _port_mappings(runtime: dict[str, Any]) -> list[dict[str, Any]]:
    ports = runtime.get("portMappings") or []
    if not isinstance(ports, list) or not all(isinstance(p, dict) for p in ports):
        raise _config_error("runtimeConfig.portMappings must be a list of {hostPort, containerPort, protocol}")
    return ports


def _requested(
    data: dict[str, Any], runtime: dict[str, Any], inv: Invocation, names: tuple[str, str]
) -> tuple[tuple[str | None, str | None], str | None, list[str]]:
    """The addresses (IPv4, IPv6), MAC and aliases the runtime asks for (``names``: the
    config's name and the tether network, under which Podman lists aliases)."""
    args = data.get("args")
    args = args if isinstance(args, dict) else {}
    cni_args_conf: dict[str, Any] = args["cni"] if isinstance(args.get("cni"), dict) else {}
    # Precedence, for both families at once: the capability, then the config's "args"
    # (CONVENTIONS.md says a plugin that understands "args" ignores the CNI_ARGS
    # equivalent), then CNI_ARGS.
    addresses: tuple[str | None, str | None] = (None, None)
    if runtime.get("ips") is not None and runtime.get("ips") != []:
        addresses = _by_family(runtime.get("ips"), "runtimeConfig.ips")
    elif "ips" in cni_args_conf:
        addresses = _by_family(cni_args_conf.get("ips") or [], "args.cni.ips")
    elif inv.args.get("IP"):
        addresses = _by_family(inv.args["IP"].split(","), "CNI_ARGS IP")
    mac = runtime.get("mac") or inv.args.get("MAC") or None
    if mac is not None and not isinstance(mac, str):
        raise _config_error("runtimeConfig.mac must be a string like \"02:42:0a:00:00:05\"")
    aliases = runtime.get("aliases") or []
    if isinstance(aliases, dict):  # Podman: {network name: [names]}
        aliases = aliases.get(names[0]) or aliases.get(names[1]) or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise _config_error("runtimeConfig.aliases must be a list of names (or {network: [names]})")
    return addresses, mac, aliases


def _valid_attachments(data: dict[str, Any]) -> list[dict[str, str]] | None:
    """GC's list of attachments to keep; None when the runtime gave none."""
    valid: list[dict[str, str]] | None = None
    for key in ("cni.dev/valid-attachments", "cni.dev/attachments"):  # libcni sends both (cni#1101)
        if key in data:
            entries = data[key] or []
            if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
                raise _config_error(f"{key} must be a list of {{containerID, ifname}} objects")
            valid = [{"containerID": str(e.get("containerID", "")), "ifname": str(e.get("ifname", ""))} for e in entries]
            break
    return valid


# ---------------------------------------------------------------------------- output
def version_result(raw: bytes) -> dict[str, Any]:
    """VERSION: the versions tether speaks, labelled with the input's cniVersion when
    that is one of them (the runtime may send nothing at all)."""
    version = LATEST_VERSION
    try:
        data = json.loads(raw) if raw.strip() else {}
        if isinstance(data, dict) and data.get("cniVersion") in SUPPORTED_VERSIONS:
            version = data["cniVersion"]
    except ValueError:
        pass
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


def merge_result(result: dict[str, Any], cni_version: str, prev: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ADD result in the config's version: the daemon's interfaces, ips, routes and
    dns appended to ``prev`` (an earlier plugin's result when tether is chained), with
    tether's interface indexes shifted past ``prev``'s interfaces."""
    prev = prev or {}
    interfaces = [dict(i) for i in prev.get("interfaces") or []]
    ips = [dict(i) for i in prev.get("ips") or []]
    routes = [dict(r) for r in prev.get("routes") or []]
    offset = len(interfaces)
    interfaces += [dict(i) for i in result.get("interfaces") or []]
    legacy = _version_key(cni_version) < (1, 0, 0)  # 0.3.x and 0.4.0 ips carry "version"
    for entry in result.get("ips") or []:
        ip = dict(entry)
        if isinstance(ip.get("interface"), int):
            ip["interface"] += offset
        if legacy:
            ip = {"version": "6" if ":" in str(ip.get("address", "")) else "4", **ip}
        ips.append(ip)
    routes += [dict(r) for r in result.get("routes") or []]
    dns = dict(result.get("dns") or {})
    dns.update({k: v for k, v in (prev.get("dns") or {}).items() if v})  # an earlier plugin's DNS wins
    return {"cniVersion": cni_version, "interfaces": interfaces, "ips": ips, "routes": routes, "dns": dns}


def error_from_daemon(exc: TetherError, command: str, socket_path: str) -> CniError:
    """Map the daemon's error tree onto CNI codes; the daemon's one line is the msg."""
    details = f"tether daemon on {socket_path}: {type(exc).__name__}"
    if isinstance(exc, DaemonUnavailable):
        if command == "STATUS":
            return CniError(ERR_NOT_AVAILABLE, str(exc), details)
        return CniError(ERR_TRY_AGAIN, str(exc), details)
    if command == "STATUS":
        return CniError(ERR_NOT_AVAILABLE, f"the tether daemon is not ready: {exc}", details)
    if isinstance(exc, InvalidInput) or (isinstance(exc, NotFound) and command in ("ADD", "GC")):
        return CniError(ERR_INVALID_CONFIG, str(exc), details)
    return CniError(ERR_GENERIC, str(exc), details)


# ---------------------------------------------------------------------------- commands
def _cmd_add(inv: Invocation, conf: NetConf, client: Client) -> dict[str, Any]:
    if not os.path.exists(inv.netns):
        raise CniError(ERR_INVALID_ENV, f"CNI_NETNS {inv.netns} does not exist: the runtime must create it first")
    for iface in (conf.prev_result or {}).get("interfaces") or []:
        if isinstance(iface, dict) and iface.get("name") == inv.ifname and iface.get("sandbox"):
            raise _config_error(
                f"an earlier plugin in the chain already made {inv.ifname} in the container: "
                "put tether first in the plugin list"
            )
    body: dict[str, Any] = {
        "container_id": inv.container_id,
        "netns": inv.netns,
        "ifname": inv.ifname,
        "network": conf.network,
        "port_mappings": conf.port_mappings,
        "aliases": conf.aliases,
    }
    if conf.ip:
        body["ip"] = conf.ip
    if conf.ip6:
        body["ip6"] = conf.ip6
    if conf.mac:
        body["mac"] = conf.mac
    result = client.post("/cni/add", body)
    return merge_result(result, conf.cni_version, conf.prev_result)


def _cmd_del(inv: Invocation, conf: NetConf, client: Client) -> None:
    # The daemon treats a missing container, network or endpoint as success, and needs
    # no namespace: the runtime may have deleted it already.
    client.post("/cni/del", {"container_id": inv.container_id, "ifname": inv.ifname, "network": conf.network})


def _cmd_check(inv: Invocation, conf: NetConf, client: Client) -> None:
    if conf.prev_result is not None:
        names = {i.get("name") for i in conf.prev_result.get("interfaces") or [] if isinstance(i, dict)}
        if inv.ifname not in names:
            raise CniError(ERR_GENERIC, f"prevResult does not list {inv.ifname}: it is not the result of tether's ADD")
    client.post("/cni/check", {"container_id": inv.container_id, "ifname": inv.ifname, "network": conf.network})


def _cmd_gc(inv: Invocation, conf: NetConf, client: Client) -> None:
    if conf.valid_attachments is None:
        # No list at all is not "nothing is valid": removing every attachment on a guess
        # would cut live containers off.
        print(f"tether-cni: GC without cni.dev/valid-attachments: nothing removed on {conf.network}", file=sys.stderr)
        return
    reply = client.post("/cni/gc", {"network": conf.network, "valid": conf.valid_attachments})
    for removed in (reply or {}).get("removed") or []:
        print(f"tether-cni: GC removed {removed} from {conf.network}", file=sys.stderr)


def _cmd_status(inv: Invocation, conf: NetConf, client: Client) -> None:
    client.get("/ping")


def run(
    environ: dict[str, str] | os._Environ[str],
    stdin: Any,
    client_factory: Any = Client,
) -> tuple[int, dict[str, Any] | None]:
    """One plugin call: the exit status and the JSON to print (None: print nothing).
    ``stdin`` is a binary file; ``client_factory(socket_path, timeout)`` makes the client."""
    version = LATEST_VERSION
    command = environ.get("CNI_COMMAND", "")
    socket_path = ""
    try:
        inv = read_invocation(environ)
        try:
            raw = stdin.read() if inv.command != "VERSION" or not stdin.isatty() else b""
        except OSError as exc:
            raise CniError(ERR_IO, "could not read the network configuration from stdin", str(exc)) from None
        if inv.command == "VERSION":
            return 0, version_result(raw)
        data = _decode(raw)
        if data.get("cniVersion") in SUPPORTED_VERSIONS:
            version = data["cniVersion"]  # errors too are labelled with the config's version
        conf = parse_config(data, inv)
        client = client_factory(conf.socket, DAEMON_TIMEOUT)
        socket_path = client.socket_path
        handler = {"ADD": _cmd_add, "DEL": _cmd_del, "CHECK": _cmd_check, "GC": _cmd_gc, "STATUS": _cmd_status}
        return 0, handler[inv.command](inv, conf, client)
    except CniError as exc:
        return 1, exc.to_json(version)
    except TetherError as exc:
        return 1, error_from_daemon(exc, command, socket_path).to_json(version)
    except Exception as exc:  # noqa: BLE001  # a bug: still one JSON error line for the runtime, the trace in details
        import traceback

        return 1, CniError(ERR_GENERIC, f"tether-cni internal error: {exc}", traceback.format_exc()).to_json(version)


def main() -> int:
    status, output = run(os.environ, sys.stdin.buffer)
    if output is not None:
        sys.stdout.write(json.dumps(output) + "\n")
        sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
