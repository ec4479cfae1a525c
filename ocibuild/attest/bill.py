"""The bill of materials of one built image: what the build put in it, as the build knew it.

Everything here was observed, not guessed: the base's OS packages read from its package databases
(``rootfs.packages``), every wheel the installer put in the dependencies layer with the sha256 of the wheel file it
installed, each model file's sha256 taken while the model layer was written, the scoring server and ocibuild's own
version. The formats (``spdx``, ``cyclonedx``) only render it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Protocol

from ..oci.digest import Digest
from ..oci.layer import FileDigest
from ..rootfs.packages import OsPackages


class Wheel(Protocol):
    """An installed Python distribution (``packaging``'s installer says which wheel file it came from)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def filename(self) -> str: ...  # "" when the installer could not say
    @property
    def sha256(self) -> str: ...  # of the wheel file; "" when unknown
    @property
    def license(self) -> str: ...  # as its metadata declares it; "" when it declares none


ModelFile = FileDigest  # a model file as the layer writer hashed it: its path in the image, size and sha256


@dataclass(frozen=True)
class RegisteredModel:
    """A model taken from a registry artifact: its files are that artifact's layer."""

    name: str
    version: str
    reference: str
    digest: str  # the artifact manifest's


@dataclass(frozen=True)
class Bill:
    name: str  # the image's (its model's) name and version
    version: str
    image: Digest  # the image manifest this bill describes
    platform: str  # "linux/amd64"
    base: str | None  # the base's reference, when it has one that means the same everywhere
    base_digest: Digest | None
    os: OsPackages | None  # None: built on scratch
    wheels: tuple[Wheel, ...]
    model_files: tuple[ModelFile, ...]
    registered_models: tuple[RegisteredModel, ...]
    server_version: str  # the scoring server ships with ocibuild: the same version
    tool_version: str
    created: int  # SOURCE_DATE_EPOCH: the documents' creation time

    def fingerprint(self) -> str:
        """A digest of everything the bill says: names the documents so that the same bill names them the same."""
        doc = {
            "name": self.name, "version": self.version, "image": str(self.image), "platform": self.platform,
            "base": self.base, "base_digest": str(self.base_digest) if self.base_digest else None,
            "os": asdict(self.os) if self.os else None,
            "wheels": [[w.name, w.version, w.filename, w.sha256, w.license] for w in self.wheels],
            "models": [asdict(m) for m in self.model_files] + [asdict(m) for m in self.registered_models],
            "server": self.server_version, "tool": self.tool_version, "created": self.created,
        }  # fmt: skip
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def pypi_purl(name: str, version: str) -> str:
    """``pkg:pypi/scikit-learn@1.9.1``: the purl spec's pypi names are lower case with ``-`` for runs of ``-_.``."""
    from packaging.utils import canonicalize_name

    return f"pkg:pypi/{canonicalize_name(name)}@{version}"


def oci_purl(digest: Digest | str, name: str | None = None, registry: bool = False) -> str:
    """``pkg:oci/ridge@sha256%3A...``: an artifact by its digest and the last part of its repository's name;
    with ``registry``, ``name`` is a registry reference and its repository goes in ``repository_url``."""
    from urllib.parse import quote

    repository = (name or "").split("@")[0]
    if repository.rfind(":") > repository.rfind("/"):
        repository = repository[: repository.rfind(":")]  # the tag
    last = repository.rsplit("/", 1)[-1].lower() or "image"
    purl = f"pkg:oci/{quote(last, safe='')}@{quote(str(digest), safe='')}"
    return f"{purl}?repository_url={quote(repository, safe='/:')}" if registry and "/" in repository else purl
