"""Loading the user's entry script and calling its ``init()`` and ``run()``.

The script is loaded the way Azure ML loads it (a module named ``entry_module`` from a file path) so unchanged Azure
scripts work: its own directory goes first on ``sys.path`` so it can import its sibling modules, and ``run`` is
called in one of Azure's three styles (``style``):

- ``string``: ``run(raw_data)`` with the request body as a str (the usual style);
- ``object``: ``run(**params)`` when ``run`` carries ``inference_schema``'s ``@input_schema``: each parameter is
  taken by name from the JSON object body (a parameter's default when absent; 400 when it has none), and the
  decorators convert the values to the declared types;
- ``raw``: ``run(request)`` when ``run`` is marked ``@rawhttp`` (see ``rawhttp``).

In every style ``run`` also gets ``request_headers`` (a dict) when it declares that parameter, as Azure passes it.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from .rawhttp import install_shims, wants_raw_request

MODULE_NAME = "entry_module"
STRING, OBJECT, RAW = "string", "object", "raw"


class EntryScriptError(Exception):
    """The entry script cannot be used: missing, failing on import, or lacking ``init``/``run``."""


class InputError(ValueError):
    """The request cannot be turned into ``run()``'s arguments (a client error, answered 400)."""


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
        self.params = [p for p in _parameters(run) if p.name != "request_headers"]
        raw = wants_raw_request(run)
        decorated = _schema_decorated(run)
        if raw and decorated:
            raise EntryScriptError(
                f"entry script {path}: run() cannot be decorated with both @rawhttp and @input_schema"
            )
        self.style = RAW if raw else OBJECT if decorated else STRING

    @property
    def run_function(self) -> Callable[..., Any]:
        return self._run

    def init(self) -> None:
        self._init()

    def arguments(self, body: Any) -> dict[str, Any]:
        """``run()``'s keyword arguments taken from a JSON object (the ``object`` style); raises ``InputError``."""
        if not isinstance(body, dict):
            raise InputError("The body should be a JSON object whose keys are run()'s parameters.")
        args = {}
        for param in self.params:
            if param.name in body:
                args[param.name] = body[param.name]
            elif param.default is inspect.Parameter.empty:
                raise InputError(f"A value is not provided for the {param.name!r} parameter.")
        return args

    def run(self, data: Any, headers: Mapping[str, str]) -> Any:
        """Call ``run()``: ``data`` is the body str, the request object, or (``object`` style) the arguments."""
        extra = {"request_headers": dict(headers)} if self._wants_headers else {}
        if self.style == OBJECT:
            return self._run(**data, **extra)
        return self._run(data, **extra)


def load_entry_script(path: str) -> EntryScript:
    """Import the script at ``path`` (relative to the working directory) as module ``entry_module``."""
    full = os.path.abspath(path)
    if not os.path.isfile(full):
        raise EntryScriptError(f"entry script {full} does not exist (working directory {os.getcwd()})")
    script_dir = os.path.dirname(full)
    if script_dir not in sys.path:
        sys.path.insert(0, script_dir)
    install_shims()  # Azure's @rawhttp / AMLResponse imports work without Azure's packages
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


def _parameters(func: Callable[..., Any]) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return []


def _schema_decorated(run: Callable[..., Any]) -> bool:
    """Whether ``run`` carries inference_schema decorators, asked of the copy the script imported (if any)."""
    util = sys.modules.get("inference_schema.schema_util")
    if util is None:
        return False
    try:
        return bool(util.is_schema_decorated(run))
    except Exception:
        return False


def _accepts_parameter(func: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    param = params.get(name)
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
