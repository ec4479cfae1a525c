"""Several images in one tarball (`package --output --append`, `copy --append`) and whole indexes in archives and
layouts: the written names are what `docker load` and OCI tools will see."""

import io
import json
import os
import tarfile

import pytest

from ocibuild.errors import BadReferenceError
from ocibuild.oci import media
from ocibuild.oci.archive import open_docker_archive, read_archive_entries, write_archive
from ocibuild.oci.descriptor import Descriptor, Index, Manifest, Platform
from ocibuild.oci.digest import Digest
from ocibuild.oci.empty import empty_image
from ocibuild.oci.image import Addendum, Image, ImageIndex, Tagged
from ocibuild.oci.layer import LayerContents, write_layer
from ocibuild.oci.layout import LayoutSource, open_layout, read_layout_index, write_layout
from ocibuild.oci.mutate import ConfigChanges, mutate, timestamp
from ocibuild.oci.name import ImageName
from ocibuild.oci.store import BlobStore
from ocibuild.transports.location import Location

AMD64 = Platform()


def _image(tmp_path, seed: int, platform: Platform = AMD64):
    store = BlobStore(tmp_path / "cache")
    f = tmp_path / f"file{seed}"
    f.write_bytes(os.urandom(1000) + bytes([seed]))
    c = LayerContents()
    c.add_file(f, "data/file")
    layer = Addendum(write_layer(c, store), "layer")
    return mutate(empty_image(platform), [layer], ConfigChanges(entrypoint=[f"/bin/{seed}"]), timestamp(0))


def _names(path):
    with tarfile.open(path) as tf:
        docker = json.load(tf.extractfile("manifest.json")) if "manifest.json" in tf.getnames() else []
        index = json.load(tf.extractfile("index.json"))
    return docker, index["manifests"]


def test_append_keeps_images_merges_repo_tags_and_moves_a_name(tmp_path):
    a, b = _image(tmp_path, 1), _image(tmp_path, 2)
    out = tmp_path / "multi.tar"
    write_archive([Tagged(a, ImageName("app:1", "1", "docker.io/library/app:1"))], out)
    write_archive([Tagged(a, ImageName("app:latest", "latest", "docker.io/library/app:latest"))], out, append=True)
    write_archive([Tagged(b, ImageName("app:2", "2", "docker.io/library/app:2"))], out, append=True)
    docker, index = _names(out)
    tags = {e["Config"]: sorted(e["RepoTags"]) for e in docker}
    assert tags == {
        f"blobs/sha256/{a.manifest.config.digest.hex}": ["app:1", "app:latest"],
        f"blobs/sha256/{b.manifest.config.digest.hex}": ["app:2"],
    }
    assert len(index) == 3
    assert open_docker_archive(out, "app:2", Platform()).digest == b.digest
    # app:1 given again, to b: the name moves; a keeps app:latest, so it stays.
    write_archive([Tagged(b, ImageName("app:1", "1", "docker.io/library/app:1"))], out, append=True)
    assert open_docker_archive(out, "app:1", Platform()).digest == b.digest
    assert open_docker_archive(out, "app:latest", Platform()).digest == a.digest
    # Without append the file is replaced.
    write_archive([Tagged(b, ImageName("app:9", "9", "docker.io/library/app:9"))], out)
    assert [t.name.repo_tag for t in read_archive_entries(out)] == ["app:9"]


def test_read_entries_keep_names_and_digests(tmp_path):
    a = _image(tmp_path, 1)
    out = tmp_path / "one.tar"
    write_archive([Tagged(a, ImageName("team/app:3", "3", "docker.io/team/app:3"))], out)
    [entry] = read_archive_entries(out)
    assert (entry.image.digest, entry.name.repo_tag, entry.name.ref_name, entry.name.full) == (
        a.digest, "team/app:3", "3", "docker.io/team/app:3",
    )  # fmt: skip


def test_an_index_is_written_whole_to_archives_and_layouts(tmp_path):
    amd, arm = _image(tmp_path, 1), _image(tmp_path, 2, Platform("linux", "arm64"))
    index = Index.build(
        [amd.manifest.descriptor(platform=amd.platform), arm.manifest.descriptor(platform=arm.platform)]
    )
    whole = ImageIndex(index, (amd, arm))
    out = tmp_path / "index.tar"
    write_archive([Tagged(whole, ImageName(None, "1", None))], out)
    docker, entries = _names(out)
    # Docker's manifest.json holds one platform per name: docker load takes the first platform's image
    assert [d["Config"] for d in docker] == [f"blobs/sha256/{amd.manifest.config.digest.hex}"]
    assert [(e["mediaType"], e["digest"]) for e in entries] == [(media.OCI_INDEX, str(index.digest))]
    [read] = read_archive_entries(out)
    assert read.image.digest == index.digest and [i.digest for i in read.image.images] == [
        amd.digest,
        arm.digest,
    ]
    layout = tmp_path / "layout"
    write_layout([Tagged(whole, ImageName(None, "multi", None))], layout)
    [top] = read_layout_index(layout).manifests
    assert top.digest == index.digest and top.annotations[media.REF_NAME] == "multi"
    assert open_layout(layout, "multi", Platform("linux", "arm64")).digest == arm.digest
    assert LayoutSource(layout).has_blob(arm.manifest.config)


@pytest.mark.parametrize(
    "text, transport, path, name",
    [
        ("oci:/x/lay:v1", "oci", "/x/lay", "v1"),
        ("oci:/x/lay", "oci", "/x/lay", None),
        ("oci-archive:/x/a.tar:v2", "oci-archive", "/x/a.tar", "v2"),
        ("docker-archive:/x/d.tar:team/app:3", "docker-archive", "/x/d.tar", "team/app:3"),
        ("docker-archive:/x/d.tar", "docker-archive", "/x/d.tar", None),
    ],
)
def test_location_parse(text, transport, path, name):
    loc = Location.parse(text)
    assert (loc.transport, str(loc.path), loc.name) == (transport, path, name)


def test_location_parse_registry_and_refusals():
    loc = Location.parse("docker://localhost:5000/team/app:1")
    assert (loc.transport, loc.ref.registry, loc.ref.repository, loc.ref.tag) == (
        "docker",
        "localhost:5000",
        "team/app",
        "1",
    )
    for bad in ("dir:/tmp/x", "containers-storage:app", "UPPER/case:1"):
        with pytest.raises(BadReferenceError):
            Location.parse(bad)
    assert Location.parse("scratch").transport == "scratch"


def test_oci_archive_append_keeps_other_tags_and_moves_a_tag_given_again(tmp_path):
    """oci-archive:FILE:TAG names carry only a ref.name (no Docker name): they are names all the same."""
    a, b = _image(tmp_path, 1), _image(tmp_path, 2)
    out = tmp_path / "oci.tar"
    write_archive([Tagged(a, ImageName(None, "v1", None))], out)
    write_archive([Tagged(a, ImageName(None, "v2", None))], out, append=True)  # same image, another tag: v1 stays
    assert sorted(t.name.ref_name for t in read_archive_entries(out)) == ["v1", "v2"]
    write_archive([Tagged(b, ImageName(None, "v1", None))], out, append=True)  # v1 again, another image: it moves
    entries = {t.name.ref_name: t.image.digest for t in read_archive_entries(out)}
    assert entries == {"v1": b.digest, "v2": a.digest}
    from ocibuild.oci.archive import open_oci_archive

    assert open_oci_archive(out, "v1", AMD64).digest == b.digest


def test_docker_archive_names_match_in_any_spelling(tmp_path):
    a = _image(tmp_path, 1)
    ours, theirs = tmp_path / "ours.tar", tmp_path / "theirs.tar"
    write_archive([Tagged(a, ImageName("app:1", "1", "docker.io/library/app:1"))], ours)  # Docker's familiar form
    write_archive([Tagged(a, ImageName("docker.io/library/app:1", "1", None))], theirs)  # skopeo's full form
    for path in (ours, theirs):
        for name in ("app:1", "library/app:1", "docker.io/library/app:1", "docker.io/app:1"):
            assert open_docker_archive(path, name, AMD64).digest == a.digest, (path.name, name)


def test_legacy_links_between_layer_folders_are_followed_but_never_out(tmp_path):
    """Docker 20.10's save links a repeated layer as ``<id>/layer.tar -> ../<id2>/layer.tar``."""
    import io

    from ocibuild.oci.archive import ArchiveReader

    path = tmp_path / "legacy.tar"
    with tarfile.open(path, "w") as tf:
        data = b"layer bytes"
        info = tarfile.TarInfo("aaa/layer.tar")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        for name, target in (("bbb/layer.tar", "../aaa/layer.tar"), ("ccc/layer.tar", "../../etc/passwd")):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, target
            tf.addfile(link)
    reader = ArchiveReader(path)
    with reader.open("bbb/layer.tar") as f:
        assert f.read() == b"layer bytes"
    assert not reader.has("ccc/layer.tar")


def test_docker_archive_keeps_the_digest_when_index_json_lists_an_index(tmp_path):
    """Docker >= 25 with the containerd store saves index.json -> image index -> manifests (only the local
    platform's present): reading it as docker-archive: must find the saved manifest, not build a new one."""
    plain = _image(tmp_path, 1)
    # A manifest that a reader could not rebuild from manifest.json alone (it has annotations).
    manifest = Manifest.build(
        plain.manifest.config, [x.descriptor for x in plain.layers], annotations={"built.by": "another tool"}
    )
    a = Image(manifest, plain.config_raw, plain.layers)
    other = Platform("linux", "arm64")
    absent = Descriptor(a.manifest.media_type, Digest.of(b"not in the file"), 10, platform=other)
    index = Index.build([a.manifest.descriptor(platform=a.platform), absent])
    out = tmp_path / "d25.tar"
    write_archive([Tagged(a, ImageName("app:1", "1", "docker.io/library/app:1"))], out)
    # Rewrite index.json to point at an index holding the manifest, as containerd's exporter does.
    with tarfile.open(out) as tf:
        members = [(m, tf.extractfile(m).read() if m.isfile() else None) for m in tf.getmembers()]
    top = {"schemaVersion": 2, "manifests": [{"mediaType": media.OCI_INDEX, "digest": str(index.digest),
                                              "size": len(index.raw)}]}  # fmt: skip
    with tarfile.open(out, "w") as tf:
        for m, data in members:
            if m.name == "index.json":
                data = json.dumps(top).encode()
                m.size = len(data)
            tf.addfile(m, io.BytesIO(data) if data is not None else None)
        blob = tarfile.TarInfo(f"blobs/sha256/{index.digest.hex}")
        blob.size = len(index.raw)
        tf.addfile(blob, io.BytesIO(index.raw))
    assert open_docker_archive(out, "app:1", AMD64).digest == a.digest


def test_copying_untagged_into_a_layout_twice_adds_one_entry(tmp_path):
    a = _image(tmp_path, 1)
    layout = tmp_path / "layout"
    write_layout([Tagged(a, ImageName(None, None, None))], layout)
    write_layout([Tagged(a, ImageName(None, None, None))], layout)
    write_layout([Tagged(a, ImageName(None, "v1", None))], layout)
    entries = read_layout_index(layout).manifests
    assert sorted(d.annotations.get(media.REF_NAME, "") for d in entries) == ["", "v1"]
