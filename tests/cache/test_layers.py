"""The local layer cache as a build sees it, and ``--no-cache``'s view of it (``FreshLayerCache``)."""

from __future__ import annotations

from ocibuild.cache.layers import THIS_BUILD, FreshLayerCache, LocalLayerCache
from ocibuild.oci.layer import LayerContents, write_layer
from ocibuild.oci.store import BlobStore


def _layer(tmp_path, store: BlobStore, text: str):
    src = tmp_path / f"{text}.txt"
    src.write_text(text)
    contents = LayerContents()
    contents.add_file(src, f"data/{text}.txt")
    return write_layer(contents, store)


def test_no_cache_ignores_earlier_builds_but_reuses_what_this_build_made(tmp_path):
    store = BlobStore(tmp_path / "cache")
    local = LocalLayerCache(store)
    earlier = local.put("key-a", _layer(tmp_path, store, "a"))
    assert local.get("key-a").layer.digest == earlier.digest

    fresh = FreshLayerCache(local)
    assert fresh.get("key-a") is None  # made by an earlier build: --no-cache makes it again
    made = fresh.put("key-b", _layer(tmp_path, store, "b"))
    hit = fresh.get("key-b")  # another platform of this build asks for the same layer
    assert hit is not None and hit.layer.digest == made.digest and hit.where == THIS_BUILD
    assert local.get("key-b").layer.digest == made.digest  # and the next build finds it too
    assert not fresh.shared
