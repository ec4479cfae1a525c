"""Issue 12, end to end: ``@rawhttp`` scripts reading uploaded files (``request.files``), packaged by the real CLI,
run in the real dockerd and sent two-file multipart uploads with ``requests`` from outside the container; and the
server on the oldest Python it supports, Debian bullseye's 3.9, scoring JSON and uploads.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import EXAMPLE_INPUT, free_port, run, wait_http

pytestmark = pytest.mark.slow

# The example's Ridge model, fed from uploaded files: CSV rows or a JSON {"data": rows} document per file.
EXAMPLE_UPLOAD_SCORE = """
    import csv, hashlib, io, json, os, sys

    import joblib
    from azureml_inference_server_http.api.aml_request import rawhttp
    from azureml_inference_server_http.api.aml_response import AMLResponse

    def init():
        global model
        model = joblib.load(os.path.join(os.environ["AZUREML_MODEL_DIR"], "model.pkl"))

    def rows(upload):
        if upload.mimetype == "application/json":
            return json.load(upload.stream)["data"]
        return [[float(x) for x in row] for row in csv.reader(io.TextIOWrapper(upload.stream, "utf-8"))]

    @rawhttp
    def run(request):
        if request.method == "GET":
            return {"python": "%d.%d" % sys.version_info[:2], "request": type(request).__name__}
        uploads = request.files.getlist("file[]")
        if not uploads:
            return AMLResponse("No file uploaded", status_code=422)
        answer = []
        for upload in uploads:
            raw = upload.read()
            upload.seek(0)
            answer.append({
                "name": upload.name,
                "filename": upload.filename,
                "size": len(raw),
                "sha256": hashlib.sha256(raw).hexdigest(),
                "predictions": model.predict(rows(upload)).tolist(),
            })
        return {"files": answer, "label": request.form.get("label")}
"""

# No dependencies: dot products with weights.json (the "model"), for the 3.9 base without wheels.
UPLOAD_SCORE = """
    import csv, hashlib, io, json, os, sys
    from azureml.contrib.services.aml_request import rawhttp

    def init():
        global weights
        with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "weights.json")) as f:
            weights = json.load(f)

    def rows(upload):
        if upload.mimetype == "application/json":
            return json.load(upload.stream)["data"]
        return [[float(x) for x in row] for row in csv.reader(io.TextIOWrapper(upload.stream, "utf-8"))]

    @rawhttp
    def run(request):
        if request.method == "GET":
            return {"python": "%d.%d" % sys.version_info[:2], "request": type(request).__name__}
        answer = []
        for upload in request.files.getlist("file[]"):
            raw = upload.read()
            upload.seek(0)
            answer.append({
                "name": upload.name,
                "filename": upload.filename,
                "size": len(raw),
                "sha256": hashlib.sha256(raw).hexdigest(),
                "predictions": [sum(w * x for w, x in zip(weights, row)) for row in rows(upload)],
            })
        return {"files": answer, "label": request.form.get("label")}
"""

JSON_SCORE = """
    import json, os, sys

    def init():
        global weights
        with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "weights.json")) as f:
            weights = json.load(f)

    def run(raw_data):
        rows = json.loads(raw_data)["data"]
        return {"python": "%d.%d" % sys.version_info[:2],
                "predictions": [sum(w * x for w, x in zip(weights, row)) for row in rows]}
"""

WEIGHTS = [1, 2, 3]


def package(
    tmp: Path, base: str, model: Path, script: str, tag: str, requirements: Path | None = None
) -> Path:
    """The image built by the CLI into a tarball."""
    (tmp / "src").mkdir()
    score = tmp / "src" / "score.py"
    score.write_text(textwrap.dedent(script))
    out = tmp / "image.tar"
    extra = ["--requirements", requirements] if requirements else []
    run(
        [sys.executable, "-m", "ocibuild", "package", model, "--entry-script", score, *extra, "--base", base,
         "--tag", tag, "--output", out, "--cache", tmp / "cache"],
        timeout=900,
    )  # fmt: skip
    return out


@contextlib.contextmanager
def serve(dockerd, image: str, *env: str) -> Iterator[str]:
    """Run ``image`` in dockerd until the test is done; its base URL once ready."""
    port = free_port()
    name = f"ocibuild-upload-{uuid.uuid4().hex[:8]}"
    flags = [x for e in env for x in ("-e", e)]
    dockerd.run(
        "run", "-d", "--name", name, "--network", "host", "-e", f"OCIBUILD_PORT={port}", *flags, image
    )

    def died():
        if dockerd.run("inspect", "-f", "{{.State.Running}}", name).stdout.strip() == "true":
            return None
        return dockerd.run("logs", name, check=False).stderr

    try:
        wait_http(f"http://127.0.0.1:{port}/health/ready", timeout=90, alive=died)
        yield f"http://127.0.0.1:{port}"
    finally:
        dockerd.remove(name)


def two_files(rows: list[list[float]]) -> tuple[list, bytes, bytes]:
    """The first row as a CSV file, the second as a JSON file, both under the field ``file[]`` (Azure's sample)."""
    text = io.StringIO()
    csv.writer(text, lineterminator="\r\n").writerow(rows[0])
    first = text.getvalue().encode()
    second = json.dumps({"data": [rows[1]]}).encode()
    files = [
        ("file[]", ("rows.csv", first, "text/csv")),
        ("file[]", ("rows.json", second, "application/json")),
    ]
    return files, first, second


def check_upload_answer(r: requests.Response, first: bytes, second: bytes) -> list[float]:
    """The answer describes both files exactly; their predictions, in upload order."""
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["label"] == "two files"
    described = [{k: v for k, v in f.items() if k != "predictions"} for f in got["files"]]
    assert described == [
        {
            "name": "file[]",
            "filename": "rows.csv",
            "size": len(first),
            "sha256": hashlib.sha256(first).hexdigest(),
        },
        {
            "name": "file[]",
            "filename": "rows.json",
            "size": len(second),
            "sha256": hashlib.sha256(second).hexdigest(),
        },
    ]
    assert [len(f["predictions"]) for f in got["files"]] == [1, 1]
    return [f["predictions"][0] for f in got["files"]]


@pytest.fixture(scope="module")
def example_upload_url(tmp_path_factory, base_ref, dockerd, example_model) -> Iterator[str]:
    """The example model behind a @rawhttp upload script on the Python 3.11 base, with scikit-learn."""
    tar = package(
        tmp_path_factory.mktemp("example-upload"), base_ref, example_model.model, EXAMPLE_UPLOAD_SCORE,
        "ocibuild-test/upload-example:1", example_model.requirements,
    )  # fmt: skip
    with serve(dockerd, dockerd.load(tar)) as url:
        yield url


def test_example_model_scores_two_uploaded_files(example_upload_url, example_model) -> None:
    url = example_upload_url
    assert requests.get(url + "/score", timeout=30).json() == {"python": "3.11", "request": "RawRequest"}
    files, first, second = two_files(EXAMPLE_INPUT["data"])
    r = requests.post(url + "/score", files=files, data={"label": "two files"}, timeout=60)
    assert check_upload_answer(r, first, second) == pytest.approx(example_model.predictions, abs=1e-6)
    r = requests.post(url + "/score", files={"other": ("x.csv", b"1,2")}, timeout=30)
    assert (r.status_code, r.text) == (422, "No file uploaded")  # the script's own answer
    bad = b'--x\r\nContent-Disposition: form-data; name="file[]"; filename="a"\r\n\r\n1,2,3'  # no closing
    r = requests.post(
        url + "/score", data=bad, headers={"Content-Type": "multipart/form-data; boundary=x"}, timeout=30
    )
    assert r.status_code == 400 and "no closing boundary" in r.json()["message"]


@pytest.fixture(scope="module")
def py39_weights(tmp_path_factory) -> Path:
    model = tmp_path_factory.mktemp("weights") / "weights.json"
    model.write_text(json.dumps(WEIGHTS))
    return model


@pytest.fixture(scope="module")
def py39_upload_url(tmp_path_factory, base_image_py39, dockerd, py39_weights) -> Iterator[str]:
    tar = package(
        tmp_path_factory.mktemp("py39-upload"), base_image_py39.ref, py39_weights, UPLOAD_SCORE,
        "ocibuild-test/upload-py39:1",
    )  # fmt: skip
    with serve(dockerd, dockerd.load(tar)) as url:
        yield url


def test_oldest_python_serves_uploads(py39_upload_url) -> None:
    url = py39_upload_url
    assert requests.get(url + "/score", timeout=30).json() == {"python": "3.9", "request": "RawRequest"}
    rows = [[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]]
    files, first, second = two_files(rows)
    r = requests.post(url + "/score", files=files, data={"label": "two files"}, timeout=60)
    assert check_upload_answer(r, first, second) == [14.0, -2.5]
    big = b"1,1,1\r\n" * 300_000  # 2.1 MB: spooled to a temporary file inside the container
    r = requests.post(url + "/score", files={"file[]": ("big.csv", big, "text/csv")}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["files"][0]["predictions"] == [6.0] * 300_000


def test_oldest_python_scores_json_with_two_workers(
    tmp_path_factory, base_image_py39, dockerd, py39_weights
) -> None:
    tar = package(
        tmp_path_factory.mktemp("py39-json"), base_image_py39.ref, py39_weights, JSON_SCORE, "ocibuild-test/json-py39:1"
    )  # fmt: skip
    with serve(dockerd, dockerd.load(tar), "WORKER_COUNT=2") as url:
        for _ in range(10):
            r = requests.post(url + "/score", json={"data": [[1, 1, 1], [1, 0, 0]]}, timeout=30)
            assert r.status_code == 200, r.text
            assert r.json() == {"python": "3.9", "predictions": [6, 1]}
        r = requests.post(url + "/score", data="not json", timeout=30)
        assert r.status_code == 400 and "not valid JSON" in r.json()["message"]
        assert "ocibuild_serving_ready 2" in requests.get(url + "/metrics", timeout=30).text.splitlines()
        assert requests.get(url + "/swagger.json", timeout=30).json()["swagger"] == "2.0"
