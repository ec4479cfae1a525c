"""Configuration from the environment, read in one place.

Library code never reads ``os.environ`` for its settings: the command line and the API read them here and pass
them down as options, so a module's behaviour is decided by its arguments alone.
"""

from __future__ import annotations

import os
import sys


def default_base(python: tuple[int, int] | None = None) -> str:
    """``$OCIBUILD_BASE``, else the official slim image of ``python`` (a conda file's ``python=X.Y`` pin), else of
    the host's Python (the one that pickled the model)."""
    major, minor = python or sys.version_info[:2]
    return os.environ.get("OCIBUILD_BASE") or f"docker.io/library/python:{major}.{minor}-slim"


