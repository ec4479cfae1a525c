"""cosign's signature format: keys, payloads, the signature image, and where layouts and archives keep it."""

import dataclasses
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ocibuild.errors import InputError, UsageError
from ocibuild.oci.archive import write_archive
from ocibuild.oci.descriptor import Platform
from ocibuild.oci.empty import empty_image
from ocibuild.oci.image import Tagged
from ocibuild.oci.layout import write_layout
from ocibuild.oci.name import ImageName
from ocibuild.oci.signature import (
    PAYLOAD_MEDIA_TYPE,
    SIGNATURE_ANNOTATION,
    Signer,
    payload,
    signature_image,
    signature_tag,
    signatures_of,
    verify,
)
from ocibuild.transports.location import Location
from ocibuild.transports.open import open_location, open_signature


def _key(tmp_path, name="k", password=None, curve=None):
    key = ec.generate_private_key(curve or ec.SECP256R1())
    encryption = serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
    path = tmp_path / f"{name}.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    return path, key.public_key()


def test_a_signature_verifies_for_its_digest_and_key_only(tmp_path):
    path, public = _key(tmp_path, password="pw")
    _, other = _key(tmp_path, "other")
    image = empty_image(Platform("linux", "amd64"))
    signed = Signer(path, "pw").sign(payload("registry.example/team/ridge", image.digest))
    assert verify(signed, public, image.digest) is None
    assert verify(signed, other, image.digest) == "the signature does not match the key"
    another = empty_image(Platform("linux", "arm64")).digest
    assert verify(signed, public, another) == f"it signs {image.digest}, not {another}"
    critical = json.loads(signed.payload)["critical"]
    assert critical["identity"]["docker-reference"] == "registry.example/team/ridge"
    assert critical["type"] == "cosign container image signature"


@pytest.mark.parametrize(
    ("password", "given", "error", "text"),
    [
        ("pw", None, UsageError, "the key is encrypted; give its password"),
        ("pw", "n0t-th1s-0ne", InputError, "the password is wrong"),
        (None, "pw", UsageError, "the key is not encrypted"),
    ],
)
def test_key_and_password_mistakes_are_one_line_without_the_password(tmp_path, password, given, error, text):
    path, _ = _key(tmp_path, password=password)
    with pytest.raises(error, match=text) as e:
        Signer(path, given)
    assert "\n" not in str(e.value) and (given is None or given not in str(e.value))


def test_only_an_ecdsa_p256_key_signs(tmp_path):
    path, _ = _key(tmp_path, curve=ec.SECP384R1())
    with pytest.raises(InputError, match="not an ECDSA P-256 key"):
        Signer(path, None)
    rsa_path = tmp_path / "rsa.key"
    rsa_path.write_bytes(rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    with pytest.raises(InputError, match="not an ECDSA P-256 key"):
        Signer(rsa_path, None)
    (tmp_path / "junk.key").write_text("not a key")
    with pytest.raises(InputError, match="not a PEM private key"):
        Signer(tmp_path / "junk.key", None)
    assert "key" not in repr(Signer(_key(tmp_path, "ok")[0], None)).replace("<key>", "")


def test_the_signature_image_is_cosigns_and_travels_in_layouts_and_archives(tmp_path):
    path, public = _key(tmp_path)
    image = empty_image(Platform("linux", "amd64"))
    signed = Signer(path, None).sign(payload("registry.example/team/ridge", image.digest))
    sig_image = signature_image([signed])
    (layer,) = sig_image.manifest.layers
    assert layer.media_type == PAYLOAD_MEDIA_TYPE and layer.annotations[SIGNATURE_ANNOTATION] == signed.signature
    assert json.loads(sig_image.config_raw)["rootfs"]["diff_ids"] == [str(layer.digest)]
    carried = dataclasses.replace(image, signature=sig_image)
    write_layout([Tagged(carried, ImageName.tag("1"))], tmp_path / "layout")
    write_archive([Tagged(carried, ImageName.parse("ridge:1"))], tmp_path / "image.tar")
    for where in (f"oci:{tmp_path / 'layout'}", f"oci-archive:{tmp_path / 'image.tar'}"):
        loc = Location.parse(where)
        assert open_location(loc).digest == image.digest  # the signature is never taken for the image
        found = open_signature(loc, image.digest)
        assert found is not None and found.digest == sig_image.digest
        (back,) = signatures_of(dataclasses.replace(image, signature=found))
        assert back == signed and verify(back, public, image.digest) is None
    names = [m["annotations"]["org.opencontainers.image.ref.name"]
             for m in json.loads((tmp_path / "layout" / "index.json").read_text())["manifests"]]  # fmt: skip
    assert names == ["1", signature_tag(image.digest)]
