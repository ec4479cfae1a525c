"""``Image``: the one model every source produces and every writer consumes.

An image is its manifest (raw bytes + parsed view), its config (raw bytes + parsed view) and a ``BlobSource`` that
can open any of its blobs as a *verified* stream. Sources (layout, archive, registry, store) implement only
``open_blob``; writers (layout, archive, registry push, engine load) ask only these questions. Building makes a new
``Image`` around the old one's blobs: nothing is edited in place.
"""

from __future__ import annotations

import io
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import BinaryIO, Protocol

import zstandard
from isal import isal_zlib

from ..errors import FormatError
from . import compress, media
from .descriptor import MAX_DOCUMENT_BYTES, Descriptor, Index, Manifest, Platform, parse_json
from .digest import CHUNK, Digest, read_all
from .store import BlobStore

IMAGE_CONFIGS = frozenset({media.OCI_CONFIG, media.DOCKER_CONFIG})

# Decompression bombs: reading an image's layers uncompressed may yield at most this many times the sum of their
# blob sizes, plus a fixed allowance. Real layers expand 2-5 times (text) or not at all (weights); deflate can
# expand 1000 times and zstd far more, so a few MB of blob could otherwise keep a build busy for hours.
MAX_EXPANSION = 100
EXPANSION_ALLOWANCE = 1 << 30


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
        rootfs = self.config.get("rootfs")
        ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
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
        return Platform(c.get("os") or "linux", c.get("architecture") or "amd64", c.get("variant") or None)

    def open_uncompressed(self, layer: Descriptor) -> BinaryIO:
        """A layer's tar stream, decompressed; closing it reads the rest, so the blob's digest is always checked.

        All the layers of one image, read this way, may expand to at most ``MAX_EXPANSION`` times their blobs'
        total size plus ``EXPANSION_ALLOWANCE``: past that, reading raises ``FormatError`` (a decompression bomb).
        """
        return _Drained(self.blobs.open_blob(layer), layer, self._expansion, self.name or "image")

    @cached_property
    def _expansion(self) -> _Budget:
        return _Budget(EXPANSION_ALLOWANCE + MAX_EXPANSION * sum(d.size for d in self.layers))

    def descriptors(self) -> list[Descriptor]:
        """Every blob the image needs: config first, then layers (the order writers want)."""
        return [self.manifest.config, *self.layers]

    @property
    def is_container_image(self) -> bool:
        """False for an OCI artifact (a registered model, a signature): same manifest format, other config."""
        return self.manifest.config.media_type in IMAGE_CONFIGS

    def entry(self, annotations: dict[str, str]) -> Descriptor:
        """This image's descriptor in an ``index.json`` (artifacts carry no platform)."""
        platform = self.platform if self.is_container_image else None
        return self.manifest.descriptor(annotations=annotations, platform=platform)


@dataclass(frozen=True)
class ImageIndex:
    """A multi-platform image travelling whole: the index's exact bytes and the images it lists."""

    index: Index
    images: tuple[Image, ...]
    name: str = ""

    @property
    def digest(self) -> Digest:
        return self.index.digest

    def entry(self, annotations: dict[str, str]) -> Descriptor:
        return Descriptor(
            self.index.media_type, self.index.digest, len(self.index.raw), annotations=annotations
        )


def images_of(entry: Image | ImageIndex) -> tuple[Image, ...]:
    """The single-platform images (or artifacts) whose blobs and manifests an entry needs written."""
    return entry.images if isinstance(entry, ImageIndex) else (entry,)


class _Budget:
    """How many more uncompressed bytes an image's layers may yield (shared by all its layers' streams)."""

    def __init__(self, total: int):
        self.total = total
        self.left = total


class _Drained(io.RawIOBase):
    """Decompressed view of a verified blob stream that, on close, reads the blob to its end to verify it."""

    def __init__(self, blob: BinaryIO, desc: Descriptor, budget: _Budget | None = None, what: str = "image"):
        self._blob = blob
        self._desc = desc
        self._budget = budget
        self._what = what
        try:
            self._inner = compress.decompressed(blob)
        except BaseException:
            blob.close()
            raise

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        try:
            data = self._inner.read(len(buf))
        except (OSError, EOFError, ValueError, zlib.error, isal_zlib.error, zstandard.ZstdError) as e:
            # Most likely the blob is corrupt: reading it to the end raises the digest mismatch, which says so.
            self._drain()
            raise FormatError(
                f"layer {self._desc.digest.short} verifies but cannot be decompressed ({e}); the image is corrupt"
            ) from None
        if self._budget is not None:
            self._budget.left -= len(data)
            if self._budget.left < 0:
                self._drain()  # a corrupt blob is reported as such, not as a bomb
                raise FormatError(
                    f"{self._what}: layer {self._desc.digest.short} expands to more than its share of "
                    f"{self._budget.total >> 20} MiB uncompressed ({MAX_EXPANSION} times the layers' size plus "
                    f"{EXPANSION_ALLOWANCE >> 20} MiB); refusing it as a decompression bomb, use another image"
                )
        buf[: len(data)] = data
        return len(data)

    def _drain(self) -> None:
        while self._blob.read(CHUNK):
            pass

    def close(self) -> None:
        if self.closed:
            return
        try:
            # Closed while an exception unwinds (Ctrl-C, a parse error): that exception is the story, and an
            # interrupted read may have lost bytes, so draining would report a false digest mismatch.
            if sys.exc_info()[0] is None:
                self._drain()
        finally:
            self._blob.close()
            super().close()


def load_image(manifest_raw: bytes, blobs: BlobSource, name: str, media_type: str | None = None) -> Image:
    """Parse a manifest, fetch and verify its config, and check the config agrees with the manifest."""
    manifest = Manifest.parse(manifest_raw, f"manifest of {name}", media_type)
    if manifest.config.media_type not in IMAGE_CONFIGS:
        raise FormatError(
            f"{name} is not a container image: its config is of type {manifest.config.media_type!r:.100} "
            "(an OCI artifact?); use an image as the base"
        )
    if manifest.config.size > MAX_DOCUMENT_BYTES:
        raise FormatError(
            f"config of {name} declares {manifest.config.size} bytes; refusing an oversized config"
        )
    for layer in manifest.layers:
        if layer.media_type not in media.LAYER_TO_OCI:
            raise FormatError(
                f"{name}: layer {layer.digest.short} has unsupported media type {layer.media_type!r:.100}"
            )
    with blobs.open_blob(manifest.config) as f:
        raw = read_all(f)  # reading to the end verifies the digest (and the size, which bounds the read)
    image = Image(manifest, raw, blobs, name)
    check_config(image.config, f"config of {name}")
    image.diff_ids  # noqa: B018 — validates the config against the manifest now, not at export
    return image


def load_manifest(manifest_raw: bytes, blobs: BlobSource, name: str, media_type: str | None = None) -> Image:
    """Any manifest, for copying it unchanged: a container image is checked as ``load_image`` checks it; an
    artifact or an attestation (other config or layer types) only has its config read and verified."""
    manifest = Manifest.parse(manifest_raw, f"manifest of {name}", media_type)
    known_layers = all(layer.media_type in media.LAYER_TO_OCI for layer in manifest.layers)
    if manifest.config.media_type in IMAGE_CONFIGS and known_layers:
        return load_image(manifest_raw, blobs, name, media_type)
    if manifest.config.size > MAX_DOCUMENT_BYTES:
        raise FormatError(
            f"config of {name} declares {manifest.config.size} bytes; refusing an oversized config"
        )
    with blobs.open_blob(manifest.config) as f:
        raw = read_all(f)
    return Image(manifest, raw, blobs, name)


_STRINGS = ("os", "architecture", "variant", "created", "author", "os.version")
_RUN_STRINGS = ("WorkingDir", "User", "StopSignal")
_RUN_LISTS = ("Env", "OnBuild")
_RUN_COMMANDS = ("Entrypoint", "Cmd", "Shell")  # Docker also accepts a single string for these
_RUN_OBJECTS = ("ExposedPorts", "Volumes", "Healthcheck")
_HISTORY_STRINGS = ("created", "created_by", "author", "comment")


def check_config(config: dict, what: str) -> None:
    """Raise ``FormatError`` unless the fields ocibuild reads or copies have the types the image spec gives them
    (null is accepted wherever Docker writes it), so nothing downstream trips over a hostile or broken config."""

    def bad(field: str, kind: str) -> FormatError:
        return FormatError(f"{what}: {field} is not {kind}; the image is corrupt")

    def strings(value: object) -> bool:
        return isinstance(value, list) and all(isinstance(x, str) for x in value)

    for key in _STRINGS:
        if config.get(key) is not None and not isinstance(config[key], str):
            raise bad(key, "a string")
    run = config.get("config")
    if run is not None:
        if not isinstance(run, dict):
            raise bad("config", "an object")
        for key in _RUN_STRINGS:
            if run.get(key) is not None and not isinstance(run[key], str):
                raise bad(f"config.{key}", "a string")
        for key in _RUN_LISTS:
            if run.get(key) is not None and not strings(run[key]):
                raise bad(f"config.{key}", "a list of strings")
        for key in _RUN_COMMANDS:
            if run.get(key) is not None and not (isinstance(run[key], str) or strings(run[key])):
                raise bad(f"config.{key}", "a list of strings")
        for key in _RUN_OBJECTS:
            if run.get(key) is not None and not isinstance(run[key], dict):
                raise bad(f"config.{key}", "an object")
        labels = run.get("Labels")
        if labels is not None and not (
            isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())
        ):
            raise bad("config.Labels", "an object of strings")
    if config.get("rootfs") is not None and not isinstance(config["rootfs"], dict):
        raise bad("rootfs", "an object")
    history = config.get("history")
    if history is not None:
        if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
            raise bad("history", "a list of objects")
        for h in history:
            # Absent or a string: Docker omits them when empty and never writes null.
            for key in _HISTORY_STRINGS:
                if key in h and not isinstance(h[key], str):
                    raise bad(f"history {key}", "a string")
            if h.get("empty_layer") is not None and not isinstance(h["empty_layer"], bool):
                raise bad("history empty_layer", "true or false")
