"""``ocibuild login``: check credentials against the registry, then store them where Docker would."""

from __future__ import annotations

from pathlib import Path

from ..errors import BadReferenceError
from ..oci.name import _HOST
from .credentials import Credentials, normalise_host, save_login
from .options import RegistryOptions
from .transport import Transport, status_error


def registry_host(text: str) -> str:
    """``https://index.docker.io/v1/`` → ``docker.io``; ``myreg:5000`` stays; anything with a path is refused."""
    host = normalise_host(text)
    if "/" in host or not _HOST.match(host):
        raise BadReferenceError(
            f"{text!r} is not a registry host (e.g. registry.example.com or localhost:5000)"
        )
    return host


def login(
    host: str, creds: Credentials, options: RegistryOptions, auth_file: Path | None, docker_config: Path
) -> str:
    """Verify ``creds`` with ``host`` (a Basic request, or a token grant) and store them (in ``auth_file``, else
    Docker's ``docker_config``); returns where."""
    options = options.with_credentials(host, creds)
    transport = Transport(host, options)
    try:
        response = transport.request("GET", "/v2/", what=host, scopes=())
        with response:
            if response.status_code != 200:
                raise status_error(response, host, "logging in")
    finally:
        transport.close()
    return save_login(host, creds, auth_file, docker_config)
