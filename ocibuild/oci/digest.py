"""Content digests: the ``Digest`` type and hashing while streaming.

Every blob ocibuild reads is named by a digest and must hash to it; this module is the one place that checks.
It never opens a network connection and never holds a whole blob in memory.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, BinaryIO, Protocol

from ..errors import DigestMismatchError


class Stream(Protocol):
    """What a blob is read through: ``read`` until it returns ``b""``, then ``close`` (or a ``with`` block). A
    file, a ``VerifyingReader``, a layer being produced again: anything with these four methods."""

    def read(self, n: int = -1, /) -> bytes: ...

    def close(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, exc_type: Any, exc: Any, tb: Any, /) -> Any: ...


_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}")  # always fullmatch: "$" would accept a trailing newline
CHUNK = 1 << 20


class Digest(str):
    """A validated ``sha256:<64 hex>`` string. Only sha256 is accepted (the only one registries and Docker use)."""

    __slots__ = ()

    def __new__(cls, value: str) -> Digest:
        if not isinstance(value, str) or not _DIGEST_RE.fullmatch(value):
            raise ValueError(f"not a sha256 digest: {value!r:.80}")
        return super().__new__(cls, value)

    @property
    def hex(self) -> str:
        return self[7:]

    @property
    def short(self) -> str:
        return self[7:19]

    @classmethod
    def from_hex(cls, hexdigest: str) -> Digest:
        return cls("sha256:" + hexdigest)

    @classmethod
    def of(cls, data: bytes) -> Digest:
        return cls.from_hex(hashlib.sha256(data).hexdigest())


def is_digest(value: object) -> bool:
    return isinstance(value, str) and _DIGEST_RE.fullmatch(value) is not None


def sha256_file(path, chunk: int = CHUNK) -> tuple[Digest, int]:
    """Digest and size of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        buf = bytearray(chunk)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return Digest.from_hex(h.hexdigest()), size


class HashingWriter:
    """Write-through wrapper that hashes and counts what passes. ``target`` may be None (hash only)."""

    def __init__(self, target: BinaryIO | None = None):
        self._target = target
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self._hash.update(data)
        n = len(data)
        self.size += n
        if self._target is not None:
            self._target.write(data)
        return n

    def flush(self) -> None:
        if self._target is not None:
            self._target.flush()

    @property
    def digest(self) -> Digest:
        return Digest.from_hex(self._hash.hexdigest())


class VerifyingReader:
    """Read-through wrapper that raises ``DigestMismatchError`` at end of stream unless the bytes hash to
    ``expected`` (and, when given, number exactly ``size``). ``what`` names the blob in the error message.

    Reading past ``size`` is refused too, so a hostile source cannot make us read forever.
    """

    def __init__(self, source: Stream, expected: Digest, size: int | None = None, what: str = "blob"):
        self._source = source
        self._expected = expected
        self._size = size
        self._what = what
        self._hash = hashlib.sha256()
        self._read = 0
        self._done = False

    def read(self, n: int = -1) -> bytes:
        if self._done:
            return b""
        if self._size is not None:
            left = self._size - self._read
            n = left + 1 if n is None or n < 0 else min(n, left + 1)
            if n == 0:
                n = 1
        data = self._source.read(n) if n is not None else self._source.read()
        if data:
            self._hash.update(data)
            self._read += len(data)
            if self._size is not None and self._read > self._size:
                raise DigestMismatchError(
                    f"{self._what} {self._expected.short}: more than the {self._size} bytes its descriptor "
                    "declares; the source is corrupt, fetch it again"
                )
            return data
        self._done = True
        self.verify()
        return b""

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def verify(self) -> None:
        got = Digest.from_hex(self._hash.hexdigest())
        if self._size is not None and self._read != self._size:
            raise DigestMismatchError(
                f"{self._what} {self._expected.short}: got {self._read} bytes, its descriptor declares "
                f"{self._size}; the source is truncated or corrupt, fetch it again"
            )
        if got != self._expected:
            raise DigestMismatchError(
                f"{self._what} {self._expected.short}: content hashes to {got.short}, not to its digest; "
                "the source is corrupt or was altered, fetch it again"
            )

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._source.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_all(stream: Stream) -> bytes:
    """Everything left in ``stream`` (for small documents only: manifests, configs, index files)."""
    parts = []
    while data := stream.read(CHUNK):
        parts.append(data)
    return b"".join(parts)


def copy_verified(source: Stream, target: BinaryIO, expected: Digest, size: int | None, what: str) -> int:
    """Copy ``source`` into ``target`` in chunks, verifying digest and size; returns bytes copied."""
    reader = VerifyingReader(source, expected, size, what)
    total = 0
    while data := reader.read(CHUNK):
        target.write(data)
        total += len(data)
    return total
