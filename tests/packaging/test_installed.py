"""What ``install_dependencies`` returns for the SBOM (``packaging.installed``): each installed distribution's name,
version and license from its METADATA, and the name and sha256 of the wheel file it came from, with the real
installers (uv and pip) against the real pypiserver of ``tests/conftest.py`` and a find-links folder of wheels
written here; the parsing of file names, locks and reports on their own with plain strings."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from ocibuild.packaging import wheels
from ocibuild.packaging.installed import (
    InstalledWheel,
    WheelFile,
    WheelOrigins,
    installed_wheels,
    wheel_filename_tags,
)
from ocibuild.packaging.sdist import SourceBuild, build_pure_wheel
from ocibuild.packaging.sources import PackageSources
from ocibuild.packaging.wheels import _find_uv, install_dependencies
from ocibuild.rootfs.pyenv import TargetPython
from tests.conftest import INDEX_PASSWORD

INSTALLERS = [
    "pip",
    pytest.param("uv", marks=pytest.mark.skipif(_find_uv() is None, reason="uv is not installed")),
]


def target() -> TargetPython:
    return TargetPython((3, 11), 2, "/usr/bin/python3", "glibc", (2, 36), "amd64", None)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_wheel(folder: Path, name: str, version: str, tags: list[str], metadata: str = "") -> Path:
    """A wheel file named for ``tags`` (compressed into one file name), whose WHEEL lists them one per line."""
    module = name.replace("-", "_")
    py, abi, plat = (sorted({t.split("-")[i] for t in tags}) for i in range(3))
    path = folder / f"{module}-{version}-{'.'.join(py)}-{'.'.join(abi)}-{'.'.join(plat)}.whl"
    info = f"{module}-{version}.dist-info"
    pure = all(t.endswith("-any") for t in tags)
    files = {
        f"{module}/__init__.py": f"NAME = {f'{name} {version}'!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.4\nName: {name}\nVersion: {version}\n{metadata}",
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: ocibuild-tests\nRoot-Is-Purelib: {str(pure).lower()}\n"
        + "".join(f"Tag: {t}\n" for t in tags),
    }
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for member, text in files.items():
            z.writestr(member, text)
        z.writestr(f"{info}/RECORD", "".join(f"{m},,\n" for m in [*files, f"{info}/RECORD"]))
    return path


MIT_CLASSIFIERS = (
    "Classifier: License :: OSI Approved :: MIT License\nClassifier: Programming Language :: Python\n"
)
LONG_LICENSE = (
    "License: Copyright (c) the authors\n        \n        Permission is hereby granted, free of charge\n"
)


@pytest.fixture
def wheelhouse(tmp_path) -> Path:
    """A find-links folder: a wheel with an SPDX License-Expression, and one whose License: is the license's text
    (its classifiers name it) in an x86_64 wheel beside the same version's wheels for other platforms and for any
    (which the lock lists too: its tags say which of the two was installed)."""
    folder = tmp_path / "wheelhouse"
    make_wheel(folder, "ocitest-spdx", "2.0", ["py3-none-any"], "License-Expression: Apache-2.0 OR MIT\n")
    make_wheel(
        folder, "Ocitest_Plat", "1.5", ["py3-none-manylinux_2_17_aarch64", "py3-none-manylinux2014_aarch64"]
    )
    make_wheel(
        folder,
        "Ocitest_Plat",
        "1.5",
        ["py3-none-manylinux_2_17_x86_64", "py3-none-manylinux2014_x86_64"],
        LONG_LICENSE + MIT_CLASSIFIERS,
    )
    make_wheel(folder, "Ocitest_Plat", "1.5", ["py3-none-musllinux_1_2_x86_64"])
    # fits too, but the installers prefer the x86_64 wheel
    make_wheel(folder, "Ocitest_Plat", "1.5", ["py3-none-any"])
    return folder


# ---- wheel file names ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "filename, tags",
    [
        ("six-1.17.0-py2.py3-none-any.whl", {"py2-none-any", "py3-none-any"}),
        (
            "scikit_learn-1.9.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
            {"cp311-cp311-manylinux_2_27_x86_64", "cp311-cp311-manylinux_2_28_x86_64"},
        ),
        (
            "MarkupSafe-3.0.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            {"cp311-cp311-manylinux_2_17_x86_64", "cp311-cp311-manylinux2014_x86_64"},
        ),
        ("pkg-1.0-1b-py3-none-any.whl", {"py3-none-any"}),  # a build tag
        ("pkg-1.0-2-cp38.cp39-abi3-linux_x86_64.whl", {"cp38-abi3-linux_x86_64", "cp39-abi3-linux_x86_64"}),
        (
            "pkg-1.0-py2.py3-none-macosx_10_9_x86_64.macosx_11_0_arm64.whl",
            {
                "py2-none-macosx_10_9_x86_64",
                "py2-none-macosx_11_0_arm64",
                "py3-none-macosx_10_9_x86_64",
                "py3-none-macosx_11_0_arm64",
            },
        ),
        ("Pkg-1.0-PY3-None-Any.WHL", {"py3-none-any"}),
        ("pkg-1.0.tar.gz", set()),
        ("pkg-1.0-py3-none.whl", set()),
        ("pkg-1.0-1-2-py3-none-any.whl", set()),
        ("", set()),
    ],
)
def test_wheel_filename_tags(filename, tags):
    assert wheel_filename_tags(filename) == tags


def locked(*filenames: str) -> list[WheelFile]:
    return [WheelFile(f, hashlib.sha256(f.encode()).hexdigest()) for f in filenames]


def test_the_locked_wheel_is_the_one_whose_tags_fit():
    origins = WheelOrigins()
    arm, amd, musl = locked(
        "scikit_learn-1.9.1-cp311-cp311-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl",
        "scikit_learn-1.9.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
        "scikit_learn-1.9.1-cp311-cp311-musllinux_1_2_x86_64.whl",
    )
    origins.locked[("scikit-learn", "1.9.1")] = [arm, amd, musl]
    installed = frozenset({"cp311-cp311-manylinux_2_27_x86_64", "cp311-cp311-manylinux_2_28_x86_64"})
    assert origins.find("scikit-learn", "1.9.1", installed) == amd
    assert origins.find("Scikit_Learn", "1.9.1.0", installed) == amd  # PEP 503 names, PEP 440 versions
    assert origins.find("scikit-learn", "1.9.1", frozenset({"cp311-cp311-musllinux_1_2_x86_64"})) == musl
    # another version's files are not this one's
    assert origins.find("scikit-learn", "1.9.0", installed) is None
    assert origins.find("scikit-learn", "1.9.1", frozenset({"cp312-cp312-manylinux_2_28_x86_64"})) is None
    # one tag more than the file name declares: not that file
    assert origins.find("scikit-learn", "1.9.1", installed | {"cp311-cp311-manylinux_2_17_x86_64"}) is None


def test_several_fitting_locked_wheels_take_the_first_in_lock_order():
    origins = WheelOrigins()
    first, second = locked("pkg-1.0-1-py3-none-any.whl", "pkg-1.0-py2.py3-none-any.whl")
    origins.locked[("pkg", "1")] = [first, second]
    assert origins.find("pkg", "1.0", frozenset({"py3-none-any"})) == first
    assert origins.find("pkg", "1.0", frozenset({"py2-none-any"})) == second


def test_pylock_gives_file_names_never_urls(tmp_path):
    lock = tmp_path / "pylock.toml"
    lock.write_text(
        'lock-version = "1.0"\ncreated-by = "uv"\n\n[[packages]]\nname = "Pkg.One"\nversion = "1.0+local"\n'
        'sdist = { url = "https://bob:s3cret@idx.example/f/pkg_one-1.0+local.tar.gz", hashes = { sha256 = "aa" } }\n'
        'wheels = [{ url = "https://bob:s3cret@idx.example/f/pkg_one-1.0%2Blocal-py3-none-any.whl?x=1#frag", '
        'hashes = { sha256 = "ABCDEF" } }, { path = "wheels/pkg_one-1.0+local-py2-none-any.whl", hashes = { '
        'sha256 = "01" } }]\n\n[[packages]]\nname = "two"\nversion = "2"\n'
        'wheels = [{ name = "two-2-py3-none-any.whl", url = "https://idx.example/download?id=7", hashes = {} }]\n'
    )
    origins = WheelOrigins()
    origins.add_pylock(lock)
    assert origins.locked == {
        ("pkg-one", "1+local"): [
            WheelFile("pkg_one-1.0+local-py3-none-any.whl", "abcdef"),
            WheelFile("pkg_one-1.0+local-py2-none-any.whl", "01"),
        ],
        ("two", "2"): [WheelFile("two-2-py3-none-any.whl", "")],
    }
    assert "s3cret" not in repr(origins)
    origins.add_pylock(tmp_path / "absent.toml")  # nothing to read: nothing added, no error
    (tmp_path / "bad.toml").write_text("[[packages]\n")
    origins.add_pylock(tmp_path / "bad.toml")
    assert len(origins.locked) == 2


def test_pip_report_gives_the_very_file(tmp_path):
    report = tmp_path / "report.json"
    install = [
        {"metadata": {"name": "Six", "version": "1.17.0"}, "download_info": {
            "url": "https://bob:s3cret@idx.example/six-1.17.0-py2.py3-none-any.whl",
            "archive_info": {"hashes": {"sha256": "47" * 32}, "hash": "sha256=" + "47" * 32}}},
        {"metadata": {"name": "old", "version": "1"}, "download_info": {
            "url": "file:///w/old-1-py3-none-any.whl", "archive_info": {"hash": "sha256=" + "AB" * 32}}},
        {"metadata": {"name": "md5only", "version": "1"}, "download_info": {
            "url": "file:///w/md5only-1-py3-none-any.whl", "archive_info": {"hash": "md5=00"}}},
        {"metadata": {"name": "broken"}, "download_info": {"url": "file:///w/broken-1-py3-none-any.whl"}},
    ]  # fmt: skip
    report.write_text(json.dumps({"version": "1", "install": install}))
    origins = WheelOrigins()
    origins.add_pip_report(report)
    assert origins.exact == {
        ("six", "1.17"): WheelFile("six-1.17.0-py2.py3-none-any.whl", "47" * 32),
        ("old", "1"): WheelFile("old-1-py3-none-any.whl", "ab" * 32),
        ("md5only", "1"): WheelFile("md5only-1-py3-none-any.whl", ""),
    }
    assert origins.find("six", "1.17.0", frozenset({"py3-none-any"})) == origins.exact[("six", "1.17")]
    for text in ("", "[]", '{"install": 3}', "{not json"):
        report.write_text(text)
        WheelOrigins().add_pip_report(report)  # an unreadable report is no report, not a failed install


# ---- METADATA: name, version, license --------------------------------------------------------------------------


def dist_info(site: Path, folder: str, metadata: str | None, wheel: str | None = None) -> None:
    info = site / folder
    info.mkdir(parents=True)
    if metadata is not None:
        (info / "METADATA").write_text(metadata)
    if wheel is not None:
        (info / "WHEEL").write_text(wheel)


@pytest.mark.parametrize(
    "metadata, license",
    [
        ("License-Expression: MIT\nLicense: BSD\n" + MIT_CLASSIFIERS, "MIT"),
        ("License: BSD-3-Clause\n" + MIT_CLASSIFIERS, "BSD-3-Clause"),
        (LONG_LICENSE + MIT_CLASSIFIERS, "MIT License"),
        ("License: " + "x" * 101 + "\n" + MIT_CLASSIFIERS, "MIT License"),
        ("License: " + "x" * 100 + "\n", "x" * 100),
        ("License: UNKNOWN\nClassifier: License :: OSI Approved\n", ""),
        (
            MIT_CLASSIFIERS + "Classifier: License :: OSI Approved :: Apache Software License\n"
            "Classifier: License :: OSI Approved :: MIT License\nClassifier: License :: Public Domain\n",
            "MIT License AND Apache Software License AND Public Domain",
        ),
        ("", ""),
    ],
)
def test_license_from_metadata(tmp_path, metadata, license):
    dist_info(
        tmp_path, "pkg-1.0.dist-info", f"Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n{metadata}\nbody\n"
    )
    assert installed_wheels(tmp_path) == (InstalledWheel("pkg", "1.0", "", "", license),)


def test_only_top_level_dist_info_folders_sorted_by_canonical_name(tmp_path):
    dist_info(tmp_path, "zeta-1.dist-info", "Name: Zeta\nVersion: 1\n")
    dist_info(tmp_path, "alpha_beta-2.0.dist-info", "Name: Alpha_Beta\nVersion: 2.0\n", "Tag: py3-none-any\n")
    dist_info(tmp_path, "alpha-3.dist-info", "Name: alpha\nVersion: 3\n")
    dist_info(tmp_path, "nometa-0.1.dist-info", None)  # name and version from the folder's name
    dist_info(tmp_path / "vendored", "inner-1.dist-info", "Name: inner\nVersion: 1\n")
    (tmp_path / "stray-1.dist-info").write_text("not a folder")
    origins = WheelOrigins(
        exact={("alpha-beta", "2"): WheelFile("alpha_beta-2.0-py3-none-any.whl", "0" * 64)}
    )
    assert [(w.name, w.version, w.filename) for w in installed_wheels(tmp_path, origins)] == [
        ("alpha", "3", ""),
        ("Alpha_Beta", "2.0", "alpha_beta-2.0-py3-none-any.whl"),
        ("nometa", "0.1", ""),
        ("Zeta", "1", ""),
    ]
    assert installed_wheels(tmp_path / "empty-does-not-exist") == ()


# ---- JSON -------------------------------------------------------------------------------------------------------


def test_json_round_trip():
    wheel = InstalledWheel(
        "scikit-learn", "1.9.1", "scikit_learn-1.9.1-py3-none-any.whl", "0f" * 32, "BSD-3-Clause"
    )
    doc = wheel.to_json()
    assert doc == {"name": "scikit-learn", "version": "1.9.1", "filename": "scikit_learn-1.9.1-py3-none-any.whl",
                   "sha256": "0f" * 32, "license": "BSD-3-Clause"}  # fmt: skip
    assert InstalledWheel.from_json(json.loads(json.dumps(doc))) == wheel
    unknown = InstalledWheel("x", "1", "", "", "")
    assert InstalledWheel.from_json({**unknown.to_json(), "later": 1}) == unknown


@pytest.mark.parametrize(
    "change, error",
    [
        ({"sha256": None}, TypeError),
        ({"version": 1}, TypeError),
        ({"name": ""}, ValueError),
        ({"sha256": "0F" * 32}, ValueError),
        ({"sha256": "abc"}, ValueError),
        ({"filename": "https://idx.example/x-1-py3-none-any.whl"}, ValueError),
    ],
)
def test_malformed_json_is_refused(change, error):
    doc = InstalledWheel("x", "1", "x-1-py3-none-any.whl", "ab" * 32, "MIT").to_json()
    with pytest.raises(error):
        InstalledWheel.from_json({**doc, **change})


def test_incomplete_or_wrong_json_is_refused():
    doc = InstalledWheel("x", "1", "", "", "").to_json()
    del doc["license"]
    with pytest.raises(KeyError):
        InstalledWheel.from_json(doc)
    with pytest.raises(TypeError):
        InstalledWheel.from_json(["x", "1", "", "", ""])  # type: ignore[arg-type]


# ---- the real installers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("installer", INSTALLERS)
def test_wheel_from_a_private_index_is_named_and_hashed(package_index, isolated_env, tmp_path, installer):
    site = tmp_path / "site"
    sources = PackageSources.create(index_url=package_index.url_with())
    result = install_dependencies(target(), site, packages=["ocitest-pure==1.0"], sources=sources,
                                  installer=installer)  # fmt: skip
    (served,) = package_index.dists.glob("ocitest_pure-1.0-*.whl")
    assert result == (InstalledWheel("ocitest-pure", "1.0", served.name, sha256_of(served), ""),)
    text = json.dumps([w.to_json() for w in result])
    assert package_index.host not in text and INDEX_PASSWORD not in text and "://" not in text


@pytest.mark.parametrize("installer", INSTALLERS)
def test_platform_wheel_and_license_from_find_links(wheelhouse, isolated_env, tmp_path, installer):
    """The x86_64 wheel of four of one version is the one named; the licenses are METADATA's."""
    site = tmp_path / "site"
    sources = PackageSources.create(find_links=[wheelhouse], no_index=True)
    result = install_dependencies(target(), site, packages=["ocitest-plat", "ocitest-spdx"], sources=sources,
                                  installer=installer)  # fmt: skip
    plat = wheelhouse / "Ocitest_Plat-1.5-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"
    spdx = wheelhouse / "ocitest_spdx-2.0-py3-none-any.whl"
    assert result == (
        InstalledWheel("Ocitest_Plat", "1.5", plat.name, sha256_of(plat), "MIT License"),
        InstalledWheel("ocitest-spdx", "2.0", spdx.name, sha256_of(spdx), "Apache-2.0 OR MIT"),
    )


@pytest.mark.parametrize("installer", INSTALLERS)
def test_wheel_built_from_a_source_archive_is_named_and_hashed(
    package_index, isolated_env, tmp_path, installer
):
    site = tmp_path / "site"
    sources = PackageSources.create(find_links=[package_index.dists], no_index=True)
    result = install_dependencies(target(), site, packages=["ocitest-puresrc", "ocitest-pure"], sources=sources,
                                  installer=installer)  # fmt: skip

    def runner(cmd, env):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        return proc.returncode, (proc.stdout + proc.stderr).splitlines()

    # The same archive builds the same bytes (tests/packaging/test_sources.py): build it again to know them.
    again = build_pure_wheel(SourceBuild("ocitest-puresrc", "==1.0"), tmp_path / "again", env=dict(os.environ),
                             source_args=["--no-index", "--find-links", str(package_index.dists)], run=runner,
                             platform="cp311 manylinux_2_36_x86_64")  # fmt: skip
    (served,) = package_index.dists.glob("ocitest_pure-1.0-*.whl")
    assert result == (
        InstalledWheel("ocitest-pure", "1.0", served.name, sha256_of(served), ""),
        InstalledWheel("ocitest-puresrc", "1.0", again.name, sha256_of(again), ""),
    )


def test_pip_without_report_still_installs(wheelhouse, isolated_env, tmp_path, monkeypatch):
    """A pip older than 22.2 has no --report: the files are unknown, the install and the metadata are not."""
    monkeypatch.setattr(wheels, "_pip_install_options", lambda env: "  --target <dir>\n")
    site = tmp_path / "site"
    sources = PackageSources.create(find_links=[wheelhouse], no_index=True)
    result = install_dependencies(target(), site, packages=["ocitest-spdx"], sources=sources, installer="pip")
    assert result == (InstalledWheel("ocitest-spdx", "2.0", "", "", "Apache-2.0 OR MIT"),)


def test_nothing_to_install_is_an_empty_tuple(tmp_path):
    assert install_dependencies(target(), tmp_path / "site") == ()
