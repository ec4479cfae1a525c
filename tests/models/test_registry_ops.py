"""Model push/pull/list/show and the oras-py wrapper against the real plain ``docker-registry`` (behind the tests'
recording proxy). Fast: small models, one registry for the module."""

from __future__ import annotations

import io
import os
import tarfile
import time

import pytest

from ocibuild.errors import DigestMismatchError, FormatError, OutputError
from ocibuild.models.artifact import ModelInfo, read_model_manifest
from ocibuild.models.orasclient import OrasRegistry
from ocibuild.models.registry import _unpack, list_models, pull_model, push_model, show_model
from ocibuild.oci import media
from ocibuild.oci.descriptor import Descriptor
from ocibuild.oci.digest import Digest, VerifyingReader
from ocibuild.oci.name import parse_reference
from ocibuild.oci.store import BlobStore
from ocibuild.registry.errors import NotFoundError, UnreachableError
from ocibuild.registry.options import RegistryOptions, RetryPolicy
from ocibuild.registry.transport import Transport
from tests.conftest import free_port


@pytest.fixture(scope="module")
def reg(registry):
    return registry.get("plain")


@pytest.fixture
def store(tmp_path):
    return BlobStore(tmp_path / "cache")


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "bert"
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text('{"a": 1}')
    (d / "sub" / "weights.bin").write_bytes(os.urandom(300_000))
    (d / "run.sh").write_text("#!/bin/sh\n")
    (d / "run.sh").chmod(0o755)
    os.symlink("sub/weights.bin", d / "latest")
    return d


def test_push_list_show_pull_a_folder(reg, store, folder, tmp_path):
    pushed = push_model(folder, reg.ref("unit/bert:1"), framework="pytorch", store=store)
    assert pushed.reference.tag == "1" and pushed.info.name == "bert" and pushed.info.version == "1"
    assert show_model(f"docker://{reg.ref('unit/bert:1')}").digest == pushed.digest
    listed = list_models(reg.ref("unit/bert"))
    assert [(x.tag, x.info.digest if x.info else None) for x in listed] == [("1", pushed.digest)]
    out = tmp_path / "out"
    info = pull_model(reg.ref(f"unit/bert@{pushed.digest}"), out)
    assert info.digest == pushed.digest
    got = out / "bert"
    assert (got / "sub" / "weights.bin").read_bytes() == (folder / "sub" / "weights.bin").read_bytes()
    assert (got / "config.json").read_text() == '{"a": 1}'
    assert os.access(got / "run.sh", os.X_OK) and not os.access(got / "config.json", os.X_OK)
    assert os.readlink(got / "latest") == "sub/weights.bin"


def test_version_defaults_to_the_tag_and_the_tag_to_the_version(reg, store, folder):
    a = push_model(folder, reg.ref("unit/v"), version="7", store=store)
    assert a.reference.tag == "7" and a.info.version == "7"
    b = push_model(folder, reg.ref("unit/v:prod"), version="8", name="bert", store=store)
    assert b.reference.tag == "prod" and b.info.version == "8"
    from ocibuild.errors import UsageError

    with pytest.raises(UsageError, match="give the version"):
        push_model(folder, reg.ref("unit/v"), store=store)


def test_missing_versions_and_repositories_say_so(reg, store, folder, tmp_path):
    push_model(folder, reg.ref("unit/miss:1"), store=store)
    with pytest.raises(NotFoundError, match="no such version; .* has: 1"):
        show_model(reg.ref("unit/miss:2"))
    with pytest.raises(NotFoundError, match="no such model"):
        pull_model(reg.ref("unit/nothing-here:2"), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_pull_never_leaves_a_partial_folder_when_the_blob_is_corrupt(reg, store, tmp_path):
    model = tmp_path / "m.bin"
    model.write_bytes(os.urandom(200_000))
    pushed = push_model(model, reg.ref("unit/corrupt:1"), store=store)
    layer = pushed.info.layer
    data = reg.dir / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256" / layer.digest.hex[:2]
    blob = data / layer.digest.hex / "data"
    raw = bytearray(blob.read_bytes())
    raw[-2000] ^= 0xFF  # inside the file's bytes: the tar still parses, only the digest tells
    blob.write_bytes(bytes(raw))
    with pytest.raises(DigestMismatchError):
        pull_model(reg.ref("unit/corrupt:1"), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "m.bin"]


def test_pull_refuses_a_full_folder(reg, store, folder, tmp_path):
    push_model(folder, reg.ref("unit/full:1"), store=store)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep").write_text("mine")
    with pytest.raises(OutputError, match="not an empty folder"):
        pull_model(reg.ref("unit/full:1"), tmp_path / "full")
    assert (tmp_path / "full" / "keep").read_text() == "mine"
    pull_model(reg.ref("unit/full:1"), tmp_path / "empty-is-fine")


def _hostile(entries) -> tuple[VerifyingReader, ModelInfo]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, kind, target in entries:
            info = tarfile.TarInfo(name)
            if kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, target
                t.addfile(info)
            else:
                info.size = 1
                t.addfile(info, io.BytesIO(b"x"))
    data = buf.getvalue()
    desc = Descriptor(media.OCI_LAYER, Digest.of(data), len(data))
    info = ModelInfo(Digest.of(b"m"), b"", "m", "1", "/var/azureml-app/azureml-models/m/1", desc)
    return VerifyingReader(io.BytesIO(data), desc.digest, desc.size), info


P = "var/azureml-app/azureml-models/m/1"


@pytest.mark.parametrize(
    "entries, message",
    [
        ([("etc/passwd", "file", "")], "outside the model's folder"),
        ([(f"{P}/../../x", "file", "")], "leave the model's folder"),
        ([(f"{P}/l", "sym", "/etc"), (f"{P}/l/x", "file", "")], "points outside"),
        ([(f"{P}/l", "sym", "../../.."), (f"{P}/l/x", "file", "")], "points outside"),
        ([(f"{P}/l", "sym", "d"), (f"{P}/l/x", "file", "")], "leave the model's folder"),
    ],
)
def test_unpacking_refuses_entries_that_escape(entries, message, tmp_path):
    stream, info = _hostile(entries)
    with pytest.raises(FormatError, match=message):
        _unpack(stream, info, tmp_path, "model m")
    assert not (tmp_path.parent / "passwd").exists()


# ---------------------------------------------------------------- the oras-py wrapper


def oras_for(reg, repository: str, push: bool = False) -> OrasRegistry:
    ref = parse_reference(reg.ref(repository))
    return OrasRegistry(Transport(ref.registry, RegistryOptions()), ref.repository, push=push)


def test_oras_py_pull_through_the_wrapper_unpacks_the_model_at_its_image_path(reg, store, tmp_path):
    """oras-py (unlike the oras CLI, which saves the layer as the file its title names) unpacks any tar+gzip layer
    into the output folder; through the wrapper its download is verified."""
    model = tmp_path / "m.pkl"
    model.write_bytes(b"model bytes " * 100)
    pushed = push_model(model, reg.ref("unit/oras:2"), store=store)
    assert pushed.info.layer.media_type == media.OCI_LAYER_GZIP
    o = oras_for(reg, "unit/oras")
    out = tmp_path / "oras"
    o.pull(target=o.container_for("2"), outdir=str(out))
    assert (out / "var/azureml-app/azureml-models/oras/2/m.pkl").read_bytes() == model.read_bytes()


def test_oras_upload_manifest_sends_our_bytes(reg, store, tmp_path):
    model = tmp_path / "m.pkl"
    model.write_bytes(b"abc")
    pushed = push_model(model, reg.ref("unit/bytes:1"), store=store)
    o = oras_for(reg, "unit/bytes", push=True)
    doc = o.get_manifest(o.container_for("1"))
    response = o.upload_manifest(doc, o.container_for("again"))
    assert response.headers["Docker-Content-Digest"] == pushed.digest  # canonical JSON: the same bytes
    raw, _ = o.get_manifest_raw("again")
    assert read_model_manifest(raw, "m").digest == pushed.digest


def test_oras_blob_upload_streams_from_a_file(reg, tmp_path):
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(100_000))
    layer = {"mediaType": media.OCI_LAYER, "digest": str(Digest.of(blob.read_bytes())), "size": 100_000}
    o = oras_for(reg, "unit/blobs", push=True)
    reg.proxy.reset()
    assert o.upload_blob(str(blob), o.container, layer).status_code == 201
    assert o.blob_exists(layer)
    assert reg.proxy.blob_bytes_uploaded() == 100_000
    out = tmp_path / "back"
    o.download_blob(o.container, layer["digest"], str(out))
    assert out.read_bytes() == blob.read_bytes()


def test_no_oras_retry_stall_on_a_dead_registry():
    port = free_port()
    options = RegistryOptions(retry=RetryPolicy(connect_attempts=2, backoff=0.1))
    start = time.monotonic()
    with pytest.raises(UnreachableError, match="cannot connect"):
        OrasRegistry(Transport(f"127.0.0.1:{port}", options), "x/y")
    assert time.monotonic() - start < 10  # oras's own decorator would retry for over two minutes


def test_a_link_chain_that_climbs_out_is_refused(tmp_path):
    """``b -> .`` passes alone, and so does ``a -> b/b/../../..`` on paper; on disk the pair climbs out."""
    stream, info = _hostile([(f"{P}/b", "sym", "."), (f"{P}/a", "sym", "b/b/../../../../../../etc/passwd")])
    with pytest.raises(FormatError, match="points outside"):
        _unpack(stream, info, tmp_path / "out", "model m")


def test_a_later_link_that_turns_an_earlier_one_outward_is_refused(tmp_path):
    stream, info = _hostile([(f"{P}/a", "sym", "x/y/../.."), (f"{P}/x", "sym", ".")])
    with pytest.raises(FormatError, match="points outside"):
        _unpack(stream, info, None, "model m")


def test_inward_links_are_kept(tmp_path):
    stream, info = _hostile(
        [(f"{P}/w.bin", "file", ""), (f"{P}/sub/w", "sym", "../w.bin"), (f"{P}/d", "sym", "sub")]
    )
    _unpack(stream, info, tmp_path / "out", "model m")
    assert (tmp_path / "out" / "sub" / "w").read_bytes() == b"x"


def test_sparse_members_and_bombs_fill_no_disk(tmp_path):
    """A sparse member expands to its declared size when extracted; a gzip bomb past the budget is refused."""
    import gzip

    from ocibuild.models import registry as model_registry

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        info = tarfile.TarInfo(f"{P}/sparse.bin")
        info.type = tarfile.GNUTYPE_SPARSE
        info.size = 0
        t.addfile(info)
    data = buf.getvalue()
    desc = Descriptor(media.OCI_LAYER, Digest.of(data), len(data))
    minfo = ModelInfo(Digest.of(b"m"), b"", "m", "1", f"/{P}", desc)
    with pytest.raises(FormatError, match="not a file, folder or link"):
        _unpack(VerifyingReader(io.BytesIO(data), desc.digest, desc.size), minfo, tmp_path / "s", "model m")
    bomb = gzip.compress(bytes(64 << 20), compresslevel=9)  # 64 MiB of zeros in ~64 KiB
    desc = Descriptor(media.OCI_LAYER_GZIP, Digest.of(bomb), len(bomb))
    minfo = ModelInfo(Digest.of(b"m"), b"", "m", "1", f"/{P}", desc)
    budget = (model_registry.EXPANSION_ALLOWANCE, model_registry.MAX_EXPANSION)
    try:
        model_registry.EXPANSION_ALLOWANCE, model_registry.MAX_EXPANSION = 1 << 20, 10
        with pytest.raises(FormatError, match="decompression bomb"):
            _unpack(
                VerifyingReader(io.BytesIO(bomb), desc.digest, desc.size), minfo, tmp_path / "b", "model m"
            )
    finally:
        model_registry.EXPANSION_ALLOWANCE, model_registry.MAX_EXPANSION = budget
    assert (
        not (tmp_path / "b").exists() or sum(f.stat().st_size for f in (tmp_path / "b").rglob("*")) < 2 << 20
    )
