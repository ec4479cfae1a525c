"""Change an image: a base ``Image`` + layers + config changes → a new ``Image``, reproducibly.

The base is never modified: its config is copied and extended, its layers are shared as they are (only Docker
media-type labels are mapped to their OCI names; the bytes stay the same). Every timestamp is the given build time,
and documents are canonical JSON, so the same inputs give the same digest. The new image remembers its base and
what was added (``Image.base``, ``Image.added``), for publishers that rebuild it another way (the Dockerfile).
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import media
from .descriptor import Descriptor, Manifest, canonical_json
from .digest import Digest
from .image import Addendum, Image

# What a base's config says about how the base itself was built: not true of the new image.
_LEGACY_FIELDS = ("container", "container_config", "docker_version", "id", "parent")


@dataclass(frozen=True)
class ConfigChanges:
    entrypoint: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    prepend_path: dict[str, str] = field(default_factory=dict)  # e.g. PYTHONPATH: value put before the base's
    working_dir: str | None = None
    exposed_ports: Sequence[str] = ()
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str | None = None
    user: str | None = None  # ``User``: NAME|UID[:GROUP|GID]
    annotations: dict[str, str] = field(default_factory=dict)  # on the manifest


def timestamp(epoch: int) -> str:
    """``epoch`` as the RFC 3339 time OCI documents carry."""
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _env_dict(env: list) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in env or []:
        key, _, value = str(item).partition("=")
        out[key] = value
    return out


def _run_config(base_run: dict, changes: ConfigChanges) -> dict:
    """The base's runtime config (``config.config``) with the changes applied."""
    run = dict(base_run)
    env = _env_dict(run.get("Env") or [])
    for key, value in changes.prepend_path.items():
        env[key] = f"{value}:{env[key]}" if env.get(key) else value
    env.update(changes.env)
    run["Env"] = [f"{k}={v}" for k, v in env.items()]
    if changes.entrypoint is not None:
        run["Entrypoint"] = list(changes.entrypoint)
        run.pop(
            "Cmd", None
        )  # as a Dockerfile ENTRYPOINT does: the base's CMD was meant for its own entrypoint
    if changes.working_dir:
        run["WorkingDir"] = changes.working_dir
    if changes.exposed_ports:
        ports = dict(run.get("ExposedPorts") or {})
        ports.update({p: {} for p in changes.exposed_ports})
        run["ExposedPorts"] = ports
    if changes.labels:
        run["Labels"] = {**(run.get("Labels") or {}), **changes.labels}
    if changes.stop_signal:
        run["StopSignal"] = changes.stop_signal
    if changes.user is not None:
        run["User"] = changes.user
    return run


def mutate(base: Image, added: Sequence[Addendum], changes: ConfigChanges, created: str) -> Image:
    """``base`` with ``added`` layers on top and ``changes`` to its config; ``created`` (``timestamp``) is the
    time written into the config and the new history entries."""
    config = copy.deepcopy(base.config)
    config["config"] = _run_config(config.get("config") or {}, changes)
    config["created"] = created
    diff_ids = [str(x) for x in base.diff_ids] + [str(_diff_id(x)) for x in added]
    config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    history = list(config.get("history") or [])
    history += [{"created": created, "created_by": x.created_by, "comment": "ocibuild"} for x in added]
    config["history"] = history
    for legacy in _LEGACY_FIELDS:
        config.pop(legacy, None)
    config_raw = canonical_json(config)
    config_desc = Descriptor(media.OCI_CONFIG, Digest.of(config_raw), len(config_raw))
    layers = tuple(x.relabelled(media.LAYER_TO_OCI[x.media_type]) for x in base.layers)
    layers += tuple(x.layer for x in added)
    manifest = Manifest.build(config_desc, [x.descriptor for x in layers], changes.annotations)
    return Image(manifest, config_raw, layers, "built image", base=base, added=tuple(added))


def _diff_id(addendum: Addendum) -> Digest:
    if addendum.layer.diff_id is None:
        raise ValueError(f"layer {addendum.layer.digest} has no diff_id; only image layers can be added")
    return addendum.layer.diff_id
