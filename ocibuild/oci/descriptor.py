"""Descriptors, platforms, manifests and indexes: parsed views over raw JSON bytes.

The raw bytes are the truth: a digest is always of the exact bytes read or written, and a parsed object keeps
them (``.raw``) so nothing is re-serialised in the hope of getting the same digest back. New documents are made
with ``canonical_json`` (sorted keys, no spaces), so the same content always gives the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import FormatError
from . import media
from .digest import Digest, is_digest

MAX_DOCUMENT_BYTES = (
    4 << 20
)  # manifests and configs larger than this are refused (distribution uses 4 MiB too)


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def parse_json(raw: bytes, what: str) -> dict:
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise FormatError(
            f"{what} is {len(raw)} bytes, over the {MAX_DOCUMENT_BYTES} byte limit; it is not a valid image document"
        )
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as e:
        # ValueError: bad JSON, bad UTF-8, or an integer over Python's digit limit; RecursionError: nesting
        # deeper than the parser's stack (both are what a hostile document looks like).
        reason = str(e) if isinstance(e, ValueError) else "nested too deeply"
        raise FormatError(f"{what} is not valid JSON ({reason[:200]}); the image is corrupt") from None
    if not isinstance(doc, dict):
        raise FormatError(f"{what} is not a JSON object; the image is corrupt")
    return doc


def _str_map(value: Any, what: str, field_name: str) -> dict[str, str]:
    """An OCI string-to-string map (annotations); absent or null is empty."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise FormatError(f"{what}: {field_name} is not an object of strings; the image is corrupt")
    return dict(value)


def _media_type(doc: dict, what: str, default: str | None) -> str:
    mt = doc.get("mediaType")
    if mt is not None and not isinstance(mt, str):
        raise FormatError(f"{what}: mediaType {mt!r:.80} is not a string; the image is corrupt")
    return mt or default or ""


def _opt_str(doc: dict, key: str, what: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise FormatError(f"{what}: {key} {value!r:.80} is not a string; the image is corrupt")
    return value


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``os/arch[/variant]``, e.g. ``linux/amd64`` or ``linux/arm64/v8``."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise FormatError(f"platform {text!r} is not os/arch[/variant], e.g. linux/amd64")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    @classmethod
    def from_json(cls, doc: dict, what: str = "platform") -> Platform:
        if not isinstance(doc, dict):
            raise FormatError(f"{what}: platform is not a JSON object; the image is corrupt")
        return cls(
            _opt_str(doc, "os", what) or "",
            _opt_str(doc, "architecture", what) or "",
            _opt_str(doc, "variant", what) or None,
        )

    def to_json(self) -> dict:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    def matches(self, other: Platform) -> bool:
        """True when ``other`` (an image's platform) satisfies this wanted platform; a wanted variant must match,
        an unspecified one accepts any (arm64 images often omit ``v8``)."""
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        return self.variant is None or other.variant is None or self.variant == other.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    annotations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    platform: Platform | None = None
    artifact_type: str | None = None

    @classmethod
    def from_json(cls, doc: Any, what: str) -> Descriptor:
        if not isinstance(doc, dict):
            raise FormatError(f"{what}: a descriptor is not a JSON object")
        digest, size, mt = doc.get("digest"), doc.get("size"), doc.get("mediaType")
        if not isinstance(digest, str) or not is_digest(digest):
            raise FormatError(f"{what}: descriptor digest {digest!r:.80} is not a sha256 digest")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise FormatError(f"{what}: descriptor size {size!r:.80} is not a non-negative integer")
        if not isinstance(mt, str) or not mt:
            raise FormatError(f"{what}: descriptor of {digest} has no mediaType (a string)")
        plat = doc.get("platform")
        return cls(
            media_type=mt,
            digest=Digest(digest),
            size=size,
            annotations=_str_map(doc.get("annotations"), what, f"annotations of {digest}"),
            platform=None if plat is None else Platform.from_json(plat, f"{what} {digest}"),
            artifact_type=_opt_str(doc, "artifactType", what),
        )

    def to_json(self) -> dict:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    def with_annotations(self, annotations: dict[str, str]) -> Descriptor:
        return Descriptor(
            self.media_type, self.digest, self.size, dict(annotations), self.platform, self.artifact_type
        )


@dataclass(frozen=True)
class Manifest:
    """An image manifest (OCI or Docker schema 2); ``raw`` are the bytes its digest is of."""

    raw: bytes
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    artifact_type: str | None = None
    subject: Descriptor | None = None  # the manifest this one is about (an SBOM's, a signature's image)

    @property
    def digest(self) -> Digest:
        return Digest.of(self.raw)

    def descriptor(self, **extra: Any) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.raw), **extra)

    @classmethod
    def parse(cls, raw: bytes, what: str = "manifest", media_type: str | None = None) -> Manifest:
        doc = parse_json(raw, what)
        mt = _media_type(doc, what, media_type or media.OCI_MANIFEST)
        if mt not in media.MANIFESTS:
            raise FormatError(f"{what} has media type {mt!r:.80}, not an image manifest")
        if doc.get("schemaVersion") != 2:
            raise FormatError(
                f"{what}: schemaVersion {doc.get('schemaVersion')!r:.80} is not supported (only 2)"
            )
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise FormatError(f"{what} has no layers list")
        return cls(
            raw=raw,
            media_type=mt,
            config=Descriptor.from_json(doc.get("config"), f"{what} config"),
            layers=tuple(Descriptor.from_json(x, f"{what} layer") for x in layers),
            annotations=_str_map(doc.get("annotations"), what, "annotations"),
            artifact_type=_opt_str(doc, "artifactType", what),
            subject=None
            if doc.get("subject") is None
            else Descriptor.from_json(doc["subject"], f"{what} subject"),
        )

    @classmethod
    def build(
        cls,
        config: Descriptor,
        layers: list[Descriptor],
        annotations: dict[str, str] | None = None,
        artifact_type: str | None = None,
        subject: Descriptor | None = None,
    ) -> Manifest:
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": media.OCI_MANIFEST,
            "config": config.to_json(),
            "layers": [x.to_json() for x in layers],
        }
        if artifact_type:
            doc["artifactType"] = artifact_type
        if annotations:
            doc["annotations"] = dict(annotations)
        if subject is not None:
            doc["subject"] = subject.to_json()
        return cls.parse(canonical_json(doc))


@dataclass(frozen=True)
class Index:
    """An image index / Docker manifest list."""

    raw: bytes
    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def digest(self) -> Digest:
        return Digest.of(self.raw)

    @classmethod
    def parse(cls, raw: bytes, what: str = "index", media_type: str | None = None) -> Index:
        doc = parse_json(raw, what)
        mt = _media_type(doc, what, media_type or media.OCI_INDEX)
        if mt not in media.INDEXES:
            raise FormatError(f"{what} has media type {mt!r:.80}, not an image index")
        if doc.get("schemaVersion") != 2:
            raise FormatError(
                f"{what}: schemaVersion {doc.get('schemaVersion')!r:.80} is not supported (only 2)"
            )
        manifests = doc.get("manifests")
        if not isinstance(manifests, list):
            raise FormatError(f"{what} has no manifests list")
        return cls(
            raw=raw,
            media_type=mt,
            manifests=tuple(Descriptor.from_json(x, what) for x in manifests),
            annotations=_str_map(doc.get("annotations"), what, "annotations"),
        )

    @classmethod
    def build(cls, manifests: list[Descriptor], annotations: dict[str, str] | None = None) -> Index:
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": media.OCI_INDEX,
            "manifests": [m.to_json() for m in manifests],
        }
        if annotations:
            doc["annotations"] = dict(annotations)
        return cls.parse(canonical_json(doc))


def sniff_media_type(raw: bytes, what: str) -> str:
    """The media type of a manifest-or-index document whose container did not say (e.g. a layout's blob)."""
    doc = parse_json(raw, what)
    if mt := _media_type(doc, what, None):
        return mt
    if "manifests" in doc:
        return media.OCI_INDEX
    if "layers" in doc:
        return media.OCI_MANIFEST
    raise FormatError(f"{what} is neither an image manifest nor an index")
