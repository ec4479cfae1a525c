"""Deterministic layers: a set of files → one tar blob, in one streaming pass over the files, on every core.

This is ocibuild's reproducibility unit (as Jib's ``ReproducibleLayerBuilder``): entries sorted with parents
before children, owner 0:0 with empty names, modes normalised (0755 for directories and executables, 0644
otherwise), one fixed mtime (``SOURCE_DATE_EPOCH`` or 0), PAX format. The same inputs give the same bytes on any
machine and from any checkout path.

The pass: this thread reads the tar stream in fixed segments (``compress.SEGMENT``) into a small pool of reused
buffers and hashes it (the diff_id); a pool of workers encodes the segments (``compress.segment_encoder``); one
writer thread takes them back in order, hashes the blob and writes it. hashlib, ISA-L and file I/O release the GIL
on large buffers, so the two hashes and the encoding run on different cores, and memory stays at a few buffers
whatever the layer's size. The bytes do not depend on the number of workers or on timing.

A big layer built from files that outlive the build (the model) need not be copied into the store at all: it is
recorded as a *derived* blob, a recipe (the entries, each file's identity, how each segment was encoded) from
which its bytes are produced again, and verified against its digest, whenever it is read. On these machines a
disk write (0.6-0.7 GB/s sustained) is slower than a sha256 pass (1.5 GB/s), so copying a 4 GB layer into the
cache would alone cost more than twice the layer's hashing, and would double the disk it takes.
"""

from __future__ import annotations

import bisect
import ctypes
import hashlib
import itertools
import json
import os
import queue
import stat
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

from .. import __version__
from ..errors import DigestMismatchError, FormatError, InputError
from . import compress
from .compress import SEGMENT, Encoded, SegmentEncoder
from .descriptor import Descriptor
from .digest import Digest
from .store import BlobStore, write_all

BLOCK = 512
# Layers at least this big, whose sources outlive the build (``derive=True``), become derived blobs.
DERIVE_MIN = 64 << 20
LAYER_FORMAT = f"layer-v2-{compress.ENCODING_ID}"

# A host file's (size, mtime_ns, inode, device): the file has not changed while it is the same.
Ident = tuple[int, int, int, int]


def source_date_epoch() -> int:
    """The fixed timestamp for every file and document: ``SOURCE_DATE_EPOCH`` (reproducible-builds.org) or 0."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "0")
    try:
        return max(0, int(value))
    except ValueError:
        raise InputError(
            f"SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds; unset it or fix it"
        ) from None


MAX_WORKERS = 8  # segment encoders; with their buffers this bounds memory whatever the machine


def default_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_WORKERS))


@dataclass(frozen=True)
class Entry:
    """One entry of a layer: ``path`` is relative to the image root, POSIX, no leading slash."""

    path: str
    kind: str  # "file", "dir" or "symlink"
    source: Path | None = None  # host file (absolute), for kind == "file"
    executable: bool = False
    target: str = ""  # for kind == "symlink"
    size: int = 0
    ident: Ident | None = None  # the source's identity when it was added, for kind == "file"

    def to_json(self) -> list:
        return [
            self.path,
            self.kind,
            str(self.source) if self.source else None,
            self.executable,
            self.target,
            self.size,
            list(self.ident) if self.ident else None,
        ]

    @classmethod
    def from_json(cls, doc: list) -> Entry:
        path, kind, source, executable, target, size, ident = doc
        return cls(
            path,
            kind,
            Path(source) if source else None,
            executable,
            target,
            size,
            tuple(ident) if ident else None,
        )


def _ident(st: os.stat_result) -> Ident:
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def _image_path(path: str) -> str:
    p = PurePosixPath("/" + path.lstrip("/"))
    parts = [x for x in p.parts[1:] if x not in ("", ".")]
    if any(x == ".." for x in parts) or not parts:
        raise InputError(f"image path {path!r} must be a plain path inside the image")
    return "/".join(parts)


class LayerContents:
    """Collects what goes into one layer: host files or trees at image paths. Parent directories are implied."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def add_file(self, source: Path, dest: str) -> None:
        dest = _image_path(dest)
        st = _lstat(source)
        if stat.S_ISLNK(st.st_mode):
            self._put(Entry(dest, "symlink", target=os.readlink(source)))
        elif stat.S_ISREG(st.st_mode):
            absolute = Path(os.path.abspath(source))
            self._put(
                Entry(dest, "file", absolute, bool(st.st_mode & 0o111), size=st.st_size, ident=_ident(st))
            )
        elif stat.S_ISDIR(st.st_mode):
            self.add_tree(source, dest)
        else:
            raise InputError(f"{source}: not a regular file, directory or symlink; remove it from the inputs")

    def add_tree(self, source: Path, dest: str, exclude: Iterable[str] = ("__pycache__", ".git")) -> None:
        """A directory and everything under it (symlinks kept as links, not followed)."""
        dest = _image_path(dest)
        skip = set(exclude)
        self._put(Entry(dest, "dir"))
        for root, dirs, files in os.walk(source, onerror=_walk_error):
            dirs[:] = [d for d in dirs if d not in skip]
            rel = os.path.relpath(root, source)
            base = dest if rel == "." else f"{dest}/{Path(rel).as_posix()}"
            for name in dirs:
                full = Path(root, name)
                if os.path.islink(full):
                    self._put(Entry(f"{base}/{name}", "symlink", target=os.readlink(full)))
                else:
                    self._put(Entry(f"{base}/{name}", "dir"))
            for name in files:
                if name.endswith(".pyc"):
                    continue
                self.add_file(Path(root, name), f"{base}/{name}")

    def add_dir(self, dest: str) -> None:
        self._put(Entry(_image_path(dest), "dir"))

    def _put(self, entry: Entry) -> None:
        self._entries[entry.path] = entry
        parts = entry.path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            self._entries.setdefault(parent, Entry(parent, "dir"))

    def entries(self) -> list[Entry]:
        """Sorted by path components: parents come before their children, siblings in byte order."""
        return sorted(self._entries.values(), key=lambda e: e.path.split("/"))

    @property
    def total_size(self) -> int:
        return sum(e.size for e in self._entries.values())


def cache_key(contents: LayerContents, codec: str) -> str:
    """A key for the layer these contents make, from the inputs alone (no file is read): every entry with its
    source's absolute path and identity (size, mtime_ns, inode, device), the codec, ``SOURCE_DATE_EPOCH``, the
    encoding settings and library versions, and ocibuild's version. Any edit to a file changes its mtime or size."""
    doc = {
        "format": LAYER_FORMAT,
        "ocibuild": __version__,
        "codec": codec,
        "mtime": source_date_epoch(),
        "entries": [e.to_json() for e in contents.entries()],
    }
    return "layer-" + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _lstat(path: Path) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}") from None


def _walk_error(e: OSError) -> None:
    raise InputError(f"{e.filename}: {e.strerror}")


def _header(entry: Entry, mtime: int) -> bytes:
    info = tarfile.TarInfo(entry.path)
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    elif entry.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = entry.target
        info.mode = 0o777
    else:
        info.type = tarfile.REGTYPE
        info.mode = 0o755 if entry.executable else 0o644
        info.size = entry.size
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


# ---------------------------------------------------------------- the tar stream


class _TarStream:
    """The layer's uncompressed tar, read sequentially: headers and padding from memory, contents from the files.

    A file must still be the one that was added (same size, mtime, inode, device) when it is opened and when it
    has been read to its end; otherwise ``changed`` (a message with ``{path}``) is raised as an InputError.
    """

    def __init__(self, entries: list[Entry], mtime: int, changed: str):
        self._spans: list[bytes | Entry] = []
        pending = bytearray()
        for e in entries:
            pending += _header(e, mtime)
            if e.kind == "file":
                self._spans += [bytes(pending), e]
                pending = bytearray(-e.size % BLOCK)
        pending += bytes(2 * BLOCK)
        self._spans.append(bytes(pending))
        self._starts = list(itertools.accumulate((_span_size(s) for s in self._spans), initial=0))
        self.size = self._starts[-1]
        self._changed = changed
        self._i = 0  # current span
        self._o = 0  # offset in it
        self._f = None

    def readinto(self, view: memoryview) -> None:
        """Fill ``view`` entirely with the next bytes of the stream (the caller never asks past the end)."""
        n, want = 0, len(view)
        while n < want:
            span = self._spans[self._i]
            if isinstance(span, bytes):
                k = min(want - n, len(span) - self._o)
                view[n : n + k] = span[self._o : self._o + k]
                n += k
                self._o += k
                if self._o == len(span):
                    self._i, self._o = self._i + 1, 0
                continue
            if self._f is None:
                self._f = self._open(span)
            k = min(want - n, span.size - self._o)
            if k:
                try:
                    got = self._f.readinto(view[n : n + k])
                except OSError as e:
                    self.close()
                    raise InputError(f"{span.source}: {e.strerror}") from None
                if not got:
                    self.close()
                    raise InputError(self._changed.format(path=span.source))
                n += got
                self._o += got
            if self._o == span.size:
                self._finish(span)
                self._i, self._o = self._i + 1, 0

    def _open(self, e: Entry):
        try:
            f = open(e.source, "rb", buffering=0)
        except OSError as err:
            raise InputError(f"{e.source}: {err.strerror}") from None
        if e.ident is not None and _ident(os.fstat(f.fileno())) != e.ident:
            f.close()
            raise InputError(self._changed.format(path=e.source))
        return f

    def _finish(self, e: Entry) -> None:
        f, self._f = self._f, None
        try:
            grew = f.read(1)
            now = _ident(os.fstat(f.fileno()))
        finally:
            f.close()
        if grew or (e.ident is not None and now != e.ident):
            raise InputError(self._changed.format(path=e.source))

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def main_file_start(self, offset: int, n: int) -> int | None:
        """Where (in the stream) the data starts of the file that has the most bytes in ``[offset, offset+n)``."""
        best, most = None, 0
        i = bisect.bisect_right(self._starts, offset) - 1
        while i < len(self._spans) and self._starts[i] < offset + n:
            span, start = self._spans[i], self._starts[i]
            inside = min(start + _span_size(span), offset + n) - max(start, offset)
            if not isinstance(span, bytes) and inside > most:
                best, most = start, inside
            i += 1
        return best

    def sample(self, offsets: list[int], n: int) -> list[bytes]:
        """The ``n`` bytes at each offset (clipped at the end), read without disturbing the sequential reader."""
        files: dict[Path, int] = {}
        try:
            return [self._pread(offset, n, files) for offset in offsets]
        except OSError as e:
            raise InputError(f"{e.filename or 'a layer input'}: {e.strerror}") from None
        finally:
            for fd in files.values():
                os.close(fd)

    def _pread(self, offset: int, n: int, files: dict[Path, int]) -> bytes:
        parts = []
        i = bisect.bisect_right(self._starts, offset) - 1
        while n > 0 and i < len(self._spans):
            span, within = self._spans[i], offset - self._starts[i]
            k = min(n, _span_size(span) - within)
            if isinstance(span, bytes):
                parts.append(span[within : within + k])
            elif k > 0:
                if span.source not in files:
                    files[span.source] = os.open(span.source, os.O_RDONLY)
                data = os.pread(files[span.source], k, within)
                parts.append(data + bytes(k - len(data)))  # a file that shrank: the main pass will say so
            offset, n, i = offset + k, n - k, i + 1
        return b"".join(parts)


def _span_size(span: bytes | Entry) -> int:
    return len(span) if isinstance(span, bytes) else span.size


# ---------------------------------------------------------------- the pipeline

Release = Callable[[], None]
Write = Callable[[list, Release], None]  # takes blob pieces in order; calls release once done with them


class _Output:
    """The ordered end of the pipeline: encoded segments in, blob pieces out, hashed and counted."""

    def __init__(self, encoder: SegmentEncoder, write: Write, hash_blob: bool = True):
        self.encoder = encoder
        self.write = write
        self.hash = hashlib.sha256() if hash_blob else None  # a plain tar's digest is its diff_id
        self.size = 0
        self.crc = 0
        self.raw = 0
        self.modes: list[str] = []
        self._emit([encoder.header()], _nothing)

    def _emit(self, pieces: list, release: Release) -> None:
        for p in pieces:
            if self.hash is not None:
                self.hash.update(p)
            self.size += len(p)
        self.write(pieces, release)

    def segment(self, e: Encoded, release: Release) -> None:
        self.crc = compress.combine_crc(self.crc, e.crc, e.size) if self.raw else e.crc
        self.raw += e.size
        self.modes.append(e.mode)
        self._emit(list(e.pieces), release)

    def finish(self) -> None:
        self._emit([self.encoder.trailer(self.crc, self.raw)], _nothing)

    @property
    def digest(self) -> Digest:
        return Digest.from_hex(self.hash.hexdigest())


def _nothing() -> None:
    pass


def _pump(
    tar: _TarStream,
    out: _Output,
    *,
    plan: str | None = None,
    diff=None,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Run the tar stream through ``out.encoder`` into ``out``; ``diff`` (a hashlib object) sees the raw stream.

    ``plan`` gives each segment's encoding mode (as recorded when the layer was built); without it the encoder
    decides from the content. Memory: at most ``workers + 3`` segment buffers, reused.
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
            out.segment(encode(0, view), _nothing)
            if progress:
                progress(tar.size)
        else:
            _pump_threaded(tar, out, encode, count, diff, progress, workers, cancel or threading.Event())
    finally:
        tar.close()
    out.finish()


def _pump_threaded(tar, out, encode, count, diff, progress, workers, cancel) -> None:
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
            future, buf = item
            try:
                out.segment(future.result(), partial(free.put, buf))
            except BaseException as e:  # noqa: BLE001 — handed to the calling thread
                failure.append(e)
                stop.set()

    pool = ThreadPoolExecutor(workers, thread_name_prefix="ocibuild-encode")
    thread = threading.Thread(target=writer, name="ocibuild-write", daemon=True)
    thread.start()
    try:
        done = 0
        for i in range(count):
            buf = _take(free, stopped)
            if buf is None:
                break
            n = min(SEGMENT, tar.size - done)
            shift = _unaliased(buf, tar.main_file_start(done, n))
            view = memoryview(buf)[shift : shift + n]
            tar.readinto(view)
            if diff is not None:
                diff.update(view)
            if not _put(todo, (pool.submit(encode, i, view), buf), stopped):
                break
            done += len(view)
            if progress:
                progress(done)
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
        raise _Cancelled()


PAGE = 4096


def _unaliased(buf: bytearray, file_start: int | None) -> int:
    """Where in ``buf`` to put a segment so that its file's bytes land half a page away from where they sit in
    their page-cache pages. Copying between addresses equal modulo 4 KiB ("4K aliasing") made the kernel's reads
    3-4 times slower on these machines (AMD EPYC: 0.55 s against 0.15 s of system time per GiB)."""
    if file_start is None:
        return 0
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    return (PAGE // 2 - base - file_start) % PAGE


class _Cancelled(Exception):
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


# ---------------------------------------------------------------- writing a layer


@dataclass(frozen=True)
class BuiltLayer:
    descriptor: Descriptor
    diff_id: Digest


def write_layer(
    contents: LayerContents,
    store: BlobStore,
    codec: str = "gzip",
    progress: Callable[[int], None] | None = None,
    *,
    derive: bool = False,
    workers: int | None = None,
) -> BuiltLayer:
    """Builds the layer in one pass over the files and returns its descriptor and diff_id.

    A gzip layer that would not shrink by 10 % is written as a plain tar (``compress``); its descriptor says so.
    The blob is written into the store, or, with ``derive`` (the caller promises the sources outlive the build,
    as a model does) for a layer of at least ``DERIVE_MIN`` bytes that is not zstd, recorded as a derived blob.
    A file that changes while being read is an error (the layer would not match what was hashed).
    ``progress``, if given, is called with the number of bytes done so far.
    """
    mtime = source_date_epoch()
    entries = contents.entries()
    tar = _TarStream(entries, mtime, "{path} changed while being packed; rebuild when it is stable")
    if codec == "gzip" and compress.PLAIN_WHEN_INCOMPRESSIBLE:
        windows = tar.sample(compress.window_offsets(tar.size), compress.WINDOW)
        if not compress.worth_compressing(windows):
            codec = "none"
    encoder = compress.segment_encoder(codec)
    plain = codec == "none"
    diff = hashlib.sha256()
    derived = derive and tar.size >= DERIVE_MIN and codec != "zstd"
    if progress is not None:
        progress = partial(_capped, progress, contents.total_size)
    if derived:
        out = _Output(encoder, _discard, hash_blob=not plain)
        _pump(tar, out, diff=diff, progress=progress, workers=workers)
    else:
        with store.new_blob() as blob:
            out = _Output(encoder, partial(_write_to, blob.fileno()), hash_blob=not plain)
            _pump(tar, out, diff=diff, progress=progress, workers=workers)
            blob.commit(Digest.from_hex(diff.hexdigest()) if plain else out.digest)
    diff_id = Digest.from_hex(diff.hexdigest())
    digest = diff_id if plain else out.digest
    if derived:
        recipe = {
            "kind": "layer",
            "format": LAYER_FORMAT,
            "codec": codec,
            "mtime": mtime,
            "plan": "".join(out.modes),
            "size": out.size,
            "diff_id": str(diff_id),
            "entries": [e.to_json() for e in entries],
        }
        store.put_recipe(digest, recipe)
    media_type = compress.LAYER_MEDIA_TYPE[codec]
    return BuiltLayer(Descriptor(media_type, digest, out.size), diff_id)


def _capped(progress: Callable[[int], None], total: int, done: int) -> None:
    progress(min(done, total))  # tar bytes include headers; callers count content bytes


def _discard(pieces: list, release: Release) -> None:
    release()


def _write_to(fd: int, pieces: list, release: Release) -> None:
    write_all(fd, pieces)
    release()


# ---------------------------------------------------------------- derived blobs: reading them back


def recipe_valid(doc: dict, check_sources: bool = True) -> bool:
    """Whether a derived blob's recipe can still produce its bytes: same encoding, every source unchanged."""
    try:
        if doc.get("kind") != "layer" or doc.get("format") != LAYER_FORMAT:
            return False
        for e in doc["entries"] if check_sources else ():
            entry = Entry.from_json(e)
            if entry.kind == "file" and (
                entry.ident is None or _ident(os.lstat(entry.source)) != entry.ident
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
        self._tar = _TarStream(entries, self._mtime, changed)
        if len(self._plan) != -(-self._tar.size // SEGMENT):
            raise FormatError(
                f"{what} {digest.short}: its recipe in the cache does not fit its files; build again"
            )
        self._queue: queue.Queue = queue.Queue()
        self._cancel = threading.Event()
        self._out = _Output(compress.segment_encoder(self._codec), self._deliver)
        self._thread = threading.Thread(target=self._run, name="ocibuild-derive", daemon=True)
        self._started = False
        self._finished = False
        self._pending: list = []  # the unread rest of the current segment, for read()
        self._segments: Iterator[list] | None = None
        self._release: Release = _nothing
        self.closed = False

    # the producer side, in a background thread
    def _deliver(self, pieces: list, release: Release) -> None:
        self._queue.put((pieces, release))

    def _run(self) -> None:
        try:
            _pump(self._tar, self._out, plan=self._plan, cancel=self._cancel)
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
            self._release = _nothing
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
