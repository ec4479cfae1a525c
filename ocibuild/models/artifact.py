"""The registered-model artifact: what ``ocibuild model push`` writes and everything else reads (no network here).

One OCI image manifest (image-spec 1.1 artifact form):

- ``artifactType`` ``application/vnd.ocibuild.model.v1``; ``config`` the empty descriptor
  (``application/vnd.oci.empty.v1+json``, the two bytes ``{}``), as image-spec 1.1 asks of artifacts without a config;
- one layer: the model's deterministic tar layer (``oci.layer``, gzip or plain tar for incompressible weights)
  whose entries sit where the scoring image reads the model, ``var/azureml-app/azureml-models/<name>/<version>/``.
  So the image's model layer *is* this blob and a push to the same registry mounts it instead of uploading it.
  The layer's ``org.opencontainers.image.title`` is ``<name>-<version>.tar[.gz]``: the ``oras`` CLI saves the layer
  under that name (a tarball ``tar -xf`` unpacks); no ``io.deis.oras.content.unpack``, which oras only honours for
  gzip and only for entries under a top folder named like the title;
- manifest annotations: name, version, framework, description, the model's top-level file names, its folder in
  the image, and ``org.opencontainers.image.created`` fixed to ``SOURCE_DATE_EPOCH`` (or 0), so the same model
  gives the same artifact digest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..cache.layers import LocalLayerCache
from ..errors import FormatError, InputError, UsageError
from ..oci import media
from ..oci.descriptor import Descriptor, Manifest, sniff_media_type
from ..oci.digest import Digest
from ..oci.empty import EMPTY_CONFIG, EMPTY_DESCRIPTOR
from ..oci.image import Image, Layer
from ..oci.layer import LayerContents, cache_key, write_layer
from ..oci.mutate import timestamp
from ..oci.store import BlobStore
from ..version import __version__
from .placement import add_model, model_dir_in_image

ARTIFACT_TYPE = "application/vnd.ocibuild.model.v1"

TITLE = "org.opencontainers.image.title"
CREATED = "org.opencontainers.image.created"
OCI_VERSION = "org.opencontainers.image.version"
OCI_DESCRIPTION = "org.opencontainers.image.description"
NAME = "io.ocibuild.model.name"
VERSION = "io.ocibuild.model.version"
FRAMEWORK = "io.ocibuild.model.framework"
FILES = "io.ocibuild.model.files"  # JSON list of the names directly in the model's folder
PATH = "io.ocibuild.model.path"  # the model's folder in the image, absolute (AZUREML_MODEL_DIR)

_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")
_VERSION_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")  # also a valid tag


def check_name(name: str, option: str = "--name") -> str:
    if not _NAME_RE.fullmatch(name):
        raise UsageError(
            f"{option} {name!r}: a model name is lowercase letters, digits, '.', '_' or '-' (at most 64), "
            "starting and ending with a letter or digit"
        )
    return name


def check_version(version: str, option: str = "--version") -> str:
    if not _VERSION_RE.fullmatch(version):
        raise UsageError(
            f"{option} {version!r}: a model version is letters, digits, '.', '_' or '-' (at most 128), "
            "not starting with '.' or '-'"
        )
    return version


@dataclass(frozen=True)
class ModelInfo:
    """A model artifact's manifest, read: what ``model show`` prints and ``package`` builds from."""

    digest: Digest  # of the manifest: the artifact's identity
    raw: bytes
    name: str
    version: str
    path: str  # the model's folder in the image, absolute
    layer: Descriptor
    files: tuple[str, ...] = ()
    framework: str = ""
    description: str = ""
    created: str = ""

    def to_json(self) -> dict:
        return {
            "digest": str(self.digest),
            "artifactType": ARTIFACT_TYPE,
            "name": self.name,
            "version": self.version,
            "framework": self.framework,
            "description": self.description,
            "created": self.created,
            "files": list(self.files),
            "path": self.path,
            "layer": self.layer.to_json(),
        }


def read_model_manifest(raw: bytes, what: str, media_type: str = "") -> ModelInfo:
    """Parse and check a model artifact's manifest; a non-model (an image, another tool's artifact) is refused
    with one line saying what it is."""
    mt = media_type or sniff_media_type(raw, what)
    if mt in media.INDEXES:
        raise FormatError(
            f"{what} is an image index, not an ocibuild model; use ocibuild model push to register one"
        )
    manifest = Manifest.parse(raw, what, mt)
    kind = manifest.artifact_type or manifest.config.media_type
    if kind != ARTIFACT_TYPE:
        thing = (
            "a container image"
            if manifest.config.media_type in (media.OCI_CONFIG, media.DOCKER_CONFIG)
            else (f"an artifact of type {kind!r:.80}")
        )
        raise FormatError(
            f"{what} is {thing}, not an ocibuild model; use ocibuild model push to register one"
        )
    if len(manifest.layers) != 1:
        raise FormatError(f"{what}: a model artifact has one layer, this one has {len(manifest.layers)}")
    layer = manifest.layers[0]
    if layer.media_type not in (media.OCI_LAYER, media.OCI_LAYER_GZIP, media.OCI_LAYER_ZSTD):
        raise FormatError(
            f"{what}: the model layer has media type {layer.media_type!r:.80}, not an OCI tar layer"
        )
    a = manifest.annotations
    name, version, path = a.get(NAME, ""), a.get(VERSION, ""), a.get(PATH, "")
    if not _NAME_RE.fullmatch(name) or not _VERSION_RE.fullmatch(version):
        raise FormatError(f"{what}: the artifact's model name or version annotation is missing or malformed")
    if path != "/" + model_dir_in_image(name, version):
        raise FormatError(
            f"{what}: the artifact's model path {path!r:.120} is not where its name and version say"
        )
    try:
        files = tuple(str(f) for f in json.loads(a.get(FILES, "[]")))
    except (ValueError, TypeError):
        raise FormatError(f"{what}: the artifact's {FILES} annotation is not a JSON list") from None
    return ModelInfo(
        digest=manifest.digest,
        raw=raw,
        name=name,
        version=version,
        path=path,
        layer=layer,
        files=files,
        framework=a.get(FRAMEWORK, ""),
        description=a.get(OCI_DESCRIPTION, ""),
        created=a.get(CREATED, ""),
    )


@dataclass(frozen=True)
class BuiltArtifact:
    image: Image  # the artifact, ready for any publisher
    layer: Layer  # its one layer, as the image's model layer (no annotations)
    info: ModelInfo

    @property
    def manifest(self) -> Manifest:
        return self.image.manifest


def layer_title(name: str, version: str, layer_media_type: str) -> str:
    return f"{name}-{version}.tar" + (".gz" if layer_media_type == media.OCI_LAYER_GZIP else "")


def build_artifact(
    path: Path,
    name: str,
    version: str,
    store: BlobStore,
    *,
    framework: str = "",
    description: str = "",
    progress: Callable[[int], None] | None = None,
    use_cache: bool = True,
    epoch: int = 0,
) -> BuiltArtifact:
    """The model at ``path`` (a file or a folder) as an artifact: its layer in ``store`` (a derived blob when big,
    as ``package`` does), its manifest in memory. Reproducible: the inputs alone decide every byte (``epoch``:
    the build's ``SOURCE_DATE_EPOCH``, the files' times and the ``created`` annotation)."""

    check_name(name)
    check_version(version)
    if not path.exists():
        raise InputError(f"model {path}: no such file or directory")
    contents = LayerContents()
    add_model(contents, path, name, version)
    key = cache_key(contents, "gzip", mtime=epoch, tool=__version__)
    cache = LocalLayerCache(store)
    cached = cache.get(key) if use_cache else None
    if cached is not None:
        layer = cached.layer
    else:
        layer = cache.put(key, write_layer(contents, store, "gzip", progress, mtime=epoch, derive=True))
    folder = model_dir_in_image(name, version)
    annotations = {
        CREATED: timestamp(epoch),
        TITLE: name,
        OCI_VERSION: version,
        NAME: name,
        VERSION: version,
        PATH: "/" + folder,
        FILES: json.dumps([path.name]),
    }
    if framework:
        annotations[FRAMEWORK] = framework
    if description:
        annotations[OCI_DESCRIPTION] = description
    desc = layer.descriptor.with_annotations({TITLE: layer_title(name, version, layer.descriptor.media_type)})
    manifest = Manifest.build(EMPTY_DESCRIPTOR, [desc], annotations, artifact_type=ARTIFACT_TYPE)
    info = read_model_manifest(manifest.raw, f"model {name}:{version}", media.OCI_MANIFEST)
    titled = Layer(desc, layer.diff_id, layer.source)
    return BuiltArtifact(Image(manifest, EMPTY_CONFIG, (titled,), f"model {name}:{version}"), layer, info)
