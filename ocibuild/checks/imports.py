"""Will the entry script's imports resolve in the image? ``score.py`` and the modules of the source folder it
imports (followed from module to module) are parsed, never run, and each import is looked up where the image's
Python will look: the source folder, the installed dependencies, the base image's standard library and
site-/dist-packages, the scoring server's own package and the Azure modules the server provides itself.

Imports inside functions count (Azure scripts import in ``init()``). An import guarded by ``try/except
ImportError`` (or ``ModuleNotFoundError``, ``Exception``, a bare ``except``, ``contextlib.suppress``) or under
``if TYPE_CHECKING:`` is a warning, any other an error; code under ``if __name__ == "__main__":`` never runs in the
server and branches on ``sys.version_info``/``sys.platform`` that cannot be taken by the image's Python are skipped.
An import that resolves nowhere is named with the distribution to add.
"""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from ..rootfs.files import ModuleTree, merge

__all__ = ["Finding", "ImportCheck", "distribution_for", "module_tree", "parse_imports"]

# Import names whose distribution has another name, for the common cases (the host's installed metadata answers
# the rest, when the package is installed there). Dotted keys name a namespace package's portion.
_DISTRIBUTIONS = {
    "sklearn": "scikit-learn",
    "cv2": "opencv-python-headless",
    "PIL": "pillow",
    "yaml": "PyYAML",
    "skimage": "scikit-image",
    "bs4": "beautifulsoup4",
    "dateutil": "python-dateutil",
    "dotenv": "python-dotenv",
    "attr": "attrs",
    "jwt": "PyJWT",
    "Crypto": "pycryptodome",
    "OpenSSL": "pyOpenSSL",
    "fitz": "PyMuPDF",
    "docx": "python-docx",
    "pptx": "python-pptx",
    "serial": "pyserial",
    "magic": "python-magic",
    "git": "GitPython",
    "zmq": "pyzmq",
    "psycopg2": "psycopg2-binary",
    "MySQLdb": "mysqlclient",
    "umap": "umap-learn",
    "faiss": "faiss-cpu",
    "Levenshtein": "levenshtein",
    "multipart": "python-multipart",
    "slugify": "python-slugify",
    "pkg_resources": "setuptools",
    "google.protobuf": "protobuf",
    "google.cloud.storage": "google-cloud-storage",
    "azure.storage.blob": "azure-storage-blob",
    "azure.identity": "azure-identity",
    "azureml.core": "azureml-core",
    "azureml.automl": "azureml-automl-runtime",
    "inference_schema": "inference-schema",
    "onnxruntime": "onnxruntime",
    "tensorflow": "tensorflow",
    "tflite_runtime": "tflite-runtime",
    "sentence_transformers": "sentence-transformers",
    "huggingface_hub": "huggingface-hub",
}
# Parts of the standard library that Debian ships in packages of their own.
_DEBIAN_STDLIB = {"tkinter": "python3-tk", "distutils": "python3-distutils", "lib2to3": "python3-lib2to3",
                  "venv": "python3-venv", "ensurepip": "python3-venv"}  # fmt: skip
_IMPORT_ERRORS = frozenset({"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})
_SERVER_PACKAGE = "ocibuild_serving"


@dataclass(frozen=True)
class Import:
    """One import statement (or ``importlib.import_module("...")`` call) of one module."""

    module: str  # as written, without the leading dots of a relative import
    level: int  # the dots of a relative import
    names: tuple[str, ...]  # what ``from module import ...`` takes, () for ``import module``
    line: int
    guard: str | None  # why it may fail harmlessly ("try/except ImportError", ...), None if unconditional


@dataclass(frozen=True)
class Finding:
    """An import that does not resolve in the image, as one line for the user."""

    where: str  # ``score.py:12``
    module: str
    guard: str | None
    advice: str
    problem: str = "which is not in the image"

    def __str__(self) -> str:
        guarded = f" ({self.guard})" if self.guard else ""
        return f"{self.where}: imports {self.module}{guarded}, {self.problem}; {self.advice}"


# --- parsing ------------------------------------------------------------------------------------------------------


def parse_imports(tree: ast.Module, python: tuple[int, int]) -> list[Import]:
    """Every import that can run when the module is loaded or its functions called, on Python ``python``."""
    found: list[Import] = []
    _Visitor(found, python).visit(tree)
    return found


class _Visitor(ast.NodeVisitor):
    def __init__(self, found: list[Import], python: tuple[int, int]) -> None:
        self.found = found
        self.python = python
        self.guards: list[str] = []

    @property
    def guard(self) -> str | None:
        return self.guards[-1] if self.guards else None

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append(Import(alias.name, 0, (), node.lineno, self.guard))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        names = tuple(a.name for a in node.names if a.name != "*")
        self.found.append(Import(node.module or "", node.level, names, node.lineno, self.guard))

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in ("import_module", "__import__") and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and not arg.value.startswith("."):
                self.found.append(Import(arg.value, 0, (), node.lineno, self.guard))
        self.generic_visit(node)

    def visit_Try(self, node: ast.Try) -> None:
        caught = set()
        for handler in node.handlers:
            caught |= _exception_names(handler.type)
        if caught & (_IMPORT_ERRORS | {""}):
            self.guarded(node.body, f"inside try/except {_first(caught)}")
        else:
            for child in node.body:
                self.visit(child)
        for child in [*node.handlers, *node.orelse, *node.finalbody]:
            self.visit(child)

    visit_TryStar = visit_Try

    def visit_With(self, node: ast.With) -> None:
        for item in node.items:
            call = item.context_expr
            if isinstance(call, ast.Call) and _name(call.func).endswith("suppress"):
                caught = set().union(*(_exception_names(a) for a in call.args)) if call.args else set()
                if caught & _IMPORT_ERRORS:
                    self.guarded(node.body, f"inside contextlib.suppress({_first(caught)})")
                    return
        self.generic_visit(node)

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if _name(test).endswith("TYPE_CHECKING"):
            self.guarded(node.body, "under if TYPE_CHECKING")
            for child in node.orelse:
                self.visit(child)
            return
        if _is_main_check(test):
            for child in node.orelse:
                self.visit(child)
            return
        value = _evaluate(test, self.python)
        if value is not False:
            for child in node.body:
                self.visit(child)
        if value is not True:
            for child in node.orelse:
                self.visit(child)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        # The body runs when the function is called, outside whatever guarded its definition.
        saved, self.guards = self.guards, []
        for child in node.body:
            self.visit(child)
        self.guards = saved

    visit_AsyncFunctionDef = visit_FunctionDef

    def guarded(self, body: list[ast.stmt], why: str) -> None:
        self.guards.append(why)
        for child in body:
            self.visit(child)
        self.guards.pop()


def _exception_names(node: ast.expr | None) -> set[str]:
    if node is None:
        return {""}  # a bare except
    if isinstance(node, ast.Tuple):
        return set().union(*(_exception_names(e) for e in node.elts))
    return {_name(node).rsplit(".", 1)[-1]}


def _first(caught: set[str]) -> str:
    for name in ("ImportError", "ModuleNotFoundError", "Exception", "BaseException"):
        if name in caught:
            return name
    return "(bare)"


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def _is_main_check(test: ast.expr) -> bool:
    return (
        isinstance(test, ast.Compare)
        and _name(test.left) == "__name__"
        and len(test.ops) == 1
        and isinstance(test.ops[0], ast.Eq)
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def _evaluate(test: ast.expr, python: tuple[int, int]) -> bool | None:
    """The value of ``sys.version_info <op> (3, x)`` or ``sys.platform`` tests in the image, None for anything else."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return None
    left, op, right = test.left, test.ops[0], test.comparators[0]
    if isinstance(left, ast.Subscript) and _name(left.value) == "sys.version_info":
        left = left.value  # sys.version_info[:2] compares the same against a 2-tuple
    if _name(left) == "sys.version_info" and isinstance(right, ast.Tuple):
        try:
            wanted = tuple(int(ast.literal_eval(e)) for e in right.elts)
        except (ValueError, TypeError):
            return None
        have = (*python, 0, 0)[: max(len(wanted), 2)]
        ops = {ast.Lt: have < wanted, ast.LtE: have <= wanted, ast.Gt: have > wanted, ast.GtE: have >= wanted,
               ast.Eq: have == wanted, ast.NotEq: have != wanted}  # fmt: skip
        return ops.get(type(op))
    if _name(left) in ("sys.platform", "os.name") and isinstance(right, ast.Constant):
        value = "linux" if _name(left) == "sys.platform" else "posix"
        if isinstance(op, ast.Eq):
            return right.value == value
        if isinstance(op, ast.NotEq):
            return right.value != value
    return None


# --- where modules live ------------------------------------------------------------------------------------------


def module_tree(directory: Path, depth: int = 0) -> ModuleTree:
    """The importable names of a folder on ``sys.path``: modules and regular packages as "m", namespace packages
    as their own tree (followed four levels deep)."""
    out: ModuleTree = {}
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return out
    for entry in entries:
        name = entry.name
        if entry.is_file():
            stem = name.split(".", 1)[0]
            if (
                stem.isidentifier()
                and (name.endswith(".py") or name.endswith(".so"))
                and name.count(".") <= 2
            ):
                out[stem] = "m"
        elif entry.is_dir() and name.isidentifier():
            if os.path.exists(os.path.join(entry.path, "__init__.py")):
                out[name] = "m"
            elif depth < 4:
                sub = module_tree(Path(entry.path), depth + 1)
                out[name] = merge(out.get(name, {}) if isinstance(out.get(name), dict) else {}, sub)  # type: ignore[arg-type]
    return out


def _in_tree(tree: ModuleTree, parts: list[str]) -> bool:
    node: str | ModuleTree | None = tree
    for part in parts:
        if not isinstance(node, dict):
            return True  # a module or regular package: what lies below is its own business
        node = node.get(part)
        if node is None:
            return False
    return True


def _shim_tree() -> ModuleTree:
    """The Azure modules the scoring server provides when no installed package does (``serving.rawhttp``)."""
    from ..serving import rawhttp

    tree: ModuleTree = {}
    packages = set(rawhttp._PACKAGES)
    for name in sorted(rawhttp._ShimFinder._NAMES, key=len):
        node = tree
        parts = name.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})  # type: ignore[assignment]
        node.setdefault(parts[-1], {} if name in packages else "m")
    return tree


def distribution_for(module: str) -> str:
    """The distribution to add for an import name: the shipped table, else the host's installed metadata, else
    the name itself."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        if (known := _DISTRIBUTIONS.get(".".join(parts[:i]))) is not None:
            return known
    dists = _host_distributions().get(parts[0], [])
    unique = list(dict.fromkeys(dists))
    if len(unique) == 1:
        return unique[0]
    if len(unique) > 1:
        return " or ".join(unique[:3])
    return parts[0]


@cache
def _host_distributions() -> dict[str, list[str]]:
    from importlib.metadata import packages_distributions

    try:
        return packages_distributions()
    except Exception:  # broken metadata on the host must not break a build
        return {}


# --- the check ---------------------------------------------------------------------------------------------------


@dataclass
class ImportCheck:
    """The imports of an entry script (and of the source folder's modules it imports) against the image."""

    script: Path
    source_dir: Path | None
    python: tuple[int, int]
    stdlib: frozenset[str]
    site: ModuleTree  # the base's site-/dist-packages
    installed: ModuleTree  # the dependencies layer
    allow: frozenset[str] = frozenset()
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)

    def run(self) -> tuple[list[Finding], list[Finding]]:
        self.image: ModuleTree = {name: "m" for name in self.stdlib}
        for tree in (self.site, self.installed, {_SERVER_PACKAGE: "m"}, _shim_tree()):
            merge(self.image, tree)
        script = self.script.resolve()
        # Where the server's Python finds the source folder's modules: the entry script's folder (put first on
        # sys.path) and the app root (the working directory). Without --source-dir only the script is copied.
        self.roots: list[Path] = []
        if self.source_dir is not None:
            self.roots = list(dict.fromkeys([script.parent, self.source_dir.resolve()]))
        self.seen: set[Path] = set()
        # (file, its package; None for the entry script, which has none)
        self.todo: list[tuple[Path, str | None]] = [(script, None)]
        while self.todo:
            path, package = self.todo.pop(0)
            if path in self.seen:
                continue
            self.seen.add(path)
            self.module(path, package)
        return self.errors, self.warnings

    def where(self, path: Path, line: int) -> str:
        for root in (self.source_dir, self.script.parent):
            if root is not None:
                try:
                    return f"{path.relative_to(root.resolve()).as_posix()}:{line}"
                except ValueError:
                    pass
        return f"{path.name}:{line}"

    def module(self, path: Path, package: str | None) -> None:
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError, RecursionError, MemoryError):
            return  # the entry script's own parse errors are reported by its init/run check; a module's by Python
        for imp in parse_imports(tree, self.python):
            if imp.level:
                self.relative(path, package, imp)
            else:
                self.absolute(path, imp.module, imp, imp.names)

    def relative(self, path: Path, package: str | None, imp: Import) -> None:
        dots = "." * imp.level
        written = f"{dots}{imp.module}" if imp.module else f"{dots} ({', '.join(imp.names)})"
        if package is None:
            problem = "a relative import, which cannot work in the entry script: the server loads it as a top-level module"
            self.report(path, imp, written, "import it by its absolute name", problem)
            return
        if not package or imp.level > len(package.split(".")):
            problem = (
                f"a relative import above the top of {'its package' if package else 'the source folder'}"
            )
            self.report(path, imp, written, "use an absolute import", problem)
            return
        base = package.split(".")[: len(package.split(".")) - imp.level + 1]
        full = ".".join([*base, *([imp.module] if imp.module else [])])
        self.absolute(path, full, imp, imp.names, written=written)

    def absolute(
        self, path: Path, module: str, imp: Import, names: tuple[str, ...], written: str | None = None
    ) -> None:
        parts = module.split(".")
        if self.allowed(module):
            return
        local = self.local(parts, names)
        if local is not None:
            if not local:
                self.report(path, imp, written or module, f"the source folder has no module {module}")
            return
        if _in_tree(self.image, parts):
            return
        self.report(path, imp, written or module, self.advice(module))

    def allowed(self, module: str) -> bool:
        return any(module == a or module.startswith(a + ".") for a in self.allow)

    def local(self, parts: list[str], names: tuple[str, ...]) -> bool | None:
        """None when the first part is not the source folder's; else whether the module exists there (and each
        module found is queued to be checked in turn)."""
        for root in self.roots:
            if _module_file(root, parts[0]) is None:
                continue
            directory = root
            for i, part in enumerate(parts):
                found = _module_file(directory, part)
                if found is None:
                    return False
                self.queue(found, parts[: i + 1])
                if found.name != "__init__.py" and not found.is_dir():
                    return True  # a module: its attributes are its own business
                directory = directory / part
            for name in names:  # ``from package import module`` imports the module too
                if (sub := _module_file(directory, name)) is not None:
                    self.queue(sub, [*parts, name])
            return True
        return None

    def queue(self, found: Path, parts: list[str]) -> None:
        if found.is_file() and found.suffix == ".py":
            package = ".".join(parts) if found.name == "__init__.py" else ".".join(parts[:-1])
            self.todo.append((found.resolve(), package))

    def advice(self, module: str) -> str:
        top = module.split(".")[0]
        flag = f"--allow-import {top if top not in self.image else module}"
        if top in _DEBIAN_STDLIB or (
            top in getattr(sys, "stdlib_module_names", ()) and top not in self.image
        ):
            debian = f" (Debian ships it as {_DEBIAN_STDLIB[top]})" if top in _DEBIAN_STDLIB else ""
            return (
                f"it is part of Python's standard library, which the base image's Python lacks{debian}; use a base "
                f"with a complete Python, such as python:{self.python[0]}.{self.python[1]}-slim, or pass {flag}"
            )
        if self.source_dir is None and (
            (self.script.parent / f"{top}.py").is_file() or (self.script.parent / top).is_dir()
        ):
            return (
                f"{top} is next to {self.script.name} on this machine, but only the entry script is copied; pass "
                f"--source-dir {self.script.parent} (or pass {flag})"
            )
        return f"add {distribution_for(module)} to the requirements, or pass {flag} if the image gets it another way"

    def report(self, path: Path, imp: Import, module: str, advice: str, problem: str | None = None) -> None:
        finding = Finding(
            self.where(path, imp.line), module, imp.guard, advice, *([problem] if problem else [])
        )
        (self.warnings if imp.guard else self.errors).append(finding)


def _module_file(directory: Path, name: str) -> Path | None:
    """The file or folder that ``import name`` finds in ``directory``: a package's ``__init__.py``, a namespace
    package's folder, ``name.py`` or an extension module."""
    package = directory / name
    if (package / "__init__.py").is_file():
        return package / "__init__.py"
    if (directory / f"{name}.py").is_file():
        return directory / f"{name}.py"
    for candidate in _glob(directory, name):
        return candidate
    if package.is_dir():
        return package
    return None


def _glob(directory: Path, name: str) -> Iterator[Path]:
    yield from directory.glob(f"{name}.*.so")
    yield from directory.glob(f"{name}.so")
