"""Layers by the key of their inputs, in the local blob store: a hit skips every byte of the work.

A key (``oci.layer.cache_key`` for files, the dependencies' own key for wheels) names a small record of the
layer's descriptor and diff_id; the record counts only while the store can still produce the blob.
"""

from __future__ import annotations

from ..errors import InputError
from ..oci.descriptor import Descriptor
from ..oci.digest import Digest
from ..oci.layer import BuiltLayer
from ..oci.store import BlobStore


def cached_layer(store: BlobStore, key: str) -> BuiltLayer | None:
    doc = store.get_ref(key)
    if not doc:
        return None
    try:
        desc = Descriptor.from_json(doc["descriptor"], "cached layer")
        layer = BuiltLayer(desc, Digest(doc["diff_id"]))
    except (KeyError, TypeError, ValueError, InputError):
        return None
    return layer if store.can_produce(desc.digest) else None


def remember_layer(store: BlobStore, key: str, layer: BuiltLayer) -> None:
    """Record that the inputs behind ``key`` made ``layer``."""
    store.put_ref(key, {"descriptor": layer.descriptor.to_json(), "diff_id": str(layer.diff_id)})
