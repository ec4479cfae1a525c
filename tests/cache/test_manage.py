"""The local cache, managed: ``cache ls`` lists what a build left, ``cache prune`` removes the least recently used
blobs down to a size, and leaves what a running build may be using."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ocibuild.cache.layers import LocalLayerCache
from ocibuild.cache.manage import list_entries, parse_size, prune
from ocibuild.errors import UsageError
from ocibuild.events import human_size
from ocibuild.oci.layer import LayerContents, write_layer
from ocibuild.oci.store import BlobStore
from tests.conftest import run

DAY = 86400


def _layer(store: BlobStore, src: Path, size: int, derive: bool = False):
    src.mkdir(parents=True, exist_ok=True)
    (src / "data.bin").write_bytes(os.urandom(size))
    contents = LayerContents()
    contents.add_file(src / "data.bin", "data.bin")
    return write_layer(contents, store, "none" if not derive else "gzip", derive=derive)


def _age(store: BlobStore, digest, days: float) -> None:
    t = time.time() - days * DAY
    os.utime(store.path(digest), (t, t))


def test_parse_size():
    assert (
        parse_size("20G") == 20 << 30 and parse_size("500MiB") == 500 << 20 and parse_size("1.5gb") == 3 << 29
    )
    assert parse_size("4096") == 4096
    for bad in ("", "1X", "-1G", "G"):
        with pytest.raises(UsageError, match="give a size such as 20G"):
            parse_size(bad)


def test_prune_removes_the_least_recently_used_first(tmp_path):
    store = BlobStore(tmp_path / "cache")
    cache = LocalLayerCache(store)
    old, mid, new = (_layer(store, tmp_path / n, 100_000) for n in ("old", "mid", "new"))
    for layer, key, days in ((old, "layer-old", 3), (mid, "layer-mid", 2), (new, "layer-new", 1)):
        cache.put(key, layer)
        _age(store, layer.digest, days)
    assert cache.get("layer-old") is not None  # a hit is a use: "old" is now the most recent
    listed = list_entries(store)
    assert [e.digest for e in listed] == [old.digest, new.digest, mid.digest]
    assert all(e.what == "layer" for e in listed)

    result = prune(store, 150_000)
    assert [e.digest for e in result.removed] == [mid.digest, new.digest] and result.kept_recent == 0
    assert store.is_stored(old.digest) and not store.is_stored(mid.digest) and not store.is_stored(new.digest)
    assert cache.get("layer-old") is not None
    assert store.get_ref("layer-mid") is None and store.get_ref("layer-new") is None  # records of gone blobs
    assert prune(store, 1 << 30).removed == []


def test_a_derived_blob_whose_files_changed_is_stale_and_pruned(tmp_path):
    store = BlobStore(tmp_path / "cache")
    layer = _layer(store, tmp_path / "model", 70 << 20, derive=True)  # big enough to be derived, not copied
    assert not store.is_stored(layer.digest)
    [entry] = list_entries(store)
    assert entry.size == 0 and "made again from your files" in entry.what
    (tmp_path / "model" / "data.bin").write_bytes(b"edited")
    [entry] = list_entries(store)
    assert "stale" in entry.what
    prune(store, 1 << 30)
    assert list_entries(store) == []


def test_prune_leaves_what_a_running_build_may_use(tmp_path):
    root = tmp_path / "cache"
    store = BlobStore(root)
    old, recent = _layer(store, tmp_path / "old", 100_000), _layer(store, tmp_path / "recent", 100_000)
    _age(store, old.digest, 2)
    store.close()  # this test's own hold: prune would count it as a running build
    # Another process has the cache open, as a build does for its whole run.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from ocibuild.oci.store import BlobStore; "
         f"s = BlobStore({str(root)!r}); print('open', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "open"
        result = prune(BlobStore(root), 0)
        assert [e.digest for e in result.removed] == [old.digest] and result.kept_recent == 1
        assert (root / "blobs" / "sha256" / recent.digest.hex).is_file()
    finally:
        holder.kill()
        holder.wait()
    result = prune(BlobStore(root), 0)  # nobody else has it open: everything over the size goes
    assert [e.digest for e in result.removed] == [recent.digest]


def test_the_commands(tmp_path):
    root = tmp_path / "cache"
    store = BlobStore(root)
    layer = _layer(store, tmp_path / "a", 2 << 20)
    LocalLayerCache(store).put("deps-" + "0" * 64, layer)
    store.close()
    ocibuild = [sys.executable, "-m", "ocibuild", "cache"]
    ls = run([*ocibuild, "ls", "--cache", root]).stdout.splitlines()
    assert ls[0].split() == ["LAST", "USED", "SIZE", "DIGEST", "WHAT"]
    assert ls[1].split()[-4:] == ["MB", layer.digest.short, "dependencies", "layer"]
    assert ls[-1] == f"1 blob, {human_size(layer.size)} in {root}"
    out = run([*ocibuild, "prune", "--max-size", "1M", "--cache", root]).stdout
    assert out == f"removed 1 blob ({human_size(layer.size)}); {root} holds 0 B\n"
    bad = run([*ocibuild, "prune", "--max-size", "lots", "--cache", root], check=False)
    assert bad.returncode == 2 and bad.stderr == (
        "ocibuild: error: --max-size 'lots': give a size such as 20G, 500M or 1048576\n"
    )
    assert (
        run([*ocibuild, "ls", "--cache", tmp_path / "none"]).stdout == f"{tmp_path / 'none'}: no cache yet\n"
    )
