"""The package can be copied into an image on its own: standard library only, relative imports, Python 3.9."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from .conftest import PACKAGE_SRC, SERVER_PYTHON

SOURCES = sorted(PACKAGE_SRC.glob("*.py"))


def test_sources_found() -> None:
    assert {p.name for p in SOURCES} >= {"__init__.py", "__main__.py", "app.py", "server.py", "entry.py"}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_imports_only_stdlib_or_relative(path) -> None:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top in sys.stdlib_module_names or top == "__future__", f"{path.name} imports {name}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_parses_as_python_39(path) -> None:
    ast.parse(path.read_text(), feature_version=(3, 9))
    assert "from __future__ import annotations" in path.read_text()


def _modules_after(server_pythonpath, code: str) -> str:
    return subprocess.run(
        [SERVER_PYTHON, "-S", "-c", f"import sys; {code}; print(sorted(sys.modules))"],
        env={"PYTHONPATH": str(server_pythonpath)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_importing_the_package_imports_no_server_code(server_pythonpath) -> None:
    plain = _modules_after(server_pythonpath, "import ocibuild_serving")
    assert "'http.server'" not in plain and "'ocibuild_serving.server'" not in plain
    lazy = _modules_after(
        server_pythonpath, "import ocibuild_serving; assert callable(ocibuild_serving.serve)"
    )
    assert "'ocibuild_serving.launcher'" in lazy


def test_also_importable_as_ocibuild_serving_subpackage() -> None:
    from ocibuild.serving import launcher

    assert callable(launcher.serve) and callable(launcher.main)
