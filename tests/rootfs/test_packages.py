"""The OS packages of a base image, read from its package databases (the SBOM's list of the base)."""

from __future__ import annotations

import io
import tarfile
from functools import partial

from ocibuild.oci.descriptor import Platform
from ocibuild.rootfs.packages import OsPackage, os_packages, parse_apk_installed, parse_dpkg_status
from ocibuild.transports.open import open_base

DPKG = """\
Package: libstdc++6
Status: install ok installed
Architecture: amd64
Source: gcc-12 (12.2.0-14)
Version: 12.2.0-14+deb12u1
Description: GNU Standard C++ Library v3
 This package contains an additional runtime library.
 Version: not a field

Package: removed-one
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: python3.11
Status: install ok installed
Architecture: amd64
Version: 3.11.2-6+deb12u8
"""

APK = """\
C:Q1abc=
P:musl
V:1.2.4-r2
A:x86_64
L:MIT
o:musl

P:libssl3
V:3.1.4-r5
A:x86_64
L:Apache-2.0
o:openssl
"""


def _layer(files: dict[str, str]):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return partial(io.BytesIO, buf.getvalue())


def test_dpkg_status_lists_installed_packages_only_with_their_source():
    packages = parse_dpkg_status(DPKG)
    assert [(p.name, p.version, p.architecture, p.source) for p in packages] == [
        ("libstdc++6", "12.2.0-14+deb12u1", "amd64", "gcc-12"),
        ("python3.11", "3.11.2-6+deb12u8", "amd64", None),
    ]
    assert (
        packages[0].purl("debian")
        == "pkg:deb/debian/libstdc%2B%2B6@12.2.0-14%2Bdeb12u1?arch=amd64&upstream=gcc-12"
    )


def test_apk_database_with_licenses():
    packages = parse_apk_installed(APK)
    assert packages == [
        OsPackage("apk", "musl", "1.2.4-r2", "x86_64", "musl", "MIT"),
        OsPackage("apk", "libssl3", "3.1.4-r5", "x86_64", "openssl", "Apache-2.0"),
    ]
    assert packages[1].purl("alpine") == "pkg:apk/alpine/libssl3@3.1.4-r5?arch=x86_64&upstream=openssl"


def test_distroless_status_d_and_os_release_across_layers():
    lower = _layer({"etc/os-release": 'ID=debian\nVERSION_ID="12"\n', "var/lib/dpkg/status.d/base": DPKG})
    upper = _layer(
        {"var/lib/dpkg/status.d/tzdata": "Package: tzdata\nVersion: 2024a-0+deb12u1\nArchitecture: all\n"}
    )
    found = os_packages([lower, upper])
    assert (found.distro, found.distro_version, found.managers) == ("debian", "12", ("deb",))
    assert [p.name for p in found.packages] == ["libstdc++6", "python3.11", "tzdata"]


def test_an_image_without_a_database_says_so():
    found = os_packages([_layer({"usr/lib/os-release": "ID=fedora\nVERSION_ID=40\n", "bin/sh": ""})])
    assert found.packages == () and found.managers == () and found.distro == "fedora"


def test_the_real_debian_base(base_image):
    base = open_base(base_image.ref, Platform("linux", "amd64"))
    found = os_packages([partial(base.open_uncompressed, layer) for layer in base.layers])
    assert (found.distro, found.distro_version, found.managers) == ("debian", "12", ("deb",))
    by_name = {p.name: p for p in found.packages}
    assert (
        by_name["python3.11"].version.startswith("3.11.2") and by_name["python3.11"].architecture == "amd64"
    )
    assert "libstdc++6" in by_name and "libc6" in by_name
