"""Loading the user's entry script and calling its ``init()`` and ``run()``.

The script is loaded the way Azure ML loads it (a module named ``entry_module`` from a file path) so unchanged Azure
scripts work: its own directory goes first on ``sys.path`` so it can import its sibling modules, and ``run`` gets
the raw request string, plus ``request_headers`` when it declares that parameter (as Azure passes them).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

MODULE_NAME = "entry_module"


class EntryScriptError(Exception):
    """The entry script cannot be used: missing, failing on import, or lacking ``init``/``run``."""


class EntryScript:
    """A loaded entry script: ``init()`` once, then ``run(raw_data)`` from any number of threads."""

    def __init__(self, path: str, module: ModuleType) -> None:
        self.path = path
        self.module = module
        init = getattr(module, "init", None)
        run = getattr(module, "run", None)
        if not callable(init):
            raise EntryScriptError(f"entry script {path} does not define an init() function")
        if not callable(run):
            raise EntryScriptError(f"entry script {path} does not define a run(raw_data) function")
        # Azure's "driver module" indirection: some SDK-generated scripts forward run() to the real script.
        driver = getattr(module, "driver_module", None)
        if isinstance(driver, ModuleType) and callable(getattr(driver, "run", None)):
            run = driver.run
        self._init: Callable[[], Any] = init
        self._run: Callable[..., Any] = run
        self._wants_headers = _accepts_parameter(run, "request_headers")

    def init(self) -> None:
        self._init()

    def run(self, raw_data: str, headers: Mapping[str, str]) -> Any:
        if self._wants_headers:
            return self._run(raw_data, request_headers=dict(headers))
        return self._run(raw_data)


def load_entry_script(path: str) -> EntryScript:
    """Import the script at ``path`` (relative to the working directory) as module ``entry_module``."""
    full = os.path.abspath(path)
    if not os.path.isfile(full):
        raise EntryScriptError(f"entry script {full} does not exist (working directory {os.getcwd()})")
    script_dir = os.path.dirname(full)
    if script_dir not in sys.path:
        sys.path.insert(0, script_dir)
    spec = importlib.util.spec_from_file_location(MODULE_NAME, full)
    if spec is None or spec.loader is None:
        raise EntryScriptError(f"entry script {full} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs, as a normal import would be: dataclasses and pickle look classes up by module.
    sys.modules[MODULE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(MODULE_NAME, None)
        raise EntryScriptError(f"importing entry script {full} raised {type(exc).__name__}: {exc}") from exc
    return EntryScript(full, module)


def _accepts_parameter(func: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    param = params.get(name)
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
