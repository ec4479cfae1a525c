"""Starting the service: settings, the listening socket, then one serving process or a supervised group.

``serve()`` is what the host's ``ocibuild serve`` calls and ``main()`` what ``python3 -m ocibuild_serving`` runs
in images; both block until the service stops and return its exit status (see the package docstring).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable

from .config import LISTEN_BACKLOG, ConfigError, Settings, settings_from
from .log import logger, setup_logging
from .metrics import Metrics
from .process import serve_process
from .server import listen
from .workers import supervise

EXIT_CONFIG = 2
EXIT_BIND = 1


def serve(
    entry_script: str | None = None,
    host: str | None = None,
    port: int | None = None,
    *,
    model_dir: str | None = None,
    workers: int | None = None,
    max_request_bytes: int | None = None,
) -> int:
    """Run the scoring service until SIGTERM/SIGINT and return the exit status; call it on the main thread.

    Arguments left as ``None`` come from the environment (``AZUREML_ENTRY_SCRIPT``, ``OCIBUILD_HOST``, ...), then
    the defaults. ``model_dir`` is exported as ``AZUREML_MODEL_DIR`` (absolute) before the script is loaded.
    """
    try:
        settings = settings_from(
            entry_script=entry_script,
            host=host,
            port=port,
            model_dir=model_dir,
            workers=workers,
            max_request_bytes=max_request_bytes,
        )
    except ConfigError as exc:
        setup_logging()
        logger.error("Configuration error: %s", exc)
        return EXIT_CONFIG
    setup_logging(settings.log_level)
    if settings.model_dir:
        os.environ["AZUREML_MODEL_DIR"] = os.path.abspath(settings.model_dir)
    try:
        sock = listen(settings.host, settings.port, LISTEN_BACKLOG)
    except OSError as exc:
        logger.error("Cannot listen on %s port %d: %s", settings.host, settings.port, exc)
        return EXIT_BIND
    try:
        bound_port = sock.getsockname()[1]
        plural = "s" if settings.workers > 1 else ""
        logger.info(
            "Listening on http://%s:%d with %d worker%s", settings.host, bound_port, settings.workers, plural
        )
        if settings.workers == 1:
            return serve_process(settings, sock, accept_before_ready=True, metrics=Metrics(1))
        return _serve_workers(settings, sock)
    finally:
        sock.close()


def _serve_workers(settings: Settings, sock: socket.socket) -> int:
    metrics = Metrics(settings.workers)  # shared memory, made before the fork: /metrics sums all workers

    def worker_main(index: int, notify_ready: Callable[[], None]) -> int:
        metrics.use_slot(index)
        return serve_process(
            settings, sock, accept_before_ready=False, on_ready=notify_ready, metrics=metrics
        )

    return supervise(
        settings.workers, worker_main, graceful_timeout_s=settings.graceful_timeout_s, on_stop=sock.close
    )


def main(argv: list[str] | None = None) -> int:
    """``python3 -m ocibuild_serving [--entry-script F] [--model-dir D] [--port N] [--host H] [--workers N]``."""
    parser = argparse.ArgumentParser(
        prog="ocibuild_serving",
        description="Serve an Azure ML style entry script (init() and run(raw_data)) over HTTP.",
    )
    parser.add_argument("--entry-script", help="the entry script (default: $AZUREML_ENTRY_SCRIPT)")
    parser.add_argument("--model-dir", help="exported as AZUREML_MODEL_DIR (default: $AZUREML_MODEL_DIR)")
    parser.add_argument("--port", type=int, help="listen port (default: $OCIBUILD_PORT or 5001)")
    parser.add_argument("--host", help="listen address (default: $OCIBUILD_HOST or 0.0.0.0)")
    parser.add_argument("--workers", type=int, help="worker processes (default: $WORKER_COUNT or 1)")
    args = parser.parse_args(argv)
    # print() in the entry script should reach `docker logs` as it happens, not when a block buffer fills.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    return serve(args.entry_script, args.host, args.port, model_dir=args.model_dir, workers=args.workers)
