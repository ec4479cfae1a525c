"""``Image``: the one model every source produces and every writer consumes.

An image is its manifest (raw bytes + parsed view), its config (raw bytes + parsed view) and a ``BlobSource`` that
can open any of its blobs as a *verified* stream. Sources (layout, archive, registry, store) implement only
``open_blob``; writers (layout, archive, registry push, engine load) ask only these questions. Building makes a new
``Image`` around the old one's blobs: nothing is edited in place.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import BinaryIO, Protocol

import zstandard
from isal import isal_zlib

from ..errors import FormatError
from . import compress, media
from .descriptor import Descriptor, Manifest, Platform, parse_json
from .digest import CHUNK, Digest, read_all
from .store import BlobStore


class BlobSource(Protocol):
    def open_blob(self, desc: Descriptor) -> BinaryIO:
        """A stream of the blob's bytes that raises ``DigestMismatchError`` at its end if they do not verify."""
        ...

    def has_blob(self, desc: Descriptor) -> bool: ...


class StoreSource:
    def __init__(self, store: BlobStore):
        self.store = store

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        return self.store.open(desc.digest, desc.size)

    def has_blob(self, desc: Descriptor) -> bool:
        return self.store.has(desc.digest)


class ChainSource:
    """Tries each source in turn: a built image's new layers live in the store, its base layers elsewhere."""

    def __init__(self, sources: Sequence[BlobSource]):
        self.sources = list(sources)

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        for s in self.sources:
            if s.has_blob(desc):
                return s.open_blob(desc)
        raise FormatError(f"blob {desc.digest} is referenced by the image but present in none of its sources")

    def has_blob(self, desc: Descriptor) -> bool:
        return any(s.has_blob(desc) for s in self.sources)


@dataclass(frozen=True)
class Image:
    manifest: Manifest
    config_raw: bytes
    blobs: BlobSource
    name: str = ""  # where it came from, for messages and the base.name label

    @property
    def digest(self) -> Digest:
        return self.manifest.digest

    @property
    def layers(self) -> tuple[Descriptor, ...]:
        return self.manifest.layers

    @cached_property
    def config(self) -> dict:
        return parse_json(self.config_raw, f"config of {self.name or 'image'}")

    @property
    def diff_ids(self) -> list[Digest]:
        rootfs = self.config.get("rootfs") or {}
        ids = rootfs.get("diff_ids")
        if not isinstance(ids, list) or len(ids) != len(self.layers):
            raise FormatError(
                f"config of {self.name or 'image'} lists {len(ids) if isinstance(ids, list) else 'no'} diff_ids "
                f"for {len(self.layers)} layers; the image is corrupt"
            )
        try:
            return [Digest(x) for x in ids]
        except (TypeError, ValueError):
            raise FormatError(f"config of {self.name or 'image'} has a malformed diff_id") from None

    @property
    def platform(self) -> Platform:
        c = self.config
        return Platform(
            str(c.get("os", "linux")), str(c.get("architecture", "amd64")), c.get("variant") or None
        )

    def open_uncompressed(self, layer: Descriptor) -> BinaryIO:
        """A layer's tar stream, decompressed; closing it reads the rest, so the blob's digest is always checked."""
        return _Drained(self.blobs.open_blob(layer), layer)

    def descriptors(self) -> list[Descriptor]:
        """Every blob the image needs: config first, then layers (the order writers want)."""
        return [self.manifest.config, *self.layers]


class _Drained(io.RawIOBase):
    """Decompressed view of a verified blob stream that, on close, reads the blob to its end to verify it."""

    def __init__(self, blob: BinaryIO, desc: Descriptor):
        self._blob = blob
        self._desc = desc
        self._inner = compress.decompressed(blob)

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        try:
            data = self._inner.read(len(buf))
        except (OSError, EOFError, ValueError, zlib.error, isal_zlib.error, zstandard.ZstdError) as e:
            # Most likely the blob is corrupt: reading it to the end raises the digest mismatch, which says so.
            while self._blob.read(CHUNK):
                pass
            raise FormatError(
                f"layer {self._desc.digest.short} verifies but cannot be decompressed ({e}); the image is corrupt"
            ) from None
        buf[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self.closed:
            return
        try:
            while self._blob.read(CHUNK):
                pass
        finally:
            self._blob.close()
            super().close()


def load_image(manifest_raw: bytes, blobs: BlobSource, name: str, media_type: str | None = None) -> Image:
    """Parse a manifest, fetch and verify its config, and check the config agrees with the manifest."""
    manifest = Manifest.parse(manifest_raw, f"manifest of {name}", media_type)
    if manifest.config.size > 4 << 20:
        raise FormatError(
            f"config of {name} declares {manifest.config.size} bytes; refusing an oversized config"
        )
    with blobs.open_blob(manifest.config) as f:
        raw = read_all(f)  # reading to the end verifies the digest
    image = Image(manifest, raw, blobs, name)
    image.diff_ids  # noqa: B018 — validates the config against the manifest now, not at export
    for layer in manifest.layers:
        if layer.media_type not in media.LAYER_TO_OCI:
            raise FormatError(
                f"{name}: layer {layer.digest.short} has unsupported media type {layer.media_type}"
            )
    return image
