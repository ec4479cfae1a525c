"""A layer cache kept in a registry repository (``--cache-repo``): what one CI runner built, every other one reuses.

Each entry is one OCI image manifest, tagged ``ocibuild-cache-<format>-<key>`` (the key is already a sha256 of
the inputs): its config is a small JSON document of ours (``application/vnd.ocibuild.layer-cache.v1+json``: the
key, the layer's diff_id and the builder's facts about it) and its one layer is the cached layer's blob, under the
very descriptor the image uses. This is the form ORAS calls an OCI 1.0 artifact and BuildKit's
``image-manifest=true`` cache writes: a plain image manifest with a config type of its own, which distribution 2.8
takes (tested) and which ORAS lists Harbor, ECR, GHCR and ACR as storing (an index with non-manifest entries,
BuildKit's older form, is what several refused; docs/decisions.md). The manifest keeps the blob alive under the registry's garbage collection, as a tag keeps an image.

The same form keeps small records (``get_record``/``put_record``: what a build read of a base, by the base's
digests), their one layer the empty descriptor ``{}`` that image-spec 1.1 names for artifacts with no content.

A hit costs three small requests (manifest, config, a HEAD of the blob) and no transfer: the layer's source pulls
the blob only if the build's output needs its bytes (verified as it comes), and its origin makes a push to the same
registry mount it. Trust: whoever may write the repository decides what a key's layer is, as with any image there;
untrusted builds read it with ``readonly``. A registry that refuses, loses or garbles an entry costs a rebuild,
never a failed build: the first failure to reach the repository is one warning, and the cache is off for the rest
of the build.
"""

from __future__ import annotations

import json
from dataclasses import replace

from ..errors import DigestMismatchError, FormatError, OcibuildError, UsageError
from ..events import Progress
from ..oci import media
from ..oci.descriptor import Descriptor, Manifest, canonical_json
from ..oci.digest import Digest, read_all
from ..oci.image import BlobOrigin, Image, Layer, StoreSource
from ..oci.name import Reference, parse_reference
from ..oci.store import BlobStore
from ..registry.client import RegistryClient
from ..registry.errors import NotFoundError
from ..registry.options import RegistryOptions
from ..registry.push import push_image
from ..registry.source import RegistrySource
from ..registry.transport import Transport
from ..version import __version__
from .layers import CachedLayer

CONFIG_TYPE = "application/vnd.ocibuild.layer-cache.v1+json"
FORMAT = 1
MAX_CONFIG = 16 << 20  # the facts of a big dependency set are a few MB of JSON at most
# A record's one layer: image-spec 1.1's empty descriptor, for registries that want a layer.
EMPTY_JSON = b"{}"
EMPTY = Descriptor(media.OCI_EMPTY, Digest.of(EMPTY_JSON), len(EMPTY_JSON))


def parse_cache_repo(text: str) -> Reference:
    """``REGISTRY/REPO`` (``--cache-repo``, ``$OCIBUILD_CACHE_REPO``): a repository; its entries bring their tags."""
    ref = parse_reference(text, default_tag=None)
    if ref.tag or ref.digest:
        raise UsageError(f"--cache-repo {text}: name a repository (REGISTRY/REPO), without a tag or digest")
    return ref


def entry_tag(key: str) -> str:
    return f"ocibuild-cache-{FORMAT}-{key}"


class RegistryLayerCache:
    """Entries in ``repository`` (a ``Reference`` without tag); blobs pulled through ``store`` when needed."""

    shared = True

    def __init__(
        self,
        repository: Reference,
        options: RegistryOptions,
        store: BlobStore,
        progress: Progress,
        readonly: bool = False,
    ):
        self.repo = Reference(repository.registry, repository.repository)
        self.options, self.store, self.progress, self.readonly = options, store, progress, readonly
        self.client = RegistryClient(
            Transport(self.repo.registry, options), self.repo.repository, push=not readonly
        )
        self.where = f"{self.repo.registry}/{self.repo.repository}"
        self.off = False

    def get(self, key: str) -> CachedLayer | None:
        entry = self._fetch(key)
        if entry is None:
            return None
        desc, doc = entry
        try:
            if not self.client.has_blob(desc.digest):
                return None  # the entry survived its blob (deleted, garbage-collected): build again
            diff_id = Digest(doc["diff_id"])
        except (OcibuildError, KeyError, TypeError, ValueError) as e:
            return self._failed(e)
        facts = doc.get("facts")
        source = RegistrySource(self.client, self.store, [str(desc.digest)], self.progress)
        origin = BlobOrigin(self.repo.registry, self.repo.repository)
        layer = Layer(desc, diff_id, source, origin=origin)
        return CachedLayer(layer, facts if isinstance(facts, dict) else None, self.where)

    def put(self, key: str, layer: Layer, facts: dict | None = None) -> Layer:
        doc = {"diff_id": str(layer.diff_id), "facts": facts}
        if not self._write(key, doc, layer):
            return layer
        return replace(layer, origin=BlobOrigin(self.repo.registry, self.repo.repository))

    def get_record(self, key: str) -> dict | None:
        """A small document the builder keeps under ``key`` (what it read of a base, by the base's digests)."""
        entry = self._fetch(key)
        record = entry[1].get("record") if entry else None
        return record if isinstance(record, dict) else None

    def put_record(self, key: str, record: dict) -> None:
        empty = Layer(EMPTY, None, StoreSource(self.store))
        self.store.put_bytes(EMPTY_JSON)
        self._write(key, {"record": record}, empty)

    def _fetch(self, key: str) -> tuple[Descriptor, dict] | None:
        """The entry under ``key``: its one layer's descriptor and its config document; None if there is none
        usable (missing, not ours, another format, another key)."""
        if self.off:
            return None
        try:
            raw, mt = self.client.get_manifest(
                entry_tag(key)
            )  # verified against the digest the registry states
            manifest = Manifest.parse(
                raw, f"cache entry {self.where}:{entry_tag(key)}", mt or media.OCI_MANIFEST
            )
            if manifest.config.media_type != CONFIG_TYPE or len(manifest.layers) != 1:
                return None  # not ours, or another format: built again and written over
            if manifest.config.size > MAX_CONFIG:
                return None
            with self.client.open_blob(manifest.config) as stream:  # verified as it is read
                doc = json.loads(read_all(stream))
        except NotFoundError:
            return None
        except (OcibuildError, ValueError) as e:
            return self._failed(e)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("key") != key:
            return None
        return manifest.layers[0], doc

    def _write(self, key: str, doc: dict, layer: Layer) -> bool:
        if self.off or self.readonly:
            return False
        config = canonical_json({"format": FORMAT, "key": key, "ocibuild": __version__, **doc})
        manifest = Manifest.build(Descriptor(CONFIG_TYPE, Digest.of(config), len(config)), [layer.descriptor])
        entry = Image(manifest, config, (layer,), f"cache entry {key}")
        try:
            push_image(entry, replace(self.repo, tag=entry_tag(key)), self.options, self.progress)
        except OcibuildError as e:
            self._turn_off(f"cannot write to the cache repo {self.where}: {e}")
            return False
        return True

    def _failed(self, e: Exception) -> None:
        """A garbled entry is a miss (built again, written over); a registry that cannot be read turns the cache
        off for this build."""
        if isinstance(e, OcibuildError) and not isinstance(e, (FormatError, DigestMismatchError)):
            self._turn_off(f"cannot read the cache repo {self.where}: {e}")
        return None

    def _turn_off(self, why: str) -> None:
        self.off = True
        self.progress.warn(f"{why}; building without it")

    def close(self) -> None:
        self.client.transport.close()
