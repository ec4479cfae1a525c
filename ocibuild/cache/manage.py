"""The local cache, managed: what it holds (``cache ls``) and keeping it under a size (``cache prune``).

"Last used" is a blob's file time, which the store sets each time a build finds or reads the blob
(``BlobStore.touch``). Pruning removes the least recently used blobs first. It is safe while builds run: every
build holds the cache's lock shared, so when prune can take it exclusively no build is running (and one that starts
waits the few milliseconds prune takes); when it cannot, prune leaves every blob used in the last ``grace``
seconds, which covers what running builds have found or written, and says so.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from ..errors import UsageError
from ..oci.digest import Digest
from ..oci.store import BlobStore

GRACE = 3600.0  # seconds: a blob used this recently may belong to a running build

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True)
class CacheEntry:
    digest: Digest
    size: int  # bytes on disk; 0 for a derived blob, which is made again from the files it came from
    last_used: float  # seconds since the epoch
    what: str


@dataclass(frozen=True)
class PruneResult:
    removed: list[CacheEntry]
    size: int  # what the cache holds after
    kept_recent: int  # blobs prune would have removed, kept because a running build may use them


def parse_size(text: str) -> int:
    """``10G``, ``500MiB``, ``1.5GB``, ``4096``: bytes, with binary units (as ``docker builder prune``)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not m:
        raise UsageError(f"--max-size {text!r}: give a size such as 20G, 500M or 1048576")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def list_entries(store: BlobStore) -> list[CacheEntry]:
    """Every blob the cache holds, most recently used first."""
    layers = _layer_records(store)
    entries = []
    for path in store.blob_paths():
        try:
            st = path.stat()
        except FileNotFoundError:
            continue  # pruned meanwhile
        digest = Digest("sha256:" + path.name)
        entries.append(CacheEntry(digest, st.st_size, st.st_mtime, layers.get(digest, "blob")))
    for digest in store.derived_digests():
        if store.is_stored(digest):
            continue
        if (used := store.last_used(digest)) is None:
            continue
        what = layers.get(digest, "layer") + ", made again from your files when read (not copied)"
        if store.recipe(digest) is None:
            what = layers.get(digest, "layer") + ", stale: its files changed (prune removes it)"
        entries.append(CacheEntry(digest, 0, used, what))
    return sorted(entries, key=lambda e: e.last_used, reverse=True)


def prune(store: BlobStore, max_size: int, *, grace: float = GRACE, now: float | None = None) -> PruneResult:
    """Remove the least recently used blobs until the cache holds at most ``max_size`` bytes of them, then the
    records that named them and the recipes whose files changed."""
    now = time.time() if now is None else now
    exclusive = store.try_exclusive()
    blobs = sorted((e for e in list_entries(store) if e.size), key=lambda e: e.last_used)
    size = sum(e.size for e in blobs)
    removed, kept = [], 0
    for entry in blobs:
        if size <= max_size:
            break
        if not exclusive and entry.last_used > now - grace:
            kept += 1
            continue
        store.remove_blob(entry.digest)
        removed.append(entry)
        size -= entry.size
    _drop_stale_records(store)
    return PruneResult(removed, size, kept)


def _layer_records(store: BlobStore) -> dict[Digest, str]:
    """What each layer the cache recorded is, by its digest."""
    out = {}
    for key, doc in store.refs():
        desc = doc.get("descriptor")
        if isinstance(desc, dict) and isinstance(desc.get("digest"), str):
            try:
                out[Digest(desc["digest"])] = "dependencies layer" if key.startswith("deps-") else "layer"
            except ValueError:
                continue
    return out


def _drop_stale_records(store: BlobStore) -> None:
    for digest in store.derived_digests():
        if store.recipe(digest) is None:  # its files changed: it can never produce its blob again
            store.remove_recipe(digest)
    for key, doc in store.refs():
        desc = doc.get("descriptor")
        if isinstance(desc, dict) and isinstance(desc.get("digest"), str):
            try:
                if not store.can_produce(Digest(desc["digest"])):
                    store.remove_ref(key)
            except ValueError:
                store.remove_ref(key)
