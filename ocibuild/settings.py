"""Configuration from the environment, read in one place.

Library code never reads ``os.environ`` for its settings: the command line and the API read them here and pass
them down as options, so a module's behaviour is decided by its arguments alone.
"""

from __future__ import annotations

import os
import sys


def default_base() -> str:
    """``$OCIBUILD_BASE``, else the official slim image of the host's Python (the one that pickled the model)."""
    return (
        os.environ.get("OCIBUILD_BASE")
        or f"docker.io/library/python:{sys.version_info[0]}.{sys.version_info[1]}-slim"
    )
