"""The local content-addressed blob store (the build cache).

Layout: ``ROOT/blobs/sha256/<hex>`` for blobs, ``ROOT/derived/<hex>.json`` for derived blobs and
``ROOT/refs/<key>.json`` for small named records (e.g. which layer a set of inputs produced). Writes go to a unique
temp file in ``ROOT/tmp`` and are renamed into place only once complete and hashed, so a killed build never leaves
a partial or wrong entry, and concurrent builds sharing a store only ever race to rename identical content.

A *derived* blob is not kept as bytes: its recipe names the host files it is made from (with their size, mtime,
inode and device) and how (``oci.layer``); it exists only while those files are unchanged, and its bytes are
produced again, and verified against its digest, each time it is read. Big model layers are derived blobs, so the
cache does not hold a second copy of every model.

Trust: a stored blob was hashed as it was written and renamed to its digest only then, in a directory that only
its owner writes, so reading it back checks its size, not its hash (exporting a 4 GB layer would otherwise pay a
second sha256 pass). Everything that comes from elsewhere (layouts, archives, registries, and the host files of
derived blobs) is verified against its digest as it is read.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import DigestMismatchError, FormatError, OutputError
from .digest import CHUNK, Digest, HashingWriter, Stream, copy_verified
from .tempfiles import locked_temp, sweep

if TYPE_CHECKING:
    from .descriptor import Descriptor


class Records(Protocol):
    """Small named JSON records (``BlobStore`` keeps them; a shared cache may keep them too)."""

    def get_ref(self, key: str) -> dict | None: ...

    def put_ref(self, key: str, doc: dict) -> None: ...


class BlobStore:
    """The cache folder ``root`` (the caller decides where: ``settings.Settings.cache_dir`` by default)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self._blobs = self.root / "blobs" / "sha256"
        self._tmp = self.root / "tmp"
        self._refs = self.root / "refs"
        self._derived = self.root / "derived"
        try:
            for d in (self._blobs, self._tmp, self._refs, self._derived):
                d.mkdir(parents=True, exist_ok=True)
            # Held shared while this store is open: ``cache prune`` knows whether a build may be using the cache.
            self._lock_fd = os.open(self.root / "lock", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise OutputError(
                f"cache directory {self.root}: {e.strerror}; set OCIBUILD_CACHE to a writable directory"
            ) from None
        fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
        sweep(self._tmp, "*")  # what builds killed mid-write left

    def close(self) -> None:
        """Let go of the cache (a store is also let go of when it is collected, or the process ends)."""
        fd, self._lock_fd = getattr(self, "_lock_fd", -1), -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        with suppress(OSError):
            self.close()

    def try_exclusive(self) -> bool:
        """Make this store's hold exclusive if no other process has the cache open (no build is running); it
        stays so until the store is closed. A build that starts meanwhile waits for it."""
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def blob_paths(self) -> Iterator[Path]:
        """The stored blobs' files (a derived blob has none)."""
        with suppress(FileNotFoundError):
            yield from (p for p in self._blobs.iterdir() if len(p.name) == 64)

    def refs(self) -> Iterator[tuple[str, dict]]:
        """Every named record, with its document."""
        for path in sorted(self._refs.glob("*.json")):
            if (doc := self.get_ref(path.stem)) is not None:
                yield path.stem, doc

    def remove_ref(self, key: str) -> None:
        with suppress(FileNotFoundError):
            (self._refs / f"{key}.json").unlink()

    def last_used(self, digest: Digest) -> float | None:
        """When the blob was last found or read (``touch``), if the cache holds it, stored or derived."""
        for path in (self.path(digest), self._derived / f"{digest.hex}.json"):
            with suppress(FileNotFoundError):
                return path.stat().st_mtime
        return None

    def derived_digests(self) -> list[Digest]:
        return [Digest("sha256:" + p.stem) for p in self._derived.glob("*.json") if len(p.stem) == 64]

    def remove_blob(self, digest: Digest) -> None:
        """Forget a stored blob (``cache prune``); a reader that has it open reads on."""
        with suppress(FileNotFoundError):
            self.path(digest).unlink()

    def remove_recipe(self, digest: Digest) -> None:
        with suppress(FileNotFoundError):
            (self._derived / f"{digest.hex}.json").unlink()

    def _raise_if_full(self, e: BaseException) -> None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise self.full_error(e) from None

    def full_error(self, e: OSError) -> OutputError:
        return OutputError(
            f"cache {self.root}: {e.strerror}; free space there or point --cache / OCIBUILD_CACHE elsewhere"
        )

    def path(self, digest: Digest) -> Path:
        """Where a stored blob's bytes are (a derived blob has none)."""
        return self._blobs / digest.hex

    def is_stored(self, digest: Digest) -> bool:
        return self.path(digest).is_file()

    def has(self, digest: Digest) -> bool:
        """Whether the cache holds the blob: stored, or derived (then reading it says if its sources changed)."""
        return self.is_stored(digest) or self.recipe(digest, usable=False) is not None

    def can_produce(self, digest: Digest) -> bool:
        """Whether the blob can be read back: stored, or derived from sources that have not changed."""
        return self.is_stored(digest) or self.recipe(digest) is not None

    def open(self, digest: Digest, size: int | None = None):
        """A reader of the blob: a stored one's size is checked, a derived one is produced again and verified."""
        try:
            blob = StoredBlob(self.path(digest), digest, size)
        except FileNotFoundError:
            pass
        else:
            self.touch(digest)
            return blob
        doc = self.recipe(digest, usable=False)
        if doc is None:
            raise FormatError(f"blob {digest.short} is not in the cache {self.root}; build again")
        from .derived import open_derived  # layers build on the store; the store only reads their recipes

        return open_derived(doc, digest, size, what="layer")

    def touch(self, digest: Digest) -> None:
        """Mark the blob used now (its file's mtime): ``cache prune`` removes the least recently used first."""
        for path in (self.path(digest), self._derived / f"{digest.hex}.json"):
            with suppress(OSError):
                os.utime(path)

    @contextmanager
    def new_blob(self) -> Iterator[NewBlob]:
        """A temp file for a blob whose digest the caller computes while writing; ``commit(digest)`` names it."""
        fd, tmp = locked_temp(self._tmp, "blob-")
        blob = NewBlob(fd, self, tmp)
        try:
            yield blob
            if not blob.committed:
                raise RuntimeError("blob written but not committed")
        except BaseException as e:
            _unlink(tmp)
            self._raise_if_full(e)
            raise
        finally:
            os.close(fd)

    # Derived blobs: recipes of oci.layer, valid while their sources are unchanged.
    def put_recipe(self, digest: Digest, doc: dict) -> None:
        self._put_json(self._derived / f"{digest.hex}.json", doc)

    def recipe(self, digest: Digest, usable: bool = True) -> dict | None:
        """The recipe of a derived blob, if there is one of this version of ocibuild, and (``usable``) its
        sources are unchanged, so it can still produce the blob."""
        try:
            doc = json.loads((self._derived / f"{digest.hex}.json").read_text())
        except (OSError, ValueError):
            return None
        from .derived import recipe_valid

        return doc if isinstance(doc, dict) and recipe_valid(doc, check_sources=usable) else None

    @contextmanager
    def writer(self) -> Iterator[HashingWriter]:
        """Yields a hashing writer; on clean exit the content is renamed to its digest (``writer.digest``)."""
        fd, tmp = locked_temp(self._tmp, "blob-")
        try:
            with os.fdopen(fd, "wb", buffering=CHUNK) as f:
                w = HashingWriter(f)
                yield w
                f.flush()
                os.chmod(tmp, 0o644)
                os.replace(tmp, self.path(w.digest))  # while still locked: no sweep can take it first
        except BaseException as e:
            _unlink(tmp)
            self._raise_if_full(e)
            raise

    def put_bytes(self, data: bytes) -> Digest:
        digest = Digest.of(data)
        if not self.has(digest):
            with self.writer() as w:
                w.write(data)
        return digest

    def ingest(self, source: Stream, digest: Digest, size: int | None, what: str) -> None:
        """Copy a stream into the store, verifying it; nothing enters the store unless it verifies. A derived blob
        whose sources changed since (a registered model's file edited after ``model push``) is stored over."""
        if self.can_produce(digest):
            return
        fd, tmp = locked_temp(self._tmp, "blob-")
        try:
            with os.fdopen(fd, "wb", buffering=CHUNK) as f:
                copy_verified(source, f, digest, size, what)
                f.flush()
                os.chmod(tmp, 0o644)
                os.replace(tmp, self.path(digest))
        except BaseException as e:
            _unlink(tmp)
            self._raise_if_full(e)
            raise

    # Named records: small JSON documents keyed by a hash of build inputs.
    def get_ref(self, key: str) -> dict | None:
        try:
            return json.loads((self._refs / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None

    def put_ref(self, key: str, doc: dict) -> None:
        self._put_json(self._refs / f"{key}.json", doc)

    def _put_json(self, path: Path, doc: dict) -> None:
        fd, tmp = locked_temp(self._tmp, "ref-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, sort_keys=True)
                f.flush()
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
        except BaseException as e:
            _unlink(tmp)
            self._raise_if_full(e)
            raise


class Spool:
    """A derived layer's bytes kept as a stored blob while one build publishes (an ``oci.layer.BlobSink``), so that
    a push sends it, if the registry lacks it, without reading the model's files again; asking the registry first
    (``registry.push``) still keeps a push from re-sending what is there. ``discard`` then leaves the recipe only,
    as a derived blob is kept (``BlobStore.open`` prefers the stored bytes while they are there)."""

    def __init__(self, store: BlobStore):
        self.store = store
        self._open: ExitStack | None = None
        self._blob: NewBlob | None = None
        self._spooled: list[Digest] = []

    def begin(self, min_size: int, max_size: int) -> int | None:
        if self._open is not None or self._spooled:
            return None  # one blob
        self._open = ExitStack()
        self._blob = self._open.enter_context(self.store.new_blob())
        return self._blob.fileno()

    def commit(self, desc: Descriptor) -> None:
        assert self._open is not None and self._blob is not None
        self._blob.commit(desc.digest)
        self._open.close()
        self._open = None
        self._spooled.append(desc.digest)

    def error(self, e: OSError) -> Exception:
        return self.store.full_error(e) if e.errno in (errno.ENOSPC, errno.EDQUOT) else e

    def discard(self) -> None:
        """Remove the spooled bytes (and an unfinished temp file) where a recipe can produce them again."""
        if self._open is not None:
            self._open.__exit__(RuntimeError, RuntimeError("the build stopped"), None)
            self._open = None
        for digest in self._spooled:
            if self.store.recipe(digest, usable=False) is not None:
                self.store.remove_blob(digest)
        self._spooled = []


class NewBlob:
    """An open temp file in the store; ``commit(digest)`` renames it to the digest its writer computed."""

    def __init__(self, fd: int, store: BlobStore, tmp: str):
        self._fd = fd
        self._store = store
        self._tmp = tmp
        self.committed = False

    def fileno(self) -> int:
        return self._fd

    def commit(self, digest: Digest) -> None:
        os.fchmod(self._fd, 0o644)
        os.replace(self._tmp, self._store.path(digest))
        self.committed = True


class StoredBlob(io.RawIOBase):
    """A stored blob, read as is: its size is checked at the end (see "Trust" above), not its hash.

    ``fileno()`` lets writers copy it in the kernel (``copy_file_range``) instead of through Python.
    """

    def __init__(self, path: Path, digest: Digest, size: int | None):
        self._f = open(path, "rb", buffering=0)  # FileNotFoundError if it is not stored
        self.digest = digest
        self.size = os.fstat(self._f.fileno()).st_size
        if size is not None and size != self.size:
            self._f.close()
            raise DigestMismatchError(
                f"cached blob {digest.short}: {self.size} bytes, its descriptor declares {size}; "
                f"delete {path} and build again"
            )
        self._read = 0

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._f.fileno()

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def read(self, n: int = -1) -> bytes:
        left = self.size - self._read
        if n is None or n < 0 or n > left:
            n = left
        data = self._f.read(n) if n else b""
        self._read += len(data)
        if not data and self._read != self.size:
            raise DigestMismatchError(
                f"cached blob {self.digest.short} was truncated while being read; build again"
            )
        return data

    def close(self) -> None:
        self._f.close()
        super().close()


def write_all(fd: int, pieces: list) -> None:
    """Write buffers to a file descriptor in order, completely, in as few system calls as the kernel allows."""
    views = [memoryview(p).cast("B") for p in pieces if len(p)]
    while views:
        n = os.writev(fd, views[:1024])
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if n:
            views[0] = views[0][n:]


def _unlink(path: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)
