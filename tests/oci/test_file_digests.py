"""Each file's sha256 from the one pass that writes the layer (the SBOM lists a model's files by digest).

The layers here are real files: one over two segments (``compress.SEGMENT`` is 4 MiB), tiny ones that share a
segment, an empty one, compressible and random content; the layer must be the one ``write_layer`` makes.
"""

import hashlib
import io
import os
import random
import tarfile

import pytest

from ocibuild.oci import compress, layer
from ocibuild.oci.digest import read_all
from ocibuild.oci.layer import FileDigest, LayerContents, write_layer, write_layer_with_file_digests
from ocibuild.oci.store import BlobStore
from ocibuild.oci.tarstream import TarStream

MiB = 1 << 20


def _text(n: int) -> bytes:
    line = b"def score(x):\n    return sum(w * v for w, v in zip(weights, x))  # a line of code\n"
    return (line * (n // len(line) + 1))[:n]


def _files(big: bool) -> dict[str, bytes]:
    rnd = random.Random(7)
    files = {
        "config.json": b'{"layers": 12}\n',
        "empty": b"",
        "tok/a.txt": b"a",
        "tok/b.bin": rnd.randbytes(511),
        "tok/c.bin": rnd.randbytes(512),
        "tok/d.bin": rnd.randbytes(513),
        "tok/e-empty": b"",
        "vocab.txt": _text(70_000),
    }
    if big:
        files["weights.bin"] = rnd.randbytes(8 * MiB + 4321)  # over two segments, ends mid-segment
        files["z-code.py"] = _text(5 * MiB)
    return files


def _tree(root, files: dict[str, bytes]):
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    os.symlink("weights.bin", root / "link.bin")  # not a regular file: not listed
    return root


def _contents(src) -> LayerContents:
    c = LayerContents()
    c.add_tree(src, "/opt/model")
    return c


def _expected(files: dict[str, bytes]) -> tuple[FileDigest, ...]:
    paths = sorted(files, key=lambda p: p.split("/"))  # the layer's order: parents first, siblings by bytes
    return tuple(
        FileDigest(f"opt/model/{p}", len(files[p]), hashlib.sha256(files[p]).hexdigest()) for p in paths
    )


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    files = _files(big=True)
    return _tree(tmp_path_factory.mktemp("big"), files), _expected(files)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    files = _files(big=False)
    return _tree(tmp_path_factory.mktemp("small"), files), _expected(files)


@pytest.mark.parametrize("derive", [False, True], ids=["stored", "derived"])
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("codec", ["gzip", "zstd", "none"])
def test_file_digests_of_a_multi_segment_layer(tmp_path, monkeypatch, big, codec, workers, derive):
    monkeypatch.setattr(layer, "DERIVE_MIN", 1 * MiB)  # the layer is ~14 MiB: derived when asked
    src, expected = big
    store = BlobStore(tmp_path / "cache")
    built, digests = write_layer_with_file_digests(
        _contents(src), store, codec, mtime=1700000000, derive=derive, workers=workers
    )
    assert digests == expected
    plain = write_layer(
        _contents(src), BlobStore(tmp_path / "other"), codec, mtime=1700000000, workers=workers
    )
    assert (built.descriptor, built.diff_id) == (plain.descriptor, plain.diff_id)
    assert store.is_stored(built.digest) == (not derive or codec == "zstd")


def test_the_listed_order_is_the_tar_order(tmp_path, big):
    src, expected = big
    store = BlobStore(tmp_path / "cache")
    built, digests = write_layer_with_file_digests(_contents(src), store, "gzip")
    assert built.descriptor.media_type == compress.LAYER_MEDIA_TYPE["gzip"]  # the text made it worth it
    with store.open(built.digest, built.descriptor.size) as f:
        tar = read_all(compress.decompressed(io.BytesIO(read_all(f))))
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        members = [(m.name, m.size) for m in tf.getmembers() if m.isfile()]
    assert [(d.path, d.size) for d in digests] == members


@pytest.mark.parametrize("codec", ["gzip", "zstd", "none"])
def test_file_digests_of_a_one_segment_layer(tmp_path, small, codec):
    """Under one segment the pipeline runs without threads; the files are hashed inline."""
    src, expected = small
    built, digests = write_layer_with_file_digests(_contents(src), BlobStore(tmp_path / "a"), codec)
    assert digests == expected
    assert built == write_layer(_contents(src), BlobStore(tmp_path / "b"), codec)


def test_a_layer_without_files_lists_none(tmp_path):
    c = LayerContents()
    c.add_dir("opt/empty")
    built, digests = write_layer_with_file_digests(c, BlobStore(tmp_path / "cache"))
    assert digests == ()
    assert built == write_layer(c, BlobStore(tmp_path / "other"))


@pytest.mark.parametrize("chunk", [1, 511, 512, 513, 4096, 70_001])
def test_files_split_anywhere_between_pieces_hash_the_same(small, chunk):
    """Files start and end at every place in a piece of the stream (the pipeline's pieces are 4 MiB)."""
    src, expected = small
    tar = TarStream(_contents(src).entries(), 0, "{path} changed")
    hasher = layer._FileHasher(tar.file_data())
    done = 0
    while done < tar.size:
        view = memoryview(bytearray(min(chunk, tar.size - done)))
        tar.readinto(view)
        hasher.update(view)
        done += len(view)
    tar.close()
    assert hasher.result() == expected
