"""``ocibuild copy``: open an image anywhere and write it somewhere else, its digest unchanged."""

from __future__ import annotations

from collections.abc import Sequence

from .errors import UsageError
from .events import Progress
from .oci.descriptor import Platform
from .oci.digest import Digest
from .oci.image import images_of
from .registry.source import RegistryStream
from .registry.transport import RegistryOptions
from .transports.location import Location
from .transports.open import Entry, open_source
from .transports.publish import copy_to, source_name


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
