"""Layers by the key of their inputs: a hit skips every byte of the work.

A key (``oci.layer.cache_key`` or ``content_key`` for files, the dependencies' own key for wheels) names a layer
that those inputs made. ``LayerCache`` is what a build asks; ``LocalLayerCache`` answers from the local blob store
(a small record of the layer's descriptor and diff_id, which counts only while the store can still produce the
blob); ``cache.registry.RegistryLayerCache`` answers from a registry repository a fleet of CI runners shares, and
``TieredLayerCache`` asks the local one first.

A record also keeps the builder's ``facts`` about the layer (what the checks need to know of the dependencies'
files), so a layer found in a cache is checked against the base without its files being read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..errors import FormatError
from ..oci.descriptor import Descriptor
from ..oci.digest import Digest
from ..oci.image import Layer, StoreSource
from ..oci.store import BlobStore


@dataclass(frozen=True)
class CachedLayer:
    layer: Layer
    facts: dict | None = None  # what the builder recorded with the layer, if anything
    where: str = "cached"  # for messages: "cached", or the registry repository it came from


class LayerCache(Protocol):
    # Whether another machine reads the keys: then a key must name contents (file digests), never a file's
    # identity on this machine (path, inode, mtime), which is all a local cache needs.
    shared: bool

    def get(self, key: str) -> CachedLayer | None:
        """The layer the inputs behind ``key`` made, if it is known and its blob can be had; else None."""
        ...

    def put(self, key: str, layer: Layer, facts: dict | None = None) -> Layer:
        """Record that the inputs behind ``key`` made ``layer`` (whose blob is in the local store); returns the
        layer as the build goes on with it (a cache that now holds the blob elsewhere says where: its origin)."""
        ...


class LocalLayerCache:
    shared = False

    def __init__(self, store: BlobStore):
        self.store = store

    def get(self, key: str) -> CachedLayer | None:
        doc = self.store.get_ref(key)
        if not doc:
            return None
        try:
            desc = Descriptor.from_json(doc["descriptor"], "cached layer")
            diff_id = Digest(doc["diff_id"])
            facts = doc.get("facts")
        except (KeyError, TypeError, ValueError, FormatError):
            return None
        if not self.store.can_produce(desc.digest):
            return None
        self.store.touch(desc.digest)  # its last use: what ``cache prune`` keeps
        return CachedLayer(
            Layer(desc, diff_id, StoreSource(self.store)), facts if isinstance(facts, dict) else None
        )

    def put(self, key: str, layer: Layer, facts: dict | None = None) -> Layer:
        doc: dict = {"descriptor": layer.descriptor.to_json(), "diff_id": str(layer.diff_id)}
        if facts is not None:
            doc["facts"] = facts
        self.store.put_ref(key, doc)
        return layer


class TieredLayerCache:
    """The local cache first, then a shared one; what is built goes to both."""

    shared = True

    def __init__(self, local: LocalLayerCache, remote: LayerCache):
        self.local, self.remote = local, remote

    def get(self, key: str) -> CachedLayer | None:
        return self.local.get(key) or self.remote.get(key)

    def put(self, key: str, layer: Layer, facts: dict | None = None) -> Layer:
        return self.remote.put(key, self.local.put(key, layer, facts), facts)


class FreshLayerCache:
    """``--no-cache``: nothing an earlier build made is used, but a layer made earlier in this same build is (a
    multi-platform build makes its server, model and app layers once: they are the same for every platform).
    What is made still goes to ``inner``, for the next build."""

    def __init__(self, inner: LayerCache):
        self.inner = inner
        self.shared = inner.shared
        self._made: dict[str, CachedLayer] = {}

    def get(self, key: str) -> CachedLayer | None:
        return self._made.get(key)

    def put(self, key: str, layer: Layer, facts: dict | None = None) -> Layer:
        made = self.inner.put(key, layer, facts)
        self._made[key] = CachedLayer(made, facts, where=THIS_BUILD)
        return made


THIS_BUILD = "this build"  # CachedLayer.where of a layer made earlier in the same build
