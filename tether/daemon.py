"""The per-host daemon: opens the store and the datapath, reconciles, then serves the API.

The daemon holds no container alive: containers run under their own shims and their
namespaces are bind-mounted, so the daemon can be stopped, killed or upgraded while they
keep running and keep their network (live restore). On start it reconciles the kernel
with the store before it answers a single request.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

from .api.server import ApiServer
from .controller import Controller
from .datapath import Datapath
from .store import SqliteStore

__all__ = ["run_daemon"]

log = logging.getLogger("tether.daemon")


def run_daemon(state_dir: str, socket_path: str, netns_prefix: str = "", log_level: str = "info") -> None:
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.makedirs(state_dir, exist_ok=True)
    store = SqliteStore(os.path.join(state_dir, "tether.db"))
    datapath = Datapath()
    controller = Controller(store, datapath, state_dir, netns_prefix=netns_prefix, socket_path=socket_path)
    actions = controller.reconcile()
    log.info("reconciled with %d correction(s)", len(actions))
    server = ApiServer(controller, socket_path)
    stopping = threading.Event()

    def reaper() -> None:
        # --rm containers whose shim could not reach us (we were down) are removed here.
        while not stopping.wait(2.0):
            try:
                controller.reap_exited()
            except Exception:
                log.exception("reaper")

    threading.Thread(target=reaper, name="tether-reaper", daemon=True).start()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: shutting down (containers keep running)", signum)
        stopping.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("tether daemon serving on %s (state in %s, netns prefix %r)", socket_path, state_dir, netns_prefix)
    try:
        server.serve_forever()
    finally:
        stopping.set()
        datapath.close()
        store.close()
