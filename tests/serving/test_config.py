"""Settings from arguments, environment and defaults (in-process: these need no server)."""

from __future__ import annotations

import pytest

from ocibuild.serving.app import encode_result
from ocibuild.serving.config import DEFAULT_MAX_REQUEST_BYTES, ConfigError, settings_from


def test_defaults() -> None:
    s = settings_from({"AZUREML_ENTRY_SCRIPT": "score.py"})
    assert (s.entry_script, s.host, s.port, s.workers) == ("score.py", "0.0.0.0", 5001, 1)
    assert s.max_request_bytes == DEFAULT_MAX_REQUEST_BYTES == 100 * 1024 * 1024
    assert s.scoring_timeout_ms is None and s.max_concurrent_runs is None and s.model_dir is None


def test_environment() -> None:
    env = {
        "AZUREML_ENTRY_SCRIPT": "a.py",
        "AZUREML_MODEL_DIR": "/models",
        "OCIBUILD_HOST": "::",
        "OCIBUILD_PORT": "8080",
        "OCIBUILD_MAX_REQUEST_BYTES": "10",
        "WORKER_COUNT": "4",
        "SCORING_TIMEOUT_MS": "500",
        "OCIBUILD_GRACEFUL_TIMEOUT": "2.5",
    }
    s = settings_from(env)
    assert (s.host, s.port, s.max_request_bytes, s.workers, s.model_dir) == ("::", 8080, 10, 4, "/models")
    assert (s.scoring_timeout_ms, s.graceful_timeout_s) == (500, 2.5)


def test_arguments_win_over_environment() -> None:
    env = {"AZUREML_ENTRY_SCRIPT": "env.py", "OCIBUILD_PORT": "8080", "WORKER_COUNT": "4"}
    s = settings_from(env, entry_script="arg.py", port=9000, workers=1, model_dir="m")
    assert (s.entry_script, s.port, s.workers, s.model_dir) == ("arg.py", 9000, 1, "m")


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, "AZUREML_ENTRY_SCRIPT"),
        ({"WORKER_COUNT": "two"}, "WORKER_COUNT"),
        ({"WORKER_COUNT": "0"}, "WORKER_COUNT"),
        ({"OCIBUILD_PORT": "70000"}, "OCIBUILD_PORT"),
        ({"OCIBUILD_MAX_REQUEST_BYTES": "-1"}, "OCIBUILD_MAX_REQUEST_BYTES"),
    ],
)
def test_bad_values_name_the_variable(env, names) -> None:
    if names != "AZUREML_ENTRY_SCRIPT":
        env = {"AZUREML_ENTRY_SCRIPT": "score.py", **env}
    with pytest.raises(ConfigError, match=names):
        settings_from(env)


def test_encode_result_like_azure() -> None:
    class Array:
        def tolist(self):
            return [1, 2]

    assert encode_result({"a": Array()}) == b'{"a": [1, 2]}'
    assert encode_result(Array()) == b"[1, 2]"
    assert encode_result("text") == b'"text"'
    assert encode_result(None) == b"{}"
    with pytest.raises(TypeError):
        encode_result(object())
