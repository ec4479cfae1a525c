"""``ocibuild copy``: open an image anywhere and write it to one or more places, its digest unchanged.

The air-gapped path (build on one side, carry a tarball, push on the other) only works if the digest survives:
signatures and deployments pinned by digest must still hold. So a copy never re-encodes anything
(``transports.publish``); registry to registry, nothing lands on disk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from .errors import InputError, UsageError
from .events import Progress
from .oci.descriptor import Platform
from .oci.digest import Digest
from .oci.image import Entry, Image, ImageIndex
from .registry.credentials import parse_creds
from .registry.options import RegistryOptions
from .transports.location import Location
from .transports.open import open_location, open_referrers, open_signature
from .transports.publish import publish_all, publisher_for


def copy(
    src: str,
    dest: str | Sequence[str],
    *,
    platform: str | None = None,
    all_platforms: bool = False,
    tags: Sequence[str] = (),
    append: bool = False,
    source_options: RegistryOptions | None = None,
    dest_options: RegistryOptions | None = None,
    progress: Progress | None = None,
    mtime: int = 0,
    referrers: bool = True,
) -> Digest:
    """Copy ``src`` to ``dest`` (one destination or several; any transport to any); returns the digest, the same
    everywhere. ``mtime``: the time of an archive's tar entries. ``referrers``: carry what sits beside the image
    (its SBOM, provenance and other referrers; its cosign signature) where the destination can hold them."""
    if all_platforms and platform:
        raise UsageError("give --platform or --all-platforms, not both")
    dests = [dest] if isinstance(dest, str) else list(dest)
    src_loc = Location.parse(src)
    if src_loc.transport == "scratch":
        raise UsageError("scratch is the empty image: there is nothing to copy")
    publishers = []
    for text in dests:
        loc = Location.parse(text)
        names = [n for n in (loc.name or _source_name(src_loc, loc),) if n] + list(tags)
        publishers.append(publisher_for(loc, names, options=dest_options, append=append, mtime=mtime))
    wanted = Platform.parse(platform) if platform else None
    entry = open_location(src_loc, wanted, all_platforms=all_platforms, options=source_options)
    try:
        single = isinstance(entry, Image) and entry.is_container_image
        if wanted is not None and single and not wanted.matches(entry.platform):
            raise InputError(
                f"{src} is an image for {entry.platform}, not {wanted}; drop --platform to copy it"
            )
        if referrers:
            entry = _with_what_is_beside(entry, src_loc, source_options)
        return publish_all(entry, publishers, progress or Progress())
    finally:
        entry.close()


def _with_what_is_beside(entry: Entry, loc: Location, options: RegistryOptions | None) -> Entry:
    """The entry with the referrers and the signature the source holds for it (and, of an index, for each of
    its images), so that a copy carries an image's SBOM and signature along."""
    if isinstance(entry, ImageIndex):
        images = tuple(_with_what_is_beside(i, loc, options) for i in entry.images)
        entry = dataclasses.replace(entry, images=images)
    found = tuple(open_referrers(loc, entry.digest, options))
    return dataclasses.replace(entry, referrers=found, signature=open_signature(loc, entry.digest, options))


def _source_name(src: Location, dest: Location) -> str | None:
    """The name an image read from ``src`` goes under in a docker archive that names none: the source's own."""
    if dest.transport != "docker-archive":
        return None
    if src.ref is not None:
        return f"{src.ref.registry}/{src.ref.repository}:{src.ref.tag}" if src.ref.tag else None
    if src.transport == "docker-archive" and src.name:
        return src.name
    return None


def bind_credentials(
    options: RegistryOptions,
    source: str,
    destinations: Sequence[str],
    src_creds: str | None = None,
    dest_creds: str | None = None,
) -> tuple[RegistryOptions, RegistryOptions]:
    """The options for the source and for the destinations: ``src_creds`` bound to a registry source,
    ``dest_creds`` (else ``$OCIBUILD_REGISTRY_USER``/``_PASSWORD``) to registry destinations (``USER:PASSWORD``)."""
    src = Location.parse(source)
    source_options = options
    if src.ref is not None:
        if src_creds:
            source_options = options.with_credentials(src.ref.registry, parse_creds(src_creds, "--src-creds"))
    elif src_creds:
        raise UsageError("--src-creds is for a registry SRC; this one is local")
    dest_options = options
    refs = [loc.ref for loc in map(Location.parse, destinations) if loc.ref is not None]
    for ref in refs:
        dest_options = dest_options.for_target(ref.registry, dest_creds, "--dest-creds")
    if dest_creds and not refs:
        raise UsageError("--dest-creds is for a registry DEST; this one is local")
    return source_options, dest_options
