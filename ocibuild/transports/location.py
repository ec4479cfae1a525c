"""Where an image is: ``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``, ``docker-archive:FILE[:NAME:TAG]``,
``scratch`` or a registry reference, parsed once (the skopeo/podman transport convention).

Every command that names an image (``package --base``, ``copy``, ``inspect``) parses it here; nothing else looks
at a reference's prefix. Parsing touches no network and reads no file (a path is only checked for existence,
to tell ``DIR:TAG`` from a directory whose name has a colon).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadReferenceError
from ..oci.name import Reference, parse_reference

SCRATCH = "scratch"
# skopeo transports that name something other than a registry, which ocibuild does not read.
OTHER_TRANSPORTS = {"containers-storage", "dir", "docker-daemon", "ostree", "sif", "tarball"}


def split_path_and_name(rest: str) -> tuple[Path, str | None]:
    """``PATH[:NAME]`` where PATH may itself hold no colon unless it exists as given."""
    if os.path.exists(rest) or ":" not in rest:
        return Path(rest), None
    path, name = rest.split(":", 1)
    return Path(path), name or None


@dataclass(frozen=True)
class Location:
    """A parsed ``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``, ``docker-archive:FILE[:NAME:TAG]``, ``scratch`` or
    registry reference (``docker://HOST/REPO:TAG``, or bare): what ``--base``, ``copy`` and ``inspect`` read and
    ``copy`` and ``package`` write."""

    transport: str  # "docker", "oci", "oci-archive", "docker-archive", "scratch"
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
        if text == SCRATCH:
            return cls("scratch", text)
        scheme = text.split(":", 1)[0]
        if scheme in OTHER_TRANSPORTS:
            raise BadReferenceError(
                f"{role} {text!r}: transport {scheme!r} is not supported (not a transport ocibuild reads); use "
                "oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:NAME:TAG] or docker://HOST/REPO:TAG"
            )
        return cls("docker", text, ref=parse_reference(text))

    @property
    def is_local(self) -> bool:
        """A file or folder of this machine (or scratch): no registry to log in to."""
        return self.ref is None


def registry_reference(ref: str) -> Reference | None:
    """The registry reference a ``--base`` names, or None for local transports and scratch (for binding
    credentials to the base's registry)."""
    if ref.split(":", 1)[0] in OTHER_TRANSPORTS:
        return None
    return Location.parse(ref, "base").ref


def split_layout(rest: str) -> tuple[Path, str | None]:
    # oci:DIR:TAG — the tag is after the last colon, if what follows has no slash (skopeo's rule).
    if ":" in rest and not os.path.isdir(rest):
        path, tag = rest.rsplit(":", 1)
        if "/" not in tag:
            return Path(path), tag or None
    return Path(rest), None
