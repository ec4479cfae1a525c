"""Synthesized base images for the checks' tests: a Debian-shaped root (usrmerge symlinks, multiarch library
folder, ld.so.conf with an include) whose libraries are ELF files defining the symbol versions a real glibc and
libstdc++ define, as layers that ``rootfs.files`` reads as it reads a real image's."""

from __future__ import annotations

from ocibuild.rootfs.files import BaseFiles, read_base_files
from ocibuild.rootfs.pyenv import TargetPython
from tests.checks.elfgen import elf
from tests.packaging.test_pyenv import Layer

LIBDIR = "./usr/lib/x86_64-linux-gnu"
TARGET = TargetPython(
    version=(3, 11),
    patch=2,
    executable="/usr/bin/python3",
    libc="glibc",
    libc_version=(2, 36),
    architecture="amd64",
)
GLIBC = tuple(f"GLIBC_2.{m}" for m in range(2, 37)) + ("GLIBC_2.2.5",)
GLIBCXX = tuple(f"GLIBCXX_3.4.{m}" for m in range(1, 31)) + ("GLIBCXX_3.4", "CXXABI_1.3", "CXXABI_1.3.9")
INTERPRETER_BODY = b"\x00PyInit_math\x00PyInit__socket\x00PyInit_zlib\x003.11.2\x00"


def debian(*, stdcxx: bool = True, glibcxx: tuple[str, ...] = GLIBCXX) -> Layer:
    layer = (
        Layer()
        .dir("./")
        .symlink("./lib", "usr/lib")
        .symlink("./lib64", "usr/lib64")
        .dir("./usr/lib64/")
        .symlink("./usr/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
        .dir("./etc/")
        .file("./etc/ld.so.conf", b"include /etc/ld.so.conf.d/*.conf\n\n")
        .dir("./etc/ld.so.conf.d/")
        .file("./etc/ld.so.conf.d/libc.conf", b"# libc default configuration\n/usr/local/lib\n")
        .file(
            "./etc/ld.so.conf.d/x86_64-linux-gnu.conf", b"/usr/local/lib/x86_64-linux-gnu\n/opt/vendor/lib\n"
        )
        .dir("./usr/bin/")
        .symlink("./usr/bin/python3", "python3.11")
        .file(
            "./usr/bin/python3.11",
            elf(interpreter="/lib64/ld-linux-x86-64.so.2", executable=True) + INTERPRETER_BODY,
        )
        .dir("./usr/lib/python3.11/")
        .file("./usr/lib/python3.11/os.py", b"# os\n")
        .file("./usr/lib/python3.11/contextlib.py", b"")
        .file("./usr/lib/python3.11/typing.py", b"")
        .file("./usr/lib/python3.11/json/__init__.py", b"")
        .file("./usr/lib/python3.11/importlib/__init__.py", b"")
        .file("./usr/lib/python3.11/importlib/metadata/__init__.py", b"")
        .file("./usr/lib/python3.11/tomllib/__init__.py", b"")
        .file("./usr/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so", b"\x7fELF")
        .dir("./usr/lib/python3/dist-packages/")
        .file("./usr/lib/python3/dist-packages/apt/__init__.py", b"")
        .file("./usr/lib/python3/dist-packages/google/protobuf/__init__.py", b"")
        .dir(f"{LIBDIR}/")
        .file(f"{LIBDIR}/libc.so.6", elf(soname="libc.so.6", version_defs=GLIBC))
        .file(f"{LIBDIR}/libm.so.6", elf(soname="libm.so.6", needed=("libc.so.6",), version_defs=GLIBC))
        .file(f"{LIBDIR}/ld-linux-x86-64.so.2", elf(soname="ld-linux-x86-64.so.2", version_defs=GLIBC))
        .file(f"{LIBDIR}/libgcc_s.so.1", elf(soname="libgcc_s.so.1", version_defs=("GCC_3.0", "GCC_4.2.0")))
        .file(f"{LIBDIR}/libz.so.1.2.13", elf(soname="libz.so.1", version_defs=("ZLIB_1.2.9",)))
        .symlink(f"{LIBDIR}/libz.so.1", "libz.so.1.2.13")
    )
    if stdcxx:
        layer.file(f"{LIBDIR}/libstdc++.so.6.0.30", elf(soname="libstdc++.so.6", version_defs=glibcxx))
        layer.symlink(f"{LIBDIR}/libstdc++.so.6", "libstdc++.so.6.0.30")
    return layer


def files(*layers: Layer, env: tuple[str, ...] = ()) -> BaseFiles:
    return read_base_files([layer.opener() for layer in layers], TARGET, env)
