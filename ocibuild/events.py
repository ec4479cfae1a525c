"""Progress as events: library code reports what it does; whoever called it decides how to show it.

Library code gets a ``Progress`` and calls ``step``, ``warn`` and ``bytes``; each call becomes an event handed to
the listener the caller chose (the command line renders them on stderr, ``cli.render``; the Python API drops them
unless given one). Nothing here writes to a terminal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .oci.digest import Stream


@dataclass(frozen=True)
class Step:
    """A line worth showing: what is being done, or what was done."""

    message: str


@dataclass(frozen=True)
class Warned:
    """Something the user should know even when they asked for quiet."""

    message: str


@dataclass(frozen=True)
class Transfer:
    """Bytes done so far of a long step (a layer written, a blob pushed)."""

    label: str
    done: int
    total: int
    started: float  # time.monotonic() when the step began


@dataclass(frozen=True)
class TransferDone:
    label: str
    total: int
    seconds: float
    note: str = ""


Event = Step | Warned | Transfer | TransferDone
Listener = Callable[[Event], None]


def human_size(n: float) -> str:
    """Bytes for people: ``950 B``, ``1.2 MB`` (decimal units, as registries and Docker show them)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class Progress:
    """Where library code reports to. Without a listener, reports go nowhere."""

    def __init__(self, listener: Listener | None = None):
        self.listener = listener

    def emit(self, event: Event) -> None:
        if self.listener is not None:
            self.listener(event)

    def step(self, message: str) -> None:
        self.emit(Step(message))

    def warn(self, message: str) -> None:
        self.emit(Warned(message))

    def bytes(self, label: str, total: int) -> ByteCounter:
        return ByteCounter(self, label, total)


class ByteCounter:
    """Call with the bytes done so far; ``done()`` reports the total and the time it took."""

    def __init__(self, progress: Progress, label: str, total: int):
        self.progress = progress
        self.label = label
        self.total = total
        self.start = time.monotonic()

    def __call__(self, done: int) -> None:
        self.progress.emit(Transfer(self.label, done, self.total, self.start))

    def done(self, note: str = "") -> None:
        self.progress.emit(TransferDone(self.label, self.total, time.monotonic() - self.start, note))


class Counted:
    """A stream whose reads report the running total to ``counter`` (a ``Progress.bytes`` callback)."""

    def __init__(self, stream: Stream, counter: Callable[[int], None]):
        self._stream, self._counter, self._n = stream, counter, 0

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._n += len(data)
        self._counter(self._n)
        return data

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> Counted:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
