"""Fixtures of the packaging tests."""

import os

import pytest


@pytest.fixture
def isolated_env(monkeypatch, tmp_path):
    """No index configuration from this machine: no pip.conf, no PIP_*/UV_* sources, a HOME without .netrc."""
    for var in list(os.environ):
        if var.startswith(
            ("PIP_", "UV_INDEX", "UV_DEFAULT_INDEX", "UV_EXTRA_INDEX", "UV_FIND_LINKS", "NETRC")
        ):
            monkeypatch.delenv(var)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    return tmp_path / "home"
