"""Issue 3, end to end: build from a base pulled from a real registry, push, and check what the registry got.

Three real ``docker-registry`` set-ups (plain HTTP, htpasswd Basic auth over TLS, bearer tokens from the tests'
token server). Builds go through the real CLI; skopeo and a real dockerd read back what was pushed, and the
pushed image scores. The recording proxy in front of the plain and token registries shows what crossed the wire:
mounts instead of uploads, and nothing at all re-sent by a second push.
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from tests.conftest import BASE_REPO, free_port, run
from tests.e2e.test_package import assert_same_predictions, score_container

pytestmark = pytest.mark.slow

KINDS = ["plain", "basic", "token"]
TARGET = "ocibuild-test/ridge"


def ocibuild(*args, env=None, check=True, timeout=900, input=None):
    argv = [sys.executable, "-m", "ocibuild", *map(str, args)]
    return run(argv, env=env, check=check, timeout=timeout, input=input)


def package_args(example_model, base: str, cache) -> list:
    return [
        "package", example_model.model, "--entry-script", example_model.score,
        "--requirements", example_model.requirements, "--base", base, "--name", "diabetes-ridge", "--cache", cache,
    ]  # fmt: skip


class Pushed:
    """One kind's build-and-push, and what the registry saw of it."""

    def __init__(self, reg, proc, records, scopes, seconds):
        self.reg = reg
        self.digest = proc.stdout.strip().splitlines()[-1]
        self.stderr = proc.stderr
        self.records = records
        self.scopes = scopes
        self.seconds = seconds


@pytest.fixture(scope="module")
def pushed(registry, base_image, example_model, tmp_path_factory):
    """Per kind, once: push the base with skopeo, then `ocibuild package --base docker://… --push …` with a
    fresh cache (so the base really is pulled from that registry)."""
    done: dict[str, Pushed] = {}

    def get(kind: str) -> Pushed:
        if kind not in done:
            reg = registry.get(kind)
            base = reg.push_base(base_image)
            cache = tmp_path_factory.mktemp(f"cache-{kind}")
            if reg.proxy:
                reg.proxy.reset()
            if reg.tokens:
                reg.tokens.reset()
            start = time.monotonic()
            proc = ocibuild(
                *package_args(example_model, f"docker://{base}", cache),
                "--push", reg.ref(f"{TARGET}:1"), "--additional-tag", "latest", *reg.ocibuild_args(),
            )  # fmt: skip
            seconds = time.monotonic() - start
            records = reg.proxy.snapshot() if reg.proxy else []
            scopes = [r.scopes for r in reg.tokens.requests] if reg.tokens else []
            done[kind] = Pushed(reg, proc, records, scopes, seconds)
            done[kind].cache = cache
        return done[kind]

    return get


def manifest_of(reg, ref_tag: str) -> dict:
    return json.loads(
        run(["skopeo", "inspect", "--raw", *reg.skopeo_args(), f"docker://{reg.ref(ref_tag)}"]).stdout
    )


@pytest.mark.parametrize("kind", KINDS)
def test_push_from_registry_base_then_skopeo_reads_it(kind, pushed):
    p = pushed(kind)
    assert p.digest.startswith("sha256:") and len(p.digest) == 71
    info = p.reg.skopeo_inspect(f"{TARGET}:1")
    assert info["Digest"] == p.digest
    assert p.reg.skopeo_inspect(f"{TARGET}:latest")["Digest"] == p.digest
    # The base's registry reference, normalised (no transport prefix, no local path): what BuildKit writes too.
    assert info["Labels"]["org.opencontainers.image.base.name"] == p.reg.ref(BASE_REPO)
    base_layers = manifest_of(p.reg, BASE_REPO)["layers"]
    # dependencies (scipy in its own layer, the rest in another), server, model, app
    assert len(info["Layers"]) == len(base_layers) + 5
    # The base's layer came from another repository of the same registry: mounted, not uploaded.
    assert f"mounted from {BASE_REPO.split(':')[0]}" in p.stderr, p.stderr
    assert "uploaded" in p.stderr


@pytest.mark.parametrize("kind", ["plain", "token"])
def test_base_layers_are_mounted_and_only_new_blobs_uploaded(kind, pushed):
    p = pushed(kind)
    manifest = manifest_of(p.reg, f"{TARGET}:1")
    base_digests = {x["digest"] for x in manifest_of(p.reg, BASE_REPO)["layers"]}
    new = [manifest["config"], *[x for x in manifest["layers"] if x["digest"] not in base_digests]]
    mounts = [r for r in p.records if r.method == "POST" and "mount=" in r.path]
    assert {r.path.split("mount=")[1].split("&")[0].replace("%3A", ":") for r in mounts} >= base_digests
    assert all(r.status == 201 for r in mounts)
    sbom_and_provenance = p.reg.referrer_blobs(TARGET, p.digest)
    assert p.reg.proxy.blob_bytes_uploaded(p.records) == sum(x["size"] for x in new) + sum(sbom_and_provenance.values())
    # The base was pulled from the registry (a fresh cache): its layer went over the wire once.
    pulls = [r for r in p.records if r.method == "GET" and "/blobs/" in r.path]
    assert sorted(r.path.rsplit("/", 1)[1] for r in pulls if r.path.startswith("/v2/base/")) == sorted(
        [manifest_of(p.reg, BASE_REPO)["config"]["digest"], *base_digests]
    )


def test_token_scopes_pull_for_base_push_for_target_and_mount_source(pushed):
    p = pushed("token")
    base_repo = BASE_REPO.split(":")[0]
    asked = {tuple(s) for s in p.scopes}
    assert (f"repository:{base_repo}:pull",) in asked  # the base: pull only
    assert (f"repository:{TARGET}:pull,push",) in asked  # the target: pull and push
    assert tuple(sorted([f"repository:{TARGET}:pull,push", f"repository:{base_repo}:pull"])) in asked  # mount
    # Tokens are reused: a handful of grants, not one per request.
    assert len(p.scopes) <= 6, p.scopes


@pytest.mark.parametrize("kind", KINDS)
def test_docker_pulls_and_runs_the_pushed_image(kind, pushed, dockerd, example_model):
    p = pushed(kind)
    ref = p.reg.ref(f"{TARGET}:1")
    if p.reg.user:
        # 127.0.0.0/8 is an insecure registry for Docker by default: it accepts the tests' CA-less TLS.
        dockerd.run("login", "-u", p.reg.user, "--password-stdin", p.reg.host, input=p.reg.password)
    dockerd.run("pull", ref, timeout=300)
    got = dockerd.run("inspect", "-f", "{{index .RepoDigests 0}}", ref).stdout.strip()
    assert got == f"{p.reg.host}/{TARGET}@{p.digest}"
    assert_same_predictions(score_container(dockerd, ref, example_model), example_model.predictions)


@pytest.mark.parametrize("kind", ["plain", "token"])
def test_second_build_pulls_nothing_and_second_push_sends_no_blob_bytes(kind, pushed, example_model):
    p = pushed(kind)
    p.reg.proxy.reset()
    proc = ocibuild(
        *package_args(example_model, f"docker://{p.reg.ref(BASE_REPO)}", p.cache),
        "--push", p.reg.ref(f"{TARGET}:1"), *p.reg.ocibuild_args(),
    )  # fmt: skip
    assert proc.stdout.strip().splitlines()[-1] == p.digest
    records = p.reg.proxy.snapshot()
    assert p.reg.proxy.blob_bytes_uploaded(records) == 0
    assert not [r for r in records if r.method in ("PATCH", "POST")], records
    assert not [r for r in records if r.method == "GET" and "/blobs/" in r.path], records  # cache: no pull
    assert proc.stderr.count(" exists") == 7, proc.stderr  # config + 6 layers (two of dependencies)
    assert [r.path for r in records if r.method == "PUT"] == [f"/v2/{TARGET}/manifests/1"]


# --- failures: one clear line, fast -------------------------------------------------------------------------------


def fails(*args, expect: str, secret: str | None = None, env=None, input: str | None = None) -> str:
    start = time.monotonic()
    proc = ocibuild(*args, check=False, timeout=120, env=env, input=input)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ocibuild: error:")]
    assert len(errors) == 1, proc.stderr
    assert expect in errors[0], errors[0]
    if secret:
        assert secret not in proc.stderr + proc.stdout
    assert elapsed < 10, f"took {elapsed:.1f} s: {errors[0]}"
    return errors[0]


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_wrong_credentials(kind, registry, base_image, tmp_path):
    reg = registry.get(kind)
    reg.push_base(base_image)
    tls = ["--ca-cert", reg.tls.ca_cert] if reg.tls else []
    err = fails(
        "inspect", f"docker://{reg.ref(BASE_REPO)}", "--creds", f"{reg.user}:wrong-Pa55word", *tls,
        expect=f"authentication failed for user {reg.user}", secret="wrong-Pa55word",
        env={"DOCKER_CONFIG": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path)},
    )  # fmt: skip
    assert "ocibuild login" in err and "--creds" in err


@pytest.mark.parametrize("kind", ["basic", "token"])
def test_no_credentials(kind, registry, base_image, tmp_path):
    reg = registry.get(kind)
    reg.push_base(base_image)
    tls = ["--ca-cert", reg.tls.ca_cert] if reg.tls else []
    fails(
        "inspect", f"docker://{reg.ref(BASE_REPO)}", *tls, expect="authentication required",
        env={"DOCKER_CONFIG": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path), "HOME": str(tmp_path)},
    )  # fmt: skip


def test_push_with_wrong_credentials_fails_before_any_blob(registry, base_ref, example_model, tmp_path):
    reg = registry.get("token")
    reg.proxy.reset()
    fails(
        *package_args(example_model, base_ref, tmp_path / "cache"), "--push", reg.ref("denied/app:1"),
        "--creds", f"{reg.user}:nope-Pa55", expect=f"authentication failed for user {reg.user}", secret="nope-Pa55",
    )  # fmt: skip
    assert not [r for r in reg.proxy.snapshot() if r.method in ("POST", "PUT", "PATCH")]


@pytest.mark.parametrize("what", ["nothing/here:1", f"{BASE_REPO}-nope"])
def test_missing_repository_or_tag(what, registry, base_image):
    reg = registry.get("plain")
    reg.push_base(base_image)
    fails("inspect", f"docker://{reg.ref(what)}", expect=f"{reg.ref(what)}: no such image")


def test_missing_tag_with_auth(registry, base_image):
    reg = registry.get("token")
    reg.push_base(base_image)
    fails("inspect", f"docker://{reg.ref(BASE_REPO)}-nope", "--creds", reg.creds, expect="no such image")


def test_unreachable_registry():
    port = free_port()  # nothing listens there
    fails("inspect", f"docker://127.0.0.1:{port}/some/image:1", expect=f"cannot connect to 127.0.0.1:{port}")


def test_untrusted_tls_certificate(registry, base_image):
    reg = registry.get("basic")
    reg.push_base(base_image)
    err = fails(
        "inspect",
        f"docker://{reg.ref(BASE_REPO)}",
        "--creds",
        reg.creds,
        expect="TLS certificate not trusted",
    )
    assert "--ca-cert" in err and "--insecure" in err


def test_tls_trust_from_cert_dir_or_insecure(registry, base_image):
    reg = registry.get("basic")
    reg.push_base(base_image)
    ref = f"docker://{reg.ref(BASE_REPO)}"
    for flags in (["--cert-dir", reg.tls.cert_dir], ["--insecure"]):
        out = ocibuild("inspect", ref, "--creds", reg.creds, *flags).stdout
        assert "Digest:       sha256:" in out


def test_login_stores_credentials_like_docker_and_inspect_uses_them(registry, base_image, tmp_path):
    reg = registry.get("token")
    base = reg.push_base(base_image)
    env = {"DOCKER_CONFIG": str(tmp_path / "docker"), "XDG_RUNTIME_DIR": str(tmp_path), "HOME": str(tmp_path)}
    fails(
        "login", reg.host, "-u", reg.user, "--password-stdin", expect="authentication failed", env=env,
        input="wrong-Pa55\n", secret="wrong-Pa55",
    )  # fmt: skip
    assert not (tmp_path / "docker" / "config.json").exists()
    proc = ocibuild("login", reg.host, "-u", reg.user, "--password-stdin", input=reg.password + "\n", env=env)
    assert "Login Succeeded" in proc.stdout
    config = tmp_path / "docker" / "config.json"
    assert config.stat().st_mode & 0o777 == 0o600
    assert set(json.loads(config.read_text())["auths"]) == {reg.host}
    out = ocibuild("inspect", f"docker://{base}", env=env).stdout
    assert "Digest:       sha256:" in out


def test_python_api_pushes_the_same_image(pushed, example_model):
    from ocibuild import Environment, InferenceConfig, package

    p = pushed("plain")
    pkg = package(
        models=[example_model.model],
        inference_config=InferenceConfig(
            example_model.score, environment=Environment(pip_requirements=example_model.requirements)
        ),
        base=f"docker://{p.reg.ref(BASE_REPO)}",
        name="diabetes-ridge",
        cache=p.cache,
    )
    assert pkg.push(p.reg.ref(f"{TARGET}:api"), tags=["api-2"]) == pkg.digest == p.digest
    assert p.reg.skopeo_inspect(f"{TARGET}:api-2")["Digest"] == p.digest
