"""The base image's Python: which interpreter, C library and architecture it has (``detect_target_python``).

Found by reading its layer tars (names, symlinks, hardlinks, whiteouts, and the contents of a handful of small
files) the way the container runtime would stack them (``rootfs.layers``); ``TargetPython`` then names the wheel
platforms that fit. Installing wheels for it is ``build.wheels``.

Never: runs the image or any binary from it, writes anything read from a layer to disk, follows a path outside the
image's own root (``..`` and absolute names are clamped to it, as a chroot would), or holds more than file names and
a few bounded scan results in memory.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from ocibuild.errors import BaseImageError
from ocibuild.rootfs.layers import Path as _Path
from ocibuild.rootfs.layers import Tree as _Tree
from ocibuild.rootfs.layers import normalise as _normalise
from ocibuild.rootfs.layers import read_tree

__all__ = [
    "TargetPython",
    "check_platform",
    "detect_target_python",
    "scan_member",
    "target_in_tree",
]

# --------------------------------------------------------------------------------------------------------------
# Platforms
# --------------------------------------------------------------------------------------------------------------

# OCI architecture (and variant) → the machine name used in wheel platform tags.
_WHEEL_ARCH: dict[tuple[str, str | None], str] = {
    ("amd64", None): "x86_64",
    ("arm64", None): "aarch64",
    ("arm64", "v8"): "aarch64",
    ("386", None): "i686",
    ("arm", None): "armv7l",
    ("arm", "v7"): "armv7l",
    ("arm", "v6"): "armv6l",
    ("ppc64le", None): "ppc64le",
    ("s390x", None): "s390x",
    ("riscv64", None): "riscv64",
}

# ELF e_machine → OCI architecture (ppc64 is only ppc64le when little-endian; checked separately).
_ELF_MACHINE = {3: "386", 40: "arm", 62: "amd64", 183: "arm64", 21: "ppc64le", 22: "s390x", 243: "riscv64"}

# The legacy manylinux names, by the glibc version each stands for (PEP 600), and the machines each exists for.
_MANYLINUX_LEGACY = {
    (2, 17): ("manylinux2014", {"x86_64", "i686", "aarch64", "armv7l", "ppc64", "ppc64le", "s390x"}),
    (2, 12): ("manylinux2010", {"x86_64", "i686"}),
    (2, 5): ("manylinux1", {"x86_64", "i686"}),
}

# The manylinux glibc minors uv 0.13's --python-platform can name (``uv help pip install``), for x86_64 and aarch64.
_UV_MANYLINUX_MINORS = (17, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40)


@dataclass(frozen=True)
class TargetPython:
    """The Python of a base image: what wheels must be built for to run there."""

    version: tuple[int, int]
    patch: int | None
    executable: str
    libc: str
    libc_version: tuple[int, int]
    architecture: str
    variant: str | None = None

    @property
    def wheel_arch(self) -> str:
        """The machine name used in wheel tags (``x86_64``, ``aarch64``, ...)."""
        arch = _WHEEL_ARCH.get((self.architecture, self.variant))
        arch = arch or _WHEEL_ARCH.get((self.architecture, None))
        if arch is None:
            raise BaseImageError(
                f"no Python wheel platform is known for linux/{self.architecture}"
                f"{'/' + self.variant if self.variant else ''}; use an amd64 or arm64 base image"
            )
        return arch

    @property
    def python_version(self) -> str:
        """``3.11.2`` when the patch level is known, else ``3.11``: what pip and uv are told."""
        text = f"{self.version[0]}.{self.version[1]}"
        return text if self.patch is None else f"{text}.{self.patch}"

    @property
    def abi(self) -> str:
        return f"cp{self.version[0]}{self.version[1]}"

    def platform_tags(self) -> list[str]:
        """pip ``--platform`` values for this image, most specific first (as ``packaging.tags`` orders them)."""
        arch = self.wheel_arch
        major, minor = self.libc_version
        tags: list[str] = []
        if self.libc == "glibc":
            lowest = 5 if arch in ("x86_64", "i686") else 17
            for m in range(minor, lowest - 1, -1):
                tags.append(f"manylinux_{major}_{m}_{arch}")
                legacy = _MANYLINUX_LEGACY.get((major, m))
                if legacy and arch in legacy[1]:
                    tags.append(f"{legacy[0]}_{arch}")
        else:
            tags.extend(f"musllinux_{major}_{m}_{arch}" for m in range(minor, -1, -1))
        return tags

    def uv_platform(self) -> str | None:
        """The ``uv pip install --python-platform`` value that matches this image, or None when uv has none.

        uv names a fixed set of platforms. A glibc image gets uv only when uv names its exact glibc version (or the
        image is newer than everything uv names): the nearest older name would hide wheels built for the versions in
        between (a glibc 2.27 image mapped to uv's 2.17 would miss every ``manylinux_2_27`` wheel, e.g. numpy >= 2.3).
        uv's musl targets mean ``musllinux_1_2``, so only musl >= 1.2 qualifies.
        """
        arch = self.wheel_arch
        if arch not in ("x86_64", "aarch64"):
            return None
        if self.libc == "musl":
            return f"{arch}-unknown-linux-musl" if self.libc_version >= (1, 2) else None
        major, minor = self.libc_version
        if major != 2:
            return None
        if minor in _UV_MANYLINUX_MINORS:
            return f"{arch}-manylinux_2_{minor}"
        if minor > _UV_MANYLINUX_MINORS[-1]:
            return f"{arch}-manylinux_2_{_UV_MANYLINUX_MINORS[-1]}"
        return None

    def describe(self) -> str:
        """One short phrase for messages: ``CPython 3.11.2, glibc 2.36, linux/amd64``."""
        plat = f"linux/{self.architecture}" + (f"/{self.variant}" if self.variant else "")
        return f"CPython {self.python_version}, {self.libc} {self.libc_version[0]}.{self.libc_version[1]}, {plat}"


# --------------------------------------------------------------------------------------------------------------
# A virtual view of the image's filesystem, from the layer tars
# --------------------------------------------------------------------------------------------------------------

_SCAN_LIMIT = 64 * 1024 * 1024  # bytes of one file that are ever looked at (a stripped libpython is ~5 MB)
_CHUNK = 1024 * 1024
_OVERLAP = 512  # bytes carried between chunks so that a pattern split across two chunks is still seen
_ELF_HEAD = 64 * 1024  # the ELF header, program headers and PT_INTERP string lie here in every real binary
_MAX_VERSIONS = 64  # distinct version strings remembered from one file

_GLIBC_BANNER = re.compile(
    rb"(?:GNU C Library|ld\.so) \([^)\n\x00]{0,120}\) [a-z ]{0,40}version (\d+)\.(\d+)"
)
_GLIBC_SYMVER = re.compile(rb"\x00GLIBC_2\.(\d+)(?:\.\d+)?\x00")
_MUSL_BANNER = re.compile(rb"musl libc \(")
_MUSL_VERSION = re.compile(rb"\x00(1)\.(\d+)\.\d+[a-z0-9_.+-]{0,24}\x00")
_APK_MUSL = re.compile(rb"(?:^|\n)P:musl\nV:(\d+)\.(\d+)")
# "3.M.P" ending a string; the byte before must not be a digit or a dot (checked by hand: a look-behind makes this
# regex 60 times slower on a 23 MB libpython).
_PY_VERSION = re.compile(rb"3\.(\d{1,2})\.(\d{1,2})(?:(?:a|b|rc)\d{1,2})?\+?\x00")

_LIBC_NAME = re.compile(
    r"libc\.so\.6|libc-\d+\.\d+\.so|libc\.so|ld-musl-[^/]+\.so\.1|libc\.musl-[^/]+\.so\.1"
)
_LOADER_NAME = re.compile(r"ld-linux[^/]*\.so\.\d|ld64\.so\.\d|ld\.so\.1")
_PYTHON_NAME = re.compile(r"python3(?:\.\d+)?")
_LIBPYTHON_NAME = re.compile(r"libpython3\.\d+\.so(?:\.1(?:\.0)?)?")
_APK_DB = ("lib", "apk", "db", "installed")


@dataclass(frozen=True, slots=True)
class _Elf:
    machine: str | None
    interpreter: str | None


@dataclass(frozen=True, slots=True)
class _Facts:
    """What a scan of one file found; shared by every hardlink to it."""

    glibc: tuple[int, int] | None = None
    musl: tuple[int, int] | None = None
    py_versions: frozenset[tuple[int, int]] = frozenset()  # (minor, patch) of every "3.M.P" string seen
    elf: _Elf | None = None


def _scan_kind(path: _Path) -> str | None:
    """Which of the few interesting files this member is, judged by name alone (content is read only for these)."""
    if not path:
        return None
    name = path[-1]
    if path == _APK_DB:
        return "apk"
    if _LIBC_NAME.fullmatch(name) or _LOADER_NAME.fullmatch(name):
        return "libc"
    if _PYTHON_NAME.fullmatch(name) and len(path) >= 2 and path[-2] == "bin":
        return "python"
    if _LIBPYTHON_NAME.fullmatch(name):
        return "libpython"
    return None


def _chunks(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(offset, window) pairs over at most _SCAN_LIMIT bytes, each window overlapping the last by _OVERLAP."""
    tail = b""
    offset = 0
    while offset < _SCAN_LIMIT:
        chunk = stream.read(min(_CHUNK, _SCAN_LIMIT - offset))
        if not chunk:
            return
        yield offset - len(tail), tail + chunk
        offset += len(chunk)
        tail = chunk[-_OVERLAP:]


def _parse_elf(head: bytes) -> _Elf | None:
    """Machine and program interpreter (PT_INTERP) of an ELF file from its first bytes; None if not ELF."""
    if len(head) < 52 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
        return None
    is64 = head[4] == 2
    end = "<" if head[5] == 1 else ">"
    # Offsets of (e_phoff, e_phentsize, e_phnum) and, in a program header, of (p_offset, p_filesz).
    word = "Q" if is64 else "I"
    phoff_at, phent_at, off_at, size_at = (32, 54, 8, 32) if is64 else (28, 42, 4, 16)
    interp = None
    try:
        (machine,) = struct.unpack_from(end + "H", head, 18)
        (phoff,) = struct.unpack_from(end + word, head, phoff_at)
        phentsize, phnum = struct.unpack_from(end + "HH", head, phent_at)
        for i in range(min(phnum, 256)):
            at = phoff + i * phentsize
            if struct.unpack_from(end + "I", head, at)[0] != 3:  # PT_INTERP
                continue
            (p_offset,) = struct.unpack_from(end + word, head, at + off_at)
            (p_filesz,) = struct.unpack_from(end + word, head, at + size_at)
            raw = head[p_offset : p_offset + min(p_filesz, 4096)]
            interp = raw.split(b"\0", 1)[0].decode("utf-8", "replace") or None
            break
    except struct.error:
        return None
    arch = "ppc64" if machine == 21 and end == ">" else _ELF_MACHINE.get(machine)
    return _Elf(machine=arch, interpreter=interp)


def _scan(kind: str, name: str, stream: BinaryIO) -> _Facts:
    """Read one interesting file's first _SCAN_LIMIT bytes in chunks and keep only what was found."""
    if kind == "apk":
        return _scan_apk_db(stream)
    if kind == "libc":
        return _scan_libc(name, stream)
    return _scan_python(stream, with_elf=kind == "python")


def _scan_apk_db(stream: BinaryIO) -> _Facts:
    """Alpine's package database: the version of its musl package."""
    for _, window in _chunks(stream):
        if m := _APK_MUSL.search(window):
            return _Facts(musl=(int(m[1]), int(m[2])))
    return _Facts()


def _scan_libc(name: str, stream: BinaryIO) -> _Facts:
    """A C library or loader: glibc's version; musl's when its banner and exactly one version string show."""
    banner: tuple[int, int] | None = None
    symver = -1
    musl_seen = False
    musl_versions: set[tuple[int, int]] = set()
    for _, window in _chunks(stream):
        if banner is None and (m := _GLIBC_BANNER.search(window)):
            banner = (int(m[1]), int(m[2]))
        for m in _GLIBC_SYMVER.finditer(window):
            symver = max(symver, int(m[1]))
        musl_seen = musl_seen or _MUSL_BANNER.search(window) is not None
        for m in _MUSL_VERSION.finditer(window):
            if len(musl_versions) < _MAX_VERSIONS:
                musl_versions.add((int(m[1]), int(m[2])))
    musl = None
    if musl_seen and len(musl_versions) == 1:
        musl = next(iter(musl_versions))
    return _Facts(glibc=_file_glibc_version(banner, symver, name), musl=musl)


def _file_glibc_version(banner: tuple[int, int] | None, symver: int, name: str) -> tuple[int, int] | None:
    """The banner's version, else the newest GLIBC_2.N symbol version (-1: none), else the file name's."""
    if banner is not None:
        return banner
    if symver >= 0:
        return (2, symver)  # the newest symbol version it defines: a lower bound, never too new
    if m := re.fullmatch(r"libc-(\d+)\.(\d+)\.so", name):
        return (int(m[1]), int(m[2]))
    return None


def _scan_python(stream: BinaryIO, *, with_elf: bool) -> _Facts:
    """An interpreter or libpython: every "3.M.P" version string in it and, ``with_elf``, its ELF header."""
    py_versions: set[tuple[int, int]] = set()
    head = b""
    for offset, window in _chunks(stream):
        if offset <= 0:
            head = window[:_ELF_HEAD]
        for m in _PY_VERSION.finditer(window):
            if m.start() > 0 and window[m.start() - 1] in b"0123456789.":
                continue
            if len(py_versions) < _MAX_VERSIONS:
                py_versions.add((int(m[1]), int(m[2])))
    return _Facts(py_versions=frozenset(py_versions), elf=_parse_elf(head) if with_elf else None)


_MAX_ENTRIES = 1_000_000


def scan_member(path: _Path, size: int, open_content: Callable[[], BinaryIO | None]) -> _Facts | None:
    kind = _scan_kind(path)
    if kind is None:
        return None
    content = open_content()
    return None if content is None else _scan(kind, path[-1], content)


def _build_tree(layers: Sequence[Callable[[], BinaryIO]], what: str) -> _Tree:
    return read_tree(layers, what, scan_member, max_entries=_MAX_ENTRIES)


# --------------------------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------------------------

_PREFERRED = (("usr", "local", "bin", "python3"), ("usr", "bin", "python3"))


def _as_abs(path: _Path) -> str:
    return "/" + "/".join(path)


def _interpreter_candidates(tree: _Tree) -> list[_Path]:
    candidates = list(_PREFERRED)
    for bindir in (("usr", "local", "bin"), ("usr", "bin")):
        versioned = [n for n in tree.listdir(bindir) if re.fullmatch(r"python3\.\d+", n)]
        versioned.sort(key=lambda n: int(n.split(".")[1]), reverse=True)
        candidates.extend((*bindir, n) for n in versioned)
    return candidates


def _stdlib_minors(tree: _Tree, prefix: _Path) -> set[int]:
    minors = set()
    for lib in ("lib", "lib64"):
        for name in tree.listdir((*prefix, lib)):
            m = re.fullmatch(r"python3\.(\d+)", name)
            if m and tree.file((*prefix, lib, name, "os.py"))[0] is not None:
                minors.add(int(m[1]))
    return minors


def _prefixes(*paths: _Path) -> list[_Path]:
    """The install prefixes (``usr/local`` for ``usr/local/bin/python3``) of interpreter paths, deduplicated."""
    seen: list[_Path] = []
    for path in paths:
        if len(path) >= 2 and path[-2] == "bin" and path[:-2] not in seen:
            seen.append(path[:-2])
    return seen


def _libpython_versions(tree: _Tree, prefixes: Iterable[_Path], minor: int) -> set[tuple[int, int]]:
    found: set[tuple[int, int]] = set()
    for prefix in prefixes:
        dirs = [(*prefix, "lib"), (*prefix, "lib64")]
        dirs += [
            (*prefix, "lib", d) for d in tree.listdir((*prefix, "lib")) if re.fullmatch(r"[^/]+-linux-\w+", d)
        ]
        for d in dirs:
            for name in tree.listdir(d):
                if name.startswith(f"libpython3.{minor}.so"):
                    node, _ = tree.file((*d, name))
                    if node is not None and node.facts is not None:
                        found |= node.facts.py_versions
    return found


@dataclass
class _Interpreter:
    path: _Path
    minor: int
    patch: int | None
    elf: _Elf | None


def _find_interpreter(tree: _Tree, what: str) -> _Interpreter:
    missing_stdlib: str | None = None
    for candidate in _interpreter_candidates(tree):
        node, real = tree.file(candidate)
        if node is None:
            continue
        facts = node.facts or _Facts()
        prefixes = _prefixes(candidate, real)
        stdlibs: set[int] = set()
        for prefix in prefixes:
            stdlibs |= _stdlib_minors(tree, prefix)
        minor = None
        for name in (real[-1], candidate[-1]):
            if m := re.fullmatch(r"python3\.(\d+)", name):
                minor = int(m[1])
                break
        if minor is None:
            # A bare "python3" file: the standard library says which, or the binary's strings do.
            by_strings = {v[0] for v in facts.py_versions} & stdlibs
            minor = next(iter(stdlibs)) if len(stdlibs) == 1 else (max(by_strings) if by_strings else None)
        if minor is None or minor not in stdlibs:
            if missing_stdlib is None:
                prefix = prefixes[0] if prefixes else ("usr",)
                stdlib = _as_abs((*prefix, "lib", f"python3.{'X' if minor is None else minor}", "os.py"))
                missing_stdlib = (
                    f"{what} has {_as_abs(candidate)} but not its standard library ({stdlib}); "
                    "use a base whose Python is complete, e.g. python:3.11-slim"
                )
            continue
        versions = {v for v in facts.py_versions if v[0] == minor}
        versions |= _libpython_versions(tree, prefixes, minor)
        patches = {patch for _, patch in versions}
        patch = next(iter(patches)) if len(patches) == 1 else None
        return _Interpreter(path=candidate, minor=minor, patch=patch, elf=facts.elf)
    if missing_stdlib:
        raise BaseImageError(missing_stdlib)
    raise BaseImageError(
        f"{what} has no Python 3 interpreter (looked for /usr/bin/python3, /usr/local/bin/python3); "
        "use a base with Python, e.g. python:3.11-slim"
    )


_LIB_DIRS: tuple[_Path, ...] = (("lib",), ("lib64",), ("usr", "lib"), ("usr", "lib64"))


def _lib_dirs(tree: _Tree) -> list[_Path]:
    dirs = list(_LIB_DIRS)
    for base in (("lib",), ("usr", "lib")):
        dirs += [(*base, d) for d in tree.listdir(base) if re.fullmatch(r"[^/]+-linux-\w+", d)]
    return dirs


def _glibc_version(tree: _Tree, loader: _Path | None) -> tuple[int, int] | None:
    dirs: list[_Path] = []
    if loader is not None:
        _, real = tree.file(loader)
        if real:
            dirs.append(real[:-1])
    dirs += _lib_dirs(tree)
    for d in dirs:
        node, _ = tree.file((*d, "libc.so.6"))
        if node is not None and node.facts is not None and node.facts.glibc is not None:
            return node.facts.glibc
    if loader is not None:
        node, _ = tree.file(loader)
        if node is not None and node.facts is not None and node.facts.glibc is not None:
            return node.facts.glibc
    return None


def _musl_loaders(tree: _Tree) -> list[_Path]:
    found = []
    for d in _lib_dirs(tree):
        found += [(*d, n) for n in tree.listdir(d) if re.fullmatch(r"ld-musl-[^/]+\.so\.1", n)]
    return found


def _musl_version(tree: _Tree, loader: _Path | None) -> tuple[int, int] | None:
    apk, _ = tree.file(_APK_DB)
    if apk is not None and apk.facts is not None and apk.facts.musl is not None:
        return apk.facts.musl
    for path in ([loader] if loader else []) + _musl_loaders(tree):
        node, _ = tree.file(path)
        if node is not None and node.facts is not None and node.facts.musl is not None:
            return node.facts.musl
    return None


def _libc(tree: _Tree, interp: _Interpreter, what: str) -> tuple[str, tuple[int, int]]:
    loader = _normalise(interp.elf.interpreter) if interp.elf and interp.elf.interpreter else None
    kind: str | None = None
    if loader:
        if loader[-1].startswith("ld-musl-"):
            kind = "musl"
        elif _LOADER_NAME.fullmatch(loader[-1]):
            kind = "glibc"
        else:
            raise BaseImageError(
                f"{what}: {_as_abs(interp.path)} uses the C library loader {_as_abs(loader)}, which is neither "
                "glibc nor musl; use a Debian, Ubuntu or Alpine based image"
            )
    if kind in (None, "glibc"):
        version = _glibc_version(tree, loader if kind else None)
        if version is not None:
            return "glibc", version
        if kind == "glibc":
            raise BaseImageError(
                f"{what}: {_as_abs(interp.path)} needs glibc but its version could not be read from libc.so.6; "
                "use a Debian, Ubuntu or Alpine based image"
            )
    musl_loaders = _musl_loaders(tree)
    if kind == "musl" or musl_loaders:
        version = _musl_version(tree, loader if kind else None)
        if version is not None:
            return "musl", version
        raise BaseImageError(
            f"{what}: {_as_abs(interp.path)} uses musl but its version could not be read "
            f"(from lib/apk/db/installed or {_as_abs(loader or musl_loaders[0])}); "
            "use a Debian, Ubuntu or Alpine based image"
        )
    raise BaseImageError(
        f"{what}: cannot tell which C library {_as_abs(interp.path)} uses (no glibc libc.so.6 or musl "
        "ld-musl-*.so.1 found); use a Debian, Ubuntu or Alpine based image"
    )


def detect_target_python(
    layers: Sequence[Callable[[], BinaryIO]],
    architecture: str,
    variant: str | None = None,
    *,
    what: str = "base image",
) -> TargetPython:
    """The Python, C library and platform of an image, from its layers alone (nothing is run or unpacked).

    ``layers`` open each layer's *uncompressed* tar stream, bottom layer first; each is read once, front to back.
    ``what`` names the image in error messages (e.g. ``base image python:3.11-slim``).
    """
    check_platform(architecture, variant, what)
    return target_in_tree(_build_tree(layers, what), architecture, variant, what=what)


def check_platform(architecture: str, variant: str | None, what: str) -> None:
    """Refuse, before reading a layer, a platform that has no Python wheels."""
    if (architecture, variant) not in _WHEEL_ARCH and (architecture, None) not in _WHEEL_ARCH:
        plat = f"linux/{architecture}" + (f"/{variant}" if variant else "")
        raise BaseImageError(
            f"{what} is for {plat}, for which there are no Python wheels; use an amd64 or arm64 base image"
        )


def target_in_tree(tree: _Tree, architecture: str, variant: str | None = None, *, what: str) -> TargetPython:
    """``detect_target_python`` of a tree read with ``scan_member`` (``layers.read_trees``)."""
    interp = _find_interpreter(tree, what)
    if interp.elf is not None and interp.elf.machine is not None and interp.elf.machine != architecture:
        raise BaseImageError(
            f"{what} says it is for linux/{architecture} but its {_as_abs(interp.path)} is built for "
            f"{interp.elf.machine}; the image is mislabelled, pick the platform that matches its binaries"
        )
    libc, libc_version = _libc(tree, interp, what)
    return TargetPython(
        version=(3, interp.minor),
        patch=interp.patch,
        executable=_as_abs(interp.path),
        libc=libc,
        libc_version=libc_version,
        architecture=architecture,
        variant=variant,
    )
