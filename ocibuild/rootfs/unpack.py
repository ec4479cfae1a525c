"""An image's layers unpacked into a real folder, as a container runtime stacks them, so that the image's own
Python can run there at build time (``sandbox``: the smoke test, compiling bytecode).

Whiteouts and opaque directories hide what lower layers hold (never what the same layer holds); a symlink in a
member's parent path is followed *inside* the folder, as it would be inside the container (``..`` and absolute
targets stop at the folder), so no entry can be written, linked or removed outside it. Every path is walked one
component at a time with ``lstat``, never through the host's own symlink resolution; the last component is never
followed. Devices and fifos are skipped (a sandbox gives ``/dev`` its own), set-user-ID and set-group-ID bits are
dropped, and directories get their modes only at the end, so a read-only directory of a lower layer cannot stop an
upper one. Owners are kept only when ``owners`` (root unpacking for a sandbox that changes user); times always,
so the base's timestamp-checked bytecode stays valid.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ocibuild.errors import FormatError
from ocibuild.oci.tarsafe import BoundedTarInfo

from .layers import MAX_SYMLINK_HOPS, normalise

__all__ = ["Unpacked", "ensure_dir", "read_file", "remove_unpacked", "unpack"]

_SETID = stat.S_ISUID | stat.S_ISGID
_CHUNK = 1 << 20
_OPAQUE = ".wh..wh..opq"


@dataclass(frozen=True)
class Unpacked:
    """What an unpacking wrote (for the progress line)."""

    entries: int
    file_bytes: int


@dataclass(frozen=True)
class _Attrs:
    mode: int
    mtime: int
    uid: int = 0
    gid: int = 0


_DEFAULT_DIR = _Attrs(0o755, 0)


class _Unpacker:
    def __init__(self, root: Path, owners: bool, max_entries: int) -> None:
        self.root = os.fspath(root)
        self.owners = owners
        self.left = max_entries
        self.limit = max_entries
        self.dirs: dict[str, _Attrs] = {"": _DEFAULT_DIR}  # real path → attributes set once all layers are in
        self.file_bytes = 0
        self.entries = 0

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def resolve_dir(self, parts: Sequence[str], create: bool) -> str | None:
        """The real path (relative to the root) of directory ``parts``, symlinks followed inside the root; None
        when a component is a file, a dangling link without ``create``, or a symlink loop."""
        todo = list(reversed(parts))
        real: list[str] = []
        hops = 0
        while todo:
            name = todo.pop()
            if name in ("", "."):
                continue
            if name == "..":
                del real[-1:]
                continue
            full = self.path("/".join([*real, name]))
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                if not create:
                    return None
                os.mkdir(full, 0o700)
                st = os.lstat(full)
                self.dirs.setdefault("/".join([*real, name]), _DEFAULT_DIR)
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    return None
                target = os.readlink(full)
                real = [] if target.startswith("/") else real
                todo.extend(reversed(target.split("/")))
            elif stat.S_ISDIR(st.st_mode):
                real.append(name)
            else:
                return None
        return "/".join(real)

    def remove(self, rel: str) -> None:
        """Remove what lies at ``rel`` (a directory with everything under it), never following a link."""
        full = self.path(rel)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(full)
            self.dirs = {k: v for k, v in self.dirs.items() if k != rel and not k.startswith(rel + "/")}
        else:
            os.unlink(full)

    def layer(self, open_layer: Callable[[], BinaryIO], number: int, what: str) -> None:
        created: set[str] = set()  # what this layer made: its own whiteouts do not hide it
        try:
            stream = open_layer()
        except OSError as e:
            raise FormatError(f"{what}: cannot read layer {number} ({e})") from e
        try:
            with tarfile.open(fileobj=stream, mode="r|", tarinfo=BoundedTarInfo) as tar:
                while (member := tar.next()) is not None:
                    tar.members.clear()  # read once, front to back: tarfile's list of members would only grow
                    self.count(what)
                    self.member(tar, member, created)
        except tarfile.ReadError as e:
            if "empty file" not in str(e):
                raise FormatError(f"{what}: layer {number} is not a readable tar ({str(e)[:200]})") from None
        except (tarfile.TarError, EOFError, ValueError, IndexError, OverflowError) as e:
            raise FormatError(f"{what}: layer {number} is not a readable tar ({str(e)[:200]})") from None
        finally:
            stream.close()

    def count(self, what: str) -> None:
        self.entries += 1
        self.left -= 1
        if self.left < 0:
            raise FormatError(
                f"{what}: its layers hold more than {self.limit} entries; refusing to unpack them"
            )

    def member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, created: set[str]) -> None:
        parts = normalise(member.name)
        if not parts:
            if member.isdir():
                self.dirs[""] = self.attrs(member)
            return
        if parts[-1].startswith(".wh."):
            self.whiteout(parts, created)
            return
        parent = self.resolve_dir(parts[:-1], create=True)
        if parent is None:
            return  # under a file or a symlink loop: a runtime cannot unpack it either (``layers.Tree`` skips it)
        rel = f"{parent}/{parts[-1]}" if parent else parts[-1]
        created.add(rel)
        if member.isdir():
            self.directory(rel, member)
        elif member.issym():
            self.remove(rel)
            os.symlink(member.linkname, self.path(rel))
            self.finish_link(rel, member)
        elif member.islnk():
            self.hardlink(rel, member)
        elif member.isreg():
            self.file(rel, member, tar)
        # devices and fifos: a sandbox mounts its own /dev, and Python needs no other

    def whiteout(self, parts: Sequence[str], created: set[str]) -> None:
        parent = self.resolve_dir(parts[:-1], create=False)
        if parent is None:
            return
        prefix = f"{parent}/" if parent else ""
        if parts[-1] == _OPAQUE:
            for child in os.listdir(self.path(parent)):
                if prefix + child not in created:
                    self.remove(prefix + child)
        elif not parts[-1].startswith(".wh..wh.") and len(parts[-1]) > 4:
            rel = prefix + parts[-1][4:]
            if rel not in created:
                self.remove(rel)

    def attrs(self, member: tarfile.TarInfo) -> _Attrs:
        return _Attrs(member.mode & 0o7777 & ~_SETID, int(member.mtime), member.uid, member.gid)

    def directory(self, rel: str, member: tarfile.TarInfo) -> None:
        full = self.path(rel)
        if not os.path.isdir(full) or os.path.islink(full):
            self.remove(rel)
            os.mkdir(full, 0o700)
        self.dirs[rel] = self.attrs(member)

    def hardlink(self, rel: str, member: tarfile.TarInfo) -> None:
        target = normalise(member.linkname)
        parent = self.resolve_dir(target[:-1], create=False) if target else None
        if parent is None:
            return
        source = self.path(f"{parent}/{target[-1]}" if parent else target[-1])
        if not os.path.lexists(source) or (os.path.isdir(source) and not os.path.islink(source)):
            return  # a link to nothing (or to a directory): no runtime can make it
        if os.path.abspath(source) != os.path.abspath(self.path(rel)):
            self.remove(rel)
            os.link(source, self.path(rel), follow_symlinks=False)

    def file(self, rel: str, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        self.remove(rel)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.path(rel), flags, 0o600)
        with os.fdopen(fd, "wb") as out:
            source = tar.extractfile(member)
            if source is not None:
                shutil.copyfileobj(source, out, _CHUNK)
            out.flush()
            if self.owners:
                os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, member.mode & 0o7777 & ~_SETID)
            os.utime(fd, (member.mtime, member.mtime))
        self.file_bytes += member.size

    def finish_link(self, rel: str, member: tarfile.TarInfo) -> None:
        if self.owners:
            os.lchown(self.path(rel), member.uid, member.gid)
        os.utime(self.path(rel), (member.mtime, member.mtime), follow_symlinks=False)

    def finish(self) -> None:
        """Directories' modes, owners and times, deepest first (setting a time on a parent after its children)."""
        for rel in sorted(self.dirs, key=lambda r: r.count("/") + bool(r), reverse=True):
            full = self.path(rel)
            if not os.path.isdir(full) or os.path.islink(full):
                continue
            attrs = self.dirs[rel]
            if self.owners:
                os.lchown(full, attrs.uid, attrs.gid)
            os.chmod(full, attrs.mode)
            os.utime(full, (attrs.mtime, attrs.mtime), follow_symlinks=False)


def unpack(
    layers: Sequence[Callable[[], BinaryIO]],
    root: Path,
    what: str,
    *,
    owners: bool = False,
    max_entries: int = 1_000_000,
) -> Unpacked:
    """Stack ``layers`` (each opens one layer's uncompressed tar, bottom first) into the empty folder ``root``.

    ``owners``: give entries the tar's owners (needs root). ``what`` names the image in errors; more than
    ``max_entries`` entries in all is refused as hostile (the decompression bound is the layers' opener's)."""
    unpacker = _Unpacker(root, owners, max_entries)
    for number, open_layer in enumerate(layers, start=1):
        unpacker.layer(open_layer, number, what)
    unpacker.finish()
    return Unpacked(unpacker.entries, unpacker.file_bytes)


def ensure_dir(root: Path, path: str, mode: int = 0o755) -> str:
    """Make directory ``path`` of the unpacked image (a mount point, a working directory) if it is missing, the way
    a runtime does; its real path on the host, inside ``root``. Raises ``FormatError`` if a file is in the way."""
    unpacker = _Unpacker(root, False, 0)
    rel = unpacker.resolve_dir(normalise(path), create=True)
    if rel is None:
        raise FormatError(f"the image has a file or a symlink loop where directory {path} should be")
    for made in unpacker.dirs:
        if made:
            os.chmod(unpacker.path(made), mode)
    return unpacker.path(rel)


def read_file(root: Path, path: str, limit: int = 1 << 20) -> bytes | None:
    """The first ``limit`` bytes of file ``path`` of the unpacked image, symlinks followed inside ``root``; None if
    there is no such file."""
    unpacker = _Unpacker(root, False, 0)
    parts = list(normalise(path))
    for _ in range(MAX_SYMLINK_HOPS):
        if not parts:
            return None
        parent = unpacker.resolve_dir(parts[:-1], create=False)
        if parent is None:
            return None
        full = unpacker.path(f"{parent}/{parts[-1]}" if parent else parts[-1])
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            return None
        if not stat.S_ISLNK(st.st_mode):
            break
        target = os.readlink(full)
        parts = list(normalise(target if target.startswith("/") else f"{parent}/{target}"))
    else:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return f.read(limit)


def remove_unpacked(root: Path) -> None:
    """Remove an unpacked tree, also where its directories' modes (``0555``) keep their owner out; links are
    never followed."""
    shutil.rmtree(root, ignore_errors=True)
    if not os.path.lexists(root):
        return
    os.chmod(root, 0o700)
    for top, dirs, _ in os.walk(root):
        for name in dirs:
            full = os.path.join(top, name)
            if not os.path.islink(full):
                os.chmod(full, 0o700)
    shutil.rmtree(root, ignore_errors=True)
