"""The model artifact format, without a network: reproducible, at the image's model path, and strictly read back."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from ocibuild.errors import FormatError, UsageError
from ocibuild.models.artifact import (
    ARTIFACT_TYPE,
    EMPTY_DESCRIPTOR,
    FILES,
    NAME,
    PATH,
    build_artifact,
    check_name,
    check_version,
    read_model_manifest,
)
from ocibuild.models.reference import is_model_reference
from ocibuild.oci import media
from ocibuild.oci.descriptor import Descriptor, Manifest, canonical_json
from ocibuild.oci.digest import Digest
from ocibuild.oci.store import BlobStore
from ocibuild.packaging.package import APP_ROOT


@pytest.fixture
def model_file(tmp_path):
    p = tmp_path / "src" / "model.pkl"
    p.parent.mkdir()
    p.write_bytes(b"weights " * 1000)
    return p


def layer_names(store: BlobStore, desc: Descriptor) -> list[str]:
    with store.open(desc.digest, desc.size) as f:
        data = f.read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as t:
        return t.getnames()


def test_same_model_same_digest_in_any_cache(model_file, tmp_path):
    a = build_artifact(model_file, "ridge", "3", BlobStore(tmp_path / "c1"), framework="sklearn")
    b = build_artifact(model_file, "ridge", "3", BlobStore(tmp_path / "c2"), framework="sklearn")
    assert a.manifest.raw == b.manifest.raw and a.info.digest == b.info.digest
    # Any difference in what is recorded is a different artifact.
    c = build_artifact(model_file, "ridge", "4", BlobStore(tmp_path / "c1"), framework="sklearn")
    d = build_artifact(model_file, "ridge", "3", BlobStore(tmp_path / "c1"))
    assert len({a.info.digest, c.info.digest, d.info.digest}) == 3


def test_created_follows_source_date_epoch(model_file, tmp_path):
    a = build_artifact(model_file, "ridge", "3", BlobStore(tmp_path / "c"))
    assert a.manifest.annotations["org.opencontainers.image.created"] == "1970-01-01T00:00:00Z"
    b = build_artifact(model_file, "ridge", "3", BlobStore(tmp_path / "c"), epoch=1700000000)
    assert b.manifest.annotations["org.opencontainers.image.created"] == "2023-11-14T22:13:20Z"
    assert b.info.digest != a.info.digest


def test_manifest_is_an_image_spec_1_1_artifact_with_the_layer_at_the_image_path(model_file, tmp_path):
    store = BlobStore(tmp_path / "c")
    built = build_artifact(model_file, "ridge", "3", store, description="d")
    doc = json.loads(built.manifest.raw)
    assert built.manifest.raw == canonical_json(doc)
    assert doc["artifactType"] == ARTIFACT_TYPE
    assert doc["config"] == EMPTY_DESCRIPTOR.to_json()
    assert (
        EMPTY_DESCRIPTOR.digest == "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    )
    (layer,) = doc["layers"]
    assert layer["mediaType"] == media.OCI_LAYER_GZIP  # text compresses
    assert layer["annotations"] == {"org.opencontainers.image.title": "ridge-3.tar.gz"}
    assert "io.deis.oras.content.unpack" not in layer["annotations"]
    assert doc["annotations"][PATH] == f"/{APP_ROOT}/azureml-models/ridge/3"
    assert json.loads(doc["annotations"][FILES]) == ["model.pkl"]
    names = layer_names(store, built.layer.descriptor)
    assert names[-1] == f"{APP_ROOT}/azureml-models/ridge/3/model.pkl"
    assert built.info.layer.digest == built.layer.descriptor.digest


def test_incompressible_weights_are_a_plain_tar_titled_so(tmp_path):
    import os

    weights = tmp_path / "w.bin"
    weights.write_bytes(os.urandom(1 << 20))
    built = build_artifact(weights, "w", "1", BlobStore(tmp_path / "c"))
    assert built.layer.descriptor.media_type == media.OCI_LAYER
    assert built.layer.diff_id == built.layer.descriptor.digest
    assert (
        json.loads(built.manifest.raw)["layers"][0]["annotations"]["org.opencontainers.image.title"]
        == "w-1.tar"
    )


def test_same_layer_as_package_builds_for_the_same_model(model_file, tmp_path):
    """The point of the format: ``package model.pkl --name ridge --model-version 3`` makes the very same blob."""
    from ocibuild.models.placement import add_model
    from ocibuild.oci.layer import LayerContents, write_layer

    store = BlobStore(tmp_path / "c")
    contents = LayerContents()
    add_model(contents, model_file, "ridge", "3")
    assert (
        write_layer(contents, store, "gzip").descriptor.digest
        == build_artifact(model_file, "ridge", "3", store).layer.descriptor.digest
    )


def test_folder_models_keep_their_folder(tmp_path):
    d = tmp_path / "bert"
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "sub" / "vocab.txt").write_text("a b c")
    store = BlobStore(tmp_path / "c")
    built = build_artifact(d, "bert", "1", store)
    assert json.loads(built.manifest.annotations[FILES]) == ["bert"]
    assert f"{APP_ROOT}/azureml-models/bert/1/bert/sub/vocab.txt" in layer_names(
        store, built.layer.descriptor
    )


@pytest.mark.parametrize("name", ["Ridge", "-x", "a/b", "", "x" * 65, "a b"])
def test_bad_names_are_refused(name):
    with pytest.raises(UsageError, match="model name"):
        check_name(name)


@pytest.mark.parametrize("version", ["", ".1", "-1", "1/2", "v 1", "x" * 129])
def test_bad_versions_are_refused(version):
    with pytest.raises(UsageError, match="model version"):
        check_version(version)


def _manifest(**changes) -> bytes:
    layer = Descriptor(media.OCI_LAYER, Digest.of(b"x"), 1)
    annotations = {
        NAME: "ridge",
        "io.ocibuild.model.version": "3",
        PATH: f"/{APP_ROOT}/azureml-models/ridge/3",
    }
    annotations.update(changes.pop("annotations", {}))
    args = {
        "config": EMPTY_DESCRIPTOR,
        "layers": [layer],
        "annotations": annotations,
        "artifact_type": ARTIFACT_TYPE,
    }
    args.update(changes)
    return Manifest.build(**args).raw


def test_reading_back_checks_what_it_trusts():
    info = read_model_manifest(_manifest(), "m")
    assert (info.name, info.version, info.files) == ("ridge", "3", ())
    image_config = Descriptor(media.OCI_CONFIG, Digest.of(b"{}"), 2)
    with pytest.raises(FormatError, match="is a container image, not an ocibuild model"):
        read_model_manifest(_manifest(config=image_config, artifact_type=None), "m")
    with pytest.raises(FormatError, match="an artifact of type 'application/vnd.other'"):
        read_model_manifest(_manifest(artifact_type="application/vnd.other"), "m")
    with pytest.raises(FormatError, match="model path"):
        read_model_manifest(_manifest(annotations={PATH: "/etc"}), "m")
    with pytest.raises(FormatError, match="name or version"):
        read_model_manifest(_manifest(annotations={NAME: "../x"}), "m")
    with pytest.raises(FormatError, match="one layer"):
        read_model_manifest(_manifest(layers=[]), "m")
    with pytest.raises(FormatError, match="not a JSON list"):
        read_model_manifest(_manifest(annotations={FILES: "model.pkl"}), "m")


@pytest.mark.parametrize(
    "text, registered",
    [
        ("docker://host.example/models/ridge:3", True),
        ("127.0.0.1:5000/models/ridge:3", True),
        ("localhost/models/ridge:3", True),
        ("registry.example.com/m@sha256:" + "a" * 64, True),
        ("model.pkl", False),
        ("models/model.pkl", False),
        ("./x.y/model.pkl", False),
        ("/abs/x.y/model.pkl", False),
    ],
)
def test_which_package_arguments_are_registered_models(text, registered):
    assert is_model_reference(text) is registered


def test_an_existing_local_path_is_never_taken_for_a_reference(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "host.example").mkdir()
    (tmp_path / "host.example" / "m.pkl").write_text("x")
    assert not is_model_reference("host.example/m.pkl")
