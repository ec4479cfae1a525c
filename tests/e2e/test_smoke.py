"""Issue 17, item 3, end to end through the real CLI on the real Debian Python base: ``--smoke-test`` runs the built
image's own server, without an engine, and answers the example's request with its two predictions; and it catches
what no static check can, issue 12's "old pins resolve into new binaries": scikit-learn 1.2.2 (its cp311 wheel
exists, built against numpy 1) with numpy 2 builds cleanly and dies at ``init()`` with ``numpy.dtype size
changed``."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import run

pytestmark = pytest.mark.slow

OLD_PINS = "scikit-learn==1.2.2\njoblib\nnumpy>=2\n"


def ocibuild(*args, check=False, timeout=900):
    return run([sys.executable, "-m", "ocibuild", *map(str, args)], check=check, timeout=timeout)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("smoke-cache")


def test_the_example_passes_the_smoke_test_with_its_two_predictions(tmp_path, cache, base_ref, example_model):
    sample = tmp_path / "sample.json"
    sample.write_text(example_model.input_json)
    proc = ocibuild(
        "package", example_model.model, "--entry-script", example_model.score, "--requirements",
        example_model.requirements, "--base", base_ref, "--oci-layout", tmp_path / "out", "--cache", cache,
        "--smoke-test", "--sample-input", sample,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert any(x.startswith("smoke test: starting the server in a chroot as 65532:65532 ") for x in lines)
    (answer,) = [x for x in lines if x.startswith(f"smoke test: POST /score with --sample-input {sample} ")]
    got = json.loads(answer.split("answered 200: ", 1)[1])
    assert len(got) == 2 and all(
        abs(g - w) < 1e-6 for g, w in zip(got, example_model.predictions, strict=True)
    )


def test_old_scikit_learn_on_numpy_2_builds_but_the_smoke_test_stops_it(
    tmp_path, cache, base_ref, example_model
):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(OLD_PINS)
    args = ["package", example_model.model, "--entry-script", example_model.score, "--requirements", requirements,
            "--base", base_ref, "--cache", cache]  # fmt: skip
    # Every static check passes: the wheels load, the imports resolve. Only running the image tells.
    plain = ocibuild(*args, "--oci-layout", tmp_path / "plain")
    assert plain.returncode == 0, plain.stderr
    assert "+ scikit-learn==1.2.2" in plain.stderr and "+ numpy==2." in plain.stderr
    smoked = ocibuild(*args, "--oci-layout", tmp_path / "smoked", "--smoke-test")
    assert smoked.returncode == 1, smoked.stderr
    errors = [x for x in smoked.stderr.splitlines() if x.startswith("ocibuild: error: ")]
    assert errors == [
        "ocibuild: error: smoke test failed: the server did not become Healthy: init() of entry script "
        "/var/azureml-app/score.py raised ValueError: numpy.dtype size changed, may indicate binary "
        "incompatibility. Expected 96 from C header, got 88 from PyObject (the server exited with status 3)"
    ]
    assert "the server's last log lines:" in smoked.stderr
    assert not (tmp_path / "smoked").exists()  # nothing is written when the smoke test fails
