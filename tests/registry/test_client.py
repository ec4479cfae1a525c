"""The registry client against a real ``docker-registry`` (behind the tests' recording proxy).

The proxy plays the parts real deployments add in front of registries: an ingress with a body-size limit (413),
a flapping backend (503), a rate limiter (429 + Retry-After). Pure retry arithmetic is tested without a network.
"""

from __future__ import annotations

import email.utils
import json
import time

import pytest
import requests

from ocibuild.errors import DigestMismatchError, InputError
from ocibuild.oci import media
from ocibuild.oci.descriptor import Index, Platform, canonical_json
from ocibuild.oci.digest import Digest, read_all
from ocibuild.oci.name import parse_reference
from ocibuild.oci.store import BlobStore
from ocibuild.registry.client import MIN_CHUNK, RegistryClient
from ocibuild.registry.credentials import Credentials
from ocibuild.registry.errors import TransientError
from ocibuild.registry.options import RegistryOptions, RetryPolicy, retry_after_seconds, retry_delay
from ocibuild.registry.push import push_image
from ocibuild.registry.source import open_registry_image
from ocibuild.registry.transport import Transport, is_loopback
from tests.registry.images import FAST, make_image, repo
from tests.registry.servers import Fault

# --- arithmetic, no network ----------------------------------------------------------------------------------------


def test_retry_after_seconds():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    now = time.time()
    assert 29 <= retry_after_seconds(email.utils.formatdate(now + 30, usegmt=True), now) <= 31
    assert retry_after_seconds(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0


def test_retry_delay_backs_off_and_honours_retry_after():
    p = RetryPolicy(backoff=0.5, max_backoff=4)
    assert [retry_delay(a, None, p) for a in (1, 2, 3, 4, 5)] == [0.5, 1, 2, 4, 4]
    assert retry_delay(1, "3", p) == 3.0  # the registry asks for longer: wait that long
    assert retry_delay(3, "1", p) == 2.0  # never shorter than our own backoff


@pytest.mark.parametrize(
    "host,loop",
    [("localhost:5000", True), ("127.0.0.1", True), ("127.8.9.1:80", True), ("[::1]:5000", True),
     ("::1", True), ("10.0.0.1:5000", False), ("registry.example.com", False), ("localhost.evil.com", False)],
)  # fmt: skip
def test_is_loopback(host, loop):
    assert is_loopback(host) is loop


# --- against the real registry ------------------------------------------------------------------------------------


@pytest.fixture
def plain(registry):
    reg = registry.get("plain")
    reg.proxy.reset()
    yield reg
    reg.proxy.reset()


def client_for(reg, repository: str, push=True, options=FAST) -> RegistryClient:
    return RegistryClient(Transport(reg.host, options), repository, push=push)


def test_monolithic_upload_is_one_streamed_put(plain, tmp_path):
    image = make_image(BlobStore(tmp_path), [3 << 20])
    layer = image.layers[0]
    client = client_for(plain, repo())
    how = client.upload_blob(layer, lambda: image.open_blob(layer), lambda n: None)
    assert how == "monolithic"
    puts = [r for r in plain.proxy.snapshot() if r.method == "PUT"]
    assert [r.body_bytes for r in puts] == [layer.size] and puts[0].status == 201
    with client.open_blob(layer) as f:
        assert Digest.of(read_all(f)) == layer.digest


def test_chunked_fallback_when_an_ingress_refuses_large_bodies(plain, tmp_path):
    size = 2 * MIN_CHUNK + 12345
    image = make_image(BlobStore(tmp_path), [size])
    layer = image.layers[0]
    plain.proxy.max_body = MIN_CHUNK + (1 << 20)  # like nginx's client_max_body_size
    client = client_for(plain, repo())
    seen = []
    assert client.upload_blob(layer, lambda: image.open_blob(layer), seen.append) == "chunked"
    records = plain.proxy.snapshot()
    assert [(r.method, r.status) for r in records if r.method in ("PUT", "PATCH")] == [
        ("PUT", 413), ("PATCH", 202), ("PATCH", 202), ("PATCH", 202), ("PUT", 201)
    ]  # fmt: skip
    assert [r.body_bytes for r in records if r.method == "PATCH"] == [MIN_CHUNK, MIN_CHUNK, 12345]
    assert seen[-1] == size
    assert client.has_blob(layer.digest)


def test_503_with_retry_after_is_waited_for_then_succeeds(plain):
    client = client_for(plain, repo(), push=False)
    plain.proxy.faults.append(Fault("HEAD", "/blobs/", 503, {"Retry-After": "1"}))
    start = time.monotonic()
    assert client.has_blob(Digest.of(b"nothing")) is False
    assert 1.0 <= time.monotonic() - start < 3
    assert [r.status for r in plain.proxy.snapshot() if r.method == "HEAD"] == [503, 404]


def test_retry_after_beyond_the_time_budget_fails_at_once(plain):
    client = client_for(plain, repo(), push=False)
    plain.proxy.faults.append(Fault("HEAD", "/blobs/", 429, {"Retry-After": "3600"}, times=10))
    start = time.monotonic()
    with pytest.raises(TransientError, match="limiting requests \\(HTTP 429\\)"):
        client.has_blob(Digest.of(b"x"))
    assert time.monotonic() - start < 2


def test_retries_are_bounded_in_count(plain):
    client = client_for(plain, repo(), push=False)
    plain.proxy.faults.append(Fault("HEAD", "/blobs/", 502, times=100))
    with pytest.raises(TransientError, match="HTTP 502"):
        client.has_blob(Digest.of(b"x"))
    assert len([r for r in plain.proxy.snapshot() if r.method == "HEAD"]) == FAST.retry.attempts


def test_failed_streamed_upload_is_started_over(plain, tmp_path):
    image = make_image(BlobStore(tmp_path), [1 << 20, 2 << 20])
    plain.proxy.faults.append(Fault("PUT", "/blobs/uploads/", 503))  # a streamed body is not re-sent blindly
    ref = parse_reference(plain.ref(f"{repo()}:1"))
    assert push_image(image, ref, FAST) == image.digest
    records = plain.proxy.snapshot()
    assert len([r for r in records if r.method == "POST"]) == len(image.descriptors()) + 1
    for desc in image.descriptors():
        assert client_for(plain, ref.repository).has_blob(desc.digest)


def test_manifest_is_pushed_as_its_exact_bytes_with_its_own_media_type(plain, tmp_path):
    image = make_image(BlobStore(tmp_path), [100], media_type=media.DOCKER_MANIFEST, pretty=True)
    assert image.manifest.raw != canonical_json(json.loads(image.manifest.raw))  # not what a re-encoder sends
    ref = parse_reference(plain.ref(f"{repo()}:v1"))
    assert push_image(image, ref, FAST, tags=["extra"]) == Digest.of(image.manifest.raw)
    for tag in ("v1", "extra"):
        r = requests.get(f"{plain.url}/v2/{ref.repository}/manifests/{tag}",
                         headers={"Accept": media.DOCKER_MANIFEST}, timeout=10)  # fmt: skip
        assert r.content == image.manifest.raw
        assert r.headers["Content-Type"] == media.DOCKER_MANIFEST
        assert r.headers["Docker-Content-Digest"] == image.digest


def test_pull_from_an_index_chooses_the_platform(plain, tmp_path):
    store = BlobStore(tmp_path / "src")
    images = {arch: make_image(store, [1000], arch=arch) for arch in ("amd64", "arm64")}
    name = repo()
    for arch, image in images.items():
        push_image(image, parse_reference(plain.ref(f"{name}:{arch}")), FAST)
    index = Index.build(
        [img.manifest.descriptor(platform=Platform("linux", arch)) for arch, img in images.items()]
    )
    client_for(plain, name).put_manifest("multi", index.raw, index.media_type)
    cache = BlobStore(tmp_path / "cache")
    ref = parse_reference(plain.ref(f"{name}:multi"))
    got = open_registry_image(ref, Platform("linux", "arm64"), FAST, cache)
    assert got.digest == images["arm64"].digest and got.platform == Platform("linux", "arm64")
    with pytest.raises(
        InputError, match="no image for platform linux/s390x; it has: linux/amd64, linux/arm64"
    ):
        open_registry_image(ref, Platform("linux", "s390x"), FAST, cache)


def test_pulled_blobs_enter_the_store_once_verified_and_are_served_from_it(plain, tmp_path):
    image = make_image(BlobStore(tmp_path / "src"), [200_000])
    ref = parse_reference(plain.ref(f"{repo()}:1"))
    push_image(image, ref, FAST)
    plain.proxy.reset()
    cache = BlobStore(tmp_path / "cache")
    pulled = open_registry_image(ref, Platform(), FAST, cache)
    layer = pulled.layers[0]
    assert not cache.has(layer.digest)  # layers are pulled when first opened, not before
    for _ in range(2):
        with pulled.open_blob(layer) as f:
            assert Digest.of(read_all(f)) == layer.digest
    gets = [r.path for r in plain.proxy.snapshot() if r.method == "GET" and "/blobs/" in r.path]
    assert gets.count(f"/v2/{ref.repository}/blobs/{layer.digest}") == 1


def test_a_corrupt_blob_in_the_registry_never_enters_the_store(plain, tmp_path):
    image = make_image(BlobStore(tmp_path / "src"), [50_000])
    ref = parse_reference(plain.ref(f"{repo()}:1"))
    push_image(image, ref, FAST)
    layer = image.layers[0]
    data = (
        plain.dir / "data/docker/registry/v2/blobs/sha256" / layer.digest.hex[:2] / layer.digest.hex / "data"
    )
    blob = bytearray(data.read_bytes())
    blob[100] ^= 0xFF  # same size, different content: only the digest can tell
    data.write_bytes(bytes(blob))
    cache = BlobStore(tmp_path / "cache")
    pulled = open_registry_image(ref, Platform(), FAST, cache)
    with pytest.raises(DigestMismatchError):
        pulled.open_blob(layer)
    assert not cache.has(layer.digest)
    assert not list((cache.root / "tmp").iterdir())


def test_manifest_by_digest_is_verified(plain, tmp_path):
    image = make_image(BlobStore(tmp_path), [10])
    ref = parse_reference(plain.ref(f"{repo()}:1"))
    push_image(image, ref, FAST)
    raw, mt = client_for(plain, ref.repository, push=False).get_manifest(image.digest)
    assert raw == image.manifest.raw and mt == media.OCI_MANIFEST


def test_a_corrupt_local_blob_is_not_pushed(plain, tmp_path):
    store = BlobStore(tmp_path)
    image = make_image(store, [300_000])
    layer = image.layers[0]
    data = bytearray(store.path(layer.digest).read_bytes())
    data[-1] ^= 0xFF
    store.path(layer.digest).write_bytes(bytes(data))
    ref = parse_reference(plain.ref(f"{repo()}:1"))
    # Caught by whoever hashes first: the reader (a verified source) or the registry (DIGEST_INVALID).
    with pytest.raises(DigestMismatchError, match=layer.digest.short):
        push_image(image, ref, FAST)
    assert not client_for(plain, ref.repository).has_blob(layer.digest)
    assert not [r for r in plain.proxy.snapshot() if "/manifests/" in r.path]  # no manifest without its blobs


def test_insecure_reaches_a_tls_registry_without_its_ca_and_says_nothing(registry, tmp_path, capfd):
    reg = registry.get("basic")
    options = RegistryOptions(insecure=True, retry=FAST.retry).with_credentials(
        reg.host, Credentials(reg.user, reg.password)
    )
    image = make_image(BlobStore(tmp_path), [100])
    assert push_image(image, parse_reference(reg.ref(f"{repo()}:1")), options) == image.digest
    assert "Warning" not in capfd.readouterr().err
