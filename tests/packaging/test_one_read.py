"""A cold build that writes a tarball or an OCI layout reads the model's files once (issue 16): the model layer
goes into the output as the build makes it. The output is the same, byte for byte, as one written from a warm cache,
and a build that fails leaves nothing at the destination."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

import pytest

from ocibuild import Environment, InferenceConfig, package
from ocibuild.api import Outputs
from ocibuild.errors import OcibuildError
from ocibuild.events import Transfer
from ocibuild.oci import tarstream
from ocibuild.oci.archive import open_oci_archive
from ocibuild.oci.descriptor import Platform
from ocibuild.oci.layer import DERIVE_MIN
from tests.conftest import require, run
from tests.test_pinned_digest import SCORE, write_base_layout

MODEL_SIZE = DERIVE_MIN + (3 << 20)  # a model layer kept as a recipe, not a copy: the case of a second read


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """The synthetic base, a score.py, and two models over the derived-layer size: weights that do not compress
    (a plain tar layer) and weights that do (gzip)."""
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    write_base_layout(tmp_path / "base")
    (tmp_path / "score.py").write_bytes(SCORE)
    (tmp_path / "random.bin").write_bytes(os.urandom(MODEL_SIZE))
    (tmp_path / "zeros.bin").write_bytes(bytes(range(64)) * (MODEL_SIZE // 64))
    return tmp_path


@pytest.fixture
def model_reads(monkeypatch):
    """How many times each file was opened to be packed into a layer (reading a derived layer packs it again)."""
    opened: dict[str, int] = {}
    real_open = open

    def counting(path, *args, **kwargs):
        opened[str(path)] = opened.get(str(path), 0) + 1
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(tarstream, "open", counting, raising=False)
    return opened


def _package(inputs: Path, model: str, cache: str, outputs: Outputs | None = None, **kw):
    return package(
        [inputs / model],
        InferenceConfig(inputs / "score.py", environment=Environment()),
        f"oci:{inputs / 'base'}:py311",
        cache=inputs / cache,
        skip_checks=["imports"],  # the synthetic base has no json module
        outputs=outputs,
        **kw,
    )


@pytest.mark.parametrize("model", ["random.bin", "zeros.bin"])
def test_a_cold_tarball_reads_the_model_once_and_is_the_warm_ones_bytes(inputs, model_reads, model):
    cold = inputs / "cold.tar"
    pkg = _package(inputs, model, "cache", Outputs(archives=[cold], tag="m:1"))
    assert model_reads[str(inputs / model)] == 1
    assert [p.name for p in inputs.iterdir() if p.name.startswith(".")] == []  # no temp file left

    warm = inputs / "warm.tar"
    again = _package(inputs, model, "cache", Outputs(archives=[warm], tag="m:1"))
    assert again.digest == pkg.digest
    assert model_reads[str(inputs / model)] == 2  # the warm build read nothing; writing its tarball read it once
    assert hashlib.sha256(cold.read_bytes()).digest() == hashlib.sha256(warm.read_bytes()).digest()

    image = open_oci_archive(cold, "1", Platform.parse("linux/amd64"))
    for layer in image.layers:  # every blob there, and its digest the manifest's
        with layer.open() as f:
            while f.read(1 << 20):
                pass
    with tarfile.open(cold) as tf:
        names = tf.getnames()
    model_layer = [a.layer.digest.hex for a in pkg.image.added if a.role == "model"]
    assert names[2] == f"blobs/sha256/{model_layer[0]}"  # right after the directories, warm or cold


def test_skopeo_reads_a_staged_tarball_whole(inputs):
    require("skopeo")
    out = inputs / "image.tar"
    pkg = _package(inputs, "random.bin", "cache", Outputs(archives=[out], tag="m:1"))
    copied = inputs / "copied"
    run(["skopeo", "copy", "--quiet", "--preserve-digests", f"oci-archive:{out}:1", f"oci:{copied}:1"])  # verifies every blob
    index = json.loads((copied / "index.json").read_text())
    assert index["manifests"][0]["digest"] == str(pkg.digest)


def test_a_cold_layout_reads_the_model_once_and_holds_what_a_warm_one_holds(inputs, model_reads):
    cold = inputs / "cold-layout"
    pkg = _package(inputs, "random.bin", "cache", Outputs(layouts=[cold], tag="m:1"))
    assert model_reads[str(inputs / "random.bin")] == 1
    assert [p.name for p in inputs.iterdir() if p.name.startswith(".")] == []

    warm = inputs / "warm-layout"
    _package(inputs, "random.bin", "cache", Outputs(layouts=[warm], tag="m:1"))
    assert model_reads[str(inputs / "random.bin")] == 2
    for blob in (warm / "blobs" / "sha256").iterdir():
        staged = cold / "blobs" / "sha256" / blob.name
        assert staged.read_bytes() == blob.read_bytes()
        assert hashlib.sha256(staged.read_bytes()).hexdigest() == blob.name
        assert staged.stat().st_mode & 0o777 == 0o644
    assert (cold / "index.json").read_bytes() == (warm / "index.json").read_bytes()
    assert str(pkg.digest) in (cold / "index.json").read_text()


@pytest.mark.parametrize("where", ["archives", "layouts"])
def test_a_build_that_fails_while_writing_the_model_leaves_nothing_at_the_output(inputs, where):
    class Stop(OcibuildError):
        pass

    def listener(event):
        if isinstance(event, Transfer) and event.label == "model layer" and event.done > 0:
            raise Stop("stopped while the model layer was being written")

    dest = inputs / "out" / ("image.tar" if where == "archives" else "layout")
    dest.parent.mkdir()
    with pytest.raises(Stop):
        _package(inputs, "random.bin", "cache", Outputs(**{where: [dest]}, tag="m:1"), progress=listener)
    assert list(dest.parent.iterdir()) == []


def test_a_cold_push_reads_the_model_once_and_never_resends_what_the_registry_has(inputs, model_reads, registry):
    """The model layer is kept in the cache while the build writes it; the push asks the registry, sends it from
    there, and the cache is left with its recipe only. A second cold build of the same model (a fresh cache, as a
    new CI runner) sends none of it. A pull gets every blob, each matching its digest."""
    reg = registry.get("plain")
    target = reg.ref("one-read/model:1")
    before = len(reg.proxy.snapshot())
    pkg = _package(inputs, "random.bin", "cache", Outputs(pushes=[target]))
    assert model_reads[str(inputs / "random.bin")] == 1
    model_layer = next(a.layer for a in pkg.image.added if a.role == "model")
    sent = reg.proxy.blob_bytes_uploaded(reg.proxy.snapshot()[before:])
    assert model_layer.size <= sent < model_layer.size + (8 << 20)  # the model once, and the small rest
    assert not (inputs / "cache" / "blobs" / "sha256" / model_layer.digest.hex).exists()  # its recipe only
    assert (inputs / "cache" / "derived" / f"{model_layer.digest.hex}.json").is_file()

    before = len(reg.proxy.snapshot())
    again = _package(inputs, "random.bin", "fresh-cache", Outputs(pushes=[reg.ref("one-read/model:2")]))
    assert again.digest == pkg.digest and model_reads[str(inputs / "random.bin")] == 2
    assert reg.proxy.blob_bytes_uploaded(reg.proxy.snapshot()[before:]) < 1 << 20  # SBOM and provenance only

    require("skopeo")
    copied = inputs / "pulled"
    run(["skopeo", "copy", "--quiet", "--preserve-digests", *reg.skopeo_args("src-"), f"docker://{target}",
         f"oci:{copied}:1"])  # fmt: skip
    index = json.loads((copied / "index.json").read_text())
    assert index["manifests"][0]["digest"] == str(pkg.digest)


def test_a_push_that_fails_leaves_the_cache_with_the_recipe_only(inputs, registry):
    from tests.registry.servers import Fault

    reg = registry.get("plain")
    reg.proxy.inject(Fault("PUT", "/manifests/", 400, times=10))
    try:
        with pytest.raises(OcibuildError):
            _package(inputs, "random.bin", "cache", Outputs(pushes=[reg.ref("one-read/refused:1")]))
    finally:
        reg.proxy.reset()
    blobs = inputs / "cache" / "blobs" / "sha256"
    assert not [p for p in blobs.iterdir() if p.stat().st_size >= DERIVE_MIN]
    assert list((inputs / "cache" / "tmp").iterdir()) == []


def test_a_cold_load_reads_the_model_once(inputs, model_reads, dockerd, monkeypatch):
    """--load streams the image into the engine from the layer the build kept while it made it (as a push does),
    not from the model's files again; the engine has the image the build made."""
    monkeypatch.setenv("DOCKER_HOST", dockerd.env["DOCKER_HOST"])
    pkg = _package(inputs, "random.bin", "cache", Outputs(load=True, tag="ocibuild-test/one-read:1"))
    assert model_reads[str(inputs / "random.bin")] == 1
    model_layer = next(a.layer for a in pkg.image.added if a.role == "model")
    assert not (inputs / "cache" / "blobs" / "sha256" / model_layer.digest.hex).exists()  # its recipe only
    loaded = dockerd.run("image", "inspect", "--format", "{{.Id}}", "ocibuild-test/one-read:1").stdout.strip()
    assert loaded == str(pkg.image.manifest.config.digest)


def test_without_sbom_or_provenance_a_cold_model_is_hashed_once_and_a_later_sbom_still_lists_it(
    inputs, model_reads, monkeypatch
):
    """Neither document asked for: the files' own sha256 (a second pass over the model's bytes) is not taken, and
    the tarball still gets the layer from the one read. A later build that wants an SBOM on the same cache writes
    the layer again for them, and gets them right."""
    from ocibuild.oci import layer as layer_module

    hashers = []
    real = layer_module._FileHasher
    monkeypatch.setattr(layer_module, "_FileHasher", lambda files: hashers.append(files) or real(files))
    out = inputs / "bare.tar"
    bare = _package(inputs, "random.bin", "cache", Outputs(archives=[out], tag="m:1"), sbom="none", provenance=False)
    assert hashers == [] and bare.result.contents.model_files == ()
    assert model_reads[str(inputs / "random.bin")] == 1
    image = open_oci_archive(out, "1", Platform.parse("linux/amd64"))
    assert image.digest == bare.digest
    for layer in image.layers:  # every blob whole, and its digest the manifest's
        with layer.open() as f:
            while f.read(1 << 20):
                pass

    full = _package(inputs, "random.bin", "cache")
    assert full.digest == bare.digest and len(hashers) == 1
    (listed,) = full.result.contents.model_files
    assert listed.sha256 == hashlib.sha256((inputs / "random.bin").read_bytes()).hexdigest()
    again = _package(inputs, "random.bin", "cache")
    assert again.result.contents.model_files == (listed,) and len(hashers) == 1  # now in the cache's record
