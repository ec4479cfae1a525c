"""The server's log: one line per event on stderr, flushed at once so ``docker logs`` shows it live.

The server logs under its own logger name and does not propagate, so it neither depends on nor disturbs the
logging an entry script (or the host CLI) sets up on the root logger.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("ocibuild.serving")

_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(message)s"


def setup_logging(level: str = "INFO") -> None:
    """Send the server's log to stderr; idempotent, so ``serve()`` may be called more than once."""
    if not any(getattr(h, "_ocibuild_serving", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)  # flushes after every record
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler._ocibuild_serving = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    value = logging.getLevelName(level.upper())  # an int for a known level name, else a string
    logger.setLevel(value if isinstance(value, int) else logging.INFO)
    logger.propagate = False


def log_request(method: str, path: str, status: int, latency_ms: float, request_id: str) -> None:
    """The access-log line: method, path, status, latency and request id."""
    logger.info("%s %s %d %.3fms %s", method, path, status, latency_ms, request_id or "-")
