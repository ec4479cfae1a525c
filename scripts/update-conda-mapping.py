#!/usr/bin/env python3
"""Regenerate ocibuild/packaging/conda_pypi.json: which conda-forge packages have another name on PyPI, and which
hold no Python distribution at all.

    git clone https://github.com/prefix-dev/parselmouth /tmp/parselmouth
    python3 scripts/update-conda-mapping.py --parselmouth /tmp/parselmouth [--grayskull 3.2.0]

Inputs, each recorded in the output with its version and licence:
- parselmouth's conda-forge mapping (``files/v0/conda-forge/compressed_mapping.json``): for every conda-forge
  package, the normalised names of the Python distributions (``*.dist-info``) found inside its builds, or null
  when no build holds one. ``files/compressed_mapping.json`` (one name per package: the newest build's) settles a
  package whose builds hold several distributions.
- grayskull's hand-kept PyPI→conda-forge table (``grayskull/strategy/config.yaml`` in its wheel, fetched with
  ``pip download``), used only to choose among several names for one package (``msgpack-python`` ships
  ``msgpack`` today and ``msgpack-python`` in old builds; PyPI's ``msgpack-python`` stopped at 0.5.6).
- ``OVERRIDES`` below: conda-forge metapackages (no files of their own, so null in parselmouth's data) that Azure
  ML environments use, mapped to the PyPI project that provides what they pull in.

Only what differs from the identity is kept: ``renamed`` (conda name → PyPI requirement name, where the
normalised names differ) and ``not_python`` (packages with no Python distribution). The output is deterministic.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parent.parent / "ocibuild" / "packaging" / "conda_pypi.json"
CHANNEL_MAPPING = "files/v0/conda-forge/compressed_mapping.json"
SINGLE_NAME_MAPPING = "files/compressed_mapping.json"
GRAYSKULL_TABLE = "grayskull/strategy/config.yaml"

# Metapackages: conda-forge builds with no files (null in parselmouth's data) that stand for a PyPI project.
OVERRIDES = {
    # opencv pulls py-opencv; the headless wheel, because opencv-python's needs the system's libGL.so.1 (a
    # manylinux-allowed library), which python:*-slim images do not have.
    "opencv": "opencv-python-headless",
    "py-opencv": "opencv-python-headless",
    "libopencv": "opencv-python-headless",
    # pytorch-gpu pulls the CUDA build of pytorch; PyPI's Linux x86_64 torch is the CUDA build.
    "pytorch-gpu": "torch",
    # tensorflow-gpu pulls tensorflow with CUDA; on PyPI that is the and-cuda extra (PyPI's tensorflow-gpu is an
    # empty package that refuses to install since TensorFlow 2.12).
    "tensorflow-gpu": "tensorflow[and-cuda]",
    "tensorflow-cpu": "tensorflow-cpu",
    "py-xgboost-cpu": "xgboost-cpu",
    "py-xgboost-gpu": "xgboost",
}


def canonical(name: str) -> str:
    """A project name as PyPI compares them (lowercase, runs of ``-_.`` as one ``-``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def read_parselmouth(repo: Path) -> tuple[dict, dict, dict]:
    """Both mappings at the checkout's HEAD, and where they came from."""
    commit = git(repo, "rev-parse", "HEAD").strip()
    date = git(repo, "log", "-1", "--format=%cs", "HEAD", "--", CHANNEL_MAPPING).strip()
    channel = json.loads(git(repo, "show", f"{commit}:{CHANNEL_MAPPING}"))
    single = json.loads(git(repo, "show", f"{commit}:{SINGLE_NAME_MAPPING}"))
    licence = git(repo, "show", f"{commit}:LICENSE")
    about = {
        "project": "parselmouth (prefix.dev), conda-forge channel mapping",
        "repository": "github.com/prefix-dev/parselmouth",
        "files": [CHANNEL_MAPPING, SINGLE_NAME_MAPPING],
        "commit": commit,
        "date": date,
        "licence": "BSD-3-Clause",
        "licence_text": licence.strip().splitlines(),
    }
    return channel, single, about


def read_grayskull(version: str) -> tuple[dict[str, list[str]], dict]:
    """conda-forge name → the PyPI names grayskull's table gives it."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp,
             f"grayskull=={version}"],
            check=True, capture_output=True,
        )  # fmt: skip
        (wheel,) = Path(tmp).glob("grayskull-*.whl")
        with zipfile.ZipFile(wheel) as z:
            table = yaml.safe_load(z.read(GRAYSKULL_TABLE))
    reverse: dict[str, list[str]] = {}
    for pypi, entry in table.items():
        if isinstance(entry, dict) and entry.get("conda_forge"):
            reverse.setdefault(entry["conda_forge"], []).append(canonical(pypi))
    about = {
        "project": f"grayskull {version} (conda-forge's recipe generator), {GRAYSKULL_TABLE}",
        "repository": "github.com/conda/grayskull",
        "licence": "Apache-2.0",
        "used_for": "choosing among several PyPI names parselmouth reports for one package",
    }
    return reverse, about


def choose(conda: str, names: list[str], grayskull: dict[str, list[str]], single: dict) -> str:
    """One PyPI name for a package whose builds hold several distributions."""
    curated = [n for n in grayskull.get(conda, []) if n in names]
    if len(curated) == 1:
        return curated[0]
    if canonical(conda) in names:
        return canonical(conda)
    return single.get(conda) or names[0]


def build(channel: dict, single: dict, grayskull: dict[str, list[str]]) -> tuple[dict[str, str], list[str]]:
    renamed: dict[str, str] = {}
    not_python: list[str] = []
    for conda, names in channel.items():
        if conda in OVERRIDES:
            continue
        if not names:
            not_python.append(conda)
            continue
        pypi = names[0] if len(names) == 1 else choose(conda, names, grayskull, single)
        if canonical(pypi) != canonical(conda):
            renamed[conda] = pypi
    for conda, pypi in OVERRIDES.items():
        if canonical(pypi) != canonical(conda):
            renamed[conda] = pypi
    return dict(sorted(renamed.items())), sorted(not_python)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--parselmouth", type=Path, required=True, help="a git clone of prefix-dev/parselmouth"
    )
    parser.add_argument("--grayskull", default="3.2.0", help="grayskull version whose table to read")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    channel, single, parselmouth = read_parselmouth(args.parselmouth)
    grayskull, grayskull_about = read_grayskull(args.grayskull)
    renamed, not_python = build(channel, single, grayskull)
    doc = {
        "about": "conda-forge package name -> PyPI name where they differ (renamed), and conda-forge packages "
        "that hold no Python distribution (not_python); generated by scripts/update-conda-mapping.py",
        "sources": [parselmouth, grayskull_about],
        "overrides": OVERRIDES,
        "renamed": renamed,
        "not_python": not_python,
    }
    args.out.write_text(json.dumps(doc, indent=0, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{args.out}: {len(renamed)} renamed, {len(not_python)} not Python ({parselmouth['date']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
