"""Multi-platform images (issue 14): one call builds linux/amd64 and linux/arm64 into one image index.

The base is an index of two real Debian Python images (the arm64 one made by mmdebstrap under qemu-user-static);
each platform gets its own base, Python and wheels, and the layers that do not depend on the platform are made
once. The index goes to a registry, an OCI layout and a tarball; docker and podman pull it and choose their
platform, and the arm64 image, run under emulation, scores the example like the amd64 one.
"""

from __future__ import annotations

import json
import tarfile

import pytest

from tests.conftest import run
from tests.e2e.test_models import one_line_error
from tests.e2e.test_package import assert_same_predictions, ocibuild, score_container

pytestmark = pytest.mark.slow

PLATFORMS = "linux/amd64,linux/arm64"
ELF_MACHINE = {"amd64": 62, "arm64": 183}  # e_machine: EM_X86_64, EM_AARCH64


def _package(example_model, base, cache, *args, check=True):
    return ocibuild(
        "package", example_model.model, "--entry-script", example_model.score,
        "--requirements", example_model.requirements, "--base", base, "--cache", cache, *args, check=check,
    )  # fmt: skip


@pytest.fixture(scope="module")
def index_build(multiarch_base, example_model, registry, tmp_path_factory):
    work = tmp_path_factory.mktemp("multiplatform")
    reg = registry.get("plain")
    ref = reg.ref("multi/ridge:1")
    proc = _package(example_model, multiarch_base, work / "cache", "--platform", PLATFORMS,
                    "--tag", "ocibuild-test/ridge-multi:1", "--oci-layout", work / "layout",
                    "--output", work / "image.tar", "--push", ref)  # fmt: skip
    return {"work": work, "digest": proc.stdout.strip().splitlines()[-1], "stderr": proc.stderr, "ref": ref,
            "reg": reg}  # fmt: skip


def _raw(ref: str, *args: str) -> dict:
    return json.loads(run(["skopeo", "inspect", "--raw", *args, ref]).stdout)


def _image(layout, arch: str) -> tuple[dict, dict]:
    """The manifest and config of ``arch``'s image in the index of ``layout``."""
    index = _raw(f"oci:{layout}:1")
    (desc,) = [m for m in index["manifests"] if m["platform"]["architecture"] == arch]
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / desc["digest"].split(":")[1]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())
    return manifest, config


def _elf_machines(layer_path) -> set[int]:
    """The ELF machines of the shared libraries in a layer."""
    machines = set()
    with tarfile.open(layer_path, "r:*") as tf:
        for member in tf:
            if member.isfile() and ".so" in member.name.rsplit("/", 1)[-1]:
                head = tf.extractfile(member).read(20)
                if head[:4] == b"\x7fELF":
                    machines.add(int.from_bytes(head[18:20], "little"))
    return machines


def test_one_index_holds_both_platforms_each_with_its_own_wheels(index_build, base_image, base_image_arm64):
    layout = index_build["work"] / "layout"
    index = _raw(f"oci:{layout}:1")
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert [m["platform"] for m in index["manifests"]] == [
        {"architecture": "amd64", "os": "linux"}, {"architecture": "arm64", "os": "linux"}]  # fmt: skip
    assert index_build["digest"] == json.loads(run(["skopeo", "inspect", f"oci:{layout}:1"]).stdout)["Digest"]
    images = {arch: _image(layout, arch) for arch in ("amd64", "arm64")}
    bases = {"amd64": base_image, "arm64": base_image_arm64}
    for arch, (manifest, config) in images.items():
        assert config["architecture"] == arch
        base_layers = _raw(bases[arch].ref)["layers"]
        layers = manifest["layers"]
        assert [d["digest"] for d in layers[: len(base_layers)]] == [d["digest"] for d in base_layers]
        deps = layers[len(base_layers) : -3]  # the dependencies, by size: scipy's layer, the rest
        assert len(deps) == 2
        for d in deps:
            blob = layout / "blobs" / "sha256" / d["digest"].split(":")[1]
            assert _elf_machines(blob) == {ELF_MACHINE[arch]}, (arch, d["digest"])
    # server, model and app: the same blobs in both images
    assert images["amd64"][0]["layers"][-3:] == images["arm64"][0]["layers"][-3:]
    err = index_build["stderr"]
    assert "x86_64-manylinux_2_36" in err and "aarch64-manylinux_2_36" in err
    assert err.count("platform linux/") == 2
    assert (
        err.count("native files of the dependencies against the base: they load") == 2
    )  # checked per platform


def test_the_registry_serves_the_index_and_engines_choose_their_platform(index_build, dockerd, podman,
                                                                         example_model):  # fmt: skip
    ref, reg = index_build["ref"], index_build["reg"]
    assert (
        _raw(f"docker://{ref}", *reg.skopeo_args())["mediaType"] == "application/vnd.oci.image.index.v1+json"
    )
    dockerd.run("pull", ref, timeout=300)
    assert dockerd.run("image", "inspect", "-f", "{{.Architecture}}", ref).stdout.strip() == "amd64"
    amd64 = score_container(dockerd, ref, example_model)
    assert_same_predictions(amd64, example_model.predictions)
    podman.run("pull", "--tls-verify=false", ref, timeout=300)
    assert podman.run("image", "inspect", "-f", "{{.Architecture}}", ref).stdout.strip() == "amd64"


def test_the_arm64_image_scores_like_the_amd64_one_under_emulation(index_build, dockerd, example_model):
    ref = index_build["ref"]
    dockerd.run("pull", "--platform", "linux/arm64", ref, timeout=300)
    assert dockerd.run("image", "inspect", "-f", "{{.Architecture}}", ref).stdout.strip() == "arm64"
    got = score_container(dockerd, ref, example_model, extra=("--platform", "linux/arm64"), timeout=300)
    assert_same_predictions(got, example_model.predictions)
    dockerd.run("rmi", ref)


def test_the_tarball_holds_the_index_and_docker_loads_its_first_platform(index_build, dockerd):
    tar = index_build["work"] / "image.tar"
    assert (
        json.loads(run(["skopeo", "inspect", f"oci-archive:{tar}:1"]).stdout)["Digest"] == index_build["digest"]
    )
    (line,) = [x for x in index_build["stderr"].splitlines() if "holds the whole index" in x]
    assert "linux/amd64" in line and "--oci-layout" in line
    assert dockerd.load(tar) == "ocibuild-test/ridge-multi:1"
    arch = dockerd.run("image", "inspect", "-f", "{{.Architecture}}", "ocibuild-test/ridge-multi:1")
    assert arch.stdout.strip() == "amd64"


def test_inspect_lists_every_platform_and_copy_takes_one(index_build, tmp_path):
    layout = index_build["work"] / "layout"
    shown = ocibuild("inspect", f"oci:{layout}:1").stdout
    assert f"Digest:       {index_build['digest']}" in shown and "Platforms (2):" in shown
    assert "linux/amd64" in shown and "linux/arm64" in shown
    arm = ocibuild("inspect", "--platform", "linux/arm64", f"oci:{layout}:1").stdout
    assert "Platform:     linux/arm64" in arm
    ocibuild("copy", "--platform", "linux/arm64", f"oci:{layout}:1", f"oci:{tmp_path / 'arm'}:1")
    copied = json.loads(run(["skopeo", "inspect", f"oci:{tmp_path / 'arm'}:1"]).stdout)
    assert copied["Architecture"] == "arm64"
    reg = index_build["reg"]
    whole = ocibuild("copy", "--all-platforms", f"oci:{layout}:1", f"docker://{reg.ref('multi/copied:1')}")
    assert whole.stdout.strip().splitlines()[-1] == index_build["digest"]


def test_each_platform_image_has_its_own_sbom_naming_its_own_wheels(index_build):
    """The SBOM describes what each platform's image holds: the arm64 one lists the aarch64 wheels."""
    for platform, machine in (("linux/amd64", "x86_64"), ("linux/arm64", "aarch64")):
        for where in (index_build["ref"], f"oci:{index_build['work'] / 'layout'}:1"):
            doc = json.loads(ocibuild("sbom", where, "--platform", platform).stdout)
            numpy = next(p for p in doc["packages"] if p["name"] == "numpy")
            assert machine in numpy["packageFileName"], (platform, numpy["packageFileName"])
            assert numpy["checksums"][0]["algorithm"] == "SHA256"


def test_a_registered_model_goes_into_every_platform_as_the_same_layer(
    index_build, multiarch_base, example_model
):
    reg, cache = index_build["reg"], index_build["work"] / "cache"
    model_ref = reg.ref("multi/models/ridge:3")
    ocibuild("model", "push", example_model.model, model_ref, "--cache", cache)
    artifact = _raw(f"docker://{model_ref}", *reg.skopeo_args())
    proc = ocibuild(
        "package", f"docker://{model_ref}", "--entry-script", example_model.score, "--requirements",
        example_model.requirements, "--base", multiarch_base, "--cache", cache, "--platform", PLATFORMS,
        "--push", reg.ref("multi/registered:1"),
    )  # fmt: skip
    index = _raw(f"docker://{reg.ref('multi/registered:1')}", *reg.skopeo_args())
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert proc.stdout.strip().splitlines()[-1].startswith("sha256:")
    for desc in index["manifests"]:
        manifest = _raw(f"docker://{reg.ref('multi/registered')}@{desc['digest']}", *reg.skopeo_args())
        assert artifact["layers"][0]["digest"] in [d["digest"] for d in manifest["layers"]]


def test_the_same_index_again_with_no_cache_and_platform_free_layers_made_once(
    index_build, multiarch_base, example_model, tmp_path
):
    """A build from nothing (fresh cache, wheels installed again) gives the same index, byte for byte; the model
    layer is written once, for the first platform."""
    proc = _package(example_model, multiarch_base, tmp_path / "cache", "--platform", PLATFORMS, "--no-cache",
                    "--oci-layout", tmp_path / "layout", "--tag", "ocibuild-test/ridge-multi:1")  # fmt: skip
    assert proc.stdout.strip().splitlines()[-1] == index_build["digest"]
    assert proc.stderr.count("model layer: the same for every platform") == 1
    assert proc.stderr.count("dependencies: resolving wheels") == 2


def test_outputs_that_hold_one_platform_are_refused_before_building(multiarch_base, example_model, tmp_path):
    for args, words in (
        (["--load"], "--load takes one platform"),
        (["--dockerfile", tmp_path / "ctx"], "--dockerfile writes the context of one platform"),
    ):
        proc = _package(example_model, multiarch_base, tmp_path / "cache", "--platform", PLATFORMS, *args,
                        check=False)  # fmt: skip
        assert words in one_line_error(proc)
        assert "resolving wheels" not in proc.stderr


def test_the_smoke_test_scores_every_platform_the_arm64_one_under_emulation(
    index_build, multiarch_base, example_model, tmp_path
):
    """--smoke-test runs each platform's image here before it ships: arm64 through qemu-user (binfmt_misc, as
    scripts/enable-arm64.sh registers it), answering the example request with the amd64 image's predictions."""
    sample = tmp_path / "sample.json"
    sample.write_text(json.dumps(example_model.input))
    proc = _package(example_model, multiarch_base, index_build["work"] / "cache", "--platform", PLATFORMS,
                    "--smoke-test", "--sample-input", sample, "--oci-layout", tmp_path / "layout")  # fmt: skip
    answers = [json.loads(x.split("answered 200: ", 1)[1]) for x in proc.stderr.splitlines()
               if x.startswith("smoke test: POST /score")]  # fmt: skip
    assert len(answers) == 2, proc.stderr
    for got in answers:
        assert_same_predictions(got, example_model.predictions)
    assert "under qemu-aarch64 (emulated: slow)" in proc.stderr
