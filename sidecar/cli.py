"""`aibrix-sidecar`: parse settings, configure logging, start the monitor and the HTTP server.

Exit codes: 143 / 130 after a graceful stop on SIGTERM / SIGINT, 2 for configuration errors, 1 when the
download it ran failed (native-sidecar mode), so that Kubernetes restarts it and the download resumes.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence

import uvicorn

from downloader.errors import ConfigError
from runtime.supervise import Signals

from .app import create_app
from .config import load_settings
from .fastpath import http_protocol
from .monitor import Monitor
from .routes import route_table
from .snapshot import readiness_follows

log = logging.getLogger("sidecar")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv, os.environ)
    except ConfigError as exc:
        log.error("%s", exc)
        return exc.exit_code
    logging.getLogger().setLevel(settings.log_level)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    for warning in settings.warnings:
        log.warning("%s", warning)

    # Bind first, so that port 0 works and the real address is in the log.
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio turns Nagle off only for sockets it knows are TCP, and with Nagle on
    # every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
        sock.listen(2048)  # accept (queue) connections from the moment we say we are listening
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc.strerror)
        return 2
    host, port = sock.getsockname()[:2]

    if settings.model_dir is None:
        log.warning(
            "no model directory given (--model-dir / SIDECAR_MODEL_DIR): no model is watched; %s",
            readiness_follows(settings),
        )
    monitor = Monitor(settings)
    monitor.start()
    routes = route_table(monitor)
    # Probes are answered on the socket (sidecar/fastpath.py); anything else goes through uvicorn to the app. Both
    # serve the one route table. No access log: a line per probe would cost more than the probe.
    config = uvicorn.Config(
        create_app(routes),
        http=http_protocol(routes) if settings.fast_paths else "auto",
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    # uvicorn restores these after its graceful shutdown and re-raises the signal it caught; ours records it
    # instead of dying, so the download child is stopped before we exit.
    signals = Signals()
    signals.install()
    watching = settings.model_dir if settings.model_dir is not None else f"no model ({readiness_follows(settings)})"
    log.info("aibrix-sidecar listening on http://%s:%d watching %s", host, port, watching)
    failed = threading.Event()
    if settings.download_args and settings.exit_on_failure_after >= 0:

        def exit_after_failure() -> None:
            monitor.download_failed.wait()
            time.sleep(settings.exit_on_failure_after)  # long enough for probes and people to see the failure
            failed.set()
            server.should_exit = True

        threading.Thread(target=exit_after_failure, name="exit-on-failure", daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        monitor.stop()
    if failed.is_set():
        return 1
    return 128 + signals.received[0] if signals.received else 0


if __name__ == "__main__":
    raise SystemExit(main())
