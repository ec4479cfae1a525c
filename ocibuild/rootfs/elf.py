"""What the dynamic loader will ask of an ELF file: its machine, interpreter, DT_NEEDED libraries, RPATH/RUNPATH,
SONAME, and the symbol versions it needs (``.gnu.version_r``) and defines (``.gnu.version_d``).

Read the way the loader reads them: the ELF header, the program headers, the PT_DYNAMIC segment, and the few
strings and version records it points at (through the PT_LOAD mapping), never the section headers, so stripped
files read the same. A few small reads per file whatever its size (a 1 GB ``libtorch_cuda.so`` costs what a 20 kB
extension module does). Never loads or runs the file; anything malformed gives None rather than an exception.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ElfInfo", "parse_elf", "read_elf", "MACHINES"]

# ELF e_machine → OCI architecture (ppc64 big-endian is told apart by byte order).
MACHINES = {3: "386", 40: "arm", 62: "amd64", 183: "arm64", 21: "ppc64le", 22: "s390x", 243: "riscv64"}

_PT_LOAD, _PT_DYNAMIC, _PT_INTERP = 1, 2, 3
_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_STRSZ, _DT_SONAME, _DT_RPATH, _DT_RUNPATH = 0, 1, 5, 10, 14, 15, 29
_DT_VERDEF, _DT_VERDEFNUM, _DT_VERNEED, _DT_VERNEEDNUM = 0x6FFFFFFC, 0x6FFFFFFD, 0x6FFFFFFE, 0x6FFFFFFF
_VER_FLG_BASE, _VER_FLG_WEAK = 0x1, 0x2

# Bounds, far above anything real, so that a hostile file cannot make a read large or a loop long.
_MAX_PHNUM = 4096
_MAX_DYNAMIC = 1 << 20  # bytes of the dynamic segment read
_MAX_STRING = 4096
_MAX_VERSION_RECORDS = 4096


@dataclass(frozen=True, slots=True)
class ElfInfo:
    """The loader's view of one ELF file (names as written in the file)."""

    bits: int  # 32 or 64
    little_endian: bool
    machine: str | None  # OCI architecture name, None when unknown
    type: int  # 2 executable, 3 shared object or PIE
    interpreter: str | None = None  # PT_INTERP: the program loader an executable names
    soname: str | None = None
    needed: tuple[str, ...] = ()
    rpath: tuple[str, ...] = ()
    runpath: tuple[str, ...] = ()
    # (library, versions) for each library that symbol versions are needed from; weak ones left out
    version_needs: tuple[tuple[str, tuple[str, ...]], ...] = ()
    version_defs: tuple[str, ...] = ()  # the versions this file defines (its own base name left out)
    dynamic: bool = False  # has a PT_DYNAMIC segment (a statically linked executable has none)

    def key(self) -> tuple[int, bool, str | None]:
        """What must match for the loader to take this file for another's dependency."""
        return (self.bits, self.little_endian, self.machine)


Read = Callable[[int, int], bytes]  # (offset, size) → at most size bytes


def read_elf(path: str | os.PathLike[str]) -> ElfInfo | None:
    """The loader's view of the file at ``path``, or None when it is not an ELF file the loader could use."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _parse(lambda offset, size: os.pread(fd, size, offset))
    except OSError:
        return None
    finally:
        os.close(fd)


def parse_elf(data: bytes) -> ElfInfo | None:
    """The same, from a file's bytes held in memory (a library read from a layer)."""
    view = memoryview(data)
    return _parse(lambda offset, size: bytes(view[offset : offset + size]) if offset >= 0 else b"")


def _parse(read: Read) -> ElfInfo | None:
    try:
        return _Parser(read).parse()
    except (struct.error, ValueError, OverflowError):
        return None


class _Parser:
    def __init__(self, read: Read) -> None:
        self.read = read

    def parse(self) -> ElfInfo | None:
        head = self.read(0, 64)
        if len(head) < 52 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
            return None
        is64 = head[4] == 2
        end = "<" if head[5] == 1 else ">"
        self.end, self.is64 = end, is64
        e_type, machine = struct.unpack_from(end + "HH", head, 16)
        if e_type not in (2, 3):  # relocatable objects and core dumps are never loaded
            return None
        phoff, phentsize, phnum = self._program_headers_place(head)
        arch = "ppc64" if machine == 21 and end == ">" else MACHINES.get(machine)
        info = dict(bits=64 if is64 else 32, little_endian=end == "<", machine=arch, type=e_type)
        if phnum == 0 or phnum > _MAX_PHNUM or phentsize < (56 if is64 else 32):
            return ElfInfo(**info)  # type: ignore[arg-type]
        dynamic, interp = self._segments(phoff, phentsize, phnum)
        if interp:
            info["interpreter"] = interp.decode("utf-8", "replace")
        if dynamic is None:
            return ElfInfo(**info)  # type: ignore[arg-type]
        info["dynamic"] = True
        info.update(self._dynamic(*dynamic))
        return ElfInfo(**info)  # type: ignore[arg-type]

    def _program_headers_place(self, head: bytes) -> tuple[int, int, int]:
        """The program header table's offset, entry size and entry count, from the ELF header."""
        if self.is64:
            (phoff,) = struct.unpack_from(self.end + "Q", head, 32)
            phentsize, phnum = struct.unpack_from(self.end + "HH", head, 54)
        else:
            (phoff,) = struct.unpack_from(self.end + "I", head, 28)
            phentsize, phnum = struct.unpack_from(self.end + "HH", head, 42)
        return phoff, phentsize, phnum

    def _segments(
        self, phoff: int, phentsize: int, phnum: int
    ) -> tuple[tuple[int, int] | None, bytes | None]:
        """The program headers: loaded segments into ``self.loads``; the dynamic section and interpreter."""
        table = self.read(phoff, phnum * phentsize)
        self.loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
        dynamic = interp = None
        for i in range(phnum):
            at = i * phentsize
            if at + phentsize > len(table):
                break
            if self.is64:
                p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from(self.end + "IIQQQQ", table, at)
            else:
                p_type, p_offset, p_vaddr, _, p_filesz = struct.unpack_from(self.end + "IIIII", table, at)
            if p_type == _PT_LOAD:
                self.loads.append((p_vaddr, p_offset, p_filesz))
            elif p_type == _PT_DYNAMIC:
                dynamic = (p_offset, p_filesz)
            elif p_type == _PT_INTERP:
                interp = self.read(p_offset, min(p_filesz, _MAX_STRING)).split(b"\0", 1)[0]
        return dynamic, interp

    def _offset(self, vaddr: int) -> int | None:
        """The file offset the loader maps ``vaddr`` from."""
        for start, offset, size in self.loads:
            if start <= vaddr < start + size:
                return offset + (vaddr - start)
        return None

    def _dynamic(self, offset: int, size: int) -> dict:
        entry = 16 if self.is64 else 8
        raw = self.read(offset, min(size, _MAX_DYNAMIC))
        fmt = self.end + ("qQ" if self.is64 else "iI")
        tags: list[tuple[int, int]] = []
        for at in range(0, len(raw) - entry + 1, entry):
            tag, value = struct.unpack_from(fmt, raw, at)
            if tag == _DT_NULL:
                break
            tags.append((tag & 0xFFFFFFFF if not self.is64 else tag, value))
        first = {}
        for tag, value in tags:
            first.setdefault(tag, value)
        strtab = self._offset(first[_DT_STRTAB]) if _DT_STRTAB in first else None
        if strtab is None:
            return {}
        self.strtab, self.strsz = strtab, first.get(_DT_STRSZ, 1 << 62)

        def strings(tag: int) -> tuple[str, ...]:
            return tuple(self._string(v) for t, v in tags if t == tag)

        out: dict = {"needed": strings(_DT_NEEDED)}
        if _DT_SONAME in first:
            out["soname"] = self._string(first[_DT_SONAME])
        out["rpath"] = tuple(p for s in strings(_DT_RPATH) for p in s.split(":") if p)
        out["runpath"] = tuple(p for s in strings(_DT_RUNPATH) for p in s.split(":") if p)
        if _DT_VERNEED in first:
            out["version_needs"] = self._verneed(first[_DT_VERNEED], first.get(_DT_VERNEEDNUM, 0))
        if _DT_VERDEF in first:
            out["version_defs"] = self._verdef(first[_DT_VERDEF], first.get(_DT_VERDEFNUM, 0))
        return out

    def _string(self, index: int) -> str:
        if index >= self.strsz:
            return ""
        raw = self.read(self.strtab + index, _MAX_STRING)
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")

    def _records(self, vaddr: int, count: int, size: int) -> tuple[int, bytes] | None:
        """The file offset of a version table and enough bytes of it for ``count`` records and their aux entries."""
        offset = self._offset(vaddr)
        if offset is None:
            return None
        return offset, self.read(offset, min(count, _MAX_VERSION_RECORDS) * size * 8 + 4096)

    def _verneed(self, vaddr: int, count: int) -> tuple[tuple[str, tuple[str, ...]], ...]:
        found = self._records(vaddr, count, 16)
        if found is None:
            return ()
        base, raw = found
        needs: list[tuple[str, tuple[str, ...]]] = []
        at = 0
        for _ in range(min(count, _MAX_VERSION_RECORDS)):
            _, cnt, file, aux, nxt = struct.unpack_from(self.end + "HHIII", self._window(base, raw, at, 16))
            names = []
            a = at + aux
            for _ in range(min(cnt, _MAX_VERSION_RECORDS)):
                _, flags, _, name, anext = struct.unpack_from(
                    self.end + "IHHII", self._window(base, raw, a, 16)
                )
                if not flags & _VER_FLG_WEAK:
                    names.append(self._string(name))
                if not anext:
                    break
                a += anext
            needs.append((self._string(file), tuple(names)))
            if not nxt:
                break
            at += nxt
        return tuple(needs)

    def _verdef(self, vaddr: int, count: int) -> tuple[str, ...]:
        found = self._records(vaddr, count, 28)
        if found is None:
            return ()
        base, raw = found
        names: list[str] = []
        at = 0
        for _ in range(min(count, _MAX_VERSION_RECORDS)):
            _, flags, _, _, _, aux, nxt = struct.unpack_from(
                self.end + "HHHHIII", self._window(base, raw, at, 20)
            )
            if not flags & _VER_FLG_BASE:
                (name,) = struct.unpack_from(self.end + "I", self._window(base, raw, at + aux, 8))
                names.append(self._string(name))
            if not nxt:
                break
            at += nxt
        return tuple(names)

    def _window(self, base: int, raw: bytes, at: int, size: int) -> bytes:
        """``size`` bytes at ``at`` in a table: from what was read already, or read now when beyond it."""
        if at >= 0 and at + size <= len(raw):
            return raw[at : at + size]
        if at < 0:
            raise ValueError("negative offset")
        return self.read(base + at, size)
