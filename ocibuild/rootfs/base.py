"""What a build reads of its base image (its Python, its OS packages, the checks' files), from one read of its
layers, remembered in the cache's records under the base's digests: a base is read once, here or (with a shared
cache) by any builder of the fleet.

Reading is what costs (inflating and walking the Debian base's 12,000 entries: 0.75 s), so a base that is new to
the cache is read once for all three, whichever is asked for first, not once for each.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import partial
from typing import TYPE_CHECKING

from . import files, packages, pyenv
from .files import BaseFiles
from .layers import read_trees
from .packages import OsPackage, OsPackages
from .pyenv import TargetPython

if TYPE_CHECKING:
    from ..events import Progress
    from ..oci.image import Image
    from ..oci.store import Records

__all__ = ["base_files", "base_packages", "base_python"]


def base_python(base: Image, records: Records, what: str, progress: Progress | None = None) -> TargetPython:
    """The base's Python, C library and platform (``rootfs.pyenv``)."""
    if not base.layers:  # scratch: pyenv says, in its words, that there is no Python
        return pyenv.detect_target_python([], base.platform.architecture, base.platform.variant, what=what)
    if (cached := _cached(records, _python_key(base), _python_from_json)) is not None:
        return cached
    return _read(base, records, what, progress).python


def base_packages(base: Image, records: Records, what: str, progress: Progress | None = None) -> OsPackages:
    """The base's OS packages (for the SBOM: ``rootfs.packages``)."""
    if (cached := _cached(records, _packages_key(base), _packages_from_json)) is not None:
        return cached
    return _read(base, records, what, progress).packages


def base_files(base: Image, records: Records, what: str, progress: Progress | None = None) -> BaseFiles:
    """The base's files, for the checks (``rootfs.files``)."""
    if (cached := _cached(records, _files_key(base), BaseFiles.from_json)) is not None:
        return cached
    return _read(base, records, what, progress).files


@dataclass(frozen=True)
class _Read:
    python: TargetPython
    packages: OsPackages
    files: BaseFiles


def _read(base: Image, records: Records, what: str, progress: Progress | None) -> _Read:
    """Read the layers once for all three and remember each."""
    arch, variant = base.platform.architecture, base.platform.variant
    pyenv.check_platform(arch, variant, what)
    if progress is not None:
        progress.step("reading the base image's layers (its Python, its packages, its files)")
    openers = [partial(base.open_uncompressed, d) for d in base.layers]
    scans = [pyenv.scan_member, packages.scan_member, files.scan_member]
    python_tree, packages_tree, files_tree = read_trees(openers, what, scans)
    python = pyenv.target_in_tree(python_tree, arch, variant, what=what)
    env = (base.config.get("config") or {}).get("Env") or []
    found = _Read(python, packages.packages_in_tree(packages_tree), files.files_in_tree(files_tree, python, env))
    records.put_ref(_python_key(base), asdict(found.python))
    records.put_ref(_packages_key(base), asdict(found.packages))
    records.put_ref(_files_key(base), found.files.to_json())
    return found


def _cached(records: Records, key: str, parse):  # type: ignore[no-untyped-def]
    if (doc := records.get_ref(key)) is None:
        return None
    try:
        return parse(doc)
    except (TypeError, KeyError, ValueError):
        return None  # written by another version: read again


# The keys are those of the versions that read the base three times, so their records are still found.
def _python_key(base: Image) -> str:
    return "pyenv-" + _digest(_layers(base))


def _packages_key(base: Image) -> str:
    return "ospkgs-1-" + _digest(_layers(base))


def _files_key(base: Image) -> str:
    return "basefiles-" + _digest([*_layers(base), str(base.manifest.config.digest), files.FORMAT])


def _layers(base: Image) -> list[str]:
    return [str(d.digest) for d in base.layers]


def _digest(ident: list) -> str:
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()


def _python_from_json(doc: dict) -> TargetPython:
    return TargetPython(**{k: tuple(v) if isinstance(v, list) else v for k, v in doc.items()})


def _packages_from_json(doc: dict) -> OsPackages:
    found = tuple(OsPackage(**p) for p in doc["packages"])
    return OsPackages(found, doc["distro"], doc["distro_version"], tuple(doc["managers"]))
