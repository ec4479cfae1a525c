"""Write an image or an index to where a ``Location`` names: a registry, an OCI layout or an archive.

(From ``ocibuild copy``:) move an image between registries, OCI layouts, OCI archives and docker archives, unchanged.

The air-gapped path (build on one side, carry a tarball, push on the other) only works if the digest survives:
signatures and deployments pinned by digest must still hold. So a copy never re-encodes anything: manifests and
indexes travel as their exact bytes and blobs as they are (compressed ones stay compressed), each verified against
its digest as it streams from the source straight into the destination (registry to registry, nothing lands on
disk). A destination is only named (tagged, ``index.json`` entry, archive renamed into place) after every blob it
needs is there, so a corrupt source leaves nothing tagged behind.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import UsageError
from ..events import Progress
from ..oci.archive import Tagged, write_archive
from ..oci.digest import Digest
from ..oci.image import Image, ImageIndex, images_of
from ..oci.layout import (
    write_layout,
)
from ..oci.name import ImageName, Reference, parse_reference
from ..registry.client import RegistryClient
from ..registry.transport import RegistryOptions, Transport
from .location import Location

Entry = Image | ImageIndex


# ---------------------------------------------------------------- sources


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
    from ..registry.push import push_image

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
