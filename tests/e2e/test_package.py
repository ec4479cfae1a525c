"""Issue 2, end to end: package the example model with the real Debian Python base and check what a user checks.

skopeo and umoci read what we write; a real dockerd and podman load it, run it, and the scoring server answers
with the model's own predictions. Builds go through the real CLI (``python -m ocibuild``), as a user runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO, free_port, run, short_tempdir, wait_http

pytestmark = pytest.mark.slow


def ocibuild(*args, env=None, check=True, timeout=900):
    return run([sys.executable, "-m", "ocibuild", *map(str, args)], env=env, check=check, timeout=timeout)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("ocibuild-cache")


@pytest.fixture(scope="module")
def built(tmp_path_factory, cache, base_ref, example_model):
    """The example packaged once into a tarball; its printed digest."""
    out = tmp_path_factory.mktemp("built") / "image.tar"
    proc = ocibuild(
        "package", example_model.model, "--entry-script", example_model.score,
        "--requirements", example_model.requirements, "--base", base_ref,
        "--name", "diabetes-ridge", "--tag", "ocibuild-test/ridge:1", "--output", out, "--cache", cache,
    )  # fmt: skip
    digest = proc.stdout.strip().splitlines()[-1]
    assert digest.startswith("sha256:") and len(digest) == 71, proc.stdout
    return out, digest


def score_container(engine, image, example_model, extra=(), timeout=90):
    """Run ``image`` on ``engine``, wait until healthy (``timeout`` s), POST the example input, return the
    predictions."""
    port = free_port()
    name = f"ocibuild-test-{uuid.uuid4().hex[:8]}"
    engine.run("run", "-d", "--name", name, "--network", "host", "-e", f"OCIBUILD_PORT={port}", *extra, image)
    try:

        def died():
            if engine.run("inspect", "-f", "{{.State.Running}}", name).stdout.strip() == "true":
                return None
            logs = engine.run("logs", name, check=False)
            return logs.stdout + logs.stderr

        assert wait_http(f"http://127.0.0.1:{port}/", timeout=timeout, alive=died) == b"Healthy"
        r = requests.post(
            f"http://127.0.0.1:{port}/score",
            json.dumps(example_model.input),
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        return r.json()
    finally:
        engine.remove(name)


def smoke_answer(stderr: str):
    """What ``--smoke-test`` printed as the server's answer to the sample."""
    (line,) = [x for x in stderr.splitlines() if x.startswith("smoke test: POST /score")]
    return json.loads(line.split("answered 200: ", 1)[1])


def assert_same_predictions(got, want):
    assert len(got) == len(want) == 2
    for g, w in zip(got, want, strict=True):
        assert abs(g - w) < 1e-6, (got, want)


def test_skopeo_reads_tarball_as_docker_and_oci_archive(built):
    out, digest = built
    # the SBOM sits beside the image in index.json: skopeo needs the image named by its tag
    oci = json.loads(run(["skopeo", "inspect", f"oci-archive:{out}:1"]).stdout)
    assert oci["Digest"] == digest
    docker = json.loads(run(["skopeo", "inspect", f"docker-archive:{out}"]).stdout)
    assert docker["Labels"]["io.ocibuild.model.name"] == "diabetes-ridge"
    assert docker["Architecture"] == "amd64" and docker["Os"] == "linux"
    assert len(docker["Layers"]) == 6  # base, dependencies (scipy; the rest), server, model, app
    cfg = json.loads(run(["skopeo", "inspect", "--config", f"oci-archive:{out}:1"]).stdout)
    assert "5001/tcp" in cfg["config"]["ExposedPorts"]
    # Locked down by default: a numeric user that is not root (Kubernetes' runAsNonRoot checks exactly this).
    uid, _, gid = cfg["config"]["User"].partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0, cfg["config"]["User"]
    assert {"HOME=/tmp", "PYTHONDONTWRITEBYTECODE=1"} <= set(cfg["config"]["Env"])
    assert cfg["config"]["WorkingDir"] == "/var/azureml-app"
    assert cfg["config"]["Labels"]["org.opencontainers.image.base.digest"].startswith("sha256:")
    assert all(h["created_by"].startswith("ocibuild") for h in cfg["history"][-4:])


def test_docker_loads_runs_and_scores(built, dockerd, example_model):
    out, _ = built
    name = dockerd.load(out)
    assert name == "ocibuild-test/ridge:1"
    assert_same_predictions(score_container(dockerd, name, example_model), example_model.predictions)


def test_podman_loads_runs_and_scores(built, podman, example_model):
    out, _ = built
    name = podman.load(out)
    assert name.endswith("ocibuild-test/ridge:1")
    assert_same_predictions(score_container(podman, name, example_model), example_model.predictions)


# Only /tmp is writable, as Kubernetes' readOnlyRootFilesystem with an emptyDir on /tmp; podman would add tmpfs
# mounts of its own on /run and /var/tmp unless told not to.
READ_ONLY = {"docker": ("--read-only", "--tmpfs", "/tmp"),
             "podman": ("--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp")}  # fmt: skip


@pytest.mark.parametrize("engine_name", ["docker", "podman"])
def test_read_only_root_with_only_tmp_writable_serves_as_a_non_root_user(
    built, engine_name, request, example_model
):
    engine = request.getfixturevalue("dockerd" if engine_name == "docker" else "podman")
    out, _ = built
    name = engine.load(out)
    got = score_container(engine, name, example_model, READ_ONLY[engine_name])
    assert_same_predictions(got, example_model.predictions)
    probe = engine.run("run", "--rm", *READ_ONLY[engine_name], "--entrypoint", "/bin/sh", name, "-c",
                       'id -u; id -g; echo "$HOME"; touch /tmp/ok && echo tmp-writable; '
                       "touch /var/azureml-app/x 2>&1 | grep -q 'Read-only file system' && echo app-read-only"
                       ).stdout.split()  # fmt: skip
    assert probe == ["65532", "65532", "/tmp", "tmp-writable", "app-read-only"], probe
    # On a writable root too, the files stay root's: the user reads them and cannot change them.
    writable = engine.run("run", "--rm", "--entrypoint", "/bin/sh", name, "-c",
                          "stat -c %u:%a /var/azureml-app/score.py; cat /var/azureml-app/score.py >/dev/null && "
                          "echo readable; (echo x >> /var/azureml-app/score.py) 2>&1 | grep -q 'Permission denied' "
                          "&& echo not-writable").stdout.split()  # fmt: skip
    assert writable == ["0:644", "readable", "not-writable"], writable


def test_user_0_gives_root_when_asked(tmp_path, cache, base_ref, example_model, dockerd):
    out = tmp_path / "root.tar"
    ocibuild(
        "package", example_model.model, "--entry-script", example_model.score, "--requirements",
        example_model.requirements, "--base", base_ref, "--user", "0", "--tag", "ocibuild-test/as-root:1",
        "--output", out, "--cache", cache,
    )  # fmt: skip
    name = dockerd.load(out)
    assert dockerd.run("inspect", "-f", "{{.Config.User}}", name).stdout.strip() == "0"
    assert dockerd.run("run", "--rm", "--entrypoint", "id", name, "-u").stdout.strip() == "0"
    assert_same_predictions(score_container(dockerd, name, example_model), example_model.predictions)


def test_oci_layout_unpacks_with_umoci(tmp_path, cache, base_ref, example_model):
    layout = tmp_path / "layout"
    ocibuild(
        "package", example_model.model, "--entry-script", example_model.score, "--requirements",
        example_model.requirements, "--base", base_ref, "--tag", "ridge:2", "--oci-layout", layout, "--cache", cache,
    )  # fmt: skip
    bundle = tmp_path / "bundle"
    run(["umoci", "unpack", "--image", f"{layout}:2", bundle])
    rootfs = bundle / "rootfs"
    assert (rootfs / "var/azureml-app/score.py").read_bytes() == example_model.score.read_bytes()
    assert (
        rootfs / "var/azureml-app/azureml-models/model/1/model.pkl"
    ).read_bytes() == example_model.model.read_bytes()
    assert (rootfs / "opt/ocibuild/server/ocibuild_serving/__main__.py").is_file()
    site = rootfs / "opt/ocibuild/site-packages"
    assert list(site.glob("sklearn/__init__.py"))
    # Compiled at build time by the base's own Python (its 3.11), test folders left out.
    assert (site / "sklearn/__pycache__/__init__.cpython-311.pyc").is_file()
    assert list(site.glob("sklearn/**/*.pyc")) and not list(site.glob("sklearn/**/tests/__pycache__"))
    assert (rootfs / "usr/bin/python3").exists()  # the base's files are there too


def test_load_into_running_dockerd(cache, base_ref, example_model, dockerd):
    proc = ocibuild(
        "package", example_model.model, "--entry-script", example_model.score, "--requirements",
        example_model.requirements, "--base", base_ref, "--tag", "ocibuild-test/loaded:3", "--load", "--cache", cache,
        env=dockerd.env,
    )  # fmt: skip
    assert "ocibuild-test/loaded:3" in proc.stderr
    assert_same_predictions(
        score_container(dockerd, "ocibuild-test/loaded:3", example_model), example_model.predictions
    )


def test_dockerfile_context_builds_with_docker(tmp_path, cache, base_ref, base_image, example_model, dockerd):
    ctx = tmp_path / "context"
    ocibuild(
        "package", example_model.model, "--entry-script", example_model.score, "--requirements",
        example_model.requirements, "--base", base_ref, "--dockerfile", ctx, "--cache", cache,
    )  # fmt: skip
    text = (ctx / "Dockerfile").read_text()
    assert "ENTRYPOINT" in text and "FROM ${BASE_IMAGE}" in text
    assert (ctx / "requirements.txt").read_text() == example_model.requirements.read_text()
    dockerd.load(base_image.docker_archive)
    dockerd.run(
        "build",
        "-t",
        "ocibuild-test/from-dockerfile:1",
        "--build-arg",
        f"BASE_IMAGE={base_image.docker_name}",
        ctx,
        timeout=900,
    )
    got = score_container(dockerd, "ocibuild-test/from-dockerfile:1", example_model)
    assert_same_predictions(got, example_model.predictions)


def _checkout(dst: Path, example_model) -> Path:
    dst.mkdir(parents=True)
    for f in (example_model.score, example_model.requirements, example_model.model):
        shutil.copy(f, dst / f.name)
    return dst


def _digest_and_config(layout: Path, tag: str):
    idx = json.loads((layout / "index.json").read_text())
    [m] = [m for m in idx["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
    manifest = json.loads((layout / "blobs/sha256" / m["digest"][7:]).read_text())
    return m["digest"], [layer["digest"] for layer in manifest["layers"]]


def test_same_inputs_same_digest_from_two_checkouts_and_app_edit_changes_only_app_layer(
    tmp_path, base_ref, example_model, cache
):
    digests = []
    for where in ("checkout-a", "deeper/checkout-b"):
        src = _checkout(tmp_path / where, example_model)
        os.utime(src / "score.py", (12345, 12345))
        out = tmp_path / where / "layout"
        proc = ocibuild(
            "package", src / "model.pkl", "--entry-script", src / "score.py", "--requirements", src / "requirements.txt",
            "--base", base_ref, "--oci-layout", out, "--tag", "ridge:1",
            # a separate cache for the second build: nothing is reused, everything is rebuilt
            "--cache", cache if where == "checkout-a" else tmp_path / "fresh-cache",
        )  # fmt: skip
        digests.append((proc.stdout.strip().splitlines()[-1], _digest_and_config(out, "1")))
    assert digests[0] == digests[1]
    # Now edit only score.py: only the last (app) layer changes.
    src = tmp_path / "checkout-a"
    with open(src / "score.py", "a") as f:
        f.write("\n# a comment\n")
    out = tmp_path / "edited"
    ocibuild(
        "package", src / "model.pkl", "--entry-script", src / "score.py", "--requirements", src / "requirements.txt",
        "--base", base_ref, "--oci-layout", out, "--tag", "ridge:1", "--cache", cache,
    )  # fmt: skip
    _, before = digests[0][1]
    _, after = _digest_and_config(out, "1")
    assert before[:-1] == after[:-1] and before[-1] != after[-1]


def test_build_as_unprivileged_user(base_image, example_model):
    """uid/gid 65534, no capabilities, no supplementary groups: everything the build needs is user-level.

    That user can reach nothing of root's (``/root`` is 0700 here): it gets its own venv on Debian's Python with
    ocibuild installed from this checkout, its own copy of the base layout, and its own cache.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to uid 65534")
    work = short_tempdir("ocibuild-nobody-")
    try:
        os.chmod(work, 0o755)
        venv = work / "venv"
        run(["uv", "venv", "--quiet", "--python", "/usr/bin/python3", venv])
        # Installed from a copy: building the wheel in the checkout would leave a setuptools build/ folder there.
        repo = work / "ocibuild-src"
        shutil.copytree(REPO, repo, ignore=lambda d, names: [n for n in names if n in (".git", "__pycache__")
                                                             or (Path(d) == REPO and n == "build")])  # fmt: skip
        run(["uv", "pip", "install", "--quiet", "--python", venv / "bin/python", f"{repo}[uv]"], timeout=600)
        src = _checkout(work / "src", example_model)
        (src / "sample.json").write_text(example_model.input_json)
        shutil.copytree(base_image.layout, work / "base")
        for p in [work, *work.rglob("*")]:
            os.lchown(p, 65534, 65534)
        out = work / "image.tar"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYENV", "VIRTUAL_ENV"))},
            "HOME": str(work), "PATH": f"{venv}/bin:/usr/bin:/bin", "OCIBUILD_CACHE": str(work / "cache"),
            "UV_CACHE_DIR": str(work / "uv-cache"),
        }  # fmt: skip
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
             venv / "bin/python", "-m", "ocibuild", "package", src / "model.pkl", "--entry-script", src / "score.py",
             "--requirements", src / "requirements.txt", "--base", f"oci:{work}/base:{base_image.tag}", "--output", out,
             "--smoke-test", "--sample-input", src / "sample.json"],
            env=env, capture_output=True, text=True, timeout=900, check=False, cwd=work,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        # The base's Python compiled the bytecode and the smoke test ran the image, both without root: in a user
        # namespace (bwrap, else unshare -r).
        assert "bytecode: compiled " in proc.stderr
        assert (
            "smoke test: starting the server in a chroot as " in proc.stderr
            and "user namespace" in proc.stderr
        )
        assert_same_predictions(smoke_answer(proc.stderr), example_model.predictions)
        assert out.stat().st_uid == 65534
        assert (
            json.loads(run(["skopeo", "inspect", f"oci-archive:{out}:1"]).stdout)["Digest"]
            == proc.stdout.split()[-1]
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_load_into_podman_api_service(cache, base_ref, example_model, podman):
    """--load speaks the engine API, so podman's Docker-compatible service takes the same stream."""
    sock = podman.dir / "podman-api.sock"
    service = subprocess.Popen(
        [*podman.argv, "system", "service", "--time=0", f"unix://{sock}"],
        env={**os.environ, **podman.env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        for _ in range(200):
            if sock.exists():
                break
            assert service.poll() is None, service.stderr.read()
            time.sleep(0.05)
        env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
        env["CONTAINER_HOST"] = f"unix://{sock}"
        proc = subprocess.run(
            [sys.executable, "-m", "ocibuild", "package", example_model.model, "--entry-script", example_model.score,
             "--requirements", example_model.requirements, "--base", base_ref, "--tag", "ocibuild-test/podman-loaded:4",
             "--load", "--cache", cache],
            env=env, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        got = score_container(podman, "ocibuild-test/podman-loaded:4", example_model)
        assert_same_predictions(got, example_model.predictions)
    finally:
        service.terminate()
        service.wait(timeout=30)


def test_source_dir_ships_sibling_modules(tmp_path, cache, base_ref, example_model, dockerd):
    """--source-dir copies the whole app folder; the entry script imports its own package from there."""
    src = tmp_path / "app"
    (src / "lib").mkdir(parents=True)
    (src / "lib" / "__init__.py").write_text("")
    (src / "lib" / "features.py").write_text(
        "def prepare(rows):\n    return [[float(x) for x in r] for r in rows]\n"
    )
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "junk.pyc").write_bytes(b"not shipped")
    score = example_model.score.read_text().replace(
        'data = np.array(json.loads(raw_data)["data"])',
        'data = np.array(prepare(json.loads(raw_data)["data"]))',
    )
    assert "prepare(" in score
    (src / "score.py").write_text("from lib.features import prepare\n" + score)
    out = tmp_path / "image.tar"
    ocibuild(
        "package", example_model.model, "--source-dir", src, "--entry-script", "score.py", "--requirements",
        example_model.requirements, "--base", base_ref, "--tag", "ocibuild-test/srcdir:1", "--output", out, "--cache", cache,
    )  # fmt: skip
    with tarfile.open(out) as tf:
        manifest = json.loads(tf.extractfile("manifest.json").read())[0]
        with tarfile.open(fileobj=tf.extractfile(manifest["Layers"][-1])) as app:
            names = set(app.getnames())
    assert {"var/azureml-app/score.py", "var/azureml-app/lib/features.py"} <= names
    assert not any("__pycache__" in n for n in names)
    name = dockerd.load(out)
    assert_same_predictions(score_container(dockerd, name, example_model), example_model.predictions)
