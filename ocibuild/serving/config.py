"""Server settings: one frozen record built from arguments, then environment variables, then defaults.

Environment variable names follow Azure ML's inference server where one exists, so images configured for Azure
keep working. Nothing here touches the network or the entry script.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 5001
DEFAULT_MAX_REQUEST_BYTES = 100 * 1024 * 1024
DEFAULT_GRACEFUL_TIMEOUT_S = 30.0
# How long an idle keep-alive connection (or a stalled body upload) may hold a thread.
DEFAULT_KEEPALIVE_TIMEOUT_S = 60.0
# Listen backlog: Python's default of 5 stalls clients for seconds at 64 connections (measured; docs/decisions.md).
LISTEN_BACKLOG = 1024


class ConfigError(Exception):
    """A setting has an unusable value; the message names the variable or option."""


@dataclass(frozen=True)
class Settings:
    """Everything a serving process needs; frozen, so worker processes all start from the same values."""

    entry_script: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    model_dir: str | None = None
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    workers: int = 1
    scoring_timeout_ms: int | None = None
    max_concurrent_runs: int | None = None
    graceful_timeout_s: float = DEFAULT_GRACEFUL_TIMEOUT_S
    keepalive_timeout_s: float = DEFAULT_KEEPALIVE_TIMEOUT_S
    log_level: str = "INFO"
    cors_origins: tuple[str, ...] = ()
    model_name: str = "model"
    model_version: str = ""


def settings_from(
    environ: Mapping[str, str] | None = None,
    *,
    entry_script: str | None = None,
    host: str | None = None,
    port: int | None = None,
    model_dir: str | None = None,
    workers: int | None = None,
    max_request_bytes: int | None = None,
) -> Settings:
    """Settings from explicit values (``None`` = not given), falling back to ``environ`` then the defaults."""
    env = os.environ if environ is None else environ
    if workers is not None and workers < 1:
        raise ConfigError(f"the worker count must be at least 1, not {workers}")
    if max_request_bytes is not None and max_request_bytes < 0:
        raise ConfigError(f"the request size limit must not be negative, not {max_request_bytes}")
    script = entry_script or env.get("AZUREML_ENTRY_SCRIPT")
    if not script:
        raise ConfigError("no entry script: set AZUREML_ENTRY_SCRIPT or pass --entry-script")
    return Settings(
        entry_script=script,
        host=host or env.get("OCIBUILD_HOST") or DEFAULT_HOST,
        port=_check_port(port)
        if port is not None
        else _int_env(env, "OCIBUILD_PORT", DEFAULT_PORT, 0, 65535),
        model_dir=model_dir or env.get("AZUREML_MODEL_DIR") or None,
        max_request_bytes=max_request_bytes
        if max_request_bytes is not None
        else _int_env(env, "OCIBUILD_MAX_REQUEST_BYTES", DEFAULT_MAX_REQUEST_BYTES, 0),
        workers=workers if workers is not None else _int_env(env, "WORKER_COUNT", 1, 1),
        scoring_timeout_ms=_int_env(env, "SCORING_TIMEOUT_MS", None, 1),
        max_concurrent_runs=_int_env(env, "OCIBUILD_MAX_CONCURRENT_RUNS", None, 1),
        graceful_timeout_s=_float_env(env, "OCIBUILD_GRACEFUL_TIMEOUT", DEFAULT_GRACEFUL_TIMEOUT_S),
        log_level=(env.get("AZUREML_LOG_LEVEL") or "INFO").upper(),
        cors_origins=tuple(o.strip() for o in env.get("AML_CORS_ORIGINS", "").split(",") if o.strip()),
        model_name=_name_env(env, "OCIBUILD_MODEL_NAME", "model"),
        model_version=_name_env(env, "OCIBUILD_MODEL_VERSION", ""),
    )


def _name_env(env: Mapping[str, str], name: str, default: str) -> str:
    """A model name or version: it becomes a URL path segment, so no '/' and no spaces."""
    value = env.get(name, "").strip()
    if not value:
        return default
    if "/" in value or any(c.isspace() for c in value):
        raise ConfigError(f"{name}={value!r} must not contain '/' or spaces")
    return value


def _check_port(port: int) -> int:
    if not 0 <= port <= 65535:
        raise ConfigError(f"port {port} is not between 0 and 65535")
    return port


def _int_env(
    env: Mapping[str, str], name: str, default: int | None, low: int, high: int | None = None
) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{name}={raw!r} must be {bounds}")
    return value


def _float_env(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < 0:
        raise ConfigError(f"{name}={raw!r} must not be negative")
    return value
