"""Registry authentication: ``WWW-Authenticate`` challenges, Basic, and Bearer tokens per scope.

The registry says which scheme it wants in a 401 (learned from the ``/v2/`` ping, or from any later 401). Basic
sends the credentials with each request; Bearer trades them at the challenge's ``realm`` for a token valid for a
set of scopes (``repository:NAME:pull``, ``repository:NAME:pull,push``), cached per scope set until it expires.
A 401 on a request drops that token and lets the caller try once more; a second 401 means the credentials are wrong.
Credentials are looked up only when a registry asks for them, and never written into a message.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import requests

from .credentials import Credentials
from .errors import AccessDeniedError, AuthenticationError, RegistryError

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_TOKEN68 = re.compile(r"[A-Za-z0-9._~+/-]+=*")
_TOKEN_RE = re.compile(_TOKEN)
TOKEN_MIN_LIFETIME = 60.0  # the distribution spec's default when a token server gives no expires_in


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "basic", "bearer"
    params: dict[str, str]  # names lower case; a token68 form is under ""

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple(self.params.get("scope", "").split())


def parse_challenges(header: str) -> list[Challenge]:
    """Every challenge in a ``WWW-Authenticate`` value (RFC 7235): ``Bearer realm="…",service="…",scope="…"``.

    Quoted values may hold commas and escaped quotes; several challenges may share one header; unknown or
    malformed tails are skipped rather than fatal (a registry's header is not ours to reject).
    """
    out: list[Challenge] = []
    i, n = 0, len(header)
    while i < n:
        i = _skip(header, i, " \t,")
        m = _TOKEN_RE.match(header, i)
        if not m:
            break
        scheme, i = m.group(0).lower(), _skip(header, m.end(), " \t")
        t68 = _TOKEN68.match(header, i)
        if t68 and t68.group(0).endswith("=") and _at_end_of_item(header, t68.end()):
            params, i = {"": t68.group(0)}, t68.end()
        else:
            params, i = _params(header, i)
        out.append(Challenge(scheme, params))
    return out


def _skip(s: str, i: int, chars: str) -> int:
    while i < len(s) and s[i] in chars:
        i += 1
    return i


def _params(header: str, i: int) -> tuple[dict[str, str], int]:
    """``name=value`` pairs from ``i`` on, up to a bare token (the next challenge's scheme) or the end."""
    params: dict[str, str] = {}
    n = len(header)
    while i < n:
        i = _skip(header, i, " \t,")
        m = _TOKEN_RE.match(header, i)
        if not m:
            break
        j = _skip(header, m.end(), " \t")
        if j >= n or header[j] != "=":
            break  # a bare token: the next challenge's scheme
        value, i = _value(header, _skip(header, j + 1, " \t"))
        params[m.group(0).lower()] = value
    return params, i


def _at_end_of_item(s: str, i: int) -> bool:
    while i < len(s) and s[i] in " \t":
        i += 1
    return i >= len(s) or s[i] == ","


def _value(s: str, i: int) -> tuple[str, int]:
    if i < len(s) and s[i] == '"':
        i += 1
        buf = []
        while i < len(s) and s[i] != '"':
            if s[i] == "\\" and i + 1 < len(s):
                i += 1
            buf.append(s[i])
            i += 1
        return "".join(buf), i + 1
    m = _TOKEN_RE.match(s, i)
    if not m:
        return "", i
    return m.group(0), m.end()


def basic_authorization(creds: Credentials) -> str:
    return "Basic " + base64.b64encode(f"{creds.username}:{creds.secret}".encode()).decode()


def repository_scope(repository: str, actions: str) -> str:
    """``repository:team/app:pull,push`` (actions ``pull`` or ``pull,push``)."""
    return f"repository:{repository}:{actions}"


# (method, url, keyword arguments for requests) -> response; raises UnreachableError/TLSError itself.
Fetch = Callable[..., requests.Response]


class Authenticator:
    """One registry's authentication state. Thread-safe: pushes ask for headers from several threads."""

    def __init__(self, host: str, credentials: Callable[[], Credentials | None], fetch: Fetch):
        self.host = host
        self._find_credentials = credentials
        self._fetch = fetch
        self._lock = threading.Lock()
        self._challenge: Challenge | None = None
        self._creds: Credentials | None = None
        self._creds_known = False
        self._tokens: dict[tuple[str, ...], tuple[str, float]] = {}
        self._fetching: dict[tuple[str, ...], threading.Lock] = {}

    @property
    def credentials(self) -> Credentials | None:
        with self._lock:
            if not self._creds_known:
                self._creds = self._find_credentials()
                self._creds_known = True
            return self._creds

    def learn(self, response: requests.Response) -> Challenge | None:
        """Take the Basic or Bearer challenge of a 401 (the first one we can answer)."""
        for c in parse_challenges(response.headers.get("WWW-Authenticate", "")):
            if (c.scheme == "bearer" and c.params.get("realm")) or c.scheme == "basic":
                with self._lock:
                    self._challenge = c
                return c
        return None

    @property
    def scheme(self) -> str | None:
        return self._challenge.scheme if self._challenge else None

    def authorization(self, scopes: Iterable[str], what: str) -> str | None:
        """The ``Authorization`` value for a request needing ``scopes`` (None: send none)."""
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            creds = self.credentials
            if creds is None:
                return None
            return basic_authorization(creds)
        key = tuple(sorted(set(scopes)))
        with self._lock:
            fetching = self._fetching.setdefault(key, threading.Lock())
        with fetching:  # parallel uploads wait for one token rather than each asking for its own
            with self._lock:
                cached = self._tokens.get(key)
            if cached and cached[1] > time.monotonic():
                return f"Bearer {cached[0]}"
            token, lifetime = self._fetch_token(challenge, key, what)
            with self._lock:
                self._tokens[key] = (token, time.monotonic() + max(lifetime - 10, 5))
        return f"Bearer {token}"

    def forget(self, scopes: Iterable[str]) -> None:
        with self._lock:
            self._tokens.pop(tuple(sorted(set(scopes))), None)

    def _fetch_token(self, challenge: Challenge, scopes: tuple[str, ...], what: str) -> tuple[str, float]:
        realm = challenge.params["realm"]
        response = self._ask_token_server(realm, challenge.params.get("service"), scopes)
        with response:
            if response.status_code == 401:
                raise self.failure(what)
            if response.status_code == 403:
                raise AccessDeniedError(
                    f"{what}: the token server refused access to {' '.join(scopes) or 'the registry'}"
                )
            if response.status_code != 200:
                raise RegistryError(
                    f"{what}: token server {realm.split('?')[0]} answered HTTP {response.status_code}; try again later"
                )
            try:
                doc = response.json()
                token = doc.get("token") or doc.get("access_token")
                lifetime = float(doc.get("expires_in") or TOKEN_MIN_LIFETIME)
            except (ValueError, AttributeError, TypeError):
                token, lifetime = None, 0.0
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{what}: token server {realm.split('?')[0]} gave no token")
        return token, max(lifetime, TOKEN_MIN_LIFETIME)

    def _ask_token_server(
        self, realm: str, service: str | None, scopes: tuple[str, ...]
    ) -> requests.Response:
        creds = self.credentials
        if creds is not None and creds.identity_token:
            # OAuth2 refresh-token grant, as Docker does for an ``identitytoken`` from config.json.
            form = {"grant_type": "refresh_token", "refresh_token": creds.secret, "client_id": "ocibuild"}
            if service:
                form["service"] = service
            if scopes:
                form["scope"] = " ".join(scopes)
            return self._fetch("POST", realm, data=form, allow_redirects=True)
        params: list[tuple[str, str]] = [("service", service)] if service else []
        params += [("scope", s) for s in scopes]
        kwargs: dict[str, Any] = {"allow_redirects": True}
        if creds is not None:
            params.append(("account", creds.username))
            # Our own header, UTF-8 as Docker sends it: requests' ``auth=`` would encode as Latin-1.
            kwargs["headers"] = {"Authorization": basic_authorization(creds)}
        return self._fetch("GET", realm, params=params, **kwargs)

    def failure(self, what: str) -> AuthenticationError:
        """The one-line error for a 401 that a fresh attempt did not cure."""
        creds = self.credentials
        if creds is None:
            return AuthenticationError(
                f"{what}: authentication required (or no such repository); run ocibuild login {self.host} or "
                "pass USER:PASSWORD for it (--creds; --src-creds/--dest-creds with copy)"
            )
        option = creds.source if creds.source and creds.source.startswith("--") else None
        src = f" (from {creds.source})" if creds.source and not option else ""
        return AuthenticationError(
            f"{what}: authentication failed for user {creds.username}{src}; check {option or 'them'} or run "
            f"ocibuild login {self.host}"
        )
