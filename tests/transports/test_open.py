"""Base references resolve to the right image: transports, tags, and the platform chosen from an index."""

from __future__ import annotations

import json

import pytest

from ocibuild.errors import BadReferenceError, BaseImageError, InputError
from ocibuild.oci import media
from ocibuild.oci.archive import write_archive
from ocibuild.oci.descriptor import Index, Platform, canonical_json
from ocibuild.oci.empty import empty_image, is_empty
from ocibuild.oci.image import Addendum, Tagged
from ocibuild.oci.layer import LayerContents, write_layer
from ocibuild.oci.layout import write_layout
from ocibuild.oci.mutate import ConfigChanges, mutate, timestamp
from ocibuild.oci.name import ImageName
from ocibuild.oci.store import BlobStore
from ocibuild.transports.open import open_base


def _image(tmp_path, store, platform: Platform, payload: bytes):
    f = tmp_path / f"payload-{platform.architecture}"
    f.write_bytes(payload)
    c = LayerContents()
    c.add_file(f, "payload")
    return mutate(empty_image(platform), [Addendum(write_layer(c, store), "payload")], ConfigChanges(), timestamp(0))


@pytest.fixture
def multi_platform_layout(tmp_path):
    """A layout whose tag "multi" names an image index of linux/amd64 and linux/arm64/v8."""
    store = BlobStore(tmp_path / "cache")
    amd = _image(tmp_path, store, Platform("linux", "amd64"), b"amd")
    arm = _image(tmp_path, store, Platform("linux", "arm64", "v8"), b"arm")
    root = tmp_path / "layout"
    write_layout([Tagged(amd, ImageName(None, "amd-only", None)), Tagged(arm, ImageName(None, "arm-only", None))], root)
    index = Index.build(
        [amd.manifest.descriptor(platform=amd.platform), arm.manifest.descriptor(platform=arm.platform)]
    )
    (root / "blobs" / "sha256" / index.digest.hex).write_bytes(index.raw)
    top = json.loads((root / "index.json").read_text())
    top["manifests"].append(
        {
            "mediaType": media.OCI_INDEX,
            "digest": index.digest,
            "size": len(index.raw),
            "annotations": {media.REF_NAME: "multi"},
        }
    )
    (root / "index.json").write_bytes(canonical_json(top))
    return root, amd, arm


def test_index_resolves_to_requested_platform(multi_platform_layout):
    root, amd, arm = multi_platform_layout
    assert open_base(f"oci:{root}:multi", Platform("linux", "amd64")).digest == amd.digest
    assert open_base(f"oci:{root}:multi", Platform("linux", "arm64")).digest == arm.digest
    assert open_base(f"oci:{root}:multi", Platform("linux", "arm64", "v8")).digest == arm.digest


def test_index_without_requested_platform_names_what_it_has(multi_platform_layout):
    root, _, _ = multi_platform_layout
    with pytest.raises(
        InputError, match=r"no image for platform linux/s390x; it has: linux/amd64, linux/arm64/v8"
    ):
        open_base(f"oci:{root}:multi", Platform("linux", "s390x"))


def test_single_image_of_other_platform_is_refused(multi_platform_layout, tmp_path):
    root, _, arm = multi_platform_layout
    with pytest.raises(InputError, match="no image for platform linux/amd64; it has: linux/arm64/v8"):
        open_base(f"oci:{root}:arm-only", Platform("linux", "amd64"))
    tar = tmp_path / "arm.tar"  # a docker save file says nothing of platforms: the config does
    write_archive([Tagged(arm, ImageName("arm:1", None, None))], tar)
    with pytest.raises(BaseImageError, match="is for linux/arm64/v8, not linux/amd64; pass --platform"):
        open_base(f"docker-archive:{tar}", Platform("linux", "amd64"))


def test_archives_resolve_by_tag(tmp_path):
    store = BlobStore(tmp_path / "cache")
    amd = _image(tmp_path, store, Platform(), b"x")
    tar = tmp_path / "image.tar"
    write_archive([Tagged(amd, ImageName("team/base:1", "1", "docker.io/team/base:1"))], tar)
    assert open_base(f"oci-archive:{tar}:1", Platform()).digest == amd.digest
    assert open_base(f"docker-archive:{tar}:team/base:1", Platform()).config_raw == amd.config_raw
    assert open_base(f"docker-archive:{tar}", Platform()).config_raw == amd.config_raw
    with pytest.raises(InputError, match="no image tagged team/base:2"):
        open_base(f"docker-archive:{tar}:team/base:2", Platform())


def test_a_base_is_named_by_what_its_archive_calls_it_never_by_its_path(tmp_path):
    store = BlobStore(tmp_path / "cache")
    amd = _image(tmp_path, store, Platform(), b"x")
    tar = tmp_path / "image.tar"
    write_archive([Tagged(amd, ImageName("team/base:1", "1", "docker.io/team/base:1"))], tar)
    assert open_base(f"oci-archive:{tar}:1", Platform()).reference == "docker.io/team/base:1"
    assert open_base(f"docker-archive:{tar}", Platform()).reference == "docker.io/team/base:1"
    assert open_base(f"docker-archive:{tar}:team/base:1", Platform()).reference == "docker.io/team/base:1"
    bare = tmp_path / "bare.tar"  # a tag alone is no name: nothing rather than the file's path
    write_archive([Tagged(amd, ImageName.tag("1"))], bare)
    assert open_base(f"oci-archive:{bare}:1", Platform()).reference is None


def test_scratch_and_bad_references():
    assert is_empty(open_base("scratch", Platform()))
    with pytest.raises(BadReferenceError, match="not supported"):
        open_base("docker-daemon:x:1", Platform())
    with pytest.raises(BadReferenceError):
        open_base("Not A Ref", Platform())
