"""The Python API, shaped like Azure ML's ``Model.package`` so migrating users feel at home.

    pkg = package(models=["model.pkl"],
                  inference_config=InferenceConfig(entry_script="score.py",
                                                   environment=Environment(pip_requirements="requirements.txt")),
                  base="oci:./base:py311")
    pkg.export("image.tar", tag="myimage:latest"); pkg.write_layout("./layout"); pkg.save("./context")
    pkg.push("registry.example.com/team/myimage:1")
    pkg.publish(Outputs(archives=["image.tar"], pushes=["registry.example.com/team/myimage:1"]))  # several at once
    print(pkg.digest)

Building and publishing are separate: ``package`` builds into the local cache once; each method writes the same
image (the same digest) to one more place. This module and ``cli`` are the edge where the environment is read
(``settings.Settings``); everything below takes its settings as arguments.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .attest.documents import DocumentOptions, with_documents
from .attest.sbom import check_format
from .checks.build import CheckOptions
from .checks.smoke import SmokeOptions
from .errors import InputError, UsageError
from .events import Listener, Progress
from .oci.archive import StagedArchive
from .oci.descriptor import Platform
from .oci.digest import Digest
from .oci.image import Entry, Image
from .oci.layout import StagedLayout
from .oci.layout import check_destination as check_layout_destination
from .oci.name import ImageName, Reference, parse_reference
from .oci.signature import Signer
from .oci.store import BlobStore, Spool
from .packaging.dockerfile import DockerfilePublisher
from .packaging.environment import PythonEnvironment, load_environment
from .packaging.package import DEFAULT_USER, BuildResult, IndexResult, PackageSpec, build, build_index
from .packaging.sources import PackageSources, parse_exclude_newer
from .registry.credentials import parse_creds
from .registry.options import RegistryOptions
from .settings import Settings
from .transports.location import registry_reference
from .transports.publish import ArchivePublisher, LayoutPublisher, Publisher, RegistryPublisher, publish_all

PathLike = str | os.PathLike


@dataclass(frozen=True)
class Environment:
    """What the image's Python needs: a requirements file, extra pip specs, or a conda environment file (its conda
    packages installed from PyPI: ``conda_map`` adds conda→PyPI names, ``conda_drop`` leaves packages out); and
    where to find them (pip's and uv's options: ``index_url``, ``extra_index_urls``, ``find_links`` folders,
    ``no_index``) and as of when (``exclude_newer``: a date or time; later uploads are ignored)."""

    pip_requirements: PathLike | Sequence[PathLike] | None = None
    pip_packages: Sequence[str] = ()
    conda_file: PathLike | None = None
    conda_map: Mapping[str, str] | None = None  # conda name -> PyPI name, on top of the shipped mapping
    conda_drop: Sequence[str] = ()  # conda packages to leave out knowingly
    index_url: str | None = None
    extra_index_urls: Sequence[str] = ()
    find_links: Sequence[PathLike] = ()
    no_index: bool = False
    exclude_newer: str | datetime.date | None = None

    def resolve(self) -> PythonEnvironment:
        reqs = self.pip_requirements
        if reqs is None:
            files: list[Path] = []
        elif isinstance(reqs, (str, os.PathLike)):
            files = [Path(reqs)]
        else:
            files = [Path(r) for r in reqs]
        conda = Path(self.conda_file) if self.conda_file is not None else None
        sources = PackageSources.create(self.index_url, self.extra_index_urls, self.find_links, self.no_index)
        when = parse_exclude_newer(self.exclude_newer) if self.exclude_newer is not None else None
        env = load_environment(files, list(self.pip_packages), conda, self.conda_map, self.conda_drop)
        return dataclasses.replace(env, sources=sources, exclude_newer=when)


@dataclass(frozen=True)
class InferenceConfig:
    entry_script: PathLike
    source_directory: PathLike | None = None
    environment: Environment = field(default_factory=Environment)


@dataclass(frozen=True)
class Outputs:
    """Where one build goes; every output gets the same image, and the same digest.

    ``tag`` names the image in archives, layouts and the engine (default ``NAME:VERSION`` of the model);
    ``additional_tags`` are more tags of each pushed repository; ``append`` keeps the images already in an archive.
    """

    archives: Sequence[PathLike] = ()  # tarballs for docker load / podman load / skopeo
    layouts: Sequence[PathLike] = ()  # OCI image layout folders
    pushes: Sequence[str] = ()  # registry references
    load: bool = False  # into the running Docker or podman engine
    dockerfiles: Sequence[PathLike] = ()  # build contexts for docker build
    tag: str | None = None
    additional_tags: Sequence[str] = ()
    append: bool = False

    def __bool__(self) -> bool:
        return bool(self.archives or self.layouts or self.pushes or self.load or self.dockerfiles)

    def check(self) -> None:
        """Everything that can be checked before a build: fail fast, before a multi-GB layer is written."""
        if not self:
            raise UsageError(
                "give at least one output: --output FILE, --oci-layout DIR, --push REF, --load or --dockerfile DIR"
            )
        self._check_paths()
        if self.append and not self.archives:
            raise UsageError("--append adds to a tarball: use it with --output FILE")
        if self.additional_tags and not self.pushes:
            raise UsageError("--additional-tag needs --push")
        if self.tag is not None:
            ImageName.parse(self.tag)
        for reference in self.pushes:
            ref = parse_reference(reference)
            for tag in self.additional_tags:
                parse_reference(f"{ref.registry}/{ref.repository}:{tag}")

    def _check_paths(self) -> None:
        for option, paths in (("--output", self.archives), ("--oci-layout", self.layouts),
                              ("--dockerfile", self.dockerfiles)):  # fmt: skip
            for path in paths:
                parent = Path(path).absolute().parent
                if not parent.is_dir():
                    raise UsageError(f"{option} {path}: directory {parent} does not exist; create it first")
        for path in self.layouts:
            check_layout_destination(Path(path))

    def check_index(self) -> None:
        """What cannot take an index of several platforms, said before the build."""
        if self.load:
            raise UsageError(
                "--load takes one platform (an engine stores one per name); with several --platform values "
                "write the index with --push, --oci-layout or --output, or load one platform's build"
            )
        if self.dockerfiles:
            raise UsageError(
                "--dockerfile writes the context of one platform's image; build one --platform for it"
            )


class Package:
    """A built image in the local cache (or, for several platforms, an index of them), ready to be written out
    (to as many places as wanted)."""

    def __init__(
        self,
        result: BuildResult | IndexResult,
        progress: Progress,
        settings: Settings,
        registry: RegistryOptions | None = None,
    ):
        self.result = result
        self._progress = progress
        self._settings = settings
        self._registry = registry
        self._entry: Entry = result.index if isinstance(result, IndexResult) else result.image
        self.signer: Signer | None = None  # signs every push (``sign_key`` of ``package``)
        self.staging: list[Staging] = []  # outputs begun by the build (``_stage``)

    def attach_documents(self, store: BlobStore, options: DocumentOptions) -> None:
        """Give every image its SBOM and provenance, written beside it by every publisher that can hold them
        (registries, layouts, archives)."""
        self._entry = with_documents(self.result, store, options, self._settings.source_date_epoch)

    @property
    def results(self) -> tuple[BuildResult, ...]:
        """Each platform's build, in the order the platforms were given."""
        return self.result.results if isinstance(self.result, IndexResult) else (self.result,)

    @property
    def entry(self) -> Entry:
        """What is published: the image, or the index of the platforms' images (with their SBOMs and provenance)."""
        return self._entry

    @property
    def image(self) -> Image:
        """The image of a one-platform build (an index's images are ``entry.images``)."""
        if isinstance(self.result, IndexResult):
            raise UsageError(
                f"this package is an index of {len(self.results)} platforms; take .entry (its images: .entry.images)"
            )
        return self.result.image

    @property
    def digest(self) -> Digest:
        return self.entry.digest

    def default_tag(self) -> str:
        first = self.results[0]
        return (
            f"{first.model_name}:{first.image.config['config']['Labels']['org.opencontainers.image.version']}"
        )

    def publishers(self, outputs: Outputs, registry: RegistryOptions | None = None) -> list[Publisher]:
        """The publishers ``outputs`` names, in the order they are written: files first, then the engine, then
        registries (a slow push comes last, so a bad local path fails before any upload)."""
        name = ImageName.parse(outputs.tag or self.default_tag())
        epoch = self._settings.source_date_epoch
        out: list[Publisher] = []
        if outputs.append and not outputs.archives:
            raise UsageError("--append adds to a tarball: use it with --output FILE")
        archives = {s.path: s for s in self.staging if isinstance(s, StagedArchive)}
        layouts = {s.root: s for s in self.staging if isinstance(s, StagedLayout)}
        for path in outputs.archives:
            staged = archives.pop(Path(path), None)
            out.append(
                ArchivePublisher(Path(path), (name,), outputs.append, False, epoch, f"--output {path}", staged)
            )
        for path in outputs.layouts:
            out.append(LayoutPublisher(Path(path), (name,), f"--oci-layout {path}", layouts.pop(Path(path), None)))
        for path in outputs.dockerfiles:
            out.append(
                DockerfilePublisher(
                    Path(path), self.results[0].base_ref, self.results[0].requirements, f"--dockerfile {path}"
                )
            )
        if outputs.load:
            from .transports.engine import EnginePublisher  # http.client and ssl: only --load needs them

            out.append(
                EnginePublisher((name,), self._settings.engine_hosts, self._settings.runtime_dir, epoch)
            )
        options = registry or self._registry or self._settings.registry_options()
        for reference in outputs.pushes:
            ref = parse_reference(reference)
            out.append(
                RegistryPublisher(ref, tuple(outputs.additional_tags), options, f"--push {reference}", self.signer)
            )
        return out

    def publish(self, outputs: Outputs, registry: RegistryOptions | None = None) -> Digest:
        """Write the image to every output of ``outputs``; a failure names its output, and leaves nothing
        half-written there."""
        outputs.check()
        try:
            return publish_all(self.entry, self.publishers(outputs, registry), self._progress)
        finally:
            self.discard_staging()

    def discard_staging(self) -> None:
        """Remove what the build began at its outputs and no publish finished (once published, nothing is left)."""
        staging, self.staging = self.staging, []
        _discard(staging)

    def export(self, path: PathLike, tag: str | None = None, append: bool = False) -> Path:
        """A tarball that ``docker load``, ``podman load`` and ``skopeo`` (docker-archive: and oci-archive:) read.

        With ``append``, the images already in the file stay (one tarball, several images, as ``docker save a b``).
        """
        self.publish(Outputs(archives=[path], tag=tag, append=append))
        return Path(path)

    def write_layout(self, directory: PathLike, tag: str | None = None) -> Path:
        """An OCI image layout directory (``umoci``, ``skopeo copy oci:DIR:TAG``)."""
        self.publish(Outputs(layouts=[directory], tag=tag))
        return Path(directory)

    def save(self, directory: PathLike) -> Path:
        """A Dockerfile build context that ``docker build`` turns into an image that behaves the same."""
        self.publish(Outputs(dockerfiles=[directory]))
        return Path(directory)

    def load(self, tag: str | None = None) -> Digest:
        """Stream the image into the local Docker or podman engine."""
        return self.publish(Outputs(load=True, tag=tag))

    def push(
        self,
        reference: str,
        tags: Sequence[str] = (),
        *,
        creds: str | None = None,
        registry: RegistryOptions | None = None,
    ) -> Digest:
        """Push to a registry as ``reference`` (and extra ``tags`` of the same repository); returns the digest.

        ``creds`` (``USER:PASSWORD``, else ``$OCIBUILD_REGISTRY_USER``/``$OCIBUILD_REGISTRY_PASSWORD``) are used
        for that registry only; otherwise ``ocibuild login``/``docker login`` credentials apply.
        """
        ref = parse_reference(reference)
        options = (registry or self._registry or self._settings.registry_options()).for_target(
            ref.registry, creds
        )
        return self.publish(Outputs(pushes=[reference], additional_tags=tags), options)


def bind_credentials(
    options: RegistryOptions,
    *,
    base: str,
    pushes: Sequence[str] = (),
    models: Sequence[str] = (),
    creds: str | None = None,
    base_creds: str | None = None,
    cache_repo: str | None = None,
) -> RegistryOptions:
    """Which credentials go to which registry: ``creds`` to the pushes' registries, or, with no push, to a
    registry base, or, with neither, to the registered models' registries; ``base_creds`` to a registry base.
    (``USER:PASSWORD``; without ``creds``, ``$OCIBUILD_REGISTRY_USER``/``_PASSWORD`` take its place.) The
    ``cache_repo``'s registry is written as a push is: ``creds`` when it is a push's registry, else the
    environment's or a login's."""
    push_refs = [parse_reference(p) for p in pushes]
    if (repo := _cache_repo(cache_repo)) is not None:
        host = repo.registry
        options = options.for_target(host, creds if host in {r.registry for r in push_refs} else None)
    base_ref = registry_reference(base)
    for push in push_refs:
        options = options.for_target(push.registry, creds)
    if base_ref is not None:
        if base_creds:
            options = options.with_credentials(base_ref.registry, parse_creds(base_creds, "--base-creds"))
        elif not push_refs:
            options = options.for_target(base_ref.registry, creds)
    elif base_creds:
        raise UsageError("--base-creds is for a registry --base; this --base is not one")
    if creds and not push_refs and base_ref is None:
        from .models.reference import model_registries

        if not (hosts := model_registries(models)):
            raise UsageError(
                "--creds is for --push, a registry --base or a registered model; this command has none"
            )
        for host in hosts:  # no --push and no registry --base: the registered models' registries
            options = options.for_target(host, creds)
    return options


def _cache_repo(text: str | None) -> Reference | None:
    """``--cache-repo``'s repository (``cache.registry`` and its HTTP are imported only when there is one)."""
    if not text:
        return None
    from .cache.registry import parse_cache_repo

    return parse_cache_repo(text)


def _signer(key: PathLike | None, password_file: PathLike | None, settings: Settings) -> Signer | None:
    if key is None:
        if password_file is not None:
            raise UsageError("--sign-password-file is the password of a --sign-key; add --sign-key")
        return None
    password = settings.sign_password
    if password_file is not None:
        try:
            password = Path(password_file).read_text().rstrip("\r\n")
        except OSError as e:
            raise InputError(f"--sign-password-file {password_file}: {e.strerror}") from None
    return Signer(Path(key), password)


Staging = StagedArchive | StagedLayout | Spool


def _stage(outputs: Outputs | None, epoch: int, store: BlobStore) -> list[Staging]:
    """What takes the model layer as the build makes it, so that the model is read once whatever it is written
    to: each tarball and layout (begun beside its destination) and, for pushes and ``--load``, the cache
    (``oci.store.Spool``: a push asks the registry before it sends, so the layer cannot go up while it is made;
    the engine's load is one stream of a whole tarball, after the build)."""
    if outputs is None:
        return []
    staging: list[Staging] = []
    try:
        staging += [StagedArchive(Path(path), epoch) for path in outputs.archives]
        staging += [StagedLayout(Path(path)) for path in outputs.layouts]
    except BaseException:
        _discard(staging)
        raise
    if outputs.pushes or outputs.load:
        staging.append(Spool(store))
    return staging


def _discard(staging: Sequence[Staging]) -> None:
    for staged in staging:
        staged.discard()


def _platforms(texts: Sequence[str]) -> list[Platform]:
    wanted = [Platform.parse(t.strip()) for t in texts if t.strip()]
    if not wanted:
        raise UsageError("--platform: name at least one os/arch, e.g. linux/amd64")
    return wanted


def _registered(model: PathLike) -> bool:
    from .models.reference import is_model_reference

    return isinstance(model, str) and is_model_reference(model)


def package(
    models: Sequence[PathLike],
    inference_config: InferenceConfig,
    base: str | None = None,
    *,
    name: str | None = None,
    version: str | None = None,
    platform: str = "linux/amd64",
    platforms: Sequence[str] | None = None,
    compression: str = "gzip",
    port: int = 5001,
    user: str = DEFAULT_USER,
    bytecode: bool = True,
    cache: PathLike | None = None,
    use_cache: bool = True,
    progress: Progress | Listener | None = None,
    registry: RegistryOptions | None = None,
    settings: Settings | None = None,
    outputs: Outputs | None = None,
    allow_imports: Sequence[str] = (),
    skip_checks: Sequence[str] = (),
    smoke_test: bool = False,
    sample_input: PathLike | None = None,
    cache_repo: str | None = None,
    cache_repo_readonly: bool | None = None,
    sbom: str = "spdx",
    provenance: bool = True,
    sign_key: PathLike | None = None,
    sign_password_file: PathLike | None = None,
) -> Package:
    """Build the image into the local cache. ``models``: local files or folders, and registered models as
    registry references (``docker://HOST/REPO:VERSION`` or ``HOST/REPO@sha256:…``, see ``ocibuild model push``).
    ``version``: the local models' version (default 1); for a registered model, its own unless given.
    ``platform``: ``os/arch[/variant]``; ``platforms`` (or a comma-separated ``platform``): several, built into one
    image index (each on its platform's image of the base, with wheels for it; the layers that do not depend on the
    platform are made once).
    ``user``: who the image runs as (``UID[:GID]`` or ``NAME[:GROUP]``; default the non-root 65532:65532,
    ``"0"`` for root). ``bytecode``: compile the dependencies with the image's own Python (where this machine
    can run it) so that a read-only root starts as fast as a writable one.
    ``registry``: credentials and TLS for a registry base and registered models (and the default for ``push``;
    ``bind_credentials`` makes one). ``progress``: a ``Progress`` or a listener of ``events``; none by default.
    ``allow_imports``: import names the entry script may use although the image lacks them (it gets them another
    way); ``skip_checks``: checks not to run, of ``"native"`` and ``"imports"``. ``smoke_test``: run the built
    image's server once, here, and score ``sample_input`` (a file) or the script's own input sample (needs root,
    or user namespaces; where the machine allows neither it is skipped with a warning).
    ``cache_repo``: a registry repository (``REGISTRY/REPO``) that builders share as their layer cache (default
    ``$OCIBUILD_CACHE_REPO``): layers found there are not built, layers built go there, unless
    ``cache_repo_readonly`` (default ``$OCIBUILD_CACHE_REPO_READONLY``).
    ``sbom``: the SBOM every image carries, ``"spdx"`` (SPDX 2.3 JSON, the default), ``"cyclonedx"`` (1.6 JSON)
    or ``"none"``; ``provenance``: a SLSA provenance v1 statement (in-toto). Each is pushed as the image's referrer
    and written beside it in layouts and archives.
    ``sign_key``: a PEM ECDSA P-256 private key that signs every push as cosign does (its password from
    ``sign_password_file``, else ``$OCIBUILD_SIGN_PASSWORD`` or ``$COSIGN_PASSWORD``).
    ``settings``: what the environment says (default: read now, ``Settings.from_environ``). ``outputs``: where
    to write the image once built (checked before building)."""
    settings = settings or Settings.from_environ()
    check_format(sbom)
    signer = _signer(sign_key, sign_password_file, settings)  # a wrong key or password fails before the build
    if signer is not None and outputs is not None and not outputs.pushes:
        raise UsageError("--sign-key signs what is pushed (the signature names the repository): add --push")
    wanted = _platforms(platforms if platforms is not None else platform.split(","))
    if outputs is not None:
        outputs.check()
        if len(wanted) > 1:
            outputs.check_index()
    if sample_input is not None and not smoke_test:
        raise UsageError("--sample-input is what --smoke-test sends; add --smoke-test")
    smoke = SmokeOptions.with_sample(Path(sample_input) if sample_input else None) if smoke_test else None
    if not isinstance(progress, Progress):
        progress = Progress(progress)
    environment = inference_config.environment.resolve()
    spec = PackageSpec(
        models=tuple(Path(m) for m in models if not _registered(m)),
        model_refs=tuple(str(m) for m in models if _registered(m)),
        entry_script=Path(inference_config.entry_script),
        source_dir=Path(inference_config.source_directory) if inference_config.source_directory else None,
        environment=environment,
        base=base or settings.default_base(environment.python_version),
        name=name,
        version=None if version is None else str(version),
        platform=wanted[0],
        compression=compression,
        port=port,
        user=user,
        bytecode=bytecode,
        use_cache=use_cache,
        registry=registry or settings.registry_options(),
        epoch=settings.source_date_epoch,
        checks=CheckOptions.of(skip_checks, allow_imports),
        smoke=smoke,
        cache_repo=_cache_repo(cache_repo or settings.cache_repo),
        cache_repo_readonly=settings.cache_repo_readonly
        if cache_repo_readonly is None
        else cache_repo_readonly,
        model_digests=sbom != "none" or provenance,
    )
    for reference in outputs.pushes if outputs is not None else ():
        RegistryPublisher(parse_reference(reference), options=spec.registry).preflight()
    store = BlobStore(Path(cache) if cache is not None else settings.cache_dir)
    staging = _stage(outputs, settings.source_date_epoch, store)
    try:
        if len(wanted) == 1:
            result: BuildResult | IndexResult = build(spec, store, progress, sinks=staging)
        else:
            result = build_index(spec, wanted, store, progress, sinks=staging)
        pkg = Package(result, progress, settings, registry)
        pkg.signer = signer
        pkg.staging = staging
        pkg.attach_documents(store, DocumentOptions(sbom, provenance))
        if outputs is not None:
            pkg.publish(outputs)
    finally:
        _discard(staging)
    return pkg
