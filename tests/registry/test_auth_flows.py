"""Authentication against the real registry with the tests' token server: which scopes are asked for, that tokens
are reused, Docker's ``identitytoken`` (OAuth2 refresh-token grant), and Basic over TLS."""

from __future__ import annotations

import base64
import dataclasses
import json

import pytest

from ocibuild.oci.descriptor import Platform
from ocibuild.oci.name import parse_reference
from ocibuild.oci.store import BlobStore
from ocibuild.registry.credentials import Credentials
from ocibuild.registry.errors import AuthenticationError
from ocibuild.registry.options import RegistryOptions
from ocibuild.registry.push import push_image
from ocibuild.registry.source import open_registry_image
from ocibuild.settings import Settings
from tests.conftest import REGISTRY_REFRESH_TOKEN
from tests.registry.images import FAST, make_image, repo


@pytest.fixture
def token(registry):
    reg = registry.get("token")
    reg.tokens.reset()
    return reg


@pytest.fixture
def no_stored_credentials(tmp_path, monkeypatch):
    for var in ("REGISTRY_AUTH_FILE", "OCIBUILD_REGISTRY_USER", "OCIBUILD_REGISTRY_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    return tmp_path / "docker" / "config.json"


def from_environment(options: RegistryOptions = FAST) -> RegistryOptions:
    """``options`` looking up stored credentials where the environment (HOME, DOCKER_CONFIG, ...) says."""
    return dataclasses.replace(options, auth_files=Settings.from_environ().registry_options().auth_files)


def with_creds(reg, options: RegistryOptions = FAST) -> RegistryOptions:
    return options.with_credentials(reg.host, Credentials(reg.user, reg.password))


def test_push_asks_pull_push_once_and_reuses_the_token(token, tmp_path, no_stored_credentials):
    image = make_image(BlobStore(tmp_path), [1000, 2000, 3000, 4000])
    name = repo()
    push_image(image, parse_reference(token.ref(f"{name}:1")), with_creds(token))
    # Five blobs pushed by four threads, one manifest: one grant, for pull and push of that repository.
    assert [(r.account, r.scopes) for r in token.tokens.requests] == [
        (token.user, [f"repository:{name}:pull,push"])
    ]


def test_pull_asks_pull_only(token, tmp_path, no_stored_credentials):
    image = make_image(BlobStore(tmp_path / "a"), [1000])
    name = repo()
    push_image(image, parse_reference(token.ref(f"{name}:1")), with_creds(token))
    token.tokens.reset()
    pulled = open_registry_image(
        parse_reference(token.ref(f"{name}:1")), Platform(), with_creds(token), BlobStore(tmp_path / "b")
    )
    pulled.open_blob(pulled.layers[0]).close()
    assert token.tokens.scopes_asked() == [f"repository:{name}:pull"]


def test_docker_identity_token_is_traded_with_a_refresh_grant(token, tmp_path, no_stored_credentials):
    image = make_image(BlobStore(tmp_path / "a"), [1000])
    ref = parse_reference(token.ref(f"{repo()}:1"))
    push_image(image, ref, with_creds(token))
    token.tokens.reset()
    no_stored_credentials.parent.mkdir()
    no_stored_credentials.write_text(json.dumps({"auths": {token.host: {
        "auth": base64.b64encode(b"<token>:").decode(), "identitytoken": REGISTRY_REFRESH_TOKEN}}}))  # fmt: skip
    pulled = open_registry_image(ref, Platform(), from_environment(), BlobStore(tmp_path / "b"))
    assert pulled.digest == image.digest
    assert [(r.account, r.granted) for r in token.tokens.requests] == [(token.user, True)]


def test_stored_credentials_are_used_and_wrong_ones_named(token, tmp_path, no_stored_credentials):
    no_stored_credentials.parent.mkdir()
    no_stored_credentials.write_text(json.dumps({"auths": {token.host: {
        "auth": base64.b64encode(f"{token.user}:wrong".encode()).decode()}}}))  # fmt: skip
    image = make_image(BlobStore(tmp_path), [10])
    with pytest.raises(AuthenticationError) as e:
        push_image(image, parse_reference(token.ref(f"{repo()}:1")), from_environment())
    assert f"user {token.user} (from {no_stored_credentials})" in str(e.value)
    assert "wrong" not in str(e.value)


def test_basic_auth_over_tls_with_the_ca(registry, tmp_path, no_stored_credentials):
    reg = registry.get("basic")
    options = with_creds(reg, RegistryOptions(ca_cert=reg.tls.ca_cert, retry=FAST.retry))
    image = make_image(BlobStore(tmp_path / "a"), [5000])
    ref = parse_reference(reg.ref(f"{repo()}:1"))
    assert push_image(image, ref, options) == image.digest
    pulled = open_registry_image(ref, Platform(), options, BlobStore(tmp_path / "b"))
    assert pulled.digest == image.digest
    with pytest.raises(AuthenticationError, match="authentication required"):
        open_registry_image(
            ref, Platform(), RegistryOptions(ca_cert=reg.tls.ca_cert), BlobStore(tmp_path / "c")
        )
