"""An image in a registry as an ``Image``: manifest (or index → platform), config, and blobs through the cache.

``open_registry_image`` fetches only the manifest and the config; a layer is downloaded the first time it is
opened, verified on its way into the local ``BlobStore`` (nothing enters the store unless it verifies), and served
from the store from then on, so a second build pulls nothing but the manifest. The source remembers where each of
its blobs lives (``blob_origin``), which lets a push to another repository of the same registry mount them.
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO

from ..events import Counted, Progress
from ..oci import media
from ..oci.descriptor import Descriptor, Index, Manifest, Platform, sniff_media_type
from ..oci.digest import VerifyingReader
from ..oci.image import Image, load_image
from ..oci.layout import resolve_platform
from ..oci.name import Reference
from ..oci.store import BlobStore
from .client import RegistryClient
from .errors import TransientError
from .transport import RegistryOptions, Transport, retry_delay


@dataclass(frozen=True)
class BlobOrigin:
    """A registry repository known to hold a blob."""

    registry: str
    repository: str


def blob_origin(source: object, desc: Descriptor) -> BlobOrigin | None:
    """Where ``source`` (any ``BlobSource``) got ``desc`` from, if it knows: sources may offer
    ``blob_origin(desc)``; a chain of sources (``.sources``) is asked member by member."""
    ask = getattr(source, "blob_origin", None)
    if callable(ask):
        return ask(desc)
    for member in getattr(source, "sources", ()) or ():
        if (found := blob_origin(member, desc)) is not None:
            return found
    return None


class RegistrySource:
    """Blobs of one repository, pulled into the store on first use (in parallel callers, each blob once)."""

    def __init__(self, client: RegistryClient, store: BlobStore, digests: set[str], progress: Progress):
        self.client = client
        self.store = store
        self.digests = set(digests)  # the blobs this image's manifest names: all the registry is asked for
        self.progress = progress
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def has_blob(self, desc: Descriptor) -> bool:
        return desc.digest in self.digests or self.store.has(desc.digest)

    def blob_origin(self, desc: Descriptor) -> BlobOrigin | None:
        if desc.digest in self.digests:
            return BlobOrigin(self.client.transport.host, self.client.repository)
        return None

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        if not self.store.has(desc.digest):
            with self._guard:
                lock = self._locks.setdefault(desc.digest, threading.Lock())
            with lock:
                if not self.store.has(desc.digest):
                    self._pull(desc)
        return self.store.open(desc.digest, desc.size)

    def _pull(self, desc: Descriptor) -> None:
        policy = self.client.transport.options.retry
        counter = self.progress.bytes(f"pulling {desc.digest.short} from {self.client.what}", desc.size)
        attempt = 0
        while True:
            attempt += 1
            try:
                with self.client.open_blob(desc) as stream:
                    self.store.ingest(
                        Counted(stream, counter), desc.digest, desc.size, f"blob from {self.client.what}"
                    )
                break
            except TransientError:
                if attempt >= 3:
                    raise
                time.sleep(retry_delay(attempt, None, policy))
        if desc.size > 64 << 10:
            counter.done()


class RegistryStream:
    """Blobs and child manifests of one repository, streamed from the registry and verified, never cached (a
    copy passes them straight on; ``resolve_platform`` reads an index's children through it). Knows where they
    live, so a push to the same registry mounts them."""

    def __init__(self, client: RegistryClient):
        self.client = client

    def open_blob(self, desc: Descriptor) -> BinaryIO:
        if desc.media_type in media.MANIFESTS or desc.media_type in media.INDEXES:
            raw, _ = self.client.get_manifest(desc.digest)  # verified against the digest
            return VerifyingReader(io.BytesIO(raw), desc.digest, desc.size, f"manifest in {self.client.what}")
        return self.client.open_blob(desc)

    def has_blob(self, desc: Descriptor) -> bool:
        return True

    def blob_origin(self, desc: Descriptor) -> BlobOrigin:
        return BlobOrigin(self.client.transport.host, self.client.repository)


def open_registry_image(
    ref: Reference,
    platform: Platform,
    options: RegistryOptions | None = None,
    store: BlobStore | None = None,
    progress: Progress | None = None,
) -> Image:
    """The image ``ref`` names for ``platform``; its config is fetched and verified, its layers on demand."""
    options = options or RegistryOptions()
    store = store or BlobStore()
    progress = progress or Progress(quiet=True)
    client = RegistryClient(Transport(ref.registry, options), ref.repository)
    what = str(ref)
    raw, mt = client.get_manifest(ref.reference)
    mt = mt or sniff_media_type(raw, f"manifest of {what}")
    if mt in media.INDEXES:
        index = Index.parse(raw, f"index of {what}", mt)
        raw, mt = resolve_platform(list(index.manifests), RegistryStream(client), platform, what)
    manifest = Manifest.parse(raw, f"manifest of {what}", mt)
    digests = {str(manifest.config.digest), *(str(d.digest) for d in manifest.layers)}
    source = RegistrySource(client, store, digests, progress)
    return load_image(raw, source, what, mt)
