"""Issue 8, end to end: `ocibuild copy` between tarballs, layouts and a real registry, digests unchanged.

The air-gapped round trip (`package --output`, carry the file, `copy` into the internal registry) must give the
digest `package` printed; skopeo must read what `copy` writes and `copy` must read what skopeo and Docker 20.10's
`docker save` write; a corrupt source must stop the copy with nothing tagged; several images must share one
tarball that a real `docker load` loads whole; an index and an artifact travel the same way.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import run
from tests.e2e.test_package import assert_same_predictions, score_container

pytestmark = pytest.mark.slow


def ocibuild(*args, check=True, timeout=900):
    return run([sys.executable, "-m", "ocibuild", *map(str, args)], check=check, timeout=timeout)


def digest_printed(proc) -> str:
    return proc.stdout.strip().splitlines()[-1]


def package_args(example_model, base_ref: str, cache: Path, version: str = "1") -> list:
    return [
        "package", example_model.model, "--entry-script", example_model.score,
        "--requirements", example_model.requirements, "--base", base_ref, "--name", "diabetes-ridge",
        "--model-version", version, "--cache", cache,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("copy")


@pytest.fixture(scope="module")
def built(example_model, base_ref, work):
    """`package --output` once: the tarball an air-gapped user carries across, and the digest printed."""
    out = work / "ridge.tar"
    proc = ocibuild(
        *package_args(example_model, base_ref, work / "cache"), "--output", out, "--tag", "ridge:1"
    )
    return out, digest_printed(proc)


def skopeo_raw(ref: str, *args: str) -> bytes:
    return run(["skopeo", "inspect", "--raw", *args, ref]).stdout.encode()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def registry_has(reg, repo_tag: str) -> bool:
    proc = run(
        ["skopeo", "inspect", "--raw", *reg.skopeo_args(), f"docker://{reg.ref(repo_tag)}"], check=False
    )
    return proc.returncode == 0


# --- the air-gapped round trip -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["plain", "token"])
def test_archive_to_registry_keeps_the_digest_package_printed(
    kind, built, registry, example_model, base_ref, work
):
    out, digest = built
    reg = registry.get(kind)
    proc = ocibuild(
        "copy", f"docker-archive:{out}", f"docker://{reg.ref('airgap/ridge:1')}", *_creds(reg, "dest")
    )
    assert digest_printed(proc) == digest
    assert sha256(skopeo_raw(f"docker://{reg.ref('airgap/ridge:1')}", *reg.skopeo_args())) == digest
    # The same inputs pushed directly give the same digest: the file in between changed nothing.
    pushed = ocibuild(
        *package_args(example_model, base_ref, work / "cache"), "--push", reg.ref("direct/ridge:1"),
        *reg.ocibuild_args(),
    )  # fmt: skip
    assert digest_printed(pushed) == digest
    # And the oci-archive reading of the same file agrees.
    again = ocibuild(
        "copy", f"oci-archive:{out}", f"docker://{reg.ref('airgap/ridge:oci')}", *_creds(reg, "dest")
    )
    assert digest_printed(again) == digest


def _creds(reg, side: str) -> list[str]:
    out = [f"--{side}-creds", reg.creds] if reg.user else []
    return out + (["--ca-cert", str(reg.tls.ca_cert)] if reg.tls else [])


def test_registry_to_registry_mounts_blobs_and_a_second_copy_sends_nothing(built, registry):
    out, digest = built
    reg = registry.get("plain")
    ocibuild("copy", f"docker-archive:{out}", f"docker://{reg.ref('r2r/src:1')}")
    reg.proxy.reset()
    proc = ocibuild(
        "copy", f"docker://{reg.ref('r2r/src:1')}", f"docker://{reg.ref('r2r/dst:1')}", "--tag", "v1"
    )
    assert digest_printed(proc) == digest
    records = reg.proxy.snapshot()
    assert reg.proxy.blob_bytes_uploaded(records) == 0, "blobs of the same registry are mounted, not re-sent"
    mounts = [r for r in records if r.method == "POST" and "mount=" in r.path]
    assert mounts and all(r.status == 201 for r in mounts)
    config = json.loads(skopeo_raw(f"docker://{reg.ref('r2r/src:1')}", *reg.skopeo_args()))["config"][
        "digest"
    ]
    downloaded = [r.path.rsplit("/", 1)[1] for r in records if r.method == "GET" and "/blobs/" in r.path]
    assert downloaded == [config], "only the config is read (to check it); layers are mounted, not downloaded"
    assert sha256(skopeo_raw(f"docker://{reg.ref('r2r/dst:v1')}", *reg.skopeo_args())) == digest
    reg.proxy.reset()
    ocibuild("copy", f"docker://{reg.ref('r2r/src:1')}", f"docker://{reg.ref('r2r/dst:1')}")
    records = reg.proxy.snapshot()
    assert reg.proxy.blob_bytes_uploaded(records) == 0
    assert not [r for r in records if r.method in ("POST", "PATCH")], records


def test_registry_to_another_registry_with_credentials_for_each_side(built, registry):
    out, digest = built
    src, dest = registry.get("basic"), registry.get("token")
    ocibuild("copy", f"docker-archive:{out}", f"docker://{src.ref('cross/ridge:1')}", *_creds(src, "dest"))
    proc = ocibuild(
        "copy", f"docker://{src.ref('cross/ridge:1')}", f"docker://{dest.ref('cross/ridge:1')}",
        "--src-creds", src.creds, "--dest-creds", dest.creds, "--ca-cert", src.tls.ca_cert,
    )  # fmt: skip
    assert digest_printed(proc) == digest
    assert sha256(skopeo_raw(f"docker://{dest.ref('cross/ridge:1')}", *dest.skopeo_args())) == digest
    # Without the source's credentials: one line naming the source registry, nothing at the destination.
    denied = ocibuild(
        "copy", f"docker://{src.ref('cross/ridge:1')}", f"docker://{dest.ref('cross/denied:1')}",
        "--dest-creds", dest.creds, "--ca-cert", src.tls.ca_cert, check=False,
    )  # fmt: skip
    assert denied.returncode != 0 and src.host in denied.stderr and "Traceback" not in denied.stderr, (
        denied.stderr
    )
    assert not registry_has(dest, "cross/denied:1")


# --- interop with skopeo and docker save --------------------------------------------------------------------------


def test_skopeo_reads_what_copy_wrote(built, work, registry):
    out, digest = built
    layout, oci_tar, docker_tar = work / "to-layout", work / "to-oci.tar", work / "to-docker.tar"
    assert digest_printed(ocibuild("copy", f"docker-archive:{out}", f"oci:{layout}:v1")) == digest
    assert digest_printed(ocibuild("copy", f"oci:{layout}:v1", f"oci-archive:{oci_tar}:v1")) == digest
    assert (
        digest_printed(ocibuild("copy", f"oci-archive:{oci_tar}", f"docker-archive:{docker_tar}:a/b:2"))
        == digest
    )
    assert sha256(skopeo_raw(f"oci:{layout}:v1")) == digest
    assert sha256(skopeo_raw(f"oci-archive:{oci_tar}:v1")) == digest
    want_config = json.loads(skopeo_raw(f"oci:{layout}:v1"))["config"]["digest"]
    with tarfile.open(docker_tar) as tf:
        assert json.load(tf.extractfile("manifest.json"))[0]["RepoTags"] == ["a/b:2"]
    assert json.loads(skopeo_raw(f"docker-archive:{docker_tar}"))["config"]["digest"] == want_config
    # skopeo copies the layout on to a registry, byte for byte.
    reg = registry.get("plain")
    run(["skopeo", "copy", "--quiet", "--preserve-digests", *reg.skopeo_args("dest-"), f"oci:{layout}:v1",
         f"docker://{reg.ref('from-skopeo/ridge:1')}"])  # fmt: skip
    assert sha256(skopeo_raw(f"docker://{reg.ref('from-skopeo/ridge:1')}", *reg.skopeo_args())) == digest


def test_copy_reads_what_skopeo_wrote(base_image, work):
    skopeo_tar = work / "skopeo-docker.tar"
    run(["skopeo", "copy", "--quiet", base_image.ref, f"docker-archive:{skopeo_tar}:base/python:3.11"])
    proc = ocibuild("copy", f"docker-archive:{skopeo_tar}", f"oci:{work / 'from-skopeo'}:base")
    copied = json.loads(skopeo_raw(f"oci:{work / 'from-skopeo'}:base"))
    assert sha256(skopeo_raw(f"oci:{work / 'from-skopeo'}:base")) == digest_printed(proc)
    original = json.loads(skopeo_raw(base_image.ref))
    assert copied["config"]["digest"] == original["config"]["digest"]
    # skopeo wrote uncompressed layers; their digests are the base's diff_ids, verified on the way.
    config = json.loads(run(["skopeo", "inspect", "--config", base_image.ref]).stdout)
    assert [x["digest"] for x in copied["layers"]] == config["rootfs"]["diff_ids"]


def test_copy_reads_docker_20_legacy_save_and_the_pushed_image_runs(
    built, dockerd, registry, example_model, work
):
    out, _ = built
    name = dockerd.load(out)
    saved = work / "docker-saved.tar"
    dockerd.run("save", "-o", str(saved), name)
    with tarfile.open(saved) as tf:
        assert any(n.endswith("/layer.tar") for n in tf.getnames()), "Docker 20.10 writes the legacy layout"
    reg = registry.get("plain")
    ocibuild("copy", f"docker-archive:{saved}", f"docker://{reg.ref('from-docker/ridge:1')}")
    image_id = dockerd.run("inspect", "-f", "{{.Id}}", name).stdout.strip()
    assert (
        json.loads(skopeo_raw(f"docker://{reg.ref('from-docker/ridge:1')}", *reg.skopeo_args()))["config"][
            "digest"
        ]
        == image_id
    )
    ref = reg.ref("from-docker/ridge:1")
    dockerd.run("pull", ref, timeout=300)
    assert_same_predictions(score_container(dockerd, ref, example_model), example_model.predictions)


# --- corrupt sources ----------------------------------------------------------------------------------------------


def _corrupt_copy(src: Path, dest: Path) -> str:
    """A copy of the tarball with one byte of its largest blob flipped; returns that blob's name."""
    shutil.copyfile(src, dest)
    with tarfile.open(dest) as tf:
        blob = max((m for m in tf.getmembers() if m.name.startswith("blobs/")), key=lambda m: m.size)
    with open(dest, "r+b") as f:
        f.seek(blob.offset_data + blob.size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    return blob.name


def test_a_corrupt_blob_stops_the_copy_and_nothing_is_tagged(built, registry, work):
    out, _ = built
    bad = work / "corrupt.tar"
    blob = _corrupt_copy(out, bad)
    reg = registry.get("plain")
    proc = ocibuild("copy", f"docker-archive:{bad}", f"docker://{reg.ref('corrupt/ridge:1')}", check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("ocibuild: error:") and "Traceback" not in proc.stderr, proc.stderr
    assert blob.rsplit("/", 1)[1][:12] in lines[-1] and "digest" in lines[-1].lower(), lines[-1]
    assert not registry_has(reg, "corrupt/ridge:1")
    # To a file: nothing at the destination, no temp file beside it.
    dest_dir = work / "corrupt-out"
    dest_dir.mkdir()
    proc = ocibuild("copy", f"docker-archive:{bad}", f"docker-archive:{dest_dir / 'x.tar'}:x:1", check=False)
    assert proc.returncode != 0 and "digest" in proc.stderr.lower()
    assert list(dest_dir.iterdir()) == []
    # Into an existing layout (made by umoci, holding another image): its index.json is untouched.
    layout = work / "corrupt-layout"
    run(["umoci", "init", "--layout", str(layout)])
    run(["umoci", "new", "--image", f"{layout}:other"])
    before = (layout / "index.json").read_bytes()
    proc = ocibuild("copy", f"docker-archive:{bad}", f"oci:{layout}:bad", check=False)
    assert proc.returncode != 0
    assert (layout / "index.json").read_bytes() == before


# --- several images in one tarball --------------------------------------------------------------------------------


def test_three_images_in_one_tarball_all_load(base_image, example_model, base_ref, work, dockerd):
    multi = work / "three.tar"
    ocibuild("copy", base_image.ref, f"docker-archive:{multi}:ocibuild-test/base:1")
    digests = [digest_printed(ocibuild(
        *package_args(example_model, base_ref, work / "cache", version=v), "--output", multi, "--append",
        "--tag", f"ocibuild-test/ridge:{v}",
    )) for v in ("1", "2")]  # fmt: skip
    assert digests[0] != digests[1]
    with tarfile.open(multi) as tf:
        docker_entries = json.load(tf.extractfile("manifest.json"))
        index = json.load(tf.extractfile("index.json"))
    assert sorted(t for e in docker_entries for t in e["RepoTags"]) == [
        "ocibuild-test/base:1", "ocibuild-test/ridge:1", "ocibuild-test/ridge:2",
    ]  # fmt: skip
    images = [m for m in index["manifests"] if not m.get("artifactType")]
    assert len(images) == 3  # and beside each built one, its SBOM and provenance
    assert len([m for m in index["manifests"] if m.get("artifactType")]) == 4
    # skopeo reads each one by name.
    assert sha256(skopeo_raw(f"oci-archive:{multi}:2")) == digests[1]
    for tag in ("ocibuild-test/base:1", "ocibuild-test/ridge:1", "ocibuild-test/ridge:2"):
        dockerd.run("rmi", "-f", tag, check=False)
    loaded = dockerd.run("load", "-i", str(multi), timeout=300).stdout
    for tag in ("ocibuild-test/base:1", "ocibuild-test/ridge:1", "ocibuild-test/ridge:2"):
        assert f"Loaded image: {tag}" in loaded, loaded
        assert dockerd.run("image", "inspect", tag, check=False).returncode == 0
    # Appending a name that is there moves it; the other images stay.
    ocibuild("copy", f"docker-archive:{multi}:ocibuild-test/ridge:2", f"docker-archive:{multi}:ocibuild-test/ridge:1",
             "--append")  # fmt: skip
    with tarfile.open(multi) as tf:
        tags = {
            t: e["Config"] for e in json.load(tf.extractfile("manifest.json")) for t in e["RepoTags"] or []
        }
    assert tags["ocibuild-test/ridge:1"] == tags["ocibuild-test/ridge:2"] != tags["ocibuild-test/base:1"]


# --- indexes and artifacts ----------------------------------------------------------------------------------------


def _write_blob(layout: Path, data: bytes) -> dict:
    digest = sha256(data)
    (layout / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def _add_to_index(layout: Path, desc: dict, name: str) -> None:
    index = json.loads((layout / "index.json").read_text())
    index["manifests"].append({**desc, "annotations": {"org.opencontainers.image.ref.name": name}})
    (layout / "index.json").write_text(json.dumps(index))


@pytest.fixture(scope="module")
def multi_platform(base_image, work) -> tuple[Path, str, dict[str, str]]:
    """A layout holding a two-platform index (the amd64 Debian base and an empty arm64 image made by umoci),
    written by hand as a registry would serve it; returns the layout, the index digest and the child digests."""
    layout = work / "multi-layout"
    shutil.copytree(base_image.layout, layout)
    run(["umoci", "new", "--image", f"{layout}:arm"])
    run(["umoci", "config", "--image", f"{layout}:arm", "--architecture", "arm64", "--os", "linux"])
    entries = {m["annotations"]["org.opencontainers.image.ref.name"]: m
               for m in json.loads((layout / "index.json").read_text())["manifests"]}  # fmt: skip
    children = []
    for tag, arch in ((base_image.tag, "amd64"), ("arm", "arm64")):
        m = entries[tag]
        children.append({"mediaType": m["mediaType"], "digest": m["digest"], "size": m["size"],
                         "platform": {"architecture": arch, "os": "linux"}})  # fmt: skip
    raw = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                      "manifests": children}).encode()  # fmt: skip
    desc = {"mediaType": "application/vnd.oci.image.index.v1+json", **_write_blob(layout, raw)}
    _add_to_index(layout, desc, "multi")
    return layout, desc["digest"], {"amd64": children[0]["digest"], "arm64": children[1]["digest"]}


def test_an_index_travels_whole_or_as_one_platform(multi_platform, registry, work):
    layout, index_digest, children = multi_platform
    reg = registry.get("plain")
    dest = f"docker://{reg.ref('multi/app:1')}"
    proc = ocibuild("copy", "--all-platforms", f"oci:{layout}:multi", dest)
    assert digest_printed(proc) == index_digest
    assert sha256(skopeo_raw(dest, *reg.skopeo_args())) == index_digest
    for arch, digest in children.items():
        assert (
            sha256(skopeo_raw(f"docker://{reg.ref('multi/app')}@{digest}", *reg.skopeo_args())) == digest
        ), arch
    # Back out of the registry into an archive, whole: skopeo sees the same index.
    archive = work / "multi.tar"
    assert (
        digest_printed(ocibuild("copy", "--all-platforms", dest, f"oci-archive:{archive}:1")) == index_digest
    )
    assert sha256(skopeo_raw(f"oci-archive:{archive}:1")) == index_digest
    run(["skopeo", "copy", "--quiet", "--all", f"oci-archive:{archive}:1", f"oci:{work / 'multi-check'}:1"])
    # One platform only: that child, unchanged; without --platform, the host's (linux/amd64).
    arm = ocibuild("copy", "--platform", "linux/arm64", dest, f"oci:{work / 'arm-only'}:1")
    assert digest_printed(arm) == children["arm64"]
    assert digest_printed(ocibuild("copy", dest, f"oci:{work / 'amd-only'}:1")) == children["amd64"]
    # A docker archive cannot hold an index: one clear line.
    bad = ocibuild("copy", "--all-platforms", dest, f"docker-archive:{work / 'no.tar'}:x:1", check=False)
    assert bad.returncode == 2 and "--platform" in bad.stderr and not (work / "no.tar").exists(), bad.stderr


def test_an_artifact_travels_unchanged(registry, work):
    layout = work / "artifact"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text('{"schemaVersion":2,"manifests":[]}')
    empty = {"mediaType": "application/vnd.oci.empty.v1+json", **_write_blob(layout, b"{}")}
    weights = {"mediaType": "application/octet-stream", **_write_blob(layout, b"\x00\x01weights" * 1000),
               "annotations": {"org.opencontainers.image.title": "model.bin"}}  # fmt: skip
    raw = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "artifactType": "application/vnd.example.model", "config": empty,
                      "layers": [weights]}).encode()  # fmt: skip
    desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json", **_write_blob(layout, raw)}
    _add_to_index(layout, desc, "v1")
    reg = registry.get("plain")
    dest = f"docker://{reg.ref('models/example:1')}"
    assert digest_printed(ocibuild("copy", f"oci:{layout}:v1", dest)) == desc["digest"]
    assert skopeo_raw(dest, *reg.skopeo_args()) == raw
    back = work / "artifact.tar"
    assert digest_printed(ocibuild("copy", dest, f"oci-archive:{back}:v1")) == desc["digest"]
    with tarfile.open(back) as tf:
        assert (
            tf.extractfile(f"blobs/sha256/{weights['digest'].split(':')[1]}").read()
            == b"\x00\x01weights" * 1000
        )
        index = json.load(tf.extractfile("index.json"))
        assert "manifest.json" not in tf.getnames()  # Docker's list is for images only
    assert "platform" not in index["manifests"][0]
    bad = ocibuild("copy", dest, f"docker-archive:{work / 'artifact-docker.tar'}:x:1", check=False)
    assert bad.returncode == 2 and "artifact" in bad.stderr, bad.stderr


def test_a_registered_model_travels_by_tarball_and_pulls_back_identical(example_model, registry, work):
    reg = registry.get("plain")
    pushed = digest_printed(ocibuild("model", "push", example_model.model, reg.ref("models/ridge:3")))
    carried = work / "model.tar"
    assert (
        digest_printed(ocibuild("copy", f"docker://{reg.ref('models/ridge:3')}", f"oci-archive:{carried}:3"))
        == pushed
    )
    # The far side: into another registry repository, then pulled back with ocibuild model pull.
    assert (
        digest_printed(ocibuild("copy", f"oci-archive:{carried}:3", f"docker://{reg.ref('far/ridge:3')}"))
        == pushed
    )
    out = work / "model-pulled"
    ocibuild("model", "pull", reg.ref("far/ridge:3"), out)
    [pulled] = [p for p in out.rglob("*") if p.is_file()]
    assert pulled.name == example_model.model.name
    assert pulled.read_bytes() == example_model.model.read_bytes()


def test_bad_references_give_one_line(work, registry, base_image):
    for args, expect in [
        (
            ("--platform", "linux/arm64", base_image.docker_archive_ref, f"oci:{work / 'n'}"),
            "not linux/arm64",
        ),
        (("--platform", "linux/arm64", base_image.ref, f"oci:{work / 'n'}"), "linux/arm64"),
        (
            (base_image.ref, f"docker://{registry.get('plain').ref('x/y:1')}", "--dest-creds", "nocolon"),
            "--dest-creds must be USER:PASSWORD",
        ),
        (("dir:/tmp/x", f"oci:{work / 'n'}"), "not a transport"),
        ((f"oci:{work / 'missing'}", f"oci:{work / 'n'}"), "not an OCI image layout"),
        ((f"docker-archive:{work / 'missing.tar'}", f"oci:{work / 'n'}"), "no such file"),
        ((f"docker://{registry.get('plain').ref('nothing/here:1')}", f"oci:{work / 'n'}"), "no such image"),
        (("--all-platforms", "--platform", "linux/amd64", "a", "b"), "not allowed with"),
    ]:
        proc = ocibuild("copy", *args, check=False)
        assert proc.returncode != 0, args
        assert expect in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
    assert not (work / "n").exists()
