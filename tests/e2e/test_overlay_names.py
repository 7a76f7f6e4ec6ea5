"""Names on an overlay network across hosts, end to end, in a three-host `tether lab`.

A container's name, its aliases (``run --network-alias``, ``network connect --alias``) and
``NAME.NETWORK`` resolve from containers on every host of the overlay (A and AAAA on a
dual-stack one), and PTR of either address answers ``NAME.NETWORK``: each host's agent
puts the other hosts' names into its own resolver in the step that programs their peers,
so they answer the moment ``run`` returns. Every lookup is made from inside a container
the way an application makes it: ``tether exec NAME -- python3 -c ...`` (glibc's
getaddrinfo and gethostbyaddr through the container's own /etc/resolv.conf, that is the
embedded resolver at 127.0.0.11), never with ``ip netns exec``.

The tests run in file order on one lab and share ``ov`` (dual stack) and the askers
``q1``/``q2``/``q3`` (one per host on ``ov``); what a test makes it removes again. The
destructive ones come last: etcd frozen and killed (names still answer, from the hosts'
memory), a daemon killed and restarted (its resolver is rebuilt: the agent's snapshot for
the other hosts' names, reconcile for its own), and a host that stays dead until its
names go with its endpoints after ``--node-grace``.

Traffic safety: the only packets are DNS queries to 127.0.0.11 inside the lab's own
containers (a name the resolver does not know goes to the lab's upstream, inside the lab's
own namespaces) and the lab's own overlay traffic; nothing leaves the namespaces the lab
made. The lab helpers and the teardown checks are ``test_overlay.py``'s.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import processes_mentioning
from test_overlay import NETNS_DIR, Lab, lab_netns, wait_for, wait_gone

from tether import lab as tlab
from tether.lab import lab_down, lab_up

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root"),
]

GRACE = 6.0  # the daemons' --node-grace
NET = "ov"
SUBNET, SUBNET6 = "10.232.0.0/16", "fd00:232::/64"

# Inside a container: each (kind, argument) of argv[1] answered as glibc answers it, with
# the seconds it took; None for a failed lookup. kind: a (getaddrinfo AF_INET), aaaa
# (AF_INET6), ptr (gethostbyaddr).
LOOKUP = r"""
import json, socket, sys, time
out = []
for kind, arg in json.loads(sys.argv[1]):
    started = time.monotonic()
    try:
        if kind == "ptr":
            value = socket.gethostbyaddr(arg)[0]
        else:
            family = socket.AF_INET if kind == "a" else socket.AF_INET6
            value = sorted({i[4][0] for i in socket.getaddrinfo(arg, None, family, socket.SOCK_STREAM)})
    except OSError:
        value = None
    out.append([value, round(time.monotonic() - started, 4)])
print(json.dumps(out))
"""


# ---------------------------------------------------------------------- helpers
def lookups(lab: Lab, i: int, ctr: str, *queries: tuple[str, str]) -> list[tuple[Any, float]]:
    """(answer, seconds) per query, asked from container ``ctr`` on host ``i``."""
    r = lab.tether(i, "exec", ctr, "--", "python3", "-c", LOOKUP, json.dumps(queries))
    return [(value, took) for value, took in json.loads(r.stdout)]


def answers(lab: Lab, i: int, ctr: str, *queries: tuple[str, str]) -> list[Any]:
    return [value for value, _ in lookups(lab, i, ctr, *queries)]


def addrs(lab: Lab, i: int, name: str, net: str = NET) -> tuple[str, str]:
    """A container's (v4, v6) address on ``net``."""
    ep = lab.json(i, "inspect", name)[0]["networks"][net]
    return ep["address"], str(ep["address6"]).split("/")[0]


def names_of(v4: str, v6: str, *names: str) -> list[tuple[str, str]]:
    """Every lookup a name must answer: A and AAAA of each name, PTR of each address."""
    return [q for name in names for q in (("a", name), ("aaaa", name))] + [("ptr", v4), ("ptr", v6)]


def expected(v4: str, v6: str, *names: str, ptr: str) -> list[Any]:
    return [x for _ in names for x in ([v4], [v6])] + [ptr, ptr]


def run(lab: Lab, i: int, name: str, *extra: str, net: str = NET) -> None:
    r = lab.tether(i, "run", "-d", "--name", name, "--net", net, *extra, "--", "sleep", "600")
    assert r.stderr.strip() == "", r.stderr  # no host lagged behind


# ---------------------------------------------------------------------- the lab
@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    prefix = "tt" + uuid.uuid4().hex[:6]
    base = tempfile.mkdtemp(prefix=f"tether-ovn-{prefix}-")
    root, state_root = os.path.join(base, "run"), os.path.join(base, "state")
    the_lab: Lab | None = None
    try:
        info = lab_up(3, grace=GRACE, root=root, state_root=state_root, name_prefix=prefix)
        the_lab = Lab(info, root, state_root)
        yield the_lab
    finally:
        inside = tlab.pids_in_namespaces(lab_netns(prefix))
        errors = lab_down(root, state_root=state_root, name_prefix=prefix)
        for proc in the_lab.procs if the_lab else []:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                errors.append(f"helper {proc.pid} did not exit")
        shutil.rmtree(base, ignore_errors=True)
        left = lab_netns(prefix) + processes_mentioning(root, state_root, f"{prefix}h", f"{prefix}-")
        left += [f"pid {pid} (was in the lab)" for pid in sorted(inside) if tlab.process_alive(pid)]
        assert not errors and not left, f"the lab left things behind: {errors} {left}"


@pytest.fixture(scope="module")
def askers(lab: Lab) -> dict[int, str]:
    """``ov`` (dual stack, made on h1) and q1, q2, q3: one container per host on it."""
    lab.tether(1, "network", "create", "-d", "overlay", "--ipv6", "--subnet", SUBNET, "--subnet", SUBNET6, NET)
    for i in (1, 2, 3):
        run(lab, i, f"q{i}")
    return {i: f"q{i}" for i in (1, 2, 3)}


# ---------------------------------------------------------------------- names, aliases, NAME.NETWORK, PTR
def test_name_aliases_and_name_dot_network_resolve_on_every_host(lab: Lab, askers: dict[int, str]) -> None:
    run(lab, 1, "web", "--network-alias", "www", "--network-alias", "front")
    try:
        v4, v6 = addrs(lab, 1, "web")
        queries = names_of(v4, v6, "web", "www", "front", f"web.{NET}", f"www.{NET}")
        want = expected(v4, v6, "web", "www", "front", f"web.{NET}", f"www.{NET}", ptr=f"web.{NET}")
        for i in (1, 2, 3):  # its own host (the controller's names) and the two others (the agents')
            assert answers(lab, i, askers[i], *queries) == want, f"from q{i} on h{i}"
    finally:
        lab.tether(1, "rm", "-f", "web")


def test_an_alias_given_by_network_connect_resolves_on_every_host(lab: Lab, askers: dict[int, str]) -> None:
    lab.tether(2, "network", "create", "--subnet", "10.233.0.0/24", "side")
    run(lab, 2, "late", net="side")
    try:
        lab.tether(2, "network", "connect", "--alias", "cache", NET, "late")
        v4, v6 = addrs(lab, 2, "late")
        for i in (1, 3):
            assert answers(lab, i, askers[i], *names_of(v4, v6, "late", "cache")) == expected(
                v4, v6, "late", "cache", ptr=f"late.{NET}"
            ), f"from q{i}"
        lab.tether(2, "network", "disconnect", NET, "late")
        wait_for("cache gone on h1 and h3", lambda: all(
            answers(lab, i, askers[i], ("a", "cache"), ("a", "late")) == [None, None] for i in (1, 3)), timeout=5)
    finally:
        lab.tether(2, "rm", "-f", "late")
        lab.tether(2, "network", "rm", "side")


def test_a_name_answers_on_another_host_the_moment_run_returns(lab: Lab, askers: dict[int, str]) -> None:
    """Eight rounds, alternating hosts: the first lookup made after `run` returns is answered."""
    made: list[tuple[int, str]] = []
    failures = []
    try:
        for n in range(8):
            home, asker = (1, 2) if n % 2 == 0 else (3, 1)
            name = f"fresh{n}"
            run(lab, home, name)
            made.append((home, name))
            got = answers(lab, asker, askers[asker], ("a", name), ("aaaa", f"{name}.{NET}"))
            v4, v6 = addrs(lab, home, name)
            if got != [[v4], [v6]]:
                failures.append(f"#{n}: {name} on h{home}, asked from h{asker}: {got}, not {[[v4], [v6]]}")
    finally:
        for home, name in made:
            lab.tether(home, "rm", "-f", name, check=False)
    assert failures == []


def test_removal_stops_the_name_answering_on_every_host(lab: Lab, askers: dict[int, str]) -> None:
    run(lab, 3, "gone", "--network-alias", "soon")
    v4, v6 = addrs(lab, 3, "gone")
    assert answers(lab, 1, "q1", ("a", "gone"), ("a", "soon")) == [[v4], [v4]]
    lab.tether(3, "rm", "-f", "gone")
    removed = time.monotonic()
    # the same bound as its address: withdrawn from every host's kernel in well under a second
    for i in (1, 2, 3):
        wait_for(f"gone's names stop answering on h{i}", lambda i=i: answers(
            lab, i, askers[i], ("a", "gone"), ("aaaa", "soon"), ("a", f"gone.{NET}"), ("ptr", v4)
        )[:3] == [None, None, None], timeout=3)
    assert time.monotonic() - removed < 5
    # PTR of the freed address: no longer `gone.ov` (NXDOMAIN inside the network's subnet)
    assert answers(lab, 1, "q1", ("ptr", v4), ("ptr", v6)) == [None, None]


def test_containers_not_on_the_network_do_not_see_its_names(lab: Lab, askers: dict[int, str]) -> None:
    lab.tether(1, "network", "create", "-d", "overlay", "--subnet", "10.234.0.0/16", "ovx")
    lab.tether(2, "network", "create", "--subnet", "10.235.0.0/24", "plain")
    run(lab, 1, "secret")
    run(lab, 2, "outsider", net="ovx")
    run(lab, 2, "bystander", net="plain")
    try:
        v4, v6 = addrs(lab, 1, "secret")
        assert answers(lab, 2, "q2", ("a", "secret")) == [[v4]]  # on the network: seen
        for ctr in ("outsider", "bystander"):
            got = answers(lab, 2, ctr, ("a", "secret"), ("aaaa", "secret"), ("a", f"secret.{NET}"),
                          ("ptr", v4), ("a", "q1"))
            assert got == [None] * 5, f"{ctr} sees {got}"
    finally:
        lab.tether(1, "rm", "-f", "secret")
        lab.tether(2, "rm", "-f", "outsider", "bystander")
        lab.tether(1, "network", "rm", "ovx")
        lab.tether(2, "network", "rm", "plain")


def test_one_name_on_two_hosts_answers_with_both_addresses(lab: Lab, askers: dict[int, str]) -> None:
    run(lab, 1, "twin")
    run(lab, 2, "twin")  # names are unique per host only
    try:
        (a4, a6), (b4, b6) = addrs(lab, 1, "twin"), addrs(lab, 2, "twin")
        for i in (1, 2, 3):
            got = answers(lab, i, askers[i], ("a", "twin"), ("aaaa", f"twin.{NET}"), ("ptr", a4), ("ptr", b6))
            assert got == [sorted([a4, b4]), sorted([a6, b6]), f"twin.{NET}", f"twin.{NET}"], f"from q{i}: {got}"
        lab.tether(2, "rm", "-f", "twin")
        for i in (1, 3):
            wait_for(f"only h1's twin on h{i}", lambda i=i: answers(lab, i, askers[i], ("a", "twin")) == [[a4]],
                     timeout=3)
    finally:
        lab.tether(1, "rm", "-f", "twin", check=False)
        lab.tether(2, "rm", "-f", "twin", check=False)


# ---------------------------------------------------------------------- etcd down
def test_names_answer_while_etcd_is_frozen_then_killed(lab: Lab, askers: dict[int, str]) -> None:
    """etcd hung (SIGSTOP), then dead (SIGKILL): every host answers every name it knew, at
    once (a lookup never waits on the store), and still does once etcd is back."""
    run(lab, 1, "steady", "--network-alias", "keep")
    v4, v6 = addrs(lab, 1, "steady")
    queries = names_of(v4, v6, "steady", "keep", f"steady.{NET}")
    want = expected(v4, v6, "steady", "keep", f"steady.{NET}", ptr=f"steady.{NET}")
    info = lab.info
    with open(f"/proc/{info.etcd_pid}/cmdline", "rb") as f:
        etcd_argv = [a.decode() for a in f.read().split(b"\0") if a]
    assert os.path.basename(etcd_argv[0]) == "etcd" and info.etcd_data_dir in etcd_argv
    frozen: int | None = info.etcd_pid
    os.kill(info.etcd_pid, signal.SIGSTOP)
    try:
        for state in ("frozen", "killed"):
            if state == "killed":
                os.kill(info.etcd_pid, signal.SIGKILL)
                os.kill(info.etcd_pid, signal.SIGCONT)
                frozen = None
                wait_gone(info.etcd_pid)
            time.sleep(1)
            for i in (2, 3, 1):
                got = lookups(lab, i, askers[i], *queries)
                assert [value for value, _ in got] == want, f"etcd {state}: from q{i}"
                slowest = max(took for _, took in got)
                assert slowest < 0.5, f"etcd {state}: a lookup from q{i} took {slowest:.3f} s"
    finally:
        if frozen is not None:
            os.kill(frozen, signal.SIGCONT)
        else:
            etcd = lab.spawn(["nsenter", f"--net={NETNS_DIR}/{info.fabric}", "--", *etcd_argv], info.etcd_log)
            info.etcd_pid = etcd.pid
            lab.save()
        wait_for("etcd healthy again", lambda: tlab.etcd_healthy(info, timeout=0.5), timeout=20, every=0.05)
    wait_for("every host up again", lambda: all(lab.node_up(1, i) is True for i in (1, 2, 3)), timeout=10)
    for i in (1, 2, 3):
        assert answers(lab, i, askers[i], *queries) == want, f"etcd back: from q{i}"
    lab.tether(1, "rm", "-f", "steady")
    wait_for("steady gone on h2", lambda: answers(lab, 2, "q2", ("a", "steady")) == [None], timeout=3)


# ---------------------------------------------------------------------- a daemon restarted
def test_a_restarted_daemon_answers_local_and_remote_names_again(lab: Lab, askers: dict[int, str]) -> None:
    """h2's daemon (and so its resolver) is killed and started again: the agent's snapshot
    gives it the other hosts' names, reconcile its own."""
    run(lab, 1, "far", "--network-alias", "remote")
    run(lab, 2, "near", "--network-alias", "local")
    try:
        (f4, f6), (n4, n6) = addrs(lab, 1, "far"), addrs(lab, 2, "near")
        queries = names_of(f4, f6, "far", "remote") + names_of(n4, n6, "near", "local")
        want = expected(f4, f6, "far", "remote", ptr=f"far.{NET}") + expected(n4, n6, "near", "local",
                                                                             ptr=f"near.{NET}")
        assert answers(lab, 2, "q2", *queries) == want
        lab.kill_daemon(2)
        lab.restart_daemon(2)
        assert answers(lab, 2, "q2", *queries) == want
        assert answers(lab, 3, "q3", *names_of(n4, n6, "near", "local")) == expected(
            n4, n6, "near", "local", ptr=f"near.{NET}")
    finally:
        lab.tether(1, "rm", "-f", "far", check=False)
        lab.tether(2, "rm", "-f", "near", check=False)


# ---------------------------------------------------------------------- a host that stays down
def test_a_dead_hosts_names_go_after_node_grace(lab: Lab, askers: dict[int, str]) -> None:
    run(lab, 3, "doomed", "--network-alias", "lost")
    v4, v6 = addrs(lab, 3, "doomed")
    lab.kill_daemon(3)
    killed = time.monotonic()
    # down, but within the grace period: its names answer as its address still does
    wait_for("h3 down in h1's node list", lambda: lab.node_up(1, 3) is False, timeout=4)
    for i in (1, 2):
        assert answers(lab, i, askers[i], *names_of(v4, v6, "doomed", "lost")) == expected(
            v4, v6, "doomed", "lost", ptr=f"doomed.{NET}"), f"from q{i} before the grace period ended"
    assert time.monotonic() - killed < GRACE
    for i in (1, 2):
        wait_for(f"h3's names gone on h{i}", lambda i=i: answers(
            lab, i, askers[i], ("a", "doomed"), ("aaaa", "lost"), ("a", "q3")) == [None, None, None],
            timeout=GRACE + 8, every=0.5)
    assert time.monotonic() - killed >= GRACE
    assert "doomed" not in lab.inspect_net(1, NET)["containers"]  # gone with its endpoint, not before
    assert answers(lab, 1, "q1", ("a", "q2")) == [[addrs(lab, 2, "q2")[0]]]  # the living stay
