"""The Python API, shaped like Azure ML's ``Model.package`` so migrating users feel at home (DESIGN §1).

    pkg = package(models=["model.pkl"],
                  inference_config=InferenceConfig(entry_script="score.py",
                                                   environment=Environment(pip_requirements="requirements.txt")),
                  base="oci:./base:py311")
    pkg.export("image.tar", tag="myimage:latest"); pkg.write_layout("./layout"); pkg.save("./context")
    pkg.push("registry.example.com/team/myimage:1")
    print(pkg.digest)

Building and publishing are separate: ``package`` builds into the local cache; each method is one publisher.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .checks.build import CheckOptions
from .events import Progress
from .oci.archive import Tagged, write_archive
from .oci.descriptor import Platform
from .oci.digest import Digest
from .oci.layout import write_layout
from .oci.name import ImageName, parse_reference
from .oci.store import BlobStore
from .packaging.environment import PythonEnvironment, load_environment
from .packaging.package import BuildResult, PackageSpec, build
from .registry.transport import RegistryOptions
from .settings import default_base

PathLike = str | os.PathLike


@dataclass(frozen=True)
class Environment:
    """What the image's Python needs: a requirements file, extra pip specs, or a conda environment file."""

    pip_requirements: PathLike | Sequence[PathLike] | None = None
    pip_packages: Sequence[str] = ()
    conda_file: PathLike | None = None

    def resolve(self) -> PythonEnvironment:
        reqs = self.pip_requirements
        if reqs is None:
            files: list[Path] = []
        elif isinstance(reqs, (str, os.PathLike)):
            files = [Path(reqs)]
        else:
            files = [Path(r) for r in reqs]
        conda = Path(self.conda_file) if self.conda_file is not None else None
        return load_environment(files, list(self.pip_packages), conda)


@dataclass(frozen=True)
class InferenceConfig:
    entry_script: PathLike
    source_directory: PathLike | None = None
    environment: Environment = field(default_factory=Environment)


class Package:
    """A built image in the local cache, ready to be written out."""

    def __init__(self, result: BuildResult, progress: Progress, registry: RegistryOptions | None = None):
        self.result = result
        self._progress = progress
        self._registry = registry

    @property
    def image(self):
        return self.result.image

    @property
    def digest(self) -> Digest:
        return self.result.image.digest

    def default_tag(self) -> str:
        return f"{self.result.model_name}:{self.result.image.config['config']['Labels']['org.opencontainers.image.version']}"

    def export(self, path: PathLike, tag: str | None = None, append: bool = False) -> Path:
        """A tarball that ``docker load``, ``podman load`` and ``skopeo`` (docker-archive: and oci-archive:) read.

        With ``append``, the images already in the file stay (one tarball, several images, as ``docker save a b``).
        """
        name = ImageName.parse(tag or self.default_tag())
        size = sum(d.size for d in self.image.descriptors())
        counter = self._progress.bytes(f"writing {path}", size)
        tagged = Tagged(self.image, name.repo_tag, name.ref_name, name.full)
        write_archive([tagged], Path(path), append=append)
        counter.done()
        return Path(path)

    def write_layout(self, directory: PathLike, tag: str | None = None) -> Path:
        """An OCI image layout directory (``umoci``, ``skopeo copy oci:DIR:TAG``)."""
        name = ImageName.parse(tag or self.default_tag())
        write_layout([(self.image, name.ref_name, name.full)], Path(directory))
        return Path(directory)

    def save(self, directory: PathLike) -> Path:
        """A Dockerfile build context that ``docker build`` turns into an image that behaves the same."""
        from .packaging.dockerfile import write_context

        write_context(self.result, Path(directory))
        return Path(directory)

    def load(self, tag: str | None = None) -> str:
        """Stream the image into the local Docker or podman engine; returns the engine's message."""
        from .transports.engine import load_into_engine

        name = ImageName.parse(tag or self.default_tag())
        return load_into_engine([Tagged(self.image, name.repo_tag, name.ref_name, name.full)])

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
        from .registry.push import push_image

        ref = parse_reference(reference)
        for tag in tags:
            parse_reference(f"{ref.registry}/{ref.repository}:{tag}")  # a bad tag fails before any upload
        options = (registry or self._registry or RegistryOptions()).for_target(ref.registry, creds)
        return push_image(self.image, ref, options, self._progress, tags)


def _registered(model: PathLike) -> bool:
    from .models.registry import is_model_reference

    return isinstance(model, str) and is_model_reference(model)


def package(
    models: Sequence[PathLike],
    inference_config: InferenceConfig,
    base: str | None = None,
    *,
    name: str | None = None,
    version: str | None = None,
    platform: str = "linux/amd64",
    compression: str = "gzip",
    port: int = 5001,
    cache: PathLike | None = None,
    use_cache: bool = True,
    progress: Progress | None = None,
    registry: RegistryOptions | None = None,
    allow_imports: Sequence[str] = (),
    skip_checks: Sequence[str] = (),
) -> Package:
    """Build the image into the local cache. ``models``: local files or folders, and registered models as
    registry references (``docker://HOST/REPO:VERSION`` or ``HOST/REPO@sha256:…``, see ``ocibuild model push``).
    ``version``: the local models' version (default 1); for a registered model, its own unless given.
    ``registry``: credentials and TLS for a registry base and registered models (and the default for ``push``).
    ``allow_imports``: import names the entry script may use although the image lacks them (it gets them another
    way); ``skip_checks``: checks not to run, of ``"native"`` and ``"imports"``."""
    progress = progress or Progress(quiet=True)
    spec = PackageSpec(
        models=tuple(Path(m) for m in models if not _registered(m)),
        model_refs=tuple(str(m) for m in models if _registered(m)),
        entry_script=Path(inference_config.entry_script),
        source_dir=Path(inference_config.source_directory) if inference_config.source_directory else None,
        environment=inference_config.environment.resolve(),
        base=base or default_base(),
        name=name,
        version=None if version is None else str(version),
        platform=Platform.parse(platform),
        compression=compression,
        port=port,
        use_cache=use_cache,
        registry=registry,
        checks=CheckOptions.of(skip_checks, allow_imports),
    )
    return Package(build(spec, BlobStore(cache), progress), progress, registry)
