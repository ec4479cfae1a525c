"""Where a model sits in an image, and what it is called: Azure ML's ``azureml-models/<name>/<version>/``.

Owned here so that ``package`` (a model from files) and ``model push`` (a registered model) build the very same
layer for the same file, name and version, and can share one blob.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..oci.layer import LayerContents

MODELS_ROOT = "var/azureml-app/azureml-models"


def model_dir_in_image(name: str, version: str) -> str:
    """Where a model's files sit in the image (no leading slash): Azure ML's ``azureml-models/<name>/<version>``."""
    return f"{MODELS_ROOT}/{name}/{version}"


def add_model(contents: LayerContents, path: Path, name: str, version: str) -> None:
    """A model file or folder into ``contents`` at its place in the image. The same inputs give the same layer
    whether ``package`` builds it or ``model push`` registers it, so the two can share one blob."""
    contents.add_file(path, f"{model_dir_in_image(name, version)}/{path.name}")


def model_name_for(path: Path) -> str:
    """A registry-friendly model name from a file or folder name (``My Model.pkl`` → ``my-model``)."""
    stem = path.name if path.is_dir() else path.stem
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")
    return name or "model"
