"""The layer cache keyed on inputs (issue 4): which edits are a miss, what a hit costs, and --no-cache."""

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from ocibuild.cache.layers import FreshLayerCache, LocalLayerCache
from ocibuild.events import Progress
from ocibuild.oci.layer import LayerContents, cache_key
from ocibuild.oci.store import BlobStore
from ocibuild.packaging import package
from ocibuild.packaging.package import PackageSpec, _model_layer


def _key(contents: LayerContents, codec: str = "gzip", mtime: int = 0, tool: str = "1.0") -> str:
    return cache_key(contents, codec, mtime=mtime, tool=tool)


def _contents(path: Path, dest: str = "var/azureml-app/azureml-models/m/1/model.bin") -> LayerContents:
    c = LayerContents()
    c.add_file(path, dest)
    return c


@pytest.fixture
def model(tmp_path) -> Path:
    p = tmp_path / "model.bin"
    p.write_bytes(os.urandom(4096))
    os.utime(p, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    return p


def _spec(model: Path, **kw) -> PackageSpec:
    return PackageSpec(models=(model,), entry_script=model.parent / "score.py", base="scratch", **kw)


def test_key_is_stable_for_the_same_inputs(model):
    assert _key(_contents(model)) == _key(_contents(model))


def test_touched_file_is_a_miss(model):
    before = _key(_contents(model))
    os.utime(model)  # same bytes, new mtime
    assert _key(_contents(model)) != before


def test_same_size_edit_with_a_new_mtime_is_a_miss(model):
    before = _key(_contents(model))
    data = bytearray(model.read_bytes())
    data[0] ^= 1
    model.write_bytes(bytes(data))  # same size, mtime now
    assert model.stat().st_size == 4096
    assert _key(_contents(model)) != before


def test_replaced_file_with_the_same_bytes_and_mtime_is_a_miss(model, tmp_path):
    """A new inode (e.g. the file was copied over) is not trusted to be the same file."""
    before = _key(_contents(model))
    copy = tmp_path / "copy.bin"
    shutil.copy2(model, copy)
    os.replace(copy, model)
    assert model.stat().st_mtime_ns == 1_700_000_000_000_000_000
    assert _key(_contents(model)) != before


def test_settings_are_part_of_the_key(model):
    base = _key(_contents(model))
    assert _key(_contents(model), "zstd") != base
    assert _key(_contents(model, "elsewhere/model.bin")) != base
    assert _key(_contents(model), mtime=1700000000) != base
    assert _key(_contents(model), tool="99.0") != base


def _count_writes(monkeypatch) -> list:
    """Calls of the model layer's writer (the only reader of model bytes)."""
    calls = []
    real = package.write_layer_with_file_digests

    def counting(*args, **kw):
        calls.append(args)
        return real(*args, **kw)

    monkeypatch.setattr(package, "write_layer_with_file_digests", counting)
    return calls


def test_hit_reads_nothing_and_miss_rebuilds(model, tmp_path, monkeypatch):
    store = BlobStore(tmp_path / "cache")
    calls = _count_writes(monkeypatch)
    quiet = Progress()
    first, files = _model_layer(_contents(model), _spec(model), store, LocalLayerCache(store), quiet)
    assert len(calls) == 1
    assert [(f.size, f.sha256) for f in files] == [(model.stat().st_size, hashlib.sha256(model.read_bytes()).hexdigest())]
    # a hit: the layer writer was not called, and the files' digests come from the cache's record
    assert _model_layer(_contents(model), _spec(model), store, LocalLayerCache(store), quiet) == (first, files)
    assert len(calls) == 1
    os.utime(model)
    again, _ = _model_layer(_contents(model), _spec(model), store, LocalLayerCache(store), quiet)
    assert len(calls) == 2 and again == first  # same bytes, same layer, but they had to be read to know it


def test_no_cache_rebuilds_and_a_missing_blob_is_a_miss(model, tmp_path, monkeypatch):
    store = BlobStore(tmp_path / "cache")
    calls = _count_writes(monkeypatch)
    quiet = Progress()
    built, _ = _model_layer(_contents(model), _spec(model), store, LocalLayerCache(store), quiet)
    no_cache = FreshLayerCache(LocalLayerCache(store))  # what a --no-cache build asks
    _model_layer(_contents(model), _spec(model, use_cache=False), store, no_cache, quiet)
    assert len(calls) == 2
    store.path(built.digest).unlink()  # the cache was cleaned: the ref alone is not enough
    assert _model_layer(_contents(model), _spec(model), store, LocalLayerCache(store), quiet)[0] == built
    assert len(calls) == 3


@pytest.mark.slow
def test_a_new_small_requirement_writes_only_the_small_layer(tmp_path, base_ref, example_model, monkeypatch):
    """The big distributions sit in layers of their own, found by their files: adding a small requirement
    installs again but compresses (and a push sends) only the layer of the small ones."""
    from ocibuild.api import Environment, InferenceConfig
    from ocibuild.api import package as api_package
    from ocibuild.packaging import package as packaging

    written: list[list[str]] = []
    real_write = packaging.write_layer

    def counting_write(contents, *args, **kwargs):
        written.append([e.path for e in contents.entries() if e.kind == "file"])
        return real_write(contents, *args, **kwargs)

    monkeypatch.setattr(packaging, "write_layer", counting_write)

    def deps_layers(requirements: Path) -> dict[str, str]:
        env = Environment(pip_requirements=requirements)
        pkg = api_package([example_model.model], InferenceConfig(example_model.score, environment=env), base_ref,
                          cache=tmp_path / "cache")  # fmt: skip
        return {
            a.created_by.rpartition(": ")[2]: str(a.layer.digest)
            for a in pkg.image.added
            if a.role == "dependencies"
        }

    first = deps_layers(example_model.requirements)
    assert list(first) == ["scipy", "the rest"]
    more = tmp_path / "requirements.txt"
    more.write_text(example_model.requirements.read_text() + "six==1.17.0\n")
    written.clear()
    second = deps_layers(more)
    assert second["scipy"] == first["scipy"] and second["the rest"] != first["the rest"]
    deps_written = [paths for paths in written if any("site-packages/" in p for p in paths)]
    assert len(deps_written) == 1 and not any("/scipy/" in p for p in deps_written[0])
    assert any(p.endswith("/six.py") for p in deps_written[0])
