"""Publishers: where an image or an index is written. One protocol, one implementation per destination.

``LayoutPublisher`` (an OCI layout), ``ArchivePublisher`` (the tarball that ``docker load``, podman and skopeo
read), ``RegistryPublisher`` (any OCI registry, images and indexes), ``transports.engine.EnginePublisher`` (a
running Docker or podman) and ``packaging.dockerfile.DockerfilePublisher`` (a ``docker build`` context) all answer
``check`` (can this entry go there? asked of every output before anything is written) and ``publish``.
``publisher_for`` is the one place that turns a destination ``Location`` into its publisher; ``publish_all``
writes one entry to several.

Nothing is re-encoded on the way: manifests and indexes go out as their exact bytes and blobs as they are, each
verified as it streams from its source. A destination is only named (tagged, ``index.json`` entry, archive renamed
into place) after every blob it needs is there, so a failed write leaves nothing half-written behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..errors import OcibuildError, OutputError, UsageError
from ..events import Progress
from ..oci.archive import StagedArchive, docker_image_of, write_archive
from ..oci.digest import Digest
from ..oci.image import Entry, Image, ImageIndex, Tagged, images_of, referrers_of
from ..oci.layout import StagedLayout, write_layout
from ..oci.name import ImageName, Reference, parse_reference
from ..oci.signature import Signer, payload, signatures_of
from ..registry.options import RegistryOptions
from .location import Location


class Publisher(Protocol):
    @property
    def destination(self) -> str:
        """How the user named it, for messages: ``--output image.tar``, ``oci:./layout``."""
        ...

    def check(self, entry: Entry) -> None:
        """Raise (``UsageError``) if ``entry`` cannot go there, before anything is written anywhere."""
        ...

    def publish(self, entry: Entry, progress: Progress) -> Digest:
        """Write ``entry``; returns the digest it has there (its own)."""
        ...


@dataclass(frozen=True)
class LayoutPublisher:
    root: Path
    names: tuple[ImageName, ...] = ()
    destination: str = ""
    staged: StagedLayout | None = field(default=None, compare=False)  # blobs the build already wrote for it

    def check(self, entry: Entry) -> None:
        pass

    def publish(self, entry: Entry, progress: Progress) -> Digest:
        write_layout([Tagged(entry, n) for n in self.names] or [Tagged(entry)], self.root, self.staged)
        progress.step(f"wrote OCI layout {self.root}{_beside(entry, 'oci:' + str(self.root), self.names)}")
        return entry.digest


@dataclass(frozen=True)
class ArchivePublisher:
    """The combined docker/OCI tarball. ``docker``: the destination was named as a docker archive, which holds
    single-platform container images only."""

    path: Path
    names: tuple[ImageName, ...] = ()
    append: bool = False
    docker: bool = False
    mtime: int = 0
    destination: str = ""
    staged: StagedArchive | None = field(default=None, compare=False)  # begun during the build, the model in it

    def check(self, entry: Entry) -> None:
        if not self.docker:
            return
        if isinstance(entry, ImageIndex):
            raise UsageError(
                f"{self.destination}: Docker archives hold single-platform images; copy one with --platform, "
                "or use oci-archive: for the whole index"
            )
        if not entry.is_container_image:
            raise UsageError(
                f"{self.destination}: {entry.name} is an OCI artifact, not an image; use oci-archive: or oci:"
            )

    def publish(self, entry: Entry, progress: Progress) -> Digest:
        size = sum(d.size for image in images_of(entry) for d in image.descriptors())
        counter = progress.bytes(f"writing {self.path}", size)
        tagged = [Tagged(entry, n) for n in self.names] or [Tagged(entry)]
        lead = [a.layer.descriptor for image in images_of(entry) for a in image.added if a.role == "model"]
        write_archive(tagged, self.path, self.append, self.mtime, lead, self.staged)
        counter.done()
        if note := _beside(entry, f"oci-archive:{self.path}", self.names):
            progress.step(f"wrote {self.path}{note}")
        if isinstance(entry, ImageIndex) and (first := docker_image_of(entry)) is not None:
            progress.warn(
                f"{self.destination or self.path}: holds the whole index (skopeo and OCI tools read it as "
                f"oci-archive:{self.path}); docker load takes one platform per name, its {first.platform} "
                "image: for every platform, push it or write an --oci-layout"
            )
        return entry.digest


@dataclass(frozen=True)
class RegistryPublisher:
    """A push: ``ref`` and extra ``tags`` in its repository; blobs skipped, mounted or streamed."""

    ref: Reference
    tags: tuple[str, ...] = ()
    options: RegistryOptions = RegistryOptions()
    destination: str = ""
    signer: Signer | None = None  # signs what it pushes, as cosign does (``oci.signature``)

    def __post_init__(self) -> None:
        for tag in self.tags:  # a bad tag fails before any upload
            parse_reference(f"{self.ref.registry}/{self.ref.repository}:{tag}")

    def preflight(self) -> None:
        """Before anything is built: the credentials given for this registry work."""
        from ..registry.push import check_push_access

        check_push_access(self.ref, self.options)

    def check(self, entry: Entry) -> None:
        if self.ref.digest and self.ref.digest != entry.digest:
            kind = "index" if isinstance(entry, ImageIndex) else "image"
            raise UsageError(
                f"{self.ref}: the {kind}'s digest is {entry.digest}; push it by tag or by that digest"
            )

    def publish(self, entry: Entry, progress: Progress) -> Digest:
        from ..registry.client import RegistryClient
        from ..registry.push import push_image, push_index
        from ..registry.referrers import push_referrers
        from ..registry.signatures import push_signatures
        from ..registry.transport import Transport

        client = RegistryClient(Transport(self.ref.registry, self.options), self.ref.repository, push=True)
        try:  # one client (one token) for everything that goes into this repository
            # first the documents and the signature: a tag never names an image whose SBOM or signature is missing
            if artifacts := referrers_of(entry):
                push_referrers(artifacts, self.ref, self.options, progress, client)
            signatures = signatures_of(entry)  # carried along by a copy
            if self.signer is not None:
                signatures.append(self.signer.sign(payload(f"{self.ref.registry}/{self.ref.repository}", entry.digest)))
                progress.step(f"signed {entry.digest} for {self.ref.registry}/{self.ref.repository}")
            if signatures:
                push_signatures(signatures, entry.digest, self.ref, self.options, progress, client)
            if isinstance(entry, Image):
                return push_image(entry, self.ref, self.options, progress, self.tags, client=client)
        finally:
            client.transport.close()
        return push_index(entry, self.ref, self.options, progress, self.tags)


def _beside(entry: Entry, where: str, names: tuple[ImageName, ...]) -> str:
    """What a layout or archive holding the entry's SBOM, provenance or signature (more ``index.json`` entries)
    asks of OCI readers."""
    if not referrers_of(entry) and entry.signature is None:
        return ""
    tag = next((n.ref_name for n in names if n.ref_name), None)
    return f" (its attestations beside it: OCI tools such as skopeo read the image as {where}:{tag})" if tag else ""


def publisher_for(
    dest: Location,
    names: Sequence[str] = (),
    *,
    options: RegistryOptions | None = None,
    append: bool = False,
    mtime: int = 0,
) -> Publisher:
    """The publisher for ``dest``, the image going under ``names`` there: tags of the destination repository for a
    registry; ``NAME:TAG`` (or a bare OCI tag) in a layout or an archive."""
    if dest.transport == "scratch":
        raise UsageError("scratch is the empty image, not a destination; name a registry, layout or archive")
    if append and dest.transport not in ("oci-archive", "docker-archive"):
        raise UsageError("--append is for archive destinations (oci-archive:, docker-archive:)")
    if dest.transport == "docker":
        assert dest.ref is not None
        return RegistryPublisher(dest.ref, tuple(names), options or RegistryOptions(), dest.text)
    assert dest.path is not None
    docker = dest.transport == "docker-archive"
    named = tuple(ImageName.parse(n) if docker or "/" in n or ":" in n else ImageName.tag(n) for n in names)
    if dest.transport == "oci":
        return LayoutPublisher(dest.path, named, dest.text)
    return ArchivePublisher(dest.path, named, append, docker, mtime, dest.text)


def publish_all(entry: Entry, publishers: Sequence[Publisher], progress: Progress) -> Digest:
    """Write ``entry`` to every publisher, in order, after checking that it can go to each. A failure names the
    output it happened at (and those already written, which are whole); that output holds nothing of it."""
    for publisher in publishers:
        publisher.check(entry)
    digest = entry.digest
    done: list[str] = []
    for publisher in publishers:
        try:
            digest = publisher.publish(entry, progress)
        except (OcibuildError, OSError) as e:
            if len(publishers) == 1:
                raise
            raise _failed_at(publisher.destination, e, done) from None
        done.append(publisher.destination)
    return digest


def _failed_at(destination: str, error: OcibuildError | OSError, done: list[str]) -> OcibuildError:
    """One of several outputs failed: the error, naming that output and those already written."""
    if isinstance(error, OSError):
        text = f"{error.strerror or error}" + (f" ({error.filename})" if error.filename else "")
    else:
        text = str(error)
    text = f"{destination}: {text}"
    if done:
        text += f" (already written, and whole: {', '.join(done)})"
    failed = OutputError(text)
    if isinstance(error, OcibuildError):
        failed.exit_code = error.exit_code
    return failed
