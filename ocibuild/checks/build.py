"""The checks as the build runs them: ``dependencies`` once the dependencies are installed (or found in the cache),
``entry_script`` once it knows them. Each gap is one line; errors stop the build with all of them at once
(``CheckError``), warnings are printed and the build goes on.

What the dependencies ask of the image (``native.Needs`` and their importable names, ``scan``) are facts the layer
cache keeps with the dependencies layer, so a cached layer is checked against whatever base it is put on, on any
machine, without its files.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CheckError, UsageError
from ..rootfs.base import base_files
from ..rootfs.files import BaseFiles, ModuleTree
from . import native
from .imports import ImportCheck, module_tree

if TYPE_CHECKING:
    from ..events import Progress
    from ..oci.image import Image
    from ..oci.store import Records
    from ..rootfs.pyenv import TargetPython

__all__ = ["CHECKS", "BuildChecks", "CheckOptions"]

CHECKS = ("native", "imports")
_FORMAT = 1


@dataclass(frozen=True)
class CheckOptions:
    """Which checks run (all by default: they take well under a second) and which import names are accepted."""

    skip: frozenset[str] = frozenset()
    allow_imports: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, skip: object = (), allow_imports: object = ()) -> CheckOptions:
        skip_set = frozenset(str(s) for s in skip)  # type: ignore[attr-defined]
        if unknown := sorted(skip_set - set(CHECKS)):
            raise UsageError(f"--skip-check {unknown[0]}: the checks are {', '.join(CHECKS)}")
        names = frozenset(str(n).strip() for n in allow_imports)  # type: ignore[attr-defined]
        for name in names:
            if not all(part.isidentifier() for part in name.split(".")):
                raise UsageError(
                    f"--allow-import {name!r}: give an import name such as pandas or azureml.core"
                )
        return cls(skip_set, names)


class BuildChecks:
    """One build's checks against one base image, whose files are read once (and cached by its digests).

    The files are usually in the cache's records already (``rootfs.base`` reads a new base once, when its Python is
    detected); when not, the read starts at once in a thread, beside the installer (a separate process).
    """

    def __init__(
        self,
        options: CheckOptions,
        base: Image,
        target: TargetPython,
        store: Records,  # where what was read of a base is kept
        progress: Progress,
        site_in_image: str,
        what: str = "base image",
    ) -> None:
        self.options, self.base, self.target, self.store = options, base, target, store
        self.progress, self.site_in_image, self.what = progress, site_in_image, what
        self.installed: ModuleTree = {}
        self._scanned = 0.0  # seconds the last scan took, reported with the check
        self.facts: dict | None = None  # the last scan's
        self._files: BaseFiles | BaseException | None = None
        self._reading: threading.Thread | None = None
        if base.layers and set(CHECKS) - options.skip:
            self._reading = threading.Thread(target=self._read, name="ocibuild-base-files", daemon=True)
            self._reading.start()

    def _read(self) -> None:
        assert self.base is not None
        try:
            self._files = base_files(self.base, self.store, self.what)
        except BaseException as e:  # handed to the build's own thread by files()
            self._files = e

    def files(self) -> BaseFiles:
        if self._reading is None:
            raise AssertionError("no base image to check against")  # a build without a base fails earlier
        self._reading.join()
        if isinstance(self._files, BaseException):
            raise self._files
        assert self._files is not None
        return self._files

    def scan(self, site: Path) -> dict:
        """What the installed dependencies (``site``) ask of the image: the facts a cache keeps with their layer,
        so that the layer is checked again on any base without its files."""
        started = time.monotonic()
        self.facts = {"format": _FORMAT, "needs": native.scan(site).to_json(), "modules": module_tree(site)}
        self._scanned = time.monotonic() - started
        return self.facts

    def dependencies(self, facts: dict | None) -> None:
        """Check the dependencies by their ``facts`` (``scan``, now or when their layer was cached). Raises
        ``CheckError`` with one line per gap."""
        try:
            if facts is None or facts.get("format") != _FORMAT:
                raise ValueError("not remembered")
            needs = native.Needs.from_json(facts["needs"])
            self.installed = facts["modules"]
        except (KeyError, TypeError, ValueError):
            self.progress.warn(
                "the cached dependencies layer was built before ocibuild checked native libraries and imports; "
                "pass --no-cache once to check it"
            )
            self.options = CheckOptions(self.options.skip | {"native", "imports"}, self.options.allow_imports)
            return
        scanned, self._scanned = self._scanned, 0.0
        if "native" in self.options.skip:
            return
        started = time.monotonic()
        errors, warnings = native.check(needs, self.files(), self.target, self.site_in_image)
        for gap in warnings:
            self.progress.warn(str(gap))
        if errors:
            raise CheckError("\n".join(str(g) for g in errors))
        self.progress.step(
            f"checked {len(needs.files)} native files of the dependencies against the base: they load "
            f"({scanned + time.monotonic() - started:.1f} s)"
        )

    def entry_script(self, script: Path, source_dir: Path | None) -> None:
        """Check that every import of the entry script (and of the source folder's modules it imports) resolves
        in the image; raises ``CheckError`` with one line per import that does not."""
        if "imports" in self.options.skip:
            return
        started = time.monotonic()
        files = self.files()
        check = ImportCheck(
            script=script if source_dir is None or script.is_absolute() else source_dir / script,
            source_dir=source_dir,
            python=self.target.version,
            stdlib=files.stdlib,
            site=files.site,
            installed=self.installed,
            allow=self.options.allow_imports,
        )
        errors, warnings = check.run()
        for finding in warnings:
            self.progress.warn(str(finding))
        if errors:
            raise CheckError("\n".join(str(f) for f in errors))
        self.progress.step(
            f"checked the imports of {len(check.seen)} module{'s' if len(check.seen) > 1 else ''} of the entry "
            f"script: they resolve ({time.monotonic() - started:.1f} s)"
        )
