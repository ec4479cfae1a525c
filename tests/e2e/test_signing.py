"""Signed images (issue 13): ``--sign-key`` writes cosign's signature (the simple-signing payload under
``sha256-<hex>.sig``), read here with skopeo and checked as cosign checks it; ``ocibuild verify`` accepts it and
refuses the image unsigned, with another key or copied under another repository; the key and its password never
show. (Debian's skopeo, podman and buildah are built with sigstore verification disabled, so their
``sigstoreSigned`` policy cannot be the check on these machines.)"""

from __future__ import annotations

import json

import pytest

from tests.conftest import run
from tests.e2e.test_package import ocibuild

PASSWORD = "s3cret sign:pass"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    d = tmp_path_factory.mktemp("keys")
    for name in ("cosign", "other"):
        key = ec.generate_private_key(ec.SECP256R1())
        (d / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSWORD.encode())))  # fmt: skip
        (d / f"{name}.pub").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    (d / "password").write_text(PASSWORD + "\n")
    return d


@pytest.fixture(scope="module")
def signed(example_model, base_ref, registry, keys, tmp_path_factory):
    work = tmp_path_factory.mktemp("signing")
    reg = registry.get("plain")
    common = ("package", example_model.model, "--entry-script", example_model.score, "--skip-check", "imports",
              "--base", base_ref, "--cache", work / "cache", "--name", "ridge")  # fmt: skip
    proc = ocibuild(*common, "--push", reg.ref("signed/ridge:1"), "--sign-key", keys / "cosign.key",
                    "--sign-password-file", keys / "password")  # fmt: skip
    ocibuild(*common, "--push", reg.ref("signed/unsigned:1"))
    return {"reg": reg, "work": work, "digest": proc.stdout.split()[-1], "out": proc.stdout + proc.stderr}


def test_the_signature_is_cosigns_and_verifies_as_cosign_checks_it(signed, keys):
    import base64

    import requests
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    reg, digest = signed["reg"], signed["digest"]
    sig_ref = reg.ref("signed/ridge:" + digest.replace(":", "-") + ".sig")
    manifest = json.loads(run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{sig_ref}"]).stdout)
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
    payload = requests.get(f"{reg.url}/v2/signed/ridge/blobs/{layer['digest']}", timeout=30).content
    signature = base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])
    public_key = load_pem_public_key((keys / "cosign.pub").read_bytes())
    public_key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))  # raises InvalidSignature if it is not
    critical = json.loads(payload)["critical"]
    assert critical == {"identity": {"docker-reference": f"{reg.host}/signed/ridge"},
                        "image": {"docker-manifest-digest": digest}, "type": "cosign container image signature"}  # fmt: skip
    config = json.loads(run(["skopeo", "inspect", "--raw", "--config", "--tls-verify=false", f"docker://{sig_ref}"]).stdout)
    assert config["rootfs"]["diff_ids"] == [layer["digest"]]


def test_ocibuild_verify_checks_the_key_and_the_image(signed, keys):
    reg = signed["reg"]
    ok = ocibuild("verify", reg.ref("signed/ridge:1"), "--key", keys / "cosign.pub")
    assert ok.stdout.startswith(f"verified: {signed['digest']} is signed") and "signed/ridge" in ok.stdout
    wrong = ocibuild("verify", reg.ref("signed/ridge:1"), "--key", keys / "other.pub", check=False)
    assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1 and "does not match the key" in wrong.stderr
    unsigned = ocibuild("verify", reg.ref("signed/unsigned:1"), "--key", keys / "cosign.pub", check=False)
    assert unsigned.returncode == 1 and "has no signature" in unsigned.stderr
    # re-tagged: the image and its signature copied as they are into another repository
    sig_tag = signed["digest"].replace(":", "-") + ".sig"
    for tag in ("1", sig_tag):
        run(["skopeo", "copy", "--quiet", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false",
             f"docker://{reg.ref('signed/ridge:' + tag)}", f"docker://{reg.ref('elsewhere/ridge:' + tag)}"])  # fmt: skip
    moved = ocibuild("verify", reg.ref("elsewhere/ridge:1"), "--key", keys / "cosign.pub", check=False)
    assert moved.returncode == 1 and f"signed for {reg.host}/signed/ridge, not {reg.host}/elsewhere/ridge" in moved.stderr


def test_the_key_and_its_password_never_show_and_a_wrong_password_fails_before_the_build(signed, keys, example_model,
                                                                                            base_ref):  # fmt: skip
    key_text = (keys / "cosign.key").read_text()
    assert PASSWORD not in signed["out"] and key_text.splitlines()[1] not in signed["out"]
    (keys / "wrong").write_text("not it\n")
    proc = ocibuild("package", example_model.model, "--entry-script", example_model.score, "--base", base_ref,
                    "--push", signed["reg"].ref("signed/x:1"), "--sign-key", keys / "cosign.key",
                    "--sign-password-file", keys / "wrong", check=False)  # fmt: skip
    assert proc.returncode != 0 and proc.stderr.count("\n") == 1 and "password is wrong" in proc.stderr
    assert "not it" not in proc.stderr and "base:" not in proc.stderr  # it failed before the build began


def test_copy_carries_the_signature_and_the_sbom_to_another_registry_and_through_a_tarball(signed, keys, registry,
                                                                                           tmp_path):  # fmt: skip
    src, digest = signed["reg"], signed["digest"]
    origin = f"{src.host}/signed/ridge"
    sbom = ocibuild("sbom", src.ref("signed/ridge:1")).stdout
    other = registry.get("token")
    dest_args = ["--dest-creds", other.creds]
    mirror = other.ref("mirror/ridge:1")
    assert ocibuild("copy", f"docker://{src.ref('signed/ridge:1')}", f"docker://{mirror}", *dest_args).stdout.split()[-1] == digest
    # air-gapped: registry -> tarball -> registry
    tar = tmp_path / "carried.tar"
    ocibuild("copy", f"docker://{src.ref('signed/ridge:1')}", f"oci-archive:{tar}:1")
    airgap = src.ref("airgap/ridge:1")
    ocibuild("copy", f"oci-archive:{tar}:1", f"docker://{airgap}")
    for ref, creds in ((mirror, ["--creds", other.creds]), (airgap, [])):
        ok = ocibuild("verify", ref, "--key", keys / "cosign.pub", "--signed-for", origin, *creds)
        assert ok.stdout.startswith(f"verified: {digest}"), ok.stdout
        here = ocibuild("verify", ref, "--key", keys / "cosign.pub", *creds, check=False)
        assert here.returncode == 1 and f"signed for {origin}" in here.stderr  # a copy does not re-sign
        assert ocibuild("sbom", ref, *creds).stdout == sbom
    # and --no-referrers leaves them behind
    bare = src.ref("bare/ridge:1")
    ocibuild("copy", "--no-referrers", f"docker://{src.ref('signed/ridge:1')}", f"docker://{bare}")
    assert "has no signature" in ocibuild("verify", bare, "--key", keys / "cosign.pub", check=False).stderr
    assert "no SBOM" in ocibuild("sbom", bare, check=False).stderr
