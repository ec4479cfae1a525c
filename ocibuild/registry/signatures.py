"""cosign's signatures in a registry: the signature image under ``sha256-<hex>.sig`` beside the image, read, and
extended by one more signature on push (a signature already there stays, as cosign keeps them)."""

from __future__ import annotations

from ..events import Progress
from ..oci.descriptor import Manifest
from ..oci.digest import Digest, read_all
from ..oci.image import Image
from ..oci.name import Reference
from ..oci.signature import Signed, signature_image, signature_tag, signatures_in
from .client import RegistryClient
from .errors import NotFoundError
from .options import RegistryOptions
from .push import push_image
from .transport import Transport


def read_signatures(client: RegistryClient, digest: Digest) -> list[Signed]:
    """The signatures the registry holds for the manifest ``digest`` (none: an empty list)."""
    try:
        raw, mt = client.get_manifest(signature_tag(digest))
    except NotFoundError:
        return []
    manifest = Manifest.parse(raw, f"{client.what}:{signature_tag(digest)}", mt or None)

    def payload(desc) -> bytes:
        with client.open_blob(desc) as f:
            return read_all(f)

    return signatures_in(manifest, payload)


def signatures_image(client: RegistryClient, digest: Digest) -> Image | None:
    """The signature image of ``digest`` as it is in the registry, for copying it along; None when unsigned."""
    found = read_signatures(client, digest)
    return signature_image(found) if found else None


def push_signatures(
    signatures: list[Signed],
    digest: Digest,
    ref: Reference,
    options: RegistryOptions,
    progress: Progress,
    client: RegistryClient | None = None,
) -> Digest:
    """Add ``signatures`` to those of ``digest`` in ``ref``'s repository (one already there is kept once);
    returns the signature image's digest. ``client``: as for ``push_image``."""
    own = client is None
    client = client or RegistryClient(Transport(ref.registry, options), ref.repository, push=True)
    try:
        current = read_signatures(client, digest)
        merged = current + [s for s in signatures if s not in current]
        if merged == current:  # all there already (a copy of a signed image, again): nothing to send
            return signature_image(current).digest
        where = Reference(ref.registry, ref.repository, signature_tag(digest), None)
        return push_image(signature_image(merged), where, options, progress, client=client)
    finally:
        if own:
            client.transport.close()
