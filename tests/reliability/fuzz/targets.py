"""atheris fuzz targets for the parsers of untrusted input (issue 6): ``python targets.py TARGET [libFuzzer flags]``.

TARGET is ``layer`` (a layer blob, gzip or plain, through the reader that finds the base's Python), ``document``
(manifest, index and config parsers), ``archive`` (an image tarball through ``ArchiveReader`` and the
oci-archive reader) or ``challenge`` (a ``WWW-Authenticate`` header, which must parse without any exception).
Any exception other than an ``OcibuildError`` is a crash. Seeds are in ``seeds/TARGET``; pass a
scratch corpus directory *first* so libFuzzer writes its findings there and not into the repository, e.g.

    python tests/reliability/fuzz/targets.py layer -max_total_time=60 -artifact_prefix=/tmp/ /tmp/corpus seeds/layer
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from functools import partial
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from ocibuild.errors import OcibuildError
    from ocibuild.oci import media
    from ocibuild.oci.archive import ArchiveReader, open_oci_archive
    from ocibuild.oci.descriptor import (
        Descriptor,
        Index,
        Manifest,
        Platform,
        canonical_json,
        parse_json,
        sniff_media_type,
    )
    from ocibuild.oci.digest import Digest, VerifyingReader
    from ocibuild.oci.image import Image, Layer, check_config
    from ocibuild.registry.auth import parse_challenges
    from ocibuild.rootfs.pyenv import detect_target_python


class _Blobs:
    origin = None

    def __init__(self, blobs):
        self.blobs = blobs

    def close(self):
        pass

    def open_blob(self, desc):
        return VerifyingReader(io.BytesIO(self.blobs[desc.digest]), desc.digest, desc.size)

    def has_blob(self, desc):
        return desc.digest in self.blobs


def layer(data: bytes) -> None:
    empty = "sha256:" + "0" * 64
    config = canonical_json(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [empty]}}
    )
    ldesc = Descriptor(media.OCI_LAYER_GZIP, Digest.of(data), len(data))
    cdesc = Descriptor(media.OCI_CONFIG, Digest.of(config), len(config))
    source = _Blobs({ldesc.digest: data, cdesc.digest: config})
    image = Image(Manifest.build(cdesc, [ldesc]), config, (Layer(ldesc, None, source),), "f")
    detect_target_python([partial(image.open_uncompressed, image.layers[0])], "amd64")


def document(data: bytes) -> None:
    for parse in (Manifest.parse, Index.parse, sniff_media_type):
        with contextlib.suppress(OcibuildError):
            parse(data, "doc")
    check_config(parse_json(data, "config"), "config")


_TMP = Path(tempfile.mkdtemp(prefix="ocibuild-fuzz-"))


def archive(data: bytes) -> None:
    path = _TMP / "a.tar"
    path.write_bytes(data)
    reader = ArchiveReader(path)
    for name in list(reader.members) + list(reader.links):
        with contextlib.suppress(OcibuildError):
            reader.read_small(name, limit=1 << 16)
    open_oci_archive(path, None, Platform())


def challenge(data: bytes) -> None:
    """Headers arrive as Latin-1 text; parsing one never raises, and what it gives is well-formed."""
    for c in parse_challenges(data.decode("latin-1")):
        if c.scheme != c.scheme.lower() or not c.scheme:
            raise AssertionError(f"scheme {c.scheme!r}")
        for name, value in c.params.items():
            if name != name.lower() or not isinstance(value, str):
                raise AssertionError(f"param {name!r}")


TARGETS = {"layer": layer, "document": document, "archive": archive, "challenge": challenge}


def main() -> None:
    target = TARGETS[sys.argv.pop(1)]

    def one(data: bytes) -> None:
        with contextlib.suppress(OcibuildError):
            target(data)

    atheris.Setup(sys.argv, one)
    atheris.Fuzz()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
