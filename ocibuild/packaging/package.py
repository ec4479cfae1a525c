"""Package a model: base + dependencies + scoring server + model + app → an Image.

Layers go from least to most often changed (base, dependencies, server, model, app), so editing ``score.py``
changes only the last layer, and a registry or cache already holds everything below it. The paths and variables
inside the image are Azure ML's, so entry scripts written for Azure run unchanged. Building only makes the
``Image``; where it goes is the publishers' business (``transports.publish``).
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..cache.layers import (
    THIS_BUILD,
    CachedLayer,
    FreshLayerCache,
    LayerCache,
    LocalLayerCache,
    TieredLayerCache,
)
from ..cache.records import TieredRecords
from ..checks.build import BuildChecks, CheckOptions
from ..checks.smoke import SmokeOptions, smoke_test
from ..errors import InputError, OcibuildError, UsageError
from ..events import Progress
from ..models.placement import MODELS_ROOT, add_model, model_dir_in_image, model_name_for
from ..oci import compress
from ..oci.descriptor import Index, Platform
from ..oci.digest import Digest
from ..oci.empty import is_empty
from ..oci.image import Addendum, Image, ImageIndex, Layer
from ..oci.layer import (
    BlobSink,
    FileDigest,
    LayerContents,
    cache_key,
    content_key,
    write_layer,
    write_layer_with_file_digests,
)
from ..oci.mutate import ConfigChanges, mutate, timestamp
from ..oci.name import Reference
from ..oci.store import BlobStore, Records
from ..oci.tempfiles import remove_tree
from ..registry.options import RegistryOptions
from ..rootfs.base import base_packages, base_python
from ..rootfs.packages import OsPackages
from ..rootfs.pyenv import TargetPython
from ..transports.open import open_base
from ..version import __version__
from . import bytecode
from .entry_script import check_entry_script
from .environment import PythonEnvironment, check_python_version, requirements_texts
from .installed import InstalledWheel
from .sources import redact_urls
from .split import Part, split_dependencies
from .wheels import install_dependencies

if TYPE_CHECKING:
    from ..cache.registry import RegistryLayerCache
    from ..models.registry import ResolvedModel

APP_ROOT = "var/azureml-app"
SERVER_DIR = "opt/ocibuild/server"
SITE_PACKAGES = "opt/ocibuild/site-packages"
SERVER_PACKAGE = "ocibuild_serving"
DEFAULT_PORT = 5001
# Locked down by default: a numeric non-root user (Kubernetes' runAsNonRoot can only check a number), the one
# distroless, Chainguard and ko images call nonroot; HOME in /tmp, the one folder a read-only root leaves writable
# (docs/decisions.md).
DEFAULT_USER = "65532:65532"
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?")
_READ_ONLY_ENV = {"HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"}
# What the dependencies layer holds for the same inputs: a change to it (2: without uv's .lock; 3: the record
# names the installed wheels, for the SBOM) makes every cached dependencies layer a miss, so a cached and a fresh
# build of the same inputs never differ.
DEPS_FORMAT = 3
TOOL = f"ocibuild {__version__}"  # in cache keys: another version of ocibuild may build other bytes
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
    user: str = DEFAULT_USER  # the config's User
    bytecode: bool = True  # compile the dependencies with the image's Python (``bytecode``), where it can run
    # False (--no-cache): every layer is built from its inputs again; the results still go to the cache.
    use_cache: bool = True
    registry: RegistryOptions = field(
        default_factory=RegistryOptions
    )  # for a registry base and registered models
    # Registered models (``ocibuild model push``): registry references whose artifact layer becomes the image's
    # model layer as it is, so a push to the same registry mounts it (``models.registry.resolve_model``).
    model_refs: tuple[str, ...] = ()
    # A registry repository that a fleet of builders shares as its layer cache (``cache.registry``); ``readonly``
    # for untrusted builds, which may read it but not write it.
    cache_repo: Reference | None = None
    cache_repo_readonly: bool = False
    checks: CheckOptions = field(default_factory=CheckOptions)  # native libraries and imports (``checks``)
    smoke: SmokeOptions | None = None  # run the built image's server once (``--smoke-test``)
    epoch: int = 0  # SOURCE_DATE_EPOCH: every time in the image
    workers: int | None = None  # cores used to compress a layer (None: all of them)
    # The local models' files' sha256, which the SBOM and the provenance list. Without either document a cold model
    # layer is hashed once (its digest), not twice (``Contents.model_files`` is then empty).
    model_digests: bool = True


@dataclass(frozen=True)
class Contents:
    """What the build put in the image, as it saw it: what the SBOM lists (``attest``)."""

    os: OsPackages | None  # the base's OS packages (None: built on scratch)
    wheels: tuple[InstalledWheel, ...]  # what the installer installed, with the wheel files' sha256
    model_files: tuple[FileDigest, ...]  # the local models' files, at their paths in the image
    registered: tuple[ResolvedModel, ...]  # the registered models, as resolved


@dataclass(frozen=True)
class BuildResult:
    image: Image  # its ``base`` and ``added`` say what it was built on and what this build added
    base_ref: str
    target: TargetPython
    model_name: str
    model_dir: str  # AZUREML_MODEL_DIR inside the image
    requirements: tuple[Path, ...] = ()
    contents: Contents | None = None
    model_version: str = ""
    spec: PackageSpec | None = None  # what it was built from (this platform's)

    @property
    def digest(self) -> Digest:
        return self.image.digest


@dataclass(frozen=True)
class _Models:
    """The models of one build: their layers, what they are called, and where the image finds them."""

    added: list[Addendum]
    name: str
    version: str
    model_dir: str
    labels: dict[str, str]
    files: tuple[FileDigest, ...] = ()  # the local models' files, with their sha256


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
    _check_user(spec.user)


def _check_user(user: str) -> None:
    if not _USER.fullmatch(user):
        raise UsageError(f"--user {user!r}: give UID[:GID] (e.g. {DEFAULT_USER}) or NAME[:GROUP]")


def user_note(user: str) -> str | None:
    """A warning for a ``User`` that Kubernetes' ``runAsNonRoot`` cannot check (a name), if it is one."""
    name = user.partition(":")[0]
    if name.isdigit() or name == "root":
        return None
    return f"--user {user}: Kubernetes' runAsNonRoot refuses a user name it cannot check; give its number"


def build(
    spec: PackageSpec,
    store: BlobStore,
    progress: Progress,
    cache: LayerCache | None = None,
    sinks: Sequence[BlobSink] = (),
) -> BuildResult:
    """Build the image for ``spec``: layers come from ``cache`` (default: the local store's) when their inputs
    made them before, else are built into ``store``. ``sinks``: outputs that take the model layer's bytes as they
    are made (when they are: a cache hit makes none), so that writing them does not read the model again."""
    return _build_platform(spec, store, progress, _prepare(spec, store, progress, cache, sinks))


@dataclass(frozen=True)
class IndexResult:
    """A multi-platform build: one image per platform, in the order asked, and the index that lists them."""

    index: ImageIndex
    results: tuple[BuildResult, ...]

    @property
    def digest(self) -> Digest:
        return self.index.digest


def build_index(
    spec: PackageSpec,
    platforms: Sequence[Platform],
    store: BlobStore,
    progress: Progress,
    cache: LayerCache | None = None,
    sinks: Sequence[BlobSink] = (),
) -> IndexResult:
    """One image per platform, each on that platform's base (from the base's index) with dependencies resolved
    for it, in one image index. The server, model and app layers do not depend on the platform: made once (even
    with ``--no-cache``), the same blobs in every image."""
    if len(platforms) < 2:
        raise UsageError("an index needs two platforms or more; build one platform as a plain image")
    if len(set(platforms)) != len(platforms):
        raise UsageError(f"--platform {','.join(map(str, platforms))}: a platform is named twice")
    run = _prepare(spec, store, progress, cache, sinks)
    results = []
    for platform in platforms:
        progress.step(f"platform {platform}")
        try:
            results.append(_build_platform(replace(spec, platform=platform), store, progress, run))
        except OcibuildError as e:  # which platform failed: the others may be fine
            raise type(e)(f"{platform}: {e}") from None
    index = Index.build([r.image.entry({}) for r in results])
    return IndexResult(ImageIndex(index, tuple(r.image for r in results)), tuple(results))


@dataclass(frozen=True)
class _Run:
    """What the builds of one call share: the caches, and the registered models (resolved once)."""

    cache: LayerCache
    records: Records
    registered: list[ResolvedModel]
    sinks: tuple[BlobSink, ...]  # where the model layer's bytes go as they are made (``build``)


def _prepare(
    spec: PackageSpec, store: BlobStore, progress: Progress, cache: LayerCache | None, sinks: Sequence[BlobSink]
) -> _Run:
    validate(spec)
    if note := user_note(spec.user):
        progress.warn(note)
    for note in spec.environment.notes:  # what a conda file's packages became
        progress.step(note)
    shared = _cache_repo(spec, store, progress)
    cache = cache or (TieredLayerCache(LocalLayerCache(store), shared) if shared else LocalLayerCache(store))
    if not spec.use_cache:
        cache = FreshLayerCache(cache)
    records: Records = TieredRecords(store, shared) if shared else store
    return _Run(cache, records, _resolve_registered(spec, store, progress), tuple(sinks))


def _build_platform(spec: PackageSpec, store: BlobStore, progress: Progress, run: _Run) -> BuildResult:
    progress.step(f"base: {spec.base}")
    base = open_base(spec.base, spec.platform, options=spec.registry, store=store, progress=progress)
    target = _detect_python(base, spec, run.records, progress)
    if spec.environment.python_version:
        check_python_version(spec.environment, target)

    checks = BuildChecks(
        spec.checks, base, target, run.records, progress, SITE_PACKAGES, f"base image {spec.base}"
    )
    cache = run.cache
    added: list[Addendum] = []
    wheels: tuple[InstalledWheel, ...] = ()
    if not spec.environment.is_empty():
        layers, wheels = _dependencies_layers(spec, base, target, store, cache, run.records, progress, checks)
        added += layers
    checks.entry_script(spec.entry_script, spec.source_dir)
    added.append(Addendum(_server_layer(spec, store, cache), f"{TOOL}: scoring server", "server"))
    models = _model_layers(spec, run.registered, store, cache, progress, run.sinks)
    added += models.added
    app, script_rel = _app_layer(spec, store, cache)
    added.append(app)
    changes = _config_changes(spec, base, target, models, script_rel)
    image = mutate(base, added, changes, timestamp(spec.epoch))
    if spec.smoke is not None:
        smoke_test(image, spec.smoke, progress)
    contents = Contents(
        _base_packages(base, spec, run.records, progress), wheels, models.files, tuple(run.registered)
    )
    return BuildResult(
        image, spec.base, target, models.name, models.model_dir, spec.environment.requirements, contents,
        models.version, spec,
    )  # fmt: skip


def _model_layers(
    spec: PackageSpec,
    registered: list[ResolvedModel],
    store: BlobStore,
    cache: LayerCache,
    progress: Progress,
    sinks: Sequence[BlobSink] = (),
) -> _Models:
    """The model layer of the local models (one, for all of them) and each registered model's own layer."""
    version = spec.version or "1"
    multi = len(spec.models) + len(registered) > 1
    names = _model_names(spec, multi)
    _check_distinct(names + [m.info.name for m in registered])
    added = []
    files: tuple[FileDigest, ...] = ()
    if spec.models:
        contents = LayerContents()
        for path, name in zip(spec.models, names, strict=True):
            add_model(contents, path, name, version)
        layer, files = _model_layer(contents, spec, store, cache, progress, sinks)
        listing = ", ".join(p.name for p in spec.models)
        label = names[0] if len(names) == 1 else "set"
        added.append(Addendum(layer, f"ocibuild: model {label}:{version} ({listing})", "model"))
    for m in registered:
        created_by = f"ocibuild: model {m.info.name}:{m.info.version} from {m.reference} ({m.info.digest})"
        added.append(Addendum(m.layer, created_by, "model"))
    if multi:
        model_dir, name = f"/{MODELS_ROOT}", spec.name or (names or [registered[0].info.name])[0]
    elif registered:  # the files stay where the artifact put them; --name/--model-version name the image
        model_dir, name = registered[0].info.path, spec.name or registered[0].info.name
        version = spec.version or registered[0].info.version
    else:
        model_dir, name = f"/{model_dir_in_image(names[0], version)}", names[0]
    labels = {}
    for m in registered:  # which artifact each registered model came from
        suffix = f".{m.info.name}" if multi else ""
        labels[f"io.ocibuild.model.source{suffix}"] = m.reference
        labels[f"io.ocibuild.model.digest{suffix}"] = str(m.info.digest)
    return _Models(added, name, version, model_dir, labels, files)


def _app_layer(spec: PackageSpec, store: BlobStore, cache: LayerCache) -> tuple[Addendum, str]:
    """The entry script (or the whole ``--source-dir``) at the app root, and the script's path there."""
    app = LayerContents()
    if spec.source_dir is not None:
        app.add_tree(spec.source_dir, APP_ROOT)
        script_rel = (
            (spec.source_dir / spec.entry_script).resolve().relative_to(spec.source_dir.resolve()).as_posix()
        )
    else:
        script_rel = spec.entry_script.name
        app.add_file(spec.entry_script, f"{APP_ROOT}/{script_rel}")
    layer = _files_layer(app, spec, store, cache)
    return Addendum(layer, f"ocibuild: app ({script_rel})", "app"), script_rel


def _config_changes(
    spec: PackageSpec, base: Image, target: TargetPython, models: _Models, script_rel: str
) -> ConfigChanges:
    """How the image runs: the server as entrypoint, Azure ML's variables, labels saying what is inside."""
    labels = {
        "org.opencontainers.image.title": models.name,
        "org.opencontainers.image.version": models.version,
        "io.ocibuild.model.name": models.name,
        "io.ocibuild.model.version": models.version,
        "io.ocibuild.entry-script": script_rel,
        **models.labels,
    }
    annotations = {}
    if not is_empty(base):
        # The base's name only where it means the same on any machine: never a path of the builder's machine.
        named = {"org.opencontainers.image.base.digest": str(base.digest)}
        if base.reference:
            named["org.opencontainers.image.base.name"] = base.reference
        labels.update(named)
        annotations = dict(named)
    return ConfigChanges(
        entrypoint=[target.executable, "-m", SERVER_PACKAGE],
        env={
            "AZUREML_ENTRY_SCRIPT": script_rel,
            "AZUREML_MODEL_DIR": models.model_dir,
            "OCIBUILD_PORT": str(spec.port),
            "OCIBUILD_MODEL_NAME": models.name,  # the KServe V2 model name
            "OCIBUILD_MODEL_VERSION": models.version,
            "PYTHONUNBUFFERED": "1",
            **_READ_ONLY_ENV,
        },
        prepend_path={"PYTHONPATH": f"/{SERVER_DIR}:/{SITE_PACKAGES}"},
        working_dir=f"/{APP_ROOT}",
        exposed_ports=[f"{spec.port}/tcp"],
        labels=labels,
        stop_signal="SIGTERM",
        user=spec.user,
        annotations=annotations,
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


def _resolve_registered(spec: PackageSpec, store: BlobStore, progress: Progress) -> list[ResolvedModel]:
    if not spec.model_refs:
        return []
    from ..models.registry import resolve_model  # oras-py is imported only when a registered model is used

    return [resolve_model(ref, store, spec.registry, progress) for ref in spec.model_refs]


def _detect_python(base: Image, spec: PackageSpec, records: Records, progress: Progress) -> TargetPython:
    return base_python(base, records, f"base image {spec.base}", progress)


def _base_packages(base: Image, spec: PackageSpec, records: Records, progress: Progress) -> OsPackages | None:
    """The base's OS packages, for the SBOM."""
    return None if is_empty(base) else base_packages(base, records, f"base image {spec.base}", progress)


def _dependencies_layers(
    spec: PackageSpec,
    base: Image,
    target: TargetPython,
    store: BlobStore,
    cache: LayerCache,
    records: Records,
    progress: Progress,
    checks: BuildChecks,
) -> tuple[list[Addendum], tuple[InstalledWheel, ...]]:
    """The installed dependencies in layers by size (``split``), and the wheels they came from: found by their
    inputs' key (a record naming the layers, with the checks' facts and the wheels), or installed, checked,
    compiled and written, each layer found by its contents when an earlier build made it (a new small requirement
    does not write torch's layers again)."""
    env = spec.environment
    compiler = bytecode.plan(base, spec.bytecode)  # a sandbox, or why there is none
    key = _dependencies_key(spec, target, compiler)
    summary = redact_urls(", ".join([p.name for p in env.requirements] + list(env.packages)))
    found = _cached_dependencies(key, cache, records) if spec.use_cache else None
    if found is not None:
        parts, facts, wheels, where = found
        progress.step(f"dependencies: {where} ({summary})")
        checks.dependencies(facts)
    else:
        progress.step(f"dependencies: resolving wheels for {target.describe()} ({summary})")
        parts, wheels = _build_dependencies(spec, base, target, compiler, store, cache, progress, checks)
        records.put_ref(
            key,
            {
                "format": DEPS_FORMAT,
                "parts": [[n, k] for n, k, _ in parts],
                "facts": checks.facts,
                "wheels": [w.to_json() for w in wheels],
            },
        )
    created_by = (
        f"ocibuild: python dependencies ({summary}) for Python {target.version[0]}.{target.version[1]}"
    )
    if len(parts) == 1:
        return [Addendum(parts[0][2], created_by, "dependencies")], wheels
    return [Addendum(layer, f"{created_by}: {name}", "dependencies") for name, _, layer in parts], wheels


def _dependencies_key(spec: PackageSpec, target: TargetPython, compiler: object) -> str:
    env = spec.environment
    key_doc = {
        "format": DEPS_FORMAT,
        # with the files they include (-r, -c), and the conda file's pip: index options (no change when none)
        "requirements": requirements_texts(env.requirements) + list(env.pip_options_key()),
        "packages": list(env.packages),
        "target": asdict(target),
        "compression": spec.compression,
        "ocibuild": __version__,
        "sources": env.sources.key_doc(),  # URLs without credentials, find-links folders by content
        "exclude_newer": env.exclude_newer,
        "bytecode": None if isinstance(compiler, str) else bytecode.INVALIDATION,
    }
    return "deps-" + hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()


_Parts = list[tuple[str, str, Layer]]  # each layer of the dependencies: its name, its cache key, the layer


def _cached_dependencies(
    key: str, cache: LayerCache, records: Records
) -> tuple[_Parts, dict | None, tuple[InstalledWheel, ...], str] | None:
    """The layers the record under ``key`` names, if every one of them can still be had, and its wheels."""
    doc = records.get_ref(key)
    if not isinstance(doc, dict) or doc.get("format") != DEPS_FORMAT:
        return None
    try:
        names, keys = zip(*((str(n), str(k)) for n, k in doc["parts"]), strict=True)
        wheels = tuple(InstalledWheel.from_json(w) for w in doc["wheels"])
    except (KeyError, TypeError, ValueError):
        return None
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="cache") as pool:  # a cache repo: round trips
        hits = list(pool.map(cache.get, keys))
    if any(hit is None for hit in hits):
        return None
    parts = [(n, k, hit.layer) for n, k, hit in zip(names, keys, hits, strict=True) if hit is not None]
    shared = [hit.where for hit in hits if hit is not None and hit.where != "cached"]
    where = f"from the cache repo {shared[0]}" if shared else "cached"
    facts = doc.get("facts")
    return parts, facts if isinstance(facts, dict) else None, wheels, where


def _build_dependencies(
    spec: PackageSpec,
    base: Image,
    target: TargetPython,
    compiler: object,
    store: BlobStore,
    cache: LayerCache,
    progress: Progress,
    checks: BuildChecks,
) -> tuple[_Parts, tuple[InstalledWheel, ...]]:
    env = spec.environment
    tmp = Path(tempfile.mkdtemp(prefix="ocibuild-deps-"))
    try:
        site = tmp / "site-packages"
        site.mkdir()
        requirements = env.requirement_files(tmp)  # with the conda file's pip: index options, if any
        wheels = install_dependencies(
            target, site, requirements=requirements, packages=env.packages, progress=progress.step,
            sources=env.sources, exclude_newer=env.exclude_newer,
        )  # fmt: skip
        checks.dependencies(checks.scan(site))
        if isinstance(compiler, str):
            progress.step(f"bytecode: not compiled ({compiler}); a read-only root compiles at every start")
        else:
            bytecode.compile_bytecode(base, target, compiler, site, SITE_PACKAGES, progress)
        contents = LayerContents()
        contents.add_tree(site, SITE_PACKAGES, bytecode=True)
        parts = _write_parts(split_dependencies(contents, site, SITE_PACKAGES), spec, store, cache, progress)
        return parts, wheels
    finally:
        remove_tree(tmp)


def _write_parts(
    parts: list[Part], spec: PackageSpec, store: BlobStore, cache: LayerCache, progress: Progress
) -> _Parts:
    """Each part as a layer: one an earlier build made from the same files is taken as it is, not compressed."""
    counter = progress.bytes("dependencies layer", sum(p.contents.total_size for p in parts))
    done, out = 0, []
    for part in parts:
        key = content_key(
            part.contents, spec.compression, mtime=spec.epoch, tool=__version__, store=store, remember=False
        )
        hit = cache.get(key)
        if hit is not None:
            layer = hit.layer
        else:
            written = write_layer(
                part.contents, store, spec.compression, lambda n, d=done: counter(d + n),
                mtime=spec.epoch, workers=spec.workers,
            )  # fmt: skip
            layer = cache.put(key, written)
        done += part.contents.total_size
        counter(done)
        out.append((part.name, key, layer))
    counter.done()
    return out


def _files_layer(
    contents: LayerContents, spec: PackageSpec, store: BlobStore, cache: LayerCache
) -> Layer:
    """A small layer of host files (the server, the app), from the cache when the same files made it before with
    the same settings: then not one byte of them is compressed. The same files are, for a local cache, the same
    path, size, mtime, inode and device (not one byte is read); for a cache shared with other machines, the same
    contents."""
    key = _files_key(contents, spec, store, cache)
    if (cached := cache.get(key)) is not None:
        return cached.layer
    layer = write_layer(contents, store, spec.compression, mtime=spec.epoch, workers=spec.workers)
    return cache.put(key, layer)


def _model_layer(
    contents: LayerContents,
    spec: PackageSpec,
    store: BlobStore,
    cache: LayerCache,
    progress: Progress,
    sinks: Sequence[BlobSink] = (),
) -> tuple[Layer, tuple[FileDigest, ...]]:
    """The local models' layer, found in the cache like ``_files_layer``'s (a hit reads nothing) or written as a
    derived blob (the files outlive the build: ``oci.store``) whose bytes also go to ``sinks``, and each file's
    sha256 for the SBOM and provenance (``spec.model_digests``): all from the same one read, the files' digests
    kept in the cache record beside it."""
    key = _files_key(contents, spec, store, cache)
    if (cached := cache.get(key)) is not None:
        files = _files_from_facts(cached.facts)
        if files is not None or not spec.model_digests:
            progress.step(f"model layer: {_found(cached)} ({cached.layer.digest.short})")
            return cached.layer, files or ()
    counter = progress.bytes("model layer", contents.total_size)
    write = write_layer_with_file_digests if spec.model_digests else _without_file_digests
    layer, files = write(
        contents, store, spec.compression, counter, mtime=spec.epoch, derive=True, workers=spec.workers, sinks=sinks
    )
    counter.done()
    # without the digests no facts: a later build that needs them writes the layer again, which hashes them
    facts = {"files": [[f.path, f.size, f.sha256] for f in files]} if spec.model_digests else None
    return cache.put(key, layer, facts), files


def _without_file_digests(*args, **kwargs) -> tuple[Layer, tuple[FileDigest, ...]]:
    return write_layer(*args, **kwargs), ()


def _files_from_facts(facts: dict | None) -> tuple[FileDigest, ...] | None:
    try:
        return tuple(FileDigest(str(p), int(n), str(h)) for p, n, h in (facts or {})["files"])
    except (KeyError, TypeError, ValueError):
        return None  # recorded before the SBOM needed them: the layer is written again, which hashes them


def _files_key(contents: LayerContents, spec: PackageSpec, store: BlobStore, cache: LayerCache) -> str:
    """By content for a cache other machines share, else by the files' identity here (nothing is read)."""
    if cache.shared:
        return content_key(contents, spec.compression, mtime=spec.epoch, tool=__version__, store=store)
    return cache_key(contents, spec.compression, mtime=spec.epoch, tool=__version__)


def _found(cached: CachedLayer) -> str:
    if cached.where == THIS_BUILD:
        return "the same for every platform"
    return "cached" if cached.where == "cached" else f"from the cache repo {cached.where}"


def _server_layer(spec: PackageSpec, store: BlobStore, cache: LayerCache) -> Layer:
    contents = LayerContents()
    for src in sorted(_SERVING_SOURCE.glob("*.py")):
        contents.add_file(src, f"{SERVER_DIR}/{SERVER_PACKAGE}/{src.name}")
    return _files_layer(contents, spec, store, cache)


def _cache_repo(spec: PackageSpec, store: BlobStore, progress: Progress) -> RegistryLayerCache | None:
    """The registry repository a fleet shares as its cache, asked after the local cache, if there is one."""
    if spec.cache_repo is None:
        return None
    # HTTP (requests) is imported only by a build that uses a cache repository
    from ..cache.registry import RegistryLayerCache

    return RegistryLayerCache(spec.cache_repo, spec.registry, store, progress, spec.cache_repo_readonly)
