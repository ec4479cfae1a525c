"""``ocibuild inspect REF``: what an image is made of (manifest, config, layers with sizes and history), or, for a
multi-platform image, the platforms its index lists."""

from __future__ import annotations

import json

from .errors import OcibuildError, UsageError
from .events import human_size
from .oci.descriptor import Platform
from .oci.image import ImageIndex
from .registry.options import RegistryOptions
from .transports.location import Location
from .transports.open import open_base, open_location


def inspect_reference(
    ref: str,
    platform: str | None = None,
    raw: bool = False,
    registry: RegistryOptions | None = None,
    creds: str | None = None,
) -> str:
    """What ``ref`` holds, as text (``raw``: its manifest and config as JSON): an index's platforms, or with
    ``platform`` one of them (linux/amd64 when ``ref`` is a single image that is not said to be another).
    ``creds`` (``USER:PASSWORD``) are for a registry ``ref``."""
    loc = Location.parse(ref)
    if loc.transport == "scratch":
        raise UsageError("scratch is the empty image: there is nothing to inspect")
    registry = registry or RegistryOptions()
    if loc.ref is not None:
        registry = registry.for_target(loc.ref.registry, creds)
    elif creds:
        raise UsageError("--creds is for a registry reference; this one is local")
    if platform is None:
        if (index := _index(loc, registry)) is not None:
            return _index_text(ref, index, raw)
        platform = "linux/amd64"
    image = open_base(ref, Platform.parse(platform), options=registry)
    image.close()
    if raw:
        return json.dumps(
            {"digest": str(image.digest), "manifest": json.loads(image.manifest.raw), "config": image.config},
            indent=2,
        )
    c = image.config
    run = c.get("config") or {}
    history = [h for h in (c.get("history") or []) if not h.get("empty_layer")]
    lines = [
        f"Reference:    {ref}",
        f"Digest:       {image.digest}",
        f"MediaType:    {image.manifest.media_type}",
        f"Platform:     {image.platform}",
        f"Created:      {c.get('created', '')}",
        f"Entrypoint:   {json.dumps(run.get('Entrypoint'))}",
        f"Cmd:          {json.dumps(run.get('Cmd'))}",
        f"WorkingDir:   {run.get('WorkingDir', '')}",
        f"ExposedPorts: {', '.join(sorted(run.get('ExposedPorts') or {}))}",
        "Env:",
        *[f"  {e}" for e in run.get("Env") or []],
        "Labels:",
        *[f"  {k}={v}" for k, v in sorted((run.get("Labels") or {}).items())],
        f"Layers ({len(image.layers)}, {human_size(sum(d.size for d in image.layers))}):",
    ]
    for i, (d, diff_id) in enumerate(zip(image.layers, image.diff_ids, strict=True)):
        created_by = str(history[i].get("created_by") or "") if len(history) == len(image.layers) else ""
        lines.append(
            f"  {i:>2}  {d.digest}  {human_size(d.size):>9}  {d.media_type.rsplit('.', 1)[-1]:<9} {created_by[:80]}"
        )
        lines.append(f"      diff_id {diff_id}")
    return "\n".join(lines)


def _index(loc: Location, registry: RegistryOptions) -> ImageIndex | None:
    """The whole index ``loc`` names, or None when it names one image, several under one name (the platform
    picks), or something that does not read as an index of images (the one-platform path says what is wrong)."""
    if loc.transport == "docker-archive":
        return None
    try:
        entry = open_location(loc, all_platforms=True, options=registry)
    except OcibuildError:
        return None
    entry.close()
    return entry if isinstance(entry, ImageIndex) else None


def _index_text(ref: str, index: ImageIndex, raw: bool) -> str:
    if raw:
        return json.dumps({"digest": str(index.digest), "index": json.loads(index.index.raw)}, indent=2)
    lines = [
        f"Reference:    {ref}",
        f"Digest:       {index.digest}",
        f"MediaType:    {index.index.media_type}",
        f"Platforms ({len(index.images)}):",
    ]
    for desc, image in zip(index.index.manifests, index.images, strict=True):
        platform = str(desc.platform) if desc.platform else "(none)"
        size = human_size(sum(d.size for d in image.layers))
        lines.append(f"  {platform:<16} {image.digest}  {len(image.layers):>3} layers  {size:>9}")
    lines.append("(one platform's image: --platform OS/ARCH)")
    return "\n".join(lines)
