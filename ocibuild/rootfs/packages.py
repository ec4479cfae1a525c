"""The operating system's packages a base image holds, read from its package databases in its layers, without
running it: what an SBOM lists for the base (its name, version, architecture and source package, and a package
URL as Syft and Trivy write them).

Debian's dpkg database (``var/lib/dpkg/status``; distroless images keep one file per package in
``var/lib/dpkg/status.d/``) and Alpine's apk database (``lib/apk/db/installed``) are read; only packages dpkg
says are installed count. RPM's database (sqlite or Berkeley DB) is not read: an RPM-based base lists no OS
packages, and says so through ``OsPackages.managers`` being empty.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import quote

from .layers import Dir, Path, Tree, read_tree

__all__ = [
    "OsPackage", "OsPackages", "os_packages", "packages_in_tree", "parse_apk_installed", "parse_dpkg_status", "scan_member",
]  # fmt: skip

_DB_LIMIT = 64 << 20  # a package database larger than this is refused as hostile (Debian's largest: a few MB)
_DPKG_STATUS = ("var", "lib", "dpkg", "status")
_DPKG_STATUS_D = ("var", "lib", "dpkg", "status.d")
_APK_INSTALLED = ("lib", "apk", "db", "installed")
_OS_RELEASE = (("etc", "os-release"), ("usr", "lib", "os-release"))


@dataclass(frozen=True)
class OsPackage:
    manager: str  # "deb" or "apk"
    name: str
    version: str
    architecture: str
    source: str | None = None  # the source package (dpkg's Source:, apk's o:), when it differs from the name
    license: str | None = None  # apk's L:; dpkg keeps licenses in copyright files, not in its database

    def purl(self, distro: str | None = None) -> str:
        """The package URL (``pkg:deb/debian/python3.11@3.11.2-6?arch=amd64``), namespaced by the distribution."""
        namespace = f"{quote(distro, safe='')}/" if distro else ""
        qualifiers = [f"arch={quote(self.architecture, safe='')}"] if self.architecture else []
        if self.source and self.source != self.name:
            qualifiers.append(f"upstream={quote(self.source, safe='')}")
        tail = f"?{'&'.join(qualifiers)}" if qualifiers else ""
        return (
            f"pkg:{self.manager}/{namespace}{quote(self.name, safe='')}@{quote(self.version, safe='')}{tail}"
        )


@dataclass(frozen=True)
class OsPackages:
    packages: tuple[OsPackage, ...]
    distro: str | None  # os-release's ID (debian, alpine, ...), the purls' namespace
    distro_version: str | None  # os-release's VERSION_ID
    managers: tuple[str, ...]  # the databases found ("deb", "apk"); empty: none this reads


def os_packages(layers: Sequence[Callable[[], BinaryIO]], what: str = "base image") -> OsPackages:
    """Read the layers (uncompressed tar openers, bottom first) for their package databases and os-release."""
    return packages_in_tree(read_tree(layers, what, scan_member))


def packages_in_tree(tree: Tree) -> OsPackages:
    """``os_packages`` of a tree read with ``scan_member`` (``layers.read_trees``)."""
    packages: list[OsPackage] = []
    managers = []
    if (status := _text(tree, _DPKG_STATUS)) is not None:
        packages += parse_dpkg_status(status)
        managers.append("deb")
    node, _ = tree.resolve(_DPKG_STATUS_D)
    if isinstance(node, Dir):
        for name in sorted(node.children):
            if (text := _text(tree, (*_DPKG_STATUS_D, name))) is not None:
                packages += parse_dpkg_status(text)
        if "deb" not in managers:
            managers.append("deb")
    if (installed := _text(tree, _APK_INSTALLED)) is not None:
        packages += parse_apk_installed(installed)
        managers.append("apk")
    release = next((r for p in _OS_RELEASE if (r := _text(tree, p)) is not None), "")
    fields = dict(re.findall(r'^([A-Z_]+)="?([^"\n]*)"?$', release, re.M))
    unique = {(p.manager, p.name, p.architecture): p for p in packages}
    ordered = tuple(sorted(unique.values(), key=lambda p: (p.manager, p.name, p.architecture)))
    return OsPackages(ordered, fields.get("ID") or None, fields.get("VERSION_ID") or None, tuple(managers))


def parse_dpkg_status(text: str) -> list[OsPackage]:
    """The installed packages of a dpkg status file (paragraphs of ``Field: value`` lines)."""
    out = []
    for paragraph in re.split(r"\n\s*\n", text):
        fields = _fields(paragraph, ": ")
        status = fields.get("Status", "install ok installed").split()
        if not fields.get("Package") or not fields.get("Version") or status[-1:] != ["installed"]:
            continue
        source = fields.get("Source", "").split(" ")[0] or None  # "Source: name (version)"
        out.append(
            OsPackage("deb", fields["Package"], fields["Version"], fields.get("Architecture", ""), source)
        )
    return out


def parse_apk_installed(text: str) -> list[OsPackage]:
    """The packages of an apk ``installed`` database (paragraphs of one-letter ``K:value`` lines)."""
    out = []
    for paragraph in re.split(r"\n\s*\n", text):
        fields = _fields(paragraph, ":")
        if fields.get("P") and fields.get("V"):
            origin = fields.get("o") or None
            out.append(
                OsPackage("apk", fields["P"], fields["V"], fields.get("A", ""), origin, fields.get("L"))
            )
    return out


def _fields(paragraph: str, separator: str) -> dict[str, str]:
    """The first line of each field (continuation lines, which start with a space, are descriptions)."""
    fields: dict[str, str] = {}
    for line in paragraph.splitlines():
        if line[:1] in (" ", "\t") or separator not in line:
            continue
        key, value = line.split(separator, 1)
        fields.setdefault(key.strip(), value.strip())
    return fields


def _is_database(path: Path) -> bool:
    return path in (_DPKG_STATUS, _APK_INSTALLED) or path[:-1] == _DPKG_STATUS_D or path in _OS_RELEASE


def scan_member(path: Path, size: int, open_content: Callable[[], BinaryIO | None]) -> object:
    if not _is_database(path) or size > _DB_LIMIT:
        return None
    content = open_content()
    return None if content is None else content.read(_DB_LIMIT).decode("utf-8", "replace")


def _text(tree: Tree, path: Path) -> str | None:
    found, _ = tree.file(path)
    return found.facts if found is not None and isinstance(found.facts, str) else None
