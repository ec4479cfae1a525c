"""``ocibuild copy``: move an image between registries, OCI layouts, OCI archives and docker archives, unchanged.

The air-gapped path (build on one side, carry a tarball, push on the other) only works if the digest survives:
signatures and deployments pinned by digest must still hold. So a copy never re-encodes anything: manifests and
indexes travel as their exact bytes and blobs as they are (compressed ones stay compressed), each verified against
its digest as it streams from the source straight into the destination (registry to registry, nothing lands on
disk). A destination is only named (tagged, ``index.json`` entry, archive renamed into place) after every blob it
needs is there, so a corrupt source leaves nothing tagged behind.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import BinaryIO

from .build.base import Location
from .errors import InputError, UsageError
from .oci import media
from .oci.archive import ArchiveReader, ArchiveSource, Tagged, load_entry, open_docker_archive, write_archive
from .oci.descriptor import Descriptor, Platform, sniff_media_type
from .oci.digest import Digest, VerifyingReader
from .oci.image import BlobSource, Image, ImageIndex, images_of, load_manifest
from .oci.layout import (
    LayoutSource,
    read_index_file,
    read_layout_index,
    resolve_platform,
    select_entries,
    write_layout,
)
from .progress import Progress
from .registry.client import RegistryClient
from .registry.pull import RegistryStream
from .registry.reference import ImageName, Reference, parse_reference
from .registry.transport import RegistryOptions, Transport

Entry = Image | ImageIndex


# ---------------------------------------------------------------- sources


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


# ---------------------------------------------------------------- destinations


def copy_to(
    entry: Entry,
    dest: Location,
    tags: Sequence[str] = (),
    options: RegistryOptions | None = None,
    progress: Progress | None = None,
    source_name: str | None = None,
    append: bool = False,
) -> Digest:
    """Write ``entry`` to ``dest`` (and under the extra ``tags``); returns the digest it has there (its own)."""
    options = options or RegistryOptions()
    progress = progress or Progress(quiet=True)
    if dest.transport == "docker":
        return _push(entry, dest.ref, tags, options, progress)
    if dest.transport == "docker-archive":
        if isinstance(entry, ImageIndex):
            raise UsageError(
                f"{dest.text}: Docker archives hold single-platform images; copy one with --platform, or use "
                "oci-archive: for the whole index"
            )
        if not entry.is_container_image:
            raise UsageError(
                f"{dest.text}: {entry.name} is an OCI artifact, not an image; use oci-archive: or oci:"
            )
    if append and dest.transport != "docker-archive" and dest.transport != "oci-archive":
        raise UsageError("--append is for archive destinations (oci-archive:, docker-archive:)")
    primary = dest.name or (source_name if dest.transport == "docker-archive" else None)
    named = [_names(dest, n) for n in ([primary] if primary else []) + list(tags)]
    if dest.transport == "oci":
        write_layout([(entry, n.ref_name, n.full) for n in named] or [(entry, None, None)], dest.path)
    else:
        size = sum(d.size for image in images_of(entry) for d in image.descriptors())
        counter = progress.bytes(f"writing {dest.path}", size)
        tagged = [Tagged(entry, n.repo_tag, n.ref_name, n.full) for n in named] or [Tagged(entry)]
        write_archive(tagged, dest.path, append=append)
        counter.done()
    return entry.digest


def _names(dest: Location, name: str) -> ImageName:
    if dest.transport == "docker-archive" or "/" in name or ":" in name:
        return ImageName.parse(name)
    return ImageName(None, name, None)  # an OCI tag, as skopeo's oci:DIR:TAG


def _push(
    entry: Entry, ref: Reference, tags: Sequence[str], options: RegistryOptions, progress: Progress
) -> Digest:
    from .registry.push import push_image

    for tag in tags:
        parse_reference(f"{ref.registry}/{ref.repository}:{tag}")  # a bad tag fails before any upload
    if isinstance(entry, Image):
        return push_image(entry, ref, options, progress, tags)
    if ref.digest and ref.digest != entry.digest:
        raise UsageError(f"{ref}: the index's digest is {entry.digest}; push it by tag or by that digest")
    for image in entry.images:  # children first, by digest: the index may only name what is there
        push_image(image, Reference(ref.registry, ref.repository, None, str(image.digest)), options, progress)
    client = RegistryClient(Transport(ref.registry, options), ref.repository, push=True)
    try:
        digest = client.put_manifest(
            ref.tag or ref.digest or "latest", entry.index.raw, entry.index.media_type
        )
        for tag in tags:
            client.put_manifest(tag, entry.index.raw, entry.index.media_type)
    finally:
        client.transport.close()
    progress.step(f"pushed index {ref} {digest} ({len(entry.images)} images)")
    return digest


def source_name(loc: Location) -> str | None:
    """The name an image read from ``loc`` goes under in a Docker archive when the destination names none."""
    if loc.transport == "docker":
        return f"{loc.ref.registry}/{loc.ref.repository}:{loc.ref.tag}" if loc.ref.tag else None
    if loc.transport == "docker-archive" and loc.name:
        return loc.name
    return None


def copy(
    src: str,
    dest: str,
    *,
    platform: str | None = None,
    all_platforms: bool = False,
    tags: Sequence[str] = (),
    append: bool = False,
    source_options: RegistryOptions | None = None,
    dest_options: RegistryOptions | None = None,
    progress: Progress | None = None,
) -> Digest:
    """Copy ``src`` to ``dest`` (any transport to any); returns the digest, the same on both sides."""
    if all_platforms and platform:
        raise UsageError("give --platform or --all-platforms, not both")
    src_loc, dest_loc = Location.parse(src), Location.parse(dest)
    wanted = Platform.parse(platform) if platform else None
    entry = open_source(src_loc, wanted, all_platforms, source_options or RegistryOptions())
    try:
        return copy_to(entry, dest_loc, tags, dest_options, progress, source_name(src_loc), append)
    finally:
        _close_source(entry)


def _close_source(entry: Entry) -> None:
    """Close the source registry's connections (a no-op for files)."""
    for image in images_of(entry):
        for source in (image.blobs, *getattr(image.blobs, "sources", ())):
            if isinstance(source, RegistryStream):
                source.client.transport.close()
