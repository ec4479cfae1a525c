"""Finding an image through an index: the entries a name selects, the manifest for a platform, whole entries.

Shared by every source that has an ``index.json`` or serves indexes (layouts, archives, registries), so that each
picks names and platforms by the same rules.
"""

from __future__ import annotations

import re

from ..errors import FormatError, InputError
from . import media
from .descriptor import Descriptor, Index, Platform, sniff_media_type
from .digest import read_all
from .image import BlobSource, Image, ImageIndex, load_manifest


def select_manifest(
    index: Index, blobs: BlobSource, ref_name: str | None, platform: Platform, what: str
) -> tuple[bytes, str]:
    """From a layout's ``index.json``: the raw manifest (and its media type) tagged ``ref_name`` for ``platform``.

    Without a ``ref_name`` the layout must hold one image (possibly several platforms of it).
    """
    return resolve_platform(select_entries(index, ref_name, what), blobs, platform, what)


def select_entries(index: Index, ref_name: str | None, what: str) -> list[Descriptor]:
    """The ``index.json`` entries tagged ``ref_name`` (or all, when the layout holds just one image); artifacts
    beside the images (their referrers) are never chosen."""
    if ref_name is None:  # what sits beside the images (an SBOM, untagged; a cosign signature) is not a candidate
        candidates = [d for d in index.manifests if not _beside_an_image(d)]
    else:
        candidates = list(index.manifests)
    names = sorted({d.annotations.get(media.REF_NAME, "") for d in candidates} - {""})
    if ref_name is not None:
        candidates = [d for d in candidates if d.annotations.get(media.REF_NAME) == ref_name]
        if not candidates:
            raise InputError(
                f"{what} has no image tagged {ref_name!r}; it has: {', '.join(names) or 'no tags'}"
            )
    elif len(names) > 1:
        raise InputError(f"{what} holds several images ({', '.join(names)}); name one as {what}:TAG")
    if not candidates:
        raise InputError(f"{what} holds no image")
    return candidates


_COSIGN_TAG = re.compile(r"sha256-[0-9a-f]{64}\.(sig|att|sbom)")  # cosign's tags beside an image


def _beside_an_image(desc: Descriptor) -> bool:
    name = desc.annotations.get(media.REF_NAME)
    return (bool(desc.artifact_type) and not name) or bool(name and _COSIGN_TAG.fullmatch(name))


def resolve_platform(
    candidates: list[Descriptor], blobs: BlobSource, platform: Platform, what: str, depth: int = 0
) -> tuple[bytes, str]:
    """Pick the manifest for ``platform`` among descriptors, descending into a nested index."""
    if len(candidates) == 1 and candidates[0].media_type not in media.MANIFESTS:
        raw, mt = fetch_manifest(blobs, candidates[0], what)
        if mt in media.MANIFESTS:
            return raw, mt
        if depth > 2:
            raise FormatError(f"{what}: indexes nested too deep")
        nested = Index.parse(raw, f"index in {what}", mt)
        return resolve_platform(list(nested.manifests), blobs, platform, what, depth + 1)
    manifests = [d for d in candidates if d.media_type in media.MANIFESTS]
    matching = [d for d in manifests if d.platform is None or platform.matches(d.platform)]
    if not matching:
        have = ", ".join(str(d.platform) for d in manifests if d.platform) or "none"
        raise InputError(
            f"{what} has no image for platform {platform}; it has: {have} (choose with --platform)"
        )
    # An exact variant match beats an entry that merely does not contradict.
    matching.sort(key=lambda d: d.platform is None or d.platform != platform)
    return fetch_manifest(blobs, matching[0], what)


def fetch_manifest(blobs: BlobSource, desc: Descriptor, what: str) -> tuple[bytes, str]:
    if desc.size > 4 << 20:
        raise FormatError(f"{what}: manifest {desc.digest.short} declares {desc.size} bytes; refusing it")
    with blobs.open_blob(desc) as f:
        raw = read_all(f)
    mt = desc.media_type
    if mt not in media.MANIFESTS and mt not in media.INDEXES:
        mt = sniff_media_type(raw, what)
    return raw, mt


def read_index_file(raw: bytes, what: str) -> Index:
    return Index.parse(raw, f"index.json of {what}", media.OCI_INDEX)


def load_entry(desc: Descriptor, blobs: BlobSource, what: str) -> Image | ImageIndex:
    """An ``index.json`` entry as it stands: an image, an artifact, or a whole index with all its images."""
    raw, mt = fetch_manifest(blobs, desc, what)
    if mt in media.INDEXES:
        index = Index.parse(raw, f"index in {what}", mt)
        children = []
        for child in index.manifests:
            child_raw, child_mt = fetch_manifest(blobs, child, what)
            if child_mt in media.INDEXES:
                raise FormatError(f"{what}: index {desc.digest.short} nests another index; copy one platform")
            children.append(load_manifest(child_raw, blobs, what, child_mt))
        return ImageIndex(index, tuple(children), what)
    return load_manifest(raw, blobs, what, mt)
