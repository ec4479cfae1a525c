"""Will the dependencies' native code load in the image? Every ELF file of the installed dependencies is matched
against the loader's rules: each DT_NEEDED library is found (RPATH/RUNPATH with ``$ORIGIN``, the wheels' bundled
``*.libs`` folders, ``LD_LIBRARY_PATH``, ``/etc/ld.so.conf``, the loader's default folders), the symbol versions it
needs from it exist there (``GLIBC_2.xx``, ``GLIBCXX_3.4.xx``, ...), and extension modules are built for the image's
Python and machine.

Two halves, so that a cached dependencies layer is checked against a new base without its files: ``scan`` reads
the installed folder into ``Needs`` (JSON, remembered with the layer), ``check`` judges ``Needs`` against the base's
``BaseFiles``. Only ELF headers and dynamic sections are read (``checks.elf``); nothing is loaded or run.
"""

from __future__ import annotations

import email.parser
import os
import posixpath
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..rootfs.elf import ElfInfo, read_elf
from ..rootfs.files import TRIPLETS, BaseFiles

if TYPE_CHECKING:
    from ..rootfs.pyenv import TargetPython

__all__ = ["Gap", "Needs", "check", "scan"]

_EXTENSION = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\.(?:(?P<tag>[A-Za-z0-9_-]+)\.)?so")
_CPYTHON_TAG = re.compile(r"cpython-(?P<major>\d)(?P<minor>\d+)[a-z]*(?:-(?P<platform>.+))?")
_GLIBC_VERSION = re.compile(r"GLIBC_(\d+)\.(\d+)(?:\.\d+)?")
_GLIBC_LIBS = re.compile(r"libc\.so\.6|libm\.so\.6|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|ld-linux.*")
# Put in place by the GPU driver on the host at run time (the NVIDIA container toolkit mounts them), never by an
# image: a dependency that links them directly is fine.
_DRIVER_LIBS = re.compile(
    r"libcuda\.so\.1|libnvidia-[a-z0-9_-]+\.so\.1|libnvcuvid\.so\.1|libcudadebugger\.so\.1"
)
# The Debian/Ubuntu package for libraries wheels commonly expect from the system (manylinux allows a few).
_DEBIAN_PACKAGES = {
    "libstdc++.so.6": "libstdc++6",
    "libgcc_s.so.1": "libgcc-s1",
    "libgomp.so.1": "libgomp1",
    "libgfortran.so.5": "libgfortran5",
    "libquadmath.so.0": "libquadmath0",
    "libz.so.1": "zlib1g",
    "libGL.so.1": "libgl1",
    "libEGL.so.1": "libegl1",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libgthread-2.0.so.0": "libglib2.0-0",
    "libgobject-2.0.so.0": "libglib2.0-0",
    "libX11.so.6": "libx11-6",
    "libXext.so.6": "libxext6",
    "libXrender.so.1": "libxrender1",
    "libSM.so.6": "libsm6",
    "libICE.so.6": "libice6",
    "libxcb.so.1": "libxcb1",
    "libsndfile.so.1": "libsndfile1",
    "libexpat.so.1": "libexpat1",
    "libffi.so.8": "libffi8",
    "libssl.so.3": "libssl3",
    "libcrypto.so.3": "libssl3",
    "libbz2.so.1.0": "libbz2-1.0",
    "liblzma.so.5": "liblzma5",
    "libnuma.so.1": "libnuma1",
    "libaio.so.1": "libaio1",
    "libgeos_c.so.1": "libgeos-c1v5",
}
# What python:X.Y-slim has beyond a minimal Debian: the libraries manylinux wheels take for granted.
_IN_SLIM = frozenset({"libstdc++.so.6", "libgcc_s.so.1"})
_GUI_LIBS = frozenset({"libGL.so.1", "libEGL.so.1", "libgthread-2.0.so.0", "libglib-2.0.so.0", "libX11.so.6"})


@dataclass(frozen=True)
class Needs:
    """What the installed dependencies ask of the image: their ELF files (path relative to the installed folder →
    distribution and ``ElfInfo``), read once and remembered with the layer."""

    files: dict[str, tuple[str, ElfInfo]]

    def to_json(self) -> dict:
        return {"files": {rel: [dist, asdict(info)] for rel, (dist, info) in self.files.items()}}

    @classmethod
    def from_json(cls, doc: dict) -> Needs:
        files = {}
        for rel, (dist, info) in doc["files"].items():
            info = dict(info)
            for key in ("needed", "rpath", "runpath", "version_defs"):
                info[key] = tuple(info[key])
            info["version_needs"] = tuple((lib, tuple(v)) for lib, v in info["version_needs"])
            files[rel] = (dist, ElfInfo(**info))
        return cls(files)


@dataclass(frozen=True)
class Gap:
    """One thing that will fail to load: which distribution, which of its files (and how many more), what is
    missing, and what to do."""

    dist: str
    file: str
    missing: str
    advice: str
    more: int = 0

    def __str__(self) -> str:
        more = f" (and {self.more} more file{'s' if self.more > 1 else ''})" if self.more else ""
        return f"{self.dist}: {self.file}{more} {self.missing}; {self.advice}"


# --- reading the installed folder ----------------------------------------------------------------------------------


def scan(site: Path) -> Needs:
    """The ELF files of an installed dependencies folder, each with the distribution whose RECORD lists it.

    Candidates are chosen by name (``*.so*``) or execute bit before anything is read: on the 18,800 files of a
    CUDA torch set that is 128 candidates, 120 of them ELF, read in about 20 ms.
    """
    owners = _owners(site)
    files: dict[str, tuple[str, ElfInfo]] = {}
    for path, rel in _candidates(site):
        info = read_elf(path)
        if info is not None:
            files[rel] = (owners.get(rel) or rel.split("/", 1)[0], info)
    return Needs(files)


def _candidates(site: Path) -> Iterator[tuple[str, str]]:
    todo = [("", str(site))]
    while todo:
        rel_dir, directory = todo.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                rel = f"{rel_dir}{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    if not entry.name.endswith(".dist-info"):
                        todo.append((rel + "/", entry.path))
                elif entry.is_file(follow_symlinks=False) and (
                    ".so" in entry.name or entry.stat(follow_symlinks=False).st_mode & 0o111
                ):
                    yield entry.path, rel


def _owners(site: Path) -> dict[str, str]:
    """Installed path (relative to ``site``) → the name of the distribution whose ``RECORD`` lists it."""
    owners: dict[str, str] = {}
    for info in site.glob("*.dist-info"):
        name = _dist_name(info)
        try:
            record = (info / "RECORD").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in record.splitlines():
            path = line.rsplit(",", 2)[0] if line.count(",") >= 2 else line
            if path:
                owners[posixpath.normpath(path)] = name
    return owners


def _dist_name(info: Path) -> str:
    try:
        with open(info / "METADATA", encoding="utf-8", errors="replace") as f:
            name = email.parser.Parser().parse(f, headersonly=True).get("Name")
    except OSError:
        name = None
    return str(name) if name else info.name.split("-", 1)[0]


# --- judging them against the base ----------------------------------------------------------------------------------


def check(
    needs: Needs, base: BaseFiles, target: TargetPython, site_in_image: str
) -> tuple[list[Gap], list[Gap]]:
    """What in ``needs`` will not load on ``base``, one ``Gap`` per distribution and missing thing: (errors,
    warnings); see ``_Checker.run``."""
    return _Checker(needs, base, target, "/" + site_in_image.strip("/")).run()


class _Checker:
    def __init__(self, needs: Needs, base: BaseFiles, target: TargetPython, site: str) -> None:
        self.needs, self.base, self.target, self.site = needs, base, target, site
        self.key = (
            64 if target.wheel_arch in _64BIT else 32,
            target.architecture != "s390x",
            target.architecture,
        )
        self.gaps: dict[tuple[str, str], tuple[str, list[str]]] = {}  # (dist, missing) → (advice, files)

    def run(self) -> tuple[list[Gap], list[Gap]]:
        """(errors, warnings). Errors: gaps in what importing an extension module (``NAME[.TAG].so``, ``NAME``
        not starting with ``lib``) or starting an executable loads. Warnings: gaps in a package's test programs
        (torch ships ``torch/bin/test_*``, which nothing runs) and in libraries that nothing links
        (``libNAME.so``, ``NAME.so.N``), which Python code or a library may load on demand: nvshmem's transports
        need InfiniBand libraries a server rarely has, and work without them. For those, a library that is not on
        their search path but is in the dependencies under that name counts as found: the loader takes a library
        already loaded by its soname (triton's plugins need the ``libtriton.so`` that importing triton loaded)."""
        everywhere = {rel.rsplit("/", 1)[-1] for rel in self.needs.files}
        everywhere |= {info.soname for _, info in self.needs.files.values() if info.soname}
        reached: set[str] = set()
        for rel, (_, info) in sorted(self.needs.files.items()):
            if _is_extension(rel) or (info.interpreter and not _is_test_program(rel)):
                self.load(rel, reached, set())
        errors = self.collected()
        self.gaps = {}
        for rel in sorted(self.needs.files):
            if rel not in reached:
                self.load(rel, reached, everywhere)
        return errors, _by_distribution(self.gaps)

    def collected(self) -> list[Gap]:
        return [
            Gap(dist, files[0], missing, advice, len(files) - 1)
            for (dist, missing), (advice, files) in self.gaps.items()
        ]

    def gap(self, dist: str, rel: str, missing: str, advice: str) -> None:
        files = self.gaps.setdefault((dist, missing), (advice, []))[1]
        if rel not in files:
            files.append(rel)

    def load(self, root: str, reached: set[str], loaded_elsewhere: set[str]) -> None:
        """Load ``root`` as the loader would (breadth first, each library once, RPATHs inherited down the chain
        of objects without a RUNPATH) and record every gap on the way."""
        loaded: dict[str, tuple[str, str]] = {}
        queue: list[tuple[str, tuple[str, ...]]] = [(root, ())]
        seen = {root}
        while queue:
            rel, chain = queue.pop(0)
            reached.add(rel)
            dist, info = self.needs.files[rel]
            if not self.loadable(rel, dist, info):
                continue
            origin = posixpath.dirname(f"{self.site}/{rel}")
            inherited = chain if not info.runpath else ()
            found: dict[str, tuple[str, str] | None] = {}
            for needed in info.needed:
                where = loaded.get(needed) or self.locate(needed, info, origin, inherited)
                found[needed] = where
                if where is None:
                    if not _DRIVER_LIBS.fullmatch(needed) and needed not in loaded_elsewhere:
                        self.gap(dist, rel, f"needs {needed}, found neither in the dependencies nor in the base image",
                                 self.advice(needed, dist))  # fmt: skip
                    continue
                loaded[needed] = where
                if where[0] == "layer" and (soname := self.needs.files[where[1]][1].soname):
                    loaded.setdefault(soname, where)
                if where[0] == "layer" and where[1] not in seen:
                    seen.add(where[1])
                    queue.append((where[1], (rel, *chain)))
            for library, versions in info.version_needs:
                where = found.get(library) or loaded.get(library)
                if where is not None:
                    self.versions(rel, dist, library, versions, where)

    def loadable(self, rel: str, dist: str, info: ElfInfo) -> bool:
        """Whether the file is for this platform (and Python, for an extension module); a gap when it is not."""
        extension = _EXTENSION.fullmatch(rel.rsplit("/", 1)[-1]) if _is_extension(rel) else None
        if info.key() != self.key:
            # Another platform's binaries outside extension modules are never loaded here (debugpy ships several).
            if extension:
                self.gap(
                    dist, rel, f"is built for {info.machine or 'another machine'}, not linux/{self.target.architecture}",
                    f"install {dist} for the image's platform (is --platform right?)",
                )  # fmt: skip
            return False
        if extension and (tag := extension["tag"]):
            self.abi(rel, dist, tag)
        if info.interpreter and not self.exists(info.interpreter):
            self.gap(
                dist, rel, f"needs the program loader {info.interpreter}, which the base image lacks",
                f"use a {self.target.libc} base image, or a release of {dist} built for {self.target.libc}",
            )  # fmt: skip
        return True

    def abi(self, rel: str, dist: str, tag: str) -> None:
        if tag == "abi3":
            return
        m = _CPYTHON_TAG.fullmatch(tag)
        want = f"{self.target.version[0]}.{self.target.version[1]}"
        if m is None:
            self.gap(dist, rel, f"is an extension module for another Python ({tag}), the image has CPython {want}",
                     f"install a CPython {want} release of {dist}")  # fmt: skip
            return
        have = f"{m['major']}.{m['minor']}"
        if have != want:
            self.gap(
                dist, rel, f"is built for CPython {have}, the image's Python is {want}",
                f"use a release of {dist} with wheels for CPython {want}, or a base image with Python {have}",
            )  # fmt: skip
            return
        platform = m["platform"]
        expected = TRIPLETS.get(self.target.architecture)
        if self.target.libc == "musl" and expected:
            expected = (
                expected.split("-", 1)[0] + "-linux-musl" + ("eabihf" if expected.endswith("eabihf") else "")
            )
        if platform and expected and platform != expected:
            self.gap(dist, rel, f"is built for {platform}, the image's Python is {expected}",
                     f"install {dist} for the image's platform (is --platform right?)")  # fmt: skip

    def search_path(self, info: ElfInfo, origin: str, inherited: tuple[str, ...]) -> Iterator[str]:
        """The loader's folders for ``info``'s dependencies, in its order: its own RPATH and those of the objects
        that loaded it (when it has no RUNPATH), LD_LIBRARY_PATH, its RUNPATH, ld.so.conf, the default folders."""
        if not info.runpath:
            yield from self.expand(info.rpath, origin)
            for rel in inherited:
                parent = self.needs.files[rel][1]
                yield from self.expand(parent.rpath, posixpath.dirname(f"{self.site}/{rel}"))
        yield from self.base.ld_library_path
        yield from self.expand(info.runpath, origin)
        yield from self.base.ld_conf_dirs
        yield from self.base.default_dirs

    def expand(self, paths: tuple[str, ...], origin: str) -> Iterator[str]:
        lib = "lib64" if self.key[0] == 64 else "lib"
        for p in paths:
            for token, value in (("ORIGIN", origin), ("LIB", lib), ("PLATFORM", self.target.wheel_arch)):
                p = p.replace("${" + token + "}", value).replace("$" + token, value)
            if p.startswith("/"):
                yield posixpath.normpath(p)

    def locate(
        self, name: str, info: ElfInfo, origin: str, inherited: tuple[str, ...] = ()
    ) -> tuple[str, str] | None:
        """("layer", relative path) or ("base", real path) of the file the loader takes for ``name``."""
        if "/" in name:
            return ("base", name) if self.exists(name) else None
        for directory in self.search_path(info, origin, inherited):
            if found := self.look(directory, name):
                return found
        return None

    def look(self, directory: str, name: str) -> tuple[str, str] | None:
        if directory == self.site or directory.startswith(self.site + "/"):
            rel = posixpath.normpath(posixpath.join(directory[len(self.site) + 1 :], name))
            entry = self.needs.files.get(rel)
            return ("layer", rel) if entry is not None and entry[1].key() == self.key else None
        real = self.base.find(directory, name)
        if real is None:
            return None
        facts = self.base.elf.get(real)
        if facts is not None and tuple(facts["key"]) != self.key:
            return None  # another machine's library (a multilib folder): the loader skips it and searches on
        return ("base", real)

    def exists(self, path: str) -> bool:
        directory, name = posixpath.split(path)
        return self.look(directory, name) is not None

    def versions(
        self, rel: str, dist: str, library: str, versions: tuple[str, ...], where: tuple[str, str]
    ) -> None:
        defs: tuple[str, ...] | None
        if where[0] == "layer":
            defs = self.needs.files[where[1]][1].version_defs
        else:
            facts = self.base.elf.get(where[1])
            defs = tuple(facts["defs"]) if facts is not None else None
        for version in versions:
            if defs is not None:
                if version in defs:
                    continue
                newest = _newest(defs, version)
                has = f" (its newest is {newest})" if newest else ""
            else:  # a library too big to have been read: only glibc's versions are known, from its banner
                m = _GLIBC_VERSION.fullmatch(version)
                if m is None or not _GLIBC_LIBS.fullmatch(library) or self.target.libc != "glibc":
                    continue
                if (int(m[1]), int(m[2])) <= self.target.libc_version:
                    continue
                has = f" (it has glibc {self.target.libc_version[0]}.{self.target.libc_version[1]})"
            where_text = "the dependencies'" if where[0] == "layer" else "the base image's"
            self.gap(dist, rel, f"needs {version} from {library}, which {where_text} {library} lacks{has}",
                     self.version_advice(library, version, dist))  # fmt: skip

    def advice(self, library: str, dist: str) -> str:
        py = f"{self.target.version[0]}.{self.target.version[1]}"
        package = _DEBIAN_PACKAGES.get(library)
        if (
            dist.lower().startswith(("opencv-python", "opencv-contrib-python"))
            and "headless" not in dist.lower()
        ) and library in _GUI_LIBS:
            return f"use {dist}-headless instead of {dist} (a server needs no GUI libraries)"
        if package and library in _IN_SLIM and self.target.libc == "glibc":
            return f"use a base with {package}, such as python:{py}-slim, or install {package} in the base"
        if package and self.target.libc == "glibc":
            return f"install {package} in the base image (apt-get install {package})"
        return f"install the system package that provides {library} in the base image"

    def version_advice(self, library: str, version: str, dist: str) -> str:
        if version.startswith("GLIBC_"):
            return f"use a base image with a newer glibc, or a release of {dist} built for an older one"
        package = _DEBIAN_PACKAGES.get(library, f"the package that provides {library}")
        return f"use a base image with a newer {package}, or a release of {dist} built against an older one"


def _is_test_program(rel: str) -> bool:
    """A package's own test executable (``torch/bin/test_api``, ``tests/run_test``): never run by a server."""
    parts = rel.split("/")
    name = parts[-1]
    return (
        name.startswith("test_") or name.endswith("_test") or any(p in ("test", "tests") for p in parts[:-1])
    )


def _is_extension(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return _EXTENSION.fullmatch(name) is not None and not (name.startswith("lib") and name.count(".") == 1)


def _by_distribution(gaps: dict[tuple[str, str], tuple[str, list[str]]]) -> list[Gap]:
    """One line per distribution for the libraries loaded only on demand: they are many in a CUDA set."""
    out: list[Gap] = []
    for dist in dict.fromkeys(d for d, _ in gaps):
        mine = [(missing, advice, files) for (d, missing), (advice, files) in gaps.items() if d == dist]
        if len(mine) == 1:
            missing, advice, files = mine[0]
            out.append(Gap(dist, files[0], missing, advice, len(files) - 1))
            continue
        libs = ", ".join(
            dict.fromkeys(m.split()[1].rstrip(",") for m, _, _ in mine if m.startswith("needs "))
        )
        files = list(dict.fromkeys(f for _, _, fs in mine for f in fs))
        out.append(Gap(dist, files[0], f"needs {libs}, which the base image lacks (libraries nothing links: loaded only on demand)",
                       "they fail only if used; install those libraries in the base image if you need them", len(files) - 1))  # fmt: skip
    return out


_64BIT = frozenset({"x86_64", "aarch64", "ppc64le", "s390x", "riscv64"})


def _newest(defs: tuple[str, ...], like: str) -> str | None:
    """The newest version in ``defs`` of the family of ``like`` (``GLIBCXX_3.4.30`` for ``GLIBCXX_3.4.32``)."""
    family = like.split("_", 1)[0] + "_"
    versions = [d for d in defs if d.startswith(family) and re.fullmatch(r"[0-9.]+", d[len(family) :])]
    return max(versions, key=lambda d: tuple(int(x) for x in d[len(family) :].split(".")), default=None)
