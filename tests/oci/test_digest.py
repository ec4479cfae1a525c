import io

import pytest

from ocibuild.errors import DigestMismatchError
from ocibuild.oci.digest import Digest, HashingWriter, VerifyingReader, read_all, sha256_file


def test_digest_validates():
    d = Digest.of(b"abc")
    assert d == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert d.hex.startswith("ba7816bf") and d.short == "ba7816bf8f01"
    for bad in ("sha256:abc", "md5:" + "0" * 64, "sha256:" + "G" * 64, "SHA256:" + "0" * 64):
        with pytest.raises(ValueError):
            Digest(bad)


def test_verifying_reader_accepts_good_content():
    data = b"x" * 100_000
    r = VerifyingReader(io.BytesIO(data), Digest.of(data), len(data))
    assert read_all(r) == data


@pytest.mark.parametrize(
    "content,size",
    [(b"hello world!", 11), (b"hello worl", 11), (b"HELLO WORLD", 11), (b"hello world" + b"x" * 5000, 11)],
    ids=["longer", "truncated", "altered", "much-longer"],
)
def test_verifying_reader_rejects_bad_content(content, size):
    good = b"hello world"
    r = VerifyingReader(io.BytesIO(content), Digest.of(good), size, what="layer")
    with pytest.raises(DigestMismatchError, match="layer"):
        read_all(r)


def test_verifying_reader_without_size_checks_digest():
    r = VerifyingReader(io.BytesIO(b"tampered"), Digest.of(b"original"))
    with pytest.raises(DigestMismatchError, match="fetch it again"):
        read_all(r)


def test_hashing_writer_and_file_digest(tmp_path):
    p = tmp_path / "f"
    data = bytes(range(256)) * 9000
    with open(p, "wb") as f:
        w = HashingWriter(f)
        w.write(data[:1000])
        w.write(data[1000:])
    assert w.digest == Digest.of(data) and w.size == len(data)
    assert sha256_file(p) == (Digest.of(data), len(data))
