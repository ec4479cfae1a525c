"""The local content-addressed blob store (the build cache).

Layout: ``ROOT/blobs/sha256/<hex>`` for blobs and ``ROOT/refs/<key>.json`` for small named records (e.g. which
layer a set of inputs produced). Writes go to a unique temp file in ``ROOT/tmp`` and are renamed into place only
once complete and hashed, so a killed build never leaves a partial or wrong entry, and concurrent builds sharing a
store only ever race to rename identical content. Every read is verified against the digest.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from ..errors import OutputError
from .digest import CHUNK, Digest, HashingWriter, VerifyingReader, copy_verified


def default_root() -> Path:
    if env := os.environ.get("OCIBUILD_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ocibuild"


class BlobStore:
    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else default_root()
        self._blobs = self.root / "blobs" / "sha256"
        self._tmp = self.root / "tmp"
        self._refs = self.root / "refs"
        try:
            for d in (self._blobs, self._tmp, self._refs):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(
                f"cache directory {self.root}: {e.strerror}; set OCIBUILD_CACHE to a writable directory"
            ) from None

    def path(self, digest: Digest) -> Path:
        return self._blobs / digest.hex

    def has(self, digest: Digest) -> bool:
        return self.path(digest).is_file()

    def open(self, digest: Digest, size: int | None = None) -> VerifyingReader:
        """A reader that raises ``DigestMismatchError`` at the end unless the content matches ``digest``."""
        return VerifyingReader(open(self.path(digest), "rb"), digest, size, what="cached blob")

    @contextmanager
    def writer(self) -> Iterator[HashingWriter]:
        """Yields a hashing writer; on clean exit the content is renamed to its digest (``writer.digest``)."""
        fd, tmp = tempfile.mkstemp(dir=self._tmp, prefix="blob-")
        try:
            with os.fdopen(fd, "wb", buffering=CHUNK) as f:
                w = HashingWriter(f)
                yield w
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path(w.digest))
        except BaseException:
            _unlink(tmp)
            raise

    def put_bytes(self, data: bytes) -> Digest:
        digest = Digest.of(data)
        if not self.has(digest):
            with self.writer() as w:
                w.write(data)
        return digest

    def ingest(self, source: BinaryIO, digest: Digest, size: int | None, what: str) -> None:
        """Copy a stream into the store, verifying it; nothing enters the store unless it verifies."""
        if self.has(digest):
            return
        fd, tmp = tempfile.mkstemp(dir=self._tmp, prefix="blob-")
        try:
            with os.fdopen(fd, "wb", buffering=CHUNK) as f:
                copy_verified(source, f, digest, size, what)
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path(digest))
        except BaseException:
            _unlink(tmp)
            raise

    # Named records: small JSON documents keyed by a hash of build inputs.
    def get_ref(self, key: str) -> dict | None:
        try:
            return json.loads((self._refs / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None

    def put_ref(self, key: str, doc: dict) -> None:
        fd, tmp = tempfile.mkstemp(dir=self._tmp, prefix="ref-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, sort_keys=True)
            os.replace(tmp, self._refs / f"{key}.json")
        except BaseException:
            _unlink(tmp)
            raise


def _unlink(path: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)
