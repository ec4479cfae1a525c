"""Tests for ocibuild.checks.native: installed dependencies against a base, on synthesized libraries and on the
host's real numpy and C/C++ runtime libraries."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from ocibuild.checks import native
from ocibuild.rootfs.elf import read_elf
from tests.checks.bases import GLIBCXX, LIBDIR, TARGET, debian, files
from tests.checks.elfgen import elf, install
from tests.packaging.test_pyenv import Layer

SITE = "opt/ocibuild/site-packages"
EXT = "cpython-311-x86_64-linux-gnu.so"
WITHOUT_STDCXX = Layer().whiteout(f"{LIBDIR}/libstdc++.so.6").whiteout(f"{LIBDIR}/libstdc++.so.6.0.30")


def check(site: Path, *layers: Layer, env: tuple[str, ...] = ()) -> tuple[list[native.Gap], list[native.Gap]]:
    needs = native.scan(site)
    assert native.Needs.from_json(json.loads(json.dumps(needs.to_json()))) == needs  # as the cache keeps it
    return native.check(needs, files(*(layers or (debian(),)), env=env), TARGET, SITE)


def test_everything_found_is_no_gap(tmp_path):
    install(tmp_path, "fastlib", {
        f"fastlib/_core.{EXT}": elf(needed=("libstdc++.so.6", "libm.so.6", "libc.so.6"),
                                    version_needs={"libstdc++.so.6": ["GLIBCXX_3.4.30"], "libc.so.6": ["GLIBC_2.34"]}),
    })  # fmt: skip
    assert check(tmp_path) == ([], [])


def test_a_missing_library_is_one_line_with_package_file_library_and_advice(tmp_path):
    install(tmp_path, "fastlib", {
        f"fastlib/_core.{EXT}": elf(needed=("libstdc++.so.6", "libc.so.6")),
        f"fastlib/_more.{EXT}": elf(needed=("libstdc++.so.6",)),
    })  # fmt: skip
    errors, warnings = check(tmp_path, debian(), WITHOUT_STDCXX)
    assert warnings == []
    assert [str(g) for g in errors] == [
        f"fastlib: fastlib/_core.{EXT} (and 1 more file) needs libstdc++.so.6, found neither in the dependencies "
        "nor in the base image; use a base with libstdc++6, such as python:3.11-slim, or install libstdc++6 in the base"
    ]


def test_runpath_origin_finds_a_library_of_the_dependencies(tmp_path):
    install(tmp_path, "torchish", {
        f"torchish/_C.{EXT}": elf(needed=("libtorchish.so",), runpath="$ORIGIN/lib"),
        "torchish/lib/libtorchish.so": elf(soname="libtorchish.so", needed=("libcudart.so.12",),
                                           runpath="$ORIGIN/../../nvidia/cuda_runtime/lib"),
    })  # fmt: skip
    install(
        tmp_path,
        "nvidia-cuda-runtime-cu12",
        {"nvidia/cuda_runtime/lib/libcudart.so.12": elf(soname="libcudart.so.12")},
    )
    assert check(tmp_path) == ([], [])
    # Without the RUNPATH the same library is not on the loader's path.
    install(tmp_path, "torchish", {f"torchish/_C.{EXT}": elf(needed=("libtorchish.so",))})
    errors, _ = check(tmp_path)
    assert [(g.dist, g.file, "libtorchish.so" in g.missing) for g in errors] == [
        ("torchish", f"torchish/_C.{EXT}", True)
    ]


def test_a_wheels_libs_folder_through_an_inherited_rpath(tmp_path):
    """auditwheel's layout: the extension module's RPATH names ``<pkg>.libs``; the grafted libraries there have
    no path of their own and find each other through the RPATH of the module that loaded them."""
    install(tmp_path, "scipyish", {
        f"scipyish/linalg/_flapack.{EXT}": elf(needed=("libopenblas-ab12.so",), rpath="$ORIGIN/../../scipyish.libs"),
        "scipyish.libs/libopenblas-ab12.so": elf(soname="libopenblas-ab12.so", needed=("libgfortran-cd34.so.5",)),
        "scipyish.libs/libgfortran-cd34.so.5": elf(soname="libgfortran-cd34.so.5", needed=("libquadmath-ef56.so.0",)),
        "scipyish.libs/libquadmath-ef56.so.0": elf(soname="libquadmath-ef56.so.0"),
    })  # fmt: skip
    assert check(tmp_path) == ([], [])


def test_a_glibc_version_too_new(tmp_path):
    install(tmp_path, "newlib", {
        f"newlib/_x.{EXT}": elf(needed=("libc.so.6",), version_needs={"libc.so.6": ["GLIBC_2.2.5", "GLIBC_2.38"]}),
    })  # fmt: skip
    errors, _ = check(tmp_path)
    assert [str(g) for g in errors] == [
        f"newlib: newlib/_x.{EXT} needs GLIBC_2.38 from libc.so.6, which the base image's libc.so.6 lacks (its "
        "newest is GLIBC_2.36); use a base image with a newer glibc, or a release of newlib built for an older one"
    ]


def test_a_glibcxx_version_is_checked_against_the_bases_libstdcxx(tmp_path):
    install(tmp_path, "cxxlib", {
        f"cxxlib/_x.{EXT}": elf(needed=("libstdc++.so.6",), version_needs={"libstdc++.so.6": ["GLIBCXX_3.4.32"]}),
    })  # fmt: skip
    errors, _ = check(tmp_path)
    assert len(errors) == 1
    assert "needs GLIBCXX_3.4.32 from libstdc++.so.6" in str(errors[0])
    assert "its newest is GLIBCXX_3.4.30" in str(errors[0])
    assert check(tmp_path, debian(glibcxx=(*GLIBCXX, "GLIBCXX_3.4.31", "GLIBCXX_3.4.32")))[0] == []


def test_a_bundled_libstdcxx_is_used_when_the_base_lacks_one(tmp_path):
    install(tmp_path, "bundler", {
        f"bundler/_x.{EXT}": elf(needed=("libstdc++-aa11.so.6.0.33",), rpath="$ORIGIN/../bundler.libs",
                                 version_needs={"libstdc++-aa11.so.6.0.33": ["GLIBCXX_3.4.33"]}),
        "bundler.libs/libstdc++-aa11.so.6.0.33": elf(soname="libstdc++-aa11.so.6.0.33", version_defs=("GLIBCXX_3.4.33",)),
    })  # fmt: skip
    assert check(tmp_path, debian(), WITHOUT_STDCXX) == ([], [])


def test_ld_so_conf_ld_library_path_and_default_folders_are_searched(tmp_path):
    vendor = Layer().file("./opt/vendor/lib/libvendor.so.1", elf()).file("./opt/app/libapp.so.2", elf())
    install(
        tmp_path,
        "vendored",
        {f"vendored/_x.{EXT}": elf(needed=("libvendor.so.1", "libapp.so.2", "libz.so.1"))},
    )
    errors, _ = check(tmp_path, debian(), vendor)
    assert [g.missing.split()[1] for g in errors] == ["libapp.so.2,"]
    assert check(tmp_path, debian(), vendor, env=("LD_LIBRARY_PATH=/opt/app",)) == ([], [])


def test_extension_modules_must_match_the_images_python(tmp_path):
    install(tmp_path, "mixed", {
        "mixed/old.cpython-310-x86_64-linux-gnu.so": elf(),
        "mixed/stable.abi3.so": elf(),
        "mixed/plain.so": elf(),
        "mixed/arm.cpython-311-aarch64-linux-gnu.so": elf(machine=183),
    })  # fmt: skip
    errors, _ = check(tmp_path)
    lines = sorted(str(g) for g in errors)
    assert len(lines) == 2
    assert lines[0].startswith("mixed: mixed/arm.cpython-311-aarch64-linux-gnu.so is built for arm64")
    assert lines[1].startswith("mixed: mixed/old.cpython-310-x86_64-linux-gnu.so is built for CPython 3.10")


def test_another_machines_helper_binaries_are_ignored(tmp_path):
    """debugpy ships injectors for several machines; only the image's are ever loaded."""
    install(
        tmp_path,
        "debugpyish",
        {"debugpyish/attach_linux_x86.so.1": elf(machine=3, bits=32, needed=("libnope.so",))},
    )
    assert check(tmp_path) == ([], [])


def test_a_missing_program_loader(tmp_path):
    install(
        tmp_path,
        "musltool",
        {"musltool/bin/tool": elf(interpreter="/lib/ld-musl-x86_64.so.1", executable=True)},
    )
    errors, _ = check(tmp_path)
    assert len(errors) == 1 and "needs the program loader /lib/ld-musl-x86_64.so.1" in str(errors[0])


def test_libraries_nothing_links_are_warnings_one_line_per_distribution(tmp_path):
    install(tmp_path, "nvshmemish", {
        "nvshmemish/lib/libnvshmem_host.so.3": elf(soname="libnvshmem_host.so.3"),
        "nvshmemish/lib/transport_ucx.so.3": elf(needed=("libucs.so.0", "libucp.so.0")),
        "nvshmemish/lib/transport_ib.so.3": elf(needed=("libmlx5.so.1",)),
    })  # fmt: skip
    errors, warnings = check(tmp_path)
    assert errors == []
    assert [str(w) for w in warnings] == [
        "nvshmemish: nvshmemish/lib/transport_ib.so.3 (and 1 more file) needs libmlx5.so.1, libucs.so.0, "
        "libucp.so.0, which the base image lacks (libraries nothing links: loaded only on demand); they fail only "
        "if used; install those libraries in the base image if you need them"
    ]


def test_a_library_already_loaded_by_its_soname(tmp_path):
    """triton's plugins need libtriton.so, which importing triton (its ``_C/libtriton.so`` module) loaded."""
    install(tmp_path, "tritonish", {
        "tritonish/_C/libtriton.so": elf(needed=("libc.so.6",)),
        "tritonish/plugins/libplugin.so": elf(needed=("libtriton.so",)),
    })  # fmt: skip
    assert check(tmp_path) == ([], [])


def test_the_gpu_driver_is_not_a_gap(tmp_path):
    install(tmp_path, "cudaish", {f"cudaish/_x.{EXT}": elf(needed=("libcuda.so.1", "libnvidia-ml.so.1"))})
    assert check(tmp_path) == ([], [])


def test_gui_libraries_of_opencv_suggest_the_headless_wheel(tmp_path):
    install(tmp_path, "opencv-python", {"cv2/cv2.abi3.so": elf(needed=("libGL.so.1",))})
    errors, _ = check(tmp_path)
    assert (
        errors[0].advice
        == "use opencv-python-headless instead of opencv-python (a server needs no GUI libraries)"
    )


# --- real files ---------------------------------------------------------------------------------------------------


def _host_numpy(site: Path) -> None:
    """Copy the host's numpy (a real manylinux wheel install) into ``site``: its extension modules, its bundled
    libraries and its dist-info."""
    spec = importlib.util.find_spec("numpy")
    if spec is None or spec.origin is None:
        pytest.skip("numpy is not installed")
    root = Path(spec.origin).parent.parent
    info = next(root.glob("numpy-*.dist-info"), None)
    if info is None or not (root / "numpy.libs").is_dir():
        pytest.skip("this numpy is not a manylinux wheel install")
    shutil.copytree(info, site / info.name)
    shutil.copytree(root / "numpy.libs", site / "numpy.libs")
    for so in (root / "numpy").rglob("*.so"):
        (site / so.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(so, site / so.relative_to(root))


def _host_runtime(*names: str) -> Layer:
    """A base layer of the host's own C and C++ runtime libraries."""
    layer = debian(stdcxx=False)
    for name in names:
        for directory in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"):
            path = Path(directory) / name
            if path.exists():
                layer.file(f"{LIBDIR}/{name}", path.read_bytes())
                break
        else:
            pytest.skip(f"no {name} on this host")
    return layer


RUNTIME = ("libc.so.6", "libm.so.6", "libgcc_s.so.1", "libpthread.so.0", "libdl.so.2", "ld-linux-x86-64.so.2")


def test_real_numpy_on_the_hosts_runtime(tmp_path):
    _host_numpy(tmp_path)
    needs = native.scan(tmp_path)
    assert all(dist == "numpy" for dist, _ in needs.files.values())
    assert any(rel.startswith("numpy.libs/") for rel in needs.files)
    base = files(_host_runtime(*RUNTIME, "libstdc++.so.6"))
    assert native.check(needs, base, TARGET, SITE) == ([], [])
    errors, _ = native.check(needs, files(_host_runtime(*RUNTIME)), TARGET, SITE)
    stdcxx = [g for g in errors if "libstdc++.so.6" in g.missing]
    assert len(stdcxx) == 1 and stdcxx[0].dist == "numpy" and stdcxx[0].file.endswith(".so")
    assert read_elf(tmp_path / stdcxx[0].file) is not None


def test_the_suffix_platform_follows_the_images_architecture(tmp_path):
    """CPython names arm64 ``aarch64-linux-gnu`` and 386 ``i386-linux-gnu``: not the wheel tags' machine names."""
    import dataclasses

    install(tmp_path, "armlib", {"armlib/_x.cpython-311-aarch64-linux-gnu.so": elf(machine=183)})
    needs = native.scan(tmp_path)
    arm64 = dataclasses.replace(TARGET, architecture="arm64")
    assert native.check(needs, files(debian()), arm64, SITE) == ([], [])
    install(tmp_path, "i386lib", {"i386lib/_x.cpython-311-i386-linux-gnu.so": elf(machine=3, bits=32)})
    needs = native.scan(tmp_path)
    errors, _ = native.check(needs, files(debian()), dataclasses.replace(TARGET, architecture="386"), SITE)
    assert [g.dist for g in errors] == ["armlib"]  # the arm64 module on a 386 image; the i386 one fits


def test_a_package_test_program_that_does_not_load_is_only_a_warning(tmp_path):
    """torch's wheel ships ``torch/bin/test_*`` programs whose RUNPATH does not reach ``torch/lib``; nothing runs
    them, so they warn, while the same gap in any other executable stops the build."""
    install(tmp_path, "torchish", {
        "torchish/bin/test_shim": elf(needed=("libtorchish_only.so",), interpreter="/lib64/ld-linux-x86-64.so.2",
                                      executable=True),
        "torchish/bin/tool": elf(needed=("libtorchish_only.so",), interpreter="/lib64/ld-linux-x86-64.so.2",
                                 executable=True),
    })  # fmt: skip
    errors, warnings = check(tmp_path)
    assert [e.file for e in errors] == ["torchish/bin/tool"]
    assert any("test_shim" in str(w) for w in warnings)
