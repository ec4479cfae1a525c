"""Resolve a base reference (``oci:``, ``oci-archive:``, ``docker-archive:``, ``scratch``, a registry) to an Image.

References follow the skopeo/podman transport convention (DESIGN §1). The result is checked against the wanted
platform. Registry bases go through ``ocibuild.registry.pull``; every other transport is local and read in place.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BadReferenceError, BaseImageError
from ..oci.archive import open_docker_archive, open_oci_archive
from ..oci.descriptor import Platform
from ..oci.image import Image
from ..oci.layout import open_layout
from ..oci.store import BlobStore
from ..registry.reference import Reference, parse_reference

if TYPE_CHECKING:
    from ..progress import Progress
    from ..registry.transport import RegistryOptions

SCRATCH = "scratch"
# skopeo transports that name something other than a registry, which ocibuild does not read.
OTHER_TRANSPORTS = {"containers-storage", "dir", "docker-daemon", "ostree", "sif", "tarball"}


def default_base() -> str:
    """``$OCIBUILD_BASE``, else the official slim image of the host's Python (the one that pickled the model)."""
    return (
        os.environ.get("OCIBUILD_BASE")
        or f"docker.io/library/python:{sys.version_info[0]}.{sys.version_info[1]}-slim"
    )


def split_path_and_name(rest: str) -> tuple[Path, str | None]:
    """``PATH[:NAME]`` where PATH may itself hold no colon unless it exists as given."""
    if os.path.exists(rest) or ":" not in rest:
        return Path(rest), None
    path, name = rest.split(":", 1)
    return Path(path), name or None


@dataclass(frozen=True)
class Location:
    """A parsed ``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``, ``docker-archive:FILE[:NAME:TAG]`` or registry
    reference (``docker://HOST/REPO:TAG``, or bare): what ``--base`` and ``copy`` read and write."""

    transport: str  # "docker", "oci", "oci-archive", "docker-archive"
    text: str
    path: Path | None = None
    name: str | None = None  # the tag (oci, oci-archive) or NAME:TAG (docker-archive) after the path
    ref: Reference | None = None

    @classmethod
    def parse(cls, text: str, role: str = "image") -> Location:
        if text.startswith("oci:"):
            path, name = split_layout(text[4:])
            return cls("oci", text, path, name)
        for transport in ("oci-archive", "docker-archive"):
            if text.startswith(transport + ":"):
                path, name = split_path_and_name(text[len(transport) + 1 :])
                return cls(transport, text, path, name)
        scheme = text.split(":", 1)[0]
        if scheme in OTHER_TRANSPORTS or text == SCRATCH:
            raise BadReferenceError(
                f"{role} {text!r}: transport {scheme!r} is not supported (not a transport ocibuild reads); use "
                "oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:NAME:TAG] or docker://HOST/REPO:TAG"
            )
        return cls("docker", text, ref=parse_reference(text))


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
        from ..registry.pull import open_registry_image

        image = open_registry_image(loc.ref, platform, registry, store or BlobStore(), progress)
    if not platform.matches(image.platform):
        raise BaseImageError(
            f"base {ref} is for {image.platform}, not {platform}; pass --platform {image.platform} or another base"
        )
    return image


def registry_reference(ref: str) -> Reference | None:
    """The registry reference a ``--base`` names, or None for local transports and scratch (for binding
    credentials to the base's registry)."""
    if ref == SCRATCH or ref.split(":", 1)[0] in OTHER_TRANSPORTS:
        return None
    return Location.parse(ref, "base").ref


def split_layout(rest: str) -> tuple[Path, str | None]:
    # oci:DIR:TAG — the tag is after the last colon, if what follows has no slash (skopeo's rule).
    if ":" in rest and not os.path.isdir(rest):
        path, tag = rest.rsplit(":", 1)
        if "/" not in tag:
            return Path(path), tag or None
    return Path(rest), None
