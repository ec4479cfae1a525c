"""Small records a build keeps by the digests of what it read (a base's Python, a base's files): on this machine in
the blob store, and, with a shared cache, in the cache repository too, so a fresh runner does not download a base
only to learn what every runner before it learned."""

from __future__ import annotations

from typing import Protocol

from ..oci.store import BlobStore


class SharedRecord(Protocol):
    def get_record(self, key: str) -> dict | None: ...

    def put_record(self, key: str, record: dict) -> None: ...


class TieredRecords:
    """The local store first, then the shared cache (whose answer is kept locally); a new record goes to both."""

    def __init__(self, store: BlobStore, shared: SharedRecord):
        self.store, self.shared = store, shared

    def get_ref(self, key: str) -> dict | None:
        if (doc := self.store.get_ref(key)) is not None:
            return doc
        if (doc := self.shared.get_record(key)) is not None:
            self.store.put_ref(key, doc)
        return doc

    def put_ref(self, key: str, doc: dict) -> None:
        self.store.put_ref(key, doc)
        self.shared.put_record(key, doc)
