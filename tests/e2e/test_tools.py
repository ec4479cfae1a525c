"""The test infrastructure on its own, without ocibuild: the base image and both engines really work.

If these fail, every other end-to-end failure is suspect; fix these first.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import BaseImage, Engine, ExampleModel, free_port, require, run, wait_http

pytestmark = pytest.mark.slow

PROBE = "import json, http.server, sys; print(42)"
LIMITS = "import resource as r; print(*r.getrlimit(r.RLIMIT_NOFILE), *r.getrlimit(r.RLIMIT_NPROC))"


def test_base_layout_is_linux_amd64(base_ref: str) -> None:
    require("skopeo")
    info = json.loads(run(["skopeo", "inspect", base_ref]).stdout)
    assert (info["Os"], info["Architecture"]) == ("linux", "amd64")
    assert len(info["Layers"]) == 1
    config = json.loads(run(["skopeo", "inspect", "--config", base_ref]).stdout)
    assert config["config"]["Cmd"] == ["python3"]


def test_base_layout_unpacks_to_a_python_rootfs(base_image: BaseImage, tmp_path: Path) -> None:
    require("umoci")
    bundle = tmp_path / "bundle"
    run(["umoci", "unpack", "--image", f"{base_image.layout}:{base_image.tag}", bundle])
    rootfs = bundle / "rootfs"
    assert (rootfs / "usr/bin/python3").exists()
    assert (rootfs / "usr/lib/python3.11/http/server.py").is_file()
    assert not any((rootfs / "usr/share/man").glob("*/*")), "man pages should be excluded"


def test_base_files_are_world_readable(base_image: BaseImage) -> None:
    for path in [base_image.docker_archive, *base_image.layout.rglob("*")]:
        mode = path.stat().st_mode
        assert mode & 0o004, f"{path} is not world-readable"
        if path.is_dir():
            assert mode & 0o001, f"{path} is not world-searchable"


def test_base_docker_archive_names_the_image(base_image: BaseImage) -> None:
    require("skopeo")
    info = json.loads(run(["skopeo", "inspect", base_image.docker_archive_ref]).stdout)
    assert (info["Os"], info["Architecture"]) == ("linux", "amd64")


def test_example_model_predicts_on_the_host(example_model: ExampleModel) -> None:
    assert example_model.model.stat().st_size > 0
    assert len(example_model.predictions) == 2
    assert all(isinstance(p, float) for p in example_model.predictions)
    # Two different inputs, two different predictions: the model is fitted, not a constant.
    assert example_model.predictions[0] != pytest.approx(example_model.predictions[1])
    pins = example_model.requirements.read_text()
    import joblib
    import sklearn

    assert f"scikit-learn=={sklearn.__version__}" in pins.splitlines()
    assert f"joblib=={joblib.__version__}" in pins.splitlines()


def _run_probe(engine: Engine, image: str) -> None:
    out = engine.run("run", "--rm", "--network", "host", image, "python3", "-c", PROBE).stdout
    assert out.strip() == "42"


def _serve_http(engine: Engine, image: str) -> None:
    """A container listening on the host network is reachable on 127.0.0.1 (how the scoring tests talk to it)."""
    port = free_port()
    cid = engine.run(
        "run", "-d", "--network", "host", "-e", f"OCIBUILD_PORT={port}", image,
        "sh", "-c", 'cd /etc && exec python3 -m http.server --bind 127.0.0.1 "$OCIBUILD_PORT"',
    ).stdout.strip()  # fmt: skip

    def alive() -> str | None:
        state = engine.run("inspect", "--format", "{{.State.Running}}", cid, check=False).stdout.strip()
        if state != "true":
            return f"container {state or 'gone'}: " + engine.run("logs", cid, check=False).stderr[-2000:]
        return None

    try:
        body = wait_http(f"http://127.0.0.1:{port}/os-release", timeout=30, alive=alive)
        assert b"bookworm" in body
    finally:
        engine.remove(cid)


def test_dockerd_loads_and_runs_the_base(dockerd, base_image: BaseImage) -> None:
    assert dockerd.sock.is_socket()
    assert os.environ.get("DOCKER_HOST") != dockerd.env["DOCKER_HOST"], "must not leak into the test process"
    image = dockerd.load(base_image.docker_archive)
    assert image == base_image.docker_name
    _run_probe(dockerd, image)
    _serve_http(dockerd, image)


def test_podman_loads_and_runs_the_base(podman: Engine, base_image: BaseImage) -> None:
    image = podman.load(base_image.docker_archive)
    assert image.endswith(base_image.docker_name), image
    _run_probe(podman, image)
    # The ulimits of containers.conf apply (podman's defaults fail on these machines: docs/decisions.md).
    limits = podman.run("run", "--rm", "--network", "host", image, "python3", "-c", LIMITS).stdout
    assert limits.split() == ["1024"] * 4
    _serve_http(podman, image)
