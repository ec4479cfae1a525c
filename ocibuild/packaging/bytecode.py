"""Bytecode for the dependencies, compiled at build time by the image's own Python, so that a container whose root
is read-only (where Python cannot write ``__pycache__``) does not compile every module it imports at every start.

The base's layers are unpacked into a temporary folder, the installed dependencies are moved to their place in it,
and the base's interpreter compiles them there (``rootfs.sandbox``: a chroot, as an unprivileged user where the
builder is root), writing ``unchecked-hash`` pycs: valid whatever the files' times (a layer's are all
``SOURCE_DATE_EPOCH``), never checked against the source (an image's files do not change), and byte-identical for
the same sources and interpreter (``PYTHONHASHSEED=0``). The host's Python is not used even when its version
matches: 6 of 2,376 of scikit-learn's pycs differ between CPython 3.11.7 and 3.11.2, which would make the digest
depend on the builder's Python (docs/decisions.md). Folders named ``tests`` or ``test`` are left out (41% of the
scikit-learn set's modules, never imported by a server). Where the machine cannot run the base's Python (another
architecture; no root and no user namespaces) the layer is built without bytecode, and says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ..rootfs.sandbox import DEFAULT_PATH, Launch, Method, Sandbox, Workdir, find_method
from ..rootfs.unpack import ensure_dir, remove_unpacked, unpack

if TYPE_CHECKING:
    from ..events import Progress
    from ..oci.image import Image
    from ..rootfs.pyenv import TargetPython

__all__ = ["INVALIDATION", "compile_bytecode", "plan"]

INVALIDATION = "unchecked-hash"
COMPILER_UID = 65532  # the compile never runs as the host's root: the base's Python is not ours
_SKIPPED_DIRS = frozenset({"tests", "test", "__pycache__"})
_TIMEOUT_S = 3600
# Runs on the image's Python (3.9 or newer, standard library only): NUL-separated paths on stdin, one process
# per core (fork: nothing of multiprocessing, which wants /dev/shm), each one's failures in its exit status.
_COMPILE = """
import os, py_compile, sys
files = [f for f in os.fsdecode(sys.stdin.buffer.read()).split("\\0") if f]
workers, kids = int(sys.argv[1]), []
for i in range(workers):
    pid = os.fork()
    if pid == 0:
        bad = 0
        for path in files[i::workers]:
            try:
                py_compile.compile(path, doraise=True, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
            except Exception:
                bad += 1
        os._exit(min(bad, 250))
    kids.append(pid)
failed = sum(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in kids)
print("ocibuild-bytecode", len(files), failed)
"""


def plan(base: Image, wanted: bool) -> Method | str:
    """How the base's Python can run here to compile, or why it cannot (or was not asked to)."""
    if not wanted:
        return "--no-bytecode"
    return find_method(base.platform.architecture)


def compile_bytecode(
    base: Image, target: TargetPython, method: Method, site: Path, site_in_image: str, progress: Progress
) -> None:
    """Compile every module of ``site`` (the installed dependencies, to be ``site_in_image`` in the image) with
    the base's interpreter; the pycs land in ``site``'s ``__pycache__`` folders. A failure is a warning: the image
    still works, it only compiles at start."""
    started = time.monotonic()
    files = _modules(site, "/" + site_in_image.strip("/"))
    if not files:
        return
    with Workdir("ocibuild-bytecode-") as work:
        layers = [partial(base.open_uncompressed, layer) for layer in base.layers]
        as_root = not method.userns and os.geteuid() == 0
        unpack(layers, work.root, base.name or "base image", owners=as_root)
        place = Path(ensure_dir(work.root, os.path.dirname(site_in_image))) / os.path.basename(site_in_image)
        remove_unpacked(place)
        if as_root:
            _hand_over(site)
        shutil.move(site, place)
        try:
            result = _run(method, target, work, files, as_root)
        finally:
            shutil.move(place, site)
    if isinstance(result, str):
        progress.warn(
            f"bytecode: the base's Python did not compile the dependencies ({result}); they compile at start"
        )
        return
    total, failed = result
    note = f", {failed} failed to compile (kept as source)" if failed else ""
    progress.step(
        f"bytecode: compiled {total - failed} modules for {target.describe()} with the image's own Python "
        f"({INVALIDATION}) in {time.monotonic() - started:.1f} s{note}"
    )


def _modules(site: Path, in_image: str) -> list[str]:
    """The modules to compile, as paths in the image: every ``*.py`` outside test folders."""
    found = []
    for top, dirs, names in os.walk(site):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS)
        rel = os.path.relpath(top, site)
        for name in sorted(names):
            if name.endswith(".py"):
                found.append(os.path.normpath(os.path.join(in_image, rel, name)))
    return found


def _hand_over(site: Path) -> None:
    """Let the unprivileged compiler write ``__pycache__`` folders (the layer's owners are 0 whatever they are)."""
    for top, _, _ in os.walk(site):  # real folders only: a link to a folder is listed, never entered
        os.lchown(top, COMPILER_UID, COMPILER_UID)


def _run(
    method: Method, target: TargetPython, work: Workdir, files: list[str], as_root: bool
) -> tuple[int, int] | str:
    """(modules, failures) as the compiler reported them, or why it did not."""
    workers = str(min(os.cpu_count() or 1, 8))
    launch = Launch(
        work.root,
        [target.executable, "-S", "-B", "-c", _COMPILE, workers],
        {"PATH": DEFAULT_PATH, "PYTHONHASHSEED": "0"},
        "/",
        (COMPILER_UID, COMPILER_UID) if as_root else None,
    )
    log = work.path / "compile.log"
    with open(log, "wb") as out, Sandbox(method, launch, work.path, out, subprocess.PIPE) as proc:
        try:
            proc.communicate(b"\0".join(os.fsencode(f) for f in files), timeout=_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f"still compiling after {_TIMEOUT_S} s"
    said = log.read_bytes().decode("utf-8", "replace").strip().splitlines()
    last = said[-1].split() if said else []
    if proc.returncode != 0 or len(last) != 3 or last[0] != "ocibuild-bytecode":
        return said[-1][:200] if said else f"exit status {proc.returncode}"
    return int(last[1]), int(last[2])
