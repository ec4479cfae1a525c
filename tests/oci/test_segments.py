"""The parallel layer writer: segmented gzip, incompressible detection, derived blobs (issue 4).

Layers here span several segments (``compress.SEGMENT`` is 4 MiB), so the threaded pipeline runs for real.
"""

import ctypes
import gzip
import hashlib
import io
import os
import random
import tarfile
import threading
import zlib

import pytest

from ocibuild.errors import DigestMismatchError, InputError
from ocibuild.oci import compress, layer, media, pipeline
from ocibuild.oci.archive import open_oci_archive, write_archive
from ocibuild.oci.descriptor import Platform
from ocibuild.oci.digest import Digest, read_all
from ocibuild.oci.empty import empty_image
from ocibuild.oci.image import Addendum, Tagged
from ocibuild.oci.layer import LayerContents, write_layer
from ocibuild.oci.layout import open_layout, write_layout
from ocibuild.oci.mutate import ConfigChanges, mutate, timestamp
from ocibuild.oci.name import ImageName
from ocibuild.oci.store import BlobStore
from ocibuild.oci.tarstream import TarStream

MiB = 1 << 20


def _random(n: int, seed: int = 0) -> bytes:
    """Incompressible bytes, reproducibly."""
    return random.Random(seed).randbytes(n)


def _text(n: int) -> bytes:
    line = b"def score(x):\n    return sum(w * v for w, v in zip(weights, x))  # a line of code\n"
    return (line * (n // len(line) + 1))[:n]


@pytest.fixture(scope="module")
def mixed_tree(tmp_path_factory):
    """Text (deflates well) then random data (does not): a gzip layer with both kinds of segment."""
    root = tmp_path_factory.mktemp("mixed")
    (root / "a-code.py").write_bytes(_text(9 * MiB))
    (root / "b-weights.bin").write_bytes(_random(7 * MiB + 123))
    return root


def _contents(src) -> LayerContents:
    c = LayerContents()
    c.add_tree(src, "model")
    return c


def _blob(store, built) -> bytes:
    with store.open(built.descriptor.digest, built.descriptor.size) as f:
        return read_all(f)


def _tar_of(blob: bytes) -> bytes:
    return read_all(compress.decompressed(io.BytesIO(blob)))


def test_parallel_gzip_is_deterministic_whatever_the_workers(tmp_path, mixed_tree):
    results = set()
    blobs = set()
    for i, workers in enumerate([1, 2, 3, 8, 2]):
        store = BlobStore(tmp_path / f"cache{i}")
        built = write_layer(_contents(mixed_tree), store, "gzip", workers=workers)
        results.add((built.descriptor, built.diff_id))
        blobs.add(hashlib.sha256(_blob(store, built)).hexdigest())
    assert len(results) == 1 and len(blobs) == 1
    [(desc, _)] = results
    assert desc.media_type == media.OCI_LAYER_GZIP


def test_tar_stream_is_the_same_whatever_the_read_size(mixed_tree):
    entries = _contents(mixed_tree).entries()
    streams = set()
    for chunk in (512, 100_000, 4 * MiB, 17 * MiB):
        tar = TarStream(entries, 0, "{path} changed")
        out = bytearray()
        while len(out) < tar.size:
            view = memoryview(bytearray(min(chunk, tar.size - len(out))))
            tar.readinto(view)
            out += view
        tar.close()
        streams.add(hashlib.sha256(out).hexdigest())
    assert len(streams) == 1


def _members(blob: bytes) -> list[bytes]:
    """The uncompressed contents of each gzip member of ``blob``, read one at a time by zlib."""
    out = []
    while blob:
        d = zlib.decompressobj(31)
        out.append(d.decompress(blob))
        assert d.eof, "a member ends before the blob does"
        blob = d.unused_data
    return out


def test_segmented_gzip_is_plain_gzip_to_every_reader(tmp_path, mixed_tree):
    store = BlobStore(tmp_path / "cache")
    built = write_layer(_contents(mixed_tree), store, "gzip")
    blob = store.path(built.descriptor.digest).read_bytes()
    assert blob[:10] == compress.GZIP_HEADER  # no name, mtime 0, fixed OS byte
    plain = gzip.decompress(blob)  # CRC and length in each member's trailer are checked too
    assert plain == _tar_of(blob)
    members = _members(blob)  # one whole member per segment, none referring to another's bytes
    assert [len(m) for m in members[:-1]] == [compress.SEGMENT] * (len(members) - 1)
    assert b"".join(members) == plain
    assert Digest.of(plain) == built.diff_id
    # it did shrink (the code) without paying for the random part
    assert len(blob) < len(plain) * 0.7
    with tarfile.open(fileobj=io.BytesIO(plain)) as tf:
        data = {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}
    assert data["model/b-weights.bin"] == (mixed_tree / "b-weights.bin").read_bytes()


def test_segments_are_stored_or_deflated_by_their_content():
    gz = compress.GzipSegments()
    random_seg = memoryview(_random(4 * MiB))
    text_seg = memoryview(_text(4 * MiB))
    assert not compress.deflate_pays(random_seg) and compress.deflate_pays(text_seg)
    stored = gz.encode(random_seg)
    assert stored.mode == compress.STORED and stored.size == 4 * MiB
    assert sum(len(p) for p in stored.pieces) == 10 + 4 * MiB + 5 * -(-(4 * MiB) // 0xFFFF) + 8
    assert gzip.decompress(b"".join(bytes(p) for p in stored.pieces)) == random_seg
    assert gz.encode(text_seg).mode == compress.DEFLATED
    assert gz.encode(text_seg, compress.STORED).mode == compress.STORED  # a recorded plan wins


def test_incompressible_layer_is_a_plain_tar_whose_digest_is_its_diff_id(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "weights.bin").write_bytes(_random(9 * MiB))
    store = BlobStore(tmp_path / "cache")
    built = write_layer(_contents(src), store, "gzip")
    assert built.descriptor.media_type == media.OCI_LAYER
    assert built.descriptor.digest == built.diff_id
    assert Digest.of(store.path(built.descriptor.digest).read_bytes()) == built.diff_id


def test_incompressible_layer_can_stay_gzip(tmp_path, monkeypatch):
    monkeypatch.setattr(compress, "PLAIN_WHEN_INCOMPRESSIBLE", False)
    src = tmp_path / "src"
    src.mkdir()
    (src / "weights.bin").write_bytes(_random(9 * MiB))
    store = BlobStore(tmp_path / "cache")
    built = write_layer(_contents(src), store, "gzip")
    blob = store.path(built.descriptor.digest).read_bytes()
    assert built.descriptor.media_type == media.OCI_LAYER_GZIP
    assert 9 * MiB < len(blob) < 9 * MiB * 1.001  # stored blocks: 5 bytes per 64 KiB
    assert Digest.of(gzip.decompress(blob)) == built.diff_id


def test_whole_layer_estimate():
    assert not compress.worth_compressing([_random(64 << 10, seed=i) for i in range(8)])
    assert compress.worth_compressing([_text(64 << 10)] * 8)
    assert compress.window_offsets(100) == [0]
    offsets = compress.window_offsets(10 << 30)
    assert len(offsets) == compress.WINDOWS and offsets[0] == 0
    assert offsets[-1] == (10 << 30) - compress.WINDOW


@pytest.mark.parametrize("codec", ["gzip", "none", "zstd"])
def test_codecs_round_trip_through_the_pipeline(tmp_path, mixed_tree, codec):
    store = BlobStore(tmp_path / "cache")
    built = write_layer(_contents(mixed_tree), store, codec)
    blob = _blob(store, built)
    assert compress.detect(blob) == codec
    assert Digest.of(_tar_of(blob)) == built.diff_id


def test_a_file_that_changes_while_packed_is_an_error_and_leaves_nothing(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    big = src / "grows.bin"
    big.write_bytes(_random(10 * MiB))
    contents = _contents(src)
    with open(big, "ab") as f:
        f.write(b"more")
    store = BlobStore(tmp_path / "cache")
    with pytest.raises(InputError, match="grows.bin changed while being packed"):
        write_layer(contents, store, "gzip")
    assert not os.listdir(store.root / "tmp") and not os.listdir(store.root / "blobs" / "sha256")


# ---------------------------------------------------------------- derived blobs


@pytest.fixture
def small_derive(monkeypatch):
    monkeypatch.setattr(layer, "DERIVE_MIN", 1 * MiB)


def _model(tmp_path, data: bytes):
    src = tmp_path / "model"
    src.mkdir(exist_ok=True)
    (src / "weights.bin").write_bytes(data)
    return src


@pytest.mark.parametrize("kind", ["plain", "gzip"])
def test_derived_blob_is_not_copied_and_reads_back_verified(tmp_path, small_derive, mixed_tree, kind):
    src = _model(tmp_path, _random(10 * MiB)) if kind == "plain" else mixed_tree
    store = BlobStore(tmp_path / "cache")
    built = write_layer(_contents(src), store, "gzip", derive=True)
    digest = built.descriptor.digest
    assert not store.is_stored(digest) and store.has(digest) and store.can_produce(digest)
    assert store.recipe(digest)["codec"] == ("none" if kind == "plain" else "gzip")
    blob = _blob(store, built)
    assert Digest.of(blob) == digest and len(blob) == built.descriptor.size
    assert Digest.of(_tar_of(blob)) == built.diff_id
    # the same layer written into the store has the same bytes
    stored = write_layer(_contents(src), BlobStore(tmp_path / "other"), "gzip")
    assert stored == built


def test_derived_blob_is_gone_once_its_source_changes(tmp_path, small_derive):
    src = _model(tmp_path, _random(6 * MiB))
    store = BlobStore(tmp_path / "cache")
    digest = write_layer(_contents(src), store, "gzip", derive=True).descriptor.digest
    assert store.has(digest)
    os.utime(src / "weights.bin", ns=(1, 1))  # touched: same bytes, other mtime
    assert not store.can_produce(digest)
    assert store.has(digest)  # the cache knows it, and reading it says why it cannot be had:
    with pytest.raises(
        InputError, match="weights.bin changed since the layer .* was built from it; package again"
    ):
        read_all(store.open(digest))


def test_derived_blob_with_an_undetected_edit_fails_verification(tmp_path, small_derive):
    """Same size, mtime put back: the identity matches, but the bytes produced no longer hash to the digest."""
    src = _model(tmp_path, _random(6 * MiB))
    weights = src / "weights.bin"
    store = BlobStore(tmp_path / "cache")
    built = write_layer(_contents(src), store, "gzip", derive=True)
    st = weights.stat()
    with open(weights, "r+b") as f:
        f.seek(5 * MiB)
        f.write(b"tampered")
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert store.has(built.descriptor.digest)
    with pytest.raises(DigestMismatchError, match="package again"):
        _blob(store, built)


def test_derived_blob_closed_early_stops_its_threads(tmp_path, small_derive):
    src = _model(tmp_path, _random(30 * MiB))
    store = BlobStore(tmp_path / "cache")
    built = write_layer(_contents(src), store, "gzip", derive=True)
    before = threading.active_count()
    for _ in range(3):
        with store.open(built.descriptor.digest, built.descriptor.size) as f:
            assert len(f.read(1000)) == 1000
    assert threading.active_count() <= before


def test_export_of_derived_and_stored_blobs_round_trips(tmp_path, small_derive, mixed_tree):

    store = BlobStore(tmp_path / "cache")
    big = write_layer(_contents(mixed_tree), store, "gzip", derive=True)
    small = tmp_path / "app.py"
    small.write_bytes(b"print('hi')\n")
    c = LayerContents()
    c.add_file(small, "app/app.py")
    app = write_layer(c, store)
    assert not store.is_stored(big.descriptor.digest) and store.is_stored(app.descriptor.digest)
    image = mutate(empty_image(Platform()), [Addendum(big, "model"), Addendum(app, "app")], ConfigChanges(), timestamp(0))
    tar = tmp_path / "image.tar"
    write_archive([Tagged(image, ImageName("x:1", "1", None))], tar)
    back = open_oci_archive(tar, "1", Platform())
    assert back.digest == image.digest
    assert [read_all(back.open_blob(d)) for d in back.layers] == [_blob(store, big), _blob(store, app)]
    out = tmp_path / "layout"
    write_layout([Tagged(image, ImageName(None, "1", None))], out)
    again = open_layout(out, "1", Platform())
    assert [read_all(again.open_blob(d)) for d in again.layers] == [
        _blob(store, big),
        _blob(store, app),
    ]


def test_cached_blob_is_trusted_but_its_size_is_checked(tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"x" * 5000)
    c = LayerContents()
    c.add_file(src, "f")
    store = BlobStore(tmp_path / "cache")
    built = write_layer(c, store, "none")
    with pytest.raises(DigestMismatchError, match="declares"):
        store.open(built.descriptor.digest, built.descriptor.size + 1)


def test_reads_are_placed_off_page_alignment(tmp_path):
    """Each segment is read where its main file's bytes sit half a page from their page-cache offset (4K
    aliasing made the kernel's copy 3-4 times slower here); the bytes are the same wherever they land."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(_random(100))
    (src / "b.bin").write_bytes(_random(6 * MiB))
    tar = TarStream(_contents(src).entries(), 0, "{path} changed")
    start_b = tar.main_file_start(0, 4 * MiB)
    assert start_b is not None and start_b > 100 and start_b % 512 == 0
    assert tar.main_file_start(4 * MiB, 4 * MiB) == start_b
    assert tar.main_file_start(tar.size - 1024, 1024) is None  # the end blocks only
    buf = bytearray(compress.SEGMENT + pipeline.PAGE)
    shift = pipeline.unaliased(buf, start_b)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    assert 0 <= shift < pipeline.PAGE and (base + shift - start_b) % pipeline.PAGE == pipeline.PAGE // 2


def test_a_segment_encodes_to_the_same_bytes_wherever_it_sits_and_whatever_surrounds_it():
    """The encoding is a function of the segment's bytes: not of its buffer's alignment, the stale bytes after it
    in a reused buffer, or the thread that encodes it (ISA-L, used before, now and then gave another encoding)."""
    seg = _text(2 * MiB) + _random(MiB, seed=3) + _text(MiB)[::-1]
    gz = compress.GzipSegments()
    expected = b"".join(bytes(p) for p in gz.encode(memoryview(seg)).pieces)

    def encode_at(shift: int) -> bytes:
        buf = bytearray(_random(len(seg) + 8192, seed=shift))
        buf[shift : shift + len(seg)] = seg
        return b"".join(bytes(p) for p in gz.encode(memoryview(buf)[shift : shift + len(seg)]).pieces)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        encodings = set(pool.map(encode_at, [0, 1, 7, 63, 2048, 4095, 4097, 8191] * 2))
    assert encodings == {expected}
    assert gzip.decompress(expected) == seg
