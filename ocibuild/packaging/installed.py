"""What ``wheels.install_dependencies`` installed, for the image's SBOM: each distribution's name, version and license
as its metadata says, and the name and sha256 of the wheel file it came from.

The installed tree says what is there (``*.dist-info/METADATA`` and ``WHEEL``) but not which file it came from; the
installers' own records say that, and they live in a work folder that is removed after the install: uv's
pylock.toml (every wheel of the locked version; the installed one is the one whose tags fit), pip's ``--report``
(the very file) and the wheels ocibuild built from source archives (the very file). ``WheelOrigins`` holds those
facts, read before the work folder goes; ``installed_wheels`` joins them with the tree. URLs are never kept: a
private index's URL may carry credentials, so only its last path segment, the file name, is.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from email.message import Message
from email.parser import HeaderParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from packaging.utils import canonicalize_name, canonicalize_version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found]

__all__ = ["InstalledWheel", "WheelFile", "WheelOrigins", "installed_wheels", "wheel_filename_tags"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MAX_LICENSE = 100  # a longer License: field is the license's text, not its name


@dataclass(frozen=True)
class InstalledWheel:
    """One distribution in the installed tree. ``filename`` and ``sha256`` are "" when no installer record names the
    wheel file; ``license`` is "" when the metadata declares none (see ``_license`` for where it comes from)."""

    name: str  # METADATA's Name
    version: str  # METADATA's Version
    filename: str  # the wheel file's name, never its URL
    sha256: str  # lowercase hex, of the wheel file
    license: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> InstalledWheel:
        """The inverse of ``to_json``; a cached record that is not one raises (KeyError, TypeError, ValueError)
        rather than becoming a wrong SBOM entry. Unknown keys are ignored (a later version may add some)."""
        if not isinstance(doc, dict):
            raise TypeError(f"an installed wheel is a JSON object, not {type(doc).__name__}")
        values = {name: doc[name] for name in ("name", "version", "filename", "sha256", "license")}
        for key, value in values.items():
            if not isinstance(value, str):
                raise TypeError(f"installed wheel {key!r} must be a string, not {type(value).__name__}")
        if not values["name"] or not values["version"]:
            raise ValueError("an installed wheel needs a name and a version")
        if values["sha256"] and not _SHA256.match(values["sha256"]):
            raise ValueError(f"installed wheel sha256 {values['sha256']!r} is not 64 lowercase hex digits")
        if "/" in values["filename"] or "\\" in values["filename"]:
            raise ValueError("an installed wheel's filename is a file name, not a path or URL")
        return cls(**values)


@dataclass(frozen=True)
class WheelFile:
    """A wheel file as an installer record names it: its file name and the sha256 of its bytes."""

    filename: str
    sha256: str


def wheel_filename_tags(filename: str) -> frozenset[str]:
    """Every ``py-abi-platform`` tag a wheel file name (PEP 427, with or without a build tag) declares, its
    ``.``-compressed sets expanded; empty when the name is not a wheel's. Lowercase, as ``WHEEL``'s tags are."""
    if not filename.lower().endswith(".whl"):
        return frozenset()
    parts = filename[:-4].split("-")
    if len(parts) not in (5, 6):
        return frozenset()
    sets = [part.lower().split(".") for part in parts[-3:]]
    return frozenset("-".join(tag) for tag in itertools.product(*sets))


def filename_from_url(url: str) -> str:
    """The file name in a URL (its last path segment, decoded): never the URL, which may hold credentials."""
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1])


def _key(name: str, version: str) -> tuple[str, str]:
    return canonicalize_name(name), canonicalize_version(version)


@dataclass
class WheelOrigins:
    """Which wheel file each installed distribution came from, as the installers recorded it.

    ``exact`` are the very files installed (pip's report, wheels built from source archives); ``locked`` are all
    the wheels uv's lock lists for a version, in lock order, of which the installed one is the first whose tags
    include the installed ``WHEEL``'s tags. Both are keyed by canonical name and version, so a record of another
    version never names the file of this one.
    """

    exact: dict[tuple[str, str], WheelFile] = field(default_factory=dict)
    locked: dict[tuple[str, str], list[WheelFile]] = field(default_factory=dict)

    def add_built(self, wheel: Path) -> None:
        """A wheel ocibuild built from a source archive, hashed now: its folder is about to be removed."""
        parts = wheel.name.split("-")
        if len(parts) >= 5:
            sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
            self.exact.setdefault(_key(parts[0], parts[1]), WheelFile(wheel.name, sha))

    def add_pylock(self, lock: Path) -> None:
        """The wheels of every package in uv's pylock.toml (PEP 751); a lock that cannot be read adds nothing."""
        try:
            with lock.open("rb") as f:
                doc = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError):
            return
        for pkg in _dicts(doc.get("packages")):
            name, version = pkg.get("name"), pkg.get("version")
            if isinstance(name, str) and isinstance(version, str):
                wheels = [w for w in map(_locked_wheel, _dicts(pkg.get("wheels"))) if w is not None]
                self.locked.setdefault(_key(name, version), []).extend(wheels)

    def add_pip_report(self, report: Path) -> None:
        """The files of pip's installation report (``pip install --report``); one that cannot be read adds
        nothing, so an older pip degrades to unknown files instead of failing the install."""
        try:
            doc = json.loads(report.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        for item in _dicts(doc.get("install") if isinstance(doc, dict) else None):
            meta, info = item.get("metadata"), item.get("download_info")
            if not isinstance(meta, dict) or not isinstance(info, dict):
                continue
            name, version = meta.get("name"), meta.get("version")
            wheel = _reported_wheel(info)
            if isinstance(name, str) and isinstance(version, str) and wheel is not None:
                self.exact.setdefault(_key(name, version), wheel)

    def find(self, name: str, version: str, tags: frozenset[str]) -> WheelFile | None:
        """The file ``name`` ``version`` with ``WHEEL`` tags ``tags`` was installed from, if a record says."""
        key = _key(name, version)
        if key in self.exact:
            return self.exact[key]
        return next((w for w in self.locked.get(key, ()) if tags <= wheel_filename_tags(w.filename)), None)


def _dicts(value: object) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _locked_wheel(wheel: dict[str, Any]) -> WheelFile | None:
    """A pylock.toml wheel entry: its ``name``, else the last segment of its ``url`` or ``path``."""
    where = wheel.get("name") or wheel.get("url") or wheel.get("path")
    hashes = wheel.get("hashes")
    sha = hashes.get("sha256") if isinstance(hashes, dict) else None
    if not isinstance(where, str):
        return None
    return WheelFile(filename_from_url(where.replace("\\", "/")), sha.lower() if isinstance(sha, str) else "")


def _reported_wheel(info: dict[str, Any]) -> WheelFile | None:
    """A pip report's ``download_info``: the file name from its URL, the sha256 from ``archive_info``."""
    url, archive = info.get("url"), info.get("archive_info")
    if not isinstance(url, str) or not isinstance(archive, dict):
        return None
    hashes = archive.get("hashes")
    sha = hashes.get("sha256") if isinstance(hashes, dict) else None
    legacy = archive.get("hash")
    if sha is None and isinstance(legacy, str) and legacy.startswith("sha256="):
        sha = legacy[len("sha256=") :]
    return WheelFile(filename_from_url(url), sha.lower() if isinstance(sha, str) else "")


def _license(meta: Message) -> str:
    """The license the metadata declares, by how exactly it names one: ``License-Expression`` (SPDX, PEP 639);
    else ``License:`` when it is a name (one line, at most 100 characters, not ``UNKNOWN``) rather than the text;
    else the last segments of the ``License ::`` classifiers (``MIT License``), joined with `` AND ``
    (``OSI Approved`` alone names none); else ""."""
    expression = str(meta.get("License-Expression") or "").strip()
    if expression:
        return expression
    named = str(meta.get("License") or "").strip()
    if named and "\n" not in named and len(named) <= _MAX_LICENSE and named.upper() != "UNKNOWN":
        return named
    names: list[str] = []
    for classifier in meta.get_all("Classifier") or ():
        segments = [s.strip() for s in str(classifier).split("::")]
        if (
            segments[0] == "License"
            and segments[1:] not in ([], ["OSI Approved"])
            and segments[-1] not in names
        ):
            names.append(segments[-1])
    return " AND ".join(names)


def _wheel_tags(info: Path) -> frozenset[str]:
    """The ``Tag:`` lines of a ``*.dist-info/WHEEL``, lowercase; empty when there is none."""
    try:
        text = (info / "WHEEL").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    return frozenset(str(t).strip().lower() for t in HeaderParser().parsestr(text).get_all("Tag") or ())


def _installed(info: Path, origins: WheelOrigins) -> InstalledWheel:
    """One ``*.dist-info`` folder; name and version from the folder's name when METADATA lacks them."""
    try:
        text = (info / "METADATA").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    meta = HeaderParser().parsestr(text)
    stem_name, _, stem_version = info.name[: -len(".dist-info")].partition("-")
    name = str(meta.get("Name") or stem_name).strip()
    version = str(meta.get("Version") or stem_version).strip()
    wheel = origins.find(name, version, _wheel_tags(info))
    filename, sha = (wheel.filename, wheel.sha256) if wheel is not None else ("", "")
    return InstalledWheel(name, version, filename, sha, _license(meta))


def installed_wheels(dest: Path, origins: WheelOrigins | None = None) -> tuple[InstalledWheel, ...]:
    """Every distribution installed at the top of ``dest`` (its ``*.dist-info`` folders), sorted by canonical name,
    with the wheel file each came from when ``origins`` records it."""
    origins = origins or WheelOrigins()
    found = [_installed(info, origins) for info in dest.glob("*.dist-info") if info.is_dir()]
    return tuple(sorted(found, key=lambda w: (canonicalize_name(w.name), w.version)))
