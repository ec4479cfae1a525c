"""Issue 17, end to end: the two classic first-start crashes are caught at build time, through the real CLI, on
the real Debian Python base, with one clear line each.

- The base minus ``libstdc++6`` (a layer of whiteouts over the fixture, as a minimal base would lack it) with the
  example's scikit-learn: the build fails naming the package, the file, ``libstdc++.so.6`` and what to do; both
  when the dependencies are installed by this build and when their layer comes from the cache.
- An entry script importing ``pandas``, which the requirements do not list: the build fails naming ``pandas`` and
  the distribution to add; guarded by ``try/except ImportError`` it is a warning; ``--allow-import pandas``
  accepts it.
- And the example itself still builds: no false alarm on the real scikit-learn set.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import BaseImage, ExampleModel, run

pytestmark = pytest.mark.slow

LIBDIR = "usr/lib/x86_64-linux-gnu"
TAG = "py311-no-libstdcxx"


def ocibuild(*args, check=False, timeout=900):
    return run([sys.executable, "-m", "ocibuild", *map(str, args)], check=check, timeout=timeout)


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / digest.replace(":", "/")


def _put(layout: Path, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _blob(layout, digest).write_bytes(data)
    return {"digest": digest, "size": len(data)}


@pytest.fixture(scope="session")
def base_without_libstdcxx(base_image: BaseImage, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The base fixture with one more layer: whiteouts for every ``libstdc++.so.6*`` its layers hold, in a new OCI
    layout (the base's blobs linked, not copied). What a minimal Debian base without libstdc++6 looks like."""
    src = base_image.layout
    out = tmp_path_factory.mktemp("base-no-libstdcxx") / "oci"
    (out / "blobs" / "sha256").mkdir(parents=True)
    shutil.copy(src / "oci-layout", out / "oci-layout")
    for blob in (src / "blobs" / "sha256").iterdir():
        try:
            os.link(blob, out / "blobs" / "sha256" / blob.name)
        except OSError:
            shutil.copy(blob, out / "blobs" / "sha256" / blob.name)
    index = json.loads((src / "index.json").read_text())
    (entry,) = [
        m
        for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == base_image.tag
    ]
    manifest = json.loads(_blob(src, entry["digest"]).read_bytes())
    config = json.loads(_blob(src, manifest["config"]["digest"]).read_bytes())

    names = []
    for layer in manifest["layers"]:
        with gzip.open(_blob(src, layer["digest"])) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                name = member.name.lstrip("./")
                if re.fullmatch(rf"{LIBDIR}/libstdc\+\+\.so\.6[0-9.]*", name):
                    names.append(name.rsplit("/", 1)[1])
    assert "libstdc++.so.6" in names, f"the base fixture has no {LIBDIR}/libstdc++.so.6: {names}"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(names):
            tar.addfile(tarfile.TarInfo(f"{LIBDIR}/.wh.{name}"))
    layer = _put(out, buf.getvalue())
    config["rootfs"]["diff_ids"].append(layer["digest"])
    config.setdefault("history", []).append({"created_by": "tests: remove libstdc++6 (whiteouts)"})
    manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer})
    manifest["config"] = {**manifest["config"], **_put(out, json.dumps(config).encode())}
    desc = _put(out, json.dumps(manifest).encode())
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **desc,
        "annotations": {"org.opencontainers.image.ref.name": TAG},
    }]}  # fmt: skip
    (out / "index.json").write_text(json.dumps(index))
    return f"oci:{out}:{TAG}"


def _package(example: ExampleModel, base: str, out: Path, cache: Path, *extra, script: Path | None = None):
    return ocibuild(
        "package", example.model, "--entry-script", script or example.score, "--requirements",
        example.requirements, "--base", base, "--oci-layout", out, "--cache", cache, *extra,
    )  # fmt: skip


def _errors(stderr: str) -> list[str]:
    """The error's lines: the first after ``ocibuild: error:``, then one line per further gap."""
    lines = stderr.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("ocibuild: error: "))
    return [lines[first][len("ocibuild: error: ") :], *lines[first + 1 :]]


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checks-cache")


def test_the_example_builds_with_its_checks(example_model, base_ref, shared_cache, tmp_path):
    r = _package(example_model, base_ref, tmp_path / "out", shared_cache)
    assert r.returncode == 0, r.stderr[-3000:]
    checked = [line for line in r.stderr.splitlines() if line.startswith("checked ")]
    assert len(checked) == 2, r.stderr
    assert "native files of the dependencies against the base: they load" in checked[0]
    assert "of the entry script: they resolve" in checked[1]
    assert "warning:" not in r.stderr
    print("\n".join(checked))


def _assert_libstdcxx_gaps(r) -> None:
    assert r.returncode == 1, r.stderr[-3000:]
    errors = _errors(r.stderr)
    ours = [e for e in errors if "libstdc++.so.6" in e]
    assert ours and len(ours) == len(errors), errors  # every line is a gap, and one line each
    for line in ours:
        dist, _, rest = line.partition(": ")
        assert dist in ("scikit-learn", "numpy", "scipy"), line
        assert re.match(r"\S+\.so( \(and \d+ more files?\))? needs libstdc\+\+\.so\.6,", rest), line
        assert line.endswith(
            "use a base with libstdc++6, such as python:3.11-slim, or install libstdc++6 in the base"
        ), line
    assert {e.split(":")[0] for e in ours} == {"scikit-learn", "numpy", "scipy"}


def test_a_base_without_libstdcxx_fails_at_build_time(example_model, base_without_libstdcxx, tmp_path):
    r = _package(example_model, base_without_libstdcxx, tmp_path / "out", tmp_path / "cache")
    _assert_libstdcxx_gaps(r)
    assert not (tmp_path / "out").exists()  # stopped before anything was written
    print("\n".join(_errors(r.stderr)))


def test_a_cached_dependencies_layer_is_checked_against_the_new_base(
    example_model, base_ref, base_without_libstdcxx, shared_cache, tmp_path
):
    """The dependencies layer built on the full base is reused as is on the base without libstdc++6: its
    remembered needs are checked against the new base without its files."""
    assert _package(example_model, base_ref, tmp_path / "ok", shared_cache).returncode == 0
    r = _package(example_model, base_without_libstdcxx, tmp_path / "out", shared_cache)
    assert "dependencies: cached" in r.stderr
    _assert_libstdcxx_gaps(r)


def _script(tmp_path: Path, example: ExampleModel, extra: str) -> Path:
    text = example.score.read_text().replace("def init():\n", f"def init():\n{extra}", 1)
    assert extra in text
    path = tmp_path / "score.py"
    path.write_text(text)
    return path


PANDAS = "    import pandas as pd\n"
GUARDED = "    try:\n        import pandas as pd\n    except ImportError:\n        pd = None\n"


def test_an_unlisted_import_fails_with_the_distribution_to_add(
    example_model, base_ref, shared_cache, tmp_path
):
    script = _script(tmp_path, example_model, PANDAS)
    line = 1 + script.read_text().splitlines().index(PANDAS.rstrip("\n"))
    r = _package(example_model, base_ref, tmp_path / "out", shared_cache, script=script)
    assert r.returncode == 1, r.stderr[-3000:]
    assert _errors(r.stderr) == [
        f"score.py:{line}: imports pandas, which is not in the image; add pandas to the requirements, or pass "
        "--allow-import pandas if the image gets it another way"
    ]


def test_a_guarded_import_is_a_warning(example_model, base_ref, shared_cache, tmp_path):
    script = _script(tmp_path, example_model, GUARDED)
    r = _package(example_model, base_ref, tmp_path / "out", shared_cache, script=script)
    assert r.returncode == 0, r.stderr[-3000:]
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "imports pandas (inside try/except ImportError)" in warnings[0], r.stderr


def test_allow_import_accepts_it(example_model, base_ref, shared_cache, tmp_path):
    script = _script(tmp_path, example_model, PANDAS)
    r = _package(
        example_model, base_ref, tmp_path / "out", shared_cache, "--allow-import", "pandas", script=script
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "pandas" not in r.stderr


def test_skip_check_turns_a_check_off(example_model, base_without_libstdcxx, shared_cache, tmp_path):
    r = _package(
        example_model, base_without_libstdcxx, tmp_path / "out", shared_cache, "--skip-check", "native"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "native files" not in r.stderr
