"""The server's log: one line per event on stderr, flushed at once so ``docker logs`` shows it live.

The server logs under its own logger name and does not propagate, so it neither depends on nor disturbs the
logging an entry script (or the host CLI) sets up on the root logger.
"""

from __future__ import annotations

import json
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


def log_request(method: str, path: str, route: str, status: int, latency_ms: float, request_id: str) -> None:
    """The access-log line, logfmt ``key=value`` pairs after the word ``access``: method, path, route template,
    status, latency in ms and request id, e.g. ``access method=POST path=/score route=/score status=200
    ms=1.234 request_id=5f0c...``. Values with spaces, quotes or ``=`` are JSON-quoted."""
    if not logger.isEnabledFor(logging.INFO):
        return
    logger.info(
        "access method=%s path=%s route=%s status=%d ms=%.3f request_id=%s",
        _value(method),
        _value(path),
        route,
        status,
        latency_ms,
        _value(request_id or "-"),
    )


def _value(text: str) -> str:
    if not text or any(c in text for c in ' "=\\') or not text.isprintable():
        return json.dumps(text)
    return text
