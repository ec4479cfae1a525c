"""Every image carries its SBOM (issue 13): pushed as the image's referrer through the OCI referrers tag schema
(distribution 2.8 has no referrers API), written beside it in layouts and archives, read back by
``ocibuild sbom``, valid for the formats' own validators, and saying what the image holds."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest
import requests

from tests.conftest import run
from tests.e2e.test_package import ocibuild


@pytest.fixture(scope="module")
def pushed(example_model, base_ref, registry, tmp_path_factory):
    work = tmp_path_factory.mktemp("sbom")
    reg = registry.get("plain")
    ref = reg.ref("sbom/ridge:1")
    proc = ocibuild(
        "package", example_model.model, "--entry-script", example_model.score,
        "--requirements", example_model.requirements, "--base", base_ref, "--cache", work / "cache",
        "--name", "ridge", "--push", ref, "--oci-layout", work / "layout", "--output", work / "image.tar",
    )  # fmt: skip
    return {"work": work, "reg": reg, "ref": ref, "digest": proc.stdout.split()[-1], "stderr": proc.stderr}


def _sklearn_in_image(layout, digest: str) -> str:
    """The scikit-learn version the image's dependencies layer holds (its dist-info folder's name)."""
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / digest.split(":")[1]).read_bytes())
    for layer in manifest["layers"]:
        with tarfile.open(blobs / layer["digest"].split(":")[1]) as tf:
            for name in tf.getnames():
                if name.startswith("opt/ocibuild/site-packages/scikit_learn-") and name.endswith(".dist-info"):
                    return name.split("scikit_learn-")[1].removesuffix(".dist-info")
    raise AssertionError("no scikit-learn in the image")


def test_the_pushed_image_has_an_spdx_sbom_through_the_referrers_tag_schema(pushed):
    reg, digest = pushed["reg"], pushed["digest"]
    # what any OCI client without the referrers API reads: the tag sha256-<hex> holds an index of referrers
    tag_index = json.loads(run(["skopeo", "inspect", "--raw", *reg.skopeo_args(),
                                f"docker://{reg.ref('sbom/ridge:' + digest.replace(':', '-'))}"]).stdout)  # fmt: skip
    kinds = {e["artifactType"]: e for e in tag_index["manifests"]}
    assert set(kinds) == {"application/spdx+json", "application/vnd.in-toto+json"}
    entry = kinds["application/spdx+json"]
    artifact = json.loads(run(["skopeo", "inspect", "--raw", *reg.skopeo_args(),
                               f"docker://{reg.ref('sbom/ridge')}@{entry['digest']}"]).stdout)  # fmt: skip
    assert artifact["subject"]["digest"] == digest and artifact["layers"][0]["mediaType"] == "application/spdx+json"
    blob = requests.get(f"{reg.url}/v2/sbom/ridge/blobs/{artifact['layers'][0]['digest']}", timeout=30).content
    assert ocibuild("sbom", pushed["ref"]).stdout.encode() == blob


def test_the_sbom_names_the_wheels_and_files_the_image_holds(pushed, base_image, tmp_path):
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    text = ocibuild("sbom", pushed["ref"]).stdout
    (tmp_path / "sbom.spdx.json").write_text(text)
    assert validate_full_spdx_document(parse_file(str(tmp_path / "sbom.spdx.json"))) == []
    packages = {p["name"]: p for p in json.loads(text)["packages"]}
    version = _sklearn_in_image(pushed["work"] / "layout", pushed["digest"])
    sklearn = packages["scikit-learn"]
    assert sklearn["versionInfo"] == version
    # the wheel file's sha256 as the index publishes it (PEP 691), for the file the SBOM says was installed
    files = requests.get("https://pypi.org/simple/scikit-learn/", timeout=60,
                         headers={"Accept": "application/vnd.pypi.simple.v1+json"}).json()["files"]  # fmt: skip
    published = {f["filename"]: f["hashes"]["sha256"] for f in files}
    assert sklearn["checksums"] == [{"algorithm": "SHA256", "checksumValue": published[sklearn["packageFileName"]]}]
    assert "cp311" in sklearn["packageFileName"] and "x86_64" in sklearn["packageFileName"]
    # the base's Debian packages, and the model file by its sha256
    assert packages["libc6"]["externalRefs"][0]["referenceLocator"].startswith("pkg:deb/debian/libc6@")
    assert "python3.11" in packages
    model = next(p for n, p in packages.items() if n.endswith("/model.pkl"))
    assert model["checksums"][0]["checksumValue"] == hashlib.sha256(pushed_model_bytes(pushed)).hexdigest()


def pushed_model_bytes(pushed) -> bytes:
    """The model file as the image holds it (from the layout's model layer)."""
    blobs = pushed["work"] / "layout" / "blobs" / "sha256"
    manifest = json.loads((blobs / pushed["digest"].split(":")[1]).read_bytes())
    for layer in manifest["layers"]:
        with tarfile.open(blobs / layer["digest"].split(":")[1]) as tf:
            for m in tf.getmembers():
                if m.name.endswith("/model.pkl"):
                    return tf.extractfile(m).read()
    raise AssertionError("no model.pkl in the image")


def test_the_layout_and_archive_hold_it_beside_the_image_and_tools_still_read_the_image(pushed):
    work, digest = pushed["work"], pushed["digest"]
    for where in (f"oci:{work / 'layout'}", f"oci-archive:{work / 'image.tar'}"):
        assert json.loads(ocibuild("sbom", where).stdout)["spdxVersion"] == "SPDX-2.3"
        assert json.loads(run(["skopeo", "inspect", f"{where}:1"]).stdout)["Digest"] == digest
    assert "its attestations beside it" in pushed["stderr"] and f"oci:{work / 'layout'}:1" in pushed["stderr"]
    assert run(["umoci", "ls", "--layout", str(work / "layout")]).stdout.split() == ["1"]
    with tarfile.open(work / "image.tar") as tf:
        docker = json.load(io.BytesIO(tf.extractfile("manifest.json").read()))
    assert len(docker) == 1  # docker load sees the image only


def test_cyclonedx_on_request_and_none_on_request(pushed, example_model, base_ref):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    work = pushed["work"]
    common = ("package", example_model.model, "--entry-script", example_model.score, "--requirements",
              example_model.requirements, "--base", base_ref, "--cache", work / "cache", "--name", "ridge")  # fmt: skip
    ocibuild(*common, "--sbom", "cyclonedx", "--oci-layout", work / "cdx")
    text = ocibuild("sbom", f"oci:{work / 'cdx'}", "--format", "cyclonedx").stdout
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    assert any(c["name"] == "scikit-learn" for c in json.loads(text)["components"])
    ocibuild(*common, "--sbom", "none", "--no-provenance", "--oci-layout", work / "bare")
    assert len(json.loads((work / "bare" / "index.json").read_bytes())["manifests"]) == 1
    proc = ocibuild("sbom", f"oci:{work / 'bare'}", check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "no SBOM refers to" in proc.stderr


def test_the_provenance_says_who_built_it_from_what_by_digest(pushed, example_model, base_image):
    reg, digest = pushed["reg"], pushed["digest"]
    tag_index = json.loads(run(["skopeo", "inspect", "--raw", *reg.skopeo_args(),
                                f"docker://{reg.ref('sbom/ridge:' + digest.replace(':', '-'))}"]).stdout)  # fmt: skip
    (entry,) = [e for e in tag_index["manifests"] if e["artifactType"] == "application/vnd.in-toto+json"]
    assert entry["annotations"]["in-toto.io/predicate-type"] == "https://slsa.dev/provenance/v1"
    artifact = json.loads(run(["skopeo", "inspect", "--raw", *reg.skopeo_args(),
                               f"docker://{reg.ref('sbom/ridge')}@{entry['digest']}"]).stdout)  # fmt: skip
    blob = requests.get(f"{reg.url}/v2/sbom/ridge/blobs/{artifact['layers'][0]['digest']}", timeout=30)
    assert hashlib.sha256(blob.content).hexdigest() == artifact["layers"][0]["digest"].split(":")[1]
    statement = blob.json()
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["subject"] == [{"name": "ridge", "digest": {"sha256": digest.split(":")[1]}}]
    predicate = statement["predicate"]
    assert predicate["runDetails"]["builder"]["version"]["ocibuild"]
    params = predicate["buildDefinition"]["externalParameters"]
    assert params["entryScript"] == "score.py" and params["requirements"] == ["requirements.txt"]
    resolved = predicate["buildDefinition"]["resolvedDependencies"]
    digests = {r.get("name") or r.get("uri"): r.get("digest", {}).get("sha256") for r in resolved}
    sha = lambda path: hashlib.sha256(path.read_bytes()).hexdigest()  # noqa: E731
    assert digests["requirements.txt"] == sha(example_model.requirements)
    assert digests["score.py"] == sha(example_model.score)
    assert any(n.endswith("/model.pkl") and d == sha(example_model.model) for n, d in digests.items())
    base_digest = json.loads(run(["skopeo", "inspect", base_image.ref]).stdout)["Digest"]
    assert base_digest.split(":")[1] in digests.values()
    assert any(r.get("uri", "").startswith("pkg:pypi/scikit-learn@") and r.get("digest") for r in resolved)
    text = json.dumps(statement)
    assert "/tmp" not in text and "pytest" not in text  # no path of the builder's machine


def test_reading_the_sbom_and_copying_the_image_leave_no_connection_behind(pushed, tmp_path, monkeypatch):
    """A program that calls the API in a loop (a CI service, a controller) gathers no sockets: every registry
    connection opened for the image, its SBOM and its provenance is closed when the call returns, not left for the
    garbage collector to find."""
    from ocibuild.attest.sbom import read_sbom
    from ocibuild.copy import copy
    from ocibuild.registry import transport
    from ocibuild.registry.options import RegistryOptions

    opened = []
    real_init = transport.Transport.__init__

    def recording(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        opened.append(self)

    monkeypatch.setattr(transport.Transport, "__init__", recording)
    assert json.loads(read_sbom(pushed["ref"], None, None, RegistryOptions()))["spdxVersion"] == "SPDX-2.3"
    copy(pushed["ref"], f"oci:{tmp_path / 'copy'}:1")
    assert len(json.loads((tmp_path / "copy" / "index.json").read_bytes())["manifests"]) == 3  # image, SBOM, provenance
    live = [
        conn
        for t in opened
        for adapter in t.session.adapters.values()
        for pool in adapter.poolmanager.pools._container.values()
        if pool.pool is not None
        for conn in list(pool.pool.queue)
        if conn is not None and conn.sock is not None
    ]
    assert len(opened) >= 3 and live == []
