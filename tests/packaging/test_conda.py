"""Tests for ocibuild.packaging.conda: conda dependencies as PyPI requirements (issue 12, "Conda files, mapped")."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from ocibuild.errors import InputError, UsageError
from ocibuild.packaging import conda
from ocibuild.packaging.conda import SpecError, convert, parse_conda_map, parse_match_spec, translate_version
from ocibuild.packaging.environment import load_environment

ENV = Path("environment.yml")


def requirement(entry: str, **kwargs) -> str:
    """What one conda entry becomes."""
    (req,) = convert(ENV, [entry], **kwargs).requirements
    return req


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- versions -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("numpy", "numpy"),
        ("numpy=1.26", "numpy==1.26.*"),  # conda's '=' is a prefix match
        ("numpy=1.26.4", "numpy==1.26.4.*"),
        ("numpy==1.26", "numpy==1.26"),  # '==' is exact
        ("numpy==1.26.*", "numpy==1.26.*"),
        ("numpy 1.26", "numpy==1.26"),  # a bare version is exact
        ("numpy 1.26.*", "numpy==1.26.*"),
        ("numpy 1.26*", "numpy==1.26.*"),
        ("numpy>=1.22", "numpy>=1.22"),
        ("numpy >=1.22", "numpy>=1.22"),
        ("numpy >= 1.22", "numpy>=1.22"),
        ("numpy<2", "numpy<2"),
        ("numpy<=1.26.4", "numpy<=1.26.4"),
        ("numpy>1.2", "numpy>1.2"),
        ("numpy!=1.25.0", "numpy!=1.25.0"),
        ("numpy!=1.25.*", "numpy!=1.25.*"),
        ("numpy ~=1.26.0", "numpy~=1.26.0"),
        ("numpy>=1.22,<2", "numpy>=1.22,<2"),
        ("numpy >=1.22, <2", "numpy>=1.22,<2"),
        ("numpy>=1.22.*", "numpy>=1.22"),  # conda ignores '.*' after '>='
        ("numpy *", "numpy"),
        # build strings are dropped; with one, conda reads '=1.26.4' as exact
        ("numpy=1.26.4=py311h64a7726_0", "numpy==1.26.4"),
        ("numpy 1.26.4 py311h64a7726_0", "numpy==1.26.4"),
        ("numpy=1.26.*=py311*", "numpy==1.26.*"),
        ("numpy==1.26.4=py311_0", "numpy==1.26.4"),
        ("numpy * openblas_0", "numpy"),
        ("numpy >=1.0 , < 2.0 py34_0", "numpy>=1.0,<2.0"),
        # channel prefixes and the bracket syntax
        ("conda-forge::numpy=1.26", "numpy==1.26.*"),
        ("conda-forge/linux-64::numpy>=1.2", "numpy>=1.2"),
        ("numpy[version='>=1.22']", "numpy>=1.22"),
        ('numpy[version=">=1.22,<2", build=py311*]', "numpy>=1.22,<2"),
        ("numpy[version='1.26.*']", "numpy==1.26.*"),
        ("numpy=1.20[version='>=1.22']", "numpy>=1.22"),  # the brackets win, as in conda
        ("numpy[build=py311_0]", "numpy"),
        # '|' when one range says the same
        ("numpy 1.25.*|1.26.*", "numpy>=1.25,<1.27"),
        ("numpy=1.25|1.26", "numpy>=1.25,<=1.26"),  # '=1.25' is a prefix, the bare '1.26' exact
        ("numpy >=1.22|>=1.25", "numpy>=1.22"),
        ("numpy <2|>=1", "numpy"),
        ("numpy (>=1.2,<1.5)|(>=1.5,<2)", "numpy>=1.2,<2"),
        ("numpy 1.26.*|1.26.*", "numpy==1.26.*"),
        ("numpy=1.0rc1", "numpy==1.0rc1"),  # a pre-release cannot be a PEP 440 prefix
        ("numpy=1.26  # pinned for the model", "numpy==1.26.*"),
        ("NumPy=1.26", "numpy==1.26.*"),
    ],
)
def test_versions_follow_conda_rules(entry, expected):
    got = requirement(entry)
    assert got == expected
    Requirement(got)  # and pip can read it


def test_prefix_translation_matches_what_conda_matches():
    spec = SpecifierSet(translate_version(parse_match_spec("numpy=1.2").version))
    assert all(v in spec for v in ["1.2", "1.2.0", "1.2.9", "1.2.10.1"])
    assert not any(v in spec for v in ["1.20", "1.3", "1.1.9"])
    exact = SpecifierSet(translate_version(parse_match_spec("numpy==1.2").version))
    assert "1.2.0" in exact and "1.2.1" not in exact


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("numpy 1.25.1|1.26.3", "asks for one of several version ranges ('1.25.1|1.26.3')"),
        ("numpy <1.20|>=1.22", "asks for one of several version ranges"),
        ("numpy >=1.2,(<2|>3)", "asks for one of several version ranges"),
        ("numpy !=1.25|<1", "asks for one of several version ranges"),
        ("numpy 1.*.2", "has a wildcard inside a version ('1.*.2')"),
        ("numpy ^1\\.2.*$", "has a regular expression"),
        ("numpy 1.2_3", "has version '1.2_3', which is not a version pip understands"),
        ("numpy=>1.2", "which is not a version pip understands"),
        ("numpy ~=1.2.*", "'~=' does not take '.*'"),
        ("numpy ~=1", "gives 'numpy~=1', which is not a pip requirement"),
        ("numpy >=1.2,", "has an incomplete version expression"),
        ("numpy (>=1.2", "has unbalanced parentheses"),
        ("numpy >=1.2)", "has unbalanced parentheses"),
        ("numpy[version]", "cannot read '[version]'"),
        (
            "https://conda.anaconda.org/conda-forge/linux-64/numpy-1.26.4-py311h64a7726_0.conda",
            "is a package file",
        ),
        ("./numpy-1.26.4-py311_0.tar.bz2", "is a package file or URL"),
        (">=1.2", "has no package name"),
        ("# just a comment", "is empty"),
    ],
)
def test_specs_pip_cannot_express_are_one_line_errors(entry, reason):
    with pytest.raises(InputError) as e:
        convert(ENV, ["scipy", entry])
    message = str(e.value)
    assert message.startswith(f"conda file environment.yml: dependency '{entry}' ")
    assert reason in message
    assert message.endswith(("; fix the entry", "; write one range in the file"))
    assert "\n" not in message


def test_translate_version_directly():
    assert translate_version(None) == ""
    assert translate_version("1.2*") == "==1.2.*"
    with pytest.raises(SpecError):
        translate_version("1.2|1.4")


@pytest.mark.parametrize(
    ("entry", "pin"),
    [
        ("python=3.9", (3, 9)),
        ("python 3.12.1", (3, 12)),
        ("python[version='3.10.*']", (3, 10)),
        ("python=3.11.9=h955ad1f_0_cpython", (3, 11)),
        ("python>=3.9", None),
        ("python=3", None),
        ("python 3.10.*|3.11.*", None),
    ],
)
def test_python_pin(entry, pin):
    result = convert(ENV, [entry, "numpy"])
    assert result.python_version == pin
    assert result.requirements == ("numpy",)  # python itself is never a requirement


# --- names --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("pytorch=2.3", "torch==2.3.*"),
        ("pytorch-cpu", "torch"),
        ("py-xgboost>=2", "xgboost>=2"),
        ("msgpack-python=1.0", "msgpack==1.0.*"),  # builds hold both names; the current one wins
        ("matplotlib-base=3.8", "matplotlib==3.8.*"),
        ("py-opencv", "opencv-python-headless"),
        ("opencv=4.10", "opencv-python-headless==4.10.*"),  # a metapackage, mapped by ocibuild
        ("tensorflow-gpu=2.15", "tensorflow[and-cuda]==2.15.*"),
        ("scikit-learn=1.5", "scikit-learn==1.5.*"),  # same project, same name
        ("mkl-service", "mkl-service"),  # a Python distribution, not MKL itself
        ("cuda-python=12", "cuda-python==12.*"),  # 'cuda-*' drops CUDA libraries, not this
        ("azureml-defaults", "azureml-defaults"),  # not on conda-forge: passed on as written
    ],
)
def test_names_map_to_pypi(entry, expected):
    assert requirement(entry) == expected


def test_the_notes_say_what_each_package_became():
    result = convert(
        Path("env/conda.yml"),
        ["python=3.11", "pip", "numpy=1.26", "pytorch::pytorch=2.3", "cudatoolkit=11.8", "cudnn", "mkl",
         "libgcc-ng", "_libgcc_mutex", "conda-forge::scikit-learn"],
    )  # fmt: skip
    assert result.requirements == ("numpy==1.26.*", "torch==2.3.*", "scikit-learn")
    assert result.python_version == (3, 11)
    assert result.notes == (
        "conda file env/conda.yml: from PyPI: numpy==1.26.*, torch==2.3.* (from pytorch), scikit-learn",
        "conda file env/conda.yml: not installed: python (the base image's Python); "
        "pip (ocibuild installs the pip: section itself); "
        "cudatoolkit, cudnn (CUDA: torch's Linux wheels depend on NVIDIA's CUDA wheels, TensorFlow's come with "
        "tensorflow[and-cuda]); mkl (BLAS/LAPACK: numpy's and scipy's wheels bundle OpenBLAS); "
        "libgcc-ng, _libgcc_mutex (C/C++/Fortran runtimes and OpenMP: the wheels bundle theirs or use the base "
        "image's)",
        "conda file env/conda.yml: channel ignored for pytorch::pytorch, conda-forge::scikit-learn; every package "
        "comes from PyPI",
    )


@pytest.mark.parametrize(
    "name",
    ["cudatoolkit", "cuda-version", "cuda-cudart", "libcublas", "nccl", "libgfortran5", "llvm-openmp",
     "_openmp_mutex", "openblas", "libopenblas", "blas", "pytorch-cuda", "cpuonly", "python_abi", "libstdcxx-ng"],
)  # fmt: skip
def test_what_the_wheels_bring_is_dropped(name):
    result = convert(ENV, [name, "numpy"])
    assert result.requirements == ("numpy",)
    assert f"not installed: {name} (" in result.notes[1]


def test_packages_no_wheel_brings_are_named_in_one_line():
    with pytest.raises(InputError) as e:
        convert(ENV, ["numpy", "ffmpeg=6", "cudatoolkit", "gcc_linux-64", "conda-forge::r-base", "pytorch"])
    assert str(e.value) == (
        "conda file environment.yml: ffmpeg, gcc_linux-64, r-base are conda packages with no Python "
        "distribution that no wheel brings; put them in the base image and pass --drop-conda "
        "ffmpeg,gcc_linux-64,r-base, or name a PyPI project with --conda-map NAME=PYPI"
    )


def test_one_package_no_wheel_brings():
    with pytest.raises(InputError, match=r": cmake is a conda package .* put it in the base image and pass "):
        convert(ENV, ["cmake"])


def test_drop_accepts_leaving_them_out():
    result = convert(ENV, ["numpy", "ffmpeg=6", "cmake", "scipy"], drop=["ffmpeg", " CMake "])
    assert result.requirements == ("numpy", "scipy")
    assert "not installed: ffmpeg, cmake (--drop-conda)" in result.notes[1]


def test_drop_may_leave_out_a_python_package_too():
    assert convert(ENV, ["numpy", "scipy"], drop=["scipy"]).requirements == ("numpy",)


def test_drop_of_a_package_the_file_does_not_list():
    with pytest.raises(
        UsageError, match=r"^--drop-conda ffmepg: environment.yml lists no such conda package$"
    ):
        convert(ENV, ["ffmpeg"], drop=["ffmepg"])


def test_conda_map_adds_and_overrides_entries():
    result = convert(
        ENV,
        ["ffmpeg", "opencv=4.10", "pytorch", "numpy"],
        conda_map={"ffmpeg": "imageio-ffmpeg", "opencv": "opencv-python", "pytorch": "torch[opt-einsum]"},
    )
    assert result.requirements == ("imageio-ffmpeg", "opencv-python==4.10.*", "torch[opt-einsum]", "numpy")
    assert "imageio-ffmpeg (from ffmpeg)" in result.notes[0]


def test_conda_map_beats_dropping_what_wheels_bring():
    assert requirement("mkl", conda_map={"mkl": "mkl"}) == "mkl"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["pytorch-gpu=torch"], {"pytorch-gpu": "torch"}),
        (
            ["TensorFlow-GPU = tensorflow[and-cuda]", "a=b"],
            {"tensorflow-gpu": "tensorflow[and-cuda]", "a": "b"},
        ),
        ({"opencv": "opencv-python"}, {"opencv": "opencv-python"}),
        ([], {}),
        (None, {}),
    ],
)
def test_parse_conda_map(values, expected):
    assert parse_conda_map(values) == expected


@pytest.mark.parametrize(
    "value",
    ["pytorch", "pytorch=", "=torch", "pytorch=torch==2.1", "py torch=torch", "a=b c", "a=torch[x y]",
     "a=torch; os_name=='nt'", "a=torch @ https://example.com/torch.whl", "a=-torch"],
)  # fmt: skip
def test_parse_conda_map_refuses(value):
    with pytest.raises(
        UsageError, match=r"^--conda-map .*: expected CONDA=PYPI, .* e.g. --conda-map pytorch-gpu=torch$"
    ):
        parse_conda_map([value])


# --- the shipped data ---------------------------------------------------------------------------------------------


def test_the_data_records_its_sources():
    doc = json.loads((Path(conda.__file__).with_name("conda_pypi.json")).read_text())
    parselmouth, grayskull = doc["sources"]
    assert parselmouth["repository"] == "github.com/prefix-dev/parselmouth"
    assert len(parselmouth["commit"]) == 40 and parselmouth["date"][:2] == "20"
    assert parselmouth["licence"] == "BSD-3-Clause" and "prefix.dev GmbH" in "\n".join(
        parselmouth["licence_text"]
    )
    assert grayskull["licence"] == "Apache-2.0" and grayskull["project"].startswith("grayskull ")
    renamed, not_python = doc["renamed"], set(doc["not_python"])
    assert not renamed.keys() & not_python
    assert len(renamed) > 500 and len(not_python) > 5000
    assert all(Requirement(pypi).name for pypi in renamed.values())


def _generator():
    path = Path(__file__).resolve().parents[2] / "scripts" / "update-conda-mapping.py"
    spec = importlib.util.spec_from_file_location("update_conda_mapping", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generator_keeps_only_differences_and_settles_ties():
    gen = _generator()
    channel = {
        "numpy": ["numpy"],
        "mkl_fft": ["mkl-fft"],  # the same name once normalised
        "pytorch": ["torch"],
        "msgpack-python": ["msgpack", "msgpack-python"],  # grayskull settles it
        "flit-core": ["flit-core", "tomli"],  # the conda name is among them
        "ray-core": ["aiohttp", "ray"],  # neither: the newest build's name
        "libpng": None,
        "opencv": None,  # a metapackage ocibuild maps
    }
    single = {"msgpack-python": "msgpack", "flit-core": "tomli", "ray-core": "ray"}
    renamed, not_python = gen.build(channel, single, {"msgpack-python": ["msgpack"]})
    assert not_python == ["libpng"]
    assert renamed["pytorch"] == "torch" and renamed["msgpack-python"] == "msgpack"
    assert renamed["ray-core"] == "ray" and renamed["opencv"] == "opencv-python-headless"
    assert not {"numpy", "mkl_fft", "flit-core"} & renamed.keys()


# --- through load_environment -------------------------------------------------------------------------------------


def test_an_azure_conda_file(tmp_path):
    env_file = write(
        tmp_path / "conda.yaml",
        "name: model-env\n"
        "channels:\n  - conda-forge\n  - defaults\n"
        "dependencies:\n"
        "  - python=3.9\n  - numpy=1.23.5\n  - scikit-learn=1.2.2\n  - scipy=1.10.1\n  - pip\n"
        "  - pip:\n    - azureml-defaults==1.56.0.post1\n    - inference-schema[numpy-support]==1.7\n"
        "    - joblib==1.2.0\n",
    )
    env = load_environment(conda_file=env_file, pip=["six"])
    assert env.packages == (
        "numpy==1.23.5.*", "scikit-learn==1.2.2.*", "scipy==1.10.1.*",
        "azureml-defaults==1.56.0.post1", "inference-schema[numpy-support]==1.7", "joblib==1.2.0", "six",
    )  # fmt: skip
    assert env.python_version == (3, 9)
    assert env.notes[0].endswith("from PyPI: numpy==1.23.5.*, scikit-learn==1.2.2.*, scipy==1.10.1.*")


def test_options_and_the_file_need_each_other(tmp_path):
    with pytest.raises(UsageError, match="pass it with --conda-file"):
        load_environment(conda_map={"a": "b"})
    with pytest.raises(UsageError, match="pass it with --conda-file"):
        load_environment(conda_drop=["a"])
    env_file = write(tmp_path / "environment.yml", "dependencies: [ffmpeg, numpy]\n")
    env = load_environment(conda_file=env_file, conda_drop=["ffmpeg"])
    assert env.packages == ("numpy",)


@pytest.mark.parametrize(
    ("dependencies", "message"),
    [
        ("[numpy, {conda: [scipy]}]", "'conda:' is not a dependency section (only 'pip:' is)"),
        ("[numpy, null]", "dependency None is not a package spec"),
        ("[numpy, [scipy]]", "dependency ['scipy'] is not a package spec"),
    ],
)
def test_wrong_entries(tmp_path, dependencies, message):
    env_file = write(tmp_path / "environment.yml", f"dependencies: {dependencies}\n")
    with pytest.raises(InputError) as e:
        load_environment(conda_file=env_file)
    assert str(e.value).startswith(f"conda file {env_file}: {message}")


def test_index_options_in_the_pip_section_reach_the_installer_in_a_file(tmp_path):
    (tmp_path / "wheels").mkdir()
    env_file = write(
        tmp_path / "environment.yml",
        "dependencies:\n  - numpy\n  - pip:\n"
        "    - --extra-index-url https://user:s3cret@pypi.example.com/simple\n"
        "    - --index-url=https://mirror.example.com/simple\n"
        "    - --find-links wheels\n    - -f https://example.com/links\n"
        "    - --trusted-host pypi.example.com\n    - --no-index\n    - joblib\n",
    )
    env = load_environment(conda_file=env_file)
    assert env.packages == ("numpy", "joblib")
    assert env.pip_options == (
        "--extra-index-url https://user:s3cret@pypi.example.com/simple",
        "--index-url https://mirror.example.com/simple",
        f"--find-links {tmp_path / 'wheels'}",
        "-f https://example.com/links",
        "--trusted-host pypi.example.com",
        "--no-index",
    )
    assert not any("s3cret" in note for note in env.notes)
    out = tmp_path / "build"
    out.mkdir()
    (options,) = env.requirement_files(out)
    assert options.parent == out
    assert options.read_text().splitlines() == list(env.pip_options)
    assert (
        load_environment(conda_file=write(tmp_path / "b.yml", "dependencies: [numpy]\n")).requirement_files(
            out
        )
        == ()
    )


@pytest.mark.parametrize(
    ("entry", "option"),
    [("--no-binary=numpy", "--no-binary"), ("-e ./src", "-e"), ("--cert /home/u:s3cret/ca.pem", "--cert")],
)
def test_other_pip_options_are_refused_without_their_value(tmp_path, entry, option):
    env_file = write(tmp_path / "environment.yml", f"dependencies:\n  - pip:\n    - {entry}\n")
    with pytest.raises(InputError) as e:
        load_environment(conda_file=env_file)
    assert str(e.value) == (
        f"conda file {env_file}: pip option '{option}' is not supported in the pip: section; put it in a "
        "requirements file and list that file with '-r FILE' under 'pip:'"
    )


# --- the python pin and the command line --------------------------------------------------------------------------


def test_the_python_pin_picks_the_default_base(monkeypatch):
    from ocibuild.settings import Settings

    monkeypatch.delenv("OCIBUILD_BASE", raising=False)
    assert Settings.from_environ().default_base((3, 9)) == "docker.io/library/python:3.9-slim"
    assert Settings.from_environ().default_base() == "docker.io/library/python:{}.{}-slim".format(
        *sys.version_info[:2]
    )
    monkeypatch.setenv("OCIBUILD_BASE", "oci:/srv/base:py39")
    assert (
        Settings.from_environ().default_base((3, 9)) == "oci:/srv/base:py39"
    )  # explicit: checked, not replaced


class _Built(Exception):
    pass


@pytest.mark.parametrize(
    ("base", "expected"), [(None, "docker.io/library/python:3.9-slim"), ("scratch", "scratch")]
)
def test_package_builds_on_the_pinned_python(tmp_path, monkeypatch, base, expected):
    import ocibuild.api as api

    monkeypatch.delenv("OCIBUILD_BASE", raising=False)
    seen = []

    def build(spec, store, progress, **_):
        seen.append(spec)
        raise _Built

    monkeypatch.setattr(api, "build", build)
    env_file = write(tmp_path / "environment.yml", "dependencies: [python=3.9, pytorch=2.3, ffmpeg]\n")
    environment = api.Environment(conda_file=env_file, conda_drop=["ffmpeg"], conda_map={"pytorch": "torch"})
    with pytest.raises(_Built):
        api.package(
            [tmp_path], api.InferenceConfig("score.py", environment=environment), base, cache=tmp_path
        )
    (spec,) = seen
    assert spec.base == expected
    assert spec.environment.packages == ("torch==2.3.*",)
    assert spec.environment.python_version == (3, 9)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ocibuild", "package", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_names_what_no_wheel_brings_in_one_line(tmp_path):
    env_file = write(tmp_path / "environment.yml", "dependencies: [python=3.11, numpy, ffmpeg, libpng]\n")
    common = ["model.pkl", "--entry-script", "score.py", "--conda-file", str(env_file), "--output", "x.tar"]
    proc = cli(*common)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == (
        f"ocibuild: error: conda file {env_file}: ffmpeg, libpng are conda packages with no Python distribution "
        "that no wheel brings; put them in the base image and pass --drop-conda ffmpeg,libpng, or name a PyPI "
        "project with --conda-map NAME=PYPI\n"
    )
    # What the message says to pass gets past the conda file (to the next check: the model is missing).
    proc = cli(*common, "--drop-conda", "ffmpeg,libpng", "--conda-map", "numpy=numpy")
    assert proc.stderr == "ocibuild: error: model model.pkl: no such file or directory\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--conda-map", "pytorch"], "--conda-map pytorch=: expected CONDA=PYPI"),
        (["--drop-conda", "ffmpeg"], "--conda-map and --drop-conda apply to a conda file"),
    ],
)
def test_cli_usage_errors(args, message):
    proc = cli("model.pkl", "--entry-script", "score.py", "--output", "x.tar", *args)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"ocibuild: error: {message}") and proc.stderr.count("\n") == 1
