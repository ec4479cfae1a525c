"""Shared by the killed-build and disk-full tests: a big synthetic model, the ``ocibuild package`` command line for
it, a clean reference build, and the checks a user would make of a cache and an output after a failure."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import EXAMPLE_DIR

REPO = Path(__file__).resolve().parents[2]
MODEL_MB = (
    256  # random float32 weights: barely compress, so writing the layer takes seconds (wide kill windows)
)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(1 << 20):
            h.update(data)
    return h.hexdigest()


@dataclass(frozen=True)
class Model:
    dir: Path
    weights: Path
    score: Path = EXAMPLE_DIR / "score.py"
    requirements: Path = EXAMPLE_DIR / "requirements.txt"


def make_model(directory: Path) -> Model:
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / "weights.bin"
    with open(weights, "wb") as f:
        for _ in range(MODEL_MB):
            f.write(os.urandom(1 << 20))
    return Model(directory, weights)


def package_argv(model: Model, base_ref: str, cache: Path, *output: str | os.PathLike) -> list[str]:
    """``ocibuild package`` of the big model with the example's script and requirements onto ``base_ref``."""
    return [
        sys.executable, "-m", "ocibuild", "package", str(model.weights),
        "--entry-script", str(model.score), "--requirements", str(model.requirements),
        "--base", base_ref, "--cache", str(cache), "--tag", "killed:1", *map(str, output),
    ]  # fmt: skip


def env(tmpdir: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmpdir)}


@dataclass(frozen=True)
class Reference:
    """A clean build of the big model: what every later build must reproduce byte for byte."""

    digest: str
    tar: Path
    sha256: str
    seconds_cold: float
    seconds_warm: float


def check_store(cache: Path) -> list[str]:
    """Problems a later build could trip over: a blob that does not hash to its name, a record that is not JSON.
    Returns the names left in ``tmp/`` (temp files of a build that was killed)."""
    blobs = cache / "blobs" / "sha256"
    for p in blobs.iterdir() if blobs.is_dir() else []:
        assert p.is_file() and not p.is_symlink(), f"{p}: not a regular file"
        assert file_sha256(p) == p.name, f"cache blob {p.name} does not hash to its name: a poisoned cache"
    for sub in ("refs", "derived"):
        for p in (cache / sub).glob("*") if (cache / sub).is_dir() else []:
            assert p.suffix == ".json", f"{p}: stray file"
            json.loads(p.read_text())  # a half-written record would not parse
    return sorted(os.listdir(cache / "tmp")) if (cache / "tmp").is_dir() else []


def temps_beside(output: Path) -> list[str]:
    """Temp files an export leaves beside its destination (``.NAME.*.tmp``)."""
    return sorted(
        p for p in os.listdir(output.parent) if p.startswith(f".{output.name}.") and p.endswith(".tmp")
    )


def skopeo_inspect(archive: Path) -> dict:
    out = subprocess.run(
        ["skopeo", "inspect", f"docker-archive:{archive}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    doc = json.loads(out)
    return {"Digest": doc.get("Digest"), "Layers": doc["Layers"]}


def how_images_differ(tar: Path, reference: Path) -> str:
    """For a failure message: which layers of two image tarballs differ, and whether only their compressed bytes
    do (same diff_id: the same files, encoded differently) or their contents."""
    import tarfile

    def read(path: Path) -> tuple[list[str], list[str]]:
        with tarfile.open(path) as tf:
            (entry,) = json.load(tf.extractfile("manifest.json"))
            config = json.load(tf.extractfile(entry["Config"]))
        return [x.rsplit("/", 1)[-1] for x in entry["Layers"]], config["rootfs"]["diff_ids"]

    try:
        (blobs, diffs), (ref_blobs, ref_diffs) = read(tar), read(reference)
    except (OSError, KeyError, ValueError, tarfile.TarError) as e:
        return f"(cannot compare the tarballs: {e})"
    notes = []
    for i, (b, d, rb, rd) in enumerate(zip(blobs, diffs, ref_blobs, ref_diffs, strict=False)):
        if b != rb:
            what = "same contents, other compressed bytes" if d == rd else "other contents"
            notes.append(f"layer {i}: {what}")
    return "; ".join(notes) or f"layers agree ({len(blobs)} against {len(ref_blobs)}); the config differs"
