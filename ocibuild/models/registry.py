"""Registered models in a registry: push, pull, list, show, and resolve a reference for ``package``.

All traffic goes through ``models.orasclient.OrasRegistry`` (oras-py's API on ocibuild's transport). Everything read
is verified against its digest before it is trusted or kept: manifests as they arrive, layers as they stream, and
``model pull`` writes into a temp folder renamed to the destination only after the layer verified.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import FormatError, InputError, OutputError, UsageError
from ..events import Counted, Progress, human_size
from ..oci import compress
from ..oci.descriptor import Descriptor
from ..oci.digest import CHUNK, Digest, Stream
from ..oci.image import EXPANSION_ALLOWANCE, MAX_EXPANSION, Image, ImageIndex, Layer
from ..oci.name import Reference, parse_reference
from ..oci.store import BlobStore
from ..oci.tarsafe import BoundedTarInfo
from ..oci.tempfiles import new_directory
from ..registry.errors import NotFoundError
from ..registry.options import RegistryOptions
from ..registry.push import push_image
from ..registry.transport import Transport
from ..transports.location import Location
from ..transports.open import open_location
from .artifact import EMPTY_CONFIG, EMPTY_DESCRIPTOR, ModelInfo, build_artifact, check_name, check_version
from .orasclient import OrasRegistry
from .reference import model_reference


@contextlib.contextmanager
def connect(ref: Reference, options: RegistryOptions | None, push: bool = False):
    transport = Transport(ref.registry, options or RegistryOptions())
    try:
        yield OrasRegistry(transport, ref.repository, push=push)
    finally:
        transport.close()


# ---------------------------------------------------------------- push


@dataclass(frozen=True)
class Pushed:
    reference: Reference
    digest: Digest
    info: ModelInfo


def push_model(
    path: Path,
    reference: str,
    *,
    name: str | None = None,
    version: str | None = None,
    framework: str = "",
    description: str = "",
    options: RegistryOptions | None = None,
    store: BlobStore,
    epoch: int = 0,
    progress: Progress | None = None,
) -> Pushed:
    """Register the model at ``path`` as ``reference`` (``HOST/REPO[:TAG]``). Name: ``name`` or the repository's
    last part; version: ``version`` or the reference's tag (then the tag is the version too). The artifact goes
    up as any image does (``registry.push``: present blobs skipped, uploads streamed and retried)."""
    progress = progress or Progress()
    if not Path(path).exists():
        raise InputError(f"model {path}: no such file or directory")
    ref = parse_reference(reference.removeprefix("docker://"), default_tag=None)
    if ref.digest:
        raise UsageError(f"{reference}: push a model by tag (HOST/REPO:VERSION), not by digest")
    name = check_name(
        name or ref.repository.rsplit("/", 1)[-1], "--name" if name else "model name (from REF)"
    )
    if version is None:
        if ref.tag is None:
            raise UsageError(
                f"{reference}: give the version, as the tag (HOST/REPO:VERSION) or with --version"
            )
        version = check_version(ref.tag, "the tag")
    check_version(version)
    tag = ref.tag or version
    ref = Reference(ref.registry, ref.repository, tag)
    with connect(ref, options, push=True) as reg:
        # Credentials and access are checked before a (maybe multi-GB) layer is built: the config goes up first.
        reg.push_blob(EMPTY_DESCRIPTOR, lambda: _bytes_stream(EMPTY_CONFIG))
    counter = progress.bytes(f"model layer ({path.name})", _size_of(path))
    built = build_artifact(
        path,
        name,
        version,
        store,
        framework=framework,
        description=description,
        progress=counter,
        epoch=epoch,
    )
    counter.done()
    layer = built.layer.descriptor
    progress.step(
        f"model {name}:{version}: layer {layer.digest.short} ({human_size(layer.size)}, {layer.media_type})"
    )
    digest = push_image(built.image, ref, options or RegistryOptions(), progress)
    # Built here by oci.layer from the model's files alone: package needs no download to trust it.
    store.put_ref(_checked_key(built.info), {"diff_id": str(built.layer.diff_id)})
    progress.step(f"pushed model {ref.registry}/{ref.repository}:{tag} {digest}")
    return Pushed(ref, digest, built.info)


def _bytes_stream(data: bytes):
    import io

    return contextlib.closing(io.BytesIO(data))


def _size_of(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
    return path.stat().st_size if path.exists() else 0


# ---------------------------------------------------------------- show, list


def fetch_model(reg: OrasRegistry, ref: Reference) -> ModelInfo:
    """The model ``ref`` names, its manifest verified. A missing tag says which versions exist."""
    what = f"model {ref}"
    try:
        raw, mt = reg.get_manifest_raw(ref.reference)
    except NotFoundError:
        if ref.digest:
            raise NotFoundError(f"{what}: no such model version (digest not in {reg.what})") from None
        try:
            tags = reg.get_tags(reg.container)
        except NotFoundError:
            raise NotFoundError(f"{what}: no such model (repository {reg.what} does not exist)") from None
        have = ", ".join(sorted(tags)[:20]) or "none"
        raise NotFoundError(f"{what}: no such version; {reg.what} has: {have}") from None
    from .artifact import read_model_manifest

    return read_model_manifest(raw, what, mt)


def open_model(
    ref: Reference, options: RegistryOptions | None, store: BlobStore | None = None
) -> tuple[ModelInfo, Image]:
    """The model ``ref`` names, opened as any image is (``transports.open``): its manifest verified and read as a
    model artifact, its layer streamed (or pulled through ``store``) when opened. A missing tag says which
    versions exist."""
    try:
        entry = open_location(
            Location.parse(f"docker://{ref}"), options=options or RegistryOptions(), store=store
        )
    except NotFoundError:
        with connect(ref, options) as reg:
            fetch_model(reg, ref)  # says what is missing, and which versions there are
        raise
    from .artifact import read_model_manifest

    if isinstance(entry, ImageIndex):
        entry.close()
        raise FormatError(
            f"model {ref} is an image index, not an ocibuild model; use ocibuild model push to register one"
        )
    try:
        return read_model_manifest(entry.manifest.raw, f"model {ref}", entry.manifest.media_type), entry
    except BaseException:
        entry.close()
        raise


def show_model(reference: str, options: RegistryOptions | None = None) -> ModelInfo:
    info, image = open_model(model_reference(reference), options)
    image.close()
    return info


@dataclass(frozen=True)
class Listed:
    tag: str
    info: ModelInfo | None
    note: str = ""  # why ``info`` is None: what else the tag holds


def list_models(repository: str, options: RegistryOptions | None = None, workers: int = 8) -> list[Listed]:
    """Every tag of ``repository`` with its model's annotations (other content is listed with what it is); the
    tags' manifests are fetched ``workers`` at a time (a registry far away makes each a round trip)."""
    ref = parse_reference(repository.removeprefix("docker://"), default_tag=None)
    if ref.tag or ref.digest:
        raise UsageError(f"{repository}: name a repository (HOST/REPO), without a tag or digest")
    with connect(ref, options) as reg:

        def listed(tag: str) -> Listed:
            try:
                return Listed(tag, fetch_model(reg, Reference(ref.registry, ref.repository, tag)))
            except FormatError as e:
                return Listed(tag, None, str(e).split(" is ", 1)[-1].split(";")[0])

        tags = sorted(reg.get_tags(reg.container))
        # One manifest per tag: fetched a few at a time, as a registry far away makes each a round trip.
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(tags)))) as pool:
            return list(pool.map(listed, tags))


# ---------------------------------------------------------------- pull


def pull_model(
    reference: str,
    directory: Path,
    options: RegistryOptions | None = None,
    progress: Progress | None = None,
) -> ModelInfo:
    """The model's files into ``directory`` (which must not exist, or be empty), exactly as registered.

    The layer is streamed, unpacked into a temp folder next to ``directory`` and verified against its digest to
    its last byte; only then is the folder renamed to ``directory``. Entries outside the model's folder, links that
    leave it, and device files are refused.
    """
    progress = progress or Progress()
    ref = model_reference(reference)
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise OutputError(f"{directory} exists and is not an empty folder; pull into a new folder")
    parent = directory.absolute().parent
    if not parent.is_dir():
        raise OutputError(f"{directory}: folder {parent} does not exist; create it first")
    info, image = open_model(ref, options)
    try:
        with new_directory(directory) as tmp:
            counter = progress.bytes(f"pulling {info.name}:{info.version}", info.layer.size)
            with image.layers[0].open() as blob:
                _unpack(Counted(blob, counter), info, tmp, f"model {ref}")
            counter.done()
    finally:
        image.close()
    progress.step(f"pulled model {info.name}:{info.version} ({info.digest}) into {directory}")
    return info


def _unpack(blob: Stream, info: ModelInfo, dest: Path | None, what: str) -> Digest:
    """Walk the layer's entries, refusing any that is not a plain file, folder or link inside the model's folder,
    and write them under ``dest`` (or only check them, with ``dest`` None). Returns the diff_id (the sha256 of
    the uncompressed tar). Reads the blob to its end, so its digest is checked (``VerifyingReader`` raises
    there) before the caller keeps anything.

    Links are resolved through the links before them, and all of them again at the end (a later link can turn an
    earlier one outward: with ``b -> .``, ``b/b/../..`` climbs out). The layer may expand to at most
    ``MAX_EXPANSION`` times its size plus ``EXPANSION_ALLOWANCE``: a decompression bomb fills no disk, and sparse
    members are refused.
    """
    prefix = info.path.lstrip("/") + "/"
    diff = hashlib.sha256()
    budget = EXPANSION_ALLOWANCE + MAX_EXPANSION * info.layer.size
    raw = _Hashed(compress.decompressed(blob), diff, budget, what)
    links: dict[str, str] = {}
    try:
        with tarfile.open(fileobj=raw, mode="r|", tarinfo=BoundedTarInfo) as tar:
            for member in tar:
                rel = _inside(member, prefix, links, what)
                if rel is not None:
                    _place(tar, member, rel, dest, links, what)
        for link in links:
            if not _stays_inside(link, links):
                raise FormatError(f"{what}: link {prefix + link!r:.120} points outside the model's folder")
        while raw.read(CHUNK):  # the tar's end padding, and the gzip trailer
            pass
        while blob.read(CHUNK):  # whatever the codec left: the digest is checked at the very end
            pass
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        if isinstance(e, OSError) and e.errno is not None:  # writing the files failed, not reading the layer
            raise OutputError(f"{dest}: {e.strerror}") from None
        _drain(blob)
        raise FormatError(f"{what}: the model layer is not a readable tar ({e})") from None
    except FormatError:
        _drain(blob)  # a corrupt blob is reported as such, not as what its bytes happened to say
        raise
    return Digest.from_hex(diff.hexdigest())


def _inside(member: tarfile.TarInfo, prefix: str, links: dict[str, str], what: str) -> PurePosixPath | None:
    """The entry's path inside the model's folder; None for the folder's own parents. Anything that is not
    under the folder, climbs out of it, or goes through a link is refused."""
    name = member.name.rstrip("/")
    if not name.startswith(prefix):
        if prefix.startswith(name + "/") and member.isdir():
            return None  # the model folder's parents
        raise FormatError(f"{what}: layer entry {name!r:.120} is outside the model's folder")
    rel = PurePosixPath(name[len(prefix) :])
    if rel.is_absolute() or ".." in rel.parts or any(str(p) in links for p in list(rel.parents)[:-1]):
        raise FormatError(f"{what}: layer entry {name!r:.120} would leave the model's folder")
    return rel


def _place(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    rel: PurePosixPath,
    dest: Path | None,
    links: dict[str, str],
    what: str,
) -> None:
    """Write one entry under ``dest`` (or only read it through, with ``dest`` None): a folder, a plain file or a
    link that stays inside; anything else is refused."""
    target = dest.joinpath(*rel.parts) if dest is not None else None
    if member.isdir():
        if target is not None:
            target.mkdir(parents=True, exist_ok=True)
    elif member.isfile() and not member.issparse():
        src = tar.extractfile(member)
        assert src is not None
        if target is None:
            while src.read(CHUNK):
                pass
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "xb") as f:
            while data := src.read(CHUNK):
                f.write(data)
        os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
    elif member.issym():
        links[str(rel)] = member.linkname
        if not _stays_inside(str(rel), links):
            raise FormatError(
                f"{what}: link {member.name.rstrip('/')!r:.120} points outside the model's folder"
            )
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(member.linkname, target)
    else:
        raise FormatError(
            f"{what}: layer entry {member.name.rstrip('/')!r:.120} is not a file, folder or link"
        )


def _stays_inside(link: str, links: dict[str, str]) -> bool:
    """Whether the link at ``link`` (relative to the model's folder) resolves inside it, through ``links``."""
    if links[link].startswith("/"):
        return False
    parts = [*PurePosixPath(link).parent.parts, *links[link].split("/")]
    stack: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return False
            stack.pop()
            continue
        stack.append(part)
        target = links.get("/".join(stack))
        if target is not None:
            hops += 1
            if hops > 40 or target.startswith("/"):
                return False  # a loop, or out of the folder
            stack.pop()  # the link is replaced by what it points to, relative to its folder
            parts = [*target.split("/"), *parts]
    return True


class _Hashed:
    """The uncompressed layer as read: hashed (the diff_id) and bounded (a bomb is refused, not unpacked)."""

    def __init__(self, stream: Stream, diff, budget: int, what: str):
        self._stream, self._diff, self._left, self._what = stream, diff, budget, what

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self._diff.update(data)
        self._left -= len(data)
        if self._left < 0:
            raise FormatError(
                f"{self._what}: the model layer expands to more than {MAX_EXPANSION} times its size; "
                "refusing it as a decompression bomb"
            )
        return data


def _drain(blob: Stream) -> None:
    """Read to the end so a corrupt blob is reported as such (DigestMismatchError), not as a bad tar."""
    with contextlib.suppress(FormatError):
        while blob.read(CHUNK):
            pass


# ---------------------------------------------------------------- package from a reference


@dataclass(frozen=True)
class ResolvedModel:
    """A registered model ready to be an image's layer: the artifact's layer as it is, and where it came from."""

    reference: str  # normalised, as given (tag or digest)
    info: ModelInfo
    layer: Layer  # pulled through the cache, mountable from the model's repository


def resolve_model(
    reference: str, store: BlobStore, options: RegistryOptions | None, progress: Progress
) -> ResolvedModel:
    """Fetch a registered model's manifest (verified) and make its layer usable in an image, as it is.

    The layer goes into the image unchanged, above the scoring server: so it is checked first, once per digest,
    by the rules of ``model pull`` (only files, folders and inward links under the model's folder), or a
    registered "model" could replace any file of the image. The check also yields the diff_id; both are kept in
    the cache, and a layer this cache built itself (``model push``) is known good without a download.
    """
    ref = model_reference(reference)
    # Pulled through the store; a stale derived recipe there (a registered file edited since) is pulled over.
    info, image = open_model(ref, options, store)
    artifact_layer = image.layers[0]
    desc = Descriptor(info.layer.media_type, info.layer.digest, info.layer.size)
    progress.step(f"model {ref}: {info.name}:{info.version} ({info.digest.short}, {human_size(desc.size)})")
    diff_id = _checked_diff_id(info, artifact_layer, store, str(ref))
    return ResolvedModel(str(ref), info, Layer(desc, diff_id, artifact_layer.source, artifact_layer.origin))


def _checked_key(info: ModelInfo) -> str:
    return "model-layer-" + hashlib.sha256(f"{info.layer.digest}\n{info.path}".encode()).hexdigest()


def _checked_diff_id(info: ModelInfo, layer: Layer, store: BlobStore, what: str) -> Digest:
    key = _checked_key(info)
    if (doc := store.get_ref(key)) and isinstance(doc.get("diff_id"), str):
        return Digest(doc["diff_id"])
    with layer.open() as blob:
        diff_id = _unpack(blob, info, None, f"model {what}")
    store.put_ref(key, {"diff_id": str(diff_id)})
    return diff_id
