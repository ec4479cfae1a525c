"""Layer compression codecs (gzip, zstd, none) and decompression by magic bytes.

Layers are encoded in segments: the uncompressed stream is cut at fixed offsets (``SEGMENT``) and each segment is
encoded on its own, so segments can be encoded on every core at once and the bytes still depend only on the
content. gzip (the default, the one every engine reads) is one gzip member per segment, as eStargz layers and BGZF
files are: RFC 1952 allows any number of members, and Go's compress/gzip (Docker, containerd, podman, skopeo,
registries), Python's gzip and pigz read them as one stream. Each segment is either deflated by libdeflate
(``deflate``, level 1: about 200 MB/s per core, to 0.32 of a dependencies tar, docs/decisions.md) or, when a sample of
it shows that deflate would save less than 10 %, written as *stored* deflate blocks: still gzip for every reader, at
the cost of a CRC (8 GB/s) instead of a compression. A layer that as a whole would not shrink by 10 % (estimated on
64 windows spread over it) is not wrapped in gzip at all: it is written as a plain tar
(``application/vnd.oci.image.layer.v1.tar``, which Docker 20.10, podman and registries take), whose digest is its
diff_id, so building it costs one sha256 pass, not two. Float32 weights deflate to 0.92 of their size (fp16 0.92,
bf16 0.78): a float32 model's layer is a plain tar. Every choice is a function of the bytes only.

Determinism: gzip headers carry no time, no name and a fixed OS byte; stored blocks and plain tars are exact by
construction, on any machine. libdeflate's output is a function of its input, level and version (part of every
cache key, ``ENCODING_ID``), whatever the CPU, the buffer's alignment or the bytes around it; ISA-L, used before
it, now and then gave another valid encoding of the same segment under load (docs/decisions.md), and is kept for
what has no such freedom: CRCs and decompression. zstd is one stream (``zstandard`` level 3, deterministic for a
given library version); none is the tar itself.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from typing import Protocol

import deflate
import zstandard
from isal import igzip, isal_zlib

from ..errors import UsageError
from . import media
from .digest import Stream

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

CODECS = ("gzip", "zstd", "none")
LAYER_MEDIA_TYPE = {"gzip": media.OCI_LAYER_GZIP, "zstd": media.OCI_LAYER_ZSTD, "none": media.OCI_LAYER}


# ---------------------------------------------------------------- segmented encoders (writing layers)

SEGMENT = 4 << 20  # the uncompressed stream is cut here; part of the format: changing it changes digests
SAMPLE = 16 << 10  # four samples of this size, spread over a segment, decide whether deflate pays
STORE_ABOVE = 0.90  # a segment whose sample deflates to more than this fraction of its size is stored
WINDOWS, WINDOW = 64, 64 << 10  # the whole-layer estimate: this many windows of this size, evenly spread
PLAIN_WHEN_INCOMPRESSIBLE = True  # a gzip layer that would not shrink is written as a plain tar instead
LEVEL = 1  # libdeflate's level for deflated segments
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no flags, mtime 0, XFL 0, OS "unknown"
_STORED_MAX = 0xFFFF
# Everything the encoded bytes depend on besides the content; cache keys and derived-blob recipes include it.
ENCODING_ID = (
    f"seg{SEGMENT}-sample{SAMPLE}-store{STORE_ABOVE}-windows{WINDOWS}x{WINDOW}-plain{PLAIN_WHEN_INCOMPRESSIBLE}"
    f"-gzip-members-libdeflate{deflate.__version__}-level{LEVEL}-zstd{zstandard.__version__}"
)

STORED, DEFLATED = "S", "D"


class Encoded:
    """One encoded segment: its output pieces (buffers, written in order) and how it was encoded."""

    __slots__ = ("pieces", "mode", "size")

    def __init__(self, pieces: Sequence, mode: str, size: int):
        self.pieces = pieces
        self.mode = mode
        self.size = size  # uncompressed bytes


class SegmentEncoder(Protocol):
    codec: str
    parallel: bool  # segments may be encoded concurrently (else strictly in order, by one worker)

    def header(self) -> bytes: ...
    def encode(self, view: memoryview, mode: str | None = None) -> Encoded: ...
    def trailer(self) -> bytes: ...


def deflate_pays(view: memoryview) -> bool:
    """Whether deflating this segment saves more than ``1 - STORE_ABOVE`` of it, judged on four samples."""
    n = len(view)
    sample = view if n <= 4 * SAMPLE else b"".join(view[k * n // 4 : k * n // 4 + SAMPLE] for k in range(4))
    return len(deflate.deflate_compress(sample, LEVEL)) <= STORE_ABOVE * len(sample)


def window_offsets(size: int) -> list[int]:
    """Where the whole-layer estimate samples a stream of ``size`` bytes (all of it when it is small)."""
    if size <= WINDOWS * WINDOW:
        return list(range(0, size, WINDOW))
    return [k * (size - WINDOW) // (WINDOWS - 1) for k in range(WINDOWS)]


def worth_compressing(windows: Sequence[bytes]) -> bool:
    """Whether a stream whose sample windows these are deflates to at most ``STORE_ABOVE`` of its size."""
    raw = sum(len(w) for w in windows)
    packed = sum(len(deflate.deflate_compress(w, LEVEL)) for w in windows)
    return packed <= STORE_ABOVE * raw


def stored_blocks(view: memoryview) -> list:
    """``view`` as stored deflate blocks, the last one final: 5-byte headers interleaved with slices of ``view``
    (no copy)."""
    pieces: list = []
    n = len(view)
    for start in range(0, n, _STORED_MAX):
        k = min(_STORED_MAX, n - start)
        pieces.append(struct.pack("<BHH", int(start + k == n), k, k ^ 0xFFFF))
        pieces.append(view[start : start + k])
    return pieces


def _gzip_trailer(view: memoryview) -> bytes:
    return struct.pack("<II", isal_zlib.crc32(view), len(view) & 0xFFFFFFFF)


class GzipSegments:
    """A gzip stream of one member per segment: the segment's own deflate stream, stored or by libdeflate, between
    a fixed header and the segment's CRC-32 and length. A member never refers to bytes outside its segment."""

    codec = "gzip"
    parallel = True

    def header(self) -> bytes:
        return b""

    def encode(self, view: memoryview, mode: str | None = None) -> Encoded:
        if mode is None:
            mode = DEFLATED if deflate_pays(view) else STORED
        body = stored_blocks(view) if mode == STORED else [deflate.deflate_compress(view, LEVEL)]
        return Encoded([GZIP_HEADER, *body, _gzip_trailer(view)], mode, len(view))

    def trailer(self) -> bytes:
        return b""


class PlainSegments:
    """No compression: the blob is the tar itself (its digest is the diff_id)."""

    codec = "none"
    parallel = True

    def header(self) -> bytes:
        return b""

    def encode(self, view: memoryview, mode: str | None = None) -> Encoded:
        return Encoded([view], STORED, len(view))

    def trailer(self) -> bytes:
        return b""


class ZstdSegments:
    """One zstd stream (level 3); stateful, so segments are encoded in order by a single worker. ``threads``:
    zstd's own workers (0, the default: none; other counts give other bytes, so layers never use them)."""

    codec = "zstd"
    parallel = False

    def __init__(self, level: int = 3, threads: int = 0):
        self._c = zstandard.ZstdCompressor(level=level, threads=threads).compressobj()

    def header(self) -> bytes:
        return b""

    def encode(self, view: memoryview, mode: str | None = None) -> Encoded:
        return Encoded([self._c.compress(view)], DEFLATED, len(view))

    def trailer(self) -> bytes:
        return self._c.flush()


def segment_encoder(codec: str) -> SegmentEncoder:
    if codec == "gzip":
        return GzipSegments()
    if codec == "zstd":
        return ZstdSegments()
    if codec == "none":
        return PlainSegments()
    raise UsageError(f"unknown compression {codec!r}; use one of: {', '.join(CODECS)}")


# ---------------------------------------------------------------- reading


def codec_of_media_type(media_type: str) -> str:
    if media_type.endswith("+gzip") or media_type.endswith(".tar.gzip"):
        return "gzip"
    if media_type.endswith("+zstd") or media_type.endswith(".tar.zstd"):
        return "zstd"
    return "none"


def detect(head: bytes) -> str:
    """The codec of a stream from its first bytes."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


class _Peeked(io.RawIOBase):
    """A stream with some already-read bytes put back in front."""

    def __init__(self, head: bytes, rest: Stream):
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def decompressed(stream: Stream) -> Stream:
    """The uncompressed bytes of a layer stream, whatever its codec (detected by magic, not trusted from labels)."""
    head = stream.read(4)
    raw = io.BufferedReader(_Peeked(head, stream), 1 << 20)
    codec = detect(head)
    if codec == "gzip":
        return igzip.IGzipFile(fileobj=raw, mode="rb")
    if codec == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False)
    return raw
