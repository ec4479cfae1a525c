"""OCI image layout directories (``oci-layout``, ``index.json``, ``blobs/sha256/…``): read and write.

Writing is atomic at the directory level: a new layout is assembled under a temp name beside the destination and
renamed into place; an existing layout gets its new blobs (each renamed into place once complete) and then a new
``index.json`` (renamed over the old one), so readers never see an index pointing at a missing blob.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import DigestMismatchError, FormatError, InputError, OutputError
from . import media
from .derived import DerivedBlob
from .descriptor import MAX_DOCUMENT_BYTES, Descriptor, Index, Platform
from .digest import CHUNK, Stream, VerifyingReader
from .image import BlobOrigin, Image, ImageIndex, Tagged, images_of, load_image, referrers_of
from .index import read_index_file, select_manifest
from .signature import signature_tag
from .store import StoredBlob, write_all
from .tempfiles import new_directory, remove_tree

OCI_LAYOUT_FILE = b'{"imageLayoutVersion":"1.0.0"}'


# ---------------------------------------------------------------- reading


class LayoutSource:
    """Blobs of a layout directory, verified as they are read."""

    origin: BlobOrigin | None = None

    def __init__(self, root: Path):
        self.root = root

    def close(self) -> None:
        pass

    def _path(self, desc: Descriptor) -> Path:
        return self.root / "blobs" / "sha256" / desc.digest.hex

    def open_blob(self, desc: Descriptor) -> Stream:
        try:
            f = open(self._path(desc), "rb")
        except OSError as e:
            raise FormatError(
                f"{self.root}: blob {desc.digest.short} is missing ({e.strerror}); the layout is incomplete"
            ) from None
        return VerifyingReader(f, desc.digest, desc.size, what=f"blob in {self.root}")

    def has_blob(self, desc: Descriptor) -> bool:
        return self._path(desc).is_file()


def open_layout(root: Path, ref_name: str | None, platform: Platform) -> Image:
    """The image named ``ref_name`` (an ``org.opencontainers.image.ref.name``) in the layout at ``root``."""
    what = f"oci:{root}"
    raw, mt = select_manifest(read_layout_index(root), LayoutSource(root), ref_name, platform, what)
    return load_image(raw, LayoutSource(root), what, mt)


def read_layout_index(root: Path) -> Index:
    if not (root / "index.json").is_file():
        raise InputError(f"{root} is not an OCI image layout (no index.json); build or copy one there first")
    try:
        with open(root / "index.json", "rb") as f:
            index_raw = f.read(MAX_DOCUMENT_BYTES + 1)  # parse_json refuses anything longer
    except OSError as e:
        raise InputError(f"{root}/index.json: {e.strerror}") from None
    return read_index_file(index_raw, f"oci:{root}")


# ---------------------------------------------------------------- writing


def write_layout(images: Sequence[Tagged], root: Path, staged: StagedLayout | None = None) -> None:
    """Write images (or indexes) into the layout at ``root`` (created, or added to), each under its name's
    ``ref_name`` and ``full`` (an entry takes its ``ref_name`` from any entry that had it, as a tag moves).
    ``staged``: blobs the build already wrote beside ``root``, moved in rather than copied."""
    try:
        _write_layout(images, Path(root), staged.blobs if staged is not None else {})
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutputError(
                f"writing {root}: {e.strerror}; free space there or choose another --oci-layout"
            ) from None
        raise


def check_destination(root: Path) -> None:
    """A layout goes into a new or empty directory, or is added to an existing layout: nothing else is overwritten.
    Asked before a build too (``api.Outputs.check``), so a wrong folder is said before a model is packed."""
    if root.exists() and not (root / "oci-layout").is_file() and (not root.is_dir() or any(root.iterdir())):
        raise OutputError(f"{root} exists and is not an OCI layout; choose a new or empty directory")


def _write_layout(images: Sequence[Tagged], root: Path, staged: Mapping[str, Path]) -> None:
    check_destination(root)
    is_layout = (root / "oci-layout").is_file()
    if not root.parent.is_dir():
        raise OutputError(f"{root}: directory {root.parent} does not exist; create it first")
    if is_layout:
        _add_to_layout(images, root, staged)
        return
    with new_directory(root) as tmp:
        (tmp / "oci-layout").write_bytes(OCI_LAYOUT_FILE)
        _add_to_layout(images, tmp, staged, existing=[])


def _add_to_layout(
    images: Sequence[Tagged], root: Path, staged: Mapping[str, Path], existing: list[Descriptor] | None = None
) -> None:
    if existing is None:
        existing = list(read_index_file((root / "index.json").read_bytes(), str(root)).manifests)
    blob_dir = root / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    entries = list(existing)
    for tagged in images:
        entry = tagged.image
        ref_name = tagged.name.ref_name if tagged.name else None
        full_name = tagged.name.full if tagged.name else None
        for image in images_of(entry):
            _write_image(image, blob_dir, staged)
        if isinstance(entry, ImageIndex):
            _write_small(blob_dir, entry.digest.hex, entry.index.raw)
        annotations = {}
        if ref_name:
            annotations[media.REF_NAME] = ref_name
            entries = [d for d in entries if d.annotations.get(media.REF_NAME) != ref_name]
        if full_name:
            annotations[media.CONTAINERD_IMAGE_NAME] = full_name
        if not annotations:  # an untagged entry once is enough
            entries = [d for d in entries if d.digest != entry.digest or d.annotations]
        entries.append(entry.entry(annotations))
        for artifact in referrers_of(entry):  # beside the image, untagged, as the referrers API would list them
            _write_image(artifact, blob_dir)
            entries = [d for d in entries if d.digest != artifact.digest] + [artifact.entry({})]
        if entry.signature is not None:  # under cosign's tag, as in a registry
            entries = _with_signature(entries, entry.signature, signature_tag(entry.digest), blob_dir)
    _write_small(root, "index.json", Index.build(entries).raw)


def _with_signature(entries: list[Descriptor], signature: Image, tag: str, blob_dir: Path) -> list[Descriptor]:
    _write_image(signature, blob_dir)
    kept = [d for d in entries if d.annotations.get(media.REF_NAME) != tag]
    return kept + [signature.manifest.descriptor(annotations={media.REF_NAME: tag})]


def _write_image(image: Image, blob_dir: Path, staged: Mapping[str, Path] | None = None) -> None:
    """An image's (or an artifact's) blobs, then its manifest."""
    for desc in image.descriptors():
        write_blob_file(image, desc, blob_dir, staged)
    _write_small(blob_dir, image.manifest.digest.hex, image.manifest.raw)


def write_blob_file(image: Image, desc: Descriptor, blob_dir: Path, staged: Mapping[str, Path] | None = None) -> None:
    """Copy one blob into ``blob_dir`` under its hex name, via a temp file; skipped if present; moved in if the
    build ``staged`` it."""
    final = blob_dir / desc.digest.hex
    if final.is_file():
        return
    if staged and desc.digest in staged:
        os.replace(staged[desc.digest], final)
        return
    fd, tmp = tempfile.mkstemp(dir=blob_dir, prefix=".tmp-")
    try:
        try:
            with image.open_blob(desc) as src:
                copy_blob(src, fd, desc, f"blob {desc.digest.short}", whole_file=True)
            os.fchmod(fd, 0o644)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def copy_blob(src: Stream, fd: int, desc: Descriptor, what: str, whole_file: bool = False) -> None:
    """Append the blob ``src`` (opened from a ``BlobSource``) to the file ``fd``, the fastest safe way.

    - a blob of our own store (``StoredBlob``): cloned (reflink, when ``whole_file`` and the file system can)
      or copied by the kernel (``copy_file_range``), never through Python and not hashed again (see
      ``oci.store``: it was hashed when it was written);
    - a derived blob: produced and handed to the kernel without a copy; it verifies itself;
    - anything else: read and written in chunks, and verified against ``desc`` unless the stream is one that
      verifies itself (``VerifyingReader``) — never hashed twice.
    """
    if isinstance(src, StoredBlob):
        if whole_file and _reflink(src.fileno(), fd):
            return
        _copy_range(src, fd, src.size)
        return
    if isinstance(src, DerivedBlob):
        for pieces in src.segments():
            write_all(fd, pieces)
        return
    reader = src if isinstance(src, VerifyingReader) else VerifyingReader(src, desc.digest, desc.size, what)
    while data := reader.read(CHUNK):
        write_all(fd, [data])


_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def _reflink(src_fd: int, dst_fd: int) -> bool:
    """Share the blocks of ``src_fd`` with the empty file ``dst_fd`` (copy-on-write: btrfs, XFS); False if the
    file system cannot."""
    try:
        fcntl.ioctl(dst_fd, _FICLONE, src_fd)
        return True
    except OSError:
        return False


def _copy_range(src: StoredBlob, fd: int, size: int) -> None:
    left = size
    try:
        while left:
            n = os.copy_file_range(src.fileno(), fd, min(left, 1 << 30))
            if not n:
                break
            left -= n
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP) or left != size:
            raise
        while data := src.read(CHUNK):  # no kernel copy between these file systems: through Python
            write_all(fd, [data])
            left -= len(data)
    if left:
        raise DigestMismatchError(
            f"cached blob {src.digest.short} is shorter than its {size} bytes; delete it from the cache and build again"
        )


class StagedLayout:
    """Blobs for an OCI layout, made before the layout is written: a model's layer goes into a temp directory
    beside ``root`` as the build makes it (an ``oci.layer.BlobSink``), and ``write_layout`` moves it in (a rename,
    not a copy, and not a second read of the model's files). Nothing is at ``root`` until then; ``discard``
    removes what is left."""

    def __init__(self, root: Path):
        self.root = Path(root)
        parent = self.root.absolute().parent
        try:
            self.dir = Path(tempfile.mkdtemp(prefix=f".{self.root.name}.", suffix=".tmp", dir=parent))
        except OSError as e:
            raise OutputError(f"{root}: cannot write in {parent} ({e.strerror})") from None
        self.blobs: dict[str, Path] = {}
        self._fd = -1
        self._tmp = ""

    def begin(self, min_size: int, max_size: int) -> int | None:
        if self._tmp or not self.dir.is_dir():
            return None  # one blob
        self._fd, self._tmp = tempfile.mkstemp(dir=self.dir, prefix=".blob-")
        return self._fd

    def commit(self, desc: Descriptor) -> None:
        os.fchmod(self._fd, 0o644)
        os.close(self._fd)
        self._fd = -1
        final = self.dir / desc.digest.hex
        os.replace(self._tmp, final)
        self.blobs[desc.digest] = final

    def error(self, e: OSError) -> Exception:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return OutputError(f"writing {self.root}: {e.strerror}; free space there or choose another --oci-layout")
        return e

    def discard(self) -> None:
        """Remove the temp directory and whatever ``write_layout`` did not move out of it."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        remove_tree(self.dir)


def _write_small(directory: Path, name: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, directory / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def layout_tags(root: Path) -> list[str]:
    raw = (root / "index.json").read_bytes()
    return [d.annotations.get(media.REF_NAME, "") for d in read_index_file(raw, str(root)).manifests]
