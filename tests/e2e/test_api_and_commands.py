"""The Python API (Azure ``Model.package``-shaped), ``ocibuild inspect`` and ``ocibuild serve``, used as users do."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tarfile

import pytest
import requests

import ocibuild
from ocibuild import Environment, InferenceConfig
from tests.conftest import free_port, run, wait_http

pytestmark = pytest.mark.slow


def test_python_api_package_export_layout_save(tmp_path, base_ref, example_model):
    conda = tmp_path / "environment.yml"
    conda.write_text(
        f"name: ridge\ndependencies:\n  - python=3.11\n  - pip\n  - pip:\n    - -r {example_model.requirements}\n"
    )
    pkg = ocibuild.package(
        models=[example_model.model],
        inference_config=InferenceConfig(
            entry_script=example_model.score, environment=Environment(conda_file=conda)
        ),
        base=base_ref,
        name="ridge",
        version="7",
        cache=tmp_path / "cache",
    )
    assert pkg.digest.startswith("sha256:")
    tar = pkg.export(tmp_path / "image.tar", tag="myimage:latest")
    inspected = json.loads(run(["skopeo", "inspect", f"docker-archive:{tar}"]).stdout)
    assert inspected["Labels"]["io.ocibuild.model.version"] == "7"
    assert json.loads(run(["skopeo", "inspect", f"oci-archive:{tar}:latest"]).stdout)["Digest"] == pkg.digest
    env = dict(e.split("=", 1) for e in pkg.image.config["config"]["Env"])
    assert env["AZUREML_MODEL_DIR"] == "/var/azureml-app/azureml-models/ridge/7"
    layout = pkg.write_layout(tmp_path / "layout", tag="ridge:7")
    index = json.loads((layout / "index.json").read_text())
    assert index["manifests"][0]["digest"] == pkg.digest
    ctx = pkg.save(tmp_path / "context")
    assert (ctx / "Dockerfile").is_file()
    # the conda file's pip section put scikit-learn into the dependencies layer
    deps = [p for p in ctx.iterdir() if p.name.endswith("-dependencies")]
    assert deps and list(deps[0].glob("opt/ocibuild/site-packages/sklearn/__init__.py"))


def test_inspect_shows_layers_history_and_config(tmp_path, base_ref, example_model):
    out = tmp_path / "image.tar"
    proc = run(
        [sys.executable, "-m", "ocibuild", "package", example_model.model, "--entry-script", example_model.score,
         "--requirements", example_model.requirements, "--base", base_ref, "--output", out, "--cache", tmp_path / "c"]
    )  # fmt: skip
    digest = proc.stdout.split()[-1]
    text = run([sys.executable, "-m", "ocibuild", "inspect", f"oci-archive:{out}"]).stdout
    assert f"Digest:       {digest}" in text
    assert (
        "Layers (6," in text  # base, dependencies (scipy; the rest), server, model, app
        and "ocibuild: model model:1 (model.pkl)" in text
        and "ocibuild: app (score.py)" in text
    )
    assert "5001/tcp" in text and "AZUREML_ENTRY_SCRIPT=score.py" in text
    raw = json.loads(
        run([sys.executable, "-m", "ocibuild", "inspect", "--raw", f"docker-archive:{out}"]).stdout
    )
    assert raw["config"]["config"]["Entrypoint"] == ["/usr/bin/python3", "-m", "ocibuild_serving"]
    with tarfile.open(out) as tf:
        assert json.loads(tf.extractfile("manifest.json").read())[0]["Config"].endswith(
            raw["manifest"]["config"]["digest"][7:]
        )


def test_serve_runs_the_entry_script_locally(example_model):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ocibuild", "serve", "--entry-script", example_model.score, "--model", example_model.model, "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert (
            wait_http(
                f"http://127.0.0.1:{port}/",
                timeout=60,
                alive=lambda: None if proc.poll() is None else proc.stderr.read(),
            )
            == b"Healthy"
        )
        r = requests.post(f"http://127.0.0.1:{port}/score", data=example_model.input_json, timeout=30)
        assert r.status_code == 200
        assert r.json() == pytest.approx(example_model.predictions, abs=1e-6)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
