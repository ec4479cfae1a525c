"""The bill as an SPDX 2.3 JSON document (what BuildKit and Docker Scout write), through ``spdx-tools``.

The image is the described package; it CONTAINS its base's OS packages, its wheels (each with the wheel file's
sha256 as the package checksum, a ``pkg:pypi`` purl and the declared license where it is a valid SPDX
expression), the scoring server and its models; ocibuild is its BUILD_TOOL_OF. Model files are packages of
purpose FILE: SPDX 2.3 files must carry a SHA-1, which the build does not compute, and a package may carry SHA-256
alone. The namespace and every time come from the bill, so the same bill gives the same bytes.
"""

from __future__ import annotations

import io
from datetime import datetime, timezone

from ..errors import OcibuildError
from .bill import Bill, oci_purl, pypi_purl

MEDIA_TYPE = "application/spdx+json"


class SbomError(OcibuildError):
    exit_code = 1


def render(bill: Bill) -> bytes:
    """The SPDX JSON document, validated by spdx-tools before it is returned."""
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document
    from spdx_tools.spdx.writer.json.json_writer import write_document_to_stream

    document = _document(bill)
    problems = validate_full_spdx_document(document)
    if problems:  # ours, not the user's: say what, once
        raise SbomError(
            f"the SPDX document for {bill.name}:{bill.version} is not valid: {problems[0].validation_message}"
        )
    out = io.StringIO()
    write_document_to_stream(document, out, validate=False)
    return out.getvalue().encode()


def _document(bill: Bill):
    from spdx_tools.spdx.model import (
        Actor,
        ActorType,
        CreationInfo,
        Document,
        Relationship,
        RelationshipType,
    )

    created = datetime.fromtimestamp(bill.created, timezone.utc).replace(tzinfo=None)
    info = CreationInfo(
        spdx_version="SPDX-2.3",
        spdx_id="SPDXRef-DOCUMENT",
        name=f"{bill.name}:{bill.version}",
        document_namespace=f"https://spdx.org/spdxdocs/ocibuild/{bill.name}-{bill.fingerprint()}",
        creators=[Actor(ActorType.TOOL, f"ocibuild-{bill.tool_version}")],
        created=created,
    )
    image, contained, tool = _packages(bill)
    relationships = [Relationship("SPDXRef-DOCUMENT", RelationshipType.DESCRIBES, image.spdx_id)]
    relationships += [
        Relationship(image.spdx_id, RelationshipType.CONTAINS, p.spdx_id)
        for p, parent in contained
        if parent is None
    ]
    relationships += [
        Relationship(parent, RelationshipType.CONTAINS, p.spdx_id) for p, parent in contained if parent
    ]
    relationships.append(Relationship(tool.spdx_id, RelationshipType.BUILD_TOOL_OF, image.spdx_id))
    packages = [image, *(p for p, _ in contained), tool]
    return Document(info, packages=packages, relationships=relationships)


def _packages(bill: Bill):
    """The image package; every package it holds with the id of the one that holds it (None: the image); the tool."""
    from spdx_tools.spdx.model import PackagePurpose

    image = _package("SPDXRef-Image", bill.name, bill.version, PackagePurpose.CONTAINER,
                     purl=oci_purl(bill.image, bill.name), sha256=bill.image.hex)  # fmt: skip
    contained: list[tuple[object, str | None]] = []
    if bill.base_digest is not None:
        contained.append((_package("SPDXRef-Base", bill.base or "base", None, PackagePurpose.CONTAINER,
                                   purl=oci_purl(bill.base_digest, bill.base), sha256=bill.base_digest.hex), None))  # fmt: skip
    distro = bill.os.distro if bill.os else None
    for i, p in enumerate(bill.os.packages if bill.os else ()):
        pkg = _package(f"SPDXRef-OS-{i}", p.name, p.version, PackagePurpose.OPERATING_SYSTEM if p.name == distro else PackagePurpose.LIBRARY,
                       purl=p.purl(distro), license=p.license or "")  # fmt: skip
        contained.append((pkg, "SPDXRef-Base" if bill.base_digest is not None else None))
    for i, w in enumerate(bill.wheels):
        pkg = _package(f"SPDXRef-Python-{i}", w.name, w.version, PackagePurpose.LIBRARY,
                       purl=pypi_purl(w.name, w.version), sha256=w.sha256, license=w.license, file_name=w.filename)  # fmt: skip
        contained.append((pkg, None))
    contained.append((_package("SPDXRef-Server", "ocibuild-scoring-server", bill.server_version,
                               PackagePurpose.APPLICATION), None))  # fmt: skip
    contained += _models(bill)
    tool = _package("SPDXRef-Tool", "ocibuild", bill.tool_version, PackagePurpose.APPLICATION,
                    purl=pypi_purl("ocibuild", bill.tool_version))  # fmt: skip
    return image, contained, tool


def _models(bill: Bill) -> list[tuple[object, str | None]]:
    from spdx_tools.spdx.model import PackagePurpose

    out: list[tuple[object, str | None]] = []
    if bill.model_files:
        out.append(
            (_package("SPDXRef-Model", f"model {bill.name}", bill.version, PackagePurpose.OTHER), None)
        )
        for i, f in enumerate(bill.model_files):
            pkg = _package(
                f"SPDXRef-ModelFile-{i}", f"/{f.path}", bill.version, PackagePurpose.FILE, sha256=f.sha256
            )
            out.append((pkg, "SPDXRef-Model"))
    for i, m in enumerate(bill.registered_models):
        digest = m.digest.partition(":")[2] if m.digest.startswith("sha256:") else ""
        pkg = _package(f"SPDXRef-RegisteredModel-{i}", f"model {m.name}", m.version, PackagePurpose.OTHER,
                       sha256=digest, purl=oci_purl(m.digest, m.reference, registry=True))  # fmt: skip
        out.append((pkg, None))
    return out


def _package(spdx_id: str, name: str, version: str | None, purpose, *, purl: str = "", sha256: str = "",
             license: str = "", file_name: str = ""):  # fmt: skip
    from spdx_tools.spdx.model import (
        Checksum,
        ChecksumAlgorithm,
        ExternalPackageRef,
        ExternalPackageRefCategory,
        Package,
        SpdxNoAssertion,
    )

    declared, comment = _license(license)
    return Package(
        spdx_id=_safe_id(spdx_id),
        name=name,
        download_location=SpdxNoAssertion(),
        version=version,
        file_name=file_name or None,
        supplier=SpdxNoAssertion(),
        files_analyzed=False,
        checksums=[Checksum(ChecksumAlgorithm.SHA256, sha256)] if sha256 else [],
        license_concluded=SpdxNoAssertion(),
        license_declared=declared,
        license_comment=comment,
        copyright_text=SpdxNoAssertion(),
        external_references=[ExternalPackageRef(ExternalPackageRefCategory.PACKAGE_MANAGER, "purl", purl)]
        if purl
        else [],
        primary_package_purpose=purpose,
    )


def _license(text: str):
    """A declared license as an SPDX expression when it parses as one; else NOASSERTION and the text as a comment."""
    from license_expression import ExpressionError, get_spdx_licensing
    from spdx_tools.spdx.model import SpdxNoAssertion

    if not text:
        return SpdxNoAssertion(), None
    licensing = get_spdx_licensing()
    try:
        expression = licensing.parse(text, validate=True, strict=True)
    except (ExpressionError, ValueError, TypeError):
        return SpdxNoAssertion(), f"declared: {text}"
    return expression, None


def _safe_id(spdx_id: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "-" for c in spdx_id)
