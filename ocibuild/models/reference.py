"""Which ``package`` model arguments name registered models, and where they live: read from the text alone.

Apart from ``models.registry`` so that a build of local models never imports oras-py (and the jsonschema it brings,
whose format checkers take seconds to import when their optional grammars are installed).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..oci.name import Reference, parse_reference

__all__ = ["is_model_reference", "model_reference", "model_registries"]


def is_model_reference(text: str) -> bool:
    """Whether a ``package`` model argument names a registered model rather than a local path: ``docker://…``,
    or (when no such local path exists) ``HOST/REPO…`` whose first part is a host (has a dot or a port, or is
    ``localhost``) or anything pinned by ``@sha256:``."""
    if text.startswith("docker://"):
        return True
    if os.path.lexists(text) or text.startswith((".", "/", "~")):
        return False
    first = text.split("/", 1)[0]
    return "/" in text and ("." in first or ":" in first or first == "localhost") or "@sha256:" in text


def model_reference(text: str) -> Reference:
    return parse_reference(text.removeprefix("docker://"))


def model_registries(models: Sequence[str]) -> list[str]:
    """The registries the registered models among ``package``'s model arguments live on."""
    return sorted({model_reference(m).registry for m in models if is_model_reference(m)})
