"""ocibuild: package a trained model into a runnable, scoring OCI image, without a Docker daemon.

The public API (``package``, ``InferenceConfig``, ``Environment``) is loaded on first use, so importing a
submodule such as ``ocibuild.oci`` stays cheap.
"""

from .version import __version__

__all__ = ["Environment", "InferenceConfig", "OcibuildError", "Outputs", "Package", "package", "__version__"]


def __getattr__(name: str):
    if name in ("Environment", "InferenceConfig", "Outputs", "Package", "package"):
        from . import api

        return getattr(api, name)
    if name == "OcibuildError":
        from .errors import OcibuildError

        return OcibuildError
    raise AttributeError(f"module 'ocibuild' has no attribute {name!r}")
