"""Tests for ocibuild.checks.build: the options, and a cached dependencies layer whose needs were never recorded."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from ocibuild.checks.build import BuildChecks, CheckOptions
from ocibuild.cli.render import Renderer
from ocibuild.errors import UsageError
from ocibuild.events import Progress
from ocibuild.oci.descriptor import Platform
from ocibuild.oci.empty import empty_image
from ocibuild.oci.store import BlobStore
from tests.checks.bases import TARGET


def test_options():
    options = CheckOptions.of(["native"], ["pandas", "azureml.core"])
    assert options.skip == {"native"} and options.allow_imports == {"pandas", "azureml.core"}
    with pytest.raises(UsageError, match="--skip-check bogus: the checks are native, imports"):
        CheckOptions.of(["bogus"], [])
    with pytest.raises(UsageError, match="give an import name such as pandas"):
        CheckOptions.of([], ["pandas==2.0"])


def test_a_cached_layer_without_recorded_needs_is_not_checked_and_says_so(tmp_path: Path):
    """A layer cached by an ocibuild from before the checks has no record of its needs: checking its imports
    against nothing would flag every one of them, so both checks are skipped with one warning."""
    err = io.StringIO()
    progress = Progress(Renderer(err))
    checks = BuildChecks(
        CheckOptions(), empty_image(Platform()), TARGET, BlobStore(tmp_path / "cache"), progress, "opt/site"
    )
    checks.dependencies(None)
    assert err.getvalue() == (
        "warning: the cached dependencies layer was built before ocibuild checked native libraries and imports; "
        "pass --no-cache once to check it\n"
    )
    (tmp_path / "score.py").write_text("import pandas\n")
    checks.entry_script(tmp_path / "score.py", None)  # skipped: no error although pandas is nowhere
