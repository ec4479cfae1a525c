"""Tests for ocibuild.rootfs.pyenv: target detection from synthesized (and host-real) layers, and wheel installs."""

from __future__ import annotations

import io
import os
import re
import socket
import struct
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from ocibuild.errors import BaseImageError, DependencyError, InputError
from ocibuild.packaging.wheels import install_dependencies
from ocibuild.rootfs.pyenv import TargetPython, detect_target_python

# The banner of Debian bookworm's real libc.so.6 (`strings /lib/x86_64-linux-gnu/libc.so.6`), with its neighbours.
GLIBC_BANNER = (
    b"\x00GNU C Library (Debian GLIBC 2.36-9+deb12u14) stable release version 2.36.\n"
    b"Copyright (C) 2022 Free Software Foundation, Inc.\n"
    b"This is free software; see the source for copying conditions.\n\x00GLIBC_2.2.5\x00GLIBC_2.36\x00"
)
# What a real musl 1.2.3 libc.so holds (Debian's musl package, `strings` of /lib/x86_64-linux-musl/libc.so).
MUSL_LOADER = (
    b"\x00musl libc (x86_64)\nVersion %s\nDynamic Program Loader\nUsage: %s [options] [--] pathname%s\n\x00"
    b"nan\x00\x00\x01\x02\x04\x07\x03\x06\x05\x00/proc/self/fd/\x001.2.4\x00Unsupported\x00"
)
GLIBC_LOADER = "/lib64/ld-linux-x86-64.so.2"
MUSL_INTERP = "/lib/ld-musl-x86_64.so.1"


def elf(machine: int = 62, interp: str | None = GLIBC_LOADER, body: bytes = b"", *, bits: int = 64) -> bytes:
    """A minimal little-endian ELF executable: header, one PT_INTERP program header, the interpreter, ``body``."""
    interp_bytes = interp.encode() + b"\0" if interp else b""
    if bits == 64:
        ehsize, phentsize = 64, 56
        header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
        header += struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, 0, ehsize, 0, 0, ehsize, phentsize, 1, 0, 0, 0)
        offset = ehsize + phentsize
        phdr = struct.pack("<IIQQQQQQ", 3, 4, offset, offset, offset, len(interp_bytes), len(interp_bytes), 1)
    else:
        ehsize, phentsize = 52, 32
        header = b"\x7fELF" + bytes([1, 1, 1]) + bytes(9)
        header += struct.pack("<HHIIIIIHHHHHH", 2, machine, 1, 0, ehsize, 0, 0, ehsize, phentsize, 1, 0, 0, 0)
        offset = ehsize + phentsize
        phdr = struct.pack("<IIIIIIII", 3, offset, offset, offset, len(interp_bytes), len(interp_bytes), 4, 1)
    if not interp:
        phdr = struct.pack("<I", 1) + phdr[4:]  # PT_LOAD: a statically linked binary
    return header + phdr + interp_bytes + body


class Layer:
    """An uncompressed layer tar built in memory."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._tar = tarfile.open(fileobj=self._buf, mode="w", format=tarfile.PAX_FORMAT)

    def dir(self, name: str) -> Layer:
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        self._tar.addfile(info)
        return self

    def file(self, name: str, data: bytes = b"", mode: int = 0o644) -> Layer:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = mode
        self._tar.addfile(info, io.BytesIO(data))
        return self

    def symlink(self, name: str, target: str) -> Layer:
        info = tarfile.TarInfo(name)
        info.type = tarfile.SYMTYPE
        info.linkname = target
        self._tar.addfile(info)
        return self

    def hardlink(self, name: str, target: str) -> Layer:
        info = tarfile.TarInfo(name)
        info.type = tarfile.LNKTYPE
        info.linkname = target
        self._tar.addfile(info)
        return self

    def whiteout(self, name: str) -> Layer:
        head, _, base = name.rpartition("/")
        return self.file(f"{head}/.wh.{base}" if head else f".wh.{base}")

    def opaque(self, directory: str) -> Layer:
        return self.file(f"{directory}/.wh..wh..opq")

    def opener(self) -> Callable[[], io.RawIOBase]:
        self._tar.close()
        data = self._buf.getvalue()
        return lambda: Unseekable(data)


class Unseekable(io.RawIOBase):
    """A stream that can only be read front to back, like a decompressing registry download."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, b) -> int:  # type: ignore[override]
        n = min(len(b), len(self._data) - self._pos)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def bookworm() -> Layer:
    """The shape of `mmdebstrap --variant=essential --include=python3 bookworm` (usrmerge, Python 3.11.2)."""
    return (
        Layer()
        .dir("./")
        .symlink("./bin", "usr/bin")
        .symlink("./lib", "usr/lib")
        .dir("./lib64/")
        .symlink("./lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
        .dir("./usr/")
        .dir("./usr/bin/")
        .symlink("./usr/bin/python3", "python3.11")
        .file("./usr/bin/python3.11", elf(body=b"\x00pymalloc_debug\x003.11.2\x00strict\x00"), 0o755)
        .dir("./usr/lib/")
        .dir("./usr/lib/python3.11/")
        .file("./usr/lib/python3.11/os.py", b"# os\n")
        .dir("./usr/lib/x86_64-linux-gnu/")
        .file("./usr/lib/x86_64-linux-gnu/libc.so.6", b"\x7fELF..." + GLIBC_BANNER, 0o755)
        .file("./usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", b"\x7fELF...", 0o755)
    )


def python_slim() -> Layer:
    """What python:3.11-slim adds on top of Debian: its own build under /usr/local, libpython beside it."""
    return (
        Layer()
        .dir("usr/local/bin")
        .file("usr/local/bin/python3.11", elf(body=b"\x00Py_Main\x00"), 0o755)
        .symlink("usr/local/bin/python3", "python3.11")
        .symlink("usr/local/bin/python", "python3")
        .file("usr/local/lib/libpython3.11.so.1.0", b"\x7fELF\x00/usr/local\x003.11.9\x00main\x00")
        .file("usr/local/lib/python3.11/os.py", b"# os\n")
    )


def alpine(with_apk_db: bool = True) -> Layer:
    layer = (
        Layer()
        .file("lib/ld-musl-x86_64.so.1", b"\x7fELF" + MUSL_LOADER, 0o755)
        .symlink("lib/libc.musl-x86_64.so.1", "ld-musl-x86_64.so.1")
        .symlink("usr/bin/python3", "python3.11")
        .file("usr/bin/python3.11", elf(interp=MUSL_INTERP), 0o755)
        .file("usr/lib/libpython3.11.so.1.0", b"\x003.11.8\x00")
        .file("usr/lib/python3.11/os.py", b"# os\n")
    )
    if with_apk_db:
        layer.file(
            "lib/apk/db/installed",
            b"C:Q1abc=\nP:busybox\nV:1.36.1-r5\n\nC:Q1def=\nP:musl\nV:1.2.4-r2\nA:x86_64\n",
        )
    return layer


def detect(*layers: Layer, architecture: str = "amd64", variant: str | None = None) -> TargetPython:
    return detect_target_python(
        [layer.opener() for layer in layers], architecture, variant, what="base image T"
    )


# ---- detection ------------------------------------------------------------------------------------------------


def test_debian_bookworm():
    target = detect(bookworm())
    assert target == TargetPython(
        version=(3, 11),
        patch=2,
        executable="/usr/bin/python3",
        libc="glibc",
        libc_version=(2, 36),
        architecture="amd64",
        variant=None,
    )
    assert target.python_version == "3.11.2"
    assert target.describe() == "CPython 3.11.2, glibc 2.36, linux/amd64"


def test_python_slim_prefers_usr_local_and_reads_patch_from_libpython():
    target = detect(bookworm(), python_slim())
    assert target.executable == "/usr/local/bin/python3"
    assert target.version == (3, 11)
    assert target.patch == 9
    assert (target.libc, target.libc_version) == ("glibc", (2, 36))


def test_usr_local_wins_even_with_a_different_minor():
    layer = (
        Layer()
        .file("usr/local/bin/python3.12", elf(), 0o755)
        .symlink("usr/local/bin/python3", "python3.12")
        .file("usr/local/lib/python3.12/os.py")
    )
    target = detect(bookworm(), layer)
    assert (target.executable, target.version, target.patch) == ("/usr/local/bin/python3", (3, 12), None)


def test_alpine_musl_from_apk_database():
    target = detect(alpine())
    assert (target.libc, target.libc_version) == ("musl", (1, 2))
    assert (target.executable, target.version, target.patch) == ("/usr/bin/python3", (3, 11), 8)
    assert target.platform_tags() == ["musllinux_1_2_x86_64", "musllinux_1_1_x86_64", "musllinux_1_0_x86_64"]
    assert target.uv_platform() == "x86_64-unknown-linux-musl"


def test_alpine_musl_from_loader_strings():
    target = detect(alpine(with_apk_db=False))
    assert (target.libc, target.libc_version) == ("musl", (1, 2))


MUSL_LIBC = [os.environ.get("OCIBUILD_TEST_MUSL_LIBC", ""), "/lib/x86_64-linux-musl/libc.so"]


@pytest.mark.skipif(
    not any(p and os.path.isfile(p) for p in MUSL_LIBC), reason="no real musl libc.so on this host"
)
def test_real_musl_loader_from_debian_musl_package():
    data = Path(next(p for p in MUSL_LIBC if p and os.path.isfile(p))).read_bytes()
    layer = (
        Layer()
        .file("lib/x86_64-linux-musl/libc.so", data, 0o755)
        .symlink("lib/ld-musl-x86_64.so.1", "x86_64-linux-musl/libc.so")
        .file("usr/bin/python3", elf(interp=MUSL_INTERP), 0o755)
        .file("usr/lib/python3.11/os.py")
    )
    target = detect(layer)
    assert target.libc == "musl"
    assert target.libc_version[0] == 1 and target.libc_version[1] >= 1


def test_whiteout_of_python_in_a_later_layer():
    remove = Layer().whiteout("usr/bin/python3").whiteout("usr/bin/python3.11")
    with pytest.raises(BaseImageError) as e:
        detect(bookworm(), remove)
    assert str(e.value) == (
        "base image T has no Python 3 interpreter (looked for /usr/bin/python3, /usr/local/bin/python3); "
        "use a base with Python, e.g. python:3.11-slim"
    )


def test_whiteout_of_a_whole_directory():
    with pytest.raises(BaseImageError, match="no Python 3 interpreter"):
        detect(bookworm(), Layer().whiteout("usr/bin"))


def test_whiteout_hides_lower_layers_only():
    # The same layer that whites out python3.11 also brings a new one: the new one stays.
    layer = (
        Layer().file("usr/bin/python3.11", elf(body=b"\x003.11.4\x00"), 0o755).whiteout("usr/bin/python3.11")
    )
    assert detect(bookworm(), layer).patch == 4


def test_opaque_directory_hides_the_standard_library():
    layer = Layer().opaque("usr/lib/python3.11").file("usr/lib/python3.11/sitecustomize.py")
    with pytest.raises(BaseImageError) as e:
        detect(bookworm(), layer)
    assert "has /usr/bin/python3 but not its standard library (/usr/lib/python3.11/os.py)" in str(e.value)


def test_opaque_directory_keeps_its_own_layers_entries():
    layer = Layer().file("usr/lib/python3.11/os.py", b"# new os\n").opaque("usr/lib/python3.11")
    assert detect(bookworm(), layer).version == (3, 11)


def test_files_written_through_usrmerge_symlinks_land_under_usr():
    # A later layer that names /lib/... and /bin/... (not /usr/...) replaces the files behind the symlinks.
    newer = (
        Layer()
        .file("lib/x86_64-linux-gnu/libc.so.6", GLIBC_BANNER.replace(b"2.36", b"2.37"))
        .file("bin/python3.11", elf(body=b"\x003.11.5\x00"), 0o755)
    )
    target = detect(bookworm(), newer)
    assert (target.libc_version, target.patch) == ((2, 37), 5)


def test_hardlinked_interpreter_and_libc():
    layer = (
        Layer()
        .file("usr/bin/python3.11", elf(body=b"\x003.11.6\x00"), 0o755)
        .hardlink("usr/bin/python3", "usr/bin/python3.11")
        .file("usr/lib/python3.11/os.py")
        .file("usr/lib64/libc-2.28.so", b"\x00nothing useful\x00")
        .hardlink("lib64/libc.so.6", "usr/lib64/libc-2.28.so")
        .hardlink("lib64/ld-linux-x86-64.so.2", "usr/lib64/libc-2.28.so")
    )
    target = detect(layer)
    assert (target.executable, target.patch, target.libc_version) == ("/usr/bin/python3", 6, (2, 28))


def test_hostile_names_are_clamped_to_the_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hostile = (
        Layer()
        .file("../../etc/x", b"escape")
        .file("/usr/local/../../../etc/passwd", b"root::0:0")
        .file("../../../usr/local/bin/python3.11", elf(body=b"\x003.11.3\x00"), 0o755)
        .symlink("/usr/local/bin/python3", "../../../../../../usr/local/bin/python3.11")
        .file("//usr/local/lib/python3.11/./os.py")
        .symlink("loop/a", "b")
        .symlink("loop/b", "a")
        .file("loop/a/c")  # parent is a symlink loop: skipped
        .file("usr/local/lib/python3.11/os.py/under-a-file")  # parent is a file: skipped
        .hardlink("usr/hl", "does/not/exist")
        .hardlink("usr/hl2", "../../../../etc/shadow")
        .symlink("usr/out", "/../../../../etc")
        .file(".wh.")
        .file("..")
        .file("/")
    )
    target = detect(bookworm(), hostile)
    assert (target.executable, target.version, target.patch) == ("/usr/local/bin/python3", (3, 11), 3)
    assert list(tmp_path.iterdir()) == []  # nothing was written anywhere


def test_elf_machine_mismatch_is_refused():
    layer = Layer().file("usr/bin/python3.11", elf(machine=183), 0o755)  # an aarch64 binary
    with pytest.raises(BaseImageError, match="linux/amd64 but its /usr/bin/python3 is built for arm64"):
        detect(bookworm(), layer)


def test_32_bit_arm_image():
    layer = (
        Layer()
        .file("usr/bin/python3.11", elf(machine=40, interp="/lib/ld-linux-armhf.so.3", bits=32), 0o755)
        .symlink("usr/bin/python3", "python3.11")
        .file("usr/lib/python3.11/os.py")
        .file("usr/lib/arm-linux-gnueabihf/libc.so.6", GLIBC_BANNER)
        .symlink("lib", "usr/lib")
        .symlink("usr/lib/ld-linux-armhf.so.3", "arm-linux-gnueabihf/ld-linux-armhf.so.3")
        .file("usr/lib/arm-linux-gnueabihf/ld-linux-armhf.so.3")
    )
    target = detect(layer, architecture="arm", variant="v7")
    assert (target.libc, target.libc_version) == ("glibc", (2, 36))
    assert target.platform_tags()[0] == "manylinux_2_36_armv7l"
    assert "manylinux2014_armv7l" in target.platform_tags()
    assert target.uv_platform() is None


def test_versioned_interpreter_without_python3_name():
    layer = Layer().file("usr/bin/python3.9", elf(), 0o755).file("usr/lib/python3.9/os.py")
    layer.file("usr/lib/x86_64-linux-gnu/libc.so.6", GLIBC_BANNER)
    target = detect(layer)
    assert (target.executable, target.version) == ("/usr/bin/python3.9", (3, 9))


def test_unknown_c_library():
    layer = (
        Layer().file("usr/bin/python3.11", elf(interp=None), 0o755).symlink("usr/bin/python3", "python3.11")
    )
    layer.file("usr/lib/python3.11/os.py")
    with pytest.raises(BaseImageError, match="cannot tell which C library /usr/bin/python3 uses"):
        detect(layer)


def test_foreign_loader_is_named():
    layer = Layer().file("usr/bin/python3", elf(interp="/lib/ld-uClibc.so.0"), 0o755)
    layer.file("usr/lib/python3.11/os.py")
    with pytest.raises(BaseImageError, match="loader /lib/ld-uClibc.so.0, which is neither glibc nor musl"):
        detect(layer)


def test_unsupported_architecture():
    with pytest.raises(BaseImageError, match="linux/mips64le, for which there are no Python wheels"):
        detect(bookworm(), architecture="mips64le")


def test_corrupt_layer():
    def opener():
        return io.BytesIO(b"this is not a tar archive at all" * 40)

    with pytest.raises(BaseImageError, match="layer 1 is not a readable tar"):
        detect_target_python([opener], "amd64")


def test_empty_layers_are_fine():
    assert detect(Layer(), bookworm(), Layer()).version == (3, 11)
    assert detect_target_python([lambda: io.BytesIO(b""), bookworm().opener()], "amd64").version == (3, 11)


# ---- the host's own files: real binaries, real banners -----------------------------------------------------------

HOST_LIBC = Path("/lib/x86_64-linux-gnu/libc.so.6")
HOST_LOADER = Path("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
HOST_PYTHON = Path("/usr/bin/python3.11")


@pytest.mark.skipif(
    not (HOST_LIBC.is_file() and HOST_LOADER.is_file() and HOST_PYTHON.is_file()),
    reason="needs a Debian-like x86_64 host with /usr/bin/python3.11",
)
def test_host_debian_files():
    layer = (
        Layer()
        .symlink("lib", "usr/lib")
        .symlink("lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
        .file("usr/lib/x86_64-linux-gnu/libc.so.6", HOST_LIBC.read_bytes())
        .file("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", HOST_LOADER.read_bytes())
        .file("usr/bin/python3.11", HOST_PYTHON.read_bytes())
        .symlink("usr/bin/python3", "python3.11")
        .file("usr/lib/python3.11/os.py", Path("/usr/lib/python3.11/os.py").read_bytes())
    )
    target = detect(layer)
    glibc = os.confstr("CS_GNU_LIBC_VERSION")  # e.g. "glibc 2.36"
    assert f"{target.libc} {target.libc_version[0]}.{target.libc_version[1]}" == glibc
    version = subprocess.run(
        [HOST_PYTHON, "-c", "import sys; print(*sys.version_info[:3])"], capture_output=True
    )
    major, minor, patch = map(int, version.stdout.split())
    assert (target.version, target.patch) == ((major, minor), patch)


# ---- platforms --------------------------------------------------------------------------------------------------


def target_for(
    libc="glibc", libc_version=(2, 36), architecture="amd64", variant=None, patch=2
) -> TargetPython:
    return TargetPython((3, 11), patch, "/usr/bin/python3", libc, libc_version, architecture, variant)


def test_manylinux_tags_for_glibc_2_36_amd64():
    tags = target_for().platform_tags()
    assert tags[:3] == ["manylinux_2_36_x86_64", "manylinux_2_35_x86_64", "manylinux_2_34_x86_64"]
    assert tags[tags.index("manylinux_2_17_x86_64") + 1] == "manylinux2014_x86_64"
    assert tags[tags.index("manylinux_2_12_x86_64") + 1] == "manylinux2010_x86_64"
    assert tags[-2:] == ["manylinux_2_5_x86_64", "manylinux1_x86_64"]
    assert len(tags) == 32 + 3


def test_manylinux_tags_for_arm64_start_at_2_17():
    tags = target_for(architecture="arm64", libc_version=(2, 31)).platform_tags()
    assert tags[0] == "manylinux_2_31_aarch64"
    assert tags[-2:] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]


@pytest.mark.parametrize(
    ("libc", "version", "arch", "expected"),
    [
        ("glibc", (2, 36), "amd64", "x86_64-manylinux_2_36"),
        ("glibc", (2, 28), "arm64", "aarch64-manylinux_2_28"),
        ("glibc", (2, 17), "amd64", "x86_64-manylinux_2_17"),
        ("glibc", (2, 27), "amd64", None),  # uv's nearest older name (2_17) would hide manylinux_2_27 wheels
        ("glibc", (2, 12), "amd64", None),
        ("glibc", (2, 41), "amd64", "x86_64-manylinux_2_40"),
        ("musl", (1, 2), "arm64", "aarch64-unknown-linux-musl"),
        ("musl", (1, 1), "amd64", None),
        ("glibc", (2, 36), "ppc64le", None),
    ],
)
def test_uv_platform(libc, version, arch, expected):
    assert target_for(libc=libc, libc_version=version, architecture=arch).uv_platform() == expected


# ---- installing wheels: checks that need no network ------------------------------------------------------------


def test_missing_requirements_file(tmp_path):
    with pytest.raises(InputError, match=r"requirements file .*nothere.txt cannot be read \(No such file"):
        install_dependencies(target_for(), tmp_path / "site", requirements=[tmp_path / "nothere.txt"])
    assert not (tmp_path / "site").exists()


def test_options_are_not_package_specs(tmp_path):
    with pytest.raises(InputError, match="'--index-url=http://x' is not a package spec"):
        install_dependencies(target_for(), tmp_path / "site", packages=["six", "--index-url=http://x"])


def test_nothing_to_install_is_a_no_op(tmp_path):
    install_dependencies(target_for(), tmp_path / "site")
    assert not (tmp_path / "site").exists()


def test_reproducibility_fixups_without_an_installer(tmp_path, monkeypatch):
    """bin/ shebangs point at the image's Python, direct_url.json goes, RECORD follows (pip-style rows)."""
    from ocibuild.packaging import wheels as pyenv

    def fake_run(cmd, log, progress, env=None, redact=str):
        dest = Path(cmd[cmd.index("--target") + 1])
        (dest / "bin").mkdir()
        (dest / "bin" / "tool").write_text(f"#!{sys.executable}\nimport tool\n")
        (dest / "bin" / "tool").chmod(0o755)
        info = dest / "tool-1.0.dist-info"
        info.mkdir()
        (info / "direct_url.json").write_text('{"url": "file:///home/me/tool"}')
        (info / "RECORD").write_text(
            "tool.py,sha256=abc,3\n../../bin/tool,sha256=old,40\ntool-1.0.dist-info/direct_url.json,,\n"
            "tool-1.0.dist-info/RECORD,,\n"
        )
        return pyenv._Run(returncode=0)

    monkeypatch.setattr(pyenv, "_run", fake_run)
    dest = tmp_path / "site"
    install_dependencies(target_for(), dest, packages=["tool"], installer="pip")
    script = dest / "bin" / "tool"
    assert script.read_bytes() == b"#!/usr/bin/python3\nimport tool\n"
    assert os.access(script, os.X_OK)
    assert not (dest / "tool-1.0.dist-info" / "direct_url.json").exists()
    record = (dest / "tool-1.0.dist-info" / "RECORD").read_text().splitlines()
    assert record == [
        "tool.py,sha256=abc,3",
        "bin/tool,sha256=" + pyenv._record_hash(script.read_bytes())[7:] + f",{len(script.read_bytes())}",
        "tool-1.0.dist-info/RECORD,,",
    ]


@pytest.mark.parametrize(
    ("output", "error", "message"),
    [
        (
            "error: No solution found when resolving dependencies\n  cause: Because all versions of docopt have "
            "no usable wheels and you require docopt, we can conclude that your requirements are unsatisfiable.\n",
            DependencyError,
            "no wheel of 'docopt' fits the base image (cp311 manylinux_2_36_x86_64): pin a version of docopt",
        ),
        (
            "ERROR: Could not find a version that satisfies the requirement docopt (from versions: none)\n"
            "ERROR: No matching distribution found for docopt\n",
            DependencyError,
            "no wheel of 'docopt' fits the base image",
        ),
        (
            "  cause: Because pywin32<=302 has no wheels with a matching Python ABI tag (e.g., `cp311`) and ...\n"
            "hint: Wheels are available for `pywin32` (v312) on the following platforms: `win32`\n",
            DependencyError,
            "no wheel of 'pywin32' fits",
        ),
        (
            "  cause: Because there are no versions of foo and you require foo, we can conclude that ...\n"
            "hint: `foo` was filtered by `exclude-newer` to only include packages uploaded before 2020-01-01\n",
            DependencyError,
            "--exclude-newer left no version of 'foo': none was uploaded before that time, or its index",
        ),
        (
            "  cause: Because nonexistent-zzz was not found in the package registry and you require it\n",
            DependencyError,
            "package 'nonexistent-zzz' is not on the package index; check its name",
        ),
        (
            "ERROR: Could not open requirements file: [Errno 2] No such file or directory: '/r/x.txt'\n",
            InputError,
            "a requirements file cannot be read: [Errno 2] No such file or directory: '/r/x.txt'",
        ),
        (
            "error: Failed to fetch: `https://pypi.org/simple/six/`\n  Caused by: dns error\n",
            DependencyError,
            "cannot reach the package index",
        ),
        (
            "  cause: Because only numpy<=2.5.5 is available and you require numpy>=99, we can conclude that...\n",
            DependencyError,
            "failed: Because only numpy<=2.5.5 is available and you require numpy>=99",
        ),
    ],
)
def test_installer_errors_become_one_line(output, error, message, tmp_path):
    from ocibuild.packaging import wheels as pyenv

    run = pyenv._Run(returncode=1)
    run.tail.extend(output.splitlines())
    with pytest.raises(error) as e:
        pyenv._raise_for(run, "uv", target_for(), tmp_path / "x.log")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


# ---- installing wheels from PyPI (network) ----------------------------------------------------------------------


def _pypi_reachable() -> bool:
    if os.environ.get("OCIBUILD_OFFLINE"):
        return False
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        return False
    return True


needs_pypi = pytest.mark.skipif(
    not _pypi_reachable(), reason="PyPI is not reachable (or OCIBUILD_OFFLINE is set)"
)


def _wheel_tags(dest: Path, name: str) -> list[str]:
    (info,) = dest.glob(f"{name}-*.dist-info")
    return re.findall(r"^Tag: (\S+)$", (info / "WHEEL").read_text(), re.M)


def _check_clean(dest: Path, executable: str) -> None:
    """No bytecode beyond what wheels ship, no host interpreter path left in scripts or metadata."""
    shipped = set()
    for record in dest.glob("*.dist-info/RECORD"):
        shipped |= {row.split(",")[0] for row in record.read_text().splitlines()}
    compiled = {str(p.relative_to(dest)) for p in dest.rglob("*.pyc")}
    assert compiled <= shipped
    for script in (dest / "bin").iterdir():
        assert script.read_bytes().startswith(f"#!{executable}\n".encode())
    host = sys.prefix.encode()
    for path in [*dest.glob("*.dist-info/*"), *(dest / "bin").iterdir()]:
        if path.is_file():
            assert host not in path.read_bytes(), path


@needs_pypi
@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_install_numpy_for_debian(tmp_path, installer):
    if installer == "uv":
        from ocibuild.packaging.wheels import _find_uv

        if _find_uv() is None:
            pytest.skip("uv is not installed")
    target = target_for()
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("numpy\n")
    lines: list[str] = []
    dest = tmp_path / "site"
    install_dependencies(
        target,
        dest,
        requirements=[requirements],
        packages=["six"],
        progress=lines.append,
        installer=installer,
    )
    assert lines[0].startswith(
        f"installing wheels for CPython 3.11.2, glibc 2.36, linux/amd64 with {installer}"
    )
    assert (dest / "six.py").is_file()
    tags = _wheel_tags(dest, "numpy")
    assert tags and all(t.startswith("cp311-cp311-") for t in tags)
    levels = [tuple(map(int, m)) for m in re.findall(r"manylinux_(\d+)_(\d+)_x86_64", " ".join(tags))]
    assert levels and min(levels) <= (2, 36)
    _check_clean(dest, "/usr/bin/python3")


@needs_pypi
def test_install_for_musl_gets_musllinux_wheels(tmp_path):
    dest = tmp_path / "site"
    install_dependencies(target_for(libc="musl", libc_version=(1, 2)), dest, packages=["markupsafe==3.0.2"])
    assert all("musllinux_1_" in t for t in _wheel_tags(dest, "MarkupSafe"))


@needs_pypi
@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_sdist_only_pure_package_is_built_from_source(tmp_path, installer):
    # docopt 0.6.2 is published only as an sdist (`pip download --no-deps --only-binary=:all: docopt` finds
    # nothing); it is pure Python, so it is built on the host into a py3-none-any wheel and installed.
    lines: list[str] = []
    dest = tmp_path / "site"
    install_dependencies(
        target_for(), dest, packages=["docopt==0.6.2"], installer=installer, progress=lines.append
    )
    assert any(
        line.startswith("built docopt 0.6.2 from source (pure Python: docopt-0.6.2-py") for line in lines
    )
    assert "py3-none-any" in _wheel_tags(dest, "docopt") and all(
        t.endswith("-none-any") for t in _wheel_tags(dest, "docopt")
    )
    assert (dest / "docopt.py").is_file()


@needs_pypi
def test_missing_nested_requirements_file(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("-r other.txt\n")
    with pytest.raises(InputError, match="a requirements file cannot be read: .*other.txt"):
        install_dependencies(target_for(), tmp_path / "site", requirements=[requirements])
