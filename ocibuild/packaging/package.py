"""Package a model: base + dependencies + scoring server + model + app → an Image (DESIGN §2, §3).

Layers go from least to most often changed (base, dependencies, server, model, app), so editing ``score.py``
changes only the last layer, and a registry or cache already holds everything below it. The paths and variables
inside the image are Azure ML's, so entry scripts written for Azure run unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tempfile
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from .. import __version__
from ..cache.layers import cached_layer, remember_layer
from ..checks.build import BuildChecks, CheckOptions
from ..errors import InputError, UsageError
from ..events import Progress
from ..models.placement import MODELS_ROOT, add_model, model_dir_in_image, model_name_for
from ..oci import compress
from ..oci.descriptor import Platform
from ..oci.digest import Digest
from ..oci.image import ChainSource, Image
from ..oci.layer import BuiltLayer, LayerContents, cache_key, write_layer
from ..oci.mutate import ConfigChanges, NewLayer, assemble
from ..oci.store import BlobStore
from ..oci.tempfiles import remove_tree
from ..registry.transport import RegistryOptions
from ..transports.open import resolve_base
from .entry_script import check_entry_script
from .environment import PythonEnvironment, check_python_version, requirements_texts
from .pyenv import TargetPython, detect_target_python
from .wheels import install_dependencies

APP_ROOT = "var/azureml-app"
SERVER_DIR = "opt/ocibuild/server"
SITE_PACKAGES = "opt/ocibuild/site-packages"
SERVER_PACKAGE = "ocibuild_serving"
DEFAULT_PORT = 5001
_SERVING_SOURCE = Path(__file__).resolve().parent.parent / "serving"


@dataclass(frozen=True)
class PackageSpec:
    models: tuple[Path, ...]
    entry_script: Path
    base: str
    environment: PythonEnvironment = field(default_factory=PythonEnvironment.empty)
    source_dir: Path | None = None
    name: str | None = None
    version: str | None = None  # default "1" for local models; a registered model's own version
    platform: Platform = field(default_factory=Platform)
    compression: str = "gzip"
    port: int = DEFAULT_PORT
    # False (--no-cache): every layer is built from its inputs again; the results still go to the cache.
    use_cache: bool = True
    registry: RegistryOptions | None = None  # credentials and TLS for a registry base (and registered models)
    # Registered models (``ocibuild model push``): registry references whose artifact layer becomes the image's
    # model layer as it is, so a push to the same registry mounts it (``models.registry.resolve_model``).
    model_refs: tuple[str, ...] = ()
    checks: CheckOptions = field(default_factory=CheckOptions)  # native libraries and imports (``checks``)


@dataclass(frozen=True)
class BuildResult:
    image: Image
    base: Image | None
    base_ref: str
    layers: tuple[NewLayer, ...]  # the layers this build added, bottom first
    target: TargetPython
    model_name: str
    model_dir: str  # AZUREML_MODEL_DIR inside the image
    requirements: tuple[Path, ...] = ()

    @property
    def digest(self) -> Digest:
        return self.image.digest


def validate(spec: PackageSpec) -> None:
    """Everything that can be checked before any work: fail fast, before a multi-GB layer is written."""
    if not spec.models and not spec.model_refs:
        raise UsageError(
            "no model given; pass at least one MODEL_PATH (a file or a folder) or registered model REF"
        )
    for m in spec.models:
        if not m.exists():
            raise InputError(f"model {m}: no such file or directory")
    if spec.compression not in compress.CODECS:
        raise UsageError(f"--compression {spec.compression!r}: use one of {', '.join(compress.CODECS)}")
    if not 1 <= spec.port <= 65535:
        raise UsageError(f"--port {spec.port}: must be between 1 and 65535")
    if spec.source_dir is not None:
        if not spec.source_dir.is_dir():
            raise InputError(f"source dir {spec.source_dir}: no such directory")
        script = spec.entry_script if spec.entry_script.is_absolute() else spec.source_dir / spec.entry_script
        try:
            script.resolve().relative_to(spec.source_dir.resolve())
        except ValueError:
            raise InputError(
                f"entry script {spec.entry_script} is not inside source dir {spec.source_dir}"
            ) from None
        check_entry_script(script)
    else:
        check_entry_script(spec.entry_script)
    if spec.version is not None and not re.fullmatch(r"[A-Za-z0-9._-]+", spec.version):
        raise UsageError(f"--model-version {spec.version!r}: use letters, digits, '.', '_' or '-'")


def build(spec: PackageSpec, store: BlobStore, progress: Progress) -> BuildResult:
    validate(spec)
    registered = _resolve_registered(spec, store, progress)
    progress.step(f"base: {spec.base}")
    base = resolve_base(spec.base, spec.platform, store, spec.registry, progress)
    target = _detect_python(base, spec, store, progress)
    if spec.environment.python_version:
        check_python_version(spec.environment, target)

    checks = BuildChecks(spec.checks, base, target, store, progress, SITE_PACKAGES, f"base image {spec.base}")
    layers: list[NewLayer] = []
    if not spec.environment.is_empty():
        layers.append(_dependencies_layer(spec, target, store, progress, checks))
    checks.entry_script(spec.entry_script, spec.source_dir)
    layers.append(
        NewLayer(_server_layer(store, spec.compression), f"ocibuild {__version__}: scoring server", "server")
    )

    version = spec.version or "1"
    multi = len(spec.models) + len(registered) > 1
    names = _model_names(spec, multi)
    _check_distinct(names + [m.info.name for m in registered])
    if spec.models:
        model_contents = LayerContents()
        for path, name in zip(spec.models, names, strict=True):
            add_model(model_contents, path, name, version)
        model_layer = _files_layer(model_contents, spec, store, progress, "model layer", derive=True)
        listing = ", ".join(p.name for p in spec.models)
        layers.append(
            NewLayer(
                model_layer,
                f"ocibuild: model {names[0] if len(names) == 1 else 'set'}:{version} ({listing})",
                "model",
            )
        )
    for m in registered:
        created_by = f"ocibuild: model {m.info.name}:{m.info.version} from {m.reference} ({m.info.digest})"
        layers.append(NewLayer(m.layer, created_by, "model"))

    app = LayerContents()
    if spec.source_dir is not None:
        app.add_tree(spec.source_dir, APP_ROOT)
        script_rel = (
            (spec.source_dir / spec.entry_script).resolve().relative_to(spec.source_dir.resolve()).as_posix()
        )
    else:
        script_rel = spec.entry_script.name
        app.add_file(spec.entry_script, f"{APP_ROOT}/{script_rel}")
    app_layer = write_layer(app, store, spec.compression)
    layers.append(NewLayer(app_layer, f"ocibuild: app ({script_rel})", "app"))

    if multi:
        model_dir = f"/{MODELS_ROOT}"
        name = spec.name or (names or [registered[0].info.name])[0]
    elif registered:  # the files stay where the artifact put them; --name/--model-version name the image
        model_dir = registered[0].info.path
        name = spec.name or registered[0].info.name
        version = spec.version or registered[0].info.version
    else:
        model_dir = f"/{model_dir_in_image(names[0], version)}"
        name = names[0]
    labels = {
        "org.opencontainers.image.title": name,
        "org.opencontainers.image.version": version,
        "io.ocibuild.model.name": name,
        "io.ocibuild.model.version": version,
        "io.ocibuild.entry-script": script_rel,
    }
    for m in registered:  # which artifact each registered model came from
        suffix = f".{m.info.name}" if multi else ""
        labels[f"io.ocibuild.model.source{suffix}"] = m.reference
        labels[f"io.ocibuild.model.digest{suffix}"] = str(m.info.digest)
    if base is not None:
        labels["org.opencontainers.image.base.digest"] = str(base.digest)
        labels["org.opencontainers.image.base.name"] = spec.base
    changes = ConfigChanges(
        entrypoint=[target.executable, "-m", SERVER_PACKAGE],
        env={
            "AZUREML_ENTRY_SCRIPT": script_rel,
            "AZUREML_MODEL_DIR": model_dir,
            "OCIBUILD_PORT": str(spec.port),
            "OCIBUILD_MODEL_NAME": name,  # the KServe V2 model name
            "OCIBUILD_MODEL_VERSION": version,
            "PYTHONUNBUFFERED": "1",
        },
        prepend_path={"PYTHONPATH": f"/{SERVER_DIR}:/{SITE_PACKAGES}"},
        working_dir=f"/{APP_ROOT}",
        exposed_ports=[f"{spec.port}/tcp"],
        labels=labels,
        stop_signal="SIGTERM",
    )
    image = assemble(base, layers, changes, store, spec.platform, base_name=spec.base)
    if registered:  # their blobs come from the registry (through the cache), which lets a push mount them
        image = dataclasses.replace(image, blobs=ChainSource([*(m.source for m in registered), image.blobs]))
    return BuildResult(
        image, base, spec.base, tuple(layers), target, name, model_dir, spec.environment.requirements
    )


def _model_names(spec: PackageSpec, multi: bool) -> list[str]:
    """The local models' names: ``--name`` for a lone model, else each file's own."""
    if not multi and spec.models:
        return [spec.name or model_name_for(spec.models[0])]
    return [model_name_for(m) for m in spec.models]


def _check_distinct(names: list[str]) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(
            f"several models would be named {', '.join(dupes)}; rename the files (or register them under "
            "other names) so their names differ"
        )


def _resolve_registered(spec: PackageSpec, store: BlobStore, progress: Progress) -> list:
    if not spec.model_refs:
        return []
    from ..models.registry import resolve_model

    return [resolve_model(ref, store, spec.registry, progress) for ref in spec.model_refs]


def _detect_python(
    base: Image | None, spec: PackageSpec, store: BlobStore, progress: Progress
) -> TargetPython:
    what = f"base image {spec.base}"
    if base is None:
        detect_target_python(
            [], spec.platform.architecture, spec.platform.variant, what=what
        )  # raises: no Python
    key = "pyenv-" + hashlib.sha256(json.dumps([str(d.digest) for d in base.layers]).encode()).hexdigest()
    if (cached := store.get_ref(key)) is not None:
        try:
            return _target_from_json(cached)
        except (TypeError, KeyError, ValueError):
            pass
    progress.step("reading the base image's layers to find its Python")
    openers = [partial(base.open_uncompressed, d) for d in base.layers]
    target = detect_target_python(openers, base.platform.architecture, base.platform.variant, what=what)
    store.put_ref(key, asdict(target))
    return target


def _dependencies_layer(
    spec: PackageSpec, target: TargetPython, store: BlobStore, progress: Progress, checks: BuildChecks
) -> NewLayer:
    env = spec.environment
    key_doc = {
        "requirements": requirements_texts(env.requirements),  # with the files they include (-r, -c)
        "packages": list(env.packages),
        "target": asdict(target),
        "compression": spec.compression,
        "ocibuild": __version__,
    }
    key = "deps-" + hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()
    summary = ", ".join([p.name for p in env.requirements] + list(env.packages))
    created_by = (
        f"ocibuild: python dependencies ({summary}) for Python {target.version[0]}.{target.version[1]}"
    )
    if spec.use_cache and (cached := cached_layer(store, key)) is not None:
        progress.step(f"dependencies: cached ({summary})")
        checks.dependencies(key, None)
        return NewLayer(cached, created_by, "dependencies")
    progress.step(f"dependencies: resolving wheels for {target.describe()} ({summary})")
    tmp = Path(tempfile.mkdtemp(prefix="ocibuild-deps-"))
    try:
        site = tmp / "site-packages"
        site.mkdir()
        install_dependencies(
            target, site, requirements=env.requirements, packages=env.packages, progress=progress.step
        )
        checks.dependencies(key, site)
        contents = LayerContents()
        contents.add_tree(site, SITE_PACKAGES)
        counter = progress.bytes("dependencies layer", contents.total_size)
        layer = write_layer(contents, store, spec.compression, counter)
        counter.done()
    finally:
        remove_tree(tmp)
    remember_layer(store, key, layer)
    return NewLayer(layer, created_by, "dependencies")


def _files_layer(
    contents: LayerContents,
    spec: PackageSpec,
    store: BlobStore,
    progress: Progress,
    label: str,
    derive: bool = False,
) -> BuiltLayer:
    """A layer of host files, from the cache when the same files (same path, size, mtime, inode, device) made it
    before with the same settings: then not one byte of them is read. ``derive``: the files outlive the build,
    so a big layer is kept as a derived blob (``oci.store``) rather than copied into the cache."""
    key = cache_key(contents, spec.compression)
    if spec.use_cache and (cached := cached_layer(store, key)) is not None:
        progress.step(f"{label}: cached ({cached.descriptor.digest.short})")
        return cached
    counter = progress.bytes(label, contents.total_size)
    layer = write_layer(contents, store, spec.compression, counter, derive=derive)
    counter.done()
    remember_layer(store, key, layer)
    return layer


def _server_layer(store: BlobStore, codec: str) -> BuiltLayer:
    contents = LayerContents()
    for src in sorted(_SERVING_SOURCE.glob("*.py")):
        contents.add_file(src, f"{SERVER_DIR}/{SERVER_PACKAGE}/{src.name}")
    return write_layer(contents, store, codec)


def _target_from_json(doc: dict) -> TargetPython:
    doc = {k: tuple(v) if isinstance(v, list) else v for k, v in doc.items()}
    return TargetPython(**doc)
