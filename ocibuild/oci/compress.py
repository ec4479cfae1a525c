"""Layer compression codecs (gzip, zstd, none) and decompression by magic bytes.

Layers are encoded in segments: the uncompressed stream is cut at fixed offsets (``SEGMENT``) and each segment is
encoded on its own, so segments can be encoded on every core at once and the bytes still depend only on the
content. gzip (the default, the one every engine reads) is one gzip member, one deflate stream, in which each
segment is either deflated by ISA-L (``isal``, level 1: 0.5-0.6 GB/s per core on model weights, at the ratio of
zlib level 6, against zlib's 22-29 MB/s, docs/decisions.md) or, when a sample of it shows that deflate would save less than
10 %, written as *stored* deflate blocks: still gzip for every reader, at the cost of a CRC (10 GB/s) instead of a
compression (0.5 GB/s). A layer that as a whole would not shrink by 10 % (estimated on 64 windows spread over it)
is not wrapped in gzip at all: it is written as a plain tar (``application/vnd.oci.image.layer.v1.tar``, which
Docker 20.10, podman and registries take), whose digest is its diff_id, so building it costs one sha256 pass, not
two. Float32 weights deflate to 0.92 of their size (fp16 0.92, bf16 0.78): a float32 model's layer is a plain tar.
Every choice is a function of the bytes only.

Determinism: gzip headers carry no time, no name and a fixed OS byte; stored blocks and plain tars are exact by
construction, on any machine. Deflated segments are the same for a given ISA-L version (part of every cache key,
``ENCODING_ID``) on CPUs of the same class (ISA-L picks its code by CPU features; as zlib-ng and zlib differ, a
compressor's bytes are only as stable as the compressor). zstd is one stream (``zstandard`` level 3, deterministic
for a given library version); none is the tar itself.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from typing import Protocol

import isal
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
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no flags, mtime 0, XFL 0, OS "unknown"
_STORED_MAX = 0xFFFF
_STORED_FULL = struct.pack("<BHH", 0, _STORED_MAX, _STORED_MAX ^ 0xFFFF)
_FINAL_EMPTY_BLOCK = b"\x03\x00"  # BFINAL=1, fixed Huffman, end-of-block: ends the deflate stream
# Everything the encoded bytes depend on besides the content; cache keys and derived-blob recipes include it.
ENCODING_ID = (
    f"seg{SEGMENT}-sample{SAMPLE}-store{STORE_ABOVE}-windows{WINDOWS}x{WINDOW}-plain{PLAIN_WHEN_INCOMPRESSIBLE}"
    f"-isal{isal.__version__}-zstd{zstandard.__version__}"
)

STORED, DEFLATED = "S", "D"


class Encoded:
    """One encoded segment: its output pieces (buffers, written in order), how it was encoded, its CRC-32."""

    __slots__ = ("pieces", "mode", "crc", "size")

    def __init__(self, pieces: Sequence, mode: str, crc: int, size: int):
        self.pieces = pieces
        self.mode = mode
        self.crc = crc
        self.size = size  # uncompressed bytes


class SegmentEncoder(Protocol):
    codec: str
    parallel: bool  # segments may be encoded concurrently (else strictly in order, by one worker)

    def header(self) -> bytes: ...
    def encode(self, view: memoryview, mode: str | None = None) -> Encoded: ...
    def trailer(self, crc: int, size: int) -> bytes: ...


def deflate_pays(view: memoryview) -> bool:
    """Whether deflating this segment saves more than ``1 - STORE_ABOVE`` of it, judged on four samples."""
    n = len(view)
    sample = view if n <= 4 * SAMPLE else b"".join(view[k * n // 4 : k * n // 4 + SAMPLE] for k in range(4))
    return len(isal_zlib.compress(sample, 1, -15)) <= STORE_ABOVE * len(sample)


def window_offsets(size: int) -> list[int]:
    """Where the whole-layer estimate samples a stream of ``size`` bytes (all of it when it is small)."""
    if size <= WINDOWS * WINDOW:
        return list(range(0, size, WINDOW))
    return [k * (size - WINDOW) // (WINDOWS - 1) for k in range(WINDOWS)]


def worth_compressing(windows: Sequence[bytes]) -> bool:
    """Whether a stream whose sample windows these are deflates to at most ``STORE_ABOVE`` of its size."""
    raw = sum(len(w) for w in windows)
    packed = sum(len(isal_zlib.compress(w, 1, -15)) for w in windows)
    return packed <= STORE_ABOVE * raw


def stored_blocks(view: memoryview) -> list:
    """``view`` as non-final stored deflate blocks: 5-byte headers interleaved with slices of ``view`` (no copy)."""
    pieces: list = []
    n = len(view)
    for start in range(0, n, _STORED_MAX):
        k = min(_STORED_MAX, n - start)
        pieces.append(_STORED_FULL if k == _STORED_MAX else struct.pack("<BHH", 0, k, k ^ 0xFFFF))
        pieces.append(view[start : start + k])
    return pieces


class GzipSegments:
    """One gzip member whose deflate stream is the concatenation of independently encoded segments.

    A deflated segment is a fresh ISA-L raw deflate stream ended by a sync flush (byte-aligned, not final), so it
    never refers to bytes before its start; a stored one is stored blocks. The stream ends with an empty final
    block and the gzip trailer (the CRC-32 of the whole content, combined from the segments' CRCs).
    """

    codec = "gzip"
    parallel = True

    def header(self) -> bytes:
        return GZIP_HEADER

    def encode(self, view: memoryview, mode: str | None = None) -> Encoded:
        crc = isal_zlib.crc32(view)
        if mode is None:
            mode = DEFLATED if deflate_pays(view) else STORED
        if mode == STORED:
            return Encoded(stored_blocks(view), STORED, crc, len(view))
        c = isal_zlib.compressobj(1, isal_zlib.DEFLATED, -15)
        return Encoded([c.compress(view), c.flush(isal_zlib.Z_SYNC_FLUSH)], DEFLATED, crc, len(view))

    def trailer(self, crc: int, size: int) -> bytes:
        return _FINAL_EMPTY_BLOCK + struct.pack("<II", crc, size & 0xFFFFFFFF)


class PlainSegments:
    """No compression: the blob is the tar itself (its digest is the diff_id)."""

    codec = "none"
    parallel = True

    def header(self) -> bytes:
        return b""

    def encode(self, view: memoryview, mode: str | None = None) -> Encoded:
        return Encoded([view], STORED, 0, len(view))

    def trailer(self, crc: int, size: int) -> bytes:
        return b""


class ZstdSegments:
    """One zstd stream (level 3); stateful, so segments are encoded in order by a single worker."""

    codec = "zstd"
    parallel = False

    def __init__(self, level: int = 3):
        self._c = zstandard.ZstdCompressor(level=level).compressobj()

    def header(self) -> bytes:
        return b""

    def encode(self, view: memoryview, mode: str | None = None) -> Encoded:
        return Encoded([self._c.compress(view)], DEFLATED, 0, len(view))

    def trailer(self, crc: int, size: int) -> bytes:
        return self._c.flush()


def segment_encoder(codec: str) -> SegmentEncoder:
    if codec == "gzip":
        return GzipSegments()
    if codec == "zstd":
        return ZstdSegments()
    if codec == "none":
        return PlainSegments()
    raise UsageError(f"unknown compression {codec!r}; use one of: {', '.join(CODECS)}")


def combine_crc(crc: int, crc2: int, len2: int) -> int:
    return isal_zlib.crc32_combine(crc, crc2, len2)


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
