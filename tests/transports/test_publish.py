"""Several outputs: one that fails while being written is named, with the outputs already written (whole), and
holds nothing of the image."""

from __future__ import annotations

import tarfile

import pytest

from ocibuild.errors import OutputError
from ocibuild.events import Progress
from ocibuild.oci.store import BlobStore
from ocibuild.transports.location import Location
from ocibuild.transports.publish import publish_all, publisher_for
from tests.registry.images import make_image


def test_a_failing_output_is_named_and_the_ones_before_it_are_whole(tmp_path):
    image = make_image(BlobStore(tmp_path / "cache"), [4096, 1000])
    tar, taken = tmp_path / "ridge.tar", tmp_path / "taken"
    taken.mkdir()  # between the build's checks and the write, the folder was given something else
    (taken / "notes.txt").write_text("not an OCI layout")
    publishers = [publisher_for(Location.parse(f"oci-archive:{tar}", "image"), ["ridge:7"]),
                  publisher_for(Location.parse(f"oci:{taken}", "image"), ["7"])]  # fmt: skip
    with pytest.raises(OutputError) as failed:
        publish_all(image, publishers, Progress())
    assert str(failed.value).startswith(f"oci:{taken}: ") and "is not an OCI layout" in str(failed.value)
    assert f"already written, and whole: oci-archive:{tar}" in str(failed.value)
    with tarfile.open(tar) as tf:
        assert "index.json" in tf.getnames()
    assert sorted(p.name for p in taken.iterdir()) == ["notes.txt"]
