"""The registry layer cache against a real ``docker-registry`` (behind the tests' recording proxy): an entry made by
one builder is found by another with an empty local store; entries that are lost, garbled or unreachable cost a
rebuild (a miss), never an error; a read-only cache writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from ocibuild.cache.layers import LocalLayerCache, TieredLayerCache
from ocibuild.cache.records import TieredRecords
from ocibuild.cache.registry import CONFIG_TYPE, RegistryLayerCache, entry_tag, parse_cache_repo
from ocibuild.errors import UsageError
from ocibuild.events import Progress
from ocibuild.oci.digest import Digest, read_all
from ocibuild.oci.layer import LayerContents, write_layer
from ocibuild.oci.store import BlobStore
from tests.registry.images import FAST

FACTS = {"format": 1, "modules": {"numpy": "numpy"}}


def _cache(reg, repo: str, store: BlobStore, events: list | None = None, readonly: bool = False):
    progress = Progress(events.append) if events is not None else Progress()
    return RegistryLayerCache(parse_cache_repo(reg.ref(repo)), FAST, store, progress, readonly)


def _layer(tmp_path: Path, store: BlobStore, text: str = "weights"):
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "model.bin").write_text(text)
    contents = LayerContents()
    contents.add_file(src / "model.bin", "var/model.bin")
    return write_layer(contents, store)


def _warnings(events: list) -> list[str]:
    return [e.message for e in events if type(e).__name__ == "Warned"]


def test_an_entry_written_by_one_builder_is_found_by_another(registry, tmp_path):
    reg = registry.get("plain")
    built = _layer(tmp_path, BlobStore(tmp_path / "a"))
    writer = _cache(reg, "cache/found", BlobStore(tmp_path / "a"))
    recorded = writer.put("deps-" + "1" * 64, built, FACTS)
    assert recorded.origin is not None and recorded.origin.repository == "cache/found"  # a push mounts it

    fresh = BlobStore(tmp_path / "b")  # another runner: nothing local
    hit = _cache(reg, "cache/found", fresh).get("deps-" + "1" * 64)
    assert hit is not None and hit.facts == FACTS and hit.where == reg.ref("cache/found")
    assert (hit.layer.descriptor, hit.layer.diff_id) == (built.descriptor, built.diff_id)
    assert not fresh.is_stored(built.digest)  # a hit transfers nothing until the bytes are needed
    with hit.layer.open() as stream:  # then they come, verified, through the local store
        assert Digest.of(read_all(stream)) == built.digest
    assert fresh.is_stored(built.digest)
    assert _cache(reg, "cache/found", fresh).get("deps-" + "2" * 64) is None  # another key: a miss

    # What is in the registry: one image manifest per key, our config type, the layer under its own descriptor.
    raw = requests.get(
        f"{reg.url}/v2/cache/found/manifests/{entry_tag('deps-' + '1' * 64)}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10,
    ).json()  # fmt: skip
    assert raw["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert raw["config"]["mediaType"] == CONFIG_TYPE
    assert raw["layers"] == [built.descriptor.to_json()]


def test_a_lost_or_garbled_entry_is_a_miss(registry, tmp_path):
    reg = registry.get("plain")
    store = BlobStore(tmp_path / "a")
    cache = _cache(reg, "cache/lost", store)
    built = cache.put("layer-" + "3" * 64, _layer(tmp_path, store, "lost"))
    assert _cache(reg, "cache/lost", BlobStore(tmp_path / "b")).get("layer-" + "3" * 64) is not None
    # The registry lost the blob (deleted, or garbage-collected while the tag stayed): a miss, not a broken image.
    r = requests.delete(f"{reg.url}/v2/cache/lost/blobs/{built.digest}", timeout=10)
    assert r.status_code == 202, r.text
    events: list = []
    assert _cache(reg, "cache/lost", BlobStore(tmp_path / "c"), events).get("layer-" + "3" * 64) is None
    assert _warnings(events) == []

    # An entry under the key's tag that is not ours (another config type): a miss too, and written over.
    other = _cache(reg, "cache/garbled", store)
    key = "layer-" + "4" * 64
    layer = _layer(tmp_path, store, "garbled")
    other.put(key, layer)
    doc = requests.get(f"{reg.url}/v2/cache/garbled/manifests/{entry_tag(key)}", timeout=10,
                       headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).json()  # fmt: skip
    doc["config"]["mediaType"] = "application/vnd.oci.image.config.v1+json"
    r = requests.put(f"{reg.url}/v2/cache/garbled/manifests/{entry_tag(key)}", data=json.dumps(doc),
                     headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, timeout=10)  # fmt: skip
    assert r.status_code == 201, r.text
    assert _cache(reg, "cache/garbled", BlobStore(tmp_path / "d")).get(key) is None
    other.put(key, layer)
    assert _cache(reg, "cache/garbled", BlobStore(tmp_path / "e")).get(key) is not None


def test_an_unreachable_cache_repo_is_one_warning_and_the_build_goes_on(tmp_path):
    store = BlobStore(tmp_path / "a")
    events: list = []
    cache = RegistryLayerCache(parse_cache_repo("127.0.0.1:9/cache"), FAST, store, Progress(events.append))
    layer = _layer(tmp_path, store)
    assert cache.get("layer-" + "5" * 64) is None
    assert cache.put("layer-" + "5" * 64, layer) is layer  # not recorded, nothing raised
    assert cache.get("layer-" + "6" * 64) is None
    warnings = _warnings(events)
    assert len(warnings) == 1 and warnings[0].startswith("cannot read the cache repo 127.0.0.1:9/cache: ")
    assert warnings[0].endswith("; building without it")


def test_a_readonly_cache_reads_but_never_writes(registry, tmp_path):
    reg = registry.get("plain")
    store = BlobStore(tmp_path / "a")
    _cache(reg, "cache/ro", store).put("layer-" + "7" * 64, _layer(tmp_path, store, "shared"))
    reg.proxy.reset()
    readonly = _cache(reg, "cache/ro", BlobStore(tmp_path / "b"), readonly=True)
    assert readonly.get("layer-" + "7" * 64) is not None
    new = _layer(tmp_path, store, "untrusted")
    assert readonly.put("layer-" + "8" * 64, new) is new
    assert [r.method for r in reg.proxy.snapshot() if r.method not in ("GET", "HEAD")] == []
    assert _cache(reg, "cache/ro", BlobStore(tmp_path / "c")).get("layer-" + "8" * 64) is None


def test_tiered_cache_asks_the_local_store_first_and_writes_both(registry, tmp_path):
    reg = registry.get("plain")
    store = BlobStore(tmp_path / "a")
    tiered = TieredLayerCache(LocalLayerCache(store), _cache(reg, "cache/tiered", store))
    layer = tiered.put("layer-" + "9" * 64, _layer(tmp_path, store, "tiered"), FACTS)
    reg.proxy.reset()
    hit = tiered.get("layer-" + "9" * 64)
    assert (
        hit is not None and hit.where == "cached" and hit.facts == FACTS and hit.layer.digest == layer.digest
    )
    assert reg.proxy.snapshot() == []  # the local record answered
    assert _cache(reg, "cache/tiered", BlobStore(tmp_path / "b")).get("layer-" + "9" * 64) is not None


def test_the_cache_repo_is_a_repository():
    assert parse_cache_repo("registry.example.com/team/cache").repository == "team/cache"
    with pytest.raises(UsageError, match="name a repository .* without a tag or digest"):
        parse_cache_repo("registry.example.com/team/cache:1")


def test_records_are_shared_through_the_cache_repo(registry, tmp_path):
    """What a build read of a base (its Python, its files) is a record by the base's digests: a fresh runner gets
    it from the cache repo instead of downloading the base."""
    reg = registry.get("plain")
    first = BlobStore(tmp_path / "a")
    TieredRecords(first, _cache(reg, "cache/records", first)).put_ref("pyenv-" + "a" * 64, {"version": [3, 11]})
    fresh = BlobStore(tmp_path / "b")
    records = TieredRecords(fresh, _cache(reg, "cache/records", fresh))
    assert records.get_ref("pyenv-" + "a" * 64) == {"version": [3, 11]}
    assert fresh.get_ref("pyenv-" + "a" * 64) == {"version": [3, 11]}  # kept locally: asked once
    assert records.get_ref("pyenv-" + "b" * 64) is None
