"""Registry image references: parse and normalise them the way Docker does.

``python:3.11`` → ``docker.io/library/python:3.11``; ``host:5000/team/app@sha256:…``; the first path component
is a registry host only if it has a dot or a colon or is ``localhost`` (Docker's rule). No network here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import BadReferenceError
from .digest import is_digest

DOCKER_HUB = "docker.io"
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", re.ASCII)
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_HOST = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$"
)


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/`` in the API: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    @property
    def familiar(self) -> str:
        """The short form Docker shows (``python:3.11``, ``user/app:1``)."""
        repo = self.repository
        if self.registry == DOCKER_HUB:
            repo = repo.removeprefix("library/")
            name = repo
        else:
            name = f"{self.registry}/{repo}"
        if self.tag:
            name += f":{self.tag}"
        if self.digest:
            name += f"@{self.digest}"
        return name

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.registry, self.repository, tag, None)


def parse_reference(text: str, default_tag: str | None = "latest") -> Reference:
    """Parse ``[host[:port]/]path[:tag][@sha256:…]``; raises ``BadReferenceError`` with what is wrong."""
    original = text
    text = text.removeprefix("docker://")
    if not text or text != text.strip():
        raise BadReferenceError(f"image reference {original!r} is empty or has spaces; use host/repo:tag")
    text, at, digest = text.partition("@")
    if at and not is_digest(digest):
        raise BadReferenceError(f"image reference {original!r}: {digest!r} is not a sha256:<64 hex> digest")
    text, tag = _split_tag(text, original)
    registry, repository = _split_repository(text, original)
    if tag is None and not digest:
        tag = default_tag
    return Reference(registry, repository, tag, digest or None)


def _split_tag(text: str, original: str) -> tuple[str, str | None]:
    """``name:tag`` → (name, tag); a colon before the last slash is a port, not a tag."""
    slash, colon = text.rfind("/"), text.rfind(":")
    if colon <= slash:
        return text, None
    tag = text[colon + 1 :]
    if not _TAG.fullmatch(tag):
        raise BadReferenceError(
            f"image reference {original!r}: tag {tag!r} is not valid (letters, digits, _ . -)"
        )
    return text[:colon], tag


def _split_repository(text: str, original: str) -> tuple[str, str]:
    """The registry and the repository, normalised as Docker does (``python`` → docker.io, library/python)."""
    parts = text.split("/")
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        if not _HOST.fullmatch(first):
            raise BadReferenceError(f"image reference {original!r}: {first!r} is not a valid registry host")
        registry, path = first, parts[1:]
    else:
        registry, path = DOCKER_HUB, parts
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and len(path) == 1:
        path = ["library", *path]
    for comp in path:
        if not _COMPONENT.fullmatch(comp):
            raise BadReferenceError(
                f"image reference {original!r}: repository part {comp!r} must be lowercase letters, digits and "
                "separators (. _ -)"
            )
    repository = "/".join(path)
    if len(repository) > 255:
        raise BadReferenceError(
            f"image reference {original!r}: repository name is longer than 255 characters"
        )
    return registry, repository


@dataclass(frozen=True)
class ImageName:
    """A name to give an image in an archive or layout: ``repo_tag`` for Docker's ``RepoTags``, ``ref_name`` and
    ``full`` for OCI's ``index.json`` (``org.opencontainers.image.ref.name``, ``io.containerd.image.name``)."""

    repo_tag: str | None = None
    ref_name: str | None = None
    full: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageName:
        """``NAME[:TAG]`` as Docker reads it: all three names."""
        ref = parse_reference(text)
        return cls(repo_tag=ref.familiar, ref_name=ref.tag or "latest", full=str(ref))

    @classmethod
    def tag(cls, tag: str) -> ImageName:
        """A bare OCI tag, as skopeo's ``oci:DIR:TAG`` names an image."""
        return cls(ref_name=tag)
