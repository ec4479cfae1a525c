"""Issue 12's Azure example, as written: a conda file with conda packages and a pip: section pinning
azureml-defaults and inference-schema (fixtures/azure-conda, Azure's sample shape and versions: Python 3.9,
numpy 1.23.5, scikit-learn 1.2.2), an entry script with inference-schema decorators. It builds unchanged on the
Debian bullseye Python 3.9 base (azureml-defaults pulls source-only pure-Python packages, built into wheels), and
the image answers its sample request and describes it in its swagger.
"""

from __future__ import annotations

import json
import sys
import uuid

import joblib
import numpy as np
import pytest
import requests

from tests.conftest import REPO, free_port, run, wait_http
from tests.e2e.test_package import assert_same_predictions

pytestmark = pytest.mark.slow

EXAMPLE = REPO / "fixtures" / "azure-conda"


def test_azure_conda_example_builds_as_written_and_answers_its_sample(
    tmp_path, base_image_py39, example_model, dockerd
):
    ridge = joblib.load(example_model.model)  # the example Ridge, as coefficients any scikit-learn can load
    model = tmp_path / "model.npz"
    np.savez(model, coef=ridge.coef_, intercept=np.array(ridge.intercept_))
    out = tmp_path / "azure.tar"
    proc = run(
        [sys.executable, "-m", "ocibuild", "package", model, "--entry-script", EXAMPLE / "score.py",
         "--conda-file", EXAMPLE / "conda.yaml", "--base", base_image_py39.ref, "--tag", "ocibuild-test/azure:1",
         "--output", out, "--cache", tmp_path / "cache"],
        timeout=900,
    )  # fmt: skip
    assert "from PyPI: numpy==1.23.5.*, scikit-learn==1.2.2.*, scipy==1.10.1.*" in proc.stderr
    assert "from source (pure Python" in proc.stderr  # azureml-defaults' source-only dependencies
    image = dockerd.load(out)
    port = free_port()
    name = f"ocibuild-test-{uuid.uuid4().hex[:8]}"
    dockerd.run("run", "-d", "--name", name, "--network", "host", "-e", f"OCIBUILD_PORT={port}", image)
    try:
        assert wait_http(f"http://127.0.0.1:{port}/", timeout=120) == b"Healthy"
        swagger = json.loads(wait_http(f"http://127.0.0.1:{port}/swagger.json"))
        sample = swagger["definitions"]["ServiceInput"]["example"]
        assert sample == {"data": example_model.input["data"]}
        r = requests.post(f"http://127.0.0.1:{port}/score", json=sample, timeout=60)
        assert r.status_code == 200, r.text
        assert_same_predictions(r.json(), example_model.predictions)
    finally:
        dockerd.remove(name)
