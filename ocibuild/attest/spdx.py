"""The bill as an SPDX 2.3 JSON document (what BuildKit and Docker Scout write).

The image is the described package; it CONTAINS its base's OS packages, its wheels (each with the wheel file's
sha256 as the package checksum, a ``pkg:pypi`` purl and the declared license where it is a valid SPDX
expression), the scoring server and its models; ocibuild is its BUILD_TOOL_OF. Model files are packages of
purpose FILE: SPDX 2.3 files must carry a SHA-1, which the build does not compute, and a package may carry SHA-256
alone. The namespace and every time come from the bill, so the same bill gives the same bytes.

The document is written here as JSON, field for field as spdx-tools writes it: spdx-tools' import alone (its
models are checked at run time by beartype) took 0.15 s of a 0.5 s build, and every build writes an SBOM. The
tests hold every shape this module writes to spdx-tools' parser and validator.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime, timezone

from .bill import Bill, oci_purl, pypi_purl

MEDIA_TYPE = "application/spdx+json"
NOASSERTION = "NOASSERTION"


def render(bill: Bill) -> bytes:
    """The SPDX JSON document."""
    created = datetime.fromtimestamp(bill.created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    image, contained, tool = _packages(bill)
    relationships = [_relationship("SPDXRef-DOCUMENT", "DESCRIBES", image["SPDXID"])]
    relationships += [_relationship(image["SPDXID"], "CONTAINS", p["SPDXID"]) for p, parent in contained if parent is None]
    relationships += [_relationship(parent, "CONTAINS", p["SPDXID"]) for p, parent in contained if parent]
    relationships.append(_relationship(tool["SPDXID"], "BUILD_TOOL_OF", image["SPDXID"]))
    document = {
        "SPDXID": "SPDXRef-DOCUMENT",
        "creationInfo": {"created": created, "creators": [f"Tool: ocibuild-{bill.tool_version}"]},
        "dataLicense": "CC0-1.0",
        "name": f"{bill.name}:{bill.version}",
        "spdxVersion": "SPDX-2.3",
        "documentNamespace": f"https://spdx.org/spdxdocs/ocibuild/{bill.name}-{bill.fingerprint()}",
        "packages": [image, *(p for p, _ in contained), tool],
        "relationships": relationships,
    }
    return json.dumps(document, indent=4).encode()


def _relationship(element: str, kind: str, related: str) -> dict:
    return {"spdxElementId": element, "relatedSpdxElement": related, "relationshipType": kind}


def _packages(bill: Bill) -> tuple[dict, list[tuple[dict, str | None]], dict]:
    """The image package; every package it holds with the id of the one that holds it (None: the image); the tool."""
    image = _package("SPDXRef-Image", bill.name, bill.version, "CONTAINER",
                     purl=oci_purl(bill.image, bill.name), sha256=bill.image.hex)  # fmt: skip
    contained: list[tuple[dict, str | None]] = []
    if bill.base_digest is not None:
        contained.append((_package("SPDXRef-Base", bill.base or "base", None, "CONTAINER",
                                   purl=oci_purl(bill.base_digest, bill.base), sha256=bill.base_digest.hex), None))  # fmt: skip
    distro = bill.os.distro if bill.os else None
    for i, p in enumerate(bill.os.packages if bill.os else ()):
        pkg = _package(f"SPDXRef-OS-{i}", p.name, p.version, "OPERATING_SYSTEM" if p.name == distro else "LIBRARY",
                       purl=p.purl(distro), license=p.license or "")  # fmt: skip
        contained.append((pkg, "SPDXRef-Base" if bill.base_digest is not None else None))
    for i, w in enumerate(bill.wheels):
        pkg = _package(f"SPDXRef-Python-{i}", w.name, w.version, "LIBRARY",
                       purl=pypi_purl(w.name, w.version), sha256=w.sha256, license=w.license, file_name=w.filename)  # fmt: skip
        contained.append((pkg, None))
    contained.append((_package("SPDXRef-Server", "ocibuild-scoring-server", bill.server_version, "APPLICATION"), None))
    contained += _models(bill)
    tool = _package("SPDXRef-Tool", "ocibuild", bill.tool_version, "APPLICATION",
                    purl=pypi_purl("ocibuild", bill.tool_version))  # fmt: skip
    return image, contained, tool


def _models(bill: Bill) -> list[tuple[dict, str | None]]:
    out: list[tuple[dict, str | None]] = []
    if bill.model_files:
        out.append((_package("SPDXRef-Model", f"model {bill.name}", bill.version, "OTHER"), None))
        for i, f in enumerate(bill.model_files):
            pkg = _package(f"SPDXRef-ModelFile-{i}", f"/{f.path}", bill.version, "FILE", sha256=f.sha256)
            out.append((pkg, "SPDXRef-Model"))
    for i, m in enumerate(bill.registered_models):
        digest = m.digest.partition(":")[2] if m.digest.startswith("sha256:") else ""
        pkg = _package(f"SPDXRef-RegisteredModel-{i}", f"model {m.name}", m.version, "OTHER",
                       sha256=digest, purl=oci_purl(m.digest, m.reference, registry=True))  # fmt: skip
        out.append((pkg, None))
    return out


def _package(spdx_id: str, name: str, version: str | None, purpose: str, *, purl: str = "", sha256: str = "",
             license: str = "", file_name: str = "") -> dict:  # fmt: skip
    """One package, its fields in spdx-tools' order (sorted): what a package is not asked to say is NOASSERTION."""
    declared, comment = _license(license)
    fields: dict[str, object] = {
        "SPDXID": _safe_id(spdx_id),
        "checksums": [{"algorithm": "SHA256", "checksumValue": sha256}] if sha256 else None,
        "copyrightText": NOASSERTION,
        "downloadLocation": NOASSERTION,
        "externalRefs": [{"referenceCategory": "PACKAGE_MANAGER", "referenceLocator": purl, "referenceType": "purl"}]
        if purl
        else None,
        "filesAnalyzed": False,
        "licenseComments": comment,
        "licenseConcluded": NOASSERTION,
        "licenseDeclared": declared,
        "name": name,
        "packageFileName": file_name or None,
        "primaryPackagePurpose": purpose,
        "supplier": NOASSERTION,
        "versionInfo": version,
    }
    return {k: v for k, v in fields.items() if v is not None}


def _license(text: str) -> tuple[str, str | None]:
    """A declared license as an SPDX expression when it parses as one; else NOASSERTION and the text as a comment."""
    if not text:
        return NOASSERTION, None
    from license_expression import ExpressionError

    try:
        expression = _licensing().parse(text, validate=True, strict=True)
    except (ExpressionError, ValueError, TypeError):
        return NOASSERTION, f"declared: {text}"
    return str(expression), None


@functools.cache
def _licensing():
    """SPDX's license list, loaded once per process (14 ms a load: it was loaded again for every licensed wheel)."""
    from license_expression import get_spdx_licensing

    return get_spdx_licensing()


def _safe_id(spdx_id: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "-" for c in spdx_id)
