"""Round trips: what the writers produce, the readers read back, digest for digest (go-containerregistry style)."""

import json
import os
import tarfile

import pytest

from ocibuild.errors import DigestMismatchError, InputError, OutputError
from ocibuild.oci import media
from ocibuild.oci.archive import open_docker_archive, open_oci_archive, write_archive
from ocibuild.oci.descriptor import Platform
from ocibuild.oci.digest import read_all
from ocibuild.oci.empty import empty_image
from ocibuild.oci.image import Addendum, Tagged
from ocibuild.oci.layer import LayerContents, write_layer
from ocibuild.oci.layout import open_layout, write_layout
from ocibuild.oci.mutate import ConfigChanges, mutate, timestamp
from ocibuild.oci.name import ImageName
from ocibuild.oci.store import BlobStore

AMD64 = Platform()


@pytest.fixture
def image(tmp_path):
    store = BlobStore(tmp_path / "cache")
    layers = []
    for i in range(2):
        f = tmp_path / f"file{i}"
        f.write_bytes(os.urandom(2000) + bytes(i))
        c = LayerContents()
        c.add_file(f, f"data/file{i}")
        layers.append(Addendum(write_layer(c, store), f"layer {i}"))
    changes = ConfigChanges(entrypoint=["/bin/true"], env={"A": "1"}, exposed_ports=["5001/tcp"])
    return mutate(empty_image(AMD64), layers, changes, timestamp(0))


def _blobs(img):
    return [read_all(img.open_blob(d)) for d in img.descriptors()]


def test_layout_round_trip_and_add_tag(tmp_path, image):
    out = tmp_path / "layout"
    write_layout([Tagged(image, ImageName(None, "v1", "example.com/x:v1"))], out)
    back = open_layout(out, "v1", AMD64)
    assert back.digest == image.digest and back.manifest.raw == image.manifest.raw
    assert _blobs(back) == _blobs(image)
    assert json.loads((out / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    write_layout(
        [Tagged(image, ImageName(None, "v2", None))], out
    )  # adding to an existing layout keeps the old tag
    assert open_layout(out, "v1", AMD64).digest == open_layout(out, "v2", AMD64).digest
    with pytest.raises(InputError, match="several images"):
        open_layout(out, None, AMD64)
    with pytest.raises(InputError, match="no image tagged 'nope'.*v1, v2"):
        open_layout(out, "nope", AMD64)


def test_layout_refuses_non_layout_dir_and_leaves_nothing(tmp_path, image):
    d = tmp_path / "full"
    d.mkdir()
    (d / "x").write_text("user data")
    with pytest.raises(OutputError, match="not an OCI layout"):
        write_layout([Tagged(image, ImageName(None, "v1", None))], d)
    assert os.listdir(d) == ["x"]
    with pytest.raises(OutputError, match="does not exist"):
        write_layout([Tagged(image, ImageName(None, "v1", None))], tmp_path / "missing" / "layout")


def test_archive_reads_back_as_oci_and_docker_archive(tmp_path, image):
    out = tmp_path / "image.tar"
    write_archive([Tagged(image, ImageName("myimage:1", "1", "docker.io/library/myimage:1"))], out)
    as_oci = open_oci_archive(out, "1", AMD64)
    assert as_oci.digest == image.digest and _blobs(as_oci) == _blobs(image)
    as_docker = open_docker_archive(out, "myimage:1", AMD64)
    assert as_docker.config_raw == image.config_raw and _blobs(as_docker)[1:] == _blobs(image)[1:]
    with tarfile.open(out) as tf:
        names = tf.getnames()
        manifest = json.loads(tf.extractfile("manifest.json").read())
        index = json.loads(tf.extractfile("index.json").read())
    assert {"oci-layout", "index.json", "manifest.json"} <= set(names)
    assert manifest[0]["RepoTags"] == ["myimage:1"]
    assert manifest[0]["Config"] == f"blobs/sha256/{image.manifest.config.digest.hex}"
    ann = index["manifests"][0]["annotations"]
    assert ann == {media.REF_NAME: "1", media.CONTAINERD_IMAGE_NAME: "docker.io/library/myimage:1"}


def test_archive_is_reproducible(tmp_path, image):
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    for p in (a, b):
        write_archive([Tagged(image, ImageName("x:1", "1", "docker.io/library/x:1"))], p)
    assert a.read_bytes() == b.read_bytes()


def test_corrupt_blob_fails_export_and_leaves_nothing(tmp_path, image):
    layout = tmp_path / "layout"
    write_layout([Tagged(image, ImageName(None, "v1", None))], layout)
    victim = layout / "blobs" / "sha256" / image.layers[0].digest.hex
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    src = open_layout(layout, "v1", AMD64)
    out = tmp_path / "out.tar"
    with pytest.raises(DigestMismatchError, match=image.layers[0].digest.short):
        write_archive([Tagged(src, ImageName("x:1", None, None))], out)
    assert not out.exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".out.tar")]


def test_legacy_docker_save_layout_is_read(tmp_path, image):
    """Docker 20.10's ``docker save``: <id>/layer.tar (uncompressed), <hex>.json config, manifest.json."""
    store = BlobStore(tmp_path / "cache2")
    f = tmp_path / "payload"
    f.write_bytes(b"legacy" * 100)
    c = LayerContents()
    c.add_file(f, "payload")
    built = write_layer(c, store, "none")
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [built.diff_id]}}
    ).encode()
    from ocibuild.oci.digest import Digest

    cfg_hex = Digest.of(config).hex
    archive = tmp_path / "legacy.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(store.path(built.descriptor.digest), "abc123/layer.tar")
        (tmp_path / "cfg").write_bytes(config)
        tf.add(tmp_path / "cfg", f"{cfg_hex}.json")
        (tmp_path / "m").write_text(
            json.dumps([{"Config": f"{cfg_hex}.json", "RepoTags": ["old:1"], "Layers": ["abc123/layer.tar"]}])
        )
        tf.add(tmp_path / "m", "manifest.json")
    img = open_docker_archive(archive, "old:1", AMD64)
    assert img.layers[0].digest == built.diff_id and img.layers[0].media_type == media.OCI_LAYER
    assert read_all(img.open_blob(img.layers[0])) == store.path(built.descriptor.digest).read_bytes()


def test_a_manifest_about_another_names_it_as_its_subject(image):
    """An attachment (an SBOM, a signature) is an artifact whose manifest's ``subject`` is the image's descriptor."""
    from ocibuild.oci.descriptor import Descriptor, Manifest
    from ocibuild.oci.digest import Digest

    empty = Descriptor("application/vnd.oci.empty.v1+json", Digest.of(b"{}"), 2)
    subject = image.manifest.descriptor()
    about = Manifest.build(empty, [], artifact_type="application/spdx+json", subject=subject)
    assert json.loads(about.raw)["subject"] == {"mediaType": subject.media_type, "digest": str(image.digest),
                                                "size": len(image.manifest.raw)}  # fmt: skip
    assert Manifest.parse(about.raw).subject == subject
    assert Manifest.parse(image.manifest.raw).subject is None
