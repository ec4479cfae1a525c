"""A layer's uncompressed tar as a sequential stream, built from host files without copying them anywhere.

Headers and padding come from memory, contents straight from the files. The stream checks each file is still the
one that was added (size, mtime, inode, device) when it opens it and when it has read it, so a layer can never
hold bytes other than those its recipe names.
"""

from __future__ import annotations

import bisect
import io
import itertools
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

BLOCK = 512

# A host file's (size, mtime_ns, inode, device): the file has not changed while it is the same.
Ident = tuple[int, int, int, int]


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


def file_ident(st: os.stat_result) -> Ident:
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def tar_header(entry: Entry, mtime: int) -> bytes:
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


class TarStream:
    """The layer's uncompressed tar, read sequentially: headers and padding from memory, contents from the files.

    A file must still be the one that was added (same size, mtime, inode, device) when it is opened and when it
    has been read to its end; otherwise ``changed`` (a message with ``{path}``) is raised as an InputError.
    """

    def __init__(self, entries: list[Entry], mtime: int, changed: str):
        self._spans: list[bytes | Entry] = []
        pending = bytearray()
        for e in entries:
            pending += tar_header(e, mtime)
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
        self._f: io.FileIO | None = None

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
                    got = self._f.readinto(view[n : n + k]) or 0
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

    def _open(self, e: Entry) -> io.FileIO:
        assert e.source is not None  # files have a source
        try:
            f = open(e.source, "rb", buffering=0)
        except OSError as err:
            raise InputError(f"{e.source}: {err.strerror}") from None
        if e.ident is not None and file_ident(os.fstat(f.fileno())) != e.ident:
            f.close()
            raise InputError(self._changed.format(path=e.source))
        return f

    def _finish(self, e: Entry) -> None:
        f, self._f = self._f, None
        assert f is not None
        try:
            grew = f.read(1)
            now = file_ident(os.fstat(f.fileno()))
        finally:
            f.close()
        if grew or (e.ident is not None and now != e.ident):
            raise InputError(self._changed.format(path=e.source))

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def file_data(self) -> list[tuple[int, Entry]]:
        """Each regular file with the offset of its data in the stream, in tar order (its size is the entry's):
        what a reader of the stream needs to split it back into files without knowing the tar layout."""
        return [(self._starts[i], span) for i, span in enumerate(self._spans) if isinstance(span, Entry)]

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
                assert span.source is not None
                if span.source not in files:
                    files[span.source] = os.open(span.source, os.O_RDONLY)
                data = os.pread(files[span.source], k, within)
                parts.append(data + bytes(k - len(data)))  # a file that shrank: the main pass will say so
            offset, n, i = offset + k, n - k, i + 1
        return b"".join(parts)


def _span_size(span: bytes | Entry) -> int:
    return len(span) if isinstance(span, bytes) else span.size
