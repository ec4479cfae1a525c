"""Hostile base images (issue 6, part 3): ocibuild reads a base only to find its Python, and copies its blobs.

Whatever a base holds — names climbing out with ``..``, absolute names, links pointing outside, device nodes,
duplicates, malformed or lying tar headers, decompression bombs, documents that are malformed, oversized, of the
wrong type or whose digests lie — ``ocibuild package`` and ``ocibuild inspect`` either handle it as a container
runtime would (names are clamped to the image's root, whiteouts apply) or stop with one ``ocibuild: error:`` line,
in bounded time and memory, writing nothing outside their own temp files and never leaving anything at the output.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile

import pytest

from ocibuild import cli
from ocibuild.errors import BaseImageError
from ocibuild.oci import media
from ocibuild.rootfs import pyenv
from ocibuild.rootfs.pyenv import detect_target_python
from tests.conftest import require
from tests.reliability.hostile import (
    Tar,
    canonical,
    docker_archive,
    gzip,
    gzip_zeros,
    image_config,
    member,
    ocibuild,
    put_blob,
    python_tar,
    sha256,
    snapshot,
    write_layout,
)

PY = python_tar().bytes()  # the uncompressed tar of a minimal Debian-like Python root


@pytest.fixture
def app(tmp_path):
    d = tmp_path / "app"
    d.mkdir()
    (d / "score.py").write_text("def init():\n    pass\n\n\ndef run(raw):\n    return raw\n")
    (d / "model.bin").write_bytes(b"weights")
    return d


@pytest.fixture
def canary(tmp_path_factory):
    """A directory that hostile names, links and hardlinks point into; nothing may change in it."""
    d = tmp_path_factory.mktemp("canary")
    (d / "victim").write_text("must not change\n")
    before = snapshot(d)
    yield d
    assert snapshot(d) == before, "something was written where a hostile base pointed"


class Run:
    """``ocibuild package`` of the app onto a base, as a child process bounded in time and memory, from an empty
    working directory and with a private TMPDIR, both checked to be left empty."""

    def __init__(self, tmp_path, app):
        self.tmp = tmp_path
        self.app = app
        self.out = tmp_path / "out"
        self.cwd = tmp_path / "cwd"
        self.tmpdir = tmp_path / "tmpdir"
        for d in (self.out, self.cwd, self.tmpdir):
            d.mkdir()

    def package(self, base: str, **kw):
        r = ocibuild(
            "package", self.app / "model.bin", "--entry-script", self.app / "score.py", "--base", base,
            "--output", self.out / "image.tar", "--cache", self.tmp / "cache", "-q",
            cwd=self.cwd, env={"TMPDIR": str(self.tmpdir)}, **kw,
        )  # fmt: skip
        assert os.listdir(self.cwd) == [], "ocibuild wrote into its working directory"
        assert os.listdir(self.tmpdir) == [], f"temp files left behind: {os.listdir(self.tmpdir)}"
        assert not [p for p in os.listdir(self.out) if p != "image.tar"], os.listdir(self.out)
        if r.returncode != 0:
            assert os.listdir(self.out) == [], "a failed build left something at the output"
        return r

    def fails(self, base: str, expect: str, **kw) -> str:
        r = self.package(base, **kw)
        assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
        line = r.error_line()
        assert expect in line, line
        return line


@pytest.fixture
def run(tmp_path, app):
    return Run(tmp_path, app)


def skopeo_layers(archive) -> int:
    require("skopeo")
    out = subprocess.run(
        ["skopeo", "inspect", f"docker-archive:{archive}"], capture_output=True, text=True, check=True
    ).stdout
    return len(json.loads(out)["Layers"])


# --- layers whose entries point outside, and the other things a runtime clamps or ignores -------------------------


def test_escaping_names_links_and_devices_are_clamped_and_the_build_succeeds(run, canary, tmp_path):
    c = str(canary).lstrip("/")
    up = "../" * 12
    hostile = (
        Tar()
        .add(f"{up}{c}/dotdot", b"escaped by ..")
        .add(f"/{c}/absolute", b"escaped by an absolute name")
        .symlink("esc", f"/{c}")
        .add("esc/through-symlink", b"escaped through a symlink")
        .symlink("esc-rel", f"{up}{c}")
        .add("esc-rel/through-relative-symlink", b"escaped through a relative symlink")
        .hardlink("hl-abs", f"/{c}/victim")
        .hardlink("hl-rel", f"{up}{c}/victim")
        .add("dev/evil-null", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        .add("dev/evil-sda", type=tarfile.BLKTYPE, devmajor=8, devminor=0)
        .add("dev/evil-fifo", type=tarfile.FIFOTYPE)
        .add("usr/bin/setuid", b"#!/bin/sh\n", mode=0o4755)
        .add("etc/dup", b"first")
        .add("etc/dup", b"second, wins")
        .dir("etc/dup2")
        .add("etc/dup2", b"a file replacing a directory")
        .symlink("usr/bin/loop1", "loop2")
        .symlink("usr/bin/loop2", "loop1")
        .add("usr/bin/loop1/under-a-loop", b"x")
        .bytes()
    )
    built = write_layout(tmp_path / "base", [gzip(PY), gzip(hostile)])
    r = run.package(built.ref)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().startswith("sha256:")
    assert skopeo_layers(run.out / "image.tar") == 2 + 3  # the base's two layers, copied as they are, + ours
    assert (canary / "victim").stat().st_nlink == 1


def test_whiteouts_in_a_base_just_work(run, tmp_path):
    lower = (
        python_tar()
        .dir("opt/junk/")
        .add("opt/junk/file", b"x")
        .add("usr/lib/python3.11/old.py", b"# old")
        .dir("usr/share/doc/")
        .add("usr/share/doc/readme", b"x")
        .bytes()
    )
    upper = (
        Tar()
        .add("opt/.wh.junk")  # a whole directory removed
        .add("usr/lib/python3.11/.wh.old.py")  # a file removed
        .add("usr/share/doc/.wh..wh..opq")  # an opaque directory
        .add("usr/share/doc/new", b"y")
        .add("nowhere/.wh.nothing")  # a whiteout of nothing
        .add("usr/bin/.wh..wh.plnk")  # other aufs metadata, ignored
        .bytes()
    )
    again = Tar().dir("opt/junk/").add("opt/junk/back", b"z").bytes()
    built = write_layout(tmp_path / "base", [gzip(lower), gzip(upper), gzip(again)])
    r = run.package(built.ref)
    assert r.returncode == 0, r.stderr[-3000:]
    assert skopeo_layers(run.out / "image.tar") == 3 + 3


def test_a_whiteout_of_the_interpreter_is_a_clear_error(run, tmp_path):
    upper = Tar().add("usr/bin/.wh.python3").add("usr/bin/.wh.python3.11").bytes()
    built = write_layout(tmp_path / "base", [gzip(PY), gzip(upper)])
    run.fails(built.ref, "has no Python 3 interpreter")


def test_duplicate_entries_the_last_one_wins():
    """As when a runtime unpacks a layer: a later entry of the same name replaces the earlier one."""
    old_libc = b"\x7fELF\x00GNU C Library (Debian GLIBC 2.17-1) stable release version 2.17.\n\x00"
    layer = (
        Tar()
        .dir("usr/bin/python3")  # first a directory ...
        .add("usr/lib/x86_64-linux-gnu/libc.so.6", old_libc)
        .raw(python_tar().bytes(end=False))  # ... then the real tree, libc 2.36 after 2.17
        .bytes()
    )
    target = detect_target_python([lambda: io.BytesIO(layer)], "amd64")
    assert (target.executable, target.libc_version) == ("/usr/bin/python3", (2, 36))
    later_old = Tar().add("usr/lib/x86_64-linux-gnu/libc.so.6", old_libc).bytes()
    layers = [PY, later_old]
    target = detect_target_python([lambda b=b: io.BytesIO(b) for b in layers], "amd64")
    assert target.libc_version == (2, 17)


# --- malformed tars: one line, quickly ---------------------------------------------------------------------------


def _with_checksum(header: bytearray) -> bytes:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def _gnu_sparse_truncated() -> bytes:
    h = bytearray(Tar(tarfile.GNU_FORMAT).header("usr/bin/python3.11", size=0))
    h[156:157] = tarfile.GNUTYPE_SPARSE
    h[482] = 1  # "an extension block follows" — and the stream ends
    return python_tar().bytes(end=False) + _with_checksum(h)


def _bad_checksum() -> bytes:
    h = bytearray(Tar().header("usr/x", size=0))
    h[0] ^= 0x20
    return bytes(h) + python_tar().bytes()


def _pax_record(keyword: str, value: str) -> bytes:
    body = f" {keyword}={value}\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n += 1
    return f"{n}{body}".encode()


def _pax_member(records: bytes) -> bytes:
    return Tar(tarfile.USTAR_FORMAT).add("PaxHeader/x", records, type=tarfile.XHDTYPE).bytes(end=False)


MALFORMED = {
    "size claims 8 GB": (
        gzip(python_tar().add("usr/big", b"x" * 10, claimed=8 << 30).bytes(end=False)),
        "not a readable tar",
    ),
    "first header's checksum is wrong": (gzip(_bad_checksum()), "not a readable tar"),
    "header cut short after the last member": (
        gzip(python_tar().bytes(end=False) + Tar().header("usr/x", size=10)[:300]),
        "a header cut short",
    ),
    "GNU sparse map cut short": (gzip(_gnu_sparse_truncated()), "not a readable tar"),
    "pax sparse map that is not numbers": (
        gzip(
            python_tar().bytes(end=False)
            + _pax_member(
                _pax_record("GNU.sparse.major", "0")
                + _pax_record("GNU.sparse.minor", "1")
                + _pax_record("GNU.sparse.map", "x,y")
            )
            + Tar().add("usr/sparse", b"").bytes()
        ),
        "not a readable tar",
    ),
    "random bytes": (bytes(range(256)) * 64, "not a readable tar"),
    "gzip magic then garbage": (b"\x1f\x8b\x08\x00" + bytes(range(256)) * 16, "cannot be decompressed"),
    "gzip cut short": (gzip(PY)[:-200], "cannot be decompressed"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_layer_is_one_line(run, tmp_path, name):
    blob, expect = MALFORMED[name]
    built = write_layout(tmp_path / "base", [blob], diff_ids=[sha256(b"")])
    r = run.package(built.ref, timeout=60)
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert expect in r.error_line(), r.error_line()


# --- bombs: bounded memory and time ------------------------------------------------------------------------------

GIB = 1024  # in MiB


def _xhd(type: bytes, size: int) -> bytes:
    return Tar(tarfile.USTAR_FORMAT).header("././@LongLink", type=type, size=size)


BOMBS = {
    # A member of 4 GiB of zeros: a 4 MB blob. Reading past 100x the blob (+1 GiB) stops with an error.
    "gzip bomb": (
        lambda: gzip_zeros(PY[:-1024] + Tar().header("usr/zeros", size=4 * GIB << 20), 4 * GIB, bytes(1024)),
        "decompression bomb",
    ),
    # A pax header declaring 3 GiB: tarfile would read all of it into memory at once.
    "pax header of 3 GiB": (
        lambda: gzip_zeros(PY[:-1024] + _xhd(tarfile.XHDTYPE, 3 * GIB << 20), 3 * GIB, bytes(1024)),
        "extended header of 3221225472 bytes",
    ),
    "GNU long name of 3 GiB": (
        lambda: gzip_zeros(PY[:-1024] + _xhd(tarfile.GNUTYPE_LONGNAME, 3 * GIB << 20), 3 * GIB, bytes(1024)),
        "extended header of 3221225472 bytes",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BOMBS))
def test_bombs_are_refused_in_bounded_time_and_memory(run, tmp_path, name):
    make, expect = BOMBS[name]
    built = write_layout(tmp_path / "base", [make()], diff_ids=[sha256(b"")])
    r = run.package(built.ref, timeout=90, memory=1 << 30)
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert expect in r.error_line(), r.error_line()
    assert r.max_rss_mb < 300, f"peak RSS {r.max_rss_mb:.0f} MB"
    print(f"{name}: {r.seconds:.1f} s, peak RSS {r.max_rss_mb:.0f} MB")


def test_too_many_entries_are_refused(monkeypatch):
    """Entries are counted across layers and refused past the limit (a million; 30 000 here to stay fast), so a
    small blob of repeated headers cannot make detection hold or walk millions of them."""
    monkeypatch.setattr(pyenv, "_MAX_ENTRIES", 30_000)
    one = Tar().add("usr/x", b"").bytes(end=False)
    layers = [PY, one * 20_000 + bytes(1024), one * 20_000 + bytes(1024)]
    with pytest.raises(BaseImageError, match="more than 30000 entries"):
        detect_target_python([lambda b=b: io.BytesIO(b) for b in layers], "amd64")
    detect_target_python([lambda b=b: io.BytesIO(b) for b in layers[:2]], "amd64")


# --- documents: malformed, oversized, of the wrong type, lying ---------------------------------------------------

LAYER = gzip(PY)


def _lie_digest(doc_key):
    """Make the named descriptor name another digest, and put the content under that wrong name."""

    def edit(built_root, doc):
        target = doc["config"] if doc_key == "config" else doc["layers"][0]
        data = (built_root / "blobs" / "sha256" / target["digest"][7:]).read_bytes()
        target["digest"] = sha256(b"something else")
        (built_root / "blobs" / "sha256" / target["digest"][7:]).write_bytes(data)
        return doc

    return edit


# name: (kwargs for write_layout or a builder, message for package, message for inspect or None if inspect works)
DOCUMENTS = {
    "manifest not JSON": (dict(manifest_raw=b"{not json"), "is not valid JSON", "is not valid JSON"),
    "manifest nested 100000 deep": (
        dict(manifest_raw=b"[" * 100_000),
        "nested too deeply",
        "nested too deeply",
    ),
    "manifest with a 5000-digit number": (
        dict(manifest_raw=b'{"schemaVersion": ' + b"1" * 5000 + b"}"),
        "is not valid JSON",
        "is not valid JSON",
    ),
    "manifest is a list": (dict(manifest_raw=b"[]"), "is not a JSON object", "is not a JSON object"),
    "manifest of another media type": (
        dict(manifest=lambda d: {**d, "mediaType": media.OCI_LAYER_GZIP}),
        "not an image manifest",
        "not an image manifest",
    ),
    "manifest mediaType is a list": (
        dict(manifest=lambda d: {**d, "mediaType": ["x"]}),
        "is not a string",
        "is not a string",
    ),
    "manifest annotations are a list": (
        dict(manifest=lambda d: {**d, "annotations": ["x"]}),
        "annotations is not an object of strings",
        "annotations is not an object of strings",
    ),
    "manifest schemaVersion 1": (
        dict(manifest=lambda d: {**d, "schemaVersion": 1}),
        "schemaVersion 1 is not supported",
        "schemaVersion 1 is not supported",
    ),
    "manifest larger than declared": (
        dict(entry=lambda e: {**e, "size": e["size"] - 1}),
        "more than the",
        "more than the",
    ),
    "manifest smaller than declared": (
        dict(entry=lambda e: {**e, "size": e["size"] + 1}),
        "descriptor declares",
        "descriptor declares",
    ),
    "manifest declared oversized": (
        dict(entry=lambda e: {**e, "size": 64 << 20}),
        "refusing it",
        "refusing it",
    ),
    "manifest's digest lies": ("manifest-digest", "content hashes to", "content hashes to"),
    "layer platform is a string": (
        dict(manifest=lambda d: {**d, "layers": [{**d["layers"][0], "platform": "linux/amd64"}]}),
        "platform is not a JSON object",
        "platform is not a JSON object",
    ),
    "descriptor digest of another algorithm": (
        dict(manifest=lambda d: {**d, "config": {**d["config"], "digest": "sha512:" + "0" * 128}}),
        "is not a sha256 digest",
        "is not a sha256 digest",
    ),
    "descriptor digest with a newline": (
        dict(manifest=lambda d: {**d, "config": {**d["config"], "digest": d["config"]["digest"] + "\n"}}),
        "is not a sha256 digest",
        "is not a sha256 digest",
    ),
    "config not JSON": (dict(config_raw=b"\xff\xfe{"), "is not valid JSON", "is not valid JSON"),
    "config of an artifact": (
        dict(config_media_type="application/vnd.cncf.helm.config.v1+json"),
        "is not a container image",
        "is not a container image",
    ),
    "config declared oversized": (
        dict(manifest=lambda d: {**d, "config": {**d["config"], "size": 64 << 20}}),
        "refusing an oversized config",
        "refusing an oversized config",
    ),
    "config's digest lies": ("config-digest", "content hashes to", "content hashes to"),
    "config.config is a string": (
        dict(config=image_config([sha256(PY)], config="x")),
        "config is not an object",
        "config is not an object",
    ),
    "config Env is a string": (
        dict(config=image_config([sha256(PY)], config={"Env": "PATH=/bin"})),
        "config.Env is not a list of strings",
        "config.Env is not a list of strings",
    ),
    "config Labels hold a number": (
        dict(config=image_config([sha256(PY)], config={"Labels": {"a": 1}})),
        "config.Labels is not an object of strings",
        "config.Labels is not an object of strings",
    ),
    "config history is an object": (
        dict(config=image_config([sha256(PY)], history={})),
        "history is not a list of objects",
        "history is not a list of objects",
    ),
    "config history created_by is a number": (
        dict(config=image_config([sha256(PY)], history=[{"created_by": 5}])),
        "history created_by is not a string",
        "history created_by is not a string",
    ),
    "config variant is a number": (
        dict(config=image_config([sha256(PY)], variant=8)),
        "variant is not a string",
        "variant is not a string",
    ),
    "config rootfs is a list": (
        dict(config=image_config([sha256(PY)], rootfs=[])),
        "rootfs is not an object",
        "rootfs is not an object",
    ),
    "config lists no diff_ids": (dict(diff_ids=[]), "lists 0 diff_ids for 1 layers", "lists 0 diff_ids"),
    "layer of a foreign media type": (
        dict(layer_media_type=media.DOCKER_FOREIGN_LAYER_GZIP),
        "unsupported media type",
        "unsupported media type",
    ),
    "layer's digest lies": ("layer-digest", "content hashes to", None),
    "layer larger than declared": (
        dict(manifest=lambda d: {**d, "layers": [{**d["layers"][0], "size": d["layers"][0]["size"] - 1}]}),
        "descriptor declares",
        None,
    ),
    "layer smaller than declared": (
        dict(manifest=lambda d: {**d, "layers": [{**d["layers"][0], "size": d["layers"][0]["size"] + 1}]}),
        "descriptor declares",
        None,
    ),
    "layer blob missing": ("layer-missing", "is missing", None),
}


def _build_document_case(root, spec):
    if isinstance(spec, dict):
        return write_layout(root, [LAYER], **spec).ref
    built = write_layout(root, [LAYER])
    doc = json.loads(built.manifest)
    if spec == "manifest-digest":
        index = json.loads((root / "index.json").read_bytes())
        wrong = sha256(b"not the manifest")
        (root / "blobs" / "sha256" / wrong[7:]).write_bytes(built.manifest)
        index["manifests"][0]["digest"] = wrong
        (root / "index.json").write_bytes(canonical(index))
        return built.ref
    if spec == "layer-missing":
        built.blob(doc["layers"][0]["digest"]).unlink()
        return built.ref
    edit = _lie_digest("config" if spec == "config-digest" else "layer")
    shutil.rmtree(root)
    return write_layout(root, [LAYER], manifest=lambda d: edit(root, d)).ref


@pytest.mark.parametrize("name", list(DOCUMENTS))
def test_bad_documents_are_one_line(tmp_path, app, capsys, name):
    spec, package_expect, inspect_expect = DOCUMENTS[name]
    ref = _build_document_case(tmp_path / "base", spec)
    out = tmp_path / "out"
    out.mkdir()
    argv = ["package", str(app / "model.bin"), "--entry-script", str(app / "score.py"), "--base", ref]
    code = cli.main([*argv, "--output", str(out / "image.tar"), "--cache", str(tmp_path / "cache"), "-q"])
    err = capsys.readouterr().err
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.startswith("ocibuild: error:")]
    assert len(lines) == 1 and package_expect in lines[0], err
    assert os.listdir(out) == []
    code = cli.main(["inspect", ref])
    captured = capsys.readouterr()
    if inspect_expect is None:
        assert code == 0, captured.err
    else:
        assert code == 1 and captured.err.count("ocibuild: error:") == 1, captured.err
        assert inspect_expect in captured.err, captured.err


def test_deeply_nested_indexes_are_refused(tmp_path, capsys):
    built = write_layout(tmp_path / "base", [LAYER])
    root = built.root
    index = json.loads((root / "index.json").read_bytes())
    desc = index["manifests"][0]
    for _ in range(6):
        nested = canonical({"schemaVersion": 2, "mediaType": media.OCI_INDEX, "manifests": [desc]})
        desc = {"mediaType": media.OCI_INDEX, "digest": put_blob(root, nested), "size": len(nested)}
    desc["annotations"] = {media.REF_NAME: "t"}
    (root / "index.json").write_bytes(canonical({"schemaVersion": 2, "manifests": [desc]}))
    assert cli.main(["inspect", built.ref]) == 1
    assert "nested too deep" in capsys.readouterr().err


# --- docker-archive names that point outside the archive ---------------------------------------------------------


@pytest.fixture
def outside(tmp_path_factory):
    """A complete image (config + layer) lying outside the archive: if ocibuild ever followed a name out of the
    archive it would find a valid image there, and the build would succeed instead of failing."""
    d = tmp_path_factory.mktemp("outside")
    (d / "layer.tar").write_bytes(PY)
    (d / "config.json").write_bytes(canonical(image_config([sha256(PY)])))
    before = snapshot(d)
    yield d
    assert snapshot(d) == before


def _escapes(canary):
    c = str(canary).lstrip("/")
    up = "../" * 12
    return {
        "dotdot names": ([], f"{up}{c}/config.json", [f"{up}{c}/layer.tar"]),
        "absolute names": ([], f"/{c}/config.json", [f"/{c}/layer.tar"]),
        "symlink members": (
            [
                member("config.json", type=tarfile.SYMTYPE, linkname=f"/{c}/config.json"),
                member("layer.tar", type=tarfile.SYMTYPE, linkname=f"{up}{c}/layer.tar"),
            ],
            "config.json",
            ["layer.tar"],
        ),
        "hardlink members": (
            [
                member("config.json", type=tarfile.LNKTYPE, linkname=f"/{c}/config.json"),
                member("layer.tar", type=tarfile.LNKTYPE, linkname=f"{up}{c}/layer.tar"),
            ],
            "config.json",
            ["layer.tar"],
        ),
        "a symlinked directory": (
            [member("d", type=tarfile.SYMTYPE, linkname=f"/{c}")],
            "d/config.json",
            ["d/layer.tar"],
        ),
    }


@pytest.mark.parametrize("case", ["dotdot names", "absolute names", "symlink members", "hardlink members", "a symlinked directory"])  # fmt: skip
def test_docker_archive_names_never_leave_the_archive(tmp_path, app, outside, capsys, case):
    members, config_name, layer_names = _escapes(outside)[case]
    manifest = [{"Config": config_name, "RepoTags": ["x:1"], "Layers": layer_names}]
    archive = docker_archive(
        tmp_path / "base.tar", [*members, member("manifest.json", json.dumps(manifest).encode())]
    )
    out = tmp_path / "out"
    out.mkdir()
    argv = ["package", str(app / "model.bin"), "--entry-script", str(app / "score.py")]
    code = cli.main([*argv, "--base", f"docker-archive:{archive}", "--output", str(out / "i.tar"), "--cache", str(tmp_path / "c")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and err.count("ocibuild: error:") == 1, err
    assert "is missing" in err, err
    assert os.listdir(out) == []


def test_archive_members_named_outside_are_ignored(tmp_path, capsys):
    """A ``../manifest.json`` member is not the archive's manifest.json (it would land outside on extraction)."""
    manifest = json.dumps([{"Config": "c.json", "Layers": []}]).encode()
    archive = docker_archive(
        tmp_path / "base.tar",
        [
            member("../manifest.json", manifest),
            member("a/../../index.json", b"{}"),
            member("./../oci-layout", b"{}"),
        ],
    )
    assert cli.main(["inspect", f"docker-archive:{archive}"]) == 1
    assert "no manifest.json" in capsys.readouterr().err
    assert cli.main(["inspect", f"oci-archive:{archive}"]) == 1
    assert "no index.json" in capsys.readouterr().err


def test_docker_archive_config_with_a_malformed_rootfs(tmp_path, capsys):
    config = canonical({"architecture": "amd64", "os": "linux", "rootfs": ["not", "an", "object"]})
    manifest = json.dumps([{"Config": "c.json", "Layers": []}]).encode()
    archive = docker_archive(
        tmp_path / "b.tar", [member("c.json", config), member("manifest.json", manifest)]
    )
    assert cli.main(["inspect", f"docker-archive:{archive}"]) == 1
    assert "rootfs" in capsys.readouterr().err


def test_docker_archive_manifest_json_nested_deeply(tmp_path, capsys):
    archive = docker_archive(tmp_path / "b.tar", [member("manifest.json", b"[" * 100_000)])
    assert cli.main(["inspect", f"docker-archive:{archive}"]) == 1
    assert "manifest.json" in capsys.readouterr().err


# --- huge headers and documents in archives and layouts (sparse files: gigabytes that take no disk) -------------


def _sparse(path, head: bytes, size: int):
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


def test_archive_with_a_huge_pax_header_is_refused_in_bounded_memory(tmp_path):
    header = Tar(tarfile.USTAR_FORMAT).header("PaxHeader/x", type=tarfile.XHDTYPE, size=3 << 30)
    archive = _sparse(tmp_path / "bomb.tar", header, (3 << 30) + 4096)
    r = ocibuild("inspect", f"oci-archive:{archive}", memory=1 << 30, timeout=60)
    assert r.returncode == 1
    assert "not a readable tar" in r.error_line()


def test_layout_with_a_huge_index_json_is_refused_in_bounded_memory(tmp_path):
    root = tmp_path / "layout"
    root.mkdir()
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    _sparse(root / "index.json", b'{"schemaVersion":2,"manifests":[]', 3 << 30)
    r = ocibuild("inspect", f"oci:{root}", memory=1 << 30, timeout=60)
    assert r.returncode == 1
    assert "index.json" in r.error_line()


def test_entry_script_nested_too_deeply_is_one_line(tmp_path, app, capsys):
    """The user's own script, but a parser crash must still be one line (RecursionError, MemoryError)."""
    for body in ("x = " + "+".join(["a"] * 200_000), "x = " + "not " * 100_000 + "a"):
        (app / "deep.py").write_text(body + "\ndef init():\n    pass\n\n\ndef run(r):\n    return r\n")
        code = cli.main(
            ["package", str(app / "model.bin"), "--entry-script", str(app / "deep.py"), "--base", "scratch",
             "--output", str(tmp_path / "o.tar"), "--cache", str(tmp_path / "c")]
        )  # fmt: skip
        err = capsys.readouterr().err
        assert code == 1 and err.count("ocibuild: error:") == 1 and "nested too deeply" in err, err


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    """``ocibuild inspect REF | head -1``: once the reader has gone there is nothing to tell it; no error line, and
    the exit status a shell gives a death by SIGPIPE."""
    import sys

    built = write_layout(tmp_path / "base", [LAYER])
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line is written
    proc = subprocess.run([sys.executable, "-m", "ocibuild", "inspect", built.ref], stdout=write,
                          stderr=subprocess.PIPE, text=True, timeout=60, check=False)  # fmt: skip
    os.close(write)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr
