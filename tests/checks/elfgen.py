"""Synthesized ELF shared objects and executables for the checks' tests: just what the loader reads (header,
program headers, a PT_LOAD that maps the file, PT_DYNAMIC, the dynamic string table, version needs and
definitions), laid out as a linker would, so the reader under test finds them the way it finds them in real files.
"""

from __future__ import annotations

import struct
from pathlib import Path

DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME, DT_RPATH, DT_RUNPATH = 1, 5, 10, 14, 15, 29
DT_VERDEF, DT_VERDEFNUM, DT_VERNEED, DT_VERNEEDNUM = 0x6FFFFFFC, 0x6FFFFFFD, 0x6FFFFFFE, 0x6FFFFFFF
VADDR = (
    0x400000  # where the PT_LOAD maps offset 0: every address in the dynamic section is file offset + VADDR
)


def elf(
    *,
    needed: tuple[str, ...] = (),
    soname: str | None = None,
    rpath: str | None = None,
    runpath: str | None = None,
    version_needs: dict[str, list[str]] | None = None,
    weak_needs: dict[str, list[str]] | None = None,
    version_defs: tuple[str, ...] = (),
    interpreter: str | None = None,
    machine: int = 62,
    bits: int = 64,
    executable: bool = False,
) -> bytes:
    """A little-endian ELF file with those dynamic entries (64- or 32-bit, x86-64 by default)."""
    strings = _StringTable()
    dyn: list[tuple[int, int]] = [(DT_NEEDED, strings.add(n)) for n in needed]
    for tag, value in ((DT_SONAME, soname), (DT_RPATH, rpath), (DT_RUNPATH, runpath)):
        if value:
            dyn.append((tag, strings.add(value)))
    needs = [(lib, [(v, 0) for v in vs]) for lib, vs in (version_needs or {}).items()]
    needs += [(lib, [(v, 2) for v in vs]) for lib, vs in (weak_needs or {}).items()]  # 2: VER_FLG_WEAK
    verneed = _verneed(needs, strings)
    defs = [(soname or "self", 1), *((v, 0) for v in version_defs)] if version_defs else []
    verdef = _verdef(defs, strings)
    strtab = strings.data

    is64 = bits == 64
    ehsize, phentsize = (64, 56) if is64 else (52, 32)
    interp = interpreter.encode() + b"\0" if interpreter else b""
    phnum = 2 + (1 if interp else 0)
    offset = ehsize + phentsize * phnum
    interp_at = offset
    offset += len(interp)
    strtab_at = offset
    # The dynamic string table is complete now: every string was added above.
    offset += len(strtab)
    verneed_at = (offset + 3) & ~3
    offset = verneed_at + len(verneed)
    verdef_at = (offset + 3) & ~3
    offset = verdef_at + len(verdef)
    dyn += [(DT_STRTAB, VADDR + strtab_at), (DT_STRSZ, len(strtab))]
    if needs:
        dyn += [(DT_VERNEED, VADDR + verneed_at), (DT_VERNEEDNUM, len(needs))]
    if defs:
        dyn += [(DT_VERDEF, VADDR + verdef_at), (DT_VERDEFNUM, len(defs))]
    dyn.append((0, 0))
    dynamic_at = (offset + 7) & ~7
    entry = "<qQ" if is64 else "<iI"
    dynamic = b"".join(struct.pack(entry, tag, value) for tag, value in dyn)
    size = dynamic_at + len(dynamic)

    header = _elf_header(is64, 2 if executable else 3, machine, ehsize, phentsize, phnum)
    # (type, flags, offset, size, alignment): PT_LOAD maps the whole file, then PT_DYNAMIC and PT_INTERP
    segments = [(1, 5, 0, size, 0x1000), (2, 6, dynamic_at, len(dynamic), 8 if is64 else 4)]
    if interp:
        segments.append((3, 4, interp_at, len(interp), 1))
    phdrs = b"".join(_program_header(is64, *segment) for segment in segments)
    out = bytearray(size)
    out[: len(header)] = header
    out[ehsize : ehsize + len(phdrs)] = phdrs
    out[interp_at : interp_at + len(interp)] = interp
    out[strtab_at : strtab_at + len(strtab)] = strtab
    out[verneed_at : verneed_at + len(verneed)] = verneed
    out[verdef_at : verdef_at + len(verdef)] = verdef
    out[dynamic_at:] = dynamic
    return bytes(out)


class _StringTable:
    """The dynamic string table, built as strings are added (each one's offset is what refers to it)."""

    def __init__(self) -> None:
        self.data = bytearray(b"\0")

    def add(self, s: str) -> int:
        at = len(self.data)
        self.data.extend(s.encode() + b"\0")
        return at


def _verneed(needs: list[tuple[str, list[tuple[str, int]]]], strings: _StringTable) -> bytes:
    """The version needs section: for each (library, [(version, flags)]), a Verneed and its Vernauxes."""
    verneed = bytearray()
    for i, (lib, versions) in enumerate(needs):
        last = i == len(needs) - 1
        verneed += struct.pack(
            "<HHIII", 1, len(versions), strings.add(lib), 16, 0 if last else 16 + 16 * len(versions)
        )
        for j, (v, flags) in enumerate(versions):
            verneed += struct.pack(
                "<IHHII", 0, flags, 2 + j, strings.add(v), 0 if j == len(versions) - 1 else 16
            )
    return bytes(verneed)


def _verdef(defs: list[tuple[str, int]], strings: _StringTable) -> bytes:
    """The version definitions section: one Verdef with one Verdaux per (name, flags)."""
    verdef = bytearray()
    for i, (name, flags) in enumerate(defs):
        last = i == len(defs) - 1
        verdef += struct.pack("<HHHHIII", 1, flags, i + 1, 1, 0, 20, 0 if last else 28)
        verdef += struct.pack("<II", strings.add(name), 0)
    return bytes(verdef)


def _elf_header(is64: bool, e_type: int, machine: int, ehsize: int, phentsize: int, phnum: int) -> bytes:
    """The ELF header: program headers right after it, no section headers."""
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1, 1]) + bytes(9)
    fmt = "<HHIQQQIHHHHHH" if is64 else "<HHIIIIIHHHHHH"
    return ident + struct.pack(fmt, e_type, machine, 1, 0, ehsize, 0, 0, ehsize, phentsize, phnum, 0, 0, 0)


def _program_header(is64: bool, p_type: int, flags: int, offset: int, size: int, align: int) -> bytes:
    """A program header for a segment mapped at its file offset + ``VADDR`` (fields ordered per class)."""
    vaddr = VADDR + offset
    if is64:
        return struct.pack("<IIQQQQQQ", p_type, flags, offset, vaddr, vaddr, size, size, align)
    return struct.pack("<IIIIIIII", p_type, offset, vaddr, vaddr, size, size, flags, align)


def install(site: Path, dist: str, files: dict[str, bytes], version: str = "1.0") -> None:
    """Write ``files`` (relative to ``site``) as distribution ``dist``, with the dist-info pip would write."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = []
    for rel, data in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o755)
        lines.append(f"{rel},sha256=x,{len(data)}")
    lines.append(f"{info.name}/RECORD,,")
    (info / "RECORD").write_text("\n".join(lines) + "\n")
