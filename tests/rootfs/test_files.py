"""Tests for ocibuild.rootfs.files: what the checks learn of a base image from its layers."""

from __future__ import annotations

import json

from ocibuild.rootfs import files as rootfs
from ocibuild.rootfs.files import BaseFiles
from tests.checks.bases import LIBDIR, debian, files
from tests.checks.elfgen import elf
from tests.packaging.test_pyenv import Layer


def test_libraries_are_found_through_symlinked_folders():
    base = files(debian())
    real = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30"
    assert base.find("/lib/x86_64-linux-gnu", "libstdc++.so.6") == real
    assert base.find("/usr/lib/x86_64-linux-gnu", "libstdc++.so.6.0.30") == real
    assert base.find("/lib64", "ld-linux-x86-64.so.2") == "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    assert base.find("/lib/x86_64-linux-gnu", "libfoo.so.1") is None
    assert "GLIBCXX_3.4.30" in base.elf[real]["defs"] and "GLIBCXX_3.4.31" not in base.elf[real]["defs"]
    assert base.elf[real]["key"] == [64, True, "amd64"]


def test_a_whiteout_layer_takes_a_library_away():
    minus = Layer().whiteout(f"{LIBDIR}/libstdc++.so.6").whiteout(f"{LIBDIR}/libstdc++.so.6.0.30")
    base = files(debian(), minus)
    assert base.find("/lib/x86_64-linux-gnu", "libstdc++.so.6") is None
    assert base.find("/lib/x86_64-linux-gnu", "libc.so.6") is not None


def test_ld_so_conf_with_includes_and_the_default_folders():
    base = files(debian())
    assert base.ld_conf_dirs == ("/usr/local/lib", "/usr/local/lib/x86_64-linux-gnu", "/opt/vendor/lib")
    assert base.default_dirs[:2] == ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu")


def test_config_env_adds_library_and_python_paths():
    extra = (
        Layer().file("./opt/app/lib/python/vendored_mod.py", b"").file("./opt/app/lib/libvendor.so.1", elf())
    )
    base = files(
        debian(),
        extra,
        env=("PATH=/usr/bin", "LD_LIBRARY_PATH=/opt/app/lib:", "PYTHONPATH=/opt/app/lib/python"),
    )
    assert base.ld_library_path == ("/opt/app/lib",)
    assert base.find("/opt/app/lib", "libvendor.so.1") == "/opt/app/lib/libvendor.so.1"
    assert base.site["vendored_mod"] == "m"


def test_python_modules_of_the_base():
    base = files(debian())
    # Files of the standard library, lib-dynload's extension modules, and modules built into the interpreter
    # (found by their PyInit_ symbols), but nothing the base does not have.
    assert {"os", "json", "_ssl", "math", "_socket", "zlib", "sys", "builtins"} <= base.stdlib
    assert "tkinter" not in base.stdlib and "numpy" not in base.stdlib
    assert base.site == {"apt": "m", "google": {"protobuf": "m"}}  # google is a namespace package


def test_a_library_too_big_to_read_is_known_by_name(monkeypatch):
    monkeypatch.setattr(rootfs, "_LIBRARY_LIMIT", 100)
    base = files(debian())
    real = base.find("/lib/x86_64-linux-gnu", "libstdc++.so.6")
    assert real is not None and real not in base.elf


def test_plugins_and_python_modules_are_not_libraries():
    extra = (
        Layer()
        .file(f"{LIBDIR}/gconv/ISO8859-1.so", elf())
        .file("./usr/lib/python3.11/lib-dynload/libx.so", elf())
    )
    base = files(debian(), extra)
    assert base.find(f"{LIBDIR[1:]}/gconv", "ISO8859-1.so") is None
    assert base.find("/usr/lib/python3.11/lib-dynload", "libx.so") is None


def test_json_round_trip():
    base = files(debian())
    again = BaseFiles.from_json(json.loads(json.dumps(base.to_json())))
    assert again == base
