"""Where registry credentials come from, and ``ocibuild login``'s writing of them where Docker would.

Lookup order for a registry host (the first that knows the host wins):
  1. explicit credentials for that host (``--creds USER:PASS``, or ``OCIBUILD_REGISTRY_USER`` and
     ``OCIBUILD_REGISTRY_PASSWORD`` for CI), bound by the caller to the registry they were meant for, so a password
     for a private registry is never offered to another one;
  2. ``--authfile`` / ``$REGISTRY_AUTH_FILE``, then podman's ``$XDG_RUNTIME_DIR/containers/auth.json`` and
     ``~/.config/containers/auth.json``, then Docker's ``$DOCKER_CONFIG/config.json`` (``~/.docker/config.json``);
     in each file ``credHelpers[host]``, then ``auths[host]``, then ``credsStore`` (a ``docker-credential-NAME``
     program asked with ``get``).
Credentials never appear in messages: ``Credentials.__repr__`` hides the secret and errors name only the user.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..oci.name import DOCKER_HUB
from .errors import RegistryError

ENV_USER = "OCIBUILD_REGISTRY_USER"
ENV_PASSWORD = "OCIBUILD_REGISTRY_PASSWORD"
DOCKER_HUB_KEY = "https://index.docker.io/v1/"  # the key Docker itself uses for Docker Hub in config.json
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}
HELPER_TIMEOUT = 60.0


@dataclass(frozen=True)
class Credentials:
    username: str
    secret: str = field(repr=False)
    identity_token: bool = False  # ``secret`` is an OAuth2 refresh token (config.json ``identitytoken``)
    source: str = ""  # where they came from, for messages: "--creds", "/root/.docker/config.json", ...


def parse_creds(text: str, source: str = "--creds") -> Credentials:
    """``USER:PASSWORD`` (the password may itself hold colons)."""
    user, sep, secret = text.partition(":")
    if not sep or not user or not secret:
        raise UsageError(f"{source} must be USER:PASSWORD (got {'an empty user' if sep else 'no colon'})")
    return Credentials(user, secret, source=source)


def env_credentials(user: str | None, secret: str | None) -> Credentials | None:
    """The values of ``OCIBUILD_REGISTRY_USER``/``OCIBUILD_REGISTRY_PASSWORD`` (CI secrets) as credentials, or None
    when neither is set (``settings`` reads them)."""
    if not user and not secret:
        return None
    if not user or not secret:
        missing = ENV_USER if not user else ENV_PASSWORD
        raise UsageError(f"{missing} is not set; set both {ENV_USER} and {ENV_PASSWORD}, or neither")
    return Credentials(user, secret, source=f"${ENV_USER}")


def normalise_host(key: str) -> str:
    """A config.json key (``https://index.docker.io/v1/``, ``http://host:5000``, ``host``) → the registry host."""
    k = key.strip()
    had_scheme = k.startswith(("https://", "http://"))
    k = k.split("://", 1)[-1].rstrip("/")
    host, _, path = k.partition("/")
    if had_scheme and path in ("v1", "v2"):
        path = ""
    if host in _HUB_ALIASES:
        host = DOCKER_HUB
    return f"{host}/{path}" if path else host


def auth_files(
    auth_file: Path | None,
    *,
    registry_auth_file: str | None,
    runtime_dir: str | None,
    config_home: Path,
    docker_config: Path,
) -> tuple[Path, ...]:
    """The files searched, in order (existing or not): ``--authfile`` else ``$REGISTRY_AUTH_FILE``, podman's
    ``auth.json`` (runtime, then config), Docker's ``config.json``."""
    files: list[Path] = []
    if auth_file is not None:
        files.append(Path(auth_file))
    elif registry_auth_file:
        files.append(Path(registry_auth_file))
    if runtime_dir:
        files.append(Path(runtime_dir) / "containers" / "auth.json")
    files.append(config_home / "containers" / "auth.json")
    files.append(docker_config)
    return tuple(files)


def lookup(host: str, files: Sequence[Path]) -> Credentials | None:
    """Stored credentials for ``host`` in the first of ``files`` that has some (``auth_files``), or None."""
    for path in files:
        doc = _read_config(path)
        if doc is None:
            continue
        found = _from_config(doc, host, str(path))
        if found is not None:
            return found
    return None


def _read_config(path: Path) -> dict | None:
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    try:
        doc = json.loads(raw or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RegistryError(f"{path} is not valid JSON; fix or remove it") from None
    return doc if isinstance(doc, dict) else None


def _host_entry(table: object, host: str):
    if not isinstance(table, dict):
        return None
    for key, value in table.items():
        if isinstance(key, str) and normalise_host(key) == host:
            return value
    return None


def _from_config(doc: dict, host: str, source: str) -> Credentials | None:
    helper = _host_entry(doc.get("credHelpers"), host)
    if isinstance(helper, str) and helper:
        return helper_get(helper, host, source)
    entry = _host_entry(doc.get("auths"), host)
    if isinstance(entry, dict):
        creds = _decode_entry(entry, host, source)
        if creds is not None:
            return creds
    store = doc.get("credsStore")
    if isinstance(store, str) and store:
        return helper_get(store, host, source)
    return None


def _decode_entry(entry: dict, host: str, source: str) -> Credentials | None:
    user, secret = entry.get("username") or "", entry.get("password") or ""
    if entry.get("auth"):
        try:
            user, sep, secret = base64.b64decode(entry["auth"], validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, TypeError, ValueError):
            sep = ""
        if not sep:
            raise RegistryError(
                f"{source}: the auth entry for {host} is not base64 of USER:PASSWORD; log in again"
            )
    if token := entry.get("identitytoken"):
        return Credentials(user or "<token>", str(token), identity_token=True, source=source)
    if user and secret:
        return Credentials(str(user), str(secret), source=source)
    return None


def _server_url(host: str) -> str:
    return DOCKER_HUB_KEY if host == DOCKER_HUB else host


def _run_helper(exe: str, verb: str, payload: str, source: str) -> subprocess.CompletedProcess[str]:
    """One call of the Docker credential-helper protocol (``exe verb`` with ``payload`` on stdin)."""
    try:
        return subprocess.run(
            [exe, verb], input=payload, capture_output=True, text=True, timeout=HELPER_TIMEOUT
        )
    except FileNotFoundError:
        raise RegistryError(
            f"credential helper {exe} (named in {source}) is not installed; install it or remove it from that file"
        ) from None
    except subprocess.TimeoutExpired:
        raise RegistryError(f"credential helper {exe} did not answer within {HELPER_TIMEOUT:.0f} s") from None


def helper_get(name: str, host: str, source: str) -> Credentials | None:
    """Ask ``docker-credential-NAME get`` (the Docker credential-helper protocol) for ``host``."""
    exe = f"docker-credential-{name}"
    proc = _run_helper(exe, "get", _server_url(host), source)
    if proc.returncode != 0:
        said = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
        if said and "credentials not found" in said[0].lower():
            return None
        raise RegistryError(
            f"credential helper {exe} failed for {host} (exit {proc.returncode}: {said[0][:200] if said else ''})"
        )
    try:
        doc = json.loads(proc.stdout)
        user, secret = str(doc["Username"]), str(doc["Secret"])
    except (json.JSONDecodeError, KeyError, TypeError):
        raise RegistryError(f"credential helper {exe} printed something other than its JSON answer") from None
    if not secret:
        return None
    return Credentials(user, secret, identity_token=user == "<token>", source=exe)


def helper_store(name: str, host: str, creds: Credentials) -> None:
    exe = f"docker-credential-{name}"
    payload = json.dumps({"ServerURL": _server_url(host), "Username": creds.username, "Secret": creds.secret})
    proc = _run_helper(exe, "store", payload, "config.json")
    if proc.returncode != 0:
        said = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
        raise RegistryError(
            f"credential helper {exe} could not store credentials for {host}: {said[0][:200] if said else ''}"
        )


def save_login(host: str, creds: Credentials, auth_file: Path | None, docker_config: Path) -> str:
    """Store credentials the way ``docker login`` does; returns where (a file or a helper's name).

    Without ``auth_file``: Docker's ``docker_config`` (config.json), through its credential helper for ``host`` or
    its ``credsStore`` when one is configured, else base64 in ``auths``. The file is replaced atomically, 0600.
    """
    path = Path(auth_file) if auth_file is not None else docker_config
    doc = _read_config(path) or {}
    key = _server_url(host)
    known = doc.get("auths")
    auths = {k: v for k, v in known.items() if normalise_host(k) != host} if isinstance(known, dict) else {}
    helper = _host_entry(doc.get("credHelpers"), host) or doc.get("credsStore")
    if auth_file is None and isinstance(helper, str) and helper:
        helper_store(helper, host, creds)
        auths[key] = {}  # as Docker does: the entry says "logged in", the secret lives in the helper
        where = f"docker-credential-{helper}"
    else:
        token = base64.b64encode(f"{creds.username}:{creds.secret}".encode()).decode()
        auths[key] = {"auth": token}
        where = str(path)
    doc["auths"] = auths
    write_private_json(path, doc)
    return where


def write_private_json(path: Path, doc: dict) -> None:
    """Atomically replace ``path`` with ``doc``: a 0600 temp file beside it, fsynced, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent="\t")
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
