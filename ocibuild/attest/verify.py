"""``ocibuild verify``: whether an image in a registry carries a valid cosign signature by a given key, made for
the repository it is in (as the containers tools' ``matchRepository`` identity: a signed image copied under
another name, signature and all, is refused)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import OcibuildError, UsageError
from ..oci.digest import Digest
from ..oci.signature import load_public_key, signature_tag, verify
from ..registry.client import RegistryClient
from ..registry.options import RegistryOptions
from ..registry.signatures import read_signatures
from ..registry.transport import Transport
from ..transports.location import Location


class NotSignedError(OcibuildError):
    exit_code = 1


def verify_reference(
    reference: str, key: Path, registry: RegistryOptions, creds: str | None = None, signed_for: str | None = None
) -> str:
    """The line that says who signed the image ``reference`` names; raises ``NotSignedError`` when no signature
    of it verifies with ``key`` for ``signed_for`` (``HOST/REPOSITORY``; default: the one it is in, so a mirror
    names the repository it was signed in)."""
    loc = Location.parse(reference, "image")
    if loc.ref is None:
        raise UsageError(f"{reference}: signatures live in registries; give a registry reference")
    public_key = load_public_key(key)
    registry = registry.for_target(loc.ref.registry, creds)
    client = RegistryClient(Transport(loc.ref.registry, registry), loc.ref.repository)
    try:
        raw, _ = client.get_manifest(loc.ref.reference)
        digest = Digest.of(raw)
        signatures = read_signatures(client, digest)
    finally:
        client.transport.close()
    if not signatures:
        raise NotSignedError(f"{reference}: {digest} has no signature (no {signature_tag(digest)} tag)")
    repository = signed_for or f"{loc.ref.registry}/{loc.ref.repository}"
    problems = []
    for signed in signatures:
        problem = verify(signed, public_key, digest) or _identity_problem(signed, repository)
        if problem is None:
            return f"verified: {digest} is signed by {key} for {repository}"
        problems.append(problem)
    raise NotSignedError(f"{reference}: no signature of {digest} verifies with {key} ({'; '.join(sorted(set(problems)))})")


def _identity_problem(signed, repository: str) -> str | None:
    identity = json.loads(signed.payload)["critical"]["identity"].get("docker-reference")
    return None if identity == repository else f"it was signed for {identity}, not {repository}"
