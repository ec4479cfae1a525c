import io
import os
import tarfile

import pytest

from ocibuild.errors import InputError
from ocibuild.oci import compress
from ocibuild.oci.digest import Digest, read_all
from ocibuild.oci.layer import LayerContents, write_layer
from ocibuild.oci.store import BlobStore


def _tree(root, files):
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def _members(store, built):
    with store.open(built.descriptor.digest, built.descriptor.size) as f:
        raw = read_all(f)
    plain = read_all(compress.decompressed(io.BytesIO(raw)))
    assert Digest.of(plain) == built.diff_id  # diff_id is the uncompressed tar's sha256
    with tarfile.open(fileobj=io.BytesIO(plain)) as tf:
        return [(m, tf.extractfile(m).read() if m.isfile() else None) for m in tf.getmembers()]


def test_layer_is_deterministic_across_paths_times_and_owners(tmp_path):
    files = {"b.txt": b"bee", "a/z.bin": os.urandom(3000), "a/b/c.py": b"print(1)"}
    one = _tree(tmp_path / "one" / "src", files)
    two = _tree(tmp_path / "elsewhere" / "deeper" / "src", files)
    os.utime(two / "b.txt", (1, 1))
    os.chmod(two / "a" / "z.bin", 0o600)  # group/other bits differ: normalised
    store = BlobStore(tmp_path / "cache")
    built = []
    for src in (one, two):
        c = LayerContents()
        c.add_tree(src, "/var/app")
        built.append(write_layer(c, store))
    assert built[0] == built[1]


def test_layer_entries_sorted_parents_first_with_fixed_metadata(tmp_path):
    src = _tree(tmp_path / "src", {"x-y": b"1", "x/y": b"2", "run.sh": b"#!/bin/sh\n"})
    os.chmod(src / "run.sh", 0o700)
    c = LayerContents()
    c.add_tree(src, "opt/app")
    store = BlobStore(tmp_path / "cache")
    members = _members(store, write_layer(c, store, mtime=1700000000))
    names = [m.name for m, _ in members]
    assert names == ["opt", "opt/app", "opt/app/run.sh", "opt/app/x", "opt/app/x/y", "opt/app/x-y"]
    for m, _ in members:
        assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 1700000000)
    modes = {m.name: m.mode for m, _ in members}
    assert modes["opt/app"] == 0o755 and modes["opt/app/run.sh"] == 0o755 and modes["opt/app/x/y"] == 0o644
    assert dict((m.name, d) for m, d in members)["opt/app/x/y"] == b"2"


@pytest.mark.parametrize("codec", ["gzip", "zstd", "none"])
def test_codecs_and_gzip_header_has_no_time_or_name(tmp_path, codec):
    src = _tree(tmp_path / "src", {"model.bin": os.urandom(5000) * 3})
    c = LayerContents()
    c.add_file(src / "model.bin", "models/model.bin")
    store = BlobStore(tmp_path / "cache")
    built = write_layer(c, store, codec)
    assert built.descriptor.media_type == compress.LAYER_MEDIA_TYPE[codec]
    raw = store.path(built.descriptor.digest).read_bytes()
    assert compress.detect(raw) == codec
    if codec == "gzip":
        assert raw[3] == 0 and raw[4:8] == b"\0\0\0\0"  # FLG: no FNAME; MTIME zero
    [(_, _), (m, data)] = _members(store, built)
    assert m.name == "models/model.bin" and data == (src / "model.bin").read_bytes()


def test_symlinks_kept_special_files_refused(tmp_path):
    src = _tree(tmp_path / "src", {"real.txt": b"r"})
    os.symlink("real.txt", src / "link.txt")
    c = LayerContents()
    c.add_tree(src, "app")
    store = BlobStore(tmp_path / "cache")
    members = {m.name: m for m, _ in _members(store, write_layer(c, store))}
    assert members["app/link.txt"].issym() and members["app/link.txt"].linkname == "real.txt"
    os.mkfifo(src / "fifo")
    with pytest.raises(InputError, match="fifo"):
        LayerContents().add_tree(src, "app")


def test_image_paths_cannot_escape(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"1")
    for dest in ("../etc/passwd", "a/../../b", "/"):
        with pytest.raises(InputError):
            LayerContents().add_file(f, dest)


def test_large_file_streams_with_flat_memory(tmp_path):
    """A file bigger than any buffer round-trips byte for byte (contents are streamed, not loaded)."""
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        for i in range(40):
            f.write(bytes([i]) * (1 << 20))
    c = LayerContents()
    c.add_file(big, "m/big.bin")
    store = BlobStore(tmp_path / "cache")
    built = write_layer(c, store, "none")
    assert built.descriptor.digest == built.diff_id  # uncompressed: blob digest is the diff_id
    assert built.descriptor.size == 2 * 512 + 40 * (1 << 20) + 1024  # 2 headers (m/, m/big.bin), data, end
