"""Open what a ``Location`` names: an ``Image`` or a whole ``ImageIndex``, for any transport.

The one opener: ``package --base``, ``copy``, ``inspect`` and the model commands all come through here. Layouts and
archives are read in place; a registry image is fetched manifest first, its blobs on demand.
"""

from __future__ import annotations

import io
from typing import BinaryIO

from ..errors import BaseImageError, InputError, UsageError
from ..events import Progress
from ..oci import media
from ..oci.archive import ArchiveReader, ArchiveSource, load_entry, open_docker_archive, open_oci_archive
from ..oci.descriptor import Descriptor, Platform, sniff_media_type
from ..oci.digest import Digest, VerifyingReader
from ..oci.image import BlobSource, Image, ImageIndex, load_manifest
from ..oci.layout import (
    LayoutSource,
    open_layout,
    read_index_file,
    read_layout_index,
    resolve_platform,
    select_entries,
)
from ..oci.store import BlobStore
from ..registry.client import RegistryClient
from ..registry.source import RegistryStream
from ..registry.transport import RegistryOptions, Transport
from .location import SCRATCH, Location

Entry = Image | ImageIndex


def resolve_base(
    ref: str,
    platform: Platform,
    store: BlobStore | None = None,
    registry: RegistryOptions | None = None,
    progress: Progress | None = None,
) -> Image | None:
    """The base image for ``ref`` (None for ``scratch``), for ``platform``.

    A registry base is pulled through ``store`` (default: the user's cache), layers on first use, with
    ``registry``'s credentials and TLS settings.
    """
    if ref == SCRATCH:
        return None
    loc = Location.parse(ref, "base")
    if loc.transport == "oci":
        image = open_layout(loc.path, loc.name, platform)
    elif loc.transport == "oci-archive":
        image = open_oci_archive(loc.path, loc.name, platform)
    elif loc.transport == "docker-archive":
        image = open_docker_archive(loc.path, loc.name, platform)
    else:
        from ..registry.source import open_registry_image

        image = open_registry_image(loc.ref, platform, registry, store or BlobStore(), progress)
    if not platform.matches(image.platform):
        raise BaseImageError(
            f"base {ref} is for {image.platform}, not {platform}; pass --platform {image.platform} or another base"
        )
    return image


def open_source(
    loc: Location,
    platform: Platform | None,
    all_platforms: bool,
    options: RegistryOptions,
) -> Entry:
    """What ``loc`` names: a whole index with ``all_platforms``, else one image (``platform``'s when it is an
    index; any single image as it is when no platform was asked for)."""
    if loc.transport == "docker-archive":
        if all_platforms:
            raise UsageError(
                f"{loc.text}: a docker archive holds single-platform images; drop --all-platforms"
            )
        image = open_docker_archive(loc.path, loc.name, platform or Platform("linux", "amd64"))
        if platform is not None and not platform.matches(image.platform):
            raise InputError(f"{loc.text} is an image for {image.platform}, not {platform}; drop --platform")
        return image
    if loc.transport == "docker":
        client = RegistryClient(Transport(loc.ref.registry, options), loc.ref.repository)
        blobs: BlobSource = RegistryStream(client)
        raw, mt = client.get_manifest(loc.ref.reference)
        mt = mt or sniff_media_type(raw, f"manifest of {loc.ref}")
        top = Descriptor(mt, Digest.of(raw), len(raw))
        candidates = [top]
        blobs = _Prefetched(blobs, top, raw)
        what = str(loc.ref)
    else:
        if loc.transport == "oci":
            index, blobs = read_layout_index(loc.path), LayoutSource(loc.path)
        else:
            if not loc.path.is_file():
                raise InputError(f"{loc.path}: no such file")
            reader = ArchiveReader(loc.path)
            if not reader.has("index.json"):
                raise InputError(
                    f"{loc.path} is not an OCI archive (no index.json); for a docker save file use docker-archive:"
                )
            index, blobs = read_index_file(reader.read_small("index.json"), loc.text), ArchiveSource(reader)
        what = loc.text
        candidates = select_entries(index, loc.name, what)
    single = len(candidates) == 1 and candidates[0].media_type not in media.INDEXES
    if all_platforms or (platform is None and single):
        if len(candidates) > 1:
            raise InputError(f"{what} lists {len(candidates)} images under that name; name one by its tag")
        return load_entry(candidates[0], blobs, what)
    wanted = platform or Platform("linux", "amd64")
    raw, mt = resolve_platform(candidates, blobs, wanted, what)
    image = load_manifest(raw, blobs, what, mt)
    if platform is not None and image.is_container_image and not platform.matches(image.platform):
        raise InputError(
            f"{what} is an image for {image.platform}, not {platform}; drop --platform to copy it"
        )
    return image


class _Prefetched:
    """A source that already holds the top manifest it was reached through (fetched once, by tag)."""

    def __init__(self, inner: BlobSource, desc: Descriptor, raw: bytes):
        self.inner, self.digest, self.raw = inner, desc.digest, raw
        self.sources = [inner]

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        if desc.digest == self.digest:
            return VerifyingReader(io.BytesIO(self.raw), desc.digest, desc.size, "manifest")
        return self.inner.open_blob(desc)

    def has_blob(self, desc: Descriptor) -> bool:
        return True
