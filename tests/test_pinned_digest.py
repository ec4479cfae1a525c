"""One image from fixed inputs, its digest pinned: a refactoring that changes a single byte of the image fails here.

The base is a small synthetic Debian-shaped layout written by hand (not by ocibuild's own writers), named by a
relative path so that the folder the test runs in cannot reach the image; the model, the entry script and the
build time are fixed. A commit that changes the image on purpose updates ``PINNED`` and says why.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ocibuild import Environment, InferenceConfig, package
from tests.packaging.test_pyenv import bookworm

# Changed on purpose, with the reason, by:
# - the scoring server's multipart uploads for @rawhttp (new files in the server layer);
# - the server's comments cite the repository's own docs (the server layer holds the sources);
# - the base is named portably: a layout entry with no full name gives no base.name (was its local path);
# - the server's functions split under the complexity limit, and its run-timeout fallback fixed (server layer);
# - the request and upload classes share their content-type properties (server layer);
# - locked down by default: the config's User is 65532:65532, and HOME=/tmp, PYTHONDONTWRITEBYTECODE=1 in Env.
PINNED = "sha256:e1f4a59060812fe57128fa1f4419c5d7ae8762e698b45670499aa06aa6db22bf"

SCORE = b"""import json


def init():
    global factor
    factor = 2


def run(raw_data):
    return [x * factor for x in json.loads(raw_data)["data"]]
"""


def _blob(root: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_base_layout(root: Path) -> None:
    """An OCI layout holding one uncompressed layer shaped like Debian bookworm's Python 3.11, tagged ``py311``."""
    (root / "blobs" / "sha256").mkdir(parents=True)
    (root / "oci-layout").write_bytes(b'{"imageLayoutVersion":"1.0.0"}')
    opener = bookworm().opener()
    with opener() as f:
        layer = f.read()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["python3"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "mmdebstrap"}],
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            **_blob(root, json.dumps(config).encode()),
        },
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **_blob(root, layer)}],
    }
    entry = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **_blob(root, json.dumps(manifest).encode()),
        "annotations": {"org.opencontainers.image.ref.name": "py311"},
    }
    index = {"schemaVersion": 2, "manifests": [entry]}
    (root / "index.json").write_bytes(json.dumps(index).encode())


def build(tmp_path: Path) -> str:
    write_base_layout(tmp_path / "base")
    (tmp_path / "model.bin").write_bytes(bytes(range(256)) * 64)
    (tmp_path / "score.py").write_bytes(SCORE)
    pkg = package(
        ["model.bin"],
        InferenceConfig("score.py", environment=Environment()),
        "oci:base:py311",
        cache=tmp_path / "cache",
        skip_checks=["imports"],  # the synthetic base has no json module; the checks never change the image
    )
    return str(pkg.digest)


def test_the_same_fixed_inputs_give_the_pinned_digest_in_any_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    for folder in (tmp_path / "one", tmp_path / "two" / "deeper"):
        folder.mkdir(parents=True)
        monkeypatch.chdir(folder)
        assert build(folder) == PINNED


def test_the_base_in_two_folders_gives_one_digest_and_no_local_path_in_the_image(tmp_path, monkeypatch):
    """The base named by two absolute paths (two copies of one layout): the image is the same, and nothing in it
    names a folder of the builder's machine (a layout entry without a full name gives no base.name at all)."""
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    (tmp_path / "model.bin").write_bytes(bytes(range(256)) * 64)
    (tmp_path / "score.py").write_bytes(SCORE)
    digests, documents = set(), []
    for folder in (tmp_path / "a" / "base", tmp_path / "elsewhere" / "py"):
        write_base_layout(folder)
        pkg = package(
            [tmp_path / "model.bin"],
            InferenceConfig(tmp_path / "score.py", environment=Environment()),
            f"oci:{folder}:py311",
            cache=tmp_path / "cache",
            skip_checks=[
                "imports"
            ],  # the synthetic base has no json module; the checks never change the image
        )
        digests.add(str(pkg.digest))
        documents.append(pkg.image.manifest.raw + pkg.image.config_raw)
    assert len(digests) == 1
    for raw in documents:
        assert str(tmp_path).encode() not in raw
        assert b"org.opencontainers.image.base.digest" in raw and b"base.name" not in raw
