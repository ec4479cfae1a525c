"""Tests for ocibuild.packaging.environment: requirements, pip specs and conda files as Azure ML users write them."""

from __future__ import annotations

from pathlib import Path

import pytest

from ocibuild.errors import BaseImageError, InputError
from ocibuild.packaging.environment import PythonEnvironment, check_python_version, load_environment
from ocibuild.rootfs.pyenv import TargetPython

# The conda file of Azure ML's own scikit-learn examples (azureml-examples), in its usual shape.
AZURE_CONDA = """\
name: model-env
channels:
  - conda-forge
dependencies:
  - python=3.11
  - pip
  - pip:
      - azureml-defaults
      - scikit-learn==1.3.2
      - joblib
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def target(minor: int = 11) -> TargetPython:
    return TargetPython((3, minor), 2, "/usr/bin/python3", "glibc", (2, 36), "amd64")


def test_nothing_given_is_empty():
    env = load_environment()
    assert env == PythonEnvironment() == PythonEnvironment.empty()
    assert env.is_empty()


def test_requirements_and_pip_specs(tmp_path):
    req = write(tmp_path / "requirements.txt", "numpy\n")
    env = load_environment(requirements=[req], pip=["six==1.16", " joblib "])
    assert env.requirements == (req,)
    assert env.packages == ("six==1.16", "joblib")
    assert env.python_version is None
    assert not env.is_empty()


def test_missing_requirements_file(tmp_path):
    with pytest.raises(InputError, match=r"requirements file .*missing.txt cannot be read \(No such file"):
        load_environment(requirements=[tmp_path / "missing.txt"])


@pytest.mark.parametrize("spec", ["", "  ", "-r x.txt", "--index-url=http://x"])
def test_pip_option_is_not_a_spec(spec):
    with pytest.raises(InputError, match="is not a package spec"):
        load_environment(pip=[spec])


def test_azure_conda_file(tmp_path):
    conda = write(tmp_path / "environment.yml", AZURE_CONDA)
    env = load_environment(conda_file=conda, pip=["six"])
    assert env.packages == ("azureml-defaults", "scikit-learn==1.3.2", "joblib", "six")
    assert env.requirements == ()
    assert env.python_version == (3, 11)
    assert env.conda_file == conda


@pytest.mark.parametrize(
    ("pin", "expected"),
    [
        ("python=3.11", (3, 11)),
        ("python==3.11.*", (3, 11)),
        ("python=3.11.*", (3, 11)),
        ("python==3.10", (3, 10)),
        ("python=3.11.4", (3, 11)),
        ("python=3.11.4=h955ad1f_0", (3, 11)),
        ("python 3.12", (3, 12)),
        ("conda-forge::python=3.9", (3, 9)),
        ("python>=3.10", None),
        ("python>=3.10,<3.12", None),
        ("python=3", None),
        ("python", None),
        ("python=3.10|3.11", None),
    ],
)
def test_python_pins(tmp_path, pin, expected):
    conda = write(tmp_path / "environment.yml", f"dependencies:\n  - {pin}\n  - pip>=23\n")
    env = load_environment(conda_file=conda)
    assert env.python_version == expected
    assert env.is_empty()


def test_requirements_inside_the_pip_section_are_relative_to_the_conda_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    req = write(tmp_path / "env" / "requirements.txt", "numpy\n")
    extra = write(tmp_path / "env" / "sub" / "extra.txt", "six\n")
    conda = write(
        tmp_path / "env" / "environment.yml",
        "dependencies:\n  - pip:\n    - -r requirements.txt\n    - --requirement=sub/extra.txt\n    - joblib\n",
    )
    env = load_environment(conda_file=Path("env/environment.yml"))
    assert [p.resolve() for p in env.requirements] == [req, extra]
    assert env.packages == ("joblib",)
    assert conda.is_file()


def test_missing_requirements_file_inside_the_pip_section(tmp_path):
    conda = write(tmp_path / "environment.yml", "dependencies:\n  - pip:\n    - -r nothere.txt\n")
    with pytest.raises(
        InputError, match=r"nothere.txt cannot be read .* check the '-r' entries of .*environment.yml"
    ):
        load_environment(conda_file=conda)


def test_pip_options_in_the_pip_section(tmp_path):
    conda = write(tmp_path / "environment.yml", "dependencies:\n  - pip:\n    - --extra-index-url http://x\n")
    assert load_environment(conda_file=conda).pip_options == ("--extra-index-url http://x",)
    conda = write(tmp_path / "environment.yml", "dependencies:\n  - pip:\n    - --pre\n")
    with pytest.raises(InputError, match="pip option '--pre' is not supported in the pip: section"):
        load_environment(conda_file=conda)


def test_conda_packages_become_pypi_requirements(tmp_path):
    conda = write(
        tmp_path / "environment.yml",
        "channels: [conda-forge]\n"
        "dependencies:\n"
        "  - python=3.11\n"
        "  - numpy\n"
        "  - scikit-learn=1.3\n"
        "  - conda-forge::py-xgboost\n"
        "  - pip\n"
        "  - pip: [six]\n",
    )
    env = load_environment(conda_file=conda)
    assert env.packages == ("numpy", "scikit-learn==1.3.*", "xgboost", "six")
    assert env.python_version == (3, 11)
    assert env.notes[0] == (
        f"conda file {conda}: from PyPI: numpy, scikit-learn==1.3.*, xgboost (from py-xgboost)"
    )


def test_malformed_yaml_names_file_and_line(tmp_path):
    conda = write(tmp_path / "environment.yml", "name: x\ndependencies:\n  - python=3.11\n - pip\n")
    with pytest.raises(InputError) as e:
        load_environment(conda_file=conda)
    message = str(e.value)
    assert message.startswith(f"conda file {conda} line 4 is not valid YAML (")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("- just\n- a list\n", "is not a mapping"),
        ("dependencies: numpy\n", "'dependencies:' must be a list"),
        ("dependencies:\n  - pip: six\n", "'pip:' entry must be a list"),
    ],
)
def test_wrong_shapes(tmp_path, text, match):
    conda = write(tmp_path / "environment.yml", text)
    with pytest.raises(InputError, match=match):
        load_environment(conda_file=conda)


def test_empty_conda_file(tmp_path):
    env = load_environment(conda_file=write(tmp_path / "environment.yml", ""))
    assert env.is_empty() and env.python_version is None


def test_missing_conda_file(tmp_path):
    with pytest.raises(InputError, match=r"conda file .*nope.yml cannot be read \(No such file"):
        load_environment(conda_file=tmp_path / "nope.yml")


def test_python_version_matches_the_base(tmp_path):
    env = load_environment(conda_file=write(tmp_path / "environment.yml", AZURE_CONDA))
    check_python_version(env, target(11))
    check_python_version(load_environment(), target(12))  # no pin, no check


def test_python_version_mismatch(tmp_path):
    env = load_environment(conda_file=write(tmp_path / "environment.yml", "dependencies: [python=3.10]\n"))
    with pytest.raises(BaseImageError) as e:
        check_python_version(env, target(11))
    assert str(e.value) == (
        "environment.yml asks for Python 3.10 but the base image has 3.11; pick a base with 3.10"
    )


def test_requirements_texts_follow_includes_relative_to_the_including_file(tmp_path):
    from ocibuild.packaging.environment import requirements_texts

    (tmp_path / "sub").mkdir()
    (tmp_path / "requirements.txt").write_text("-r sub/base.txt\n--constraint=sub/pins.txt\nrequests\n")
    (tmp_path / "sub" / "base.txt").write_text("numpy==2.0\n-r more.txt\n")
    (tmp_path / "sub" / "more.txt").write_text("scipy\n-r ../requirements.txt\n")  # a cycle: bounded
    (tmp_path / "sub" / "pins.txt").write_text("urllib3<3\n")
    texts = requirements_texts([tmp_path / "requirements.txt"])
    assert texts[:4] == [
        "-r sub/base.txt\n--constraint=sub/pins.txt\nrequests\n", "numpy==2.0\n-r more.txt\n",
        "scipy\n-r ../requirements.txt\n", "-r sub/base.txt\n--constraint=sub/pins.txt\nrequests\n",
    ]  # fmt: skip
    assert "urllib3<3\n" in texts
    before = requirements_texts([tmp_path / "requirements.txt"])
    # An edit two includes deep changes what the key covers.
    (tmp_path / "sub" / "more.txt").write_text("scipy==1.14\n")
    assert requirements_texts([tmp_path / "requirements.txt"]) != before
