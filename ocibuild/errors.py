"""The one exception family of ocibuild.

Every error a user can cause or fix is an ``OcibuildError`` whose ``str()`` is the single line the CLI prints:
it names the input and says what to do. Anything else that escapes is a bug and shows a traceback.
"""

from __future__ import annotations


class OcibuildError(Exception):
    """A user-facing error: its message is one actionable line."""

    exit_code = 1


class UsageError(OcibuildError):
    """The command line or API call is wrong (bad option combination, missing argument)."""

    exit_code = 2


class InputError(OcibuildError):
    """An input file or directory is missing, unreadable or not what it should be."""


class BadReferenceError(OcibuildError):
    """An image reference cannot be parsed or resolved."""


class DigestMismatchError(OcibuildError):
    """Content read back does not hash to the digest that named it: it is corrupt or was tampered with."""


class BaseImageError(OcibuildError):
    """The base image is unusable (no Python, wrong platform, malformed manifest or config)."""


class DependencyError(OcibuildError):
    """Python dependencies cannot be resolved or installed for the image's platform."""


class OutputError(OcibuildError):
    """The destination cannot be written."""


class EngineError(OcibuildError):
    """No container engine reachable, or the engine refused the image."""


class FormatError(OcibuildError):
    """A manifest, index, config or archive is malformed or not of the expected media type."""


class CheckError(OcibuildError):
    """The image would fail at start: a native library or an import of the entry script is missing (one line each)."""
