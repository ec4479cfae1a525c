"""Image tarballs: the combined file that ``docker load``, ``podman load`` and OCI tools all read, and readers for
``oci-archive:`` and ``docker-archive:`` (``docker save``) files.

The written tarball is an OCI image layout plus Docker's ``manifest.json`` (docs/decisions.md, measured: Docker 20.10
needs ``manifest.json``, OCI tools need ``index.json``; Docker ≥ 25 writes exactly this). Its entries are
deterministic, it is streamed (blobs are never held in memory) and it is written to a temp name and renamed, so a
failed export leaves nothing at the destination.

Reading never extracts: members are located by offset in the tar and streamed from there, verified by digest.
Names are only looked up, never used as paths, so hostile names cannot escape anywhere.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import posixpath
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import FormatError, InputError, OcibuildError, OutputError
from . import compress, media
from .descriptor import Descriptor, Index, Manifest, Platform, canonical_json, parse_json
from .digest import CHUNK, Digest, Stream, VerifyingReader, is_digest
from .image import BlobOrigin, Image, ImageIndex, Tagged, images_of, load_image, referrers_of
from .index import fetch_manifest, load_entry, read_index_file, select_manifest
from .layout import OCI_LAYOUT_FILE, copy_blob
from .name import ImageName, parse_reference
from .signature import is_signature_image, signature_tag
from .store import write_all
from .tarsafe import BoundedTarInfo
from .tempfiles import locked_temp, sweep

# ---------------------------------------------------------------- writing


def _tar_header(name: str, size: int, mtime: int, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.mtime = mtime
    info.mode = 0o755 if directory else 0o644
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


@dataclass(frozen=True)
class _BlobPart:
    """A blob's bytes in the stream, opened only when it is written."""

    image: Image
    desc: Descriptor


def _archive_parts(
    images: Sequence[Tagged],
    mtime: int,
    lead: Sequence[Descriptor] = (),
    staged: Sequence[Descriptor] | None = None,
) -> Iterator[bytes | _BlobPart]:
    """The tarball as headers and small documents (bytes) and blobs (``_BlobPart``, padding included after).
    ``lead``: blobs written first, right after the directories (the model's layers: see ``StagedArchive``);
    ``staged``: the file already holds the directories and these blobs (None: nothing yet)."""
    seen: set[str] = {d.digest for d in staged or ()}
    if staged is None:
        yield _tar_header("blobs/", 0, mtime, directory=True)
        yield _tar_header("blobs/sha256/", 0, mtime, directory=True)
    holders = {d.digest: image for t in images for image in images_of(t.image) for d in image.descriptors()}
    for desc in lead:
        if desc.digest not in seen and desc.digest in holders:
            seen.add(desc.digest)
            yield from _blob_part(holders[desc.digest], desc, mtime)
    for t in images:
        yield from _blob_parts(t.image, seen, mtime)
    artifacts = {a.digest: a for t in images for a in referrers_of(t.image)}  # beside their images, untagged
    for artifact in artifacts.values():
        yield from _blob_parts(artifact, seen, mtime)
    signatures = {signature_tag(t.image.digest): t.image.signature for t in images if t.image.signature is not None}
    for signature in signatures.values():  # under cosign's tag, in index.json only (docker load never sees them)
        yield from _blob_parts(signature, seen, mtime)
    entries = [_index_entry(t) for t in images] + [a.entry({}) for a in artifacts.values()]
    entries += [s.manifest.descriptor(annotations={media.REF_NAME: tag}) for tag, s in signatures.items()]
    yield from _small("index.json", Index.build(entries).raw, mtime)
    if docker := _docker_manifest(images):
        yield from _small("manifest.json", canonical_json(docker), mtime)
    yield from _small("oci-layout", OCI_LAYOUT_FILE, mtime)
    yield bytes(1024)


def _blob_part(image: Image, desc: Descriptor, mtime: int) -> Iterator[bytes | _BlobPart]:
    yield _tar_header(f"blobs/sha256/{desc.digest.hex}", desc.size, mtime)
    yield _BlobPart(image, desc)
    if pad := -desc.size % 512:
        yield bytes(pad)


def _blob_parts(entry: Image | ImageIndex, seen: set[str], mtime: int) -> Iterator[bytes | _BlobPart]:
    """Every blob and manifest of ``entry`` not written yet (``seen``): an image's blobs, then its manifest; an
    index's images, then the index."""
    for image in images_of(entry):
        for desc in image.descriptors():
            if desc.digest in seen:
                continue
            seen.add(desc.digest)
            yield from _blob_part(image, desc, mtime)
        if image.digest not in seen:
            seen.add(image.digest)
            yield from _small(f"blobs/sha256/{image.digest.hex}", image.manifest.raw, mtime)
    if isinstance(entry, ImageIndex) and entry.digest not in seen:
        seen.add(entry.digest)
        yield from _small(f"blobs/sha256/{entry.digest.hex}", entry.index.raw, mtime)


def _index_entry(t: Tagged) -> Descriptor:
    annotations = {}
    if t.name and t.name.full:
        annotations[media.CONTAINERD_IMAGE_NAME] = t.name.full
    if t.name and t.name.ref_name:
        annotations[media.REF_NAME] = t.name.ref_name
    return t.image.entry(annotations)


def _docker_manifest(images: Sequence[Tagged]) -> list[dict]:
    """Docker's ``manifest.json``: one entry per single-platform container image, all its names in ``RepoTags``
    (as ``docker save`` writes it; two entries for one image would make ``docker load`` load it twice)."""
    entries: dict[str, dict] = {}
    for t in images:
        image = docker_image_of(t.image)
        if image is None:
            continue
        entry = entries.setdefault(
            image.digest,
            {
                "Config": f"blobs/sha256/{image.manifest.config.digest.hex}",
                "RepoTags": None,
                "Layers": [f"blobs/sha256/{d.digest.hex}" for d in image.layers],
            },
        )
        if t.name and t.name.repo_tag:
            entry["RepoTags"] = [*(entry["RepoTags"] or []), t.name.repo_tag]
    return list(entries.values())


def docker_image_of(entry: Image | ImageIndex) -> Image | None:
    """The image ``docker load`` gets of an entry: a container image itself; of an index, its first platform's
    image (Docker's ``manifest.json`` holds one platform per name, as Docker 25's own ``docker save`` writes it);
    none for an artifact."""
    for image in images_of(entry):
        if image.is_container_image and image.platform.os != "unknown" and not is_signature_image(image):
            return image  # not an attestation's manifest, not a signature
    return None


def archive_chunks(images: Sequence[Tagged], mtime: int = 0) -> Iterator[bytes]:
    """The tarball as a stream of chunks (for a file or an engine's load API); blobs verified as they pass."""
    for part in _archive_parts(images, mtime):
        if isinstance(part, bytes):
            yield part
            continue
        with part.image.open_blob(part.desc) as src:
            while data := src.read(CHUNK):
                yield data


def _small(name: str, data: bytes, mtime: int) -> Iterator[bytes]:
    yield _tar_header(name, len(data), mtime)
    yield data
    if pad := -len(data) % 512:
        yield bytes(pad)


def write_archive(
    images: Sequence[Tagged],
    path: Path,
    append: bool = False,
    mtime: int = 0,
    lead: Sequence[Descriptor] = (),
    staged: StagedArchive | None = None,
) -> None:
    """Write the tarball to ``path`` atomically (temp file in the same directory, then rename).

    ``mtime`` is every tar entry's time (the build's ``SOURCE_DATE_EPOCH``). Blobs take the fastest safe path
    (``layout.copy_blob``): a cached blob is copied by the kernel, a derived one is produced and written without a
    copy through Python, a foreign one is verified as it is copied.
    With ``append``, the images already in ``path`` are kept (read from the old file while the new one is
    written), except that a name given again moves to the new image, as ``docker tag`` moves it.
    ``lead``: blobs that come first (the model's layers), so that a tarball ``staged`` during the build (whose temp
    file already holds them) and one written whole are the same bytes.
    """
    path = Path(path)
    if append and path.exists():
        images = [*_without_names(read_archive_entries(path), images), *images]
    if staged is not None and staged.path == path:
        fd, tmp = staged.take()
        done: list[Descriptor] | None = staged.blobs
    else:
        fd, tmp = _open_temp(path)
        done = None
    try:
        try:
            pending: list[bytes] = []
            for part in _archive_parts(images, mtime, lead, done):
                if isinstance(part, bytes):
                    pending.append(part)
                    continue
                write_all(fd, pending)
                pending = []
                with part.image.open_blob(part.desc) as src:
                    copy_blob(src, fd, part.desc, f"blob {part.desc.digest.short}")
            write_all(fd, pending)
            os.fchmod(fd, 0o644)
            os.replace(tmp, path)  # while still locked: no sweep can take it first
        finally:
            os.close(fd)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        _raise_output(path, e)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _open_temp(path: Path) -> tuple[int, str]:
    """The locked temp file beside ``path`` that becomes the tarball, once the destination is checked."""
    if not path.parent.is_dir():
        raise OutputError(f"{path}: directory {path.parent} does not exist; create it first")
    if path.is_dir():
        raise OutputError(f"{path} is a directory; give a file name such as {path}/image.tar")
    sweep(path.parent, f".{path.name}.*.tmp")  # left by an export that was killed
    try:
        return locked_temp(path.parent, f".{path.name}.", ".tmp")
    except OSError as e:
        raise OutputError(f"{path}: cannot write there ({e.strerror})") from None


def _raise_output(path: Path, e: OSError) -> None:
    raise _output_error(path, e) from None


def _output_error(path: Path, e: OSError) -> Exception:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"writing {path}: {e.strerror}; free space there or choose another --output")
    return e


class StagedArchive:
    """A tarball begun before the build, so that a model's layer goes into it as the build makes it (an
    ``oci.layer.BlobSink``) rather than being read from the model's files again when it is written: one read of
    the model. Its temp file holds the directories, then that blob under a header patched in once its digest is
    known (the names are fixed-length; the header's length is known from the blob's size bounds); ``write_archive``
    adds the rest and renames it, or ``discard`` removes it. The blob sits where ``write_archive``'s ``lead`` puts
    the model's layers in a tarball written whole: the same bytes either way."""

    def __init__(self, path: Path, mtime: int = 0):
        self.path = Path(path)
        self.mtime = mtime
        self.blobs: list[Descriptor] = []
        self._fd, self._tmp = _open_temp(self.path)
        self._at = -1  # where the blob's header goes
        self._reserved = 0
        try:
            dirs = [_tar_header(d, 0, mtime, directory=True) for d in ("blobs/", "blobs/sha256/")]
            write_all(self._fd, dirs)
        except OSError as e:
            self.discard()
            _raise_output(self.path, e)

    def begin(self, min_size: int, max_size: int) -> int | None:
        if self._at >= 0 or self._fd < 0:
            return None  # one blob per tarball
        sizes = {len(self._header(min_size)), len(self._header(max_size))}
        if len(sizes) != 1:
            return None  # compressed, around 8 GiB: its header's length (a PAX size record or not) is not known
        self._reserved = sizes.pop()
        self._at = os.lseek(self._fd, 0, os.SEEK_CUR)
        write_all(self._fd, [bytes(self._reserved)])
        return self._fd

    def commit(self, desc: Descriptor) -> None:
        header = self._header(desc.size, desc.digest.hex)
        end = os.lseek(self._fd, 0, os.SEEK_CUR)
        if len(header) != self._reserved or end != self._at + self._reserved + desc.size:
            raise RuntimeError(f"staged blob {desc.digest.short}: {end - self._at} bytes where the header said otherwise")
        os.pwrite(self._fd, header, self._at)
        write_all(self._fd, [bytes(-desc.size % 512)])
        self.blobs.append(desc)

    def error(self, e: OSError) -> Exception:
        return _output_error(self.path, e)

    def _header(self, size: int, hex_digest: str = "0" * 64) -> bytes:
        return _tar_header(f"blobs/sha256/{hex_digest}", size, self.mtime)

    def take(self) -> tuple[int, str]:
        """The temp file, for ``write_archive`` to finish (it closes it)."""
        if self._fd < 0:
            raise RuntimeError(f"{self.path}: the staged tarball was already taken")
        fd, self._fd = self._fd, -1
        return fd, self._tmp

    def discard(self) -> None:
        """Remove the temp file, if ``write_archive`` has not taken it."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            Path(self._tmp).unlink(missing_ok=True)


# ---------------------------------------------------------------- reading


class _Slice(io.RawIOBase):
    """A read-only window [offset, offset+size) of a file."""

    def __init__(self, path: Path, offset: int, size: int):
        self._f = open(path, "rb")
        self._f.seek(offset)
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        if self._left <= 0:
            return 0
        n = self._f.readinto(memoryview(buf)[: min(len(buf), self._left)])
        self._left -= n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


class ArchiveReader:
    """Index of a tar file's regular members (name → data offset and size), built by one scan of headers."""

    def __init__(self, path: Path):
        self.path = path
        self.members: dict[str, tuple[int, int]] = {}
        self.links: dict[str, str] = {}
        try:
            with tarfile.open(path, "r:", tarinfo=BoundedTarInfo) as tf:
                for m in tf:
                    tf.members.clear()  # type: ignore[attr-defined] # the index below is all we keep
                    name = _clean(m.name)
                    if name is None:
                        continue
                    if m.isreg():
                        self.members[name] = (m.offset_data, m.size)
                    elif m.issym() or m.islnk():
                        self.links[name] = m.linkname
        except (tarfile.TarError, OSError, EOFError, ValueError, OverflowError) as e:
            raise InputError(f"{path} is not a readable tar archive ({e}); check the file") from None

    def has(self, name: str) -> bool:
        return self._resolve(name) is not None

    def _resolve(self, name: str) -> str | None:
        for _ in range(8):  # docker save links identical layers: follow a few hops, never loop
            if name in self.members:
                return name
            target = self.links.get(name)
            if target is None:
                return None
            # Relative to the link's folder, ".." resolved inside the archive (Docker 20.10 links a repeated layer
            # as ../<id>/layer.tar); a target that climbs out of the archive is not followed.
            joined = target if target.startswith("/") else f"{PurePosixPath(name).parent}/{target}"
            cleaned = _clean(posixpath.normpath(joined.lstrip("/")))
            if cleaned is None:
                return None
            name = cleaned
        return None

    def open(self, name: str) -> Stream:
        real = self._resolve(name)
        if real is None:
            raise FormatError(f"{self.path}: member {name} is missing; the archive is incomplete")
        offset, size = self.members[real]
        return io.BufferedReader(_Slice(self.path, offset, size), CHUNK)

    def size(self, name: str) -> int:
        real = self._resolve(name)
        return self.members[real][1] if real else -1

    def read_small(self, name: str, limit: int = 4 << 20) -> bytes:
        if self.size(name) > limit:
            raise FormatError(f"{self.path}: {name} is larger than {limit} bytes; refusing it")
        with self.open(name) as f:
            return f.read()


def _clean(name: str) -> str | None:
    """A member name as a plain relative path; names that climb out of the archive are ignored."""
    parts = [p for p in PurePosixPath(name).parts if p not in ("/", ".", "")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


class ArchiveSource:
    """Blobs of a tarball: ``blobs/sha256/<hex>`` members, or Docker's legacy paths mapped by digest."""

    origin: BlobOrigin | None = None

    def __init__(self, reader: ArchiveReader, paths: dict[Digest, str] | None = None):
        self.reader = reader
        self.paths = paths or {}

    def close(self) -> None:
        pass

    def _name(self, desc: Descriptor) -> str:
        return self.paths.get(desc.digest, f"blobs/sha256/{desc.digest.hex}")

    def open_blob(self, desc: Descriptor) -> Stream:
        return VerifyingReader(
            self.reader.open(self._name(desc)), desc.digest, desc.size, f"blob in {self.reader.path}"
        )

    def has_blob(self, desc: Descriptor) -> bool:
        return self.reader.has(self._name(desc))


def open_oci_archive(path: Path, ref_name: str | None, platform: Platform) -> Image:
    reader = _reader(path)
    what = f"oci-archive:{path}"
    if not reader.has("index.json"):
        raise InputError(
            f"{path} is not an OCI archive (no index.json); for a docker save file use docker-archive:"
        )
    blobs = ArchiveSource(reader)
    index = read_index_file(reader.read_small("index.json"), what)
    raw, mt = select_manifest(index, blobs, ref_name, platform, what)
    return load_image(raw, blobs, what, mt)


def open_docker_archive(path: Path, repo_tag: str | None, platform: Platform) -> Image:
    """A ``docker save`` file, legacy (``<id>/layer.tar``) or OCI-flavoured (Docker ≥ 25)."""
    reader = _reader(path)
    what = f"docker-archive:{path}"
    if not reader.has("manifest.json"):
        raise InputError(
            f"{path} is not a docker save archive (no manifest.json); for an OCI archive use oci-archive:"
        )
    entries = _docker_entries(reader, what)
    if repo_tag:
        want = repo_tag if ":" in repo_tag.rsplit("/", 1)[-1] else f"{repo_tag}:latest"
        # docker.io/library/app:1, library/app:1 and app:1 are one name (skopeo writes the first, Docker the last).
        same = {want, _full(want)} - {None}
        chosen = [
            e
            for e in entries
            if same & {t for x in e.get("RepoTags") or [] if isinstance(x, str) for t in (x, _full(x))}
        ]
        if not chosen:
            tags = sorted(t for e in entries for t in (e.get("RepoTags") or []))
            raise InputError(f"{what} has no image tagged {want}; it has: {', '.join(tags) or 'no tags'}")
        entry = chosen[0]
    elif len(entries) == 1:
        entry = entries[0]
    else:
        tags = sorted(t for e in entries for t in (e.get("RepoTags") or []))
        raise InputError(
            f"{what} holds {len(entries)} images; name one as {what}:NAME:TAG ({', '.join(tags)})"
        )
    image = _docker_entry_image(reader, entry, what, platform)
    tags = [t for t in entry.get("RepoTags") or [] if isinstance(t, str)]
    chosen_name = want if repo_tag else (tags[0] if tags else None)
    return dataclasses.replace(image, reference=_full(chosen_name) if chosen_name else None)


def read_archive_entries(path: Path) -> list[Tagged]:
    """Every image in a tarball with its names: from ``index.json`` when there is one (whole indexes and
    artifacts included), else from a legacy ``docker save`` file's ``manifest.json``."""
    reader = _reader(path)
    what = str(path)
    blobs = ArchiveSource(reader)
    if reader.has("index.json"):
        out = []
        for desc in read_index_file(reader.read_small("index.json"), what).manifests:
            full = desc.annotations.get(media.CONTAINERD_IMAGE_NAME)
            ref_name = desc.annotations.get(media.REF_NAME)
            out.append(Tagged(load_entry(desc, blobs, what), ImageName(_familiar(full), ref_name, full)))
        return out
    out = []
    for entry in _docker_entries(reader, what):
        image = _docker_entry_image(reader, entry, what, None)
        tags = [t for t in entry.get("RepoTags") or [] if isinstance(t, str)]
        out.extend(Tagged(image, ImageName(t, t.rsplit(":", 1)[-1], _full(t))) for t in tags)
        if not tags:
            out.append(Tagged(image))
    return out


def _without_names(old: list[Tagged], new: Sequence[Tagged]) -> list[Tagged]:
    """The old entries minus the names the new ones take; an entry left with no name at all is dropped when
    the same image is still there under another name (no duplicate), kept otherwise (untagged, as ``docker load``
    shows an image whose tag moved)."""
    taken = {n for t in new for n in _names(t)}
    renamed = [Tagged(t.image) if _names(t) & taken else t for t in old]
    named = {t.image.digest for t in [*renamed, *new] if _names(t)}
    return [t for t in renamed if _names(t) or t.image.digest not in named]


def _names(t: Tagged) -> set[str]:
    """What an entry is called: its Docker and full names; a bare OCI tag (oci-archive:FILE:TAG) only when it has
    no full name (in a docker archive, ``app:1`` and ``other:1`` share the tag ``1`` but are different names)."""
    if t.name is None:
        return set()
    names = {n for n in (t.name.repo_tag, t.name.full) if n}
    if not t.name.full and t.name.ref_name:
        names.add("ref.name:" + t.name.ref_name)
    return names


def _familiar(full: str | None) -> str | None:
    if not full:
        return None
    try:
        return parse_reference(full).familiar
    except OcibuildError:
        return None


def _full(repo_tag: str) -> str | None:
    try:
        return str(parse_reference(repo_tag))
    except OcibuildError:
        return None


def _docker_entries(reader: ArchiveReader, what: str) -> list[dict]:
    try:
        entries = json.loads(reader.read_small("manifest.json"))
    except RecursionError:
        raise FormatError(f"{what}: manifest.json is nested too deeply to be an image list") from None
    except ValueError as e:
        raise FormatError(f"{what}: manifest.json is not valid JSON ({e})") from None
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise FormatError(f"{what}: manifest.json holds no images")
    return entries


def _docker_entry_image(reader: ArchiveReader, entry: dict, what: str, platform: Platform | None) -> Image:
    config_name, layer_names = entry.get("Config"), entry.get("Layers")
    if not isinstance(config_name, str) or not isinstance(layer_names, list):
        raise FormatError(f"{what}: manifest.json entry lacks Config or Layers")
    config_raw = reader.read_small(config_name)
    config_digest = Digest.of(config_raw)
    hinted = PurePosixPath(config_name).name.removesuffix(".json")
    if is_digest("sha256:" + hinted) and config_digest.hex != hinted:
        raise FormatError(f"{what}: config {config_name} does not hash to its name; the archive is corrupt")
    config = parse_json(config_raw, f"config of {what}")
    rootfs = config.get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise FormatError(f"{what}: config has no rootfs.diff_ids list; the archive is corrupt")
    if len(diff_ids) != len(layer_names):
        raise FormatError(f"{what}: config lists {len(diff_ids)} diff_ids for {len(layer_names)} layers")
    paths = {config_digest: config_name}
    layers = []
    for name, diff_id in zip(layer_names, diff_ids, strict=True):
        desc = _legacy_layer(reader, name, diff_id, what)
        paths[desc.digest] = name
        layers.append(desc)
    blobs = ArchiveSource(reader, paths)
    if (raw := _saved_manifest(reader, config_digest, layers, what)) is not None:
        return load_image(raw, blobs, what)  # the very manifest that was saved: its digest is kept
    config_desc = Descriptor(media.OCI_CONFIG, config_digest, len(config_raw))
    manifest = Manifest.build(config_desc, layers)
    return load_image(manifest.raw, blobs, what)


def _legacy_layer(reader: ArchiveReader, name: object, diff_id: object, what: str) -> Descriptor:
    """The descriptor of a ``docker save`` layer member: its codec sniffed, its digest its diff_id (a plain tar)
    or its file name (a compressed one); it is verified against that digest when read."""
    if not isinstance(name, str) or not reader.has(name):
        raise FormatError(f"{what}: layer {name} is missing from the archive")
    with reader.open(name) as f:
        codec = compress.detect(f.read(4))
    hinted = PurePosixPath(name).name
    if codec == "none":
        if not isinstance(diff_id, str) or not is_digest(diff_id):
            raise FormatError(f"{what}: diff_id {diff_id!r} is not a sha256 digest")
        digest = Digest(diff_id)
    elif is_digest("sha256:" + hinted):
        digest = Digest("sha256:" + hinted)
    else:
        raise FormatError(f"{what}: compressed layer {name} is not named by its digest; cannot verify it")
    mt = {"gzip": media.OCI_LAYER_GZIP, "zstd": media.OCI_LAYER_ZSTD, "none": media.OCI_LAYER}[codec]
    return Descriptor(mt, digest, reader.size(name))


def _saved_manifest(
    reader: ArchiveReader, config: Digest, layers: list[Descriptor], what: str
) -> bytes | None:
    """The manifest of this config and these layers in the archive's ``index.json`` (ocibuild's and Docker ≥ 25's
    tarballs have one; with the containerd image store Docker's entries are indexes, whose present children are
    searched too), so that reading a ``docker-archive:`` does not change the image's digest."""
    if not reader.has("index.json"):
        return None
    blobs = ArchiveSource(reader)
    pending = list(read_index_file(reader.read_small("index.json"), what).manifests)
    for _ in range(64):  # a bounded search: hostile indexes could nest or repeat
        if not pending:
            break
        desc = pending.pop(0)
        if not blobs.has_blob(desc) or desc.size > 4 << 20:
            continue
        if desc.media_type in media.INDEXES:
            raw, mt = fetch_manifest(blobs, desc, what)
            pending += Index.parse(raw, f"index in {what}", mt).manifests
        elif desc.media_type in media.MANIFESTS:
            raw, mt = fetch_manifest(blobs, desc, what)
            manifest = Manifest.parse(raw, f"manifest in {what}", mt)
            same_layers = [d.digest for d in manifest.layers] == [d.digest for d in layers]
            if manifest.config.digest == config and same_layers:
                return raw
    return None


def _reader(path: Path) -> ArchiveReader:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    return ArchiveReader(path)
