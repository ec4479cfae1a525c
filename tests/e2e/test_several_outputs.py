"""One build, several outputs: two registries' pushes, a tarball and an OCI layout from one `ocibuild package`, all
with the digest it printed; docker and podman pull it and score; a failing output is named and leaves nothing.
"""

from __future__ import annotations

import json
import sys
import tarfile

import pytest

from tests.conftest import run
from tests.e2e.test_package import assert_same_predictions, score_container

pytestmark = pytest.mark.slow


def ocibuild(*args, check=True):
    return run([sys.executable, "-m", "ocibuild", *map(str, args)], check=check, timeout=900)


def _index_digests(index: dict) -> list[str]:
    """The images an index.json lists (its SBOM and provenance sit beside them, as artifacts)."""
    assert len([m for m in index["manifests"] if m.get("artifactType")]) == 2
    return [m["digest"] for m in index["manifests"] if not m.get("artifactType")]


def test_one_build_goes_to_every_output_with_one_digest(
    registry, example_model, base_ref, tmp_path, dockerd, podman
):
    plain, token = registry.get("plain"), registry.get("token")
    tar, layout = tmp_path / "ridge.tar", tmp_path / "layout"
    proc = ocibuild(
        "package", example_model.model, "--entry-script", example_model.score,
        "--requirements", example_model.requirements, "--base", base_ref, "--cache", tmp_path / "cache",
        "--tag", "ridge:7", "--output", tar, "--oci-layout", layout,
        "--push", plain.ref("several/a:1"), "--push", token.ref("several/b:1"), "--additional-tag", "v1",
        "--creds", token.creds,
    )  # fmt: skip
    digest = proc.stdout.strip().splitlines()[-1]
    assert proc.stdout.count("sha256:") == 1, proc.stdout  # the build ran once and printed one digest
    assert proc.stderr.count("dependencies: resolving wheels") <= 1

    # Every output holds the same manifest: the registries (both tags), the layout, the tarball's index.json.
    assert plain.skopeo_inspect("several/a:1")["Digest"] == digest
    assert plain.skopeo_inspect("several/a:v1")["Digest"] == digest
    assert token.skopeo_inspect("several/b:1")["Digest"] == digest
    assert _index_digests(json.loads((layout / "index.json").read_text())) == [digest]
    with tarfile.open(tar) as tf:
        assert _index_digests(json.load(tf.extractfile("index.json"))) == [digest]

    # The engines take it from the registry (by digest) and from the tarball, and it scores the same.
    pulled = f"{plain.ref('several/a')}@{digest}"
    dockerd.run("pull", pulled)
    podman.run("pull", "--tls-verify=false", pulled)
    assert_same_predictions(score_container(dockerd, pulled, example_model), example_model.predictions)
    assert_same_predictions(score_container(podman, pulled, example_model), example_model.predictions)
    assert dockerd.load(tar).endswith("ridge:7")


def test_a_layout_folder_holding_something_else_is_refused_before_the_build(example_model, base_ref, tmp_path):
    """The layout's folder holds something else: said in one line before anything is built or written; the folder
    is left as it was. (A folder changed during the build fails at the write: tests/transports/test_publish.py.)"""
    tar, taken = tmp_path / "ridge.tar", tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("not an OCI layout")
    proc = ocibuild(
        "package", example_model.model, "--entry-script", example_model.score,
        "--requirements", example_model.requirements, "--base", base_ref, "--cache", tmp_path / "cache",
        "--output", tar, "--oci-layout", taken,
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ocibuild: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{taken} exists and is not an OCI layout" in errors[0]
    assert "dependencies" not in proc.stderr and not tar.exists()
    assert sorted(p.name for p in taken.iterdir()) == ["notes.txt"]


def test_a_push_with_wrong_credentials_fails_before_the_build(registry, example_model, base_ref, tmp_path):
    """A push that cannot succeed is known before minutes of building: nothing is built or written."""
    reg = registry.get("token")
    tar = tmp_path / "ridge.tar"
    proc = ocibuild(
        "package", example_model.model, "--entry-script", example_model.score,
        "--requirements", example_model.requirements, "--base", base_ref, "--cache", tmp_path / "cache",
        "--output", tar, "--push", reg.ref("several/denied:1"), "--creds", f"{reg.user}:wrong",
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and "authentication failed" in proc.stderr
    assert "dependencies" not in proc.stderr and not tar.exists()
