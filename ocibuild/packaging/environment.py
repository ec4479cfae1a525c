"""Python environments as Azure ML users write them: requirements files, pip specs, a conda environment file.

Owns turning those inputs into one ``PythonEnvironment`` (requirements files, pip specs, the Python version asked
for) and checking that version against the base image's. Never installs anything (``packaging.wheels`` does) and
never runs conda: a conda file's conda packages become PyPI requirements (``packaging.conda``), its ``pip:``
section is read as pip would read it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ocibuild.errors import BaseImageError, InputError, UsageError
from ocibuild.packaging.conda import convert
from ocibuild.packaging.sources import PackageSources
from ocibuild.rootfs.pyenv import TargetPython

if TYPE_CHECKING:
    import yaml

__all__ = ["PythonEnvironment", "load_environment", "check_python_version"]


@dataclass(frozen=True)
class PythonEnvironment:
    """What to install into the image, and which Python it was written for."""

    requirements: tuple[Path, ...] = ()
    packages: tuple[str, ...] = ()
    python_version: tuple[int, int] | None = None
    conda_file: Path | None = None  # where python_version came from, for messages
    # Index options from the conda file's pip: section (``--extra-index-url URL``, ...), as requirements-file
    # lines: they may hold credentials, so they reach the installer in a file, never on a command line.
    pip_options: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # what a conda file's packages became, for the build's progress output
    sources: PackageSources = field(default_factory=PackageSources)  # --index-url, --find-links, ...
    exclude_newer: str | None = None  # RFC 3339 UTC: files uploaded later are not considered

    @classmethod
    def empty(cls) -> PythonEnvironment:
        """Nothing to install and no Python asked for."""
        return cls()

    def is_empty(self) -> bool:
        """True when there is nothing to install (a Python pin alone installs nothing)."""
        return not self.requirements and not self.packages

    def pip_options_key(self) -> tuple[str, ...]:
        """The pip: section's index options without user info in URLs: what keys the dependencies layer, so a
        rotated password does not rebuild it."""
        return tuple(_USERINFO.sub(r"\g<scheme>", line) for line in self.pip_options)

    def requirement_files(self, directory: Path) -> tuple[Path, ...]:
        """The requirements files to install, plus one written into ``directory`` (which the caller removes)
        carrying the pip: section's index options, which pip and uv apply to the whole install."""
        if not self.pip_options:
            return self.requirements
        options = Path(directory) / "conda-pip-options.txt"
        options.write_text("".join(line + "\n" for line in self.pip_options), encoding="utf-8")
        return (*self.requirements, options)


_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
_REQUIREMENT_OPTION = re.compile(r"^(?:-r|--requirement)(?:\s+|=)(?P<path>\S.*)$")
# Index options a pip: section may hold; pip and uv read them in a requirements file. "-f" may name a folder.
_INDEX_OPTION = re.compile(
    r"^(?P<option>-i|--index-url|--extra-index-url|-f|--find-links|--trusted-host)(?:\s+|=)(?P<value>\S+)$"
    r"|^(?P<flag>--no-index)$"
)


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
    import yaml  # only for a conda file (10 ms of every start otherwise)

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise _yaml_error(path, e) from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"conda file {path} is not a mapping with a 'dependencies:' list; fix the file")
    return data


def _index_option(path: Path, text: str) -> str | None:
    """A pip: section's index option as a requirements-file line (a relative ``--find-links`` folder made
    absolute, as pip does for one relative to its requirements file); None if ``text`` is not one."""
    m = _INDEX_OPTION.match(text)
    if m is None:
        return None
    if m["flag"]:
        return m["flag"]
    option, value = m["option"], m["value"]
    if option in ("-f", "--find-links") and "://" not in value and (path.parent / value).exists():
        value = str((path.parent / value).absolute())
    return f"{option} {value}"


@dataclass
class _PipSection:
    files: list[Path]
    specs: list[str]
    options: list[str]


def _pip_section(path: Path, entries: Any, section: _PipSection) -> None:
    if entries is None:
        return
    if not isinstance(entries, list):
        raise InputError(f"conda file {path}: the 'pip:' entry must be a list of package specs; fix the file")
    for entry in entries:
        text = str(entry).strip() if isinstance(entry, (str, int, float)) else None
        if not text:
            raise InputError(f"conda file {path}: pip entry {entry!r} is not a package spec; fix the file")
        if m := _REQUIREMENT_OPTION.match(text):
            section.files.append(path.parent / m["path"].strip())
        elif (line := _index_option(path, text)) is not None:
            section.options.append(line)
        elif text.startswith("-"):
            option = text.split()[0].split("=")[0]  # the option's name only: its value may hold a password
            raise InputError(
                f"conda file {path}: pip option {option!r} is not supported in the pip: section; "
                "put it in a requirements file and list that file with '-r FILE' under 'pip:'"
            )
        else:
            section.specs.append(text)


def _parse_conda_file(
    path: Path, conda_map: Mapping[str, str] | None, drop: Collection[str]
) -> tuple[_PipSection, list[str], tuple[int, int] | None, tuple[str, ...]]:
    """The pip: section as it is, and the conda packages translated (``packaging.conda``)."""
    data = _read_conda_file(path)
    dependencies = data.get("dependencies") or []
    if not isinstance(dependencies, list):
        raise InputError(f"conda file {path}: 'dependencies:' must be a list; fix the file")
    pip = _PipSection([], [], [])
    entries: list[str] = []
    for dep in dependencies:
        if isinstance(dep, dict):
            for key, value in dep.items():
                if key != "pip":
                    raise InputError(
                        f"conda file {path}: '{key}:' is not a dependency section (only 'pip:' is); fix the file"
                    )
                _pip_section(path, value, pip)
        elif isinstance(dep, (str, int, float)) and str(dep).strip():
            entries.append(str(dep).strip())
        else:
            raise InputError(f"conda file {path}: dependency {dep!r} is not a package spec; fix the file")
    conda = convert(path, entries, conda_map, drop)
    return pip, list(conda.requirements), conda.python_version, conda.notes


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
    conda_map: Mapping[str, str] | None = None,
    conda_drop: Collection[str] = (),
) -> PythonEnvironment:
    """One environment from ``--requirements`` files, ``--pip`` specs and a ``--conda-file``.

    Requirements files are checked to be readable now, before any image is pulled. A conda file's ``-r FILE``
    entries are relative to the conda file. ``conda_map`` (conda name → PyPI name) and ``conda_drop`` (conda
    packages to leave out) apply to the conda file's packages.
    """
    if conda_file is None and (conda_map or conda_drop):
        raise UsageError("--conda-map and --drop-conda apply to a conda file; pass it with --conda-file")
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
    options: list[str] = []
    notes: tuple[str, ...] = ()
    if conda_file is not None:
        conda_file = Path(conda_file)
        section, conda_specs, python, notes = _parse_conda_file(conda_file, conda_map, conda_drop)
        for path in section.files:
            check_readable(path, f"the '-r' entries of {conda_file}")
        files += section.files
        specs = conda_specs + section.specs + specs
        options = section.options
    return PythonEnvironment(
        requirements=tuple(files),
        packages=tuple(specs),
        python_version=python,
        conda_file=conda_file,
        pip_options=tuple(options),
        notes=notes,
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
