"""The image model: ``Image``, ``ImageIndex`` and ``Layer``, what every source produces and every publisher reads.

An image is its manifest (raw bytes + parsed view), its config (raw bytes + parsed view) and its layers. A ``Layer``
is one blob with its diff_id, the ``BlobSource`` that opens it as a *verified* stream, and where it can be mounted
from (``BlobOrigin``). Sources (layout, archive, registry, store) implement only ``BlobSource``; publishers (layout,
archive, registry, engine, Dockerfile context) ask an image only these questions. Changing an image
(``oci.mutate``) makes a new ``Image`` that shares the old one's layers: nothing is edited in place.
"""

from __future__ import annotations

import io
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol, cast

import zstandard
from isal import isal_zlib

from ..errors import FormatError
from . import compress, media
from .descriptor import MAX_DOCUMENT_BYTES, Descriptor, Index, Manifest, Platform, parse_json
from .digest import CHUNK, Digest, Stream, VerifyingReader, read_all
from .name import ImageName
from .store import BlobStore

IMAGE_CONFIGS = frozenset({media.OCI_CONFIG, media.DOCKER_CONFIG})

# Decompression bombs: reading an image's layers uncompressed may yield at most this many times the sum of their
# blob sizes, plus a fixed allowance. Real layers expand 2-5 times (text) or not at all (weights); deflate can
# expand 1000 times and zstd far more, so a few MB of blob could otherwise keep a build busy for hours.
MAX_EXPANSION = 100
EXPANSION_ALLOWANCE = 1 << 30
# What a corrupt compressed stream raises, by codec.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    ValueError,
    zlib.error,
    cast(type[BaseException], isal_zlib.error),
    zstandard.ZstdError,
)  # isal's stub calls its error an instance; it is a class


@dataclass(frozen=True)
class BlobOrigin:
    """A registry repository known to hold a blob: a push to another repository of that registry mounts it."""

    registry: str
    repository: str


class BlobSource(Protocol):
    """Where blobs come from: opens one as a stream that raises ``DigestMismatchError`` at its end if it does not
    verify. ``origin`` is the registry repository that holds them, if any; ``close`` ends any connection."""

    origin: BlobOrigin | None

    def open_blob(self, desc: Descriptor) -> Stream: ...

    def has_blob(self, desc: Descriptor) -> bool: ...

    def close(self) -> None: ...


class StoreSource:
    """Blobs of the local store (``oci.store``): what a build wrote."""

    origin: BlobOrigin | None = None

    def __init__(self, store: BlobStore):
        self.store = store

    def open_blob(self, desc: Descriptor) -> Stream:
        return self.store.open(desc.digest, desc.size)

    def has_blob(self, desc: Descriptor) -> bool:
        return self.store.has(desc.digest)

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class Layer:
    """One layer of an image: its descriptor, its diff_id (the sha256 of the uncompressed tar; None for an
    artifact's blob), how to open its bytes, verified, and where it can be mounted from."""

    descriptor: Descriptor
    diff_id: Digest | None
    source: BlobSource = field(compare=False, repr=False)
    origin: BlobOrigin | None = field(default=None, compare=False)

    @property
    def digest(self) -> Digest:
        return self.descriptor.digest

    @property
    def size(self) -> int:
        return self.descriptor.size

    @property
    def media_type(self) -> str:
        return self.descriptor.media_type

    def open(self) -> Stream:
        return self.source.open_blob(self.descriptor)

    def relabelled(self, media_type: str) -> Layer:
        """The same bytes under another media type (a Docker layer type mapped to its OCI name), as a plain
        descriptor: annotations the old manifest gave it are not carried over."""
        desc = Descriptor(media_type, self.digest, self.size)
        return Layer(desc, self.diff_id, self.source, self.origin)


@dataclass(frozen=True)
class Addendum:
    """A layer added to an image, with the history line that says what it holds."""

    layer: Layer
    created_by: str  # e.g. "ocibuild: model ridge:1 (model.pkl)"
    role: str = ""  # what it holds: "dependencies", "server", "model", "app"


@dataclass(frozen=True)
class Image:
    """One image (or one artifact): manifest, config and layers. ``base`` and ``added`` say how ``oci.mutate``
    made it (the base it was made from and the layers it added); an image read from somewhere has neither."""

    manifest: Manifest
    config_raw: bytes
    layers: tuple[Layer, ...]
    name: str = ""  # where it came from, for messages
    # The name it goes by that means the same on any machine: a registry reference, or the full name an archive or
    # a layout gives it; never a local path (``org.opencontainers.image.base.name`` of images built on it).
    reference: str | None = field(default=None, compare=False)
    config_origin: BlobOrigin | None = field(
        default=None, compare=False
    )  # where its config can be mounted from
    base: Image | None = field(default=None, compare=False, repr=False)
    added: tuple[Addendum, ...] = field(default=(), compare=False, repr=False)
    # Artifacts about this image (its SBOM, ...): manifests whose ``subject`` is this one, written beside it.
    referrers: tuple[Image, ...] = field(default=(), compare=False, repr=False)
    # Its cosign signature image (``oci.signature``), written beside it under ``sha256-<hex>.sig``.
    signature: Image | None = field(default=None, compare=False, repr=False)

    @property
    def digest(self) -> Digest:
        return self.manifest.digest

    @cached_property
    def config(self) -> dict:
        return parse_json(self.config_raw, f"config of {self.name or 'image'}")

    @property
    def diff_ids(self) -> list[Digest]:
        return diff_ids_of(self.config, len(self.layers), self.name or "image")

    @property
    def platform(self) -> Platform:
        c = self.config
        return Platform(c.get("os") or "linux", c.get("architecture") or "amd64", c.get("variant") or None)

    def open_blob(self, desc: Descriptor) -> Stream:
        """Any blob of the image (its config or a layer), verified as it is read."""
        if desc.digest == self.manifest.config.digest:
            return VerifyingReader(io.BytesIO(self.config_raw), desc.digest, desc.size, "config")
        return self.layer(desc.digest).open()

    def layer(self, digest: Digest) -> Layer:
        for layer in self.layers:
            if layer.digest == digest:
                return layer
        raise FormatError(f"blob {digest} is not a layer of {self.name or 'the image'}")

    def origin_of(self, desc: Descriptor) -> BlobOrigin | None:
        """Where a blob of the image (its config or a layer) can be mounted from, if anywhere."""
        if desc.digest == self.manifest.config.digest:
            return self.config_origin
        for layer in self.layers:
            if layer.digest == desc.digest:
                return layer.origin
        return None

    def open_uncompressed(self, layer: Layer) -> Stream:
        """A layer's tar stream, decompressed; closing it reads the rest, so the blob's digest is always checked.

        All the layers of one image, read this way, may expand to at most ``MAX_EXPANSION`` times their blobs'
        total size plus ``EXPANSION_ALLOWANCE``: past that, reading raises ``FormatError`` (a decompression bomb).
        """
        return _Drained(layer.open(), layer.descriptor, self._expansion, self.name or "image")

    @cached_property
    def _expansion(self) -> _Budget:
        return _Budget(EXPANSION_ALLOWANCE + MAX_EXPANSION * sum(d.size for d in self.layers))

    def descriptors(self) -> list[Descriptor]:
        """Every blob the image needs: config first, then layers (the order writers want)."""
        return [self.manifest.config, *(layer.descriptor for layer in self.layers)]

    @property
    def is_container_image(self) -> bool:
        """False for an OCI artifact (a registered model, a signature): same manifest format, other config."""
        return self.manifest.config.media_type in IMAGE_CONFIGS

    def entry(self, annotations: dict[str, str]) -> Descriptor:
        """This image's descriptor in an ``index.json`` (artifacts carry no platform)."""
        if self.is_container_image:
            return self.manifest.descriptor(annotations=annotations, platform=self.platform)
        return self.manifest.descriptor(annotations=annotations, artifact_type=self.manifest.artifact_type)

    def close(self) -> None:
        """End the connections of the sources its layers come from (a no-op for files), and its documents'."""
        for source in {id(x.source): x.source for x in self.layers}.values():
            source.close()
        for document in (*self.referrers, *((self.signature,) if self.signature else ())):
            document.close()


@dataclass(frozen=True)
class ImageIndex:
    """A multi-platform image travelling whole: the index's exact bytes and the images it lists."""

    index: Index
    images: tuple[Image, ...]
    name: str = ""
    referrers: tuple[Image, ...] = field(default=(), compare=False, repr=False)  # artifacts about the index
    signature: Image | None = field(default=None, compare=False, repr=False)  # as ``Image.signature``

    @property
    def digest(self) -> Digest:
        return self.index.digest

    def entry(self, annotations: dict[str, str]) -> Descriptor:
        return Descriptor(
            self.index.media_type, self.index.digest, len(self.index.raw), annotations=annotations
        )

    def close(self) -> None:
        for image in (*self.images, *self.referrers, *((self.signature,) if self.signature else ())):
            image.close()


Entry = Image | ImageIndex


@dataclass(frozen=True)
class Tagged:
    """An image (or a whole index) and the name it goes under in an archive, a layout or an engine."""

    image: Entry
    name: ImageName | None = None


def images_of(entry: Entry) -> tuple[Image, ...]:
    """The single-platform images (or artifacts) whose blobs and manifests an entry needs written."""
    return entry.images if isinstance(entry, ImageIndex) else (entry,)


def referrers_of(entry: Entry) -> tuple[Image, ...]:
    """Every artifact that refers to the entry or to one of its images, in order, each once."""
    found = {r.digest: r for r in (*entry.referrers, *(r for i in images_of(entry) if i is not entry for r in i.referrers))}
    return tuple(found.values())


def diff_ids_of(config: dict, layers: int, what: str) -> list[Digest]:
    """The config's ``rootfs.diff_ids``, checked against the number of layers the manifest lists."""
    rootfs = config.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list) or len(ids) != layers:
        raise FormatError(
            f"config of {what} lists {len(ids) if isinstance(ids, list) else 'no'} diff_ids "
            f"for {layers} layers; the image is corrupt"
        )
    try:
        return [Digest(x) for x in ids]
    except (TypeError, ValueError):
        raise FormatError(f"config of {what} has a malformed diff_id") from None


class _Budget:
    """How many more uncompressed bytes an image's layers may yield (shared by all its layers' streams)."""

    def __init__(self, total: int):
        self.total = total
        self.left = total


class _Drained(io.RawIOBase):
    """Decompressed view of a verified blob stream that, on close, reads the blob to its end to verify it."""

    def __init__(self, blob: Stream, desc: Descriptor, budget: _Budget | None = None, what: str = "image"):
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
        except _DECODE_ERRORS as e:
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
    for layer in manifest.layers:
        if layer.media_type not in media.LAYER_TO_OCI:
            raise FormatError(
                f"{name}: layer {layer.digest.short} has unsupported media type {layer.media_type!r:.100}"
            )
    raw = _read_config(manifest, blobs, name)
    config = parse_json(raw, f"config of {name}")
    check_config(config, f"config of {name}")
    diff_ids = diff_ids_of(config, len(manifest.layers), name)
    layers = tuple(
        Layer(d, diff_id, blobs, blobs.origin) for d, diff_id in zip(manifest.layers, diff_ids, strict=True)
    )
    return Image(manifest, raw, layers, name, config_origin=blobs.origin)


def load_manifest(manifest_raw: bytes, blobs: BlobSource, name: str, media_type: str | None = None) -> Image:
    """Any manifest, for copying it unchanged: a container image is checked as ``load_image`` checks it; an
    artifact or an attestation (other config or layer types) only has its config read and verified."""
    manifest = Manifest.parse(manifest_raw, f"manifest of {name}", media_type)
    known_layers = all(layer.media_type in media.LAYER_TO_OCI for layer in manifest.layers)
    if manifest.config.media_type in IMAGE_CONFIGS and known_layers:
        return load_image(manifest_raw, blobs, name, media_type)
    raw = _read_config(manifest, blobs, name)
    layers = tuple(Layer(d, None, blobs, blobs.origin) for d in manifest.layers)
    return Image(manifest, raw, layers, name, config_origin=blobs.origin)


def _read_config(manifest: Manifest, blobs: BlobSource, name: str) -> bytes:
    if manifest.config.size > MAX_DOCUMENT_BYTES:
        raise FormatError(
            f"config of {name} declares {manifest.config.size} bytes; refusing an oversized config"
        )
    with blobs.open_blob(manifest.config) as f:
        return read_all(f)  # reading to the end verifies the digest (and the size, which bounds the read)


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(x, str) for x in value)


def _string_map(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


# (field, test, what the spec says it is): the config fields ocibuild reads or copies.
_STRINGS = ("os", "architecture", "variant", "created", "author", "os.version")
_RUN_FIELDS: tuple[tuple[str, Callable[[object], bool], str], ...] = (
    *((key, lambda v: isinstance(v, str), "a string") for key in ("WorkingDir", "User", "StopSignal")),
    *((key, _strings, "a list of strings") for key in ("Env", "OnBuild")),
    # Docker also accepts a single string for these
    *(
        (key, lambda v: isinstance(v, str) or _strings(v), "a list of strings")
        for key in ("Entrypoint", "Cmd", "Shell")
    ),
    *(
        (key, lambda v: isinstance(v, dict), "an object")
        for key in ("ExposedPorts", "Volumes", "Healthcheck")
    ),
    ("Labels", _string_map, "an object of strings"),
)
_HISTORY_STRINGS = ("created", "created_by", "author", "comment")


def check_config(config: dict, what: str) -> None:
    """Raise ``FormatError`` unless the fields ocibuild reads or copies have the types the image spec gives them
    (null is accepted wherever Docker writes it), so nothing downstream trips over a hostile or broken config."""

    def bad(field: str, kind: str) -> FormatError:
        return FormatError(f"{what}: {field} is not {kind}; the image is corrupt")

    for key in _STRINGS:
        if config.get(key) is not None and not isinstance(config[key], str):
            raise bad(key, "a string")
    run = config.get("config")
    if run is not None and not isinstance(run, dict):
        raise bad("config", "an object")
    for key, test, kind in _RUN_FIELDS:
        if run and run.get(key) is not None and not test(run[key]):
            raise bad(f"config.{key}", kind)
    if config.get("rootfs") is not None and not isinstance(config["rootfs"], dict):
        raise bad("rootfs", "an object")
    _check_history(config.get("history"), bad)


def _check_history(history: object, bad: Callable[[str, str], FormatError]) -> None:
    if history is None:
        return
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise bad("history", "a list of objects")
    for h in history:
        # Absent or a string: Docker omits them when empty and never writes null.
        for key in _HISTORY_STRINGS:
            if key in h and not isinstance(h[key], str):
                raise bad(f"history {key}", "a string")
        if h.get("empty_layer") is not None and not isinstance(h["empty_layer"], bool):
            raise bad("history empty_layer", "true or false")
