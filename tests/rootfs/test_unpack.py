"""Tests for ocibuild.rootfs.unpack: layers stacked into a real folder as a runtime stacks them, and nothing a layer
says can reach outside that folder."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from ocibuild.errors import FormatError
from ocibuild.rootfs.unpack import ensure_dir, read_file, remove_unpacked, unpack
from tests.packaging.test_pyenv import Layer


def entry(layer: Layer, name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **attrs) -> Layer:
    """Any tar member, with the attributes given (mode, mtime, uid, gid, linkname, devmajor...)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    for key, value in attrs.items():
        setattr(info, key, value)
    layer._tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return layer


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the root with one file in it: no layer may touch either."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "keep").write_text("host file")
    return path


def test_layers_stack_with_whiteouts_and_opaque_folders(root):
    lower = (
        Layer().dir("./etc/").file("./etc/a", b"a1").file("./etc/b", b"b1").dir("./opt/app/").file("./opt/app/x", b"x")
        .file("./opt/app/y", b"y").symlink("./lib", "usr/lib").dir("./usr/lib/").file("./usr/lib/libz.so", b"z")
        .hardlink("./etc/a-again", "etc/a")
    )  # fmt: skip
    upper = (
        Layer().whiteout("./etc/b").file("./etc/a", b"a2").opaque("./opt/app").file("./opt/app/z", b"z")
        .file("./lib/libnew.so", b"n")  # through the usrmerge symlink, as a runtime writes it
        .file("./etc/c", b"c").whiteout("./etc/c")  # a layer's own entries are not hidden by its whiteouts
    )  # fmt: skip
    done = unpack([lower.opener(), upper.opener()], root, "test image")
    assert (root / "etc/a").read_bytes() == b"a2" and not (root / "etc/b").exists()
    assert (root / "etc/a-again").read_bytes() == b"a1"  # the hard link kept the lower layer's file
    assert sorted(p.name for p in (root / "opt/app").iterdir()) == ["z"]
    assert (root / "lib").is_symlink() and (root / "usr/lib/libnew.so").read_bytes() == b"n"
    assert (root / "etc/c").read_bytes() == b"c"
    assert done.entries == 17 and done.file_bytes == len(b"a1b1xyz") + len(b"a2znc")


def test_no_entry_lands_outside_the_root(root, outside):
    # An absolute link to a host folder: inside the root it means root/<that path>.
    hostile = (
        Layer()
        .symlink("./abs", str(outside))
        .file("./abs/keep", b"overwritten?")
        .file(f"./abs/{'../' * 12}new", b"a new file")
        .symlink("./up", "../../..")
        .file("./up/escaped", b"escaped?")
        .file("../../evil", b"dot-dot name")
        .file(f"/{outside}/absolute-name", b"absolute name")
        .hardlink("./passwd", "../../../../etc/passwd")
        .symlink("./hostfile", f"{outside}/keep")
    )
    later = Layer().file("./hostfile", b"replaces the link, never writes through it")
    unpack([hostile.opener(), later.opener()], root, "hostile")
    assert (outside / "keep").read_text() == "host file" and sorted(os.listdir(outside)) == ["keep"]
    assert (root / str(outside).lstrip("/") / "keep").read_bytes() == b"overwritten?"
    assert (root / "new").read_bytes() == b"a new file" and (root / "escaped").read_bytes() == b"escaped?"
    assert (root / "evil").read_bytes() == b"dot-dot name"
    assert not (root / "passwd").exists()  # a link to a file the image does not have is no link at all
    assert not (root / "hostfile").is_symlink()


def test_a_whiteout_through_a_link_removes_nothing_outside(root, outside):
    layers = [
        Layer().symlink("./etc", str(outside)).opener(),
        Layer().whiteout("./etc/keep").opaque("./etc").opener(),
    ]
    unpack(layers, root, "hostile")
    assert (outside / "keep").read_text() == "host file"


def test_modes_times_and_set_id_bits(root):
    lower = entry(Layer(), "./ro/", tarfile.DIRTYPE, mode=0o555, mtime=1000)
    entry(lower, "./ro/old", data=b"o", mode=0o644, mtime=2000)
    upper = entry(Layer(), "./ro/new", data=b"n", mode=0o4755, mtime=3000)  # into a read-only folder
    entry(upper, "./dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3)
    entry(upper, "./fifo", tarfile.FIFOTYPE)
    unpack([lower.opener(), upper.opener()], root, "modes")
    assert stat.S_IMODE((root / "ro").stat().st_mode) == 0o555 and (root / "ro").stat().st_mtime == 1000
    new = (root / "ro/new").stat()
    assert stat.S_IMODE(new.st_mode) == 0o755 and new.st_mtime == 3000  # no set-user-ID from an image
    assert (root / "ro/old").stat().st_mtime == 2000
    assert not (root / "dev/null").exists() and not (root / "fifo").exists()  # devices are the sandbox's own
    assert stat.S_IMODE(root.stat().st_mode) == 0o755  # "/" must be traversable by the image's user
    remove_unpacked(root)
    assert not root.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files other owners")
def test_owners_are_kept_when_asked(root):
    layer = entry(Layer(), "./home/", tarfile.DIRTYPE, mode=0o755, uid=1000, gid=1000)
    entry(layer, "./home/f", data=b"x", uid=1234, gid=5678)
    entry(layer, "./home/l", tarfile.SYMTYPE, linkname="f", uid=42, gid=43)
    unpack([layer.opener()], root, "owners", owners=True)
    assert ((root / "home/f").stat().st_uid, (root / "home/f").stat().st_gid) == (1234, 5678)
    assert (root / "home").stat().st_uid == 1000 and (root / "home/l").lstat().st_uid == 42


def test_a_file_or_directory_replaces_what_a_lower_layer_had(root):
    lower = Layer().dir("./a/").file("./a/inside", b"i").file("./b", b"file").symlink("./c", "a")
    upper = Layer().file("./a", b"now a file").dir("./b/").dir("./c/")
    unpack([lower.opener(), upper.opener()], root, "replace")
    assert (root / "a").read_bytes() == b"now a file" and (root / "b").is_dir()
    assert (root / "c").is_dir() and not (root / "c").is_symlink()


def test_read_file_and_ensure_dir_stay_inside(root, outside):
    layer = (
        Layer().dir("./etc/").file("./etc/passwd.real", b"nonroot:x:65532:65532::/tmp:/sbin/nologin\n")
        .symlink("./etc/passwd", "/etc/passwd.real").symlink("./etc/group", str(outside / "keep"))
        .symlink("./work", str(outside))
    )  # fmt: skip
    unpack([layer.opener()], root, "links")
    assert read_file(root, "/etc/passwd") == b"nonroot:x:65532:65532::/tmp:/sbin/nologin\n"
    assert read_file(root, "/etc/group") is None  # the host's file is not the image's
    made = ensure_dir(root, "/work/app")
    assert Path(made) == root / str(outside).lstrip("/") / "app" and made.startswith(str(root))
    assert sorted(os.listdir(outside)) == ["keep"]


def test_too_many_entries_and_a_corrupt_layer_are_one_line(root):
    many = Layer()
    for i in range(20):
        many.file(f"./f{i}")
    with pytest.raises(FormatError, match="more than 10 entries"):
        unpack([many.opener()], root, "bomb", max_entries=10)
    with pytest.raises(FormatError, match="layer 1 is not a readable tar"):
        unpack([lambda: io.BytesIO(b"not a tar at all" * 64)], root, "broken")
