"""A recording, in-memory stand-in for ``tether.datapath.Datapath`` for unit tests of the
controller: it keeps the kernel objects it was asked for as plain sets and can be told to
fail a given verb, so undo paths can be checked without root. End-to-end tests never use it.
"""

from __future__ import annotations

from typing import Any

from ..errors import DatapathError

__all__ = ["RecordingDatapath"]


class RecordingDatapath:
    def __init__(self, host_networks: list[str] | None = None) -> None:
        self.netns: set[str] = set()
        self.bridges: dict[str, str] = {}  # name -> gateway cidr
        self.veths: dict[str, dict[str, Any]] = {}  # host ifname -> attach args
        self.calls: list[str] = []
        self.fail: set[str] = set()
        self.aliases: dict[str, str] = {}  # netns alias name -> target path
        self._host_networks = list(host_networks or [])

    def _call(self, verb: str) -> None:
        self.calls.append(verb)
        if verb in self.fail:
            raise DatapathError(f"injected failure in {verb}")

    def close(self) -> None:
        pass

    def netns_path(self, name: str) -> str:
        return f"/var/run/netns/{name}"

    def create_netns(self, name: str) -> str:
        self._call("create_netns")
        if name in self.netns:
            raise DatapathError(f"netns {name} exists")
        self.netns.add(name)
        return self.netns_path(name)

    def delete_netns(self, name: str) -> None:
        self._call("delete_netns")
        self.netns.discard(name)
        for ifname in [k for k, v in self.veths.items() if v["netns"] == name]:
            del self.veths[ifname]

    def netns_exists(self, name: str) -> bool:
        return name in self.netns

    def list_netns(self) -> list[str]:
        return sorted(self.netns)

    def ensure_bridge(self, name: str, gateway_cidr: str, mtu: int, mark: str) -> None:
        self._call("ensure_bridge")
        self.bridges[name] = gateway_cidr

    def delete_bridge(self, name: str) -> None:
        self._call("delete_bridge")
        self.bridges.pop(name, None)

    def link_exists(self, ifname: str) -> bool:
        return ifname in self.bridges or ifname in self.veths

    def link_master(self, ifname: str) -> str | None:
        veth = self.veths.get(ifname)
        return str(veth["bridge"]) if veth else None

    def links_with_mark(self, mark: str) -> list[tuple[str, str]]:
        return [(b, "bridge") for b in self.bridges] + [(v, "veth") for v in self.veths]

    def attach_veth(self, **kw: Any) -> bool:
        self._call("attach_veth")
        if kw["bridge"] not in self.bridges:
            raise DatapathError(f"no bridge {kw['bridge']}")
        if kw["netns"] not in self.netns:
            raise DatapathError(f"no netns {kw['netns']}")
        if kw["gateway"] and self.has_default_route(kw["netns"]):
            if not kw.get("keep_existing_default"):
                raise DatapathError(f"{kw['netns']} has a default route already")
            kw = dict(kw, gateway=None)
        self.veths[kw["host_ifname"]] = kw
        return bool(kw["gateway"])

    def alias_netns(self, name: str, target: str) -> None:
        self.aliases[name] = target

    def unalias_netns(self, name: str) -> None:
        self.aliases.pop(name, None)

    def netns_aliases(self, prefix: str) -> dict[str, str]:
        return {n: t for n, t in self.aliases.items() if n.startswith(prefix)}

    def create_veth_pair(self, **kw: Any) -> None:
        self._call("create_veth_pair")
        if kw["bridge"] not in self.bridges:
            raise DatapathError(f"no bridge {kw['bridge']}")
        if kw["host_ifname"] in self.veths:
            raise DatapathError(f"{kw['host_ifname']} already exists")
        self.veths[kw["host_ifname"]] = dict(kw, netns=None, ifname=kw["peer_ifname"], gateway=None, cidr="")

    def detach_veth(self, host_ifname: str) -> None:
        self._call("detach_veth")
        self.veths.pop(host_ifname, None)

    def detach_in_netns(self, netns: str, ifname: str) -> None:
        for k in [k for k, v in self.veths.items() if v["netns"] == netns and v["ifname"] == ifname]:
            del self.veths[k]

    def has_default_route(self, netns: str) -> bool:
        return any(v["netns"] == netns and v["gateway"] for v in self.veths.values())

    def add_default_route(self, netns: str, gateway: str) -> None:
        self._call("add_default_route")

    def container_interfaces(self, netns: str) -> list[dict[str, Any]]:
        return [{"ifname": v["ifname"], "mac": v["mac"], "addresses": [v["cidr"]]} for v in self.veths.values() if v["netns"] == netns]

    def container_routes(self, netns: str) -> list[dict[str, Any]]:
        return []

    def host_addresses(self) -> list[str]:
        return ["127.0.0.1"] + [c.split("/")[0] for c in self.bridges.values()]

    def uplinks(self) -> list[str]:
        return []

    def set_interface_sysctl(self, ifname: str, key: str, value: str) -> None:
        self.calls.append(f"sysctl {ifname} {key}={value}")

    def host_ports(self) -> "RecordingDatapath":
        return self

    def holder(self, protocol: str, port: int, host_ip: str | None) -> str | None:
        return None

    def host_networks(self) -> list[str]:
        return list(self._host_networks) + list({_net(c) for c in self.bridges.values()})


def _net(cidr: str) -> str:
    import ipaddress

    return str(ipaddress.ip_interface(cidr).network)
