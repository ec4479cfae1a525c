"""Disk full (issue 6, part 5): a build whose output or cache file system fills up fails cleanly.

Small tmpfs mounts stand in for full disks (root only). A user needs: a non-zero exit with one line saying the
disk is full, nothing half-written at the destination (no partial image, no temp file), a cache that holds no partial
or wrong blob, and the next build, with room, writing exactly the image a clean build writes.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import require_root
from tests.reliability.builds import check_store, env, file_sha256, make_model, package_argv

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("disk-full-model"))


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(name, megabytes)``: a fresh tmpfs of that size under tmp_path, unmounted at the end."""
    require_root("mounting a tmpfs")
    mounted = []

    def mount(name: str, megabytes: int):
        d = tmp_path / name
        d.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0755", "tmpfs", str(d)], check=True
        )
        mounted.append(d)
        return d

    yield mount
    for d in reversed(mounted):
        if subprocess.run(["umount", str(d)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(d)], check=False)


def _build(model, base_ref, cache, tmpdir, *output):
    tmpdir.mkdir(exist_ok=True)
    return subprocess.run(
        package_argv(model, base_ref, cache, *output, "-q"),
        env=env(tmpdir),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _one_line(r) -> str:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("ocibuild:")]
    assert len(errors) == 1, r.stderr[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def clean(tmp_path_factory, model, base_image):
    """A clean build's image (sha256 of the tarball) and digest."""
    d = tmp_path_factory.mktemp("disk-full-clean")
    r = _build(model, base_image.ref, d / "cache", d / "tmp", "--output", d / "image.tar")
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip(), file_sha256(d / "image.tar")


@pytest.mark.parametrize("flag", ["--output", "--oci-layout"])
def test_output_on_a_full_disk_fails_cleanly_and_the_cache_stays_valid(
    tmp_path, tmpfs, model, base_image, clean, flag
):
    small = tmpfs("out", 100)  # the image is about 390 MB
    dest = small / ("image.tar" if flag == "--output" else "layout")
    cache = tmp_path / "cache"
    r = _build(model, base_image.ref, cache, tmp_path / "tmp", flag, dest)
    line = _one_line(r)
    assert "No space left on device" in line, line
    assert os.listdir(small) == [], f"left at the destination: {os.listdir(small)}"
    assert check_store(cache) == [], "temp files left in the cache"
    assert os.listdir(tmp_path / "tmp") == []

    # The cache the failed build filled is sound: with room, the next build writes the clean build's image.
    r = _build(model, base_image.ref, cache, tmp_path / "tmp", "--output", tmp_path / "image.tar")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (r.stdout.strip(), file_sha256(tmp_path / "image.tar")) == clean


def test_cache_on_a_full_disk_fails_cleanly_and_holds_no_partial_blob(
    tmp_path, tmpfs, model, base_image, clean
):
    cache = tmpfs("cache", 24)  # the dependencies layer alone is about 60 MB compressed
    out = tmp_path / "out"
    out.mkdir()
    r = _build(model, base_image.ref, cache, tmp_path / "tmp", "--output", out / "image.tar")
    line = _one_line(r)
    assert "No space left on device" in line, line
    assert check_store(cache) == [], "a partial blob was left in the cache's tmp/"
    assert os.listdir(out) == []
    assert os.listdir(tmp_path / "tmp") == []

    # Once there is room again, the same cache gives the clean build's image.
    subprocess.run(["mount", "-o", "remount,size=512m", str(cache)], check=True)
    r = _build(model, base_image.ref, cache, tmp_path / "tmp", "--output", out / "image.tar")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (r.stdout.strip(), file_sha256(out / "image.tar")) == clean


def test_a_full_disk_is_named_in_the_error(tmp_path, tmpfs, model, base_image):
    small = tmpfs("out", 100)
    r = _build(model, base_image.ref, tmp_path / "cache", tmp_path / "tmp", "--output", small / "image.tar")
    assert str(small) in _one_line(r)
    cache = tmpfs("small-cache", 24)
    r = _build(model, base_image.ref, cache, tmp_path / "tmp2", "--output", tmp_path / "image.tar")
    assert str(cache) in _one_line(r)
