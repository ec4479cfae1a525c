"""The command line's view of progress events: plain lines on stderr, and a live line on a terminal.

Terminal codes are written here and nowhere else. A byte count redraws its line at most ten times a second; any
other line first clears the live one, so parallel transfers and step lines never interleave on screen.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from ..events import Event, Step, Transfer, TransferDone, Warned, human_size

_CLEAR = "\r\x1b[K"


class Renderer:
    """A listener for ``events.Progress``; ``quiet`` keeps only warnings."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.live = not quiet and self.stream.isatty()
        self._drawn = False
        self._last = 0.0
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            if isinstance(event, Warned):
                self._line(f"warning: {event.message}")
            elif self.quiet:
                return
            elif isinstance(event, Step):
                self._line(event.message)
            elif isinstance(event, Transfer):
                self._draw(event)
            elif isinstance(event, TransferDone):
                self._line(f"{event.label}: {human_size(event.total)} in {event.seconds:.1f}s{event.note}")

    def _line(self, text: str) -> None:
        if self._drawn:
            self.stream.write(_CLEAR)
            self._drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def _draw(self, event: Transfer) -> None:
        if not self.live:
            return
        now = time.monotonic()
        if now - self._last < 0.1:
            return
        self._last = now
        pct = f" {100 * event.done / event.total:3.0f}%" if event.total else ""
        rate = event.done / max(now - event.started, 1e-6)
        self.stream.write(f"\r{event.label}:{pct} {human_size(event.done)} ({human_size(rate)}/s)\x1b[K")
        self.stream.flush()
        self._drawn = True
