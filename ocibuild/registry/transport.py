"""HTTP to one registry: TLS trust, http-or-https, authentication, bounded retries, and failures as one line.

TLS is verified unless ``--insecure``. ``--ca-cert FILE`` and ``--cert-dir DIR`` (skopeo's convention: ``*.crt`` CAs,
``*.cert``/``*.key`` client pairs; default ``/etc/containers/certs.d/HOST`` and ``/etc/docker/certs.d/HOST``) add
to the system's trust rather than replace it. Plain HTTP is tried only after HTTPS, and only for loopback
registries (as Docker allows) or with ``--insecure``; a certificate that fails verification is an error, never a
reason to fall back to HTTP.

Retries: 408, 429 and 5xx, read failures and refused connections are retried with exponential backoff, honouring
``Retry-After``, bounded in count *and* in total waiting time; a connect timeout is a few seconds, so an
unreachable registry fails within seconds. Only requests whose body can be sent again are retried here; a
streamed upload is retried whole by its caller. This module never logs or repeats a credential.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import re
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
import requests.adapters
import requests.auth
import urllib3

from ..errors import UsageError
from ..oci.name import DOCKER_HUB
from ..version import __version__
from .auth import Authenticator
from .errors import RegistryError, TLSError, TransientError, UnreachableError
from .options import RegistryOptions, retry_delay

SEND_BLOCK = 1 << 20  # bytes per socket write of a streamed upload (urllib3's default is 16 KiB)
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def api_host(host: str) -> str:
    """Where a registry's API lives: Docker Hub's name is ``docker.io``, its API ``registry-1.docker.io``."""
    return "registry-1.docker.io" if host == DOCKER_HUB else host


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1, with or without a port."""
    name = host
    if name.startswith("["):
        name = name[1 : name.find("]")]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class _NoAuth(requests.auth.AuthBase):
    """Keeps requests from adding ``~/.netrc`` credentials over the Authorization header we set ourselves."""

    def __call__(self, r):
        return r


class _Adapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["blocksize"] = SEND_BLOCK
        super().init_poolmanager(*args, **kwargs)


def default_ca_bundle(bundle: str | None) -> str:
    """What requests would trust: ``bundle`` (``$REQUESTS_CA_BUNDLE``, read by ``settings``) if it is a file,
    else certifi's."""
    if bundle and os.path.isfile(bundle):
        return bundle
    return requests.certs.where()


_bundles: dict[tuple[str, ...], str] = {}
_bundles_lock = threading.Lock()


def _trust_bundle(default: str | None, extra: tuple[str, ...]) -> str:
    """A PEM file with the default CAs plus ``extra`` (removed when the process exits)."""
    key = (default or "", *extra)
    with _bundles_lock:
        if key in _bundles:
            return _bundles[key]
        parts = [Path(default_ca_bundle(default)).read_text()]
        for path in extra:
            try:
                parts.append(Path(path).read_text())
            except (OSError, UnicodeDecodeError) as e:
                raise UsageError(f"CA certificate {path}: cannot read it ({e})") from None
        fd, name = tempfile.mkstemp(prefix="ocibuild-ca-", suffix=".pem")
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(parts))
        atexit.register(lambda: Path(name).unlink(missing_ok=True))
        _bundles[key] = name
        return name


def tls_settings(host: str, options: RegistryOptions) -> tuple[bool | str, tuple[str, str] | None]:
    """``verify`` and ``cert`` for requests: system trust plus the user's CA and the host's certs.d."""
    if options.insecure:
        return False, None
    dirs = (
        [Path(options.cert_dir)]
        if options.cert_dir
        else [Path("/etc/containers/certs.d") / host, Path("/etc/docker/certs.d") / host]
    )
    cas = [str(options.ca_cert)] if options.ca_cert else []
    client = None
    for d in dirs:
        if d.is_dir():
            cas += [str(p) for p in sorted(d.glob("*.crt"))]
            for cert in sorted(d.glob("*.cert")):
                key = cert.with_suffix(".key")
                if key.is_file() and client is None:
                    client = (str(cert), str(key))
    return (_trust_bundle(options.ca_bundle, tuple(cas)) if cas else True), client


def reason(exc: BaseException) -> str:
    """A short human reason for a connection failure, from the exception chain requests and urllib3 build."""
    text = " ".join(str(a) for a in _chain(exc))
    for pattern, why in (
        (r"Connection refused|ECONNREFUSED", "connection refused"),
        (r"Name or service not known|nodename nor servname|NameResolution|getaddrinfo failed|No address",
         "unknown host"),
        (r"Network is unreachable|No route to host", "network unreachable"),
        (r"timed out|Timeout", "timed out"),
        (r"Connection reset|RemoteDisconnected|aborted|Broken pipe", "connection reset"),
        (r"IncompleteRead|Connection broken", "the answer broke off"),
    ):  # fmt: skip
        if re.search(pattern, text):
            return why
    return type(exc).__name__


def _chain(exc: BaseException | None) -> Iterable[BaseException]:
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack += [e.__cause__, e.__context__, *(a for a in e.args if isinstance(a, BaseException))]
        stack += [getattr(e, "reason", None)] if isinstance(getattr(e, "reason", None), BaseException) else []


def _is_connect_failure(exc: BaseException) -> bool:
    """True when no connection was made at all (so no byte of the request reached the server)."""
    from urllib3.exceptions import NameResolutionError, NewConnectionError

    return any(
        isinstance(e, (NewConnectionError, NameResolutionError, ConnectionRefusedError)) for e in _chain(exc)
    )


def _tls_error(exc: BaseException, host: str, what: str) -> TLSError:
    text = " ".join(str(a) for a in _chain(exc))
    m = re.search(r"certificate verify failed: ([^()'\"]+)", text)
    if m or "CERTIFICATE_VERIFY_FAILED" in text or "doesn't match" in text or "Hostname mismatch" in text:
        reason = m.group(1).strip() if m else "hostname mismatch"
        return TLSError(
            f"{what}: TLS certificate not trusted ({reason}); pass --ca-cert FILE or --cert-dir DIR, or --insecure",
            verification=True,
        )
    m = re.search(r"\] ([^()'\"]+) \(_ssl", text)
    return TLSError(
        f"{what}: TLS with {host} failed ({m.group(1) if m else 'handshake error'}); "
        "check the registry address, or pass --insecure for plain HTTP"
    )


class StaleToken(TransientError):
    """A 401 on a request whose body cannot be sent again: the token was dropped; retry the whole operation."""


class Transport:
    """One registry host: a requests session, its scheme (found by pinging ``/v2/``) and its authenticator."""

    def __init__(self, host: str, options: RegistryOptions):
        self.host = host
        self.options = options
        self.base: str | None = None
        self._ping_lock = threading.Lock()
        s = requests.Session()
        adapter = _Adapter(pool_connections=4, pool_maxsize=16)
        s.mount("https://", adapter)
        s.mount("http://", adapter)
        s.headers["User-Agent"] = f"ocibuild/{__version__}"
        s.auth = _NoAuth()
        self.verify, self.cert = tls_settings(host, options)
        if options.insecure:  # asked for: one warning per request would bury the output
            warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
        self.session = s
        self.auth = Authenticator(host, lambda: options.credentials_for(host), self._fetch_for_auth)

    def close(self) -> None:
        self.session.close()

    def url(self, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        assert self.base is not None
        return self.base + path_or_url

    def ping(self, what: str) -> str:
        """Find the scheme (https, or http where allowed) and learn the auth challenge; returns the base URL."""
        with self._ping_lock:
            if self.base is not None:
                return self.base
            schemes = ["https"] + (["http"] if self.options.insecure or is_loopback(self.host) else [])
            for scheme in schemes:
                try:
                    response = self.send("GET", f"{scheme}://{api_host(self.host)}/v2/", what=what)
                except TLSError as e:
                    if scheme == "https" and len(schemes) > 1 and not e.verification:
                        continue  # the server speaks plain HTTP on this port
                    raise
                with response:
                    if response.status_code == 401:
                        self.auth.learn(response)
                    elif response.status_code != 200:
                        raise status_error(response, what, f"{self.host} is not a registry (GET /v2/)")
                self.base = f"{scheme}://{api_host(self.host)}"
                return self.base
            raise AssertionError("unreachable")

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        what: str,
        scopes: Iterable[str] = (),
        headers: Mapping[str, str] | None = None,
        replayable: bool = True,
        **kwargs: Any,
    ) -> requests.Response:
        """Send an authenticated request; a 401 gets one fresh credential attempt, a second one raises."""
        self.ping(what)
        url = self.url(path_or_url)
        scopes = tuple(scopes)
        fresh = False
        while True:
            h = dict(headers or {})
            if authz := self.auth.authorization(scopes, what):
                h["Authorization"] = authz
            response = self.send(method, url, what=what, headers=h, retry=replayable, **kwargs)
            if response.status_code != 401:
                return response
            response.close()
            challenge = self.auth.learn(response)
            self.auth.forget(scopes)
            if fresh or challenge is None:
                raise self.auth.failure(what)
            if challenge.scopes:  # e.g. error="insufficient_scope": ask for what the registry says it needs
                scopes = tuple(sorted(set(scopes) | set(challenge.scopes)))
            if not replayable:
                raise StaleToken(f"{what}: the registry asked to authenticate again mid-upload")
            fresh = True

    def _fetch_for_auth(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        return self.send(method, url, what=f"{self.host} (token server)", **kwargs)

    def send(
        self, method: str, url: str, *, what: str, retry: bool = True, **kwargs: Any
    ) -> requests.Response:
        """One request with bounded retries (no authentication); connection and TLS failures become errors."""
        policy = self.options.retry
        read_timeout = kwargs.pop("timeout", None) or policy.read_timeout
        where = urlsplit(url).netloc  # the registry, or its token server
        waited = 0.0
        attempt = 0
        while True:
            attempt += 1
            try:
                # verify and cert per request: the session's would lose to $REQUESTS_CA_BUNDLE in requests.
                response = self.session.request(
                    method, url, timeout=(policy.connect_timeout, read_timeout), verify=self.verify,
                    cert=self.cert, **kwargs,
                )  # fmt: skip
            except requests.exceptions.SSLError as e:
                raise _tls_error(e, where, what) from None
            except requests.exceptions.ConnectTimeout:
                raise UnreachableError(
                    f"{what}: cannot connect to {where} (no answer within {policy.connect_timeout:.0f} s)"
                ) from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                    requests.exceptions.ChunkedEncodingError) as e:  # fmt: skip
                connect = _is_connect_failure(e)
                limit = policy.connect_attempts if connect else policy.attempts
                delay = retry_delay(attempt, None, policy)
                if retry and attempt < limit and waited + delay <= policy.budget:
                    time.sleep(delay)
                    waited += delay
                    continue
                if connect:
                    raise UnreachableError(f"{what}: cannot connect to {where} ({reason(e)})") from None
                raise TransientError(f"{what}: connection to {where} lost ({reason(e)}); try again") from None
            if retry and response.status_code in _RETRY_STATUS and attempt < policy.attempts:
                delay = retry_delay(attempt, response.headers.get("Retry-After"), policy)
                if waited + delay <= policy.budget:
                    response.close()
                    time.sleep(delay)
                    waited += delay
                    continue
            return response


def registry_errors(response: requests.Response) -> str:
    """``CODE: message`` of a distribution error body, short, or empty."""
    try:
        errors = response.json().get("errors") or []
        parts = [f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors[:2]]
        return "; ".join(p for p in parts if p)[:200]
    except (ValueError, AttributeError, TypeError):
        return ""


def status_error(response: requests.Response, what: str, doing: str) -> RegistryError:
    """The one-line error for an unexpected HTTP status."""
    code = response.status_code
    detail = registry_errors(response)
    detail = f": {detail}" if detail else ""
    if code == 429:
        error = TransientError(
            f"{what}: the registry is limiting requests (HTTP 429){detail}; try again later"
        )
    elif code in _RETRY_STATUS or code >= 500:
        error = TransientError(
            f"{what}: {doing} failed, the registry answered HTTP {code}{detail}; try again later"
        )
    else:
        return RegistryError(f"{what}: {doing} refused, HTTP {code}{detail}")
    error.retry_after = response.headers.get("Retry-After")
    return error
