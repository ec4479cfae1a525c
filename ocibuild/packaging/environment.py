"""Python environments as Azure ML users write them: requirements files, pip specs, a conda environment file.

Owns turning those inputs into one ``PythonEnvironment`` (requirements files, pip specs, the Python version asked
for) and checking that version against the base image's. Never installs anything (``build.pyenv`` does) and never
runs conda: a conda file is accepted only for what pip can install; conda packages are refused, by name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ocibuild.errors import BaseImageError, InputError
from ocibuild.packaging.pyenv import TargetPython
from ocibuild.packaging.sources import PackageSources

__all__ = ["PythonEnvironment", "load_environment", "check_python_version"]


@dataclass(frozen=True)
class PythonEnvironment:
    """What to install into the image, and which Python it was written for."""

    requirements: tuple[Path, ...] = ()
    packages: tuple[str, ...] = ()
    python_version: tuple[int, int] | None = None
    conda_file: Path | None = None  # where python_version came from, for messages
    sources: PackageSources = field(default_factory=PackageSources)  # --index-url, --find-links, ...
    exclude_newer: str | None = None  # RFC 3339 UTC: files uploaded later are not considered

    @classmethod
    def empty(cls) -> PythonEnvironment:
        """Nothing to install and no Python asked for."""
        return cls()

    def is_empty(self) -> bool:
        """True when there is nothing to install (a Python pin alone installs nothing)."""
        return not self.requirements and not self.packages


# A conda match spec: optional "channel::", a name, then a version spec (after "=", "==", ">=", a space, ...).
_MATCH_SPEC = re.compile(r"^(?:(?P<channel>[^:\s]+)::)?(?P<name>[A-Za-z0-9_.\-]+)\s*(?P<spec>.*)$")
# Version specs that pin one major.minor: "=3.11", "=3.11.*", "==3.11", "3.11", "=3.11.4", "=3.11.4=h123_0".
_EXACT_MINOR = re.compile(r"^(?:==?|\s*)(\d+)\.(\d+)(?:\.\*|\.\d+[a-z0-9]*)?(?:=\S+)?$")
_REQUIREMENT_OPTION = re.compile(r"^(?:-r|--requirement)(?:\s+|=)(?P<path>\S.*)$")


def _python_pin(spec: str) -> tuple[int, int] | None:
    m = _EXACT_MINOR.match(spec.strip())
    return (int(m[1]), int(m[2])) if m else None


def _yaml_error(path: Path, e: yaml.YAMLError) -> InputError:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f" line {mark.line + 1}" if mark is not None else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return InputError(f"conda file {path}{where} is not valid YAML ({problem}); fix the file")


def _read_conda_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise InputError(f"conda file {path} cannot be read ({reason}); check the --conda-file path") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise _yaml_error(path, e) from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"conda file {path} is not a mapping with a 'dependencies:' list; fix the file")
    return data


def _pip_section(path: Path, entries: Any) -> tuple[list[Path], list[str]]:
    if entries is None:
        return [], []
    if not isinstance(entries, list):
        raise InputError(f"conda file {path}: the 'pip:' entry must be a list of package specs; fix the file")
    files: list[Path] = []
    specs: list[str] = []
    for entry in entries:
        text = str(entry).strip() if isinstance(entry, (str, int, float)) else None
        if not text:
            raise InputError(f"conda file {path}: pip entry {entry!r} is not a package spec; fix the file")
        if m := _REQUIREMENT_OPTION.match(text):
            files.append(path.parent / m["path"].strip())
        elif text.startswith("-"):
            raise InputError(
                f"conda file {path}: pip option {text!r} is not supported here; "
                "put it in a requirements file and list that file with '-r FILE' under 'pip:'"
            )
        else:
            specs.append(text)
    return files, specs


def _parse_conda_file(path: Path) -> tuple[list[Path], list[str], tuple[int, int] | None]:
    data = _read_conda_file(path)
    dependencies = data.get("dependencies") or []
    if not isinstance(dependencies, list):
        raise InputError(f"conda file {path}: 'dependencies:' must be a list; fix the file")
    files: list[Path] = []
    specs: list[str] = []
    python: tuple[int, int] | None = None
    refused: list[str] = []
    for dep in dependencies:
        if isinstance(dep, dict):
            for key, value in dep.items():
                if key == "pip":
                    more_files, more_specs = _pip_section(path, value)
                    files += more_files
                    specs += more_specs
                else:
                    refused.append(str(key))
            continue
        text = str(dep).strip() if dep is not None else ""
        m = _MATCH_SPEC.match(text)
        if not m:
            refused.append(text or repr(dep))
            continue
        name = m["name"].lower()
        if name == "python":
            python = _python_pin(m["spec"])
        elif name != "pip":
            refused.append(text)
    if refused:
        raise InputError(
            f"conda file {path} lists conda packages ocibuild cannot install: {', '.join(refused)}; "
            "move them under the 'pip:' section (with their PyPI names)"
        )
    return files, specs, python


def check_readable(path: Path, origin: str) -> None:
    """A requirements file must be readable; ``origin`` says where the user named it."""
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as e:
        raise InputError(
            f"requirements file {path} cannot be read ({e.strerror or e}); check {origin}"
        ) from e


_INCLUDE_OPTION = re.compile(r"^(?:-r|--requirement|-c|--constraint)(?:\s+|=)(?P<path>\S+)")


def requirements_texts(files: Sequence[Path], depth: int = 0) -> list[str]:
    """The text of each requirements file and, after it, of every file it includes with ``-r``/``-c`` (relative
    to the including file, as pip reads them): what the dependencies layer's cache key must cover, so that
    editing an included file rebuilds the layer."""
    out: list[str] = []
    for path in files:
        text = path.read_bytes().decode("utf-8", "replace")
        out.append(text)
        if depth >= 8:  # pip itself would loop on a cycle; a key need not
            continue
        included = []
        for line in text.splitlines():
            m = _INCLUDE_OPTION.match(line.strip())
            if m and "://" not in m["path"]:
                included.append(path.parent / m["path"])
        out += requirements_texts([p for p in included if p.is_file()], depth + 1)
    return out


def load_environment(
    requirements: Sequence[Path] = (),
    pip: Sequence[str] = (),
    conda_file: Path | None = None,
) -> PythonEnvironment:
    """One environment from ``--requirements`` files, ``--pip`` specs and a ``--conda-file``.

    Requirements files are checked to be readable now, before any image is pulled. A conda file's ``-r FILE``
    entries are relative to the conda file.
    """
    files = [Path(p) for p in requirements]
    for path in files:
        check_readable(path, "the --requirements path")
    specs: list[str] = []
    for spec in pip:
        text = spec.strip()
        if not text or text.startswith("-"):
            raise InputError(
                f"--pip {spec!r} is not a package spec (expected e.g. 'numpy==1.26'); "
                "pass requirements files with --requirements"
            )
        specs.append(text)
    python = None
    if conda_file is not None:
        conda_file = Path(conda_file)
        conda_files, conda_specs, python = _parse_conda_file(conda_file)
        for path in conda_files:
            check_readable(path, f"the '-r' entries of {conda_file}")
        files += conda_files
        specs = conda_specs + specs
    return PythonEnvironment(
        requirements=tuple(files),
        packages=tuple(specs),
        python_version=python,
        conda_file=conda_file,
    )


def check_python_version(
    env: PythonEnvironment, target: TargetPython, *, what: str = "the base image"
) -> None:
    """Refuse a base image whose Python is not the one the environment asks for."""
    if env.python_version is None or env.python_version == target.version:
        return
    source = env.conda_file.name if env.conda_file is not None else "the environment"
    asked = "{}.{}".format(*env.python_version)
    has = "{}.{}".format(*target.version)
    raise BaseImageError(f"{source} asks for Python {asked} but {what} has {has}; pick a base with {asked}")
