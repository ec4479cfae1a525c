"""Issue 7, end to end: registered models as OCI artifacts in a real registry, and images packaged from them.

For each real ``docker-registry`` set-up (plain HTTP, Basic auth over TLS, bearer tokens): ``ocibuild model push``
the example model (twice: same digest, nothing re-sent), ``model list``/``show``, skopeo reads the artifact,
``model pull`` gives the same bytes back, ``package`` takes the model by reference and pushes the image to the same
registry, where the model blob is mounted, not uploaded (the push's own lines, and the recording proxy where there
is one, say so), and a real ``docker run`` of the pulled image scores. Errors are one line each.
"""

from __future__ import annotations

import json
import re
import sys

import pytest

from tests.conftest import run
from tests.e2e.test_package import assert_same_predictions, score_container

pytestmark = pytest.mark.slow

KINDS = ["plain", "basic", "token"]
MODEL_REPO = "models/diabetes-ridge"
APP = "apps/ridge"


def ocibuild(*args, check=True, timeout=900, env=None):
    return run([sys.executable, "-m", "ocibuild", *map(str, args)], check=check, timeout=timeout, env=env)


def one_line_error(proc) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ocibuild: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


class Registered:
    """One kind's model push (twice), package from the reference, push of the image; what each printed."""

    def __init__(self, reg, cache, example_model, base_ref, tmp):
        self.reg = reg
        self.ref = reg.ref(f"{MODEL_REPO}:3")
        args = [*reg.ocibuild_args(), "--cache", cache]
        if reg.proxy:
            reg.proxy.reset()
        push_args = [
            "model", "push", example_model.model, self.ref, "--framework", "scikit-learn",
            "--description", "diabetes ridge regression", *args,
        ]  # fmt: skip
        push = ocibuild(*push_args)
        self.digest = push.stdout.strip().splitlines()[-1]
        self.push_records = reg.proxy.snapshot() if reg.proxy else []
        if reg.proxy:
            reg.proxy.reset()
        self.again = ocibuild(*push_args)
        self.again_records = reg.proxy.snapshot() if reg.proxy else []
        self.manifest = json.loads(
            run(["skopeo", "inspect", "--raw", *reg.skopeo_args(), f"docker://{self.ref}"]).stdout
        )
        # A fresh cache for the build: the model layer comes from the registry, not from the push's cache.
        if reg.proxy:
            reg.proxy.reset()
        self.package = ocibuild(
            "package", f"docker://{self.ref}", "--entry-script", example_model.score,
            "--requirements", example_model.requirements, "--base", base_ref, "--cache", tmp / "build-cache",
            "--push", reg.ref(f"{APP}:1"), *reg.ocibuild_args(),
        )  # fmt: skip
        self.image_digest = self.package.stdout.strip().splitlines()[-1]
        self.package_records = reg.proxy.snapshot() if reg.proxy else []


@pytest.fixture(scope="module")
def registered(registry, base_ref, example_model, tmp_path_factory):
    done: dict[str, Registered] = {}

    def get(kind: str) -> Registered:
        if kind not in done:
            tmp = tmp_path_factory.mktemp(f"models-{kind}")
            done[kind] = Registered(registry.get(kind), tmp / "cache", example_model, base_ref, tmp)
        return done[kind]

    return get


@pytest.mark.parametrize("kind", KINDS)
def test_push_is_reproducible_and_an_oci_artifact(kind, registered):
    r = registered(kind)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", r.digest)
    assert r.again.stdout.strip().splitlines()[-1] == r.digest  # same model, same artifact
    assert "exists" in r.again.stderr and "uploaded" not in r.again.stderr, r.again.stderr
    m = r.manifest
    assert m["artifactType"] == "application/vnd.ocibuild.model.v1"
    assert m["config"]["mediaType"] == "application/vnd.oci.empty.v1+json" and m["config"]["size"] == 2
    assert m["annotations"]["io.ocibuild.model.name"] == "diabetes-ridge"
    assert m["annotations"]["io.ocibuild.model.version"] == "3"
    assert m["annotations"]["io.ocibuild.model.framework"] == "scikit-learn"
    assert m["annotations"]["org.opencontainers.image.created"] == "1970-01-01T00:00:00Z"
    assert json.loads(m["annotations"]["io.ocibuild.model.files"]) == ["model.pkl"]
    (layer,) = m["layers"]
    assert layer["annotations"]["org.opencontainers.image.title"].startswith("diabetes-ridge-3.tar")
    if r.reg.proxy:
        # The registry stored our exact bytes, and the second push sent no blob and the same manifest.
        assert r.reg.proxy.blob_bytes_uploaded(r.push_records) == layer["size"] + 2
        assert r.reg.proxy.blob_bytes_uploaded(r.again_records) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_list_show_and_pull_back_byte_identical(kind, registered, example_model, tmp_path):
    r = registered(kind)
    args = r.reg.ocibuild_args()
    listing = ocibuild("model", "list", r.reg.ref(MODEL_REPO), *args).stdout
    row = next(line for line in listing.splitlines() if line.startswith("3 "))
    assert "diabetes-ridge" in row and r.digest in row and "scikit-learn" in row and "model.pkl" in row
    as_json = json.loads(ocibuild("model", "list", r.reg.ref(MODEL_REPO), "--json", *args).stdout)
    assert [x["digest"] for x in as_json if x["tag"] == "3"] == [r.digest]
    shown = ocibuild("model", "show", f"docker://{r.ref}", *args).stdout
    assert f"digest:        {r.digest}" in shown
    assert "path in image: /var/azureml-app/azureml-models/diabetes-ridge/3" in shown
    out = tmp_path / "pulled"
    pinned = f"{r.reg.ref(MODEL_REPO)}@{r.digest}"
    ocibuild("model", "pull", pinned, out, *args)
    assert sorted(p.name for p in out.iterdir()) == ["model.pkl"]
    assert (out / "model.pkl").read_bytes() == example_model.model.read_bytes()
    # Pulling again into the now full folder is refused, and leaves it as it was.
    err = one_line_error(ocibuild("model", "pull", pinned, out, *args, check=False))
    assert "not an empty folder" in err
    assert [p.name for p in out.parent.iterdir()] == ["pulled"]  # no temp folder left behind


@pytest.mark.parametrize("kind", KINDS)
def test_package_from_reference_mounts_the_model_blob(kind, registered):
    r = registered(kind)
    layer = r.manifest["layers"][0]
    info = r.reg.skopeo_inspect(f"{APP}:1")
    assert info["Digest"] == r.image_digest
    labels = info["Labels"]
    assert labels["io.ocibuild.model.source"] == r.ref
    assert labels["io.ocibuild.model.digest"] == r.digest
    assert labels["io.ocibuild.model.name"] == "diabetes-ridge" and labels["io.ocibuild.model.version"] == "3"
    image = json.loads(
        run(["skopeo", "inspect", "--raw", *r.reg.skopeo_args(), f"docker://{r.reg.ref(APP + ':1')}"]).stdout
    )
    assert layer["digest"] in [x["digest"] for x in image["layers"]]  # the registered blob is the model layer
    line = next(x for x in r.package.stderr.splitlines() if layer["digest"][7:19] in x and "  " in x)
    assert f"mounted from {MODEL_REPO}" in line, r.package.stderr
    config = json.loads(
        run(
            ["skopeo", "inspect", "--config", *r.reg.skopeo_args(), f"docker://{r.reg.ref(APP + ':1')}"]
        ).stdout
    )
    env = dict(e.split("=", 1) for e in config["config"]["Env"])
    assert env["AZUREML_MODEL_DIR"] == "/var/azureml-app/azureml-models/diabetes-ridge/3"
    if r.reg.proxy:
        recs = r.package_records
        mounts = [x for x in recs if x.method == "POST" and "mount=" in x.path and x.status == 201]
        assert any(layer["digest"].replace(":", "%3A") in x.path for x in mounts), mounts
        uploads = [x for x in recs if x.method in ("PUT", "PATCH") and "/blobs/uploads/" in x.path]
        assert all(layer["digest"].replace(":", "%3A") not in x.path for x in uploads)
        sizes = {x["digest"]: x["size"] for x in [image["config"], *image["layers"]]}
        sizes.update(r.reg.referrer_blobs(APP, r.image_digest))  # and the image's SBOM and provenance
        assert r.reg.proxy.blob_bytes_uploaded(recs) == sum(sizes.values()) - layer["size"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_pushed_image_runs_and_scores(kind, registered, dockerd, example_model):
    r = registered(kind)
    ref = r.reg.ref(f"{APP}:1")
    if r.reg.user:
        dockerd.run("login", "-u", r.reg.user, "--password-stdin", r.reg.host, input=r.reg.password)
    dockerd.run("pull", ref, timeout=300)
    assert_same_predictions(score_container(dockerd, ref, example_model), example_model.predictions)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_references_missing_versions_and_wrong_credentials_are_one_line(kind, registered, tmp_path):
    r = registered(kind)
    args = r.reg.ocibuild_args()
    err = one_line_error(ocibuild("model", "show", r.reg.ref("Models/UPPER:1"), *args, check=False))
    assert "must be lowercase" in err
    err = one_line_error(ocibuild("model", "show", r.reg.ref(f"{MODEL_REPO}:99"), *args, check=False))
    assert "no such version" in err and "has: 3" in err
    err = one_line_error(
        ocibuild("model", "pull", r.reg.ref("models/nothing:1"), tmp_path / "x", *args, check=False)
    )
    assert "no such model" in err
    err = one_line_error(ocibuild("model", "show", r.reg.ref(APP + ":1"), *args, check=False))
    assert "is a container image, not an ocibuild model" in err
    (tmp_path / "score.py").write_text("def init():\n    pass\n\n\ndef run(raw):\n    return raw\n")
    err = one_line_error(
        ocibuild(
            "package",
            f"docker://{r.reg.ref(MODEL_REPO)}:99",
            "--entry-script",
            tmp_path / "score.py",
            "--base",
            "scratch",
            "--output",
            tmp_path / "x.tar",
            *args,
            check=False,
        )  # fmt: skip
    )
    assert "no such version" in err
    if r.reg.user:
        bad = ["--creds", f"{r.reg.user}:wrong"] + (
            ["--ca-cert", str(r.reg.tls.ca_cert)] if r.reg.tls else []
        )
        err = one_line_error(ocibuild("model", "list", r.reg.ref(MODEL_REPO), *bad, check=False))
        assert "wrong" not in err.split("error:", 1)[1] and (
            "credentials" in err or "authentication" in err
        ), err
        err = one_line_error(
            ocibuild(
                "model", "push", __file__, r.reg.ref("models/other:1"), *bad, "--cache", tmp_path, check=False
            )
        )
        assert "credentials" in err or "authentication" in err, err
