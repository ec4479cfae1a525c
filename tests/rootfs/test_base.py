"""A base image is read once for everything a build wants of it (its Python, its OS packages, the checks' files),
and each answer is the one its own read of the layers gives."""

from __future__ import annotations

import io
import tarfile
from dataclasses import asdict
from functools import partial

from ocibuild.oci.descriptor import Platform
from ocibuild.oci.store import BlobStore
from ocibuild.rootfs.base import base_files, base_packages, base_python
from ocibuild.rootfs.files import read_base_files
from ocibuild.rootfs.layers import read_trees
from ocibuild.rootfs.packages import os_packages
from ocibuild.rootfs.pyenv import detect_target_python
from ocibuild.transports.open import open_base


class CountingImage:
    """The base, counting how often each layer is opened (each open inflates and reads it from the start)."""

    def __init__(self, image):
        self._image = image
        self.opened = 0

    def __getattr__(self, name):
        return getattr(self._image, name)

    def open_uncompressed(self, desc):
        self.opened += 1
        return self._image.open_uncompressed(desc)


def test_a_new_base_is_read_once_for_its_python_packages_and_files_each_as_its_own_read_gives(base_image, tmp_path):
    base = open_base(base_image.ref, Platform("linux", "amd64"))
    openers = [partial(base.open_uncompressed, d) for d in base.layers]
    alone_python = detect_target_python(openers, "amd64")
    alone_packages = os_packages(openers)
    env = (base.config.get("config") or {}).get("Env") or []
    alone_files = read_base_files(openers, alone_python, env)

    counted = CountingImage(base)
    records = BlobStore(tmp_path / "cache")
    python = base_python(counted, records, "base image")
    assert counted.opened == len(base.layers)  # one read of each layer
    packages = base_packages(counted, records, "base image")
    files = base_files(counted, records, "base image")
    assert counted.opened == len(base.layers)  # the other two were read in the same pass and remembered
    assert python == alone_python and python.version == (3, 11)
    assert asdict(packages) == asdict(alone_packages) and len(packages.packages) > 50
    assert files.to_json() == alone_files.to_json() and files.libraries

    again = CountingImage(base)  # another build, the same cache: nothing is read
    assert base_files(again, records, "base image").to_json() == alone_files.to_json()
    assert base_python(again, records, "base image") == python and again.opened == 0


def _layer(files: dict[str, bytes]):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return partial(io.BytesIO, buf.getvalue())


def test_scans_sharing_one_read_each_see_the_whole_file_however_they_read_it():
    data = bytes(range(256)) * 5000  # 1.28 MB: more than one chunk of tarfile's buffered reads
    seen: dict[str, list[bytes]] = {"head": [], "all": [], "chunks": [], "none": []}

    def head(path, size, open_content):
        seen["head"].append(open_content().read(100))

    def everything(path, size, open_content):
        seen["all"].append(open_content().read())

    def chunks(path, size, open_content):
        stream, parts = open_content(), []
        while part := stream.read(7919):
            parts.append(part)
        seen["chunks"].append(b"".join(parts))

    def nothing(path, size, open_content):
        return "kept"

    trees = read_trees([_layer({"a/blob": data, "b/other": b"x" * 10})], "a test image", [head, everything, chunks, nothing])
    assert seen["head"] == [data[:100], b"x" * 10]
    assert seen["all"] == [data, b"x" * 10]
    assert seen["chunks"] == [data, b"x" * 10]
    found, _ = trees[3].file(("a", "blob"))
    assert found is not None and found.facts == "kept"


def test_the_last_scan_reads_on_past_what_the_first_one_read():
    """The last scan's reads are not kept (nobody replays them): it still gets the first scan's bytes, then the rest."""
    data = bytes(range(256)) * 5000
    seen: list[bytes] = []

    def head(path, size, open_content):
        seen.append(open_content().read(100))

    def chunks(path, size, open_content):
        stream, parts = open_content(), []
        while part := stream.read(7919):
            parts.append(part)
        seen.append(b"".join(parts))

    read_trees([_layer({"a/blob": data})], "a test image", [head, chunks])
    assert seen == [data[:100], data]
