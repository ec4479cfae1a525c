"""Image signatures as cosign writes them, so that cosign, skopeo and podman (a ``sigstoreSigned`` policy with
``use-sigstore-attachments``) and admission controllers verify them.

A signature signs a small JSON *payload* (the "simple signing" format: the image's manifest digest and the
repository it was pushed to) with an ECDSA P-256 key, SHA-256, DER-encoded and base64'd. The payloads travel as the
layers of a *signature image* (media type ``application/vnd.dev.cosign.simplesigning.v1+json``, the signature in
the layer's ``dev.cosignproject.cosign/signature`` annotation) tagged ``sha256-<hex>.sig`` beside the image; more
signatures of one image are more layers of it. Keys stay in memory: never logged, never written.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DigestMismatchError, InputError, UsageError
from . import media
from .descriptor import Descriptor, Manifest, canonical_json
from .digest import Digest, Stream, VerifyingReader, read_all
from .image import BlobOrigin, Image, ImageIndex, Layer

PAYLOAD_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PAYLOAD_TYPE = "cosign container image signature"


def signature_tag(digest: Digest) -> str:
    """Where cosign keeps an image's signatures: ``sha256-<hex>.sig`` in the image's repository."""
    return str(digest).replace(":", "-") + ".sig"


def payload(repository: str, digest: Digest) -> bytes:
    """The simple-signing payload for the manifest ``digest`` pushed to ``repository`` (``HOST/PATH``)."""
    doc = {
        "critical": {
            "identity": {"docker-reference": repository},
            "image": {"docker-manifest-digest": str(digest)},
            "type": PAYLOAD_TYPE,
        },
        "optional": None,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Signed:
    """One signature: the payload's bytes and the signature over them (base64 of DER)."""

    payload: bytes
    signature: str

    def layer_descriptor(self) -> Descriptor:
        return Descriptor(
            PAYLOAD_MEDIA_TYPE, Digest.of(self.payload), len(self.payload), {SIGNATURE_ANNOTATION: self.signature}
        )


class Signer:
    """An ECDSA P-256 private key, read from a PEM file (PKCS#8 or SEC1, encrypted or not)."""

    def __init__(self, path: Path, password: str | None):
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        what = f"--sign-key {path}"
        try:
            data = path.read_bytes()
        except OSError as e:
            raise InputError(f"{what}: {e.strerror}") from None
        try:
            key = load_pem_private_key(data, password.encode() if password else None)
        except TypeError:
            raise UsageError(
                f"{what}: the key is encrypted; give its password in $OCIBUILD_SIGN_PASSWORD (or $COSIGN_PASSWORD) "
                "or --sign-password-file"
                if not password
                else f"{what}: the key is not encrypted; give no password"
            ) from None
        except ValueError:
            raise InputError(f"{what}: not a PEM private key, or the password is wrong") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise InputError(f"{what}: not an ECDSA P-256 key (cosign's kind); make one with cosign generate-key-pair")
        self._key = key

    def __repr__(self) -> str:
        return "Signer(<key>)"

    def sign(self, data: bytes) -> Signed:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        return Signed(data, base64.b64encode(self._key.sign(data, ec.ECDSA(hashes.SHA256()))).decode())


def load_public_key(path: Path):
    """A PEM public key (``cosign.pub``), for ``verify``."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        return load_pem_public_key(path.read_bytes())
    except OSError as e:
        raise InputError(f"--key {path}: {e.strerror}") from None
    except ValueError:
        raise InputError(f"--key {path}: not a PEM public key") from None


def verify(signed: Signed, public_key, digest: Digest) -> str | None:
    """Why ``signed`` is not a valid signature of the manifest ``digest`` by ``public_key``; None when it is."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        public_key.verify(base64.b64decode(signed.signature, validate=True), signed.payload, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, TypeError):
        return "the signature does not match the key"
    try:
        signed_digest = json.loads(signed.payload)["critical"]["image"]["docker-manifest-digest"]
    except (ValueError, KeyError, TypeError):
        return "its payload is not a simple-signing payload"
    if signed_digest != str(digest):
        return f"it signs {signed_digest}, not {digest}"
    return None


class PayloadSource:
    """The payloads of some signatures, as the blobs of their signature image (small: kept in memory)."""

    origin: BlobOrigin | None = None

    def __init__(self, signatures: list[Signed]):
        self._blobs = {Digest.of(s.payload): s.payload for s in signatures}

    def open_blob(self, desc: Descriptor) -> Stream:
        return VerifyingReader(io.BytesIO(self._blobs[desc.digest]), desc.digest, desc.size, "signature payload")

    def has_blob(self, desc: Descriptor) -> bool:
        return desc.digest in self._blobs

    def close(self) -> None:
        pass


def signature_image(signatures: list[Signed]) -> Image:
    """The signature image holding ``signatures``, as cosign builds it: an image config whose diff_ids are the
    payloads' digests, one layer per payload, each with its signature in an annotation."""
    source = PayloadSource(signatures)
    layers = [s.layer_descriptor() for s in signatures]
    config = {
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"} for _ in layers],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": [str(d.digest) for d in layers]},
    }
    raw = canonical_json(config)
    manifest = Manifest.build(Descriptor(media.OCI_CONFIG, Digest.of(raw), len(raw)), layers)
    return Image(manifest, raw, tuple(Layer(d, d.digest, source) for d in layers), "signatures")


def is_signature_image(image: Image) -> bool:
    """Whether ``image`` is a cosign signature image (its layers are signed payloads), not something to run."""
    return bool(image.layers) and all(layer.media_type == PAYLOAD_MEDIA_TYPE for layer in image.layers)


def signatures_in(manifest: Manifest, read_payload) -> list[Signed]:
    """The signatures a signature image's manifest lists; ``read_payload(descriptor)`` gives a layer's bytes,
    verified against its digest."""
    out = []
    for desc in manifest.layers:
        sig = desc.annotations.get(SIGNATURE_ANNOTATION)
        if desc.media_type != PAYLOAD_MEDIA_TYPE or not sig:
            continue
        data = read_payload(desc)
        if Digest.of(data) != desc.digest:
            raise DigestMismatchError(f"signature payload {desc.digest.short} does not hash to its digest")
        out.append(Signed(data, sig))
    return out


def signatures_of(entry: Image | ImageIndex) -> list[Signed]:
    """The signatures an entry carries (its signature image's, read from that image's own blobs)."""
    image = entry.signature
    if image is None:
        return []

    def payload(desc: Descriptor) -> bytes:
        with image.open_blob(desc) as f:
            return read_all(f)

    return signatures_in(image.manifest, payload)
