"""Layers by the key of their inputs: a hit skips every byte of the work.

A key (``oci.layer.cache_key`` for files, the dependencies' own key for wheels) names a layer that those inputs
made. ``LayerCache`` is what a build asks; ``LocalLayerCache`` answers from the local blob store (a small record of
the layer's descriptor and diff_id, which counts only while the store can still produce the blob). A cache kept in
a registry, shared by a fleet of CI runners, is another ``LayerCache`` in this room.
"""

from __future__ import annotations

from typing import Protocol

from ..errors import FormatError
from ..oci.descriptor import Descriptor
from ..oci.digest import Digest
from ..oci.image import Layer, StoreSource
from ..oci.store import BlobStore


class LayerCache(Protocol):
    def get(self, key: str) -> Layer | None:
        """The layer the inputs behind ``key`` made, if it is known and its blob can be had; else None."""
        ...

    def put(self, key: str, layer: Layer) -> None:
        """Record that the inputs behind ``key`` made ``layer`` (whose blob is in the local store)."""
        ...


class LocalLayerCache:
    def __init__(self, store: BlobStore):
        self.store = store

    def get(self, key: str) -> Layer | None:
        doc = self.store.get_ref(key)
        if not doc:
            return None
        try:
            desc = Descriptor.from_json(doc["descriptor"], "cached layer")
            diff_id = Digest(doc["diff_id"])
        except (KeyError, TypeError, ValueError, FormatError):
            return None
        return Layer(desc, diff_id, StoreSource(self.store)) if self.store.can_produce(desc.digest) else None

    def put(self, key: str, layer: Layer) -> None:
        self.store.put_ref(key, {"descriptor": layer.descriptor.to_json(), "diff_id": str(layer.diff_id)})
