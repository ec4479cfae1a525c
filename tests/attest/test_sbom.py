"""The SBOM documents: valid for the formats' own validators, saying what the build saw, the same bytes for the
same bill; and attached beside the image where OCI tools look for referrers."""

import json
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from ocibuild.attest import cyclonedx, spdx
from ocibuild.attest.attach import document_artifact, with_referrers
from ocibuild.attest.bill import Bill, ModelFile, RegisteredModel
from ocibuild.attest.sbom import read_sbom
from ocibuild.oci.archive import write_archive
from ocibuild.oci.descriptor import Platform
from ocibuild.oci.digest import Digest
from ocibuild.oci.empty import empty_image
from ocibuild.oci.image import Tagged
from ocibuild.oci.layout import write_layout
from ocibuild.oci.name import ImageName
from ocibuild.oci.store import BlobStore
from ocibuild.registry.options import RegistryOptions
from ocibuild.rootfs.packages import OsPackage, OsPackages

SKLEARN_SHA = "ab" * 32
MODEL_SHA = "ef" * 32


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    filename: str
    sha256: str
    license: str


def _bill(**changes) -> Bill:
    bill = Bill(
        name="ridge",
        version="1",
        image=Digest.of(b"image"),
        platform="linux/amd64",
        base="registry.example/python:3.11",
        base_digest=Digest.of(b"base"),
        os=OsPackages(
            (OsPackage("deb", "libc6", "2.36-9+deb12u14", "amd64", "glibc"), OsPackage("deb", "python3.11", "3.11.2-6", "amd64")),
            "debian", "12", ("deb",),
        ),  # fmt: skip
        wheels=(
            Wheel("scikit-learn", "1.9.1", "scikit_learn-1.9.1-cp311-cp311-manylinux_2_27_x86_64.whl", SKLEARN_SHA, "BSD-3-Clause"),
            Wheel("oddity", "0.1", "oddity-0.1-py3-none-any.whl", "cd" * 32, "Free for non-commercial use, see site"),
        ),  # fmt: skip
        model_files=(ModelFile("var/azureml-app/azureml-models/ridge/1/model.pkl", 1234, MODEL_SHA),),
        registered_models=(RegisteredModel("bert", "3", "registry.example/models/bert:3", "sha256:" + "12" * 32),),
        server_version="0.1.0",
        tool_version="0.1.0",
        created=1_700_000_000,
    )
    return replace(bill, **changes)


def _packages(doc: dict) -> dict[str, dict]:
    return {p["name"]: p for p in doc["packages"]}


def test_spdx_passes_the_spdx_validator_and_lists_what_the_build_saw(tmp_path):
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    raw = spdx.render(_bill())
    (tmp_path / "sbom.spdx.json").write_bytes(raw)
    assert validate_full_spdx_document(parse_file(str(tmp_path / "sbom.spdx.json"))) == []
    doc = json.loads(raw)
    assert doc["spdxVersion"] == "SPDX-2.3" and doc["creationInfo"]["created"] == "2023-11-14T22:13:20Z"
    packages = _packages(doc)
    sklearn = packages["scikit-learn"]
    assert sklearn["versionInfo"] == "1.9.1" and sklearn["licenseDeclared"] == "BSD-3-Clause"
    assert sklearn["checksums"] == [{"algorithm": "SHA256", "checksumValue": SKLEARN_SHA}]
    assert sklearn["externalRefs"][0]["referenceLocator"] == "pkg:pypi/scikit-learn@1.9.1"
    # a license that is not an SPDX expression is not made into one
    assert packages["oddity"]["licenseDeclared"] == "NOASSERTION"
    assert "non-commercial" in packages["oddity"]["licenseComments"]
    libc = packages["libc6"]
    assert libc["externalRefs"][0]["referenceLocator"] == "pkg:deb/debian/libc6@2.36-9%2Bdeb12u14?arch=amd64&upstream=glibc"
    model_file = packages["/var/azureml-app/azureml-models/ridge/1/model.pkl"]
    assert model_file["checksums"][0]["checksumValue"] == MODEL_SHA
    bert = packages["model bert"]["externalRefs"][0]["referenceLocator"]
    assert bert == f"pkg:oci/bert@sha256%3A{'12' * 32}?repository_url=registry.example/models/bert"
    image = packages["ridge"]
    assert image["primaryPackagePurpose"] == "CONTAINER"
    assert image["checksums"][0]["checksumValue"] == _bill().image.hex
    described = [r for r in doc["relationships"] if r["relationshipType"] == "DESCRIBES"]
    assert [r["relatedSpdxElement"] for r in described] == [image["SPDXID"]]
    contains = {(r["spdxElementId"], r["relatedSpdxElement"]) for r in doc["relationships"] if r["relationshipType"] == "CONTAINS"}
    assert (image["SPDXID"], sklearn["SPDXID"]) in contains
    assert (packages["registry.example/python:3.11"]["SPDXID"], libc["SPDXID"]) in contains


def test_cyclonedx_passes_the_1_6_schema_and_lists_what_the_build_saw():
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    raw = cyclonedx.render(_bill())
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(raw.decode()) is None
    doc = json.loads(raw)
    assert doc["specVersion"] == "1.6" and doc["metadata"]["component"]["type"] == "container"
    by_name = {c["name"]: c for c in doc["components"]}
    sklearn = by_name["scikit-learn"]
    assert sklearn["purl"] == "pkg:pypi/scikit-learn@1.9.1" and sklearn["hashes"][0]["content"] == SKLEARN_SHA
    model = next(c for c in doc["components"] if c["type"] == "machine-learning-model" and c["name"] == "ridge")
    assert model["components"][0]["hashes"][0]["content"] == MODEL_SHA


@pytest.mark.parametrize("render", [spdx.render, cyclonedx.render], ids=["spdx", "cyclonedx"])
def test_the_same_bill_gives_the_same_bytes_and_another_bill_other_bytes(render):
    assert render(_bill()) == render(_bill())
    other = render(_bill(wheels=_bill().wheels[:1]))
    assert other != render(_bill())


def test_an_image_on_scratch_with_no_dependencies_still_has_a_valid_sbom(tmp_path):
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    bill = _bill(base=None, base_digest=None, os=None, wheels=(), registered_models=())
    (tmp_path / "sbom.spdx.json").write_bytes(spdx.render(bill))
    assert json.loads((tmp_path / "sbom.spdx.json").read_text())["name"] == "ridge:1"
    assert validate_full_spdx_document(parse_file(str(tmp_path / "sbom.spdx.json"))) == []


def test_spdx_is_written_as_spdx_tools_writes_it(tmp_path):
    """The document is our JSON, not spdx-tools' (its import costs a build 0.15 s): the same document parsed by
    spdx-tools and written again by it gives the same bytes, licenses and all."""
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.writer.json.json_writer import write_document_to_file

    licenses = ("mit or apache-2.0", "GPL-2.0+", "LicenseRef-Foo", "")
    wheels = tuple(Wheel(f"w{i}", "1.0", f"w{i}-1.0-py3-none-any.whl", f"{i:02d}" * 32, text) for i, text in enumerate(licenses))
    for i, bill in enumerate([_bill(), _bill(wheels=wheels), _bill(base=None, base_digest=None, os=None, model_files=())]):
        ours = tmp_path / f"ours-{i}.json"
        ours.write_bytes(spdx.render(bill))
        theirs = tmp_path / f"theirs-{i}.json"
        write_document_to_file(parse_file(str(ours)), str(theirs), validate=True)
        assert theirs.read_bytes() == ours.read_bytes()
    declared = [p.get("licenseDeclared") for p in json.loads(spdx.render(_bill(wheels=wheels)))["packages"] if p["name"].startswith("w")]
    assert declared == ["MIT OR Apache-2.0", "GPL-2.0-or-later", "NOASSERTION", "NOASSERTION"]


def _image_with_sbom(tmp_path: Path):
    store = BlobStore(tmp_path / "store")
    image = empty_image(Platform("linux", "amd64"))
    document = spdx.render(_bill(image=image.digest))
    sbom = document_artifact(document, spdx.MEDIA_TYPE, image, store, 0)
    return with_referrers(image, (sbom,)), sbom, document


def test_the_sbom_is_a_referrer_beside_the_image_in_a_layout_and_an_archive(tmp_path):
    image, sbom, document = _image_with_sbom(tmp_path)
    assert sbom.manifest.subject.digest == image.digest and sbom.manifest.artifact_type == spdx.MEDIA_TYPE
    write_layout([Tagged(image, ImageName.tag("1"))], tmp_path / "layout")
    entries = json.loads((tmp_path / "layout" / "index.json").read_bytes())["manifests"]
    assert [(e["digest"], e.get("artifactType")) for e in entries] == [
        (str(image.digest), None), (str(sbom.digest), spdx.MEDIA_TYPE)]  # fmt: skip
    write_archive([Tagged(image, ImageName.parse("ridge:1"))], tmp_path / "image.tar")
    for where in (f"oci:{tmp_path / 'layout'}", f"oci:{tmp_path / 'layout'}:1", f"oci-archive:{tmp_path / 'image.tar'}"):
        assert read_sbom(where, None, None, RegistryOptions()) == document
    # the same layout written again lists the SBOM once
    write_layout([Tagged(image, ImageName.tag("1"))], tmp_path / "layout")
    assert len(json.loads((tmp_path / "layout" / "index.json").read_bytes())["manifests"]) == 2


def test_an_image_without_sbom_says_so_in_one_line(tmp_path):
    from ocibuild.errors import InputError

    image = empty_image(Platform("linux", "amd64"))
    write_layout([Tagged(image, ImageName.tag("1"))], tmp_path / "layout")
    with pytest.raises(InputError, match="no SBOM refers to its image"):
        read_sbom(f"oci:{tmp_path / 'layout'}", None, None, RegistryOptions())
    with pytest.raises(InputError, match="no cyclonedx SBOM"):
        read_sbom(f"oci:{tmp_path / 'layout'}", None, "cyclonedx", RegistryOptions())
