"""Building blocks of the reliability tests: hand-made tar members, gzip bombs, OCI layouts and docker-archives whose
documents lie, a minimal Python base, and a runner that bounds a child's time and memory and reports its peak RSS.

Everything here is written byte by byte on purpose (not with ocibuild's own writers), so a test can make exactly the
malformed input it names.
"""

from __future__ import annotations

import gzip as _gzip
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from isal import isal_zlib

from ocibuild.oci import media

GLIBC_BANNER = b"\x00GNU C Library (Debian GLIBC 2.36-9+deb12u14) stable release version 2.36.\n\x00GLIBC_2.2.5\x00GLIBC_2.36\x00"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def elf_x86_64(interp: str = "/lib64/ld-linux-x86-64.so.2", body: bytes = b"") -> bytes:
    """A minimal x86-64 ELF executable header with a PT_INTERP program header (what detection reads)."""
    interp_bytes = interp.encode() + b"\0"
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    offset = 64 + 56
    phdr = struct.pack("<IIQQQQQQ", 3, 4, offset, offset, offset, len(interp_bytes), len(interp_bytes), 1)
    return header + phdr + interp_bytes + body


class Tar:
    """A tar stream built member by member, with full control over what each header claims."""

    def __init__(self, fmt: int = tarfile.PAX_FORMAT) -> None:
        self.buf = bytearray()
        self.fmt = fmt

    def header(self, name: str, *, type: bytes = tarfile.REGTYPE, size: int = 0, **fields) -> bytes:
        info = tarfile.TarInfo(name)
        info.type = type
        info.size = size
        info.mode = fields.pop("mode", 0o755 if type == tarfile.DIRTYPE else 0o644)
        for key, value in fields.items():
            setattr(info, key, value)
        return info.tobuf(self.fmt, "utf-8", "surrogateescape")

    def add(self, name: str, data: bytes = b"", *, claimed: int | None = None, **fields) -> Tar:
        """A member holding ``data``; ``claimed`` makes its header declare another size (the data stays)."""
        size = len(data) if claimed is None else claimed
        self.buf += self.header(name, size=size, **fields)
        self.buf += data + bytes(-len(data) % 512)
        return self

    def dir(self, name: str) -> Tar:
        return self.add(name, type=tarfile.DIRTYPE)

    def symlink(self, name: str, target: str) -> Tar:
        return self.add(name, type=tarfile.SYMTYPE, linkname=target)

    def hardlink(self, name: str, target: str) -> Tar:
        return self.add(name, type=tarfile.LNKTYPE, linkname=target)

    def raw(self, data: bytes) -> Tar:
        self.buf += data
        return self

    def bytes(self, end: bool = True) -> bytes:
        return bytes(self.buf) + (bytes(1024) if end else b"")


def python_tar(tar: Tar | None = None) -> Tar:
    """A Debian-like root with Python 3.11.2 and glibc 2.36, as detection sees one (no real binaries)."""
    tar = tar or Tar()
    return (
        tar.dir("usr/")
        .dir("usr/bin/")
        .symlink("usr/bin/python3", "python3.11")
        .add("usr/bin/python3.11", elf_x86_64(body=b"\x003.11.2\x00"), mode=0o755)
        .dir("usr/lib/")
        .dir("usr/lib/python3.11/")
        .add("usr/lib/python3.11/os.py", b"# os\n")
        .dir("usr/lib/x86_64-linux-gnu/")
        .add("usr/lib/x86_64-linux-gnu/libc.so.6", b"\x7fELF" + GLIBC_BANNER, mode=0o755)
        .add("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", b"\x7fELF", mode=0o755)
        .dir("lib64/")
        .symlink("lib64/ld-linux-x86-64.so.2", "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    )


def gzip(data: bytes) -> bytes:
    return _gzip.compress(data, 6, mtime=0)


def gzip_zeros(prefix: bytes, mib: int, suffix: bytes = b"") -> bytes:
    """gzip of ``prefix`` + ``mib`` MiB of zeros + ``suffix``, made in milliseconds: the deflate of one MiB of
    zeros is repeated (each copy starts afresh after a full flush), about 1 KB of blob per MiB of content."""

    def raw(data: bytes, flush: int) -> bytes:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush(flush)

    segment = raw(bytes(1 << 20), zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(prefix)
    zeros_crc = zlib.crc32(bytes(1 << 20))
    for _ in range(mib):
        crc = isal_zlib.crc32_combine(crc, zeros_crc, 1 << 20)
    crc = isal_zlib.crc32_combine(crc, zlib.crc32(suffix), len(suffix))
    size = len(prefix) + (mib << 20) + len(suffix)
    body = raw(prefix, zlib.Z_FULL_FLUSH) + segment * mib + raw(suffix, zlib.Z_FINISH)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + body + struct.pack("<II", crc, size & 0xFFFFFFFF)


# --- image documents ---------------------------------------------------------------------------------------------


def canonical(doc) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class Built:
    """What ``write_layout`` made: the reference to pass to ocibuild and the documents, for further edits."""

    ref: str
    root: Path
    manifest: bytes
    config: bytes

    def blob(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest.removeprefix("sha256:")


def image_config(diff_ids: Sequence[str], **extra) -> dict:
    doc = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin"], "Cmd": ["python3"]},
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created_by": "test"} for _ in diff_ids],
    }
    doc.update(extra)
    return doc


def write_layout(
    root: Path,
    layers: Sequence[bytes],
    *,
    diff_ids: Sequence[str] | None = None,
    layer_media_type: str = media.OCI_LAYER_GZIP,
    config: dict | None = None,
    config_raw: bytes | None = None,
    config_media_type: str = media.OCI_CONFIG,
    manifest: Callable[[dict], dict] | None = None,
    manifest_raw: bytes | None = None,
    entry: Callable[[dict], dict] | None = None,
    tag: str = "t",
) -> Built:
    """An OCI layout at ``root`` of one image tagged ``tag``. The keyword arguments replace or edit each
    document (``manifest``/``entry`` edit the manifest and its index.json descriptor), so digests can lie."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')

    def put(data: bytes) -> str:
        d = sha256(data)
        (blobs / d[7:]).write_bytes(data)
        return d

    if diff_ids is None:
        diff_ids = [sha256(_gzip.decompress(b) if b[:2] == b"\x1f\x8b" else b) for b in layers]
    layer_descs = [{"mediaType": layer_media_type, "digest": put(b), "size": len(b)} for b in layers]
    if config_raw is None:
        config_raw = canonical(config if config is not None else image_config(diff_ids))
    doc = {
        "schemaVersion": 2,
        "mediaType": media.OCI_MANIFEST,
        "config": {"mediaType": config_media_type, "digest": put(config_raw), "size": len(config_raw)},
        "layers": layer_descs,
    }
    if manifest is not None:
        doc = manifest(doc)
    raw = manifest_raw if manifest_raw is not None else canonical(doc)
    desc = {
        "mediaType": media.OCI_MANIFEST,
        "digest": put(raw),
        "size": len(raw),
        "annotations": {media.REF_NAME: tag},
    }
    if entry is not None:
        desc = entry(desc)
    (root / "index.json").write_bytes(canonical({"schemaVersion": 2, "manifests": [desc]}))
    return Built(f"oci:{root}:{tag}", root, raw, config_raw)


def put_blob(root: Path, data: bytes) -> str:
    d = sha256(data)
    (root / "blobs" / "sha256" / d[7:]).write_bytes(data)
    return d


def docker_archive(path: Path, members: Sequence[tuple[tarfile.TarInfo, bytes]]) -> Path:
    """A tar file of exactly these members (names, types and link targets as given)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def member(name: str, data: bytes = b"", *, type: bytes = tarfile.REGTYPE, linkname: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type = type
    info.linkname = linkname
    return info, data


# --- running ocibuild under bounds -------------------------------------------------------------------------------


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    max_rss_mb: float

    def error_line(self) -> str:
        """The one ``ocibuild: error:`` line; fails unless there is exactly one and no traceback."""
        assert "Traceback" not in self.stderr, self.stderr[-3000:]
        errors = [line for line in self.stderr.splitlines() if line.startswith("ocibuild: error:")]
        assert len(errors) == 1, self.stderr[-3000:]
        return errors[0]


MEMORY_LIMIT = (
    2 << 30
)  # address space a child may map: a runaway allocation fails fast instead of eating the host


def ocibuild(
    *args: str | os.PathLike,
    cwd: Path | None = None,
    timeout: float = 120,
    memory: int = MEMORY_LIMIT,
    env: dict[str, str] | None = None,
) -> Result:
    """``python -m ocibuild ARGS`` with a wall-clock timeout and an address-space limit; reports its peak RSS.

    The peak is the process's own ``VmHWM``, written by the child as it exits (and polled while it runs, for a
    child that is killed): ``wait4``'s ``ru_maxrss`` would count the pytest process's pages at the fork, which
    by the end of the suite are hundreds of MB."""
    peak_file = Path(tempfile.mkstemp(prefix="ocibuild-peak-")[1])
    argv = ["prlimit", f"--as={memory}", "--", sys.executable, "-c", _REPORT_PEAK, *map(os.fspath, args)]
    full_env = {
        **os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OCIBUILD_TEST_PEAK": str(peak_file),
        **(env or {}),
    }  # fmt: skip
    polled = 0
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=cwd, env=full_env)
        while True:
            polled = max(polled, _vm_hwm_kb(proc.pid))
            pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > timeout:
                proc.kill()
                _, status, _ = os.wait4(proc.pid, 0)
                proc.returncode = -9
                err.seek(0)
                raise AssertionError(
                    f"ocibuild {' '.join(map(str, args))} still running after {timeout} s (killed):\n"
                    + err.read().decode(errors="replace")[-3000:]
                )
            time.sleep(0.01)
        reported = int(peak_file.read_text() or 0) if peak_file.stat().st_size else 0
        peak_file.unlink()
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        return Result(
            proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            seconds,
            max(reported, polled) / 1024,
        )


# Runs ``python -m ocibuild`` and, as it exits, writes its own peak RSS (kB) where $OCIBUILD_TEST_PEAK says.
_REPORT_PEAK = """
import atexit, os, runpy, sys

def _report():
    with open("/proc/self/status") as f:
        kb = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    with open(os.environ["OCIBUILD_TEST_PEAK"], "w") as f:
        f.write(kb)

atexit.register(_report)
sys.argv[0] = "ocibuild"
runpy.run_module("ocibuild", run_name="__main__", alter_sys=True)
"""


def _vm_hwm_kb(pid: int) -> int:
    """A running process's peak RSS so far (0 once it is gone, or before it has exec'd into Python)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0)
    except (OSError, ValueError):
        return 0


def snapshot(path: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under ``path`` with its size, mode and link count (to prove nothing was written there)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, path)] = (st.st_size, st.st_mode, st.st_nlink)
    return out
