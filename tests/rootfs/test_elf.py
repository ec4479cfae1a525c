"""Tests for ocibuild.rootfs.elf: the host's own libraries and a real manylinux wheel's extension module (checked
against binutils' readelf where it is installed), and synthesized files for what real ones rarely show."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ocibuild.rootfs.elf import parse_elf, read_elf
from tests.checks.elfgen import elf


def _host_library(name: str) -> Path:
    for directory in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64"):
        if (Path(directory) / name).exists():
            return Path(directory) / name
    pytest.skip(f"no {name} on this host")


def _numpy_core() -> Path:
    spec = importlib.util.find_spec("numpy")
    if spec is None or spec.origin is None:
        pytest.skip("numpy is not installed")
    found = sorted(Path(spec.origin).parent.glob("_core/_multiarray_umath.cpython-*.so"))
    if not found:
        pytest.skip("numpy has no _core/_multiarray_umath extension module")
    return found[0]


def _readelf(path: Path) -> dict:
    """What binutils says of the same file, or skip."""
    if shutil.which("readelf") is None:
        pytest.skip("binutils' readelf is not installed")
    dynamic = subprocess.run(["readelf", "-dW", path], capture_output=True, text=True, check=True).stdout
    versions = subprocess.run(["readelf", "-VW", path], capture_output=True, text=True, check=True).stdout
    needs: dict[str, list[str]] = {}
    defs: list[str] = []
    section = None
    current: list[str] = []
    for line in versions.splitlines():
        if "Version needs section" in line:
            section = "needs"
        elif "Version definition section" in line:
            section = "defs"
        elif "Version symbols section" in line:
            section = None
        elif section == "needs" and (m := re.search(r"File: (\S+)", line)):
            current = needs.setdefault(m[1], [])
        elif section == "needs" and (m := re.search(r"Name: (\S+)\s+Flags: (\S+)", line)):
            if "WEAK" not in m[2].upper():
                current.append(m[1])
        elif section == "defs" and (
            m := re.search(r"Flags: (\S+)\s+Index: \d+\s+Cnt: \d+\s+Name: (\S+)", line)
        ):
            defs += [m[2]] if "BASE" not in m[1].upper() else []
    return {
        "needed": tuple(re.findall(r"\(NEEDED\)\s+Shared library: \[(.*)\]", dynamic)),
        "soname": next(iter(re.findall(r"\(SONAME\)\s+Library soname: \[(.*)\]", dynamic)), None),
        "rpath": tuple(re.findall(r"\(RPATH\)\s+Library rpath: \[(.*)\]", dynamic)),
        "version_needs": tuple((k, tuple(v)) for k, v in needs.items()),
        "version_defs": tuple(defs),
    }


@pytest.mark.parametrize("name", ["libc.so.6", "libstdc++.so.6", "libm.so.6", "libz.so.1"])
def test_host_libraries_read_as_readelf_reads_them(name):
    path = _host_library(name)
    info = read_elf(path)
    assert info is not None
    expected = _readelf(path)
    assert info.needed == expected["needed"]
    assert info.soname == expected["soname"]
    assert info.rpath == tuple(p for s in expected["rpath"] for p in s.split(":"))
    assert info.version_needs == expected["version_needs"]
    assert info.version_defs == expected["version_defs"]
    assert info.machine == "amd64" and info.bits == 64 and info.little_endian


def test_host_glibc_defines_its_own_version():
    """The newest GLIBC_2.x that libc.so.6 defines is the version the loader reports (``ld.so --version``)."""
    info = read_elf(_host_library("libc.so.6"))
    assert info is not None
    ours = max(
        tuple(int(x) for x in v[6:].split("."))
        for v in info.version_defs
        if re.fullmatch(r"GLIBC_[0-9.]+", v)
    )
    loader = _host_library("ld-linux-x86-64.so.2")
    banner = subprocess.run([loader, "--version"], capture_output=True, text=True, check=False).stdout
    m = re.search(r"version (\d+)\.(\d+)", banner)
    assert m, banner
    assert ours[:2] == (int(m[1]), int(m[2]))


def test_a_real_manylinux_extension_module():
    """numpy's core module: an RPATH to the wheel's bundled ``numpy.libs``, libstdc++ from the system."""
    path = _numpy_core()
    info = read_elf(path)
    assert info is not None
    assert "libstdc++.so.6" in info.needed
    assert any("$ORIGIN" in p and p.endswith("numpy.libs") for p in info.rpath + info.runpath)
    libs = dict(info.version_needs)
    assert any(v.startswith("GLIBCXX_3.4") for v in libs["libstdc++.so.6"])
    assert all(v.startswith("GLIBC_") for v in libs["libc.so.6"])
    expected = _readelf(path)
    assert (info.needed, info.version_needs) == (expected["needed"], expected["version_needs"])


def test_a_real_executable_names_its_loader():
    info = read_elf(Path(sys.executable).resolve())
    assert info is not None and info.dynamic
    assert info.interpreter is not None and "ld-linux" in info.interpreter


def test_synthesized_shared_object(tmp_path):
    data = elf(
        needed=("libfoo.so.1", "libc.so.6"),
        soname="libbar.so.2",
        runpath="$ORIGIN/../lib:/opt/x",
        version_needs={"libc.so.6": ["GLIBC_2.2.5", "GLIBC_2.34"], "libfoo.so.1": ["FOO_1"]},
        weak_needs={"libm.so.6": ["GLIBC_2.29"]},
        version_defs=("BAR_1", "BAR_2"),
    )
    (tmp_path / "libbar.so.2").write_bytes(data)
    info = read_elf(tmp_path / "libbar.so.2")
    assert info == parse_elf(data)
    assert info is not None
    assert info.needed == ("libfoo.so.1", "libc.so.6")
    assert info.soname == "libbar.so.2"
    assert info.runpath == ("$ORIGIN/../lib", "/opt/x") and info.rpath == ()
    # Weak needs are left out: the loader only warns about them.
    assert info.version_needs == (
        ("libc.so.6", ("GLIBC_2.2.5", "GLIBC_2.34")),
        ("libfoo.so.1", ("FOO_1",)),
        ("libm.so.6", ()),
    )
    assert info.version_defs == ("BAR_1", "BAR_2")  # the file's own base name is not a version
    assert info.interpreter is None and info.type == 3


def test_synthesized_32_bit_executable():
    info = parse_elf(elf(bits=32, machine=3, needed=("libc.so.6",), rpath="/opt/x", interpreter="/lib/ld-linux.so.2",
                         executable=True, version_needs={"libc.so.6": ["GLIBC_2.0"]}))  # fmt: skip
    assert info is not None
    assert (info.bits, info.machine, info.type) == (32, "386", 2)
    assert info.interpreter == "/lib/ld-linux.so.2"
    assert info.rpath == ("/opt/x",)
    assert info.version_needs == (("libc.so.6", ("GLIBC_2.0",)),)


def test_an_aarch64_library_is_told_apart():
    info = parse_elf(elf(machine=183, needed=("libc.so.6",)))
    assert info is not None and info.machine == "arm64"
    assert info.key() != parse_elf(elf(needed=("libc.so.6",))).key()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"#!/bin/sh\necho hi\n",
        b"\x7fELF",  # a header cut short
        elf(needed=("libc.so.6",))[:100],  # the dynamic segment cut off
        b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + b"\x01\x00" + bytes(100),  # a relocatable object
    ],
)
def test_what_is_not_a_loadable_elf_file(data):
    info = parse_elf(data)
    assert info is None or info.needed == ()


def test_hostile_counts_are_bounded():
    """A file that claims tens of thousands of program headers, or billions of version records chained one after
    the other, is read in bounded time (and gives what it can or None, never an exception)."""
    import struct
    import time

    from tests.checks.elfgen import DT_VERNEEDNUM

    data = bytearray(elf(needed=("libc.so.6",), version_needs={"libc.so.6": ["GLIBC_2.2.5"]}))
    data[56:58] = (60000).to_bytes(2, "little")  # e_phnum
    started = time.monotonic()
    parse_elf(bytes(data))
    data = bytearray(elf(needed=("libc.so.6",), version_needs={"libc.so.6": ["GLIBC_2.2.5"]}))
    count = data.find(struct.pack("<qQ", DT_VERNEEDNUM, 1))
    data[count + 8 : count + 16] = struct.pack("<Q", 1 << 40)
    verneed = data.find(struct.pack("<HH", 1, 1))  # the one Verneed record: point its vn_next at itself + 16
    data[verneed + 12 : verneed + 16] = struct.pack("<I", 16)
    parse_elf(bytes(data))
    assert time.monotonic() - started < 2


def test_unreadable_file_is_none(tmp_path):
    assert read_elf(tmp_path / "missing.so") is None
