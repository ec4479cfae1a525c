"""Tests for ocibuild.packaging.bytecode: the dependencies compiled by the real Debian base's own Python, in a
sandbox, unprivileged, reproducibly; and the layer keeping exactly those pycs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from ocibuild.events import Progress, Step, Warned
from ocibuild.oci.descriptor import Platform
from ocibuild.oci.layer import LayerContents
from ocibuild.packaging import bytecode
from ocibuild.rootfs.pyenv import TargetPython
from ocibuild.rootfs.sandbox import Method
from ocibuild.transports.open import open_base

SITE_IN_IMAGE = "opt/ocibuild/site-packages"
TARGET = TargetPython((3, 11), 2, "/usr/bin/python3.11", "glibc", (2, 36), "amd64")


def site_packages(root: Path) -> Path:
    site = root / "site-packages"
    (site / "pkg" / "tests").mkdir(parents=True)
    (site / "pkg" / "__init__.py").write_text("from .core import VALUE\n")
    (site / "pkg" / "core.py").write_text("VALUE = {'a', 'b', 'c'}  # a frozenset constant: hash order\n")
    (site / "pkg" / "tests" / "test_core.py").write_text("def test(): pass\n")
    (site / "pkg" / "py2only.py").write_text("print 'hello'\n")
    (site / "single.py").write_text("X = 1\n")
    return site


def pycs(site: Path) -> dict[str, bytes]:
    return {str(p.relative_to(site)): p.read_bytes() for p in sorted(site.rglob("*.pyc"))}


@pytest.fixture(scope="module")
def base(base_ref):
    return open_base(base_ref, Platform.parse("linux/amd64"))


@pytest.mark.slow
def test_the_base_python_compiles_unchecked_hash_pycs_reproducibly(base, tmp_path):
    method = bytecode.plan(base, True)
    if isinstance(method, str):
        pytest.skip(f"this machine cannot run the base's Python: {method}")
    results = []
    for run in ("one", "two"):
        site = site_packages(tmp_path / run)
        events: list = []
        before = set(Path(tempfile.gettempdir()).glob("ocibuild-bytecode-*"))
        bytecode.compile_bytecode(base, TARGET, method, site, SITE_IN_IMAGE, Progress(events.append))
        assert set(Path(tempfile.gettempdir()).glob("ocibuild-bytecode-*")) <= before
        results.append(pycs(site))
        (step,) = [e.message for e in events if isinstance(e, Step)]
        assert (
            step.startswith("bytecode: compiled 3 modules for CPython 3.11.2")
            and "1 failed to compile" in step
        )
        assert not [e for e in events if isinstance(e, Warned)]
        if os.geteuid() == 0 and not method.userns:  # the base's Python never ran as the host's root
            assert (
                site / "pkg" / "__pycache__" / "core.cpython-311.pyc"
            ).stat().st_uid == bytecode.COMPILER_UID
    assert results[0] == results[1]
    assert sorted(results[0]) == [
        "__pycache__/single.cpython-311.pyc",
        "pkg/__pycache__/__init__.cpython-311.pyc",
        "pkg/__pycache__/core.cpython-311.pyc",
    ]  # nothing for tests/, nothing for the module Python 3 cannot compile
    header = results[0]["pkg/__pycache__/core.cpython-311.pyc"][:8]
    assert header[:4] == (3495).to_bytes(2, "little") + b"\r\n"  # CPython 3.11's magic number
    assert int.from_bytes(header[4:8], "little") == 0b01  # hash-based, source never checked


def test_no_bytecode_is_a_plan_of_its_own(base_ref):
    base = open_base(base_ref, Platform.parse("linux/amd64"))
    assert bytecode.plan(base, False) == "--no-bytecode"
    assert isinstance(bytecode.plan(base, True), (Method, str))


def test_a_layer_keeps_pycache_only_when_asked(tmp_path):
    site = site_packages(tmp_path)
    (site / "pkg" / "__pycache__").mkdir()
    (site / "pkg" / "__pycache__" / "core.cpython-311.pyc").write_bytes(b"pyc")
    (site / "pkg" / "stray.pyc").write_bytes(b"sourceless, from a wheel")
    for keep in (False, True):
        contents = LayerContents()
        contents.add_tree(site, SITE_IN_IMAGE, bytecode=keep)
        names = {e.path for e in contents.entries()}
        assert (f"{SITE_IN_IMAGE}/pkg/__pycache__/core.cpython-311.pyc" in names) is keep
        assert f"{SITE_IN_IMAGE}/pkg/stray.pyc" not in names
