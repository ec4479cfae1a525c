"""One serving process from start to stop: load the script, ``init()`` once, serve, drain on SIGTERM/SIGINT.

``init()`` runs on the main thread (where signals arrive and where scripts expect to run), requests on the
server's threads. A stop signal before the process is ready exits at once (nothing is in flight); after it, the
process stops accepting, lets in-flight requests finish for at most the graceful timeout, and returns 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from .app import App
from .config import Settings
from .entry import EntryScriptError, load_entry_script
from .log import logger
from .metrics import Metrics
from .server import ScoringServer

EXIT_OK = 0
EXIT_BOOT_ERROR = 3  # gunicorn's "worker failed to boot", which Azure's server also uses
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def serve_process(
    settings: Settings,
    sock: socket.socket,
    *,
    accept_before_ready: bool,
    on_ready: Callable[[], None] | None = None,
    metrics: Metrics | None = None,
) -> int:
    """Serve on ``sock`` until a stop signal; return the exit status.

    With ``accept_before_ready`` the socket is served while the script loads, so ``/health/live`` answers and the
    other routes say 503; without it (worker processes sharing one socket) this process takes connections only
    once it is ready, so a restarted worker never answers 503 while its siblings could have served.
    """
    app = App(
        scoring_timeout_ms=settings.scoring_timeout_ms,
        max_concurrent_runs=settings.max_concurrent_runs,
        cors_origins=settings.cors_origins,
        model_name=settings.model_name,
        model_version=settings.model_version,
        metrics=metrics,
    )
    server = ScoringServer(sock, app, settings.max_request_bytes, settings.keepalive_timeout_s)
    stop = threading.Event()
    on_signal = _stop_handler(app, stop)
    previous = {sig: signal.signal(sig, on_signal) for sig in _STOP_SIGNALS}
    serving: threading.Thread | None = None
    try:
        if accept_before_ready:
            serving = _start(server)
        status = _load_and_init(app, settings)
        if status != EXIT_OK:
            return status
        if serving is None:
            serving = _start(server)
        if on_ready is not None:
            on_ready()
        while not stop.wait(1.0):
            pass
        _drain(app, server, settings.graceful_timeout_s)
        return EXIT_OK
    finally:
        if serving is not None:
            server.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_handler(app: App, stop: threading.Event) -> Callable[[int, Any], None]:
    """The SIGTERM/SIGINT handler: exit at once before ``init()`` has finished, else set ``stop`` to drain."""

    def on_signal(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if not app.ready.is_set():
            logger.info("Received %s before init() finished; exiting", name)
            _flush()
            os._exit(EXIT_OK)
        if not stop.is_set():
            logger.info("Received %s; finishing in-flight requests, then exiting", name)
            stop.set()

    return on_signal


def _start(server: ScoringServer) -> threading.Thread:
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="accept", daemon=True
    )
    thread.start()
    return thread


def _load_and_init(app: App, settings: Settings) -> int:
    """Load the entry script and run its ``init()``; on failure log why and return the boot-error status."""
    try:
        logger.info("Loading entry script %s", settings.entry_script)
        entry = load_entry_script(settings.entry_script)
    except EntryScriptError as exc:
        detail = traceback.format_exc().rstrip() if exc.__cause__ is not None else ""
        logger.error("%s; exiting with status %d%s", exc, EXIT_BOOT_ERROR, "\n" + detail if detail else "")
        return EXIT_BOOT_ERROR
    app.entry = entry
    logger.info("Calling init() of %s", entry.path)
    start = time.perf_counter()
    try:
        entry.init()
    except BaseException as exc:
        logger.error(
            "init() of entry script %s raised %s: %s; exiting with status %d\n%s",
            entry.path,
            type(exc).__name__,
            exc,
            EXIT_BOOT_ERROR,
            traceback.format_exc().rstrip(),
        )
        return EXIT_BOOT_ERROR
    elapsed = time.perf_counter() - start
    app.prepare()
    app.ready.set()
    app.metrics.set_ready(True)
    logger.info("init() finished in %.3fs; ready to score (run() style: %s)", elapsed, entry.style)
    return EXIT_OK


def _drain(app: App, server: ScoringServer, timeout_s: float) -> None:
    """Stop accepting, then wait (bounded) for the requests already being answered."""
    app.draining.set()
    app.metrics.set_ready(False)
    server.shutdown()  # the accept loop ends
    server.server_close()  # and the listening socket with it: new connections are refused
    if not server.in_flight.wait_idle(timeout_s):
        logger.warning(
            "%d request(s) still running after %.0fs; exiting anyway", server.in_flight.count, timeout_s
        )
    else:
        logger.info("Stopped")


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
