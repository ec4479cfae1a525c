"""Issue 5, end to end: an Azure-style score.py using inference_schema, packaged by the real CLI with
``inference-schema`` from its requirements, run in the real dockerd, and driven from outside the container:
``/score``, ``/swagger.json``, the KServe V2 routes (plain JSON and tritonclient), ``/metrics``, and a graceful stop.
"""

from __future__ import annotations

import json
import sys
import textwrap
import threading
import time
import uuid

import pytest
import requests

from tests.conftest import free_port, run, wait_http

pytestmark = pytest.mark.slow

SCORE = """
    import json, os, time

    from inference_schema.schema_decorators import input_schema, output_schema
    from inference_schema.parameter_types.standard_py_parameter_type import StandardPythonParameterType

    def init():
        global weights
        with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "weights.json")) as f:
            weights = json.load(f)

    @input_schema("data", StandardPythonParameterType([[1.0, 2.0, 3.0]]))
    @output_schema(StandardPythonParameterType([14.0]))
    def run(data):
        if data == [[-1.0, -1.0, -1.0]]:
            time.sleep(2)  # a slow request, for the graceful stop
        return [sum(w * x for w, x in zip(weights, row)) for row in data]
"""


@pytest.fixture(scope="module")
def image(tmp_path_factory, base_ref, dockerd):
    """The scoring image, built by the CLI and loaded into dockerd; its name."""
    src = tmp_path_factory.mktemp("src")
    (src / "score.py").write_text(textwrap.dedent(SCORE))
    (src / "requirements.txt").write_text("inference-schema\n")
    model = src / "weights.json"
    model.write_text("[1, 2, 3]")
    out = tmp_path_factory.mktemp("out") / "image.tar"
    run(
        [sys.executable, "-m", "ocibuild", "package", model, "--entry-script", src / "score.py",
         "--requirements", src / "requirements.txt", "--base", base_ref, "--name", "dot3", "--model-version", "2",
         "--tag", "ocibuild-test/serving:1", "--output", out, "--cache", tmp_path_factory.mktemp("cache")],
        timeout=900,
    )  # fmt: skip
    return dockerd.load(out)


def test_the_smoke_test_scores_the_inference_schema_sample(tmp_path, base_ref):
    """``--smoke-test`` without ``--sample-input`` sends the script's own ``@input_schema`` sample."""
    (tmp_path / "score.py").write_text(textwrap.dedent(SCORE))
    (tmp_path / "requirements.txt").write_text("inference-schema\n")
    (tmp_path / "weights.json").write_text("[1, 2, 3]")
    proc = run(
        [sys.executable, "-m", "ocibuild", "package", tmp_path / "weights.json", "--entry-script",
         tmp_path / "score.py", "--requirements", tmp_path / "requirements.txt", "--base", base_ref,
         "--oci-layout", tmp_path / "out", "--cache", tmp_path / "cache", "--smoke-test"],
        timeout=900,
    )  # fmt: skip
    # {"data": [[1.0, 2.0, 3.0]]} scored with weights [1, 2, 3]
    assert "smoke test: POST /score with the script's input sample answered 200: [14.0]" in proc.stderr


@pytest.fixture(scope="module")
def container(image, dockerd):
    """The image running with two workers; (base URL, container name, V2 model name)."""
    port = free_port()
    name = f"ocibuild-serving-{uuid.uuid4().hex[:8]}"
    dockerd.run(
        "run", "-d", "--name", name, "--network", "host", "-e", f"OCIBUILD_PORT={port}", "-e", "WORKER_COUNT=2", image
    )  # fmt: skip
    env = json.loads(dockerd.run("inspect", "-f", "{{json .Config.Env}}", name).stdout)
    model_name = next((e.split("=", 1)[1] for e in env if e.startswith("OCIBUILD_MODEL_NAME=")), "model")

    def died():
        if dockerd.run("inspect", "-f", "{{.State.Running}}", name).stdout.strip() == "true":
            return None
        return dockerd.run("logs", name, check=False).stderr

    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health/ready", timeout=90, alive=died)
        yield url, name, model_name
    finally:
        dockerd.remove(name)


def test_score_and_swagger_from_inference_schema(container) -> None:
    url, _, _ = container
    r = requests.post(url + "/score", json={"data": [[1, 1, 1], [1, 0, 0]]}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == [6.0, 1.0]
    doc = requests.get(url + "/swagger.json", timeout=30).json()
    assert doc["swagger"] == "2.0"
    assert doc["definitions"]["ServiceInput"]["example"] == {"data": [[1.0, 2.0, 3.0]]}
    assert doc["definitions"]["ServiceOutput"]["example"] == [14.0]
    v3 = requests.get(url + "/swagger.json", params={"version": 3}, timeout=30).json()
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(doc)
    validator.validate(v3)


def test_v2_infer_from_outside(container) -> None:
    url, _, model = container
    assert requests.get(url + "/v2/health/ready", timeout=30).status_code == 200
    meta = requests.get(f"{url}/v2/models/{model}", timeout=30).json()
    assert meta["inputs"] == [{"name": "data", "datatype": "FP64", "shape": [-1, 3]}]
    body = {
        "id": "c-1",
        "inputs": [{"name": "data", "shape": [2, 3], "datatype": "FP32", "data": [1, 1, 1, 1, 0, 0]}],
    }
    r = requests.post(f"{url}/v2/models/{model}/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == [{"name": "output-0", "datatype": "FP64", "shape": [2], "data": [6.0, 1.0]}]
    assert r.json()["id"] == "c-1"


def test_v2_infer_with_tritonclient(container) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    np = pytest.importorskip("numpy")
    url, _, model = container
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    try:
        inp = httpclient.InferInput("data", [1, 3], "FP32")
        inp.set_data_from_numpy(np.array([[1, 2, 3]], dtype=np.float32))  # binary tensor data, the default
        assert client.infer(model, [inp]).as_numpy("output-0").tolist() == [14.0]
    finally:
        client.close()


def test_metrics_from_outside(container) -> None:
    url, _, _ = container
    for _ in range(5):
        requests.post(url + "/score", json={"data": [[0, 0, 0]]}, headers={"Connection": "close"}, timeout=30)
    text = requests.get(url + "/metrics", timeout=30).text
    counts = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ocibuild_serving_")
    }
    assert counts['ocibuild_serving_requests_total{route="/score",code="200"}'] >= 5
    assert counts["ocibuild_serving_ready"] == 2  # both workers, summed through shared memory


def in_flight(url: str) -> float:
    text = requests.get(url + "/metrics", timeout=30).text
    return float(
        next(
            line for line in text.splitlines() if line.startswith("ocibuild_serving_requests_in_flight ")
        ).split()[1]
    )


def test_docker_stop_drains_a_slow_request_and_exits_0(container, dockerd) -> None:
    url, name, _ = container
    result: dict = {}

    def slow() -> None:
        r = requests.post(url + "/score", json={"data": [[-1, -1, -1]]}, timeout=30)
        result["status"], result["body"] = r.status_code, r.json()

    client = threading.Thread(target=slow)
    client.start()
    deadline = time.monotonic() + 10
    while in_flight(url) < 2:  # the slow request, and the /metrics request asking
        assert time.monotonic() < deadline, "the slow request never arrived"
        time.sleep(0.05)
    dockerd.run("stop", "--time", "20", name)  # SIGTERM, then up to 20 s
    client.join(30)
    assert result == {"status": 200, "body": [-6.0]}
    assert dockerd.run("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip() == "0"
    assert "Received SIGTERM" in dockerd.run("logs", name).stderr
