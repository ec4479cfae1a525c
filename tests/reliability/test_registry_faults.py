"""Issue 6, part 1: a flaky registry never yields a corrupt image, a manifest without its blobs, or a poisoned cache.

The tests' own fault-injecting proxy (``tests.registry.servers.RecordingProxy`` with ``Fault`` actions) sits in
front of the real ``docker-registry`` and drops connections mid-upload and mid-download, answers 500/502/503, 429
with ``Retry-After``, stalls past our read timeout, and cuts short or alters blob bodies. Each push or pull either
succeeds through bounded retries (a fault injected a few times, then cleared), or fails with one clear line within
a bounded time. Every test asserts that the fault really was injected, so none can pass by missing it.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from ocibuild.errors import DigestMismatchError, OcibuildError
from ocibuild.oci import media
from ocibuild.oci.descriptor import Platform
from ocibuild.oci.digest import Digest, read_all
from ocibuild.oci.image import Image
from ocibuild.oci.name import Reference, parse_reference
from ocibuild.oci.store import BlobStore
from ocibuild.registry.errors import TransientError
from ocibuild.registry.options import RegistryOptions, RetryPolicy
from ocibuild.registry.push import push_image
from ocibuild.registry.source import open_registry_image
from tests.conftest import BASE_REPO, EXAMPLE_DIR, run
from tests.registry.images import make_image, repo
from tests.registry.servers import Fault, Record, RecordingProxy

# Short waits and a 1 s read timeout, so that a stalled registry is given up on quickly.
OPTS = RegistryOptions(
    retry=RetryPolicy(backoff=0.05, max_backoff=0.2, connect_timeout=2.0, read_timeout=1.0, budget=20.0)
)
BOUND = 60.0  # seconds any push or pull may take, fault or not
LAYERS = [300_000, 1 << 20]


@pytest.fixture(scope="module")
def upstream(registry):
    """The real plain-HTTP registry (its own recording proxy is not used here: ours goes in front of it)."""
    return registry.get("plain")


@pytest.fixture(scope="module")
def _proxy(upstream):
    p = RecordingProxy(upstream.proxy.upstream_port)
    yield p
    p.stop()


@pytest.fixture
def proxy(_proxy):
    _proxy.reset()
    yield _proxy
    _proxy.reset()


def direct(upstream) -> str:
    """The registry itself, past every proxy: what a healthy client would see."""
    return f"http://127.0.0.1:{upstream.proxy.upstream_port}"


def timed(fn, *args, **kwargs):
    start = time.monotonic()
    try:
        return fn(*args, **kwargs), time.monotonic() - start
    except Exception as e:
        e.seconds = time.monotonic() - start
        raise


def assert_one_line(e: BaseException, *needles: str) -> None:
    text = str(e)
    assert isinstance(e, OcibuildError), repr(e)
    assert "\n" not in text and len(text) < 400, text
    for needle in needles:
        assert needle in text, text
    assert e.seconds < BOUND, f"took {e.seconds:.1f} s: {text}"


def confirmed(record: Record) -> str | None:
    """The blob digest a request's answer proved present in the repository: HEAD 200, an upload's final PUT
    201, or a mount 201."""
    url = urlsplit(record.path)
    query = parse_qs(url.query)
    if record.method == "HEAD" and record.status == 200 and "/blobs/" in url.path:
        return url.path.rsplit("/", 1)[-1]
    if record.method == "PUT" and record.status == 201 and "/blobs/uploads/" in url.path:
        return query.get("digest", [None])[0]
    if record.method == "POST" and record.status == 201:
        return query.get("mount", [None])[0]
    return None


def assert_manifest_after_blobs(records: list[Record], image: Image) -> None:
    """Every manifest PUT the proxy saw arrived after an answer confirming each blob it references."""
    puts = [r for r in records if r.method == "PUT" and "/manifests/" in r.path]
    assert puts, "no manifest was pushed"
    needed = {str(d.digest) for d in image.descriptors()}
    for put in puts:
        before = {confirmed(r) for r in records if r.answered < put.arrived}
        assert needed <= before, f"manifest PUT before blobs {needed - before} were confirmed"


def assert_pushed(upstream, ref: Reference, image: Image) -> None:
    """The registry itself serves the manifest's exact bytes and every blob it names."""
    base = direct(upstream)
    r = requests.get(
        f"{base}/v2/{ref.repository}/manifests/{ref.tag}", headers={"Accept": media.OCI_MANIFEST}, timeout=10
    )
    assert r.status_code == 200 and r.content == image.manifest.raw
    for d in image.descriptors():
        assert requests.head(f"{base}/v2/{ref.repository}/blobs/{d.digest}", timeout=10).status_code == 200


def assert_not_tagged(upstream, ref: Reference) -> None:
    r = requests.get(f"{direct(upstream)}/v2/{ref.repository}/manifests/{ref.tag}", timeout=10)
    assert r.status_code == 404, r.status_code


def new_push(proxy, tmp_path) -> tuple[Image, Reference]:
    return make_image(BlobStore(tmp_path / "src"), LAYERS), parse_reference(f"{proxy.host}/{repo()}:1")


def assert_all_injected(*faults: Fault) -> None:
    for f in faults:
        assert f.times == 0 and f.injected > 0, f"fault not injected as planned: {f}"


# --- push: transient faults are retried, within bounds ----------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503])
def test_push_retries_5xx_at_every_step(proxy, upstream, tmp_path, status):
    image, ref = new_push(proxy, tmp_path)
    faults = [
        Fault("HEAD", "/blobs/sha256:", status, times=2),
        Fault("POST", "/blobs/uploads/", status, times=2),
        Fault("PUT", "/blobs/uploads/", status, times=2),  # a streamed body: the whole upload starts over
        Fault("PUT", "/manifests/", status, times=2),
    ]
    proxy.inject(*faults)
    digest, seconds = timed(push_image, image, ref, OPTS)
    assert digest == image.digest and seconds < BOUND
    assert_all_injected(*faults)
    assert_manifest_after_blobs(proxy.snapshot(), image)
    assert_pushed(upstream, ref, image)


def test_push_waits_as_long_as_retry_after_says(proxy, upstream, tmp_path):
    image, ref = new_push(proxy, tmp_path)
    faults = [
        Fault("POST", "/blobs/uploads/", 429, {"Retry-After": "1"}),
        Fault("PUT", "/blobs/uploads/", 429, {"Retry-After": "2"}),  # mid-stream: the upload is started over
        Fault("PUT", "/manifests/", 429, {"Retry-After": "1"}),
    ]
    proxy.inject(*faults)
    digest, seconds = timed(push_image, image, ref, OPTS)
    assert digest == image.digest
    assert 3.0 <= seconds < BOUND  # 2 s (at least) for the blobs, then 1 s for the manifest: never sooner
    assert_all_injected(*faults)
    assert_manifest_after_blobs(proxy.snapshot(), image)
    assert_pushed(upstream, ref, image)


def test_push_survives_connections_dropped_mid_upload(proxy, upstream, tmp_path):
    image, ref = new_push(proxy, tmp_path)
    faults = [
        Fault("PUT", "/blobs/uploads/", action="drop", after=64 << 10, times=2),
        Fault("PATCH", "/blobs/uploads/", action="drop", after=1000),  # the chunked fallback, too
        Fault("PUT", "/manifests/", action="drop"),
    ]
    proxy.inject(*faults)
    digest, seconds = timed(push_image, image, ref, OPTS)
    assert digest == image.digest and seconds < BOUND
    assert_all_injected(*faults)
    records = proxy.snapshot()
    dropped = [r for r in records if r.fault == "drop" and "/blobs/" in r.path]
    assert dropped and all(r.status == 0 and r.body_bytes <= 64 << 10 for r in dropped)  # mid-body, really
    assert_manifest_after_blobs(records, image)
    assert_pushed(upstream, ref, image)


def test_push_gives_up_on_a_stall_and_tries_again(proxy, upstream, tmp_path):
    image, ref = new_push(proxy, tmp_path)
    faults = [
        Fault("HEAD", "/blobs/sha256:", action="stall", seconds=60),
        Fault("PUT", "/blobs/uploads/", action="stall", seconds=60),
        Fault("PUT", "/manifests/", action="stall", seconds=60),
    ]
    proxy.inject(*faults)
    digest, seconds = timed(push_image, image, ref, OPTS)
    assert digest == image.digest
    assert seconds < 30  # our read timeout ended each stall, long before the proxy would have
    assert_all_injected(*faults)
    assert_manifest_after_blobs(proxy.snapshot(), image)
    assert_pushed(upstream, ref, image)


# --- push: faults that do not clear fail in bounded time, with no manifest ------------------------------------------

BLOB_FAULTS = {
    "503 on every upload": [Fault("PUT", "/blobs/uploads/", 503, times=10**6),
                            Fault("PATCH", "/blobs/uploads/", 503, times=10**6)],
    "429 asking for an hour": [Fault("POST", "/blobs/uploads/", 429, {"Retry-After": "3600"}, times=10**6)],
    "every upload dropped": [Fault("PUT", "/blobs/uploads/", action="drop", times=10**6),
                             Fault("PATCH", "/blobs/uploads/", action="drop", times=10**6)],
    "every check dropped": [Fault("HEAD", "/blobs/", action="drop", times=10**6)],
}  # fmt: skip


@pytest.mark.parametrize("name", BLOB_FAULTS)
def test_push_with_failing_blob_uploads_fails_fast_and_pushes_no_manifest(proxy, upstream, tmp_path, name):
    image, ref = new_push(proxy, tmp_path)
    faults = [replace(f) for f in BLOB_FAULTS[name]]  # fresh counters
    proxy.inject(*faults)
    with pytest.raises(TransientError) as e:
        timed(push_image, image, ref, OPTS)
    assert_one_line(e.value, ref.registry, "try again")
    assert any(f.injected for f in faults)
    assert not [r for r in proxy.snapshot() if "/manifests/" in r.path]  # never seen, not even refused
    assert_not_tagged(upstream, ref)


@pytest.mark.slow
def test_push_to_a_registry_that_stalls_every_upload_fails_in_bounded_time(proxy, upstream, tmp_path):
    image, ref = new_push(proxy, tmp_path)
    faults = [Fault(m, "/blobs/uploads/", action="stall", seconds=120, times=10**6) for m in ("PUT", "PATCH")]
    proxy.inject(*faults)
    with pytest.raises(TransientError) as e:
        timed(push_image, image, ref, OPTS)
    assert_one_line(e.value, ref.registry, "timed out")
    assert all(f.injected for f in faults)
    assert not [r for r in proxy.snapshot() if "/manifests/" in r.path]
    assert_not_tagged(upstream, ref)


@pytest.mark.parametrize(
    "fault,needle",
    [(Fault("PUT", "/manifests/", 502, times=10**6), "HTTP 502"),
     (Fault("PUT", "/manifests/", 429, {"Retry-After": "3600"}, times=10**6), "HTTP 429"),
     (Fault("PUT", "/manifests/", action="stall", seconds=120, times=10**6), "timed out")],
    ids=["502", "429", "stall"],
)  # fmt: skip
def test_push_whose_manifest_is_refused_fails_fast_after_its_blobs(proxy, upstream, tmp_path, fault, needle):
    image, ref = new_push(proxy, tmp_path)
    fault = replace(fault)
    proxy.inject(fault)
    with pytest.raises(TransientError) as e:
        timed(push_image, image, ref, OPTS)
    assert_one_line(e.value, ref.registry, needle)
    assert fault.injected
    assert_manifest_after_blobs(proxy.snapshot(), image)
    assert_not_tagged(upstream, ref)


# --- pull ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def pushed(proxy, upstream, tmp_path):
    """An image in the registry, pushed past the proxy, and a fresh cache to pull it into."""
    image, ref = new_push(proxy, tmp_path)
    push_image(image, ref, OPTS)
    proxy.reset()
    return image, ref, BlobStore(tmp_path / "cache")


def pull(ref: Reference, store: BlobStore) -> Image:
    """What a build does with a registry base: the manifest and config, then every layer into the store."""
    image = open_registry_image(ref, Platform(), OPTS, store)
    for layer in image.layers:
        with image.open_blob(layer) as f:
            assert Digest.of(read_all(f)) == layer.digest
    return image


def assert_store_clean(store: BlobStore) -> None:
    """Every blob in the store hashes to its name, and no temp file is left."""
    for p in (store.root / "blobs" / "sha256").iterdir():
        assert Digest.of(p.read_bytes()).hex == p.name, f"poisoned cache: {p.name}"
    assert not list((store.root / "tmp").iterdir())


PULL_TRANSIENT = {
    "503 then 500 on blobs": [Fault("GET", "/blobs/", 503, times=2), Fault("GET", "/blobs/", 500, times=2)],
    "502 on the manifest": [Fault("GET", "/manifests/", 502, times=2)],
    "429 with Retry-After": [Fault("GET", "/blobs/", 429, {"Retry-After": "1"})],
    "dropped before the answer": [Fault("GET", "/blobs/", action="drop"), Fault("GET", "/manifests/", action="drop")],
    "dropped mid-download": [Fault("GET", "/blobs/", action="cut", times=2),
                             Fault("GET", "/manifests/", action="cut")],
    "stalled mid-download": [Fault("GET", "/blobs/", action="stall", seconds=60),
                             Fault("GET", "/manifests/", action="stall", seconds=60)],
}  # fmt: skip


@pytest.mark.parametrize("name", PULL_TRANSIENT)
def test_pull_retries_transient_faults(proxy, pushed, name):
    image, ref, store = pushed
    faults = [replace(f) for f in PULL_TRANSIENT[name]]
    proxy.inject(*faults)
    got, seconds = timed(pull, ref, store)
    assert got.digest == image.digest and seconds < 30
    assert_all_injected(*faults)
    for layer in image.layers:
        assert store.has(layer.digest)
    assert_store_clean(store)


@pytest.mark.parametrize("action", ["truncate", "corrupt"])
def test_a_truncated_or_altered_download_never_enters_the_cache(proxy, pushed, action):
    image, ref, store = pushed
    layer = max(image.layers, key=lambda d: d.size)
    fault = Fault("GET", f"/blobs/{layer.digest}", action=action)
    proxy.inject(fault)
    with pytest.raises(DigestMismatchError) as e:
        timed(pull, ref, store)
    assert_one_line(e.value, layer.digest.short)
    assert fault.injected == 1
    assert not store.has(layer.digest) and not store.path(layer.digest).exists()
    assert_store_clean(store)
    assert pull(ref, store).digest == image.digest  # the next pull, through a healthy proxy, succeeds
    assert store.has(layer.digest)
    assert_store_clean(store)


def test_an_altered_manifest_is_rejected(proxy, pushed):
    image, ref, store = pushed
    fault = Fault("GET", "/manifests/", action="corrupt")
    proxy.inject(fault)
    with pytest.raises(DigestMismatchError) as e:
        timed(pull, ref, store)
    assert_one_line(e.value, "altered")
    assert fault.injected == 1
    assert pull(ref, store).digest == image.digest


PULL_PERSISTENT = {
    "503": (Fault("GET", "/blobs/", 503, times=10**6), "HTTP 503"),
    "429 asking for an hour": (Fault("GET", "/blobs/", 429, {"Retry-After": "3600"}, times=10**6), "HTTP 429"),
    "dropped mid-download": (Fault("GET", "/blobs/", action="cut", times=10**6), "broke off"),
    "stalled": (Fault("GET", "/blobs/", action="stall", seconds=120, times=10**6), "timed out"),
    "stalled manifest": (Fault("GET", "/manifests/", action="stall", seconds=120, times=10**6), "timed out"),
}  # fmt: skip


@pytest.mark.parametrize("name", PULL_PERSISTENT)
def test_pull_from_a_failing_registry_fails_fast_and_caches_nothing_wrong(proxy, pushed, name):
    image, ref, store = pushed
    fault, needle = PULL_PERSISTENT[name]
    fault = replace(fault)
    proxy.inject(fault)
    with pytest.raises(TransientError) as e:
        timed(pull, ref, store)
    assert_one_line(e.value, ref.registry, needle)
    assert fault.injected
    for layer in image.layers:
        assert not store.has(layer.digest)
    assert_store_clean(store)
    proxy.reset()
    assert pull(ref, store).digest == image.digest


# --- the CLI: a registry base and a push, through the same faults ---------------------------------------------------


def package(proxy, base: str, target: str, cache: Path, tmp_path: Path, timeout: float = 300):
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights")
    # Built without the example's requirements and never run: its imports are not this test's business.
    argv = [sys.executable, "-m", "ocibuild", "package", model, "--entry-script", EXAMPLE_DIR / "score.py",
            "--base", f"docker://{proxy.host}/{base}", "--cache", cache, "--push", f"{proxy.host}/{target}",
            "--skip-check", "imports"]  # fmt: skip
    start = time.monotonic()
    proc = run([str(a) for a in argv], check=False, timeout=timeout)
    return proc, time.monotonic() - start


@pytest.mark.slow
def test_cli_pulls_and_pushes_through_transient_faults(proxy, upstream, base_image, tmp_path):
    upstream.push_base(base_image)
    cache = tmp_path / "cache"
    faults = [
        Fault("GET", "/manifests/", action="cut"),
        Fault("GET", "/blobs/", action="cut"),
        Fault("GET", "/blobs/", 503),
        Fault("POST", "mount=", 502),  # the base's layers are mounted from BASE_REPO, not uploaded
        Fault("PUT", "/blobs/uploads/", action="drop"),
        Fault("PUT", "/manifests/", 503),
    ]
    proxy.inject(*faults)
    target = f"{repo()}:1"
    proc, seconds = package(proxy, BASE_REPO, target, cache, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert seconds < BOUND, proc.stderr
    digest = proc.stdout.strip().splitlines()[-1]
    assert_all_injected(*faults)
    records = proxy.snapshot()
    assert [r for r in records if r.method == "POST" and "mount=" in r.path and r.status == 201]
    name, tag = target.split(":")
    r = requests.get(f"{direct(upstream)}/v2/{name}/manifests/{tag}", headers={"Accept": media.OCI_MANIFEST},
                     timeout=10)  # fmt: skip
    assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == digest
    puts = [x for x in records if x.method == "PUT" and "/manifests/" in x.path]
    assert any(p.path.endswith(f"/manifests/{tag}") for p in puts)
    for put in puts:  # every manifest (the image's, its SBOM's, its provenance's) after every blob it names
        reference = put.path.rsplit("/", 1)[-1]
        r = requests.get(f"{direct(upstream)}/v2/{name}/manifests/{reference}", timeout=10,
                         headers={"Accept": f"{media.OCI_MANIFEST}, {media.OCI_INDEX}"})  # fmt: skip
        doc = json.loads(r.content)
        if "manifests" in doc:  # the referrers tag's index: it lists manifests, put before it
            put_before = {x.path.rsplit("/", 1)[-1] for x in puts if x.answered < put.arrived and x.status == 201}
            assert {m["digest"] for m in doc["manifests"]} <= put_before
            continue
        needed = {d["digest"] for d in [doc["config"], *doc["layers"]]}
        assert needed <= {confirmed(x) for x in records if x.answered < put.arrived}
    assert_store_clean(BlobStore(cache))


@pytest.mark.slow
def test_cli_fails_with_one_line_and_a_clean_cache(proxy, upstream, base_image, tmp_path):
    upstream.push_base(base_image)
    cache = tmp_path / "cache"
    fault = Fault("GET", "/blobs/", action="corrupt", times=10**6)
    proxy.inject(fault)
    proc, seconds = package(proxy, BASE_REPO, f"{repo()}:1", cache, tmp_path)
    assert proc.returncode == 1 and seconds < BOUND
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("ocibuild: error: ") and "fetch it again" in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr and fault.injected
    assert_store_clean(BlobStore(cache))
    proxy.reset()
    fault = Fault("PUT", "/manifests/", 503, times=10**6)
    proxy.inject(fault)
    proc, seconds = package(proxy, BASE_REPO, f"{repo()}:1", cache, tmp_path)  # the cache is usable again
    assert proc.returncode == 1 and seconds < BOUND, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("ocibuild: error: "), proc.stderr
    assert "HTTP 503" in proc.stderr and "Traceback" not in proc.stderr and fault.injected
    assert_store_clean(BlobStore(cache))
