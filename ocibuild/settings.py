"""Configuration from the environment, read in one place.

Library code never reads ``os.environ`` for its settings: the command line and the API call ``Settings.from_environ``
once and pass what it found down as arguments, so a module's behaviour is decided by its arguments alone (and a
test or an embedding program can give any value without touching the process's environment). The scoring server
inside images is a separate program with its own knobs (``serving.config``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError
from .registry.credentials import auth_files
from .registry.options import RegistryOptions


@dataclass(frozen=True)
class Settings:
    cache_dir: Path  # $OCIBUILD_CACHE, else $XDG_CACHE_HOME/ocibuild, else ~/.cache/ocibuild
    source_date_epoch: int  # $SOURCE_DATE_EPOCH (reproducible-builds.org), else 0: every time in an image
    base: str | None  # $OCIBUILD_BASE: the default base, when set (see ``default_base``)
    registry_user: str | None = field(default=None, repr=False)  # $OCIBUILD_REGISTRY_USER (CI secrets)
    registry_password: str | None = field(default=None, repr=False)  # $OCIBUILD_REGISTRY_PASSWORD
    registry_auth_file: str | None = None  # $REGISTRY_AUTH_FILE (podman's and skopeo's)
    runtime_dir: str | None = None  # $XDG_RUNTIME_DIR: podman's auth.json lives there
    config_home: Path = Path("~/.config")  # $XDG_CONFIG_HOME
    docker_config: Path = Path("~/.docker/config.json")  # $DOCKER_CONFIG/config.json
    ca_bundle: str | None = None  # $REQUESTS_CA_BUNDLE or $CURL_CA_BUNDLE: the trust --ca-cert adds to
    engine_hosts: tuple[str, ...] = ()  # $DOCKER_HOST, $CONTAINER_HOST: engines tried first for --load
    cache_repo: str | None = None  # $OCIBUILD_CACHE_REPO: a registry repository shared as the layer cache
    # $OCIBUILD_SIGN_PASSWORD, else $COSIGN_PASSWORD (what cosign's users already set): the --sign-key's password
    sign_password: str | None = field(default=None, repr=False)
    cache_repo_readonly: bool = (
        False  # $OCIBUILD_CACHE_REPO_READONLY=1: read it, never write it (untrusted builds)
    )

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        home = Path(env.get("HOME") or os.path.expanduser("~"))
        cache_home = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else home / ".cache"
        docker_dir = Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else home / ".docker"
        return cls(
            cache_dir=Path(env["OCIBUILD_CACHE"]) if env.get("OCIBUILD_CACHE") else cache_home / "ocibuild",
            source_date_epoch=_epoch(env.get("SOURCE_DATE_EPOCH")),
            base=env.get("OCIBUILD_BASE") or None,
            registry_user=env.get("OCIBUILD_REGISTRY_USER"),
            registry_password=env.get("OCIBUILD_REGISTRY_PASSWORD"),
            registry_auth_file=env.get("REGISTRY_AUTH_FILE"),
            runtime_dir=env.get("XDG_RUNTIME_DIR"),
            config_home=Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else home / ".config",
            docker_config=docker_dir / "config.json",
            ca_bundle=env.get("REQUESTS_CA_BUNDLE") or env.get("CURL_CA_BUNDLE"),
            engine_hosts=tuple(env[v] for v in ("DOCKER_HOST", "CONTAINER_HOST") if env.get(v)),
            cache_repo=env.get("OCIBUILD_CACHE_REPO") or None,
            sign_password=env.get("OCIBUILD_SIGN_PASSWORD") or env.get("COSIGN_PASSWORD") or None,
            cache_repo_readonly=_flag(
                env.get("OCIBUILD_CACHE_REPO_READONLY"), "OCIBUILD_CACHE_REPO_READONLY"
            ),
        )

    def default_base(self, python: tuple[int, int] | None = None) -> str:
        """``$OCIBUILD_BASE``, else the official slim image of ``python`` (a conda file's ``python=X.Y`` pin), else
        of this Python (the one that pickled the model)."""
        major, minor = python or sys.version_info[:2]
        return self.base or f"docker.io/library/python:{major}.{minor}-slim"

    def registry_options(
        self,
        *,
        auth_file: Path | None = None,
        insecure: bool = False,
        ca_cert: Path | None = None,
        cert_dir: Path | None = None,
    ) -> RegistryOptions:
        """How to reach registries: the command's own options on top of what the environment says."""
        files = auth_files(
            auth_file,
            registry_auth_file=self.registry_auth_file,
            runtime_dir=self.runtime_dir,
            config_home=self.config_home,
            docker_config=self.docker_config,
        )
        return RegistryOptions(
            auth_file=auth_file,
            auth_files=files,
            env_user=self.registry_user,
            env_password=self.registry_password,
            insecure=insecure,
            ca_cert=ca_cert,
            cert_dir=cert_dir,
            ca_bundle=self.ca_bundle,
        )


def _epoch(value: str | None) -> int:
    if value is None:
        return 0
    try:
        return max(0, int(value))
    except ValueError:
        raise InputError(
            f"SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds; unset it or fix it"
        ) from None


def _flag(value: str | None, name: str) -> bool:
    if value is None or value.strip().lower() in ("", "0", "false", "no"):
        return False
    if value.strip().lower() in ("1", "true", "yes"):
        return True
    raise InputError(f"{name}={value!r}: set it to 1 or 0")
