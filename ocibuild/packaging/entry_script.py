"""Build-time checks of the user's entry script: it must parse and define ``init()`` and ``run()``.

Checked on the AST, without importing (importing would run the user's code and need the model's packages on the
host). Catching this at build time spares a user an image that crashes on start.
"""

from __future__ import annotations

import ast
from pathlib import Path

from ..errors import InputError

REQUIRED = ("init", "run")


def check_entry_script(path: Path) -> None:
    if not path.exists():
        raise InputError(f"entry script {path}: no such file")
    if not path.is_file():
        raise InputError(
            f"entry script {path} is not a file; pass the score.py that defines init() and run()"
        )
    if path.suffix != ".py":
        raise InputError(
            f"entry script {path} is not a Python file (.py); pass the score.py that defines init() and run()"
        )
    try:
        source = path.read_bytes()
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as e:
        raise InputError(f"entry script {path} is not valid Python: line {e.lineno}: {e.msg}") from None
    except (OSError, ValueError) as e:
        raise InputError(f"entry script {path} cannot be read as Python: {e}") from None
    except (RecursionError, MemoryError):
        raise InputError(
            f"entry script {path} is nested too deeply for Python to parse; simplify it"
        ) from None
    defined = _top_level_names(tree)
    missing = [name for name in REQUIRED if name not in defined]
    if missing:
        names = " and ".join(f"{m}()" for m in missing)
        raise InputError(
            f"entry script {path} defines no {names} at top level; the scoring server calls init() once and "
            "run(raw_data) for each request"
        )


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.ImportFrom, ast.Import)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names
