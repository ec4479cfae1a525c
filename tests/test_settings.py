"""Settings read from the environment: the cache repo a CI fleet shares, and a clear line for a bad value."""

from __future__ import annotations

import pytest

from ocibuild.errors import InputError
from ocibuild.settings import Settings


def test_the_cache_repo_comes_from_the_environment():
    s = Settings.from_environ({"HOME": "/h", "OCIBUILD_CACHE_REPO": "registry.example.com/team/cache"})
    assert s.cache_repo == "registry.example.com/team/cache" and s.cache_repo_readonly is False
    for value, readonly in (("1", True), ("true", True), ("0", False), ("", False), ("no", False)):
        assert (
            Settings.from_environ({"HOME": "/h", "OCIBUILD_CACHE_REPO_READONLY": value}).cache_repo_readonly
            is readonly
        )
    with pytest.raises(InputError, match=r"OCIBUILD_CACHE_REPO_READONLY='maybe': set it to 1 or 0"):
        Settings.from_environ({"HOME": "/h", "OCIBUILD_CACHE_REPO_READONLY": "maybe"})
