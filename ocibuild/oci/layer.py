"""Deterministic layers: a set of files → one tar blob, in one streaming pass over the files, on every core.

This is ocibuild's reproducibility unit (as Jib's ``ReproducibleLayerBuilder``): entries sorted with parents
before children, owner 0:0 with empty names, modes normalised (0755 for directories and executables, 0644
otherwise), one fixed mtime (``SOURCE_DATE_EPOCH`` or 0), PAX format. The same inputs give the same bytes on any
machine and from any checkout path.

The pieces: ``tarstream`` (the tar, read from the files), ``pipeline`` (segments encoded on every core),
``derived`` (a big model layer kept as a recipe instead of a copy).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Protocol

from ..errors import InputError
from . import compress
from .descriptor import Descriptor
from .digest import Digest, sha256_file
from .image import Layer, StoreSource
from .pipeline import LAYER_FORMAT, Output, Release, pump
from .store import BlobStore, write_all
from .tarstream import Entry, TarStream, file_ident

# Layers at least this big, whose sources outlive the build (``derive=True``), become derived blobs.
DERIVE_MIN = 64 << 20


class BlobSink(Protocol):
    """An output that takes a derived layer's bytes as the build makes them (``oci.archive.StagedArchive``,
    ``oci.layout.StagedLayout``, ``oci.store.Spool``): the cache keeps only the layer's recipe, so without a sink
    the output would read the model's files a second time to write them."""

    def begin(self, min_size: int, max_size: int) -> int | None:
        """A file descriptor to append the blob to (between ``min_size`` and ``max_size`` bytes), or None: this
        sink cannot take it (it holds one blob)."""
        ...

    def commit(self, desc: Descriptor) -> None:
        """The bytes appended since ``begin`` are the blob ``desc``."""
        ...

    def error(self, e: OSError) -> Exception:
        """What to raise when appending to it failed (a full disk: one line naming the output)."""
        ...


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
                Entry(dest, "file", absolute, bool(st.st_mode & 0o111), size=st.st_size, ident=file_ident(st))
            )
        elif stat.S_ISDIR(st.st_mode):
            self.add_tree(source, dest)
        else:
            raise InputError(f"{source}: not a regular file, directory or symlink; remove it from the inputs")

    def add_tree(
        self,
        source: Path,
        dest: str,
        exclude: Iterable[str] = ("__pycache__", ".git"),
        bytecode: bool = False,
    ) -> None:
        """A directory and everything under it (symlinks kept as links, not followed). Bytecode is left out
        unless ``bytecode``: then ``__pycache__`` folders come along (other ``.pyc`` files never do)."""
        dest = _image_path(dest)
        skip = set(exclude) - ({"__pycache__"} if bytecode else set())
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
                if name.endswith(".pyc") and not (bytecode and os.path.basename(root) == "__pycache__"):
                    continue
                self.add_file(Path(root, name), f"{base}/{name}")

    def add_dir(self, dest: str) -> None:
        self._put(Entry(_image_path(dest), "dir"))

    def add_entry(self, entry: Entry) -> None:
        """An entry of another ``LayerContents`` (a layer split in several)."""
        self._put(entry)

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


def cache_key(contents: LayerContents, codec: str, *, mtime: int, tool: str) -> str:
    """A key for the layer these contents make, from the inputs alone (no file is read): every entry with its
    source's absolute path and identity (size, mtime_ns, inode, device), the codec, the entries' ``mtime``, the
    encoding settings and library versions, and the version of the ``tool`` that builds it. Any edit to a file
    changes its mtime or size."""
    doc = {
        "format": LAYER_FORMAT,
        "ocibuild": tool,
        "codec": codec,
        "mtime": mtime,
        "entries": [e.to_json() for e in contents.entries()],
    }
    return "layer-" + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def content_key(
    contents: LayerContents, codec: str, *, mtime: int, tool: str, store: BlobStore, remember: bool = True
) -> str:
    """A key that means the same on every machine (for a cache that a fleet shares): like ``cache_key``, but each
    file by its content's sha256 instead of its identity here. A big file's digest is remembered in ``store`` under
    its identity, so only the first build on a machine reads the files for it (``remember=False`` for files that
    will not be seen again, such as a fresh install's)."""
    entries = []
    for e in contents.entries():
        digest = _content_digest(e, store if remember else None) if e.kind == "file" else None
        entries.append([e.path, e.kind, e.executable, e.target, e.size, digest])
    doc = {"format": LAYER_FORMAT, "ocibuild": tool, "codec": codec, "mtime": mtime, "entries": entries}
    return "layer-" + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


REMEMBER_DIGEST_MIN = 1 << 20  # smaller files are hashed again: quicker than a record's read


def _content_digest(entry: Entry, store: BlobStore | None) -> str:
    assert entry.source is not None
    memo = "filedigest-" + hashlib.sha256(json.dumps([str(entry.source), entry.ident]).encode()).hexdigest()
    if entry.size < REMEMBER_DIGEST_MIN:
        store = None
    if store is not None and (doc := store.get_ref(memo)) and isinstance(doc.get("sha256"), str):
        return doc["sha256"]
    try:
        digest, _ = sha256_file(entry.source)
        if file_ident(os.stat(entry.source)) != entry.ident:  # written to (or replaced) since it was listed
            raise InputError(
                f"{entry.source} changed while it was being read; build again once it is written"
            )
    except OSError as e:
        raise InputError(f"{entry.source}: {e.strerror}") from None
    if store is not None:
        store.put_ref(memo, {"sha256": digest.hex})
    return digest.hex


def _lstat(path: Path) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}") from None


def _walk_error(e: OSError) -> None:
    raise InputError(f"{e.filename}: {e.strerror}")


# ---------------------------------------------------------------- writing a layer


def write_layer(
    contents: LayerContents,
    store: BlobStore,
    codec: str = "gzip",
    progress: Callable[[int], None] | None = None,
    *,
    mtime: int = 0,
    derive: bool = False,
    workers: int | None = None,
    sinks: Sequence[BlobSink] = (),
) -> Layer:
    """Builds the layer in one pass over the files and returns it (its blob in ``store``). Every entry's time is
    ``mtime`` (the build's ``SOURCE_DATE_EPOCH``).

    A gzip layer that would not shrink by 10 % is written as a plain tar (``compress``); its descriptor says so.
    The blob is written into the store, or, with ``derive`` (the caller promises the sources outlive the build,
    as a model does) for a layer of at least ``DERIVE_MIN`` bytes that is not zstd, recorded as a derived blob.
    A file that changes while being read is an error (the layer would not match what was hashed).
    ``progress``, if given, is called with the number of bytes done so far. ``sinks``: as for
    ``write_layer_with_file_digests``.
    """
    layer, _ = _write_layer(contents, store, codec, progress, mtime, derive, workers, hash_files=False, sinks=sinks)
    return layer


@dataclass(frozen=True)
class FileDigest:
    """One regular file of a layer, as an SBOM lists it."""

    path: str  # inside the layer, as in the tar (no leading "/")
    size: int
    sha256: str  # lowercase hex


def write_layer_with_file_digests(
    contents: LayerContents,
    store: BlobStore,
    codec: str = "gzip",
    progress: Callable[[int], None] | None = None,
    *,
    mtime: int = 0,
    derive: bool = False,
    workers: int | None = None,
    sinks: Sequence[BlobSink] = (),
) -> tuple[Layer, tuple[FileDigest, ...]]:
    """``write_layer``, and the sha256 of every regular file in tar order, from the same single read of the files
    (a model's files are too big to read twice). The layer is the same, byte for byte. Each file is hashed in the
    pipeline's writer thread, beside the reader's hash of the whole tar. ``LayerContents`` has no hard-link
    entries: a file linked twice on the host is two regular files here, each listed with its digest.
    ``sinks``: where a derived layer's bytes go as they are made (this build's outputs), so that writing them does
    not read the files again."""
    return _write_layer(contents, store, codec, progress, mtime, derive, workers, hash_files=True, sinks=sinks)


class _FileHasher:
    """Splits the raw tar stream, fed segment by segment in order, back into its files and hashes each one."""

    def __init__(self, files: list[tuple[int, Entry]]):
        self._files = files  # (offset of the data in the stream, entry), in stream order
        self._offset = 0  # of the next segment
        self._hash = hashlib.sha256()
        self.digests: list[FileDigest] = []

    def update(self, view: memoryview) -> None:
        end = self._offset + len(view)
        while len(self.digests) < len(self._files):
            start, entry = self._files[len(self.digests)]
            stop = start + entry.size
            if start >= end:
                break  # starts in a later segment (the tar's end blocks always follow the last file)
            lo, hi = max(start, self._offset), min(stop, end)
            if hi > lo:
                self._hash.update(view[lo - self._offset : hi - self._offset])
            if stop > end:
                break  # goes on in the next segment
            self.digests.append(FileDigest(entry.path, entry.size, self._hash.hexdigest()))
            self._hash = hashlib.sha256()
        self._offset = end

    def result(self) -> tuple[FileDigest, ...]:
        if len(self.digests) != len(self._files):
            raise RuntimeError(f"{len(self._files) - len(self.digests)} files of the layer were not hashed")
        return tuple(self.digests)


def _write_layer(
    contents: LayerContents,
    store: BlobStore,
    codec: str,
    progress: Callable[[int], None] | None,
    mtime: int,
    derive: bool,
    workers: int | None,
    *,
    hash_files: bool,
    sinks: Sequence[BlobSink] = (),
) -> tuple[Layer, tuple[FileDigest, ...]]:
    entries = contents.entries()
    tar = TarStream(entries, mtime, "{path} changed while being packed; rebuild when it is stable")
    if codec == "gzip" and compress.PLAIN_WHEN_INCOMPRESSIBLE:
        windows = tar.sample(compress.window_offsets(tar.size), compress.WINDOW)
        if not compress.worth_compressing(windows):
            codec = "none"
    encoder = compress.segment_encoder(codec)
    plain = codec == "none"
    diff = hashlib.sha256()
    files = _FileHasher(tar.file_data()) if hash_files else None
    on_segment = files.update if files is not None else None
    derived = derive and tar.size >= DERIVE_MIN and codec != "zstd"
    if progress is not None:
        progress = partial(_capped, progress, contents.total_size)
    staged = [(sink, fd) for sink in sinks if (fd := sink.begin(*_size_bounds(tar.size, plain))) is not None] if derived else []
    if derived:
        out = Output(encoder, partial(_write_to_sinks, staged) if staged else _discard, hash_blob=not plain)
        pump(tar, out, diff=diff, progress=progress, workers=workers, on_segment=on_segment)
    else:
        with store.new_blob() as blob:
            out = Output(encoder, partial(_write_to, blob.fileno()), hash_blob=not plain)
            pump(tar, out, diff=diff, progress=progress, workers=workers, on_segment=on_segment)
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
    layer = Layer(Descriptor(media_type, digest, out.size), diff_id, StoreSource(store))
    for sink, _ in staged:
        sink.commit(layer.descriptor)
    return layer, files.result() if files is not None else ()


def _size_bounds(tar_size: int, plain: bool) -> tuple[int, int]:
    """Bounds on the blob's size: a plain tar is its size; gzip shrinks at most 1032 to 1 (deflate's limit) and
    grows incompressible segments by their stored blocks' and members' headers (5 bytes per 64 KiB block, 18 per
    4 MiB member)."""
    if plain:
        return tar_size, tar_size
    return tar_size // 1100, tar_size + tar_size // 1000 + (1 << 20)


def _capped(progress: Callable[[int], None], total: int, done: int) -> None:
    progress(min(done, total))  # tar bytes include headers; callers count content bytes


def _discard(pieces: list, release: Release) -> None:
    release()


def _write_to(fd: int, pieces: list, release: Release) -> None:
    write_all(fd, pieces)
    release()


def _write_to_sinks(staged: list[tuple[BlobSink, int]], pieces: list, release: Release) -> None:
    for sink, fd in staged:
        try:
            write_all(fd, pieces)
        except OSError as e:
            raise sink.error(e) from None
    release()
