"""Push an ``Image`` or an ``ImageIndex`` to a registry: every blob made present (skip, mount or stream), then
the manifests' bytes.

Per blob, in a small thread pool: HEAD, and skip it if the registry has it; else mount it when its layer says it
lives in another repository of the same registry (``Layer.origin``); else upload it streamed from the image
(memory stays flat whatever the layer size). A blob upload that fails transiently is started over, a bounded
number of times. Only when every blob is confirmed does the manifest go up, as the exact bytes of
``image.digest``, under the reference's tag (and any extra tags); an index goes up only after all its images.
Container images, registered models and other artifacts all go up this way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from ..errors import UsageError
from ..events import Progress, human_size
from ..oci.descriptor import Descriptor
from ..oci.digest import Digest
from ..oci.image import Image, ImageIndex
from ..oci.name import Reference
from .client import RegistryClient
from .errors import TransientError
from .options import RegistryOptions, retry_delay
from .transport import Transport


class _Tally:
    """Bytes done across parallel blobs, for one progress count; per-blob lines are reported as they end."""

    def __init__(self, progress: Progress, label: str, total: int):
        self.progress = progress
        self.counter = progress.bytes(label, total)
        self.lock = threading.Lock()
        self.done = 0

    def add(self, n: int) -> None:
        with self.lock:
            self.done += n
            self.counter(self.done)

    def line(self, text: str) -> None:
        self.progress.step(text)


def push_image(
    image: Image,
    ref: Reference,
    options: RegistryOptions | None = None,
    progress: Progress | None = None,
    tags: Sequence[str] = (),
    client: RegistryClient | None = None,
) -> Digest:
    """Push ``image`` as ``ref`` (and ``tags`` in the same repository); returns the manifest digest. Blobs go up
    ``options.workers`` at a time. ``client``: a push client of ``ref``'s repository to use (and leave open), so
    that several pushes share one connection pool and one token."""
    options = options or RegistryOptions()
    progress = progress or Progress()
    if ref.digest and ref.digest != image.digest:
        raise UsageError(f"{ref}: the image's digest is {image.digest}; push it by tag or by that digest")
    own = client is None
    client = client or RegistryClient(Transport(ref.registry, options), ref.repository, push=True)
    try:
        blobs = list({d.digest: d for d in image.descriptors()}.values())
        total = sum(d.size for d in blobs)
        progress.step(f"pushing {len(blobs)} blobs ({human_size(total)}) to {ref.registry}/{ref.repository}")
        tally = _Tally(progress, f"pushing to {ref.registry}/{ref.repository}", total)
        with ThreadPoolExecutor(
            max_workers=max(1, min(options.workers, len(blobs))), thread_name_prefix="push"
        ) as pool:
            futures = [pool.submit(_push_blob, client, image, d, tally) for d in blobs]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for f in pending:
                f.cancel()
            for f in futures:
                if f.done() and not f.cancelled() and f.exception() is not None:
                    raise f.exception()  # type: ignore[misc]
        media_type = image.manifest.media_type
        digest = client.put_manifest(ref.tag or ref.digest or "latest", image.manifest.raw, media_type)
        for tag in tags:
            client.put_manifest(tag, image.manifest.raw, media_type)
        names = ", ".join([ref.tag or str(digest), *tags])
        tally.line(f"pushed {ref.registry}/{ref.repository} ({names}) {digest}")
        return digest
    finally:
        if own:
            client.transport.close()


def _push_blob(client: RegistryClient, image: Image, desc: Descriptor, tally: _Tally) -> str:
    label = f"  {desc.digest.short}  {human_size(desc.size):>9}"
    if client.has_blob(desc.digest):
        tally.add(desc.size)
        tally.line(f"{label}  exists")
        return "exists"
    location = None
    origin = image.origin_of(desc)
    if origin and origin.registry == client.transport.host and origin.repository != client.repository:
        location = client.mount_blob(desc.digest, origin.repository)
        if location is None:
            tally.add(desc.size)
            tally.line(f"{label}  mounted from {origin.repository}")
            return "mounted"
    policy = client.transport.options.retry
    for attempt in range(1, policy.blob_attempts + 1):
        sent = [0]

        def on_bytes(n: int, sent=sent) -> None:
            tally.add(n - sent[0])
            sent[0] = n

        start = time.monotonic()
        try:
            how = client.upload_blob(desc, lambda: image.open_blob(desc), on_bytes, location=location)
        except TransientError as e:
            tally.add(-sent[0])
            delay = retry_delay(attempt, e.retry_after, policy)  # a 429's Retry-After too
            if attempt == policy.blob_attempts or delay > policy.budget:
                raise
            time.sleep(delay)
            location = None
            continue
        secs = max(time.monotonic() - start, 1e-6)
        extra = " in chunks" if how == "chunked" else ""
        rate = f" in {secs:.1f} s ({human_size(desc.size / secs)}/s)" if desc.size >= 1 << 20 else ""
        tally.line(f"{label}  uploaded{extra}{rate}")
        return "uploaded"
    raise AssertionError("unreachable")


def check_push_access(ref: Reference, options: RegistryOptions) -> None:
    """Ask the registry for ``ref``'s repository with push rights (a HEAD of one blob): wrong or missing
    credentials fail here, in a second, rather than after a build that may take minutes."""
    client = RegistryClient(Transport(ref.registry, options), ref.repository, push=True)
    try:
        client.has_blob(Digest.of(b"{}"))
    finally:
        client.transport.close()


def push_index(
    index: ImageIndex,
    ref: Reference,
    options: RegistryOptions | None = None,
    progress: Progress | None = None,
    tags: Sequence[str] = (),
) -> Digest:
    """Push every image of ``index`` by digest, then the index's exact bytes as ``ref`` (and ``tags``)."""
    options = options or RegistryOptions()
    progress = progress or Progress()
    if ref.digest and ref.digest != index.digest:
        raise UsageError(f"{ref}: the index's digest is {index.digest}; push it by tag or by that digest")
    for image in index.images:  # children first, by digest: the index may only name what is there
        push_image(image, Reference(ref.registry, ref.repository, None, str(image.digest)), options, progress)
    client = RegistryClient(Transport(ref.registry, options), ref.repository, push=True)
    try:
        raw, media_type = index.index.raw, index.index.media_type
        digest = client.put_manifest(ref.tag or ref.digest or "latest", raw, media_type)
        for tag in tags:
            client.put_manifest(tag, raw, media_type)
    finally:
        client.transport.close()
    progress.step(f"pushed index {ref} {digest} ({len(index.images)} images)")
    return digest
