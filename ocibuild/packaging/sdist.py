"""Source-only pure-Python packages: build a source archive into a ``py3-none-any`` wheel on the host, or refuse.

Some packages publish only a source archive (``fusepy``, ``json-logging-py``, both needed by ``azureml-defaults``).
A pure-Python one builds to a wheel that runs anywhere, so building it on the host is safe for any image; a build
that compiles would make a wheel for the *host*, wrong in the image, so it is refused. Owns that build: one
``pip wheel --no-deps`` in an isolated build environment (PEP 517, nothing from the host's site-packages), with every
compiler on ``PATH`` replaced by a stub that fails at once (a compiling build is refused in seconds, not after
minutes of compiling) and ``SOURCE_DATE_EPOCH`` set (the same archive gives the same wheel bytes); then the wheel's
own tags decide. Never installs anything into the image and never builds for the image's platform.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ocibuild.errors import DependencyError

__all__ = ["SourceBuild", "build_pure_wheel", "pure_wheel_tags"]

# 1980-01-01: the oldest time a zip entry can hold; used when the user set no SOURCE_DATE_EPOCH.
DEFAULT_SOURCE_DATE_EPOCH = "315532800"
# Names a build would call to compile: C, C++, Fortran, Rust, and the tools that drive them.
_COMPILERS = (
    "cc", "gcc", "c++", "g++", "cpp", "clang", "clang++", "gfortran", "f95", "ld", "x86_64-linux-gnu-gcc",
    "aarch64-linux-gnu-gcc", "cargo", "rustc", "cmake", "ninja", "meson", "maturin", "zig", "nvcc",
)  # fmt: skip
_STUB_MARK = "ocibuild-no-compiler"
_STUB = f'#!/bin/sh\necho "{_STUB_MARK}: $(basename "$0") called by a source build" >&2\nexit 1\n'
_PURE_TAG = re.compile(r"^py\d*(?:\.py\d*)*-none-any$")


@dataclass(frozen=True)
class SourceBuild:
    """A package to build from its source archive: its name, a version specifier (``==3.0.1`` when the resolver
    chose the version, else what the installer asked for) and, when known, the archive's sha256."""

    name: str
    specifier: str = ""
    sha256: str | None = None

    def __str__(self) -> str:
        if self.specifier.startswith("==") and not any(c in self.specifier[2:] for c in ",<>!=~*"):
            return f"{self.name} {self.specifier[2:]}"
        return f"{self.name}{self.specifier}"


def pure_wheel_tags(wheel: Path) -> tuple[list[str], bool]:
    """The ``Tag:`` lines of a wheel's WHEEL file and whether it declares itself pure (``Root-Is-Purelib``)."""
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/WHEEL", n)]
        if len(names) != 1:
            return [], False
        text = z.read(names[0]).decode("utf-8", "replace")
    tags = re.findall(r"^Tag:\s*(\S+)\s*$", text, re.M)
    purelib = re.search(r"^Root-Is-Purelib:\s*true\s*$", text, re.M | re.I) is not None
    return tags, purelib


def _stub_dir(parent: Path) -> Path:
    stubs = parent / "no-compilers"
    stubs.mkdir()
    for name in _COMPILERS:
        path = stubs / name
        path.write_text(_STUB)
        path.chmod(0o755)
    return stubs


def _build_env(base: dict[str, str], stubs: Path) -> dict[str, str]:
    env = dict(base)
    env["PATH"] = f"{stubs}{os.pathsep}{env.get('PATH', os.defpath)}"
    for var in ("CC", "CXX", "CPP", "LDSHARED", "LDCXXSHARED", "FC", "F77", "F90", "CARGO", "RUSTC"):
        env[var] = str(stubs / "cc")
    env.setdefault("SOURCE_DATE_EPOCH", DEFAULT_SOURCE_DATE_EPOCH)
    env.pop("PIP_NO_BUILD_ISOLATION", None)  # the build stays isolated from the host's site-packages
    env["PYTHONNOUSERSITE"] = "1"
    return env


def build_pure_wheel(
    package: SourceBuild,
    wheelhouse: Path,
    *,
    source_args: Sequence[str],
    env: dict[str, str],
    run: Callable[[list[str], dict[str, str]], tuple[int, list[str]]],
    platform: str,
) -> Path:
    """Build ``package`` from its source archive into ``wheelhouse``; the wheel, or a one-line refusal.

    ``source_args`` and ``env`` carry the package sources (index URLs only in ``env``); ``run`` runs a command and
    returns its exit code and (redacted) output lines; ``platform`` names the image's platform for messages.
    """
    if importlib.util.find_spec("pip") is None:
        raise DependencyError(
            f"{package} has no wheel for {platform} and building it from source needs pip on this host; "
            f"install pip (python3 -m ensurepip), or provide a wheel of {package.name} with --find-links DIR"
        )
    with tempfile.TemporaryDirectory(prefix="ocibuild-sdist-") as tmp:
        work = Path(tmp)
        out = work / "out"
        requirement = package.name + package.specifier
        if package.sha256:
            requirement += f" --hash=sha256:{package.sha256}"  # the very archive the resolver chose
        (work / "requirement.txt").write_text(requirement + "\n")
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-binary", package.name, "--use-pep517"]
        cmd += ["--wheel-dir", str(out), "--no-input", "--disable-pip-version-check", "--progress-bar", "off"]
        cmd += [*source_args, "-r", str(work / "requirement.txt")]
        code, lines = run(cmd, _build_env(env, _stub_dir(work)))
        wheels = sorted(out.glob("*.whl")) if out.is_dir() else []
        if code != 0 or len(wheels) != 1:
            if any(_STUB_MARK in line for line in lines):
                raise DependencyError(
                    f"{package} has no wheel for {platform} and its source needs a compiler, which would build "
                    f"for this host, not the image; pin a version of {package.name} that publishes a wheel for "
                    f"it, or provide such a wheel with --find-links DIR"
                )
            reason = next((ln.strip() for ln in reversed(lines) if ln.strip().startswith("ERROR:")), None)
            raise DependencyError(
                f"{package} has no wheel for {platform} and building it from source failed"
                f"{f' ({reason[6:].strip()})' if reason else ''}; pin a version of {package.name} that publishes "
                "a wheel, or provide one with --find-links DIR"
            )
        wheel = wheels[0]
        tags, purelib = pure_wheel_tags(wheel)
        pure = all(_PURE_TAG.match(t) for t in tags) and any("py3" in t.split("-")[0] for t in tags)
        if not tags or not purelib or not pure:
            raise DependencyError(
                f"{package} has no wheel for {platform} and its source builds a platform wheel "
                f"({wheel.name}) for this host, not the image; pin a version of {package.name} that publishes "
                "a wheel for it, or provide such a wheel with --find-links DIR"
            )
        wheelhouse.mkdir(parents=True, exist_ok=True)
        dest = wheelhouse / wheel.name
        os.replace(wheel, dest)
        return dest
