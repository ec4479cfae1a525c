"""The installed dependencies in layers by size: each big distribution in a layer of its own, the rest together.

A real ML image's dependencies are a few large, stable distributions (torch, the ``nvidia-*`` CUDA wheels, triton,
scipy) and many small ones that change more often. In one layer, adding a small requirement changes gigabytes
that a push must send again; split, it changes the small layer only, and the big layers keep their bytes, so their
digests, and the registry skips them. The split is a function of the installed files alone: each file goes to the
distribution whose ``RECORD`` lists it (its compiled bytecode goes with its source), every distribution of at least
``SPLIT_MIN`` bytes installed gets its own layer, in name order, and everything else (small distributions, files
no RECORD lists, empty folders) makes the last layer. A distribution larger than ``LAYER_MAX`` is cut, in path
order, into layers of at most that size, so no layer exceeds what registries accept (GHCR's limit is 10 GB).
"""

from __future__ import annotations

import csv
import posixpath
from dataclasses import dataclass
from pathlib import Path

from ..oci.layer import LayerContents
from ..oci.tarstream import Entry

SPLIT_MIN = 64 << 20  # installed bytes from which a distribution is worth a layer of its own
LAYER_MAX = 4 << 30  # no layer holds more installed bytes than this (unless one file does)
REST = "the rest"


@dataclass(frozen=True)
class Part:
    name: str  # the distribution (with ``#2``... for the pieces of a cut one), or REST
    contents: LayerContents


def split_dependencies(contents: LayerContents, site: Path, site_in_image: str) -> list[Part]:
    """``contents`` (the whole installed tree ``site``, as it sits at ``site_in_image``) as layers, big first."""
    owners = _owners(site)
    by_owner: dict[str, list[Entry]] = {}
    prefix = site_in_image.strip("/") + "/"
    for entry in contents.entries():
        if entry.kind == "dir":
            continue
        rel = entry.path[len(prefix) :] if entry.path.startswith(prefix) else entry.path
        by_owner.setdefault(_owner(rel, owners), []).append(entry)
    sizes = {name: sum(e.size for e in entries) for name, entries in by_owner.items()}
    big = sorted(n for n in by_owner if n != REST and sizes[n] >= SPLIT_MIN)
    rest = [e for n, entries in by_owner.items() if n not in big for e in entries]
    parts = [piece for name in big for piece in _cut(name, by_owner[name])]
    implied = {p for part in parts for e in part.contents.entries() if e.kind == "dir" for p in [e.path]}
    rest += [e for e in contents.entries() if e.kind == "dir" and e.path not in implied]
    if rest:
        parts.append(Part(REST, _contents(rest)))
    return parts


def _cut(name: str, entries: list[Entry]) -> list[Part]:
    pieces: list[list[Entry]] = [[]]
    size = 0
    for entry in sorted(entries, key=lambda e: e.path.split("/")):
        if pieces[-1] and size + entry.size > LAYER_MAX:
            pieces.append([])
            size = 0
        pieces[-1].append(entry)
        size += entry.size
    return [Part(name if i == 0 else f"{name}#{i + 1}", _contents(p)) for i, p in enumerate(pieces)]


def _contents(entries: list[Entry]) -> LayerContents:
    out = LayerContents()
    for entry in entries:
        out.add_entry(entry)
    return out


def _owners(site: Path) -> dict[str, str]:
    """Every file a distribution's RECORD lists (relative to ``site``) → the distribution's name."""
    owners: dict[str, str] = {}
    for record in sorted(site.glob("*.dist-info/RECORD")):
        name = record.parent.name[: -len(".dist-info")].rpartition("-")[0] or record.parent.name
        with open(record, newline="", encoding="utf-8", errors="replace") as f:
            for row in csv.reader(f):
                if row and row[0]:
                    owners.setdefault(posixpath.normpath(row[0]), name)
    return owners


def _owner(rel: str, owners: dict[str, str]) -> str:
    if (owner := owners.get(rel)) is not None:
        return owner
    folder, _, file = rel.rpartition("/")
    if folder.endswith("__pycache__") and file.endswith(".pyc"):  # compiled here: goes with its source
        source = posixpath.join(posixpath.dirname(folder), file.split(".", 1)[0] + ".py")
        return owners.get(source, REST)
    return REST
