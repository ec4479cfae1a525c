"""The bill as a CycloneDX 1.6 JSON document (what Trivy and Dependency-Track read), through
``cyclonedx-python-lib``'s own serializer. The tests validate it against the 1.6 schema; a build does not: the
validator's import (jsonschema with its format grammars) cost a build 1.3 s, measured.

The image is the metadata's component (type container); the components are the base image, its OS packages,
the wheels (purl, the wheel file's SHA-256, declared license), the scoring server, and the model (type
machine-learning-model) holding its files (type file, each with its SHA-256). Serial number and references are
derived from the bill, so the same bill gives the same bytes.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from .bill import Bill, oci_purl, pypi_purl

MEDIA_TYPE = "application/vnd.cyclonedx+json"


def render(bill: Bill) -> bytes:
    from cyclonedx.output.json import JsonV1Dot6

    return JsonV1Dot6(_bom(bill)).output_as_string(indent=2).encode()


def _bom(bill: Bill):
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.tool import ToolRepository

    image = _component(
        ComponentType.CONTAINER, bill.name, bill.version, "image", purl=oci_purl(bill.image, bill.name)
    )
    tools = ToolRepository(
        components=[_component(ComponentType.APPLICATION, "ocibuild", bill.tool_version, "tool")]
    )
    metadata = BomMetaData(
        component=image, tools=tools, timestamp=datetime.fromtimestamp(bill.created, timezone.utc)
    )
    components: list[Component] = []
    if bill.base_digest is not None:
        components.append(_component(ComponentType.CONTAINER, bill.base or "base", None, "base",
                                     purl=oci_purl(bill.base_digest, bill.base), sha256=bill.base_digest.hex))  # fmt: skip
    distro = bill.os.distro if bill.os else None
    for p in bill.os.packages if bill.os else ():
        components.append(_component(ComponentType.LIBRARY, p.name, p.version, p.purl(distro),
                                     purl=p.purl(distro), license=p.license or ""))  # fmt: skip
    for w in bill.wheels:
        purl = pypi_purl(w.name, w.version)
        components.append(_component(ComponentType.LIBRARY, w.name, w.version, purl, purl=purl, sha256=w.sha256,
                                     license=w.license))  # fmt: skip
    components.append(
        _component(ComponentType.APPLICATION, "ocibuild-scoring-server", bill.server_version, "server")
    )
    components += _models(bill)
    serial = uuid.uuid5(uuid.NAMESPACE_URL, f"ocibuild:{bill.fingerprint()}")
    bom = Bom(components=components, metadata=metadata, serial_number=serial)
    bom.register_dependency(image, components)  # what the image holds, one level down
    return bom


def _models(bill: Bill) -> list:
    from cyclonedx.model.component import ComponentType

    out = []
    if bill.model_files:
        model = _component(ComponentType.MACHINE_LEARNING_MODEL, bill.name, bill.version, "model")
        for f in bill.model_files:
            model.components.add(
                _component(ComponentType.FILE, f"/{f.path}", None, f"file:/{f.path}", sha256=f.sha256)
            )
        out.append(model)
    for m in bill.registered_models:
        digest = m.digest.partition(":")[2] if m.digest.startswith("sha256:") else ""
        purl = oci_purl(m.digest, m.reference, registry=True)
        out.append(_component(ComponentType.MACHINE_LEARNING_MODEL, m.name, m.version, purl, purl=purl, sha256=digest))
    return out


def _component(
    kind, name: str, version: str | None, ref: str, *, purl: str = "", sha256: str = "", license: str = ""
):
    from cyclonedx.model import HashAlgorithm, HashType
    from cyclonedx.model.component import Component
    from packageurl import PackageURL

    return Component(
        type=kind,
        name=name,
        version=version,
        bom_ref=ref,
        purl=PackageURL.from_string(purl) if purl else None,
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=sha256)] if sha256 else None,
        licenses=_licenses(license),
    )


def _licenses(text: str) -> list:
    """The declared license: an SPDX expression when it is one, else its name as the package states it."""
    if not text:
        return []
    from cyclonedx.contrib.license.factories import LicenseFactory

    return [LicenseFactory().make_from_string(text)]
