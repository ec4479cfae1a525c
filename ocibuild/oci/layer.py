"""Deterministic layers: a set of files → one tar blob, in one streaming pass.

This is ocibuild's reproducibility unit (as Jib's ``ReproducibleLayerBuilder``): entries sorted with parents
before children, owner 0:0 with empty names, modes normalised (0755 for directories and executables, 0644
otherwise), one fixed mtime (``SOURCE_DATE_EPOCH`` or 0), PAX format. The same inputs give the same bytes on any
machine and from any checkout path. The tar stream is hashed (the diff_id), compressed and hashed again (the blob
digest) as it is written, so file contents are read once and never held in memory.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import InputError
from . import compress
from .descriptor import Descriptor
from .digest import CHUNK, Digest, HashingWriter
from .store import BlobStore

BLOCK = 512


def source_date_epoch() -> int:
    """The fixed timestamp for every file and document: ``SOURCE_DATE_EPOCH`` (reproducible-builds.org) or 0."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "0")
    try:
        return max(0, int(value))
    except ValueError:
        raise InputError(
            f"SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds; unset it or fix it"
        ) from None


@dataclass(frozen=True)
class Entry:
    """One entry of a layer: ``path`` is relative to the image root, POSIX, no leading slash."""

    path: str
    kind: str  # "file", "dir" or "symlink"
    source: Path | None = None  # host file, for kind == "file"
    executable: bool = False
    target: str = ""  # for kind == "symlink"
    size: int = 0


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
            self._put(Entry(dest, "file", Path(source), bool(st.st_mode & 0o111), size=st.st_size))
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


class _Pipeline:
    """tar bytes → diff_id hash → compressor → blob hash → store file."""

    def __init__(self, blob_out: HashingWriter, codec: str):
        self.diff = HashingWriter()
        self._compressor = compress.compressor(codec)
        self._out = blob_out

    def write(self, data) -> None:
        self.diff.write(data)
        packed = self._compressor.compress(data)
        if packed:
            self._out.write(packed)

    def close(self) -> None:
        self._out.write(self._compressor.flush())


@dataclass(frozen=True)
class BuiltLayer:
    descriptor: Descriptor
    diff_id: Digest


def write_layer(contents: LayerContents, store: BlobStore, codec: str = "gzip", progress=None) -> BuiltLayer:
    """Writes the layer into the store and returns its descriptor and diff_id.

    A file that changes size while being read is an error (the layer would not match what was hashed).
    ``progress``, if given, is called with the number of content bytes written so far.
    """
    mtime = source_date_epoch()
    done = 0
    with store.writer() as out:
        pipe = _Pipeline(out, codec)
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        for entry in contents.entries():
            pipe.write(_header(entry, mtime))
            if entry.kind != "file":
                continue
            remaining = entry.size
            try:
                with open(entry.source, "rb") as f:
                    while remaining:
                        n = f.readinto(view[: min(CHUNK, remaining)])
                        if not n:
                            break
                        pipe.write(view[:n])
                        remaining -= n
                        done += n
                        if progress:
                            progress(done)
                    if remaining or f.read(1):
                        raise InputError(
                            f"{entry.source} changed size while being packed; rebuild when it is stable"
                        )
            except OSError as e:
                raise InputError(f"{entry.source}: {e.strerror}") from None
            if pad := -entry.size % BLOCK:
                pipe.write(bytes(pad))
        pipe.write(bytes(2 * BLOCK))
        pipe.close()
    media_type = compress.LAYER_MEDIA_TYPE[codec]
    return BuiltLayer(Descriptor(media_type, out.digest, out.size), pipe.diff.digest)
