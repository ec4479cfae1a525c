"""``GET /swagger.json``: the OpenAPI document of the scoring API, as Azure ML's inference server builds it.

Where the input and output schemas come from, first match wins (Azure's order, plus samples):

1. A document the user wrote, next to the app (the working directory, then the entry script's folder):
   ``swagger.json`` or ``swagger2.json`` for version 2, ``swagger3.json`` for 3, ``swagger3.1.json`` for 3.1.
2. The ``inference_schema`` decorators on ``run()`` (``@input_schema``/``@output_schema``): read through the
   ``inference_schema`` package the script itself imported, so this module imports nothing outside the standard
   library. The versions the decorators' types support are the versions served (Swagger 2 cannot describe
   mixed-type arrays).
3. Module-level ``input_sample`` / ``output_sample`` in the script (the names Azure's examples give the decorators'
   samples), described by a schema inferred from the values, with the sample as ``example``.
4. Otherwise ``{"type": "object", "example": {}}`` for both, as Azure does for an undecorated ``run()``.

``?version=`` takes 2 (default), 2.0, 3, 3.0 or 3.1; any other value is a 404 naming the supported versions.
``SERVICE_NAME``, ``SERVICE_VERSION`` and ``SERVICE_PATH_PREFIX`` fill the title, version and path prefix.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

from .log import logger

_ALIASES = {"2": "2", "2.0": "2", "3": "3", "3.0": "3", "3.1": "3.1"}
_USER_FILES = {"2": ("swagger.json", "swagger2.json"), "3": ("swagger3.json",), "3.1": ("swagger3.1.json",)}
_SCHEMA_VERSIONS = {"2": ("2", "2.0"), "3": ("3", "3.0"), "3.1": ("3.1",)}
_GENERIC = {"type": "object", "example": {}}
_ERROR = {"type": "object", "properties": {"message": {"type": "string"}}}


class SwaggerError(Exception):
    """No document for the version asked for; the message names the supported ones."""


class Swagger:
    """The documents per version (``"2"``, ``"3"``, ``"3.1"``) and the examples they carry."""

    def __init__(
        self, documents: dict[str, dict[str, Any]], input_example: Any = None, output_example: Any = None
    ) -> None:
        self.documents = documents
        self.input_example = input_example
        self.output_example = output_example

    @property
    def supported(self) -> list[str]:
        return sorted(self.documents)

    def get(self, version: str | None) -> dict[str, Any]:
        asked = "2" if version is None else version
        supported = ", ".join(self.supported)
        canonical = _ALIASES.get(asked)
        if canonical is None:
            raise SwaggerError(f"Swagger version [{asked}] is not valid. Supported versions: [{supported}].")
        if canonical not in self.documents:
            raise SwaggerError(
                f"Swagger version [{asked}] is not supported for the scoring script. "
                f"Supported swagger versions: [{supported}]."
            )
        return self.documents[canonical]


def build(
    run: Callable[..., Any], module: ModuleType, app_dirs: Sequence[str], environ: Mapping[str, str]
) -> Swagger:
    """The documents for the entry script whose ``run`` and module are given (see the module docstring)."""
    schemas = _schemas(run, module)
    documents: dict[str, dict[str, Any]] = {}
    for version, names in _USER_FILES.items():
        user = _read_user_file(app_dirs, names)
        if user is not None:
            documents[version] = user
        elif schemas is not None:
            input_schema, output_schema, versions = schemas
            if any(v in versions for v in _SCHEMA_VERSIONS[version]):
                documents[version] = _document(version, input_schema, output_schema, environ)
    input_example = output_example = None
    if schemas is not None:
        input_example = schemas[0].get("example") if isinstance(schemas[0], dict) else None
        output_example = schemas[1].get("example") if isinstance(schemas[1], dict) else None
    return Swagger(documents, input_example or None, output_example)


def _schemas(run: Callable[..., Any], module: ModuleType) -> tuple[dict, dict, Sequence[str]] | None:
    util = sys.modules.get("inference_schema.schema_util")
    if util is not None:
        try:
            if util.is_schema_decorated(run):
                return (
                    copy.deepcopy(util.get_input_schema(run)),
                    copy.deepcopy(util.get_output_schema(run)),
                    list(util.get_supported_versions(run)),
                )
        except Exception as exc:  # a broken or unexpected inference_schema version must not stop the server
            logger.warning("Cannot read the inference_schema decorators of run(): %s", exc)
            return None
    samples = [_builtin(getattr(module, name, None)) for name in ("input_sample", "output_sample")]
    if samples[0] is not None or samples[1] is not None:
        return (
            schema_from_sample(samples[0]) if samples[0] is not None else dict(_GENERIC),
            schema_from_sample(samples[1]) if samples[1] is not None else dict(_GENERIC),
            ("2.0", "3.0", "3.1"),
        )
    return dict(_GENERIC), dict(_GENERIC), ("2.0", "3.0", "3.1")


def _builtin(value: Any) -> Any:
    """A sample as plain JSON values (numpy arrays and pandas frames through ``tolist``/``to_dict``)."""
    if value is None:
        return None
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict) and not isinstance(value, dict):
        try:
            value = to_dict(orient="records")
        except TypeError:
            value = to_dict()
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        value = tolist()
    try:
        return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    except (TypeError, ValueError):
        return None


def schema_from_sample(sample: Any) -> dict[str, Any]:
    """A JSON schema describing ``sample``, with ``sample`` as its example."""
    schema = _schema_of(sample)
    schema["example"] = sample
    return schema


def _schema_of(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer", "format": "int64"}
    if isinstance(value, float):
        return {"type": "number", "format": "double"}
    if isinstance(value, str):
        return {"type": "string"}
    if isinstance(value, list):
        return {"type": "array", "items": _schema_of(value[0]) if value else {}}
    if isinstance(value, dict):
        return {"type": "object", "properties": {str(k): _schema_of(v) for k, v in value.items()}}
    return {}


def _read_user_file(app_dirs: Sequence[str], names: Sequence[str]) -> dict[str, Any] | None:
    for folder in app_dirs:
        for name in names:
            path = os.path.join(folder, name)
            try:
                with open(path, encoding="utf-8") as f:
                    doc = json.load(f)
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                logger.warning("Ignoring %s: %s", path, exc)
                continue
            logger.info("Serving %s as /swagger.json", path)
            return doc
    return None


def _document(
    version: str, input_schema: Any, output_schema: Any, environ: Mapping[str, str]
) -> dict[str, Any]:
    name = environ.get("SERVICE_NAME") or "ML service"
    info = {
        "title": name,
        "description": f"API specification for the Azure Machine Learning service {name}",
        "version": environ.get("SERVICE_VERSION") or "1.0",
    }
    prefix = (environ.get("SERVICE_PATH_PREFIX") or "").strip("/")
    prefix = f"/{prefix}" if prefix else ""
    failed = "The service failed to execute due to an error."
    if version == "2":
        ref = "#/definitions/"

        def body(schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
            return {"schema": schema}

    else:
        ref = "#/components/schemas/"

        def body(schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
            return {"content": {media: {"schema": schema}}}

    error = {"description": failed, **body({"$ref": ref + "ErrorResponse"})}
    health = {
        "description": "The service is up: the answer is the text 'Healthy'.",
        **body({"type": "string"}, "text/plain"),
    }
    score: dict[str, Any] = {
        "operationId": "RunMLService",
        "description": "Run the model and get its prediction.",
        "security": [{"Bearer": []}],
        "responses": {
            "200": {"description": "The model's output.", **body({"$ref": ref + "ServiceOutput"})},
            "default": error,
        },
    }
    version_param: dict[str, Any] = {"name": "version", "in": "query", "required": False}
    enum = {"type": "integer", "enum": [2, 3]}
    schemas = {
        "ServiceInput": input_schema,
        "ServiceOutput": output_schema,
        "ErrorResponse": copy.deepcopy(_ERROR),
    }
    bearer = {
        "type": "apiKey",
        "name": "Authorization",
        "in": "header",
        "description": "For example: Bearer abc123",
    }
    if version == "2":
        score["parameters"] = [
            {
                "name": "serviceInputPayload",
                "in": "body",
                "description": "The input payload for the model.",
                "schema": {"$ref": ref + "ServiceInput"},
            }
        ]
        version_param.update(enum)
    else:
        score["requestBody"] = {
            "description": "The input payload for the model.",
            "content": {"application/json": {"schema": {"$ref": ref + "ServiceInput"}}},
        }
        version_param["schema"] = enum
    paths = {
        f"{prefix}/": {
            "get": {
                "operationId": "ServiceHealthCheck",
                "description": "Health check: answers once the model is loaded.",
                "responses": {"200": health, "default": error},
            }
        },
        f"{prefix}/score": {"post": score},
        f"{prefix}/swagger.json": {
            "get": {
                "operationId": "GetSwaggerSpec",
                "description": "Get the Swagger specification.",
                "parameters": [version_param],
                "responses": {
                    "200": {"description": "The Swagger specification.", **body({"type": "object"})},
                    "default": error,
                },
            }
        },
    }
    if version == "2":
        return {
            "swagger": "2.0",
            "info": info,
            "schemes": ["https"],
            "consumes": ["application/json"],
            "produces": ["application/json"],
            "securityDefinitions": {"Bearer": bearer},
            "paths": paths,
            "definitions": schemas,
        }
    return {
        "openapi": "3.1.0" if version == "3.1" else "3.0.3",
        "info": info,
        "security": [{"Bearer": []}],
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"Bearer": bearer}},
    }
