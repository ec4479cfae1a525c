"""What the user said about reaching registries (credentials bound to hosts, auth files, TLS trust, retries), apart
from ``transport``'s HTTP: settings and builds carry these without importing requests (60 ms of every command's
start, measured), which only a command that talks to a registry needs.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import UsageError
from .credentials import Credentials, env_credentials, lookup, parse_creds


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # per request, for 408/429/5xx answers and lost connections
    connect_attempts: int = 3  # refused connections (a registry restarting), before giving up
    backoff: float = 0.5  # first delay; doubles each time
    max_backoff: float = 8.0
    budget: float = 60.0  # total seconds one request may spend waiting between attempts
    connect_timeout: float = 5.0
    read_timeout: float = 120.0
    blob_attempts: int = 3  # a whole blob upload or download started over after a transient failure
    upload_wait: int = (
        5  # read timeouts to wait after a blob's last byte: a registry may hash a large blob first
    )


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_delay(attempt: int, retry_after: str | None, policy: RetryPolicy) -> float:
    """Seconds to wait before attempt ``attempt + 1``: the backoff, or longer when the registry asks."""
    delay = min(policy.max_backoff, policy.backoff * 2 ** (attempt - 1))
    asked = retry_after_seconds(retry_after)
    return max(delay, asked) if asked is not None else delay


@dataclass(frozen=True)
class RegistryOptions:
    """How to reach registries: credentials bound to hosts, an auth file, TLS trust, retries."""

    credentials: Mapping[str, Credentials] = field(default_factory=dict, hash=False)
    auth_file: Path | None = None  # --authfile: checked to exist; it is also the first of ``auth_files``
    auth_files: tuple[Path, ...] = ()  # where stored credentials are looked up, in order
    env_user: str | None = field(default=None, repr=False)  # $OCIBUILD_REGISTRY_USER
    env_password: str | None = field(default=None, repr=False)  # $OCIBUILD_REGISTRY_PASSWORD
    insecure: bool = False
    ca_cert: Path | None = None
    cert_dir: Path | None = None
    ca_bundle: str | None = None  # the default trust ($REQUESTS_CA_BUNDLE) that --ca-cert adds to
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    workers: int = 4  # blobs transferred at once by a push

    def with_credentials(self, host: str, creds: Credentials | None) -> RegistryOptions:
        """A copy where ``creds`` (if any) are used for ``host`` only."""
        if creds is None:
            return self
        return replace(self, credentials={**self.credentials, host: creds})

    def for_target(self, host: str, creds: str | None, option: str = "--creds") -> RegistryOptions:
        """Bind ``--creds USER:PASSWORD`` (else, unless ``host`` already has some, the environment's) to
        ``host``: the one registry the user named them for. ``option`` names them in messages."""
        if creds:
            return self.with_credentials(host, parse_creds(creds, option))
        if host in self.credentials:
            return self
        return self.with_credentials(host, env_credentials(self.env_user, self.env_password))

    def credentials_for(self, host: str) -> Credentials | None:
        return self.credentials.get(host) or lookup(host, self.auth_files)

    def check(self) -> None:
        """Fail fast on options naming files that are not there."""
        if self.ca_cert is not None and not Path(self.ca_cert).is_file():
            raise UsageError(f"--ca-cert {self.ca_cert}: no such file")
        if self.cert_dir is not None and not Path(self.cert_dir).is_dir():
            raise UsageError(f"--cert-dir {self.cert_dir}: no such directory")
        if self.auth_file is not None and not Path(self.auth_file).is_file():
            raise UsageError(f"--authfile {self.auth_file}: no such file")
