"""``POST /trace``: the hops from one container to a destination, checked, for ``tether
trace`` (``tether/trace/`` does the work; the CLI only prints the reply).

Body: ``{"source": SRC, "destination": DST, "port": N | null, "protocol": "tcp" | "udp" |
null, "probe": bool | null}`` (``DST`` as the CLI takes it, ``NAME.NETWORK``, an IP or
``host``; a ``:PORT[/PROTO]`` suffix in it works too). Reply: ``Trace.to_dict()``:
``{"source", "destination", "reachable", "steps": [{"hop", "status", "detail", "how",
"fix"}], "verdict": {"reachable", "hop", "why", "fix"}}``. An unknown container is a 404
(NotFound), a bad destination or port a 400 (InvalidInput).
"""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import Meta

from ..controller import Controller
from .schema import Body, Required
from .server import Query, route

__all__ = ["TraceRequest", "trace_route"]


class TraceRequest(Body):
    source: Required
    destination: Required
    port: Annotated[int, Meta(ge=1, le=65535)] | None = None
    protocol: str | None = None
    probe: bool | None = None


@route("POST", "/trace", TraceRequest)
def trace_route(c: Controller, p: dict[str, str], body: TraceRequest, q: Query) -> Any:
    from ..trace.tracer import trace  # only the daemon's trace requests pay for it

    return trace(c, body.source, body.destination, body.port, body.protocol,
                 probe=body.probe is not False).to_dict()
