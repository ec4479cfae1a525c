"""What the base image's files offer a dependency: its shared libraries (with the symbol versions each defines),
the loader's search path (``/etc/ld.so.conf``, ``LD_LIBRARY_PATH``), and the Python modules its interpreter can
import (standard library, ``lib-dynload``, modules built into the interpreter, site-/dist-packages).

Read once from the layers (``rootfs.layers``: names, plus the content of the few files that say something: the
loader's configuration, libraries up to ``_LIBRARY_LIMIT`` bytes, the interpreter and libpython), and kept as a
small JSON document cached by the image's layer and config digests, so a rebuild on the same base reads nothing.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from .elf import parse_elf
from .layers import Dir, File, Link, Path, Tree, as_abs, normalise, read_tree

if TYPE_CHECKING:
    from .pyenv import TargetPython

__all__ = ["BaseFiles", "FORMAT", "files_in_tree", "read_base_files", "scan_member"]

FORMAT = 1  # bumped whenever what is kept changes, so an old cached document is not misread
_LIBRARY_LIMIT = 64 << 20  # a library larger than this is known by name only (its version definitions unread)
_TEXT_LIMIT = 64 << 10
_SCAN_CHUNK = 1 << 20
_SCAN_LIMIT = 64 << 20
_MAX_DEPTH = 4  # namespace packages are followed this deep

# What DT_NEEDED names: plugins (gconv, PAM, perl modules) are left out.
_LIBRARY_NAME = re.compile(r"(?:lib|ld).*\.so(?:\.[0-9.]+)?")
_PYTHON_FILE = re.compile(r"python3(?:\.\d+)?|libpython3\.\d+\.so(?:\.[0-9.]+)?")
_PYINIT = re.compile(rb"PyInit_([A-Za-z0-9_]{1,64})\x00")
_EXTENSION = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\.(?:[A-Za-z0-9_-]+\.)?so")
_PYDIR = re.compile(r"python3(?:\.\d+)?")
# Modules every CPython has inside the interpreter without a PyInit_ symbol of their own.
_CORE_MODULES = ("sys", "builtins", "marshal", "_warnings", "_imp", "_io", "_thread", "_weakref")
# The multiarch names, by OCI architecture: the folders Debian/Ubuntu's glibc searches after ld.so.cache, and
# the platform part of CPython's extension module suffix (``cpython-311-x86_64-linux-gnu``).
TRIPLETS = {
    "amd64": "x86_64-linux-gnu",
    "arm64": "aarch64-linux-gnu",
    "386": "i386-linux-gnu",
    "arm": "arm-linux-gnueabihf",
    "ppc64le": "powerpc64le-linux-gnu",
    "s390x": "s390x-linux-gnu",
    "riscv64": "riscv64-linux-gnu",
}

# A module tree: name → "m" (a module or regular package: what lies below is its own business) or, for a namespace
# package, its own tree.
ModuleTree = dict[str, "str | ModuleTree"]


@dataclass(frozen=True)
class BaseFiles:
    """The base image's files as the checks see them; a JSON document (``to_json``/``from_json``)."""

    libraries: dict[str, dict[str, str]]  # real directory → {file name: real path of the file it names}
    elf: dict[str, dict]  # real path → {"key": [bits, little_endian, machine], "soname", "defs": [...]}
    dir_links: dict[str, str]  # a symlink to a directory → the real directory
    ld_conf_dirs: tuple[str, ...]  # /etc/ld.so.conf and what it includes, in order
    ld_library_path: tuple[str, ...]  # the image config's LD_LIBRARY_PATH
    default_dirs: tuple[str, ...]  # the loader's own search path after ld.so.cache
    stdlib: frozenset[str]  # top-level names of the standard library, lib-dynload and built-in modules
    site: ModuleTree = field(default_factory=dict)  # site-/dist-packages and PYTHONPATH, merged
    python_dirs: tuple[str, ...] = ()  # where those were read (for messages)

    def real_dir(self, path: str) -> str:
        """``path`` with symlinked directories resolved (``/lib/x86_64-linux-gnu`` → ``/usr/lib/...``)."""
        parts = list(normalise(path))
        for _ in range(40):
            for i in range(len(parts), 0, -1):
                target = self.dir_links.get(as_abs(tuple(parts[:i])))
                if target is not None:
                    parts = list(normalise(target)) + parts[i:]
                    break
            else:
                break
        return as_abs(tuple(parts))

    def find(self, directory: str, name: str) -> str | None:
        """The real path of library ``name`` in ``directory`` of the image, if it is there."""
        return self.libraries.get(self.real_dir(directory), {}).get(name)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "libraries": self.libraries,
            "elf": self.elf,
            "dir_links": self.dir_links,
            "ld_conf_dirs": list(self.ld_conf_dirs),
            "ld_library_path": list(self.ld_library_path),
            "default_dirs": list(self.default_dirs),
            "stdlib": sorted(self.stdlib),
            "site": self.site,
            "python_dirs": list(self.python_dirs),
        }

    @classmethod
    def from_json(cls, doc: dict) -> BaseFiles:
        if doc.get("format") != FORMAT:
            raise ValueError("another format")
        return cls(
            libraries=doc["libraries"],
            elf=doc["elf"],
            dir_links=doc["dir_links"],
            ld_conf_dirs=tuple(doc["ld_conf_dirs"]),
            ld_library_path=tuple(doc["ld_library_path"]),
            default_dirs=tuple(doc["default_dirs"]),
            stdlib=frozenset(doc["stdlib"]),
            site=doc["site"],
            python_dirs=tuple(doc["python_dirs"]),
        )


# --- reading the layers --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Text:
    text: str


@dataclass(frozen=True, slots=True)
class _Lib:
    facts: dict


@dataclass(frozen=True, slots=True)
class _PyInit:
    names: frozenset[str]


def _under_python(path: Path) -> bool:
    return any(_PYDIR.fullmatch(p) for p in path[:-1])


def scan_member(path: Path, size: int, open_content: Callable[[], BinaryIO | None]) -> object:
    """Keep what the checks need of one regular file: decided by its name and size before anything is read."""
    name = path[-1]
    if path[0] == "etc" and size <= _TEXT_LIMIT and _is_loader_config(path):
        content = open_content()
        return None if content is None else _Text(content.read(_TEXT_LIMIT).decode("utf-8", "replace"))
    if _PYTHON_FILE.fullmatch(name) and (name.startswith("lib") or path[-2:-1] == ("bin",)):
        content = open_content()
        return None if content is None else _PyInit(_pyinit_names(content))
    if _LIBRARY_NAME.fullmatch(name) and size <= _LIBRARY_LIMIT and not _under_python(path):
        content = open_content()
        info = parse_elf(content.read(_LIBRARY_LIMIT)) if content is not None else None
        if info is None:
            return None
        return _Lib({"key": list(info.key()), "soname": info.soname, "defs": list(info.version_defs)})
    return None


def _is_loader_config(path: Path) -> bool:
    if path == ("etc", "ld.so.conf"):
        return True
    if len(path) == 3 and path[1] == "ld.so.conf.d":
        return True
    return len(path) == 2 and fnmatch.fnmatch(path[1], "ld-musl-*.path")


def _pyinit_names(stream: BinaryIO) -> frozenset[str]:
    names: set[str] = set()
    tail = b""
    done = 0
    while done < _SCAN_LIMIT and (chunk := stream.read(_SCAN_CHUNK)):
        window = tail + chunk
        names.update(m[1].decode() for m in _PYINIT.finditer(window))
        tail = window[-80:]
        done += len(chunk)
    return frozenset(names)


def read_base_files(
    layers: Sequence[Callable[[], BinaryIO]],
    target: TargetPython,
    env: Sequence[str] = (),
    *,
    what: str = "base image",
) -> BaseFiles:
    """Read the layers (uncompressed tar openers, bottom first) into ``BaseFiles`` for ``target``'s Python.

    ``env`` is the image config's ``Env`` (its ``LD_LIBRARY_PATH`` and ``PYTHONPATH`` count).
    """
    return files_in_tree(read_tree(layers, what, scan_member), target, env)


def files_in_tree(tree: Tree, target: TargetPython, env: Sequence[str] = ()) -> BaseFiles:
    """``read_base_files`` of a tree read with ``scan_member`` (``layers.read_trees``)."""
    variables = dict(v.split("=", 1) for v in env if "=" in v)
    libraries: dict[str, dict[str, str]] = {}
    elf: dict[str, dict] = {}
    dir_links: dict[str, str] = {}
    for dir_path, name, node in _walk(tree):
        path = (*dir_path, name)
        if isinstance(node, Link):
            target_node, real = tree.resolve(path)
            if isinstance(target_node, Dir) and real != path:
                dir_links[as_abs(path)] = as_abs(real)
                continue
        if not _LIBRARY_NAME.fullmatch(name) or _under_python(path):
            continue
        found, real = tree.file(path)
        if found is None:
            continue
        libraries.setdefault(as_abs(dir_path), {})[name] = as_abs(real)
        if isinstance(found.facts, _Lib):
            elf[as_abs(real)] = found.facts.facts
    stdlib, site, python_dirs = _python_modules(tree, target, variables.get("PYTHONPATH", ""))
    return BaseFiles(
        libraries=libraries,
        elf=elf,
        dir_links=dir_links,
        ld_conf_dirs=tuple(_ld_conf_dirs(tree)),
        ld_library_path=tuple(p for p in variables.get("LD_LIBRARY_PATH", "").split(":") if p),
        default_dirs=_default_dirs(tree, target),
        stdlib=stdlib,
        site=site,
        python_dirs=tuple(python_dirs),
    )


def _walk(tree: Tree) -> Iterator[tuple[Path, str, File | Link | Dir]]:
    """(directory, name, node) of every entry, directories first; symlinked directories are not entered."""
    todo: list[tuple[Path, Dir]] = [((), tree.root)]
    while todo:
        path, node = todo.pop()
        for name, child in node.children.items():
            yield path, name, child
            if isinstance(child, Dir):
                todo.append(((*path, name), child))


def _ld_conf_dirs(tree: Tree) -> list[str]:
    """The directories of /etc/ld.so.conf, following ``include`` globs as ldconfig does (each file once)."""
    dirs: list[str] = []
    seen: set[Path] = set()

    def read(path: Path) -> None:
        node, real = tree.file(path)
        if node is None or real in seen or not isinstance(node.facts, _Text):
            return
        seen.add(real)
        for raw in node.facts.text.splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("include"):
                for pattern in line.split()[1:]:
                    folder, _, glob = pattern.rpartition("/")
                    parent = normalise(folder) if folder.startswith("/") else (*path[:-1], *normalise(folder))
                    for name in tree.listdir(parent):
                        if fnmatch.fnmatch(name, glob):
                            read((*parent, name))
            elif line.startswith("hwcap"):
                continue
            else:
                dirs.extend(d for d in re.split(r"[\s:,=]+", line) if d.startswith("/"))

    read(("etc", "ld.so.conf"))
    return dirs


def _default_dirs(tree: Tree, target: TargetPython) -> tuple[str, ...]:
    if target.libc == "musl":
        for name in tree.listdir(("etc",)):
            if fnmatch.fnmatch(name, "ld-musl-*.path"):
                node, _ = tree.file(("etc", name))
                if node is not None and isinstance(node.facts, _Text):
                    return tuple(d for d in re.split(r"[\s:]+", node.facts.text) if d.startswith("/"))
        return ("/lib", "/usr/local/lib", "/usr/lib")
    dirs = []
    if triplet := TRIPLETS.get(target.architecture):
        dirs += [f"/lib/{triplet}", f"/usr/lib/{triplet}"]
    return (*dirs, "/lib64", "/usr/lib64", "/lib", "/usr/lib")


def _python_modules(
    tree: Tree, target: TargetPython, pythonpath: str
) -> tuple[frozenset[str], ModuleTree, list[str]]:
    """The standard library's top-level names and the merged tree of site-/dist-packages and PYTHONPATH."""
    minor = f"python{target.version[0]}.{target.version[1]}"
    stdlib: set[str] = set(_CORE_MODULES)
    site_dirs: list[Path] = []
    python_dirs: list[str] = []
    for prefix in _prefixes(tree, target):
        for lib in ("lib", "lib64"):
            home = (*prefix, lib, minor)
            names = tree.listdir(home)
            if not names:
                continue
            python_dirs.append(as_abs(home))
            stdlib |= _stdlib_modules(tree, home, names)
            site_dirs += [(*home, "site-packages"), (*home, "dist-packages")]
        site_dirs.append((*prefix, "lib", "python3", "dist-packages"))
        stdlib |= _libpython_modules(tree, prefix, minor)
    stdlib |= _pyinit(tree, normalise(target.executable))
    site_dirs += [normalise(p) for p in pythonpath.split(":") if p.startswith("/")]
    site: ModuleTree = {}
    for directory in site_dirs:
        if tree.listdir(directory):
            python_dirs.append(as_abs(directory))
            merge(site, _module_tree(tree, directory, 0))
    return frozenset(stdlib), site, python_dirs


def _prefixes(tree: Tree, target: TargetPython) -> list[Path]:
    """Where the Python may be installed: /usr and /usr/local, after the executable's prefix if it differs."""
    _, real = tree.file(normalise(target.executable))
    prefixes = [("usr",), ("usr", "local")]
    if len(real) >= 2 and real[-2] == "bin" and real[:-2] not in prefixes:
        prefixes.insert(0, real[:-2])
    return prefixes


def _stdlib_modules(tree: Tree, home: Path, names: list[str]) -> set[str]:
    """The top-level modules in ``lib/pythonX.Y`` (``names``): modules, packages, lib-dynload's extensions."""
    found: set[str] = set()
    for name in names:
        if name.endswith(".py"):
            found.add(name[:-3])
        elif tree.file((*home, name, "__init__.py"))[0] is not None:
            found.add(name)
    for name in tree.listdir((*home, "lib-dynload")):
        if m := _EXTENSION.fullmatch(name):
            found.add(m[1])
    return found


def _libpython_modules(tree: Tree, prefix: Path, minor: str) -> set[str]:
    """The modules built into the libpython libraries under ``prefix`` (the multiarch directories too)."""
    found: set[str] = set()
    for lib in ("lib", "lib64"):
        for name in tree.listdir((*prefix, lib)):
            if _PYTHON_FILE.fullmatch(name) and name.startswith("libpython"):
                found |= _pyinit(tree, (*prefix, lib, name))
    for triplet in TRIPLETS.values():
        for name in tree.listdir((*prefix, "lib", triplet)):
            if name.startswith(f"lib{minor}.so"):
                found |= _pyinit(tree, (*prefix, "lib", triplet, name))
    return found


def _pyinit(tree: Tree, path: Path) -> set[str]:
    node, _ = tree.file(path)
    return set(node.facts.names) if node is not None and isinstance(node.facts, _PyInit) else set()


def _module_tree(tree: Tree, directory: Path, depth: int) -> ModuleTree:
    out: ModuleTree = {}
    for name in tree.listdir(directory):
        if name.endswith(".py") and name[:-3].isidentifier():
            out[name[:-3]] = "m"
        elif m := _EXTENSION.fullmatch(name):
            out[m[1]] = "m"
        elif name.isidentifier():
            node, _ = tree.resolve((*directory, name))
            if not isinstance(node, Dir):
                continue
            if tree.file((*directory, name, "__init__.py"))[0] is not None:
                out[name] = "m"
            elif depth < _MAX_DEPTH:
                out[name] = _module_tree(tree, (*directory, name), depth + 1)
    return out


def merge(into: ModuleTree, other: ModuleTree) -> ModuleTree:
    """Merge two module trees as the import system sees several path entries: a module anywhere wins over
    namespace portions of the same name, and namespace portions combine."""
    for name, node in other.items():
        mine = into.get(name)
        if mine == "m" or node == "m":
            into[name] = "m"
        elif isinstance(mine, dict) and isinstance(node, dict):
            merge(mine, node)
        else:
            into[name] = json.loads(json.dumps(node))  # a copy: trees are shared between documents
    return into
