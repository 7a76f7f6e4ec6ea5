"""A daemon serving DNS in hundreds of namespaces holds thousands of sockets; libnftables
(select() on its netlink socket) aborts the process once that socket's number passes 1023.
The resolver's long-lived sockets are therefore kept above 1023: nftables still works with
1200 of them open."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import resource, socket
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
from tether.datapath import nsutil
from tether.firewall.libnft import Nft
socks = [nsutil._bound_socket(socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", 0)) for _ in range(1200)]
assert min(s.fileno() for s in socks) >= 1024, min(s.fileno() for s in socks)
Nft().run("list tables")
print("ok", len(socks))
"""


def test_nftables_survives_thousands_of_resolver_sockets() -> None:
    # own network namespace, so `list tables` reads nothing of the machine's
    r = subprocess.run(["unshare", "--net", sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok 1200"
