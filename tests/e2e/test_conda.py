"""Issue 12, "Conda files, mapped", end to end: a conda environment file as Azure ML users write it builds with the
real CLI and the Debian Python 3.11 base, and the image answers the example request in the real dockerd.

The conda pins follow this host's numpy, scikit-learn and joblib (major.minor), the versions that pickled the
example model, so the image can load it; conda's ``=X.Y`` must become ``==X.Y.*`` for that to resolve.
"""

from __future__ import annotations

import importlib.metadata
import sys

import pytest

from tests.conftest import run
from tests.e2e.test_package import assert_same_predictions, score_container

pytestmark = pytest.mark.slow


def minor(distribution: str) -> str:
    return ".".join(importlib.metadata.version(distribution).split(".")[:2])


def package(tmp_path, example_model, base_ref, conda_file, tag, *extra):
    out = tmp_path / "image.tar"
    proc = run(
        [sys.executable, "-m", "ocibuild", "package", example_model.model, "--entry-script", example_model.score,
         "--conda-file", conda_file, "--base", base_ref, "--tag", tag, "--output", out,
         "--cache", tmp_path / "cache", *map(str, extra)],
        timeout=900,
    )  # fmt: skip
    return out, proc.stderr


def test_azure_conda_file_builds_and_scores(tmp_path, base_ref, example_model, dockerd):
    numpy, sklearn = minor("numpy"), minor("scikit-learn")
    conda_file = tmp_path / "conda.yaml"
    conda_file.write_text(
        "name: env\n"
        "channels:\n  - conda-forge\n"
        "dependencies:\n"
        f"  - python=3.11\n  - numpy={numpy}\n  - scikit-learn={sklearn}\n  - pip\n"
        f"  - pip:\n    - joblib=={importlib.metadata.version('joblib')}\n"
    )
    out, stderr = package(tmp_path, example_model, base_ref, conda_file, "ocibuild-test/conda:1")
    assert f"conda file {conda_file}: from PyPI: numpy=={numpy}.*, scikit-learn=={sklearn}.*\n" in stderr
    assert (
        f"conda file {conda_file}: not installed: python (the base image's Python); "
        "pip (ocibuild installs the pip: section itself)\n"
    ) in stderr
    name = dockerd.load(out)
    assert name == "ocibuild-test/conda:1"
    assert_same_predictions(score_container(dockerd, name, example_model), example_model.predictions)


def test_conda_package_with_another_pypi_name_maps(tmp_path, base_ref, example_model, dockerd):
    conda_file = tmp_path / "environment.yml"
    conda_file.write_text(
        "name: env\n"
        "channels: [conda-forge]\n"
        "dependencies:\n"
        f"  - python=3.11.*\n  - conda-forge::scikit-learn={minor('scikit-learn')}\n"
        f"  - numpy={minor('numpy')}\n  - joblib={minor('joblib')}\n"
        "  - msgpack-python>=1.0\n"  # PyPI: msgpack
        "  - mkl\n  - libgcc-ng\n  - _libgcc_mutex\n  - ffmpeg\n"
    )
    out, stderr = package(
        tmp_path,
        example_model,
        base_ref,
        conda_file,
        "ocibuild-test/conda-mapped:1",
        "--drop-conda",
        "ffmpeg",
    )
    assert "msgpack>=1.0 (from msgpack-python)" in stderr
    assert "mkl (BLAS/LAPACK: numpy's and scipy's wheels bundle OpenBLAS)" in stderr
    assert "ffmpeg (--drop-conda)" in stderr
    assert f"conda file {conda_file}: channel ignored for conda-forge::scikit-learn;" in stderr
    name = dockerd.load(out)
    # The mapped package is in the image, under its PyPI name, importable by the image's Python.
    shown = dockerd.run(
        "run", "--rm", "--network", "host", "--entrypoint", "python3", name, "-c",
        "import importlib.metadata as m, msgpack; print(m.version('msgpack'), msgpack.unpackb(msgpack.packb([1])))",
    ).stdout.split()  # fmt: skip
    assert int(shown[0].split(".")[0]) >= 1 and shown[1] == "[1]"
    assert_same_predictions(score_container(dockerd, name, example_model), example_model.predictions)


def _wheel(folder, name: str, version: str) -> None:
    """A minimal pure wheel holding one module, ``{name}.py``."""
    import zipfile

    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": f"VERSION = {version!r}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{path},,\n" for path in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        for path, text in files.items():
            z.writestr(path, text)


def test_index_options_in_the_pip_section_reach_the_installer(tmp_path, base_ref, example_model):
    """--no-index and a --find-links folder next to the conda file: the wheel can only come from that folder."""
    (tmp_path / "wheels").mkdir()
    _wheel(tmp_path / "wheels", "ocibuild_conda_probe", "1.0")
    conda_file = tmp_path / "environment.yml"
    conda_file.write_text(
        "dependencies:\n  - python=3.11\n  - pip\n"
        "  - pip:\n    - --no-index\n    - --find-links wheels\n    - ocibuild-conda-probe==1.0\n"
    )
    layout = tmp_path / "layout"
    run(
        [sys.executable, "-m", "ocibuild", "package", example_model.model, "--entry-script", example_model.score,
         "--conda-file", conda_file, "--base", base_ref, "--oci-layout", layout, "--cache", tmp_path / "cache",
         "--skip-check", "imports"],  # the example's score.py imports what this probe environment lacks
        timeout=600,
    )  # fmt: skip
    bundle = tmp_path / "bundle"
    run(["umoci", "unpack", "--image", f"{layout}:1", bundle])
    module = bundle / "rootfs/opt/ocibuild/site-packages/ocibuild_conda_probe.py"
    assert module.read_text() == "VERSION = '1.0'\n"
