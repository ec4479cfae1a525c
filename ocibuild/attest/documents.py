"""Every built image gets its documents, attached as referrers (``attach``): its SBOM (``sbom``, in the format
asked for) and its SLSA provenance (``provenance``). A multi-platform index gets them per platform image, each
describing that image."""

from __future__ import annotations

from dataclasses import dataclass

from ..oci.image import Entry, Image
from ..oci.store import BlobStore
from ..packaging.package import BuildResult, IndexResult
from . import provenance, sbom
from .attach import document_artifact, index_with_referrers, with_referrers


@dataclass(frozen=True)
class DocumentOptions:
    sbom: str = "spdx"  # sbom.FORMATS
    provenance: bool = True


def with_documents(result: BuildResult | IndexResult, store: BlobStore, options: DocumentOptions, epoch: int) -> Entry:
    """The entry to publish: the image (or index) whose images carry their documents."""
    if isinstance(result, IndexResult):
        per_image = [_documents(r, store, options, epoch) for r in result.results]
        return index_with_referrers(result.index, per_image) if any(per_image) else result.index
    documents = _documents(result, store, options, epoch)
    return with_referrers(result.image, documents) if documents else result.image


def _documents(result: BuildResult, store: BlobStore, options: DocumentOptions, epoch: int) -> tuple[Image, ...]:
    out = []
    if options.sbom != "none":
        document = sbom.render(sbom.bill_of(result, epoch), options.sbom)
        out.append(document_artifact(document, sbom.MEDIA_TYPES[options.sbom], result.image, store, epoch))
    if options.provenance and result.spec is not None:
        statement = provenance.render(result, result.spec)
        out.append(document_artifact(statement, provenance.MEDIA_TYPE, result.image, store, epoch,
                                     {"in-toto.io/predicate-type": provenance.PREDICATE_TYPE}))  # fmt: skip
    return tuple(out)
