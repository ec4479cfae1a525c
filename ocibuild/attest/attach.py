"""A document about an image as an OCI 1.1 artifact that refers to it: an empty config, the document as its one
layer, ``artifactType`` the document's media type, ``subject`` the image's manifest. Publishers write it beside
the image (``oci.image.referrers_of``): a registry lists it among the image's referrers, a layout or an archive
in its ``index.json``.
"""

from __future__ import annotations

from dataclasses import replace

from ..oci.descriptor import Descriptor, Manifest
from ..oci.empty import EMPTY_CONFIG, EMPTY_DESCRIPTOR
from ..oci.image import Image, ImageIndex, Layer, StoreSource
from ..oci.mutate import timestamp
from ..oci.store import BlobStore

CREATED = "org.opencontainers.image.created"


def document_artifact(
    document: bytes, media_type: str, subject: Image, store: BlobStore, epoch: int, annotations: dict | None = None
) -> Image:
    """``document`` (kept in ``store``) as an artifact whose subject is ``subject``; created at ``epoch``;
    ``annotations`` on the manifest too (a referrers index copies them: how a reader tells documents apart)."""
    digest = store.put_bytes(document)
    desc = Descriptor(media_type, digest, len(document))
    manifest = Manifest.build(
        EMPTY_DESCRIPTOR, [desc], {CREATED: timestamp(epoch), **(annotations or {})}, artifact_type=media_type,
        subject=subject.manifest.descriptor(),
    )  # fmt: skip
    return Image(manifest, EMPTY_CONFIG, (Layer(desc, None, StoreSource(store)),), f"{media_type} of {subject.name}")


def with_referrers(image: Image, artifacts: tuple[Image, ...]) -> Image:
    return replace(image, referrers=(*image.referrers, *artifacts))


def index_with_referrers(index: ImageIndex, per_image: list[tuple[Image, ...]]) -> ImageIndex:
    """The index whose images carry their artifacts; its bytes (and digest) do not change."""
    images = tuple(with_referrers(i, a) for i, a in zip(index.images, per_image, strict=True))
    return replace(index, images=images)
