"""The segment pipeline that turns a tar stream into a blob on every core, with memory bounded by a few buffers.

This thread reads the tar stream in fixed segments (``compress.SEGMENT``) into a small pool of reused buffers and
hashes it (the diff_id); a pool of workers encodes the segments (``compress.segment_encoder``); one writer thread
takes them back in order, hashes the blob (and, when asked, each file: ``on_segment``) and hands it on. hashlib,
ISA-L and file I/O release the GIL on large buffers, so the hashes and the encoding run on different cores, and
memory stays at a few buffers whatever the layer's size. The bytes do not depend on the number of workers or on timing.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from . import compress
from .compress import SEGMENT, Encoded, SegmentEncoder
from .digest import Digest
from .tarstream import TarStream

# The layer encoding's identity: recipes and cache keys of another encoding are never trusted.
LAYER_FORMAT = f"layer-v2-{compress.ENCODING_ID}"
MAX_WORKERS = 8  # segment encoders; with their buffers this bounds memory whatever the machine


def default_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_WORKERS))


Release = Callable[[], None]
Write = Callable[[list, Release], None]  # takes blob pieces in order; calls release once done with them


class Output:
    """The ordered end of the pipeline: encoded segments in, blob pieces out, hashed and counted."""

    def __init__(self, encoder: SegmentEncoder, write: Write, hash_blob: bool = True):
        self.encoder = encoder
        self.write = write
        self.hash = hashlib.sha256() if hash_blob else None  # a plain tar's digest is its diff_id
        self.size = 0
        self.modes: list[str] = []
        self._emit([encoder.header()], nothing)

    def _emit(self, pieces: list, release: Release) -> None:
        for p in pieces:
            if self.hash is not None:
                self.hash.update(p)
            self.size += len(p)
        self.write(pieces, release)

    def segment(self, e: Encoded, release: Release) -> None:
        self.modes.append(e.mode)
        self._emit(list(e.pieces), release)

    def finish(self) -> None:
        self._emit([self.encoder.trailer()], nothing)

    @property
    def digest(self) -> Digest:
        if self.hash is None:
            raise ValueError("a plain tar's digest is its diff_id: this output does not hash")
        return Digest.from_hex(self.hash.hexdigest())


def nothing() -> None:
    pass


def unseen(view: memoryview) -> None:
    pass


def pump(
    tar: TarStream,
    out: Output,
    *,
    plan: str | None = None,
    diff=None,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
    cancel: threading.Event | None = None,
    on_segment: Callable[[memoryview], None] | None = None,
) -> None:
    """Run the tar stream through ``out.encoder`` into ``out``; ``diff`` (a hashlib object) sees the raw stream.

    ``plan`` gives each segment's encoding mode (as recorded when the layer was built); without it the encoder
    decides from the content. ``on_segment``, if given, also sees the raw stream, segment by segment in order, but
    in the writer thread: work on it (a file's hash) runs beside the reader's instead of slowing it down. Memory: at
    most ``workers + 3`` segment buffers, reused.
    """
    workers = (workers or default_workers()) if out.encoder.parallel else 1
    count = -(-tar.size // SEGMENT)

    def encode(i: int, view: memoryview) -> Encoded:
        return out.encoder.encode(view, plan[i] if plan else None)

    try:
        if count == 1:  # a small layer: no threads, the same bytes
            view = memoryview(bytearray(tar.size))
            tar.readinto(view)
            if diff is not None:
                diff.update(view)
            if on_segment is not None:
                on_segment(view)
            out.segment(encode(0, view), nothing)
            if progress:
                progress(tar.size)
        else:
            cancel = cancel or threading.Event()
            _pump_threaded(tar, out, encode, count, diff, progress, workers, cancel, on_segment or unseen)
    finally:
        tar.close()
    out.finish()


def _pump_threaded(tar, out, encode, count, diff, progress, workers, cancel, on_segment) -> None:
    nbuf = workers + 3  # one being read, one per encoder, one being written, one spare
    free: queue.Queue = queue.Queue()
    for _ in range(min(nbuf, count)):
        free.put(bytearray(SEGMENT + PAGE))
    todo: queue.Queue = queue.Queue(maxsize=nbuf)
    failure: list[BaseException] = []
    stop = threading.Event()

    def stopped() -> bool:
        return stop.is_set() or cancel.is_set()

    def writer() -> None:
        while (item := todo.get()) is not None:
            if stopped():
                continue
            future, buf, view = item
            try:
                on_segment(view)  # while the segment encodes; its buffer is not reused until released
                out.segment(future.result(), partial(free.put, buf))
            except BaseException as e:  # noqa: BLE001 — handed to the calling thread
                failure.append(e)
                stop.set()

    pool = ThreadPoolExecutor(workers, thread_name_prefix="ocibuild-encode")
    thread = threading.Thread(target=writer, name="ocibuild-write", daemon=True)
    thread.start()
    try:
        _feed(tar, count, free, todo, lambda i, view: pool.submit(encode, i, view), diff, progress, stopped)
    except BaseException:
        stop.set()
        raise
    finally:
        todo.put(None)  # the writer drains the queue to this marker whatever happened
        thread.join()
        pool.shutdown(wait=True, cancel_futures=True)
    if failure:
        raise failure[0]
    if cancel.is_set():
        raise Cancelled()


def _feed(tar, count, free, todo, submit, diff, progress, stopped) -> None:
    """Read the tar segment by segment into free buffers, hash it, and queue each segment's encoding in order."""
    done = 0
    for i in range(count):
        buf = _take(free, stopped)
        if buf is None:
            return
        n = min(SEGMENT, tar.size - done)
        shift = unaliased(buf, tar.main_file_start(done, n))
        view = memoryview(buf)[shift : shift + n]
        tar.readinto(view)
        if diff is not None:
            diff.update(view)
        if not _put(todo, (submit(i, view), buf, view), stopped):
            return
        done += len(view)
        if progress:
            progress(done)


PAGE = 4096


def unaliased(buf: bytearray, file_start: int | None) -> int:
    """Where in ``buf`` to put a segment so that its file's bytes land half a page away from where they sit in
    their page-cache pages. Copying between addresses equal modulo 4 KiB ("4K aliasing") made the kernel's reads
    3-4 times slower on these machines (AMD EPYC: 0.55 s against 0.15 s of system time per GiB)."""
    if file_start is None:
        return 0
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    return (PAGE // 2 - base - file_start) % PAGE


class Cancelled(Exception):
    pass


def _take(q: queue.Queue, stopped: Callable[[], bool]):
    while True:
        try:
            return q.get(timeout=0.05)
        except queue.Empty:
            if stopped():
                return None


def _put(q: queue.Queue, item, stopped: Callable[[], bool]) -> bool:
    while True:
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            if stopped():
                return False
