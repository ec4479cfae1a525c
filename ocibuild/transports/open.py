"""Open what a ``Location`` names: an ``Image``, or a whole ``ImageIndex``, for any transport.

The one opener: ``package --base``, ``copy`` and ``inspect`` come through here, and a new transport is one more
branch here plus its reader. Layouts and archives are read in place; a registry image is fetched manifest first,
its blobs when they are opened (through the cache when a ``BlobStore`` is given, else streamed); ``scratch`` is
the empty image. The registry's modules (and requests) are imported by the branches that use them: most builds
read a local base, and every command's start would pay 50 ms for them.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ..errors import BaseImageError, FormatError, InputError, UsageError
from ..events import Progress
from ..oci import media
from ..oci.archive import ArchiveReader, ArchiveSource, open_docker_archive
from ..oci.descriptor import Descriptor, Index, Platform, sniff_media_type
from ..oci.digest import Digest
from ..oci.empty import empty_image
from ..oci.image import BlobSource, Entry, Image, load_image, load_manifest
from ..oci.index import fetch_manifest, load_entry, read_index_file, resolve_platform, select_entries
from ..oci.layout import LayoutSource, read_layout_index
from ..oci.signature import signature_tag
from ..oci.store import BlobStore
from ..registry.options import RegistryOptions
from .location import Location

if TYPE_CHECKING:
    from ..registry.client import RegistryClient

DEFAULT_PLATFORM = Platform("linux", "amd64")


def open_location(
    loc: Location,
    platform: Platform | None = None,
    *,
    all_platforms: bool = False,
    images_only: bool = False,
    options: RegistryOptions | None = None,
    store: BlobStore | None = None,
    progress: Progress | None = None,
) -> Entry:
    """What ``loc`` names: the whole index with ``all_platforms``; else one image: ``platform``'s when it is an
    index (linux/amd64 when none is given), any single image or artifact as it is.

    ``images_only``: refuse artifacts and layers of unknown types (a base, an image to inspect). ``store``: pull a
    registry image's blobs through it (a base is built on; a copy only passes through)."""
    if loc.transport == "scratch":
        if all_platforms:
            raise UsageError("scratch is the empty image of one platform; drop --all-platforms")
        return empty_image(platform or DEFAULT_PLATFORM)
    if loc.transport == "docker-archive":
        if all_platforms:
            raise UsageError(
                f"{loc.text}: a docker archive holds single-platform images; drop --all-platforms"
            )
        assert loc.path is not None
        return open_docker_archive(loc.path, loc.name, platform or DEFAULT_PLATFORM)
    candidates, source, what = _entries(loc, options or RegistryOptions(), store, progress)
    single = len(candidates) == 1 and candidates[0].media_type not in media.INDEXES
    if all_platforms or (platform is None and single and not images_only):
        if len(candidates) > 1:
            raise InputError(f"{what} lists {len(candidates)} images under that name; name one by its tag")
        return load_entry(candidates[0], source, what)
    raw, mt = resolve_platform(candidates, source, platform or DEFAULT_PLATFORM, what)
    image = load_image(raw, source, what, mt) if images_only else load_manifest(raw, source, what, mt)
    return dataclasses.replace(image, reference=_portable_name(loc, candidates))


def _portable_name(loc: Location, candidates: list[Descriptor]) -> str | None:
    """What an image read from ``loc`` is called on any machine: its registry reference, or the full name its
    layout or archive entry carries (``io.containerd.image.name``); None rather than a path of this machine."""
    if loc.ref is not None:
        return str(loc.ref)
    names = {d.annotations.get(media.CONTAINERD_IMAGE_NAME) for d in candidates}
    return names.pop() if len(names) == 1 else None


def open_base(
    text: str,
    platform: Platform,
    *,
    options: RegistryOptions | None = None,
    store: BlobStore | None = None,
    progress: Progress | None = None,
) -> Image:
    """The image a ``--base`` names, for ``platform`` (checked: an image built for another platform is refused)."""
    loc = Location.parse(text, "base")
    image = open_location(loc, platform, images_only=True, options=options, store=store, progress=progress)
    assert isinstance(image, Image)
    if not image.is_container_image:
        raise FormatError(
            f"{image.name} is not a container image: its config is of type "
            f"{image.manifest.config.media_type!r:.100} (an OCI artifact?); use an image as the base"
        )
    if not platform.matches(image.platform):
        raise BaseImageError(
            f"base {text} is for {image.platform}, not {platform}; pass --platform {image.platform} or another base"
        )
    return image


def _entries(
    loc: Location, options: RegistryOptions, store: BlobStore | None, progress: Progress | None
) -> tuple[list[Descriptor], BlobSource, str]:
    """The descriptors ``loc`` names (one top manifest or index for a registry; the ``index.json`` entries under
    its tag for a layout or an OCI archive), the source of their blobs, and how to name them in messages."""
    if loc.transport == "docker":
        assert loc.ref is not None
        from ..registry.source import RegistrySource

        client = _client(loc, options)
        source = RegistrySource(client, store, progress=progress)
        raw, mt = client.get_manifest(loc.ref.reference)
        mt = mt or sniff_media_type(raw, f"manifest of {loc.ref}")
        source.remember(raw)
        return [Descriptor(mt, Digest.of(raw), len(raw))], source, str(loc.ref)
    index, blobs, what = _index_of(loc)
    return select_entries(index, loc.name, what), blobs, what


def _client(loc: Location, options: RegistryOptions | None) -> RegistryClient:
    from ..registry.client import RegistryClient
    from ..registry.transport import Transport

    assert loc.ref is not None
    return RegistryClient(Transport(loc.ref.registry, options or RegistryOptions()), loc.ref.repository)


def _index_of(loc: Location) -> tuple[Index, BlobSource, str]:
    """A layout's or an OCI archive's ``index.json``, the source of its blobs, and how to name it in messages."""
    assert loc.path is not None
    if loc.transport == "oci":
        return read_layout_index(loc.path), LayoutSource(loc.path), f"oci:{loc.path}"
    if not loc.path.is_file():
        raise InputError(f"{loc.path}: no such file")
    reader = ArchiveReader(loc.path)
    if not reader.has("index.json"):
        raise InputError(
            f"{loc.path} is not an OCI archive (no index.json); for a docker save file use docker-archive:"
        )
    return read_index_file(reader.read_small("index.json"), loc.text), ArchiveSource(reader), f"oci-archive:{loc.path}"


def open_referrers(
    loc: Location, subject: Digest, options: RegistryOptions | None = None, artifact_types: tuple[str, ...] = ()
) -> list[Image]:
    """The artifacts at ``loc`` whose ``subject`` is ``subject`` (of ``artifact_types`` when given): the registry's
    referrers (API or tag schema), or a layout's or OCI archive's ``index.json`` entries that refer to it."""
    wanted = set(artifact_types)
    if loc.transport == "docker":
        assert loc.ref is not None
        from ..registry.referrers import list_referrers
        from ..registry.source import RegistrySource

        client = _client(loc, options)
        source = RegistrySource(client)  # the artifacts' blobs are read through it: closed with them, or now
        try:
            found = [d for d in list_referrers(client, subject) if not wanted or d.artifact_type in wanted]
            out = []
            for d in found:
                raw, mt = client.get_manifest(str(d.digest))
                where = f"{loc.ref.registry}/{loc.ref.repository}@{d.digest}"
                out.append(load_manifest(raw, source, where, mt or None))
        except BaseException:
            source.close()
            raise
        if not out:
            source.close()
        return out
    if loc.transport not in ("oci", "oci-archive"):
        return []  # a docker archive has no place for them
    index, blobs, what = _index_of(loc)
    out = []
    for desc in index.manifests:
        if not desc.artifact_type or (wanted and desc.artifact_type not in wanted):
            continue
        raw, mt = fetch_manifest(blobs, desc, what)
        artifact = load_manifest(raw, blobs, f"{what}@{desc.digest}", mt)
        if artifact.manifest.subject is not None and artifact.manifest.subject.digest == subject:
            out.append(artifact)
    return out


def open_signature(loc: Location, subject: Digest, options: RegistryOptions | None = None) -> Image | None:
    """The cosign signature image of the manifest ``subject`` at ``loc`` (under ``sha256-<hex>.sig``), if any."""
    tag = signature_tag(subject)
    if loc.transport == "docker":
        assert loc.ref is not None
        from ..registry.signatures import signatures_image

        client = _client(loc, options)
        try:
            return signatures_image(client, subject)
        finally:
            client.transport.close()
    if loc.transport not in ("oci", "oci-archive"):
        return None
    index, blobs, what = _index_of(loc)
    found = [d for d in index.manifests if d.annotations.get(media.REF_NAME) == tag]
    if not found:
        return None
    raw, mt = fetch_manifest(blobs, found[0], what)
    return load_manifest(raw, blobs, f"{what}:{tag}", mt)
