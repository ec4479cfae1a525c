"""A registry as the layer cache of a fleet (``--cache-repo``), against the real registry: what one runner built,
a fresh runner (empty local cache, package index unreachable) reuses as it is: the same digest, no wheel
resolved or downloaded, no layer compressed, and the layers mounted, not uploaded, when the image goes to the same
registry. Several runners filling one cache repository at once all succeed with one digest."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import run

pytestmark = pytest.mark.slow


def _package(example_model, base: str, cache, *args, env=None):
    argv = [
        sys.executable, "-m", "ocibuild", "package", example_model.model, "--entry-script", example_model.score,
        "--requirements", example_model.requirements, "--base", base, "--cache", cache, *args,
    ]  # fmt: skip
    return run([str(a) for a in argv], env=env, timeout=900)


def _offline() -> dict[str, str]:
    """The environment of a runner that cannot reach any package index: every proxy points at a closed port, and
    only the registry on 127.0.0.1 is reached directly."""
    dead = "http://127.0.0.1:9"
    return {**os.environ, "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead,
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}  # fmt: skip


def _layer_digests(reg, repo_tag: str) -> list[str]:
    return reg.skopeo_inspect(repo_tag)["Layers"]


def test_a_fresh_runner_reuses_what_the_fleet_built(registry, base_image, example_model, tmp_path):
    reg = registry.get("plain")
    base = reg.push_base(base_image)
    cache_repo = reg.ref("fleet/cache")
    first = _package(example_model, base, tmp_path / "runner-1", "--cache-repo", cache_repo,
                     "--push", reg.ref("fleet/app-a:1"))  # fmt: skip
    digest = first.stdout.strip().splitlines()[-1]
    assert "dependencies: resolving wheels" in first.stderr
    base_layers = _layer_digests(reg, base.split("/", 1)[1])
    deps = [d for d in _layer_digests(reg, "fleet/app-a:1") if d not in base_layers][0]  # the first one added

    reg.proxy.reset()
    second = _package(example_model, base, tmp_path / "runner-2", "--cache-repo", cache_repo,
                      "--push", reg.ref("fleet/app-b:1"), env=_offline())  # fmt: skip
    assert second.stdout.strip().splitlines()[-1] == digest
    err = second.stderr
    assert f"dependencies: from the cache repo {cache_repo}" in err
    assert f"model layer: from the cache repo {cache_repo}" in err
    assert (
        "resolving wheels" not in err and "dependencies layer:" not in err
    )  # nothing resolved or compressed
    assert not (tmp_path / "runner-2" / "blobs" / "sha256" / deps.removeprefix("sha256:")).exists()

    records = reg.proxy.snapshot()
    uploads = [r for r in records if "/blobs/uploads/" in r.path and r.method in ("PUT", "PATCH")]
    assert not [r for r in uploads if deps.replace(":", "%3A") in r.path or deps in r.path]
    mounts = [r.path for r in records if r.method == "POST" and "mount=" in r.path and r.status == 201]
    assert any(deps.replace(":", "%3A") in p and "from=fleet%2Fcache" in p for p in mounts), mounts
    # the image's config and its SBOM and provenance (new to this repository), nothing of its layers
    documents = sum(reg.referrer_blobs("fleet/app-b", digest).values())
    assert 0 < documents < 1 << 20
    assert reg.proxy.blob_bytes_uploaded(records) < (64 << 10) + documents
    # Nor did it download any layer, not even the base's: what the first runner read of the base is a record
    # in the cache repo too. It read configs and the cache entries' facts.
    layers = set(base_layers) | set(_layer_digests(reg, "fleet/app-a:1"))
    assert not [r.path for r in records if r.method == "GET" and r.path.rsplit("/", 1)[-1] in layers]
    assert reg.proxy.blob_bytes_downloaded(records) < 1 << 20
    assert reg.skopeo_inspect("fleet/app-b:1")["Digest"] == digest


def test_a_readonly_runner_reads_the_cache_but_writes_nothing(registry, base_image, example_model, tmp_path):
    reg = registry.get("plain")
    (tmp_path / "score.py").write_text(example_model.score.read_text() + "\n# a pull request's change\n")
    reg.proxy.reset()
    proc = run(
        [
            sys.executable,
            "-m",
            "ocibuild",
            "package",
            example_model.model,
            "--entry-script",
            tmp_path / "score.py",
            "--requirements",
            example_model.requirements,
            "--base",
            base_image.ref,
            "--cache",
            tmp_path / "cache",
            "--output",
            tmp_path / "pr.tar",
        ],
        env={"OCIBUILD_CACHE_REPO": reg.ref("fleet/readonly-cache"), "OCIBUILD_CACHE_REPO_READONLY": "1"},
        timeout=900,
    )  # fmt: skip  (CI settings: the environment, not flags)
    assert proc.stdout.startswith("sha256:")
    assert any(r.method == "GET" and "fleet/readonly-cache" in r.path for r in reg.proxy.snapshot())
    assert [r for r in reg.proxy.snapshot() if r.method not in ("GET", "HEAD")] == []


def test_runners_filling_one_cache_repo_at_once_agree(registry, base_image, example_model, tmp_path):
    reg = registry.get("plain")
    argv = [
        sys.executable, "-m", "ocibuild", "package", example_model.model, "--entry-script", example_model.score,
        "--requirements", example_model.requirements, "--base", base_image.ref,
        "--cache-repo", reg.ref("fleet/concurrent-cache"), "-q",
    ]  # fmt: skip
    procs = [
        subprocess.Popen(
            [str(a) for a in [*argv, "--cache", tmp_path / f"runner-{i}", "--output", tmp_path / f"{i}.tar"]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(3)
    ]
    results = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in results]
    assert len({out.strip() for out, _ in results}) == 1
    # And what they recorded serves the next runner.
    again = subprocess.run(
        [str(a) for a in [*argv, "--cache", tmp_path / "runner-next", "--output", tmp_path / "next.tar"]],
        capture_output=True, text=True, timeout=900, env=_offline(), check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.strip() == results[0][0].strip()
