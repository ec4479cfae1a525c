"""The tarball begun during a build (``oci.archive.StagedArchive``): the staged blob's header is the one a tarball
written whole gives it, including the PAX size record of a blob over 8 GiB (stored here as a hole in a sparse file)."""

from __future__ import annotations

import os

from ocibuild.oci import media
from ocibuild.oci.archive import StagedArchive, _tar_header
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.digest import Digest

HEX = "ab" * 32


def _stage_a_hole(tmp_path, size: int) -> bytes:
    staged = StagedArchive(tmp_path / "image.tar", mtime=1700000000)
    fd = staged.begin(size, size)
    assert fd is not None
    os.lseek(fd, size, os.SEEK_CUR)  # the blob's bytes, as a hole
    staged.commit(Descriptor(media.OCI_LAYER, Digest(f"sha256:{HEX}"), size))
    [tmp] = [p for p in tmp_path.iterdir() if p.name.startswith(".image.tar.")]
    with open(tmp, "rb") as f:
        f.seek(1024)  # after the two directories' headers
        header = f.read(2048)
    staged.discard()
    assert list(tmp_path.iterdir()) == []  # discarded: nothing beside the destination
    return header


def test_a_blob_under_8_gib_gets_a_plain_header(tmp_path):
    size = 3 << 30
    expected = _tar_header(f"blobs/sha256/{HEX}", size, 1700000000)
    assert len(expected) == 512
    assert _stage_a_hole(tmp_path, size).startswith(expected)


def test_a_blob_over_8_gib_gets_the_pax_size_record_a_whole_tarball_gives(tmp_path):
    size = (8 << 30) + 12345
    expected = _tar_header(f"blobs/sha256/{HEX}", size, 1700000000)
    assert len(expected) == 1536
    assert _stage_a_hole(tmp_path, size).startswith(expected)


def test_a_blob_whose_header_length_is_not_known_yet_is_not_staged(tmp_path):
    staged = StagedArchive(tmp_path / "image.tar")
    try:
        assert staged.begin(1 << 30, 9 << 30) is None  # compressed, around 8 GiB
        assert staged.begin(1 << 30, 2 << 30) is not None
        assert staged.begin(1 << 30, 2 << 30) is None  # one blob per tarball
    finally:
        staged.discard()
    assert list(tmp_path.iterdir()) == []
