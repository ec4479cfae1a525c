"""Tests for ocibuild.checks.imports: which imports of an entry script (and of its source folder) resolve in the
image, which are errors and which warnings, and which distribution to add."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

from ocibuild.checks import imports
from ocibuild.checks.imports import ImportCheck, distribution_for, module_tree, parse_imports
from tests.checks.bases import debian, files
from tests.checks.elfgen import install

BASE = files(debian())


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def run(
    script: Path, source_dir: Path | None = None, installed: dict | None = None, allow: tuple[str, ...] = ()
):
    errors, warnings = ImportCheck(
        script, source_dir, (3, 11), BASE.stdlib, BASE.site, installed or {}, frozenset(allow)
    ).run()
    return [str(e) for e in errors], [str(w) for w in warnings]


SCORE = """
import json
import os
import numpy as np

def init():
    import pandas as pd

def run(raw):
    return raw
"""


def test_an_unlisted_import_is_an_error_naming_the_distribution(tmp_path):
    script = write(tmp_path / "score.py", SCORE)
    errors, warnings = run(script, installed={"numpy": "m"})
    assert errors == [
        "score.py:7: imports pandas, which is not in the image; add pandas to the requirements, or pass "
        "--allow-import pandas if the image gets it another way"
    ]
    assert warnings == []
    assert run(script, installed={"numpy": "m", "pandas": "m"}) == ([], [])


def test_allow_import_accepts_a_name_knowingly(tmp_path):
    script = write(tmp_path / "score.py", SCORE)
    assert run(script, installed={"numpy": "m"}, allow=("pandas",)) == ([], [])
    script = write(tmp_path / "score.py", "import azureml.core.model\ndef init(): pass\ndef run(r): pass\n")
    assert run(script, allow=("azureml.core",)) == ([], [])
    assert run(script, allow=("azureml.cor",))[0] != []


@pytest.mark.parametrize(
    "guard, shown",
    [
        ("try:\n    import pandas\nexcept ImportError:\n    pandas = None\n", "inside try/except ImportError"),
        ("try:\n    import pandas\nexcept (ValueError, ModuleNotFoundError):\n    pass\n",
         "inside try/except ModuleNotFoundError"),
        ("try:\n    import pandas\nexcept:\n    pass\n", "inside try/except (bare)"),
        ("import contextlib\nwith contextlib.suppress(ImportError):\n    import pandas\n",
         "inside contextlib.suppress(ImportError)"),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pandas\n", "under if TYPE_CHECKING"),
    ],
)  # fmt: skip
def test_a_guarded_import_is_a_warning(tmp_path, guard, shown):
    script = write(tmp_path / "score.py", guard + "def init(): pass\ndef run(r): pass\n")
    errors, warnings = run(script)
    assert errors == []
    assert (
        len(warnings) == 1
        and warnings[0].startswith("score.py:")
        and f"imports pandas ({shown})" in warnings[0]
    )


def test_an_import_in_a_function_defined_under_a_guard_is_not_guarded(tmp_path):
    script = write(tmp_path / "score.py", """
        try:
            def init():
                import pandas
        except ImportError:
            pass
        def run(r): pass
    """)  # fmt: skip
    assert len(run(script)[0]) == 1


def test_a_try_that_catches_something_else_does_not_guard(tmp_path):
    script = write(tmp_path / "score.py", "try:\n    import pandas\nexcept OSError:\n    pass\n")
    assert len(run(script)[0]) == 1


def test_main_blocks_and_branches_the_image_cannot_take_are_skipped(tmp_path):
    script = write(tmp_path / "score.py", """
        import sys
        if sys.version_info < (3, 8):
            import importlib_metadata
        else:
            import importlib.metadata
        if sys.version_info[:2] >= (3, 11):
            import tomllib
        else:
            import tomli
        if sys.platform == "win32":
            import winreg
        if __name__ == "__main__":
            import argparse_extras
        def init(): pass
        def run(r): pass
    """)  # fmt: skip
    assert run(script) == ([], [])


def test_an_unknown_condition_counts(tmp_path):
    script = write(tmp_path / "score.py", "import os\nif os.environ.get('X'):\n    import pandas\n")
    assert len(run(script)[0]) == 1


def test_import_module_with_a_constant_name(tmp_path):
    script = write(tmp_path / "score.py", "import importlib\nm = importlib.import_module('pandas')\n")
    assert "imports pandas" in run(script)[0][0]


def test_the_base_images_stdlib_and_site_packages(tmp_path):
    script = write(
        tmp_path / "score.py", "import os, json, math, _socket, apt\nfrom google.protobuf import message\n"
    )
    assert run(script) == ([], [])
    script = write(tmp_path / "score.py", "import google.cloud.storage\n")  # another portion of a namespace
    assert "add google-cloud-storage to the requirements" in run(script)[0][0]


def test_a_part_of_the_standard_library_the_base_lacks(tmp_path):
    script = write(tmp_path / "score.py", "import tkinter\n")
    (error,) = run(script)[0]
    assert (
        "part of Python's standard library" in error and "python3-tk" in error and "python:3.11-slim" in error
    )


def test_azure_modules_the_server_provides(tmp_path):
    script = write(tmp_path / "score.py", """
        from azureml.contrib.services.aml_request import AMLRequest, rawhttp
        from azureml.contrib.services.aml_response import AMLResponse
        from azureml_inference_server_http.api.aml_request import rawhttp as r2
    """)  # fmt: skip
    assert run(script) == ([], [])
    script = write(
        tmp_path / "score.py",
        "import azureml.core\nfrom inference_schema.schema_decorators import input_schema\n",
    )
    errors, _ = run(script)
    assert "imports azureml.core" in errors[0] and "add azureml-core" in errors[0]
    assert (
        "--allow-import azureml.core" in errors[0]
    )  # azureml itself is there: accepting it all would hide this
    assert "add inference-schema" in errors[1]


def test_source_folder_modules_are_followed(tmp_path):
    src = tmp_path / "src"
    script = write(src / "score.py", "import helpers\nfrom pkg import sub\nfrom pkg.deep import thing\n")
    write(src / "helpers.py", "import yaml\n")
    write(src / "pkg/__init__.py", "")
    write(src / "pkg/sub.py", "from . import other\nfrom .missing import x\nfrom .. import toofar\n")
    write(src / "pkg/other.py", "import cv2\n")
    write(src / "pkg/deep/__init__.py", "from .thing import y\n")
    write(src / "pkg/deep/thing.py", "y = 1\n")
    write(src / "train.py", "import matplotlib\n")  # never imported by the script: not checked
    errors, _ = run(script, src)
    assert errors == [
        "helpers.py:1: imports yaml, which is not in the image; add PyYAML to the requirements, or pass "
        "--allow-import yaml if the image gets it another way",
        "pkg/sub.py:2: imports .missing, which is not in the image; the source folder has no module pkg.missing",
        "pkg/sub.py:3: imports .. (toofar), a relative import above the top of its package; use an absolute import",
        "pkg/other.py:1: imports cv2, which is not in the image; add opencv-python-headless to the requirements, "
        "or pass --allow-import cv2 if the image gets it another way",
    ]


def test_a_relative_import_in_the_entry_script_cannot_work(tmp_path):
    script = write(tmp_path / "score.py", "from .utils import x\n")
    write(tmp_path / "utils.py", "x = 1\n")
    (error,) = run(script, tmp_path)[0]
    assert error == (
        "score.py:1: imports .utils, a relative import, which cannot work in the entry script: the server loads it "
        "as a top-level module; import it by its absolute name"
    )


def test_a_sibling_module_without_source_dir_is_not_in_the_image(tmp_path):
    script = write(tmp_path / "score.py", "import utils\n")
    write(tmp_path / "utils.py", "x = 1\n")
    (error,) = run(script)[0]
    assert "only the entry script is copied; pass --source-dir" in error
    assert run(script, tmp_path) == ([], [])


def test_installed_dependencies_as_a_module_tree(tmp_path):
    install(
        tmp_path,
        "scikit-learn",
        {"sklearn/__init__.py": b"", "sklearn/_x.cpython-311-x86_64-linux-gnu.so": b""},
    )
    install(tmp_path, "typing-extensions", {"typing_extensions.py": b""})
    install(tmp_path, "google-cloud-storage", {"google/cloud/storage/__init__.py": b""})
    install(tmp_path, "ext", {"fastext.cpython-311-x86_64-linux-gnu.so": b"", "numpy.libs/libx.so": b""})
    tree = module_tree(tmp_path)
    assert tree == {
        "sklearn": "m",
        "typing_extensions": "m",
        "google": {"cloud": {"storage": "m"}},
        "fastext": "m",
    }


def test_distribution_names(monkeypatch):
    assert distribution_for("sklearn.linear_model") == "scikit-learn"
    assert distribution_for("cv2") == "opencv-python-headless"
    assert distribution_for("PIL.Image") == "pillow"
    assert distribution_for("google.protobuf.message") == "protobuf"
    monkeypatch.setattr(imports, "_host_distributions", lambda: {"jose": ["python-jose"], "lib": ["a", "b"]})
    assert distribution_for("jose.jwt") == "python-jose"
    assert distribution_for("lib") == "a or b"
    assert distribution_for("unheardof") == "unheardof"


def test_the_hosts_installed_metadata_names_distributions():
    """Whatever this machine has installed whose import name differs from its distribution's and that the
    table does not know: the host's own metadata gives it."""
    from importlib.metadata import packages_distributions

    found = [
        (name, dists[0])
        for name, dists in packages_distributions().items()
        if len(set(dists)) == 1 and name.isidentifier() and name.lower() != dists[0].lower().replace("-", "_")
        and name not in imports._DISTRIBUTIONS
    ]  # fmt: skip
    if not found:
        pytest.skip("no installed package here has an import name other than its distribution's")
    name, dist = found[0]
    assert distribution_for(name) == dist


def test_parse_imports_sees_imports_in_functions_and_classes():
    tree = ast.parse("class A:\n    import a\n    def f(self):\n        from b import c\n")
    assert [(i.module, i.names, i.guard) for i in parse_imports(tree, (3, 11))] == [
        ("a", (), None),
        ("b", ("c",), None),
    ]
