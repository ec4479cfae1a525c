"""``scratch``: the empty image of a platform, so that building on nothing is building on an image like any other;
and the empty config that artifacts name."""

from __future__ import annotations

from . import media
from .descriptor import Descriptor, Manifest, Platform, canonical_json
from .digest import Digest
from .image import Image

# What image-spec 1.1 asks an artifact without a config to name: the two bytes ``{}``.
EMPTY_CONFIG = b"{}"
EMPTY_DESCRIPTOR = Descriptor(media.OCI_EMPTY, Digest.of(EMPTY_CONFIG), len(EMPTY_CONFIG))


def empty_image(platform: Platform) -> Image:
    """An image with no layers, whose config names only ``platform`` (as ``FROM scratch`` starts)."""
    config: dict = {"architecture": platform.architecture, "os": platform.os}
    if platform.variant:
        config["variant"] = platform.variant
    config["rootfs"] = {"type": "layers", "diff_ids": []}
    raw = canonical_json(config)
    manifest = Manifest.build(Descriptor(media.OCI_CONFIG, Digest.of(raw), len(raw)), [])
    return Image(manifest, raw, (), name="scratch")


def is_empty(image: Image) -> bool:
    """Whether ``image`` is scratch: nothing to name as a base, nothing to copy."""
    return not image.layers and image.name == "scratch"
