"""Blobs and manifests of one registry repository as a ``BlobSource``, and an image in a registry as an ``Image``.

One source for every reader: with a ``BlobStore`` a blob is downloaded the first time it is opened, verified on its
way into the store (nothing enters the store unless it verifies) and served from the store from then on, so a
second build pulls nothing but the manifest; without one (``copy``) blobs stream straight through, verified. Either
way the source knows where its blobs live (``origin``), which lets a push to another repository of the same
registry mount them instead of uploading them.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterable

from ..events import Counted, Progress
from ..oci import media
from ..oci.descriptor import Descriptor, Index, Manifest, Platform, sniff_media_type
from ..oci.digest import Digest, Stream, VerifyingReader
from ..oci.image import BlobOrigin, Image, load_image
from ..oci.index import resolve_platform
from ..oci.name import Reference
from ..oci.store import BlobStore
from .client import RegistryClient
from .errors import TransientError
from .options import RegistryOptions, retry_delay
from .transport import Transport


class RegistrySource:
    """The blobs and child manifests of one repository.

    ``store``: pull each blob into it on first use (parallel callers pull each blob once), else stream.
    ``digests``: the blobs this source answers for (``has_blob``), when it must not claim any other (a registered
    model's source sits beside the local store's); None claims every blob. Manifests fetched already (the top one,
    reached by tag) are served from memory (``remember``)."""

    def __init__(
        self,
        client: RegistryClient,
        store: BlobStore | None = None,
        digests: Iterable[str] | None = None,
        progress: Progress | None = None,
    ):
        self.client = client
        self.store = store
        self.digests = None if digests is None else set(digests)
        self.progress = progress or Progress()
        self.origin: BlobOrigin | None = BlobOrigin(client.transport.host, client.repository)
        self._manifests: dict[Digest, bytes] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def remember(self, raw: bytes) -> None:
        """A manifest or index already fetched (by tag): served from memory when asked for by digest."""
        self._manifests[Digest.of(raw)] = raw

    def has_blob(self, desc: Descriptor) -> bool:
        if self.digests is None or desc.digest in self.digests:
            return True
        return self.store is not None and self.store.has(desc.digest)

    def open_blob(self, desc: Descriptor) -> Stream:
        if desc.media_type in media.MANIFESTS or desc.media_type in media.INDEXES:
            raw = self._manifests.get(desc.digest)
            if raw is None:
                raw, _ = self.client.get_manifest(desc.digest)  # verified against the digest
            return VerifyingReader(io.BytesIO(raw), desc.digest, desc.size, f"manifest in {self.client.what}")
        if self.store is None:
            return self.client.open_blob(desc)
        if not self.store.can_produce(desc.digest):
            with self._guard:
                lock = self._locks.setdefault(desc.digest, threading.Lock())
            with lock:
                if not self.store.can_produce(desc.digest):
                    self._pull(desc, self.store)
        return self.store.open(desc.digest, desc.size)

    def close(self) -> None:
        self.client.transport.close()

    def _pull(self, desc: Descriptor, store: BlobStore) -> None:
        policy = self.client.transport.options.retry
        counter = self.progress.bytes(f"pulling {desc.digest.short} from {self.client.what}", desc.size)
        attempt = 0
        while True:
            attempt += 1
            try:
                with self.client.open_blob(desc) as stream:
                    store.ingest(
                        Counted(stream, counter), desc.digest, desc.size, f"blob from {self.client.what}"
                    )
                break
            except TransientError:
                if attempt >= policy.blob_attempts:
                    raise
                time.sleep(retry_delay(attempt, None, policy))
        if desc.size > 64 << 10:
            counter.done()


def open_registry_image(
    ref: Reference,
    platform: Platform,
    options: RegistryOptions,
    store: BlobStore,
    progress: Progress | None = None,
) -> Image:
    """The image ``ref`` names for ``platform``, its blobs pulled through ``store``: the config is fetched and
    verified now, the layers when first opened."""
    client = RegistryClient(Transport(ref.registry, options), ref.repository)
    what = str(ref)
    raw, mt = client.get_manifest(ref.reference)
    mt = mt or sniff_media_type(raw, f"manifest of {what}")
    if mt in media.INDEXES:
        index = Index.parse(raw, f"index of {what}", mt)
        raw, mt = resolve_platform(list(index.manifests), RegistrySource(client), platform, what)
    manifest = Manifest.parse(raw, f"manifest of {what}", mt)
    digests = {str(manifest.config.digest), *(str(d.digest) for d in manifest.layers)}
    source = RegistrySource(client, store, digests, progress)
    return load_image(raw, source, what, mt)
