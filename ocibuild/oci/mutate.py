"""Base Image + new layers + config changes → a new Image, reproducibly.

The base is never modified: its config is copied and extended, its layers are referenced as they are (only
Docker media-type labels are mapped to their OCI names; the bytes stay the same). Every timestamp is the fixed
build time (``SOURCE_DATE_EPOCH`` or 0), and documents are canonical JSON, so the same inputs give the same digest.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import media
from .descriptor import Descriptor, Manifest, Platform, canonical_json
from .image import ChainSource, Image, StoreSource
from .layer import BuiltLayer, source_date_epoch
from .store import BlobStore


@dataclass(frozen=True)
class NewLayer:
    layer: BuiltLayer
    created_by: str  # the history line, e.g. "ocibuild: model ridge:1 (model.pkl)"
    role: str = ""  # what it holds: "dependencies", "server", "model", "app"


@dataclass(frozen=True)
class ConfigChanges:
    entrypoint: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    prepend_path: dict[str, str] = field(default_factory=dict)  # e.g. PYTHONPATH: value put before the base's
    working_dir: str | None = None
    exposed_ports: Sequence[str] = ()
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str | None = None


def timestamp(epoch: int | None = None) -> str:
    epoch = source_date_epoch() if epoch is None else epoch
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _env_dict(env: list) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in env or []:
        key, _, value = str(item).partition("=")
        out[key] = value
    return out


def assemble(
    base: Image | None,
    layers: Sequence[NewLayer],
    changes: ConfigChanges,
    store: BlobStore,
    platform: Platform,
    base_name: str = "",
) -> Image:
    created = timestamp()
    if base is not None:
        config = copy.deepcopy(base.config)
        base_layers = [Descriptor(media.LAYER_TO_OCI[d.media_type], d.digest, d.size) for d in base.layers]
        diff_ids = [str(x) for x in base.diff_ids]
    else:
        config = {"architecture": platform.architecture, "os": platform.os}
        if platform.variant:
            config["variant"] = platform.variant
        base_layers, diff_ids = [], []
    run = dict(config.get("config") or {})
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
    config["config"] = run
    config["created"] = created
    config["rootfs"] = {"type": "layers", "diff_ids": diff_ids + [str(x.layer.diff_id) for x in layers]}
    history = list(config.get("history") or [])
    for x in layers:
        history.append({"created": created, "created_by": x.created_by, "comment": "ocibuild"})
    config["history"] = history
    for legacy in ("container", "container_config", "docker_version", "id", "parent"):
        config.pop(legacy, None)  # describe how the base was built, not this image
    config_raw = canonical_json(config)
    config_desc = Descriptor(media.OCI_CONFIG, store.put_bytes(config_raw), len(config_raw))
    annotations = {}
    if base is not None:
        annotations = {"org.opencontainers.image.base.digest": str(base.digest)}
        if base_name:
            annotations["org.opencontainers.image.base.name"] = base_name
    manifest = Manifest.build(config_desc, base_layers + [x.layer.descriptor for x in layers], annotations)
    sources = [StoreSource(store)] + ([base.blobs] if base is not None else [])
    return Image(manifest, config_raw, ChainSource(sources), name="built image")
