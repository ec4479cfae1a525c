"""Wheels for the image, not the host: the user's requirements installed for a ``TargetPython``.

``install_dependencies`` resolves wheels for the base image's Python, libc and architecture into a directory that
becomes the dependencies layer, with uv when it can name the image's platform, else pip with every compatible tag.
Installs are wheel-only: a wheel compiled on the host would be wrong in the image. A package that the resolver can
only take from a source archive is built by ``packaging.sdist`` into a wheelhouse first, and kept only if the
result is pure Python. What the target is comes from ``rootfs.pyenv``; this module never reads an image.
It returns what it installed (``packaging.installed``): each distribution and the wheel file it came from, read from
the installers' records (uv's pylock.toml, pip's ``--report``, the wheels built here) before their folder goes.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import dataclasses
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
from ocibuild.packaging.installed import InstalledWheel, WheelOrigins, installed_wheels
from ocibuild.packaging.sdist import SourceBuild, build_pure_wheel
from ocibuild.packaging.sources import PackageSources, Redactor
from ocibuild.rootfs.pyenv import TargetPython

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["InstalledWheel", "install_dependencies"]


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
    env = {
        k: v for k, v in os.environ.items() if k not in _DROPPED_ENV and not k.startswith("UV_EXCLUDE_NEWER")
    }
    env.update(
        PYTHONDONTWRITEBYTECODE="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        NO_COLOR="1",
    )
    return env


@dataclass(frozen=True)
class _Options:
    """What every installer run of one install shares besides the requirements."""

    sources: PackageSources = field(default_factory=PackageSources)
    exclude_newer: str | None = None
    wheelhouse: Path | None = None  # wheels built from source archives, once there are any


def _uv_common(uv: str, target: TargetPython, platform: str, opts: _Options) -> list[str]:
    cmd = ["--python-platform", platform, "--python-version", target.python_version]
    cmd += ["--no-progress", "--color", "never", *opts.sources.uv_args()]
    if opts.exclude_newer:
        cmd += ["--exclude-newer", opts.exclude_newer]
    return cmd


def _uv_command(
    uv: str,
    target: TargetPython,
    platform: str,
    dest: Path,
    files: list[Path],
    specs: list[str],
    opts: _Options = _Options(),
    constraints: Path | None = None,
) -> list[str]:
    cmd = [uv, "pip", "install", "--target", str(dest), "--python", sys.executable]
    cmd += ["--only-binary", ":all:", *_uv_common(uv, target, platform, opts)]
    if opts.wheelhouse is not None:
        cmd += ["--find-links", str(opts.wheelhouse)]
    if constraints is not None:
        cmd += ["-c", str(constraints)]
    for f in files:
        cmd += ["-r", str(f)]
    return [*cmd, "--", *specs] if specs else cmd


def _uv_lock_command(
    uv: str,
    target: TargetPython,
    platform: str,
    lock: Path,
    files: list[Path],
    opts: _Options,
    no_build: Sequence[str],
) -> list[str]:
    """Resolve for the image with source archives allowed, into a pylock.toml that says which packages have a
    wheel for the image (their ``wheels``) and which only a source archive (only an ``sdist``)."""
    cmd = [uv, "pip", "compile", "--format", "pylock.toml", "--output-file", str(lock), "--no-header"]
    cmd += _uv_common(uv, target, platform, opts)
    for name in no_build:
        cmd += ["--only-binary", name]  # wheels only for it: the resolver looks for a version that has one
    return [*cmd, *(str(f) for f in files)]  # compile takes requirements files only; specs are one


def _pip_command(
    target: TargetPython,
    dest: Path,
    files: list[Path],
    specs: list[str],
    opts: _Options = _Options(),
    report: Path | None = None,
) -> list[str]:
    cmd = [sys.executable, "-m", "pip", "install", "--target", str(dest)]
    if report is not None:
        cmd += ["--report", str(report)]  # which file each package came from (pip 22.2+), for the SBOM
    for tag in target.platform_tags():
        cmd += ["--platform", tag]
    cmd += ["--python-version", target.python_version, "--implementation", "cp"]
    cmd += ["--only-binary=:all:", "--no-compile", "--no-warn-script-location", "--disable-pip-version-check"]
    cmd += ["--no-input", "--root-user-action=ignore", "--progress-bar", "off", *opts.sources.pip_args()]
    if opts.wheelhouse is not None:
        cmd += ["--find-links", str(opts.wheelhouse)]
    if opts.exclude_newer:
        cmd += ["--uploaded-prior-to", opts.exclude_newer]
    for f in files:
        cmd += ["-r", str(f)]
    return [*cmd, "--", *specs] if specs else cmd


def _run(
    cmd: list[str],
    log: BinaryIO,
    progress: Callable[[str], None] | None,
    env: dict[str, str] | None = None,
    redact: Callable[[str], str] = str,
) -> _Run:
    """Run an installer, its output (credentials redacted) into the log, the tail and ``progress``."""
    log.write(redact("$ " + " ".join(cmd) + "\n").encode())
    log.flush()
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=_env() if env is None else env,
        )
    except OSError as e:
        raise DependencyError(f"cannot start {cmd[0]} to install the requirements ({e})") from e
    run = _Run(returncode=0)
    assert proc.stdout is not None
    try:
        with proc.stdout:
            for raw in proc.stdout:
                line = redact(raw.decode("utf-8", "replace").rstrip("\r\n"))
                log.write(line.encode() + b"\n")
                line = line.rstrip()
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
_EXCLUDED = re.compile(r"`([A-Za-z0-9][A-Za-z0-9._-]*)` was filtered by `exclude-newer`")
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


def _version_in(text: str, name: str) -> str:
    """`` VERSION`` when the installer's output pins ``name`` to one version (``name==1.0``), else nothing."""
    versions = set(re.findall(rf"(?<![\w.-]){re.escape(name)}==([\w.!+-]*\w)", text, re.I))
    return f" {versions.pop()}" if len(versions) == 1 else ""


def _raise_for(run: _Run, tool: str, target: TargetPython, log: Path) -> None:
    lines = list(run.tail)
    text = "\n".join(lines)
    plat = f"{target.abi} {target.platform_tags()[0]}"
    for pattern in _UNREADABLE_FILE:
        if m := pattern.search(text):
            raise InputError(
                f"a requirements file cannot be read: {m[1].strip()}; check the paths it includes"
            )
    if "(from versions: none)" in text and _NETWORK.search(text):
        # pip found no version because it could not reach the index at all: that is the news.
        line = next(ln for ln in reversed(lines) if _NETWORK.search(ln))
        raise DependencyError(
            f"cannot reach the package index to install the requirements: {line.strip()[:300]} ({tool} log: {log})"
        )
    for pattern in _NO_WHEEL:
        if m := pattern.search(text):
            version = _version_in(text, m[1])
            raise DependencyError(
                f"no wheel of {m[1]!r}{version} fits the base image ({plat}): pin a version of {m[1]} that "
                f"publishes one, or use a base image whose platform has one (check the name too; {tool} log: {log})"
            )
    if m := _EXCLUDED.search(text):
        raise DependencyError(
            f"--exclude-newer left no version of {m[1]!r}: none was uploaded before that time, or its index "
            f"publishes no upload times (find-links folders and pypiserver do not); pick a later date or drop "
            f"--exclude-newer ({tool} log: {log})"
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
    * uv's ``.lock`` (its lock of the target folder while it installs) goes.
    * RECORD follows both changes (new hashes and sizes; pip's ``../../bin/NAME`` rows become ``bin/NAME``).
    """
    (dest / ".lock").unlink(missing_ok=True)  # uv's lock of the folder it installed into, not part of it
    rewritten = _rewrite_shebangs(dest / "bin", b"#!" + target.executable.encode())
    for info in sorted(dest.glob("*.dist-info")):
        removed = set()
        direct = info / "direct_url.json"
        if direct.is_file():
            direct.unlink()
            removed.add(f"{info.name}/direct_url.json")
        record = info / "RECORD"
        if record.is_file():
            _update_record(record, removed, rewritten)


def _rewrite_shebangs(bindir: Path, shebang: bytes) -> dict[str, bytes]:
    """Point the Python scripts in ``bindir`` at ``shebang``; every script's content by its RECORD path."""
    rewritten: dict[str, bytes] = {}
    if not bindir.is_dir() or bindir.is_symlink():
        return rewritten
    for script in sorted(bindir.iterdir()):
        if script.is_symlink() or not script.is_file():
            continue
        data = script.read_bytes()
        first, sep, rest = data.partition(b"\n")
        if first.startswith(b"#!") and b"python" in first and first != shebang:
            data = shebang + sep + rest
            _replace_file(script, data)
        rewritten[f"bin/{script.name}"] = data
    return rewritten


def _update_record(record: Path, removed: set[str], rewritten: dict[str, bytes]) -> None:
    """RECORD without the ``removed`` files, with new hashes and sizes for the ``rewritten`` ones.

    pip's ``../../bin/NAME`` rows become ``bin/NAME``.
    """
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


_PYLOCK = "lock/pylock.toml"  # uv's resolution, in the work folder
_PIP_REPORT = "pip-report.json"  # pip's installation report, in the work folder
_MAX_SOURCE_ROUNDS = 8  # resolutions after source builds were refused; each round marks at least one package
_FAILED_BUILD = re.compile(r"Failed to (?:download and )?build `([A-Za-z0-9][A-Za-z0-9._-]*)")
_PIP_UNSATISFIED = re.compile(
    r"Could not find a version that satisfies the requirement (\S+)(?: \(from [^)]*\))? \(from versions: none\)"
)
_REQUIREMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")
# Requirements-file lines that name package sources: a source build must look where the install looks.
_SOURCE_OPTION = re.compile(
    r"^(?P<opt>--index-url|-i|--extra-index-url|--find-links|-f|--no-index|--trusted-host)(?:\s*=?\s*(?P<val>\S+))?"
)
_INCLUDE = re.compile(r"^(?:-r|--requirement|-c|--constraint)\s*=?\s*(?P<path>\S+)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _source_lines(files: Sequence[Path], depth: int = 0) -> list[str]:
    """The package-source option lines of requirements files (and the files they include), folders made
    absolute: what a source build adds to its own requirement file."""
    out: list[str] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for raw in text.splitlines():
            line = raw.split(" #", 1)[0].strip()
            if m := _SOURCE_OPTION.match(line):
                value = m["val"]
                if value and m["opt"] in ("--find-links", "-f") and "://" not in value:
                    value = str((path.parent / value).absolute())
                out.append(f"{m['opt']} {value}" if value else m["opt"])
            elif depth < 8 and (m := _INCLUDE.match(line)) and "://" not in m["path"]:
                out += _source_lines([path.parent / m["path"]], depth + 1)
    return out


@dataclass
class _Install:
    """One install: the target, the user's inputs, and where its installer output goes."""

    target: TargetPython
    dest: Path
    files: list[Path]
    specs: list[str]
    opts: _Options
    log: BinaryIO
    log_path: Path
    work: Path  # a private temp directory: the lock file, the wheelhouse
    redact: Callable[[str], str]
    progress: Callable[[str], None] | None
    built: dict[str, Path] = field(default_factory=dict)  # canonical name -> wheel built from source

    def run(self, cmd: list[str], env: dict[str, str], show: bool = True) -> _Run:
        return _run(cmd, self.log, self.progress if show else None, env, self.redact)

    def say(self, line: str) -> None:
        if self.progress is not None:
            self.progress(line)

    @property
    def plat(self) -> str:
        return f"{self.target.abi} {self.target.platform_tags()[0]}"

    def build(self, package: SourceBuild, pip_env: dict[str, str]) -> Path:
        """Build one source archive into the wheelhouse (``packaging.sdist``), saying so."""
        self.say(f"building {package} from source (no wheel fits {self.plat}; pure Python only)")
        wheelhouse = self.work / "wheelhouse"
        lines_file = self.work / "source-options.txt"
        lines_file.write_text("\n".join(_source_lines(self.files)) + "\n")
        args = [*self.opts.sources.pip_args(), "-r", str(lines_file)]
        if wheelhouse.is_dir():
            args += ["--find-links", str(wheelhouse)]

        def run(cmd: list[str], env: dict[str, str]) -> tuple[int, list[str]]:
            result = self.run(cmd, env, show=False)
            return result.returncode, list(result.tail)

        wheel = build_pure_wheel(
            package, wheelhouse, source_args=args, env=pip_env, run=run, platform=self.plat
        )
        version = wheel.name.split("-")[1]
        self.say(f"built {package.name} {version} from source (pure Python: {wheel.name})")
        self.built[_canonical(package.name)] = wheel
        self.opts = dataclasses.replace(self.opts, wheelhouse=wheelhouse)
        return wheel


def _sdist_only(lock: Path) -> tuple[list[SourceBuild], list[str]]:
    """From uv's pylock.toml: the packages it can take only from a source archive, and every ``name==version``."""
    with lock.open("rb") as f:
        doc = tomllib.load(f)
    sources, pins = [], []
    for pkg in doc.get("packages", []):
        name, version = pkg.get("name"), pkg.get("version")
        if not name or not version:
            continue
        pins.append(f"{name}=={version}")
        sdist = pkg.get("sdist")
        if sdist and not pkg.get("wheels"):
            sources.append(SourceBuild(name, f"=={version}", (sdist.get("hashes") or {}).get("sha256")))
    return sources, pins


def _install_with_uv(inst: _Install, uv: str, platform: str) -> tuple[_Run, str]:
    """Resolve with source archives allowed (pylock.toml), build the source-only ones that are pure Python,
    resolve again without the refused ones, then install wheels only, pinned to that resolution."""
    env = _env()
    inst.opts.sources.uv_env(env)
    pip_env = dict(env)
    inst.opts.sources.pip_env_like_uv(pip_env)
    lock = inst.work / _PYLOCK  # in a fresh folder: uv takes an existing output file as preferences
    lock.parent.mkdir()
    files = list(inst.files)
    if inst.specs:
        files.append(inst.work / "specs.txt")
        files[-1].write_text("\n".join(inst.specs) + "\n")
    no_build: list[str] = []
    refused: dict[str, DependencyError] = {}
    for _ in range(_MAX_SOURCE_ROUNDS):
        lock.unlink(missing_ok=True)
        cmd = _uv_lock_command(uv, inst.target, platform, lock, files, inst.opts, no_build)
        run = inst.run(cmd, env, show=False)  # it prints the whole lock file: the log has it
        if run.returncode != 0:
            text = "\n".join(run.tail)
            failed = _FAILED_BUILD.search(text)
            if failed and _canonical(failed[1]) not in {_canonical(n) for n in no_build}:
                no_build.append(failed[1])  # even its metadata cannot be built here: wheels only for it
                continue
            for name, error in refused.items():
                if re.search(rf"\b{re.escape(name)}\b", text, re.I):
                    raise error
            return run, "uv"
        sources, pins = _sdist_only(lock)
        if not _build_sources(inst, sources, pip_env, refused, no_build):
            break
    else:
        raise next(iter(refused.values()))
    constraints = inst.work / "constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    inst.say(f"installing wheels for {inst.target.describe()} with uv ({platform})")
    cmd = _uv_command(uv, inst.target, platform, inst.dest, inst.files, inst.specs, inst.opts, constraints)
    return inst.run(cmd, env), "uv"


def _build_sources(
    inst: _Install,
    sources: list[SourceBuild],
    env: dict[str, str],
    refused: dict[str, DependencyError],
    no_build: list[str],
) -> bool:
    """Build the source-only packages not built yet; whether any was refused (then it is in ``refused`` and
    ``no_build``, so the next resolution takes another version or fails with the build's error)."""
    any_refused = False
    for package in sources:
        done = inst.built.get(_canonical(package.name))
        if done is not None and f"=={done.name.split('-')[1]}" == package.specifier:
            continue
        try:
            inst.build(package, env)
        except DependencyError as e:
            refused[package.name] = e
            no_build.append(package.name)
            any_refused = True
    return any_refused


def _install_with_pip(inst: _Install) -> tuple[_Run, str]:
    """pip cannot resolve source archives for another platform, so: install wheels only, and when a requirement
    has none, build it from source (pure Python only) and try again with it in the wheelhouse."""
    env = _env()
    inst.opts.sources.pip_env(env)
    options = _pip_install_options(env)
    if inst.opts.exclude_newer and "--uploaded-prior-to" not in options:
        raise DependencyError(
            "--exclude-newer needs uv or pip 26 or newer (pip install uv, or pip install -U pip)"
        )
    report = inst.work / _PIP_REPORT if "--report" in options else None  # an older pip: files unknown
    inst.say(f"installing wheels for {inst.target.describe()} with pip ({inst.target.platform_tags()[0]})")
    for _ in range(_MAX_SOURCE_ROUNDS):
        run = inst.run(_pip_command(inst.target, inst.dest, inst.files, inst.specs, inst.opts, report), env)
        if run.returncode == 0:
            return run, "pip"
        text = "\n".join(run.tail)
        m = _PIP_UNSATISFIED.search(text)
        name = _REQUIREMENT_NAME.match(m[1]) if m else None
        if m is None or name is None or _canonical(name[0]) in inst.built or _NETWORK.search(text):
            return run, "pip"
        try:
            inst.build(SourceBuild(name[0], m[1][len(name[0]) :]), env)
        except DependencyError as e:
            if "No matching distribution" in str(e) or "from versions: none" in str(e):
                return run, "pip"  # no source archive either: the installer's own error says it best
            raise
        shutil.rmtree(inst.dest)
        inst.dest.mkdir()
    return run, "pip"


def _pip_install_options(env: dict[str, str]) -> str:
    """``pip install --help``: which options the pip in use has (``--uploaded-prior-to``, ``--report``)."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    return out.stdout


def _origins(inst: _Install) -> WheelOrigins:
    """Which wheel file each package came from, read from the work folder before it is removed: the wheels built
    here and pip's report are the very files; uv's lock lists every wheel of each locked version."""
    origins = WheelOrigins()
    for wheel in inst.built.values():
        origins.add_built(wheel)
    origins.add_pip_report(inst.work / _PIP_REPORT)
    origins.add_pylock(inst.work / _PYLOCK)
    return origins


def _uv_for(target: TargetPython, installer: Installer) -> tuple[str | None, str | None]:
    """uv and the target's uv platform name, or (None, None) when pip installs; the one chosen is there."""
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
    return (None, None) if uses_pip else (uv, platform)


def _run_installer(
    inst: _Install, uv: str | None, platform: str | None, installer: Installer
) -> tuple[_Run, str]:
    """Install with uv when it is given, else pip; pip too when ``auto`` and uv does not know the platform."""
    if uv is not None and platform is not None:
        run, tool = _install_with_uv(inst, uv, platform)
        rejected = any("invalid value" in line and "python-platform" in line for line in run.tail)
        if run.returncode == 0 or not rejected or installer != "auto":
            return run, tool
        # an older uv that does not know this platform name: pip can do it
        shutil.rmtree(inst.dest)
        inst.dest.mkdir()
    return _install_with_pip(inst)


def install_dependencies(
    target: TargetPython,
    dest: Path,
    *,
    requirements: Sequence[Path] = (),
    packages: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
    installer: Installer = "auto",
    sources: PackageSources | None = None,
    exclude_newer: str | None = None,
) -> tuple[InstalledWheel, ...]:
    """Install wheels for ``target`` into ``dest``, an empty or absent directory; return what was installed.

    ``dest`` becomes the image's ``/opt/ocibuild/site-packages``. uv is used when it is installed and can name the
    target's platform (seven times faster, docs/decisions.md), pip otherwise; ``installer`` forces one. A requirement
    with no wheel for the target but a source archive is built on the host into a wheel, used only if pure Python.
    ``sources`` replaces the installers' own index configuration; ``exclude_newer`` (an RFC 3339 UTC time, see
    ``sources.parse_exclude_newer``) ignores files uploaded after it. Installer output, credentials redacted, goes
    to a log file in the temp directory, which is kept and named in the error when the install fails.
    Files in ``dest`` may be hardlinks into uv's cache: replace them, never modify them in place.
    The result, for the image's SBOM, has one ``InstalledWheel`` per distribution in ``dest`` (sorted by canonical
    name) with the wheel file it came from when the installer recorded it (``packaging.installed``).
    """
    files, specs = _check_inputs(requirements, packages)
    if not files and not specs:
        return ()
    sources = sources or PackageSources()
    dest = Path(dest).absolute()
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ValueError(f"{dest} must be empty")

    uv, platform = _uv_for(target, installer)
    fd, log_name = tempfile.mkstemp(prefix="ocibuild-install-", suffix=".log")
    log_path = Path(log_name)
    work = Path(tempfile.mkdtemp(prefix="ocibuild-wheels-"))
    try:
        with os.fdopen(fd, "wb") as log:
            opts = _Options(sources, exclude_newer)
            inst = _Install(
                target, dest, files, specs, opts, log, log_path, work, Redactor(sources.secrets()), progress
            )
            run, tool = _run_installer(inst, uv, platform, installer)
        if run.returncode in (-signal.SIGINT, 128 + signal.SIGINT):
            # Ctrl-C reached the installer (the whole process group gets it) an instant before it reaches us:
            # this is an interruption, not an installer failure whose log is worth keeping.
            raise KeyboardInterrupt
        if run.returncode != 0:
            _raise_for(run, tool, target, log_path)
        origins = _origins(inst)
    except DependencyError as e:
        if str(log_path) not in str(e):
            log_path.unlink(missing_ok=True)
        raise  # a message that names the log keeps it
    except BaseException:
        # Interrupted, the installer did not start, or the message says it all: no log worth keeping.
        log_path.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log_path.unlink(missing_ok=True)
    _make_reproducible(dest, target)
    return installed_wheels(dest, origins)
