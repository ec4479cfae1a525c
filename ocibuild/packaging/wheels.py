"""Wheels for the image, not the host: the user's requirements installed for a ``TargetPython``.

``install_dependencies`` resolves wheels (never source builds: a wheel compiled for the host would be wrong in the
image) for the base image's Python, libc and architecture into a directory that becomes the dependencies layer,
with uv when it can name the image's platform, else pip with every compatible tag. What the target is comes from
``build.pyenv``; this module never reads an image.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

from ocibuild.errors import DependencyError, InputError
from ocibuild.packaging.environment import check_readable
from ocibuild.packaging.pyenv import TargetPython

__all__ = ["install_dependencies"]


Installer = Literal["auto", "uv", "pip"]

_TAIL_LINES = 200  # lines of installer output kept in memory for the error message (the rest is in the log)

# Environment variables that would redirect or change an install behind our back.
_DROPPED_ENV = (
    "PIP_USER",
    "PIP_TARGET",
    "PIP_PREFIX",
    "PIP_ROOT",
    "PIP_PYTHON",
    "PIP_REQUIRE_VIRTUALENV",
    "PIP_NO_BINARY",
    "PIP_ONLY_BINARY",
    "PIP_PLATFORM",
    "PIP_PYTHON_VERSION",
    "PIP_IMPLEMENTATION",
    "PIP_ABI",
    "UV_COMPILE_BYTECODE",
    "UV_PYTHON",
    "UV_SYSTEM_PYTHON",
    "UV_NO_BINARY",
    "UV_NO_BUILD",
    "UV_TARGET",
    "UV_PREFIX",
)


@dataclass
class _Run:
    returncode: int
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=_TAIL_LINES))


def _find_uv() -> str | None:
    """The uv binary: the ``uv`` Python package's (the ``ocibuild[uv]`` extra) or one on PATH."""
    with contextlib.suppress(ImportError, FileNotFoundError):
        import uv  # type: ignore[import-not-found]

        return uv.find_uv_bin()
    return shutil.which("uv")


def _check_inputs(requirements: Sequence[Path], packages: Sequence[str]) -> tuple[list[Path], list[str]]:
    files = []
    for req in requirements:
        path = Path(req)
        check_readable(path, "the --requirements path")
        files.append(path.absolute())
    specs = []
    for spec in packages:
        text = spec.strip()
        if not text or text.startswith("-"):
            raise InputError(
                f"{spec!r} is not a package spec (expected e.g. 'numpy==1.26'); put pip options in a requirements file"
            )
        specs.append(text)
    return files, specs


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env.update(
        PYTHONDONTWRITEBYTECODE="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        NO_COLOR="1",
    )
    return env


def _uv_command(
    uv: str, target: TargetPython, platform: str, dest: Path, files: list[Path], specs: list[str]
) -> list[str]:
    cmd = [uv, "pip", "install", "--target", str(dest), "--python", sys.executable]
    cmd += ["--python-platform", platform, "--python-version", target.python_version]
    cmd += ["--only-binary", ":all:", "--no-progress", "--color", "never"]
    for f in files:
        cmd += ["-r", str(f)]
    return [*cmd, "--", *specs] if specs else cmd


def _pip_command(target: TargetPython, dest: Path, files: list[Path], specs: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "pip", "install", "--target", str(dest)]
    for tag in target.platform_tags():
        cmd += ["--platform", tag]
    cmd += ["--python-version", target.python_version, "--implementation", "cp"]
    cmd += ["--only-binary=:all:", "--no-compile", "--no-warn-script-location", "--disable-pip-version-check"]
    cmd += ["--no-input", "--root-user-action=ignore", "--progress-bar", "off"]
    for f in files:
        cmd += ["-r", str(f)]
    return [*cmd, "--", *specs] if specs else cmd


def _run(cmd: list[str], log: BinaryIO, progress: Callable[[str], None] | None) -> _Run:
    log.write(("$ " + " ".join(cmd) + "\n").encode())
    log.flush()
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env()
        )
    except OSError as e:
        raise DependencyError(f"cannot start {cmd[0]} to install the requirements ({e})") from e
    run = _Run(returncode=0)
    assert proc.stdout is not None
    try:
        with proc.stdout:
            for raw in proc.stdout:
                log.write(raw)
                line = raw.decode("utf-8", "replace").rstrip()
                run.tail.append(line)
                if progress is not None and line.strip():
                    progress(line)
        run.returncode = proc.wait()
    except BaseException:
        # Interrupted (Ctrl-C, the log's disk full): the installer must not outlive us and keep writing into a
        # directory that is being removed.
        proc.kill()
        proc.wait()
        raise
    log.write(f"[exit {run.returncode}]\n".encode())
    log.flush()
    return run


_NO_WHEEL = (
    re.compile(r"Wheels are required for `([^`]+)`"),
    re.compile(
        r"Because (?:all versions of )?([A-Za-z0-9][A-Za-z0-9._-]*)\S* (?:has|have) no (?:usable )?wheels"
    ),
    re.compile(
        r"(?:and|because) ([A-Za-z0-9][A-Za-z0-9._-]*)\S* (?:has|have) no wheels with a matching platform"
    ),
    re.compile(r"No matching distribution found for ([A-Za-z0-9][A-Za-z0-9._-]*)"),
)
_NOT_FOUND = re.compile(r"Because ([A-Za-z0-9][A-Za-z0-9._-]*) was not found in the package registry")
_UNREADABLE_FILE = (
    re.compile(r"Could not open requirements file: (.*)$", re.M),
    re.compile(r"failed to read from file `([^`]+)`"),
)
_NETWORK = re.compile(
    r"(Failed to fetch|error sending request|NewConnectionError|Could not fetch URL|Temporary failure in name "
    r"resolution|Connection refused|Network is unreachable)",
    re.I,
)


def _key_line(lines: Sequence[str]) -> str:
    """The line of installer output that says what went wrong."""
    for line in reversed(lines):
        s = line.strip()
        if s.startswith(("cause:", "╰─▶")):
            return s.split(":", 1)[1].strip() if s.startswith("cause:") else s[3:].strip()
    for line in reversed(lines):
        s = line.strip()
        if s.startswith(("ERROR:", "error:")):
            return s.split(":", 1)[1].strip()
    return next((s.strip() for s in reversed(lines) if s.strip()), "no output")


def _raise_for(run: _Run, tool: str, target: TargetPython, log: Path) -> None:
    lines = list(run.tail)
    text = "\n".join(lines)
    plat = f"{target.abi} {target.platform_tags()[0]}"
    for pattern in _UNREADABLE_FILE:
        if m := pattern.search(text):
            raise InputError(
                f"a requirements file cannot be read: {m[1].strip()}; check the paths it includes"
            )
    for pattern in _NO_WHEEL:
        if m := pattern.search(text):
            raise DependencyError(
                f"no wheel of {m[1]!r} fits the base image ({plat}): pin a version of {m[1]} that publishes one, "
                f"or use a base image whose platform has one (check the name too; {tool} log: {log})"
            )
    if m := _NOT_FOUND.search(text):
        raise DependencyError(
            f"package {m[1]!r} is not on the package index; check its name ({tool} log: {log})"
        )
    if _NETWORK.search(text):
        raise DependencyError(
            f"cannot reach the package index to install the requirements: {_key_line(lines)} ({tool} log: {log})"
        )
    raise DependencyError(
        f"installing the requirements for {target.describe()} failed: {_key_line(lines)} ({tool} log: {log})"
    )


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _replace_file(path: Path, data: bytes) -> None:
    """Write a new file over ``path`` (never in place: files may be hardlinks into uv's cache)."""
    mode = path.stat().st_mode & 0o7777
    tmp = path.with_name(path.name + ".ocibuild-tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _make_reproducible(dest: Path, target: TargetPython) -> None:
    """Remove what ties the installed tree to this host.

    * Scripts in ``bin/`` carry the host interpreter's path in their shebang; it is rewritten to the image's
      interpreter, so ``/opt/ocibuild/site-packages/bin/NAME`` runs inside the image (with the PYTHONPATH the image
      sets) instead of pointing at a path that does not exist there.
    * ``direct_url.json`` (PEP 610) records a local path or URL for packages installed from one; it is removed.
    * RECORD follows both changes (new hashes and sizes; pip's ``../../bin/NAME`` rows become ``bin/NAME``).
    """
    shebang = b"#!" + target.executable.encode()
    rewritten: dict[str, bytes] = {}
    bindir = dest / "bin"
    if bindir.is_dir() and not bindir.is_symlink():
        for script in sorted(bindir.iterdir()):
            if script.is_symlink() or not script.is_file():
                continue
            data = script.read_bytes()
            first, sep, rest = data.partition(b"\n")
            if first.startswith(b"#!") and b"python" in first and first != shebang:
                data = shebang + sep + rest
                _replace_file(script, data)
            rewritten[f"bin/{script.name}"] = data
    for info in sorted(dest.glob("*.dist-info")):
        removed = set()
        direct = info / "direct_url.json"
        if direct.is_file():
            direct.unlink()
            removed.add(f"{info.name}/direct_url.json")
        record = info / "RECORD"
        if not record.is_file():
            continue
        rows = record.read_text(encoding="utf-8").splitlines()
        out = []
        for row in rows:
            name, _, rest = row.partition(",")
            norm = os.path.normpath(name)
            while norm.startswith("../"):
                norm = norm[3:]
            if norm in removed:
                continue
            if norm in rewritten:
                data = rewritten[norm]
                row = f"{norm},{_record_hash(data)},{len(data)}"
            out.append(row)
        if out != rows:
            _replace_file(record, ("\n".join(out) + "\n").encode("utf-8"))


def install_dependencies(
    target: TargetPython,
    dest: Path,
    *,
    requirements: Sequence[Path] = (),
    packages: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
    installer: Installer = "auto",
) -> None:
    """Install wheels (never source builds) for ``target`` into ``dest``, an empty or absent directory.

    ``dest`` becomes the image's ``/opt/ocibuild/site-packages``. uv is used when it is installed and can name the
    target's platform (seven times faster, DESIGN.md §4), pip otherwise; ``installer`` forces one. Installer output
    goes to a log file in the temp directory, which is kept and named in the error when the install fails.
    Files in ``dest`` may be hardlinks into uv's cache: replace them, never modify them in place.
    """
    files, specs = _check_inputs(requirements, packages)
    if not files and not specs:
        return
    dest = Path(dest).absolute()
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ValueError(f"{dest} must be empty")

    uv = _find_uv() if installer in ("auto", "uv") else None
    platform = target.uv_platform()
    if installer == "uv" and (uv is None or platform is None):
        raise DependencyError(
            "uv cannot install for this base image "
            + (
                "(uv is not installed: pip install uv)"
                if uv is None
                else f"({target.describe()} has no uv platform)"
            )
        )
    uses_pip = installer == "pip" or uv is None or platform is None
    if uses_pip and importlib.util.find_spec("pip") is None:
        raise DependencyError("neither uv nor pip is available to install the requirements; pip install uv")

    fd, log_name = tempfile.mkstemp(prefix="ocibuild-install-", suffix=".log")
    log_path = Path(log_name)
    try:
        with os.fdopen(fd, "wb") as log:
            tool = "pip"
            run: _Run | None = None
            if uv is not None and platform is not None and installer != "pip":
                tool = "uv"
                if progress is not None:
                    progress(f"installing wheels for {target.describe()} with uv ({platform})")
                run = _run(_uv_command(uv, target, platform, dest, files, specs), log, progress)
                rejected = any("invalid value" in line and "python-platform" in line for line in run.tail)
                if run.returncode != 0 and rejected and installer == "auto":
                    run = None  # an older uv that does not know this platform name: pip can do it
                    shutil.rmtree(dest)
                    dest.mkdir()
            if run is None:
                tool = "pip"
                if progress is not None:
                    progress(
                        f"installing wheels for {target.describe()} with pip ({target.platform_tags()[0]})"
                    )
                run = _run(_pip_command(target, dest, files, specs), log, progress)
        if run.returncode in (-signal.SIGINT, 128 + signal.SIGINT):
            # Ctrl-C reached the installer (the whole process group gets it) an instant before it reaches us:
            # this is an interruption, not an installer failure whose log is worth keeping.
            raise KeyboardInterrupt
        if run.returncode != 0:
            _raise_for(run, tool, target, log_path)
    except DependencyError as e:
        if str(log_path) not in str(e):
            log_path.unlink(missing_ok=True)
        raise  # a message that names the log keeps it
    except BaseException:
        # Interrupted, the installer did not start, or the message says it all: no log worth keeping.
        log_path.unlink(missing_ok=True)
        raise
    log_path.unlink(missing_ok=True)
    _make_reproducible(dest, target)
