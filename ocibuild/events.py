"""Progress for long steps: a live line on a terminal, plain lines otherwise (CI logs stay readable).

Everything goes to stderr, so stdout carries only results (the digest), which scripts can capture.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def human_size(n: float) -> str:
    """Bytes for people: ``950 B``, ``1.2 MB`` (decimal units, as registries and Docker show them)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class Progress:
    def __init__(self, stream: TextIO | None = None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.live = not quiet and self.stream.isatty()

    def step(self, message: str) -> None:
        if not self.quiet:
            print(message, file=self.stream, flush=True)

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=self.stream, flush=True)

    def bytes(self, label: str, total: int) -> ByteCounter:
        return ByteCounter(self, label, total)


class ByteCounter:
    """Call with bytes done so far; on a terminal redraws at most 10 times a second. ``done()`` prints the total."""

    def __init__(self, progress: Progress, label: str, total: int):
        self.p = progress
        self.label = label
        self.total = total
        self.start = time.monotonic()
        self._last = 0.0

    def __call__(self, done: int) -> None:
        if not self.p.live:
            return
        now = time.monotonic()
        if now - self._last < 0.1:
            return
        self._last = now
        pct = f" {100 * done / self.total:3.0f}%" if self.total else ""
        rate = done / max(now - self.start, 1e-6)
        self.p.stream.write(f"\r{self.label}:{pct} {human_size(done)} ({human_size(rate)}/s)\x1b[K")
        self.p.stream.flush()

    def done(self, extra: str = "") -> None:
        if self.p.quiet:
            return
        secs = time.monotonic() - self.start
        line = f"{self.label}: {human_size(self.total)} in {secs:.1f}s{extra}"
        self.p.stream.write(("\r" + line + "\x1b[K\n") if self.p.live else line + "\n")
        self.p.stream.flush()


class Counted:
    """A stream whose reads report the running total to ``counter`` (a ``Progress.bytes`` callback)."""

    def __init__(self, stream, counter):
        self._stream, self._counter, self._n = stream, counter, 0

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._n += len(data)
        self._counter(self._n)
        return data

    def close(self) -> None:
        self._stream.close()
