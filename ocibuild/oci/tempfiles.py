"""Temp files that a killed writer cannot leave behind for ever.

Every temp file is created *locked* (``flock``) by its writer; the kernel drops the lock when the writer dies,
however it dies (SIGKILL included). ``sweep`` later removes temp files nobody holds, so the next build cleans up
after a killed one. Empty files younger than a few seconds are spared: a writer may not have taken its lock yet.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputError

_GRACE_SECONDS = 10


def locked_temp(directory: Path | str, prefix: str, suffix: str = "") -> tuple[int, str]:
    """A new temp file, locked by this process until its descriptor is closed.

    Where the kernel allows (``O_TMPFILE``), the file is created nameless, locked, and only then linked under its
    name, so no sweeper can ever see it unlocked; elsewhere ``mkstemp`` then lock, and ``sweep`` spares young
    empty files.
    """
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
    except (OSError, AttributeError):
        # "~" marks a name that was visible before its lock: only such files get sweep's grace period.
        fd, path = tempfile.mkstemp(dir=directory, prefix=prefix + "~", suffix=suffix)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd, path
    dfd = -1
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        for _ in range(100):
            name = f"{prefix}{secrets.token_hex(6)}{suffix}"
            try:
                # A dir fd makes CPython call linkat() with AT_SYMLINK_FOLLOW, which links the open file itself.
                os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dfd, follow_symlinks=True)
                return fd, os.path.join(directory, name)
            except FileExistsError:
                continue
        raise FileExistsError(f"no free temp name in {directory}")
    except BaseException:
        os.close(fd)
        raise
    finally:
        if dfd >= 0:
            os.close(dfd)


def sweep(directory: Path | str, pattern: str) -> None:
    """Remove files matching ``pattern`` in ``directory`` whose writer is gone (they can be locked)."""
    now = time.time()
    for path in Path(directory).glob(pattern):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if "~" in path.name and st.st_size == 0 and now - st.st_mtime < _GRACE_SECONDS:
                continue  # perhaps a writer between creating and locking it; one that wrote holds its lock
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError while a live writer holds it
            os.unlink(path)
        except OSError:
            pass
        finally:
            os.close(fd)


def remove_tree(path: Path | str) -> None:
    """``rmtree`` that a Ctrl-C cannot cut short: the tree is removed, then the interrupt is raised again."""
    interrupted: BaseException | None = None
    while True:
        try:
            shutil.rmtree(path, ignore_errors=True)
            break
        except KeyboardInterrupt as e:
            interrupted = e
    if interrupted is not None:
        raise interrupted


@contextmanager
def new_directory(directory: Path) -> Iterator[Path]:
    """A temp directory beside ``directory`` to fill; renamed to ``directory`` (replacing it if it is an empty one
    the user made) only when the block ends normally. On any failure, Ctrl-C included, it is removed: nothing
    half-written is ever left at the destination."""
    directory = Path(directory)
    parent = directory.absolute().parent
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=parent))
    except OSError as e:
        raise OutputError(f"{directory}: cannot write in {parent} ({e.strerror})") from None
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if directory.exists():
            directory.rmdir()
        os.replace(tmp, directory)
    except BaseException:
        remove_tree(tmp)
        raise
