"""Every bad input of issue 2: one clear line on stderr, a non-zero exit, nothing left at the output path."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

from tests.conftest import run

pytestmark = pytest.mark.slow


@pytest.fixture
def inputs(tmp_path, example_model):
    return {"model": example_model.model, "score": example_model.score, "reqs": example_model.requirements}


def fails(tmp_path, *args, expect: str, output_flag="--output", output_name="image.tar"):
    """Run a package that must fail; check the one-line error and that the output dir holds nothing new."""
    outdir = tmp_path / "out"
    outdir.mkdir(exist_ok=True)
    dest = outdir / output_name
    argv = [sys.executable, "-m", "ocibuild", "package", *map(str, args)]
    if output_flag:
        argv += [output_flag, str(dest)]
    proc = run([*argv, "--cache", str(tmp_path / "cache")], check=False, timeout=600)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ocibuild: error:")]
    assert len(errors) == 1, proc.stderr
    assert expect in errors[0], errors[0]
    assert os.listdir(outdir) == [], os.listdir(outdir)  # no output, no temp leftovers
    return errors[0]


def test_missing_model(tmp_path, inputs, base_ref):
    fails(
        tmp_path,
        tmp_path / "nope.pkl",
        "--entry-script",
        inputs["score"],
        "--base",
        base_ref,
        expect="nope.pkl: no such file",
    )


def test_entry_script_missing(tmp_path, inputs, base_ref):
    fails(
        tmp_path,
        inputs["model"],
        "--entry-script",
        tmp_path / "score.py",
        "--base",
        base_ref,
        expect="score.py: no such file",
    )


def test_entry_script_not_python(tmp_path, inputs, base_ref):
    txt = tmp_path / "score.txt"
    txt.write_text("def init(): pass\ndef run(d): return d\n")
    fails(tmp_path, inputs["model"], "--entry-script", txt, "--base", base_ref, expect="not a Python file")
    bad = tmp_path / "broken.py"
    bad.write_text("def init(:\n")
    fails(
        tmp_path,
        inputs["model"],
        "--entry-script",
        bad,
        "--base",
        base_ref,
        expect="is not valid Python: line 1",
    )


def test_entry_script_without_init_or_run(tmp_path, inputs, base_ref):
    s = tmp_path / "score.py"
    s.write_text("def init():\n    pass\n\ndef helper(x):\n    return x\n")
    msg = fails(tmp_path, inputs["model"], "--entry-script", s, "--base", base_ref, expect="defines no run()")
    assert "init()" not in msg.split("defines no")[1].split(";")[0]


@pytest.mark.parametrize(
    "base,expect",
    [
        ("UPPER/Case:1", "must be lowercase"),
        ("containers-storage:x", "transport 'containers-storage' is not supported"),
        ("oci:/does/not/exist:tag", "is not an OCI image layout"),
        ("docker-archive:/does/not/exist.tar", "no such file"),
    ],
)
def test_unknown_or_malformed_base(tmp_path, inputs, base, expect):
    fails(tmp_path, inputs["model"], "--entry-script", inputs["score"], "--base", base, expect=expect)


def test_base_tag_missing(tmp_path, inputs, base_layout):
    fails(
        tmp_path,
        inputs["model"],
        "--entry-script",
        inputs["score"],
        "--base",
        f"oci:{base_layout}:nope",
        expect="no image tagged 'nope'",
    )


def test_base_blob_digest_mismatch(tmp_path, inputs, base_layout, base_image):
    copy = tmp_path / "corrupt-base"
    shutil.copytree(base_layout, copy)
    blobs = sorted((copy / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    layer = blobs[-1]  # the largest blob is the rootfs layer
    data = bytearray(layer.read_bytes())
    data[len(data) // 2] ^= 0x01
    layer.write_bytes(bytes(data))
    fails(
        tmp_path, inputs["model"], "--entry-script", inputs["score"], "--base", f"oci:{copy}:{base_image.tag}",
        expect=f"{layer.name[:12]}: content hashes to",
    )  # fmt: skip


def test_base_without_python(tmp_path, inputs):
    fails(
        tmp_path,
        inputs["model"],
        "--entry-script",
        inputs["score"],
        "--requirements",
        inputs["reqs"],
        "--base",
        "scratch",
        expect="has no Python 3 interpreter",
    )


def test_requirement_without_wheel_for_target(tmp_path, inputs, base_ref, package_index):
    # ocitest-cext is published as a source archive only, whose build compiles a C extension: no wheel can be had
    # for the image (a pure-Python one would be built into a wheel; this one is refused).
    fails(
        tmp_path,
        inputs["model"],
        "--entry-script",
        inputs["score"],
        "--pip",
        "ocitest-cext",
        "--index-url",
        package_index.url_with(),
        "--base",
        base_ref,
        expect="ocitest-cext",
    )


def test_output_in_missing_directory(tmp_path, inputs, base_ref):
    dest = tmp_path / "missing" / "image.tar"
    proc = run(
        [sys.executable, "-m", "ocibuild", "package", inputs["model"], "--entry-script", inputs["score"], "--base", base_ref, "--output", dest],
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip().splitlines()[-1].startswith("ocibuild: error: --output")
        and "does not exist" in proc.stderr
    )
    assert not (tmp_path / "missing").exists()


def test_one_bad_output_of_several_stops_before_anything_is_built(tmp_path, inputs, base_ref):
    """Several outputs are allowed (one build, every output): a second one whose folder does not exist fails
    first, with one line naming it, and the good one is not written either."""
    fails(
        tmp_path, inputs["model"], "--entry-script", inputs["score"], "--base", base_ref,
        "--oci-layout", tmp_path / "missing" / "layout",
        expect=f"--oci-layout {tmp_path / 'missing' / 'layout'}: directory",
    )  # fmt: skip


def test_no_output_option(tmp_path, inputs, base_ref):
    fails(
        tmp_path,
        inputs["model"],
        "--entry-script",
        inputs["score"],
        "--base",
        base_ref,
        expect="give at least one output",
        output_flag=None,
    )


def test_conda_packages_no_wheel_brings_refused(tmp_path, inputs, base_ref):
    env = tmp_path / "environment.yml"
    env.write_text(
        "name: x\ndependencies:\n  - python=3.11\n  - numpy\n  - conda-forge::ffmpeg\n  - pip:\n    - joblib\n"
    )
    fails(
        tmp_path,
        inputs["model"],
        "--entry-script",
        inputs["score"],
        "--conda-file",
        env,
        "--base",
        base_ref,
        expect="ffmpeg is a conda package with no Python distribution that no wheel brings; put it in the base "
        "image and pass --drop-conda ffmpeg",
    )


def test_conda_python_version_mismatch(tmp_path, inputs, base_ref):
    env = tmp_path / "environment.yml"
    env.write_text("dependencies:\n  - python=3.10\n  - pip:\n    - joblib\n")
    fails(
        tmp_path,
        inputs["model"],
        "--entry-script",
        inputs["score"],
        "--conda-file",
        env,
        "--base",
        base_ref,
        expect="3.10",
    )
