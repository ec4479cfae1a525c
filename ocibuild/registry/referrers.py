"""Artifacts that refer to an image (SBOMs, provenance, signatures), pushed and listed the OCI 1.1 way.

A referrer is a manifest whose ``subject`` is the image's descriptor. A registry with the referrers API indexes it
when it is pushed; one without (CNCF distribution 2.8 has none) gets the distribution spec's referrers tag schema:
an image index under the tag ``sha256-<hex of the subject>`` that lists every referrer, read, extended and put
back by the client. Listing asks the API first and falls back to that tag.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..events import Progress
from ..oci import media
from ..oci.descriptor import Descriptor, Index, Manifest
from ..oci.digest import Digest
from ..oci.image import Image
from ..oci.name import Reference
from .client import RegistryClient
from .errors import NotFoundError
from .options import RegistryOptions
from .push import push_image
from .transport import Transport


def referrers_tag(subject: Digest) -> str:
    """The referrers tag schema's tag for ``subject``: ``<algorithm>-<hex>``."""
    return str(subject).replace(":", "-")


def referrer_descriptor(artifact: Image) -> Descriptor:
    """How a referrers index lists an artifact: its manifest's descriptor with its artifactType and annotations."""
    manifest = artifact.manifest
    kind = manifest.artifact_type or manifest.config.media_type
    return manifest.descriptor(annotations=dict(manifest.annotations), artifact_type=kind)


def push_referrers(
    artifacts: Sequence[Image],
    ref: Reference,
    options: RegistryOptions,
    progress: Progress,
    client: RegistryClient | None = None,
) -> None:
    """Push each artifact by digest into ``ref``'s repository (its blobs first), then, where the registry has no
    referrers API, add it to its subject's referrers tag index. ``client``: as for ``push_image``."""
    by_subject: dict[Digest, list[Image]] = {}
    own = client is None
    client = client or RegistryClient(Transport(ref.registry, options), ref.repository, push=True)
    try:
        for artifact in artifacts:
            subject = artifact.manifest.subject
            if subject is None:
                raise ValueError(f"{artifact.name} has no subject: it refers to nothing")
            if not client.has_manifest(artifact.digest):  # pushed before: nothing to send
                where = Reference(ref.registry, ref.repository, None, str(artifact.digest))
                push_image(artifact, where, options, progress, client=client)
            by_subject.setdefault(subject.digest, []).append(artifact)
        for subject_digest, mine in by_subject.items():
            if client.get_referrers(subject_digest) is not None:
                continue  # the registry indexed them when they were pushed
            _add_to_tag_index(client, subject_digest, [referrer_descriptor(a) for a in mine])
    finally:
        if own:
            client.transport.close()


def _add_to_tag_index(client: RegistryClient, subject: Digest, added: list[Descriptor]) -> None:
    tag = referrers_tag(subject)
    try:
        raw, mt = client.get_manifest(tag)
        current = list(Index.parse(raw, f"{client.what}:{tag}", mt or None).manifests)
    except NotFoundError:
        current = []
    digests = {d.digest for d in added}
    merged = [d for d in current if d.digest not in digests] + added
    if [d.digest for d in merged] == [d.digest for d in current]:
        return
    client.put_manifest(tag, Index.build(merged).raw, media.OCI_INDEX)


def list_referrers(client: RegistryClient, subject: Digest, artifact_type: str | None = None) -> list[Descriptor]:
    """The manifests that refer to ``subject`` (through the API, else the tag schema), of ``artifact_type`` if given."""
    raw = client.get_referrers(subject)
    if raw is None:
        try:
            raw, _ = client.get_manifest(referrers_tag(subject))
        except NotFoundError:
            return []
    found = list(Index.parse(raw, f"{client.what}@{subject} referrers").manifests)
    return [d for d in found if artifact_type is None or d.artifact_type == artifact_type]


def fetch_referrer(client: RegistryClient, desc: Descriptor) -> Manifest:
    raw, mt = client.get_manifest(str(desc.digest))
    return Manifest.parse(raw, f"{client.what}@{desc.digest}", mt or None)
