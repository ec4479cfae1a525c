"""A layer cache kept in a registry repository (``--cache-repo``): what one CI runner built, every other one reuses.

Each entry is one OCI image manifest, tagged ``ocibuild-cache-<format>-<key>`` (the key is already a sha256 of
the inputs): its config is a small JSON document of ours (``application/vnd.ocibuild.layer-cache.v1+json``: the
key, the layer's diff_id and the builder's facts about it) and its one layer is the cached layer's blob, under the
very descriptor the image uses. This is the form ORAS calls an OCI 1.0 artifact and BuildKit's
``image-manifest=true`` cache writes: a plain image manifest with a config type of its own, which distribution 2.x,
Harbor, ECR, GHCR and ACR all accept (an index with non-manifest entries, BuildKit's older form, is what several
refused). The manifest keeps the blob alive under the registry's garbage collection, as a tag keeps an image.

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

from ..errors import OcibuildError, UsageError
from ..events import Progress
from ..oci import media
from ..oci.descriptor import Descriptor, Manifest, canonical_json
from ..oci.digest import Digest, read_all
from ..oci.image import BlobOrigin, Image, Layer
from ..oci.name import Reference, parse_reference
from ..oci.store import BlobStore
from ..registry.client import RegistryClient
from ..registry.errors import NotFoundError
from ..registry.push import push_image
from ..registry.source import RegistrySource
from ..registry.transport import RegistryOptions, Transport
from ..version import __version__
from .layers import CachedLayer

CONFIG_TYPE = "application/vnd.ocibuild.layer-cache.v1+json"
FORMAT = 1
MAX_CONFIG = 16 << 20  # the facts of a big dependency set are a few MB of JSON at most


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
        if self.off:
            return None
        try:
            return self._get(key)
        except NotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return None  # a garbled entry: built again, and written over
        except OcibuildError as e:
            self._turn_off(f"cannot read the cache repo {self.where}: {e}")
            return None

    def _get(self, key: str) -> CachedLayer | None:
        raw, mt = self.client.get_manifest(entry_tag(key))  # verified against the digest the registry states
        manifest = Manifest.parse(raw, f"cache entry {self.where}:{entry_tag(key)}", mt or media.OCI_MANIFEST)
        if manifest.config.media_type != CONFIG_TYPE or len(manifest.layers) != 1:
            return None  # not ours, or another format: rebuilt and written over
        if manifest.config.size > MAX_CONFIG:
            return None
        with self.client.open_blob(manifest.config) as stream:  # verified as it is read
            doc = json.loads(read_all(stream))
        desc = manifest.layers[0]
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("key") != key:
            return None
        if not self.client.has_blob(desc.digest):
            return None  # the entry survived its blob (deleted, garbage-collected): build again
        facts = doc.get("facts")
        source = RegistrySource(self.client, self.store, [str(desc.digest)], self.progress)
        layer = Layer(
            desc, Digest(doc["diff_id"]), source, origin=BlobOrigin(self.repo.registry, self.repo.repository)
        )
        return CachedLayer(layer, facts if isinstance(facts, dict) else None, self.where)

    def put(self, key: str, layer: Layer, facts: dict | None = None) -> Layer:
        if self.off or self.readonly:
            return layer
        config = canonical_json(
            {
                "format": FORMAT,
                "key": key,
                "diff_id": str(layer.diff_id),
                "facts": facts,
                "ocibuild": __version__,
            }
        )
        manifest = Manifest.build(Descriptor(CONFIG_TYPE, Digest.of(config), len(config)), [layer.descriptor])
        entry = Image(manifest, config, (layer,), f"cache entry {key}")
        try:
            push_image(entry, replace(self.repo, tag=entry_tag(key)), self.options, self.progress)
        except OcibuildError as e:
            self._turn_off(f"cannot write to the cache repo {self.where}: {e}")
            return layer
        return replace(layer, origin=BlobOrigin(self.repo.registry, self.repo.repository))

    def _turn_off(self, why: str) -> None:
        self.off = True
        self.progress.warn(f"{why}; building without it")

    def close(self) -> None:
        self.client.transport.close()
