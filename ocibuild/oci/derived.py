"""Derived blobs: a big layer whose files outlive the build (the model) is not copied into the cache at all.

It is recorded as a recipe (the entries, each file's identity, how each segment was encoded) from which its bytes
are produced again, by the same pipeline, and verified against its digest, whenever it is read. On these machines
a disk write (0.6-0.7 GB/s sustained) is slower than a sha256 pass (1.5 GB/s), so copying a 4 GB layer into the
cache would alone cost more than twice the layer's hashing, and would double the disk it takes.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator

from ..errors import DigestMismatchError, FormatError
from . import compress
from .compress import SEGMENT
from .digest import Digest
from .pipeline import LAYER_FORMAT, Output, Release, nothing, pump
from .tarstream import Entry, TarStream, file_ident


def recipe_valid(doc: dict, check_sources: bool = True) -> bool:
    """Whether a derived blob's recipe can still produce its bytes: same encoding, every source unchanged."""
    try:
        if doc.get("kind") != "layer" or doc.get("format") != LAYER_FORMAT:
            return False
        for e in doc["entries"] if check_sources else ():
            entry = Entry.from_json(e)
            if entry.kind == "file" and (
                entry.ident is None
                or entry.source is None
                or file_ident(os.lstat(entry.source)) != entry.ident
            ):
                return False
    except (OSError, KeyError, TypeError, ValueError):
        return False
    return True


class DerivedBlob:
    """A derived blob's bytes, produced again from its recipe by the same pipeline, and verified: reading to the
    end raises ``DigestMismatchError`` unless they hash to ``digest`` and number ``size``.

    ``read(n)`` serves ordinary readers; ``segments()`` yields the blob as lists of buffers without copying (each
    valid only until the next is asked for), for writers that hand them straight to the kernel.
    """

    def __init__(self, doc: dict, digest: Digest, size: int | None, what: str):
        try:
            entries = [Entry.from_json(e) for e in doc["entries"]]
            self._codec = doc["codec"]
            self._plan = doc["plan"]
            self._mtime = int(doc["mtime"])
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{what}: its recipe in the cache is malformed; build again") from None
        self._digest = digest
        self._size = size
        self._what = what
        changed = "{path} changed since the layer " + digest.short + " was built from it; package again"
        self._tar = TarStream(entries, self._mtime, changed)
        if len(self._plan) != -(-self._tar.size // SEGMENT):
            raise FormatError(
                f"{what} {digest.short}: its recipe in the cache does not fit its files; build again"
            )
        self._queue: queue.Queue = queue.Queue()
        self._cancel = threading.Event()
        self._out = Output(compress.segment_encoder(self._codec), self._deliver)
        self._thread = threading.Thread(target=self._run, name="ocibuild-derive", daemon=True)
        self._started = False
        self._finished = False
        self._pending: list = []  # the unread rest of the current segment, for read()
        self._segments: Iterator[list] | None = None
        self._release: Release = nothing
        self.closed = False

    # the producer side, in a background thread
    def _deliver(self, pieces: list, release: Release) -> None:
        self._queue.put((pieces, release))

    def _run(self) -> None:
        try:
            pump(self._tar, self._out, plan=self._plan, cancel=self._cancel)
            self._queue.put(None)
        except BaseException as e:  # noqa: BLE001 — handed to the reader
            self._queue.put(e)

    # the consumer side
    def segments(self) -> Iterator[list]:
        """The blob as lists of buffers, in order; each list is valid only until the next one is asked for."""
        if self._started:
            raise RuntimeError("a derived blob is read once")
        self._started = True
        self._thread.start()
        while True:
            self._release()
            self._release = nothing
            item = self._queue.get()
            if item is None:
                self._verify()
                return
            if isinstance(item, BaseException):
                self._finished = True
                raise item
            pieces, self._release = item
            yield pieces

    def _verify(self) -> None:
        self._finished = True
        if self._size is not None and self._out.size != self._size:
            raise DigestMismatchError(
                f"{self._what} {self._digest.short}: produced {self._out.size} bytes, its descriptor declares "
                f"{self._size}; build the image again"
            )
        if self._out.digest != self._digest:
            raise DigestMismatchError(
                f"{self._what} {self._digest.short}: produced again it hashes to {self._out.digest.short}; "
                "its source files changed, package again"
            )

    def read(self, n: int = -1) -> bytes:
        if self._segments is None:
            self._segments = self.segments()
        if n is None or n < 0:
            rest = [bytes(p) for p in self._pending]
            self._pending = []
            return b"".join(rest + [bytes(p) for seg in self._segments for p in seg])
        while not self._pending:
            seg = next(self._segments, None)
            if seg is None:
                return b""
            self._pending = [p for p in seg if len(p)]
        piece = self._pending[0]
        if len(piece) > n:
            self._pending[0] = piece[n:]
            return bytes(piece[:n])
        self._pending.pop(0)
        return bytes(piece)

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._started and not self._finished:
            self._cancel.set()
            while self._thread.is_alive() or not self._queue.empty():
                try:
                    item = self._queue.get(timeout=0.05)
                except queue.Empty:
                    continue
                if isinstance(item, tuple):
                    item[1]()
            self._thread.join()
        self._release()
        self._tar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        cancel = getattr(self, "_cancel", None)  # absent if __init__ failed
        if cancel is not None:
            cancel.set()  # a reader dropped unclosed: let its producer thread end


def open_derived(doc: dict, digest: Digest, size: int | None, what: str = "layer") -> DerivedBlob:
    return DerivedBlob(doc, digest, size, what)
