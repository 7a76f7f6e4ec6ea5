"""Tiny servers and clients, run inside namespaces with `python3 -c`, that report the
peer address they saw (to check NAT and source preservation with real packets); and
``ask`` and ``until``, the two ways the tests put the clients to use."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

TCP_WHO = (
    "import socket,sys\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind((sys.argv[1] if len(sys.argv)>2 else '0.0.0.0', int(sys.argv[-1]))); s.listen(64)\n"
    "while True:\n"
    "    c, a = s.accept(); c.sendall(a[0].encode()); c.close()\n"
)

UDP_WHO = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', int(sys.argv[1])))\n"
    "while True:\n"
    "    d, a = s.recvfrom(100); s.sendto(a[0].encode(), a)\n"
)

TCP_ASK = (
    "import socket,sys\n"
    "try:\n"
    "    c=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2); print(c.recv(100).decode())\n"
    "except OSError as e:\n"
    "    print('FAIL', e); sys.exit(1)\n"
)

UDP_ASK = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)\n"
    "try:\n"
    "    s.sendto(b'hi', (sys.argv[1], int(sys.argv[2]))); print(s.recvfrom(100)[0].decode())\n"
    "except OSError as e:\n"
    "    print('FAIL', e); sys.exit(1)\n"
)

# A fake upstream DNS server: answers every A query with 203.0.113.99.
FAKE_DNS = (
    "import socket,struct\n"
    "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 53))\n"
    "while True:\n"
    "    q, a = s.recvfrom(512)\n"
    "    end = 12\n"
    "    while q[end]: end += q[end] + 1\n"
    "    question = q[12:end + 5]\n"
    "    hdr = q[:2] + b'\\x81\\x80' + b'\\x00\\x01\\x00\\x01\\x00\\x00\\x00\\x00'\n"
    "    ans = b'\\xc0\\x0c' + struct.pack('!HHIH', 1, 1, 5, 4) + socket.inet_aton('203.0.113.99')\n"
    "    s.sendto(hdr + question + ans, a)\n"
)

RESOLVE = (
    "import socket,sys\n"
    "try:\n"
    "    print(socket.gethostbyname(sys.argv[1]))\n"
    "except OSError as e:\n"
    "    print('FAIL', e); sys.exit(1)\n"
)

# A TCP server on both families (an IPv6 socket with V6ONLY off) that reports the peer's
# address, v4 clients unmapped from ::ffff:a.b.c.d.
TCP_WHO6 = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
    "s.bind(('::', int(sys.argv[-1]))); s.listen(64)\n"
    "while True:\n"
    "    c, a = s.accept(); c.sendall(a[0].removeprefix('::ffff:').encode()); c.close()\n"
)

# Resolve a name to its IPv6 addresses (AAAA), and an address back to its name (PTR).
RESOLVE6 = (
    "import socket,sys\n"
    "try:\n"
    "    print(' '.join(sorted({i[4][0] for i in socket.getaddrinfo(sys.argv[1], None, socket.AF_INET6)})))\n"
    "except OSError as e:\n"
    "    print('FAIL', e); sys.exit(1)\n"
)
REVERSE = (
    "import socket,sys,time\n"
    "t=time.monotonic()\n"
    "try:\n"
    "    name=socket.gethostbyaddr(sys.argv[1])[0]\n"
    "except OSError as e:\n"
    "    name='FAIL %s' % e\n"
    "print(name, round(time.monotonic()-t, 3))\n"
)


def until(fn: Callable[[], Any], timeout: float = 10.0, every: float = 0.1) -> Any:
    """``fn()`` again every ``every`` seconds until it is truthy or ``timeout`` has passed;
    its last result either way (the caller's assertion says what was wanted)."""
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(every)


def ask(runner: Callable[..., subprocess.CompletedProcess[str]], address: str, port: int, udp: bool = False) -> str:
    """What a TCP_WHO (or, with ``udp``, UDP_WHO) server at ``address:port`` says, asked
    through ``runner`` (a function running a command where the client should be); "" if
    nothing answered."""
    r = runner("python3", "-c", UDP_ASK if udp else TCP_ASK, address, str(port), check=False)
    return r.stdout.strip() if r.returncode == 0 else ""
