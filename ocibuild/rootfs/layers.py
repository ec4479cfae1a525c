"""An image's final filesystem as names, read from its layer tars the way a container runtime stacks them.

Symlinks, hardlinks, whiteouts and opaque directories are applied; ``..`` and absolute names are clamped to the
image's root, as a chroot would. A caller's ``scan`` decides, by name and size, which few regular files are worth
reading and keeps only what it found in them (``File.facts``): the tree never holds file contents.

Shared by the base image's Python detection (``rootfs.pyenv``), its OS packages (``rootfs.packages``) and the build
checks' files (``rootfs.files``); ``read_trees`` gives all of them from one read of the layers.
Never: runs anything from the image, writes anything read from a layer to disk, or follows a path outside the
image's own root.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import BinaryIO

from ocibuild.errors import BaseImageError
from ocibuild.oci.tarsafe import BoundedTarInfo

__all__ = ["Dir", "File", "Link", "Path", "Scan", "Tree", "as_abs", "normalise", "read_tree", "read_trees"]

MAX_SYMLINK_HOPS = 40  # as Linux's ELOOP

Path = tuple[str, ...]
# (path, size, open) → what to remember of a regular file, or None; ``open`` gives its content, read once.
Scan = Callable[[Path, int, Callable[[], "BinaryIO | None"]], object]


class Dir:
    __slots__ = ("children",)

    def __init__(self) -> None:
        self.children: dict[str, Node] = {}


@dataclass(frozen=True, slots=True)
class File:
    facts: object = None  # what the scan kept; shared by every hardlink to the file


@dataclass(frozen=True, slots=True)
class Link:
    target: str


Node = Dir | File | Link


def normalise(name: str) -> Path:
    """A tar member name as components under the root: ``./a//b/../c`` → ``(a, c)``; ``..`` stops at the root."""
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return tuple(parts)


def as_abs(path: Path) -> str:
    return "/" + "/".join(path)


class Tree:
    """The final filesystem of stacked layers, as names and what a scan kept."""

    def __init__(self) -> None:
        self.root = Dir()

    def resolve(
        self, path: Path, *, follow_last: bool = True, create: bool = False
    ) -> tuple[Node | None, Path]:
        """The node at ``path`` and its real path, following symlinks inside the root; (None, ()) if absent.

        With ``create``, missing directories are made on the way (what unpacking a layer does for a member whose
        parents the tar does not list).
        """
        todo = list(reversed(path))
        real: list[str] = []
        dirs: list[Dir] = [self.root]
        hops = 0
        while todo:
            name = todo.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if real:
                    real.pop()
                    dirs.pop()
                continue
            child = _child(dirs[-1], name, create)
            if child is None:
                return None, ()
            if isinstance(child, Link) and (todo or follow_last):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    return None, ()
                _enter_link(child.target, todo, real, dirs)
                continue
            if isinstance(child, Dir):
                real.append(name)
                dirs.append(child)
                continue
            if todo:  # a file used as a directory
                return None, ()
            return child, (*real, name)
        return dirs[-1], tuple(real)

    def put(self, path: Path, node: Node) -> None:
        parent, _ = self.resolve(path[:-1], create=True)
        if not isinstance(parent, Dir):
            return  # a parent is a file or a symlink loop: unpacking would fail here too
        name = path[-1]
        if isinstance(node, Dir) and isinstance(parent.children.get(name), Dir):
            return  # directories of upper layers merge with lower ones
        parent.children[name] = node

    def whiteout(self, path: Path) -> None:
        parent, _ = self.resolve(path[:-1])
        if isinstance(parent, Dir):
            parent.children.pop(path[-1], None)

    def make_opaque(self, path: Path) -> None:
        node, _ = self.resolve(path)
        if isinstance(node, Dir):
            node.children.clear()

    def listdir(self, path: Path) -> list[str]:
        node, _ = self.resolve(path)
        return sorted(node.children) if isinstance(node, Dir) else []

    def file(self, path: Path) -> tuple[File | None, Path]:
        node, real = self.resolve(path)
        return (node, real) if isinstance(node, File) else (None, ())


def _child(parent: Dir, name: str, create: bool) -> Node | None:
    """``parent``'s entry ``name``; when it is missing, None, or with ``create`` a new directory."""
    child = parent.children.get(name)
    if child is None and create:
        child = parent.children[name] = Dir()
    return child


def _enter_link(target: str, todo: list[str], real: list[str], dirs: list[Dir]) -> None:
    """Walk on through a symlink: its target's names come next in ``todo``, from the root if absolute."""
    if target.startswith("/"):
        del real[:]
        del dirs[1:]
    todo.extend(reversed(target.split("/")))


# One member of a layer, as kept between reading the layer and applying it: (kind, path, payload).
_Entry = tuple[str, Path, object]


# Bounds on what a hostile layer can make a reader hold in memory or spend in time. Real extended headers (pax
# records, GNU long names) are well under a kilobyte and real images have at most a few hundred thousand entries
# (each costs about 200 bytes and 20 µs here: a million is 200 MB and 20 s, from a blob of 1 MB of repeated
# headers); the tar stream itself is bounded by ``oci.image``'s decompression limit.
def _read_layer(
    open_layer: Callable[[], BinaryIO], number: int, what: str, budget: list[int], limit: int, scan: Scan
) -> list[_Entry]:
    """The entries of one layer; ``budget`` holds how many more entries the image may have (decremented)."""
    entries: list[_Entry] = []
    try:
        stream = open_layer()
    except OSError as e:
        raise BaseImageError(f"{what}: cannot read layer {number} ({e})") from e
    try:
        with tarfile.open(fileobj=stream, mode="r|", tarinfo=BoundedTarInfo) as tar:
            while (member := tar.next()) is not None:
                tar.members.clear()  # a stream is read once: tarfile's list of past members would only grow
                budget[0] -= 1
                if budget[0] < 0:
                    raise BaseImageError(
                        f"{what}: its layers hold more than {limit} entries; refusing to read them all "
                        "(a real image has far fewer), use another base image"
                    )
                entry = _layer_entry(member, tar, scan)
                if entry is not None:
                    entries.append(entry)
    except tarfile.ReadError as e:
        if "empty file" in str(e):
            return entries
        raise BaseImageError(
            f"{what}: layer {number} is not a readable tar ({str(e)[:200]}); the image is corrupt"
        ) from None
    except (tarfile.TarError, EOFError, OSError, ValueError, IndexError, OverflowError) as e:
        # ValueError, IndexError, OverflowError: what tarfile's parsers raise on some malformed headers.
        raise BaseImageError(
            f"{what}: layer {number} is not a readable tar ({str(e)[:200]}); the image is corrupt"
        ) from None
    finally:
        stream.close()
    return entries


def _layer_entry(member: tarfile.TarInfo, tar: tarfile.TarFile, scan: Scan) -> _Entry | None:
    """What one member of a layer's tar does to the tree; None for nothing (the root, aufs metadata)."""
    path = normalise(member.name)
    if not path:
        return None
    base = path[-1]
    if base == ".wh..wh..opq":
        return ("opaque", path[:-1], None)
    if base.startswith(".wh..wh."):
        return None  # other aufs metadata
    if base.startswith(".wh."):
        return ("whiteout", (*path[:-1], base[4:]), None) if len(base) > 4 else None
    if member.isdir():
        return ("dir", path, None)
    if member.issym():
        return ("symlink", path, member.linkname)
    if member.islnk():
        return ("hardlink", path, normalise(member.linkname))
    if member.isreg():
        return ("file", path, scan(path, member.size, lambda: tar.extractfile(member)))
    return ("file", path, None)  # devices, fifos


def _apply_layer(tree: Tree, entries: list[_Entry]) -> None:
    # Whiteouts and opaque markers hide only what lower layers hold, never this layer's own entries, wherever they
    # stand in the tar: so they go first.
    for kind, path, _ in entries:
        if kind == "whiteout":
            tree.whiteout(path)
        elif kind == "opaque":
            tree.make_opaque(path)
    for kind, path, payload in entries:
        if kind == "dir":
            tree.put(path, Dir())
        elif kind == "file":
            tree.put(path, File(payload))
        elif kind == "symlink":
            tree.put(path, Link(str(payload)))
        elif kind == "hardlink":
            target, _ = tree.resolve(payload, follow_last=False)  # type: ignore[arg-type]
            if isinstance(target, (File, Link)):
                tree.put(path, target)


def read_tree(
    layers: Sequence[Callable[[], BinaryIO]], what: str, scan: Scan, *, max_entries: int = 1_000_000
) -> Tree:
    """Stack ``layers`` (each opens one layer's uncompressed tar, bottom first; each is read once, front to back).

    ``what`` names the image in errors; more than ``max_entries`` entries in all is refused as hostile.
    """
    tree = Tree()
    budget = [max_entries]
    for number, open_layer in enumerate(layers, start=1):
        _apply_layer(tree, _read_layer(open_layer, number, what, budget, max_entries, scan))
    return tree


def read_trees(
    layers: Sequence[Callable[[], BinaryIO]], what: str, scans: Sequence[Scan], *, max_entries: int = 1_000_000
) -> list[Tree]:
    """``read_tree`` for several scans from one read of the layers: each tree is the one its scan alone gives.

    A build wants three things of a new base image (its Python, its OS packages, the checks' files); reading and
    inflating the layers is what costs (0.75 s a time for the Debian base), so they are read once for all three.
    """
    both = read_tree(layers, what, partial(_scan_each, scans), max_entries=max_entries)
    return [_project(both, i) for i in range(len(scans))]


def _scan_each(scans: Sequence[Scan], path: Path, size: int, open_content: Callable[[], BinaryIO | None]) -> tuple:
    replay = _Replay(open_content)
    found = []
    for i, scan in enumerate(scans):
        replay.keep = i < len(scans) - 1  # what the last scan reads is not given again: not kept
        found.append(scan(path, size, replay.open))
    return tuple(found)


class _Replay:
    """One member's content for several scans in turn, from its one stream: what an earlier scan read is kept (a
    few MB at most: a scan reads what it needs of a file, up to its own limit) and given again to the next."""

    def __init__(self, open_content: Callable[[], BinaryIO | None]) -> None:
        self._open: Callable[[], BinaryIO | None] | None = open_content
        self._stream: BinaryIO | None = None
        self.seen = bytearray()
        self.keep = True

    def open(self) -> BinaryIO | None:
        if self._open is not None:
            self._stream, self._open = self._open(), None
        return None if self._stream is None else _Replayed(self)  # type: ignore[return-value]

    def more(self, n: int) -> bytes:
        assert self._stream is not None
        chunk = self._stream.read(n) if n >= 0 else self._stream.read()
        if self.keep:
            self.seen += chunk
        return chunk


class _Replayed(io.RawIOBase):
    """A scan's view of a member: the bytes read before, then the rest of the stream."""

    def __init__(self, replay: _Replay) -> None:
        self._replay = replay
        self._pos = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        """Up to ``n`` bytes (all that is left if ``n`` is negative), short only at the end, as a file's read."""
        n = -1 if n is None else n
        seen = self._replay.seen
        out = bytes(seen[self._pos :] if n < 0 else seen[self._pos : self._pos + n])
        if (n < 0 or len(out) < n) and self._pos + len(out) >= len(seen):  # at the stream's own position
            out += self._replay.more(n if n < 0 else n - len(out))
        self._pos += len(out)
        return out


def _project(tree: Tree, index: int) -> Tree:
    """The tree with each file's facts those of scan ``index`` (hardlinked files stay one ``File``)."""
    files: dict[int, File] = {}
    out = Tree()
    todo = [(tree.root, out.root)]
    while todo:
        source, copy = todo.pop()
        for name, node in source.children.items():
            if isinstance(node, Dir):
                child = Dir()
                todo.append((node, child))
                copy.children[name] = child
            elif isinstance(node, File):
                if id(node) not in files:
                    files[id(node)] = File(node.facts[index] if isinstance(node.facts, tuple) else None)
                copy.children[name] = files[id(node)]
            else:
                copy.children[name] = node
    return out
