"""The SBOM of a built image: the build's ``Contents`` as a ``Bill``, rendered in the chosen format
(``documents`` attaches it); and reading one back from wherever an image is."""

from __future__ import annotations

from ..errors import InputError, UsageError
from ..oci.image import Image
from ..packaging.package import BuildResult
from ..registry.options import RegistryOptions
from ..version import __version__
from . import cyclonedx, spdx
from .bill import Bill, RegisteredModel

FORMATS = ("spdx", "cyclonedx", "none")
MEDIA_TYPES = {"spdx": spdx.MEDIA_TYPE, "cyclonedx": cyclonedx.MEDIA_TYPE}


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UsageError(f"--sbom {fmt!r}: use one of {', '.join(FORMATS)}")
    return fmt


def bill_of(result: BuildResult, epoch: int) -> Bill:
    """What the SBOM says about one built image."""
    image = result.image
    contents = result.contents
    base = image.base
    return Bill(
        name=result.model_name,
        version=result.model_version,
        image=image.digest,
        platform=str(image.platform),
        base=base.reference if base is not None else None,
        base_digest=base.digest if base is not None and base.layers else None,
        os=contents.os if contents else None,
        wheels=contents.wheels if contents else (),
        model_files=contents.model_files if contents else (),
        registered_models=tuple(
            RegisteredModel(m.info.name, m.info.version, m.reference, str(m.info.digest)) for m in contents.registered
        )
        if contents
        else (),
        server_version=__version__,
        tool_version=__version__,
        created=epoch,
    )


def render(bill: Bill, fmt: str) -> bytes:
    return spdx.render(bill) if fmt == "spdx" else cyclonedx.render(bill)


def read_sbom(
    reference: str, platform: str | None, fmt: str | None, registry: RegistryOptions, creds: str | None = None
) -> bytes:
    """The SBOM attached to the image ``reference`` names (``platform``'s, of an index): its document's bytes,
    verified against the digests that lead to it. ``creds`` (``USER:PASSWORD``) are for a registry reference."""
    from ..oci.descriptor import Platform
    from ..oci.digest import read_all
    from ..transports.location import Location
    from ..transports.open import open_location, open_referrers

    loc = Location.parse(reference, "image")
    if loc.ref is not None:
        registry = registry.for_target(loc.ref.registry, creds)
    elif creds:
        raise UsageError("--creds is for a registry reference; this one is local")
    wanted = Platform.parse(platform) if platform else None
    image = open_location(loc, wanted, options=registry)
    assert isinstance(image, Image)
    kinds = (MEDIA_TYPES[fmt],) if fmt else tuple(MEDIA_TYPES.values())
    found: list[Image] = []
    try:
        found = open_referrers(loc, image.digest, registry, kinds)
        if not found:
            what = f"no {fmt} SBOM" if fmt else "no SBOM"
            raise InputError(f"{reference}: {what} refers to its image {image.digest} ({image.platform})")
        artifact = found[-1]  # the latest attached
        with artifact.layers[0].open() as f:
            return read_all(f)
    finally:
        for opened in (image, *found):
            opened.close()
