"""Small real images for registry tests: random layers in a ``BlobStore``, any manifest media type or JSON layout."""

from __future__ import annotations

import json
import os
import uuid

from ocibuild.oci import media
from ocibuild.oci.descriptor import Descriptor, canonical_json
from ocibuild.oci.digest import Digest
from ocibuild.oci.image import Image, StoreSource, load_image
from ocibuild.oci.store import BlobStore
from ocibuild.registry.options import RegistryOptions, RetryPolicy

FAST = RegistryOptions(retry=RetryPolicy(backoff=0.05, max_backoff=0.2))  # retries without long waits


def repo() -> str:
    return f"test/{uuid.uuid4().hex[:10]}"


def make_image(store: BlobStore, sizes, arch="amd64", media_type=media.OCI_MANIFEST, pretty=False) -> Image:
    layers = []
    for n in sizes:
        data = os.urandom(n)
        layers.append(Descriptor(media.OCI_LAYER_GZIP, store.put_bytes(data), n))
    config = canonical_json(
        {"architecture": arch, "os": "linux", "config": {},
         "rootfs": {"type": "layers", "diff_ids": [str(Digest.of(os.urandom(8))) for _ in layers]}}
    )  # fmt: skip
    cfg = Descriptor(media.OCI_CONFIG, store.put_bytes(config), len(config))
    doc = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": cfg.to_json(),
        "layers": [x.to_json() for x in layers],
    }
    raw = (json.dumps(doc, indent=3) + "\n").encode() if pretty else canonical_json(doc)
    return load_image(raw, StoreSource(store), "test image")
