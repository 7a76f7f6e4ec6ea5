"""The verdict logic of `tether trace` on values and fakes: destination syntax, tether's
forward chain evaluated from its model, the probe's nftables trace read and weighed, and
the kernel facts read through RecordingDatapath."""

from __future__ import annotations

import pytest

from tether.errors import InvalidInput
from tether.firewall.nftrace import TraceEvent, TraceMatch, first_drop, parse_trace, render_arm
from tether.firewall.rules import NetworkRules
from tether.datapath.inspect import parse_proc_listeners
from tether.testing.datapath import RecordingDatapath
from tether.testing.firewall import RecordingFirewall
from tether.trace import Step, Target, Trace, parse_target
from tether.trace import checks
from tether.trace.checks import Forward, forward_verdict


def net(bridge: str, *, internal: bool = False, icc: bool = True) -> NetworkRules:
    return NetworkRules(bridge=bridge, subnet="10.1.0.0/24", masquerade=not internal, internal=internal, icc=icc)


# ---------------------------------------------------------------------- the destination
@pytest.mark.parametrize("text,want", [
    ("db", Target("container", name="db")),
    ("db:80", Target("container", name="db", port=80)),
    ("db.appnet:53/udp", Target("container", name="db", network="appnet", port=53, protocol="udp")),
    ("10.1.0.3", Target("ip", address="10.1.0.3")),
    ("[fd00::3]:80", Target("ip", address="fd00::3", port=80)),
    ("fd00::3", Target("ip", address="fd00::3")),
    ("host:8080", Target("host", port=8080)),
])
def test_destinations_parse(text: str, want: Target) -> None:
    assert parse_target(text) == want


@pytest.mark.parametrize("text", ["", "db:http", "db:0", "db:70000", "db:80/sctp", "[fd00::3", "a:b:c"])
def test_bad_destinations_are_invalid_input(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_target(text)


# ---------------------------------------------------------------------- tether's forward chain
def test_forward_chain_in_its_order() -> None:
    a, b = net("br-a"), net("br-b")
    assert forward_verdict(a, a) == (True, Forward.ICC)
    assert forward_verdict(a, b) == (False, Forward.ISOLATION)
    assert forward_verdict(a, b, dnat=True) == (True, Forward.DNAT)  # a published port crosses networks
    assert forward_verdict(a, None) == (True, Forward.OUT)
    quiet = net("br-q", icc=False)
    assert forward_verdict(quiet, quiet) == (False, Forward.ISOLATION)
    sealed = net("br-s", internal=True)
    assert forward_verdict(sealed, sealed) == (True, Forward.ICC)  # members of an internal network talk
    assert forward_verdict(sealed, None) == (False, Forward.INTERNAL_IN)
    assert forward_verdict(sealed, a, dnat=True) == (False, Forward.INTERNAL_IN)  # before the DNAT accept
    assert forward_verdict(a, sealed, dnat=True) == (False, Forward.INTERNAL_OUT)


def test_model_steps_name_the_reason_and_the_fix() -> None:
    a, b = net("br-a"), net("br-b")
    kw = {"source": "web", "src_net": "front", "destination": "db"}
    step = checks.model_firewall_step(a, b, dnat=False, dst_net="back", **kw)
    assert step.status == "fail" and "different networks" in step.detail and step.fix == "tether network connect back web"
    quiet = net("br-q", icc=False)
    step = checks.model_firewall_step(quiet, quiet, dnat=False, dst_net="front", **kw)
    assert "icc=false" in step.detail and "tether network connect" in (step.fix or "")
    step = checks.model_firewall_step(net("br-s", internal=True), None, dnat=False, dst_net=None, **kw)
    assert "--internal" in step.detail and step.fix and step.fix.startswith("tether network connect bridge web")
    assert checks.model_firewall_step(a, a, dnat=False, dst_net="front", **kw).status == "ok"


# ---------------------------------------------------------------------- the probe's trace
TRACE = """\
trace id aa ip tether_trace1x1 tag_probe packet: iif "tbr-1" ip saddr 10.1.0.2 ip daddr 10.1.0.3 tcp dport 80
trace id aa ip tether_trace1x1 tag_probe rule ip saddr 10.1.0.2 meta nftrace set 1 (verdict continue)
trace id aa ip tether forward packet: iif "tbr-1" oif "tbr-1" ip saddr 10.1.0.2 ip daddr 10.1.0.3 tcp dport 80
trace id aa ip tether forward rule jump user (verdict jump user)
trace id aa ip tether user rule ip daddr 10.1.0.3 tcp dport 80 drop (verdict drop)
trace id bb ip tether forward packet: iif "tbr-1" ip saddr 10.1.0.9 ip daddr 10.1.0.3 tcp dport 80
trace id bb ip tether forward policy accept
"""


def test_trace_output_is_read_for_the_probe_only() -> None:
    match = TraceMatch("10.1.0.2", "10.1.0.3", "tcp", 80)
    events = parse_trace(TRACE, match, "tether_trace1x1")
    assert events == [
        TraceEvent("ip tether", "forward", "jump user", "jump user"),
        TraceEvent("ip tether", "user", "ip daddr 10.1.0.3 tcp dport 80 drop", "drop"),
    ]
    assert first_drop(events) == events[1]
    assert "th dport 80 meta nftrace set 1" in render_arm("t_trace", match)
    with pytest.raises(InvalidInput):
        render_arm("t_trace", TraceMatch("10.1.0.2", "nope", "tcp", 80))


def test_probe_step_names_the_user_chain_rule_and_its_handle() -> None:
    model = checks.model_firewall_step(net("br"), net("br"), dnat=False, source="web", src_net="n", dst_net="n",
                                       destination="db")
    drop = TraceEvent("ip tether", "user", "ip daddr 10.1.0.3 drop", "drop", handle=7)
    step = checks.probe_firewall_step([drop], "timeout", model, "tether")
    assert step.status == "fail" and step.how == "probe" and step.fix == "nft delete rule ip tether user handle 7"
    other = TraceEvent("ip filter", "forward", "", "drop")
    step = checks.probe_firewall_step([other], "timeout", model, "tether")
    assert "not tether's table" in step.detail and "ip filter forward" in (step.fix or "")
    assert checks.probe_firewall_step([], "open", model, "tether").status == "ok"


def test_probe_confirms_the_model_or_leaves_it_standing() -> None:
    model = checks.model_firewall_step(net("a"), net("b"), dnat=False, source="web", src_net="x", dst_net="y",
                                       destination="db")
    iso = TraceEvent("ip tether", "forward", Forward.ISOLATION, "drop")
    step = checks.probe_firewall_step([iso], "timeout", model, "tether")
    assert step.status == "fail" and "different networks" in step.detail and step.fix == model.fix
    step = checks.probe_firewall_step([], "timeout", model, "tether")  # unseen: the model answers
    assert step.status == "fail" and step.how == "model"


def test_recording_firewall_sends_and_answers_seeded_events() -> None:
    fw, sent = RecordingFirewall(), []
    fw.trace_events = [TraceEvent("ip tether", "forward", "", "accept")]
    match = TraceMatch("10.1.0.2", "10.1.0.3", "icmp")
    assert fw.trace(match, lambda: sent.append(1)) == fw.trace_events and sent == [1] and fw.traced == [match]


# ---------------------------------------------------------------------- kernel facts (fakes)
def test_routes_interfaces_and_neighbours() -> None:
    routes = [{"dst": "default", "gateway": "10.1.0.1", "dev": "eth0"}, {"dst": "10.1.0.0/24", "gateway": None,
                                                                          "dev": "eth0"}]
    assert checks.route_for(routes, "10.1.0.3")["dst"] == "10.1.0.0/24"
    assert checks.next_hop(checks.route_for(routes, "203.0.113.1") or {}, "203.0.113.1") == "10.1.0.1"
    assert checks.route_step([], "203.0.113.1", "web", internal="sealed").detail.startswith("sealed is --internal")
    iface = [{"ifname": "eth0", "state": "up", "addresses": ["10.1.0.2/24"], "addresses6": []}]
    assert checks.interface_step(iface, "eth0", "10.1.0.2", "web").status == "ok"
    assert checks.interface_step(iface, "eth0", "10.1.0.9", "web").status == "fail"
    neigh = [{"address": "10.1.0.3", "mac": "02:42:0a:01:00:03", "state": "failed", "dev": "eth0"}]
    assert checks.neighbour_step(neigh, "10.1.0.3", "eth0").status == "info"
    assert checks.neighbour_step([], "10.1.0.3", "eth0").status == "info"


def test_bridge_port_on_the_recording_datapath() -> None:
    dp = RecordingDatapath()
    dp.ensure_bridge("br0", "10.1.0.1/24", 1500, "m")
    dp.create_netns("web")
    dp.attach_veth(netns="web", host_ifname="vt1", ifname="eth0", bridge="br0", mac="02:00:00:00:00:02",
                   cidr="10.1.0.2/24", gateway="10.1.0.1", mtu=1500, mark="m")
    assert checks.bridge_port_step(dp.link_state("vt1"), dp.link_state("br0"), "vt1", "br0", "web").status == "ok"
    dp.down_links.add("vt1")
    step = checks.bridge_port_step(dp.link_state("vt1"), dp.link_state("br0"), "vt1", "br0", "web")
    assert step.status == "fail" and "down" in step.detail and step.fix == "tether restart web"
    step = checks.bridge_port_step(dp.link_state("gone"), dp.link_state("br0"), "gone", "br0", "web")
    assert "missing" in step.detail


def test_overlay_entries_on_the_recording_datapath() -> None:
    dp = RecordingDatapath()
    dp.peers["vx"] = {("10.2.0.3", "02:42:0a:02:00:03", "192.0.2.2")}
    args = ("vx", "10.2.0.3", "02:42:0a:02:00:03", "192.0.2.2", "h1")
    assert checks.overlay_entries_step(dp.peer_entries("vx"), *args).status == "ok"
    dp.missing_entries.add(("vx", "02:42:0a:02:00:03"))  # the FDB entry deleted
    step = checks.overlay_entries_step(dp.peer_entries("vx"), *args)
    assert step.status == "fail" and "FDB entry 02:42:0a:02:00:03 -> 192.0.2.2" in step.detail
    assert "neighbour" not in step.detail and "overlay agent on h1" in (step.fix or "")


def test_listening_from_proc_and_from_the_fake() -> None:
    proc = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 00000000:1B58 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1\n"
        "   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2\n"
        "   2: 0300010A:C350 0200010A:1B58 01 00000000:00000000 00:00000000 00000000     0        0 3\n"
    )
    assert parse_proc_listeners(proc, "tcp") == [("0.0.0.0", 7000), ("127.0.0.1", 8080)]
    dp = RecordingDatapath()
    dp.listeners[("db", "tcp")] = parse_proc_listeners(proc, "tcp")
    listeners = dp.listening("db", "tcp")
    assert checks.listening_step(listeners, 7000, "tcp", "10.1.0.3", "db").status == "ok"
    step = checks.listening_step(listeners, 8080, "tcp", "10.1.0.3", "db")
    assert step.status == "fail" and "only on 127.0.0.1" in step.detail
    assert "nothing in db listens on 9/tcp" in checks.listening_step(listeners, 9, "tcp", "10.1.0.3", "db").detail


def test_the_verdict_is_the_first_broken_hop() -> None:
    t = Trace("web", "db:80/tcp")
    t.add(Step("source", "ok", "web running"))
    t.add(Step("neighbour", "info", "none yet"))
    assert t.reachable and t.to_dict()["verdict"]["reachable"]
    t.add(Step("firewall", "fail", "different networks", fix="tether network connect back web"))
    t.add(Step("listening", "fail", "nothing listens"))
    verdict = t.to_dict()["verdict"]
    assert verdict == {"reachable": False, "hop": "firewall", "why": "different networks",
                       "fix": "tether network connect back web"}
    assert checks.destination_step("db", "exited").fix == "tether start db"
