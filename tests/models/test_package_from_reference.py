"""``package`` with registered models (API level, plain registry, local base layout, no dependencies): the model
layer is the artifact's blob, the labels say where it came from, and it is fetched (verified) when written out."""

from __future__ import annotations

import gzip
import hashlib
import json
import tarfile

import pytest

from ocibuild import InferenceConfig, package
from ocibuild.errors import InputError
from ocibuild.models.registry import push_model
from ocibuild.oci.store import BlobStore

SCORE = "import os\n\ndef init():\n    pass\n\n\ndef run(raw):\n    return os.environ['AZUREML_MODEL_DIR']\n"


@pytest.fixture(scope="module")
def reg(registry):
    return registry.get("plain")


@pytest.fixture
def score(tmp_path):
    p = tmp_path / "score.py"
    p.write_text(SCORE)
    return p


def layout_files(layout, image) -> dict[str, bytes]:
    """Every regular file of the image's model layers, read from the written layout."""
    out = {}
    for desc in image.layers[-2:-1] if len(image.layers) > 1 else image.layers:
        with tarfile.open(layout / "blobs" / "sha256" / desc.digest.hex, "r:*") as t:
            for m in t.getmembers():
                if m.isfile():
                    out[m.name] = t.extractfile(m).read()
    return out


def test_one_registered_model(reg, base_ref, score, tmp_path):
    model = tmp_path / "model.pkl"
    model.write_bytes(b"ridge " * 500)
    pushed = push_model(
        model, reg.ref("pkg/ridge:3"), framework="sklearn", store=BlobStore(tmp_path / "push")
    )
    pkg = package(
        [f"docker://{reg.ref('pkg/ridge:3')}"], InferenceConfig(score), base_ref, cache=tmp_path / "b"
    )
    cfg = pkg.image.config["config"]
    labels = cfg["Labels"]
    assert labels["io.ocibuild.model.source"] == reg.ref("pkg/ridge:3")
    assert labels["io.ocibuild.model.digest"] == pushed.digest
    assert labels["io.ocibuild.model.version"] == "3" and labels["io.ocibuild.model.name"] == "ridge"
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert env["AZUREML_MODEL_DIR"] == "/var/azureml-app/azureml-models/ridge/3"
    assert pushed.info.layer.digest in [d.digest for d in pkg.image.layers]
    layout = pkg.write_layout(tmp_path / "layout")
    files = layout_files(layout, pkg.image)
    assert files["var/azureml-app/azureml-models/ridge/3/model.pkl"] == model.read_bytes()
    # The config's diff_id for it is the uncompressed tar's digest (computed from the verified blob).
    idx = [d.digest for d in pkg.image.layers].index(pushed.info.layer.digest)
    blob = (layout / "blobs" / "sha256" / pushed.info.layer.digest.hex).read_bytes()
    assert pushed.info.layer.media_type.endswith("+gzip")  # text: compressed, so the diff_id differs
    assert pkg.image.diff_ids[idx] == "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest()


def test_overrides_relabel_the_image_but_the_files_stay(reg, base_ref, score, tmp_path):
    model = tmp_path / "model.pkl"
    model.write_bytes(b"x" * 100)
    push_model(model, reg.ref("pkg/keep:1"), store=BlobStore(tmp_path / "push"))
    pkg = package(
        [reg.ref("pkg/keep:1")],
        InferenceConfig(score),
        base_ref,
        name="renamed",
        version="9",
        cache=tmp_path / "b",
    )
    cfg = pkg.image.config["config"]
    assert (
        cfg["Labels"]["io.ocibuild.model.name"] == "renamed"
        and cfg["Labels"]["io.ocibuild.model.version"] == "9"
    )
    assert (
        dict(e.split("=", 1) for e in cfg["Env"])["AZUREML_MODEL_DIR"]
        == "/var/azureml-app/azureml-models/keep/1"
    )


def test_local_and_registered_models_together(reg, base_ref, score, tmp_path):
    local = tmp_path / "encoder.pkl"
    local.write_bytes(b"enc")
    remote = tmp_path / "model.pkl"
    remote.write_bytes(b"dec")
    pushed = push_model(remote, reg.ref("pkg/decoder:2"), store=BlobStore(tmp_path / "push"))
    pkg = package(
        [str(local), f"{reg.ref('pkg/decoder')}@{pushed.digest}"], InferenceConfig(score), base_ref,
        cache=tmp_path / "b",
    )  # fmt: skip
    cfg = pkg.image.config["config"]
    assert dict(e.split("=", 1) for e in cfg["Env"])["AZUREML_MODEL_DIR"] == "/var/azureml-app/azureml-models"
    assert cfg["Labels"]["io.ocibuild.model.digest.decoder"] == pushed.digest
    assert cfg["Labels"]["io.ocibuild.model.source.decoder"] == f"{reg.ref('pkg/decoder')}@{pushed.digest}"
    with pytest.raises(InputError, match="several models would be named decoder"):
        clash = tmp_path / "decoder.pkl"
        clash.write_bytes(b"")
        package(
            [str(clash), reg.ref("pkg/decoder:2")], InferenceConfig(score), base_ref, cache=tmp_path / "b"
        )


def test_a_stale_derived_recipe_from_the_push_is_pulled_over(reg, base_ref, score, tmp_path, monkeypatch):
    """Pushed as a derived blob (big models are not copied into the cache), then the file is edited: the same
    cache must fetch the registered bytes from the registry rather than fail on the changed file."""
    import ocibuild.oci.layer as layer_module

    monkeypatch.setattr(layer_module, "DERIVE_MIN", 0)
    model = tmp_path / "model.pkl"
    model.write_bytes(b"registered " * 100)
    original = model.read_bytes()
    cache = tmp_path / "cache"
    pushed = push_model(model, reg.ref("pkg/stale:1"), store=BlobStore(cache))
    store = BlobStore(cache)
    assert store.recipe(pushed.info.layer.digest) is not None and not store.is_stored(
        pushed.info.layer.digest
    )
    model.write_bytes(b"edited since " * 100)
    pkg = package([reg.ref("pkg/stale:1")], InferenceConfig(score), base_ref, cache=cache)
    layout = pkg.write_layout(tmp_path / "layout")
    assert layout_files(layout, pkg.image)["var/azureml-app/azureml-models/stale/1/model.pkl"] == original
    assert json.loads((layout / "index.json").read_text())["manifests"][0]["digest"] == pkg.digest


def test_a_registered_layer_that_writes_outside_its_folder_is_refused(reg, base_ref, score, tmp_path):
    """The registered layer goes into the image as it is, above the scoring server: one holding /etc/passwd or
    the server's code must be refused, not packaged."""
    import contextlib
    import io

    from ocibuild.errors import FormatError
    from ocibuild.models import artifact
    from ocibuild.oci import media
    from ocibuild.oci.descriptor import Descriptor, Manifest
    from ocibuild.oci.digest import Digest
    from ocibuild.oci.name import parse_reference
    from ocibuild.registry.client import RegistryClient
    from ocibuild.registry.options import RegistryOptions
    from ocibuild.registry.transport import Transport

    folder = "var/azureml-app/azureml-models/evil/1"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, body in [
            (f"{folder}/model.onnx", b"weights"),
            ("opt/ocibuild/server/x.py", b"import os\n"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            t.addfile(info, io.BytesIO(body))
    data = buf.getvalue()
    layer = Descriptor(media.OCI_LAYER, Digest.of(data), len(data))
    ref = parse_reference(reg.ref("pkg/evil:1"))
    client = RegistryClient(Transport(ref.registry, RegistryOptions()), ref.repository, push=True)
    client.upload_blob(
        artifact.EMPTY_DESCRIPTOR,
        lambda: contextlib.closing(io.BytesIO(artifact.EMPTY_CONFIG)),
        lambda n: None,
    )
    client.upload_blob(layer, lambda: contextlib.closing(io.BytesIO(data)), lambda n: None)
    annotations = {artifact.NAME: "evil", artifact.VERSION: "1", artifact.PATH: "/" + folder,
                   artifact.FILES: '["model.onnx"]'}  # fmt: skip
    manifest = Manifest.build(
        artifact.EMPTY_DESCRIPTOR, [layer], annotations, artifact_type=artifact.ARTIFACT_TYPE
    )
    client.put_manifest("1", manifest.raw, manifest.media_type)
    with pytest.raises(FormatError, match="outside the model's folder"):
        package([reg.ref("pkg/evil:1")], InferenceConfig(score), base_ref, cache=tmp_path / "c")
