"""oras-py's ``Registry`` with ocibuild's registry client underneath, so none of its measured faults reach users.

oras-py 0.2.43 (docs/decisions.md) re-encodes manifests (``upload_manifest`` sends ``json=``, so the registry's digest is
not ours), reads whole blobs into memory (``put_upload``), fails to push to bearer-token registries (it keeps a
pull-only token and re-asks only on 403, while distribution answers 401), and retries a dead connection for 2 min
11 s (its ``@retry`` decorator on ``do_request``). This subclass keeps oras's API and its tag listing (with
``Link`` pagination) and replaces what goes over the wire:

- ``do_request`` (undecorated: no oras retries) sends through ``registry.transport.Transport``: ocibuild's one auth
  path (Basic, Bearer with per-repository scopes, the credentials ``--creds``/``login``/docker config give), TLS
  options, bounded retries and one-line errors;
- manifests go up as the exact bytes whose digest we computed (``RegistryClient.put_manifest``) and come back
  verified (``RegistryClient.get_manifest``);
- blobs are streamed both ways and verified against their digest (``RegistryClient.upload_blob``/``open_blob``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager

import oras.container
import oras.defaults
import oras.provider
import requests

from ..oci.descriptor import Descriptor, canonical_json
from ..oci.digest import CHUNK, Digest, Stream
from ..oci.tempfiles import locked_temp
from ..registry.auth import repository_scope
from ..registry.client import RegistryClient
from ..registry.errors import NotFoundError
from ..registry.transport import Transport, api_host, status_error


class _OcibuildAuth:
    """Stands in for oras's auth backends, which read ``ORAS_USER``/docker configs on their own: credentials come
    only from ocibuild's lookup, applied by the transport."""

    def load_configs(self, *args, **kwargs) -> None:
        return None

    def authenticate_request(self, *args, **kwargs):
        raise AssertionError("oras authentication is never used: ocibuild's transport authenticates")


class OrasRegistry(oras.provider.Registry):
    """One repository on one registry, through oras-py's API, on ocibuild's transport."""

    def __init__(self, transport: Transport, repository: str, push: bool = False):
        super().__init__(hostname=api_host(transport.host), auth_backend="basic")
        self.session.close()  # oras's own session is never used
        self.auth = _OcibuildAuth()
        self.transport = transport
        self.repository = repository
        self.client = RegistryClient(transport, repository, push=push)
        self.what = self.client.what
        self.prefix = transport.ping(self.what).split("://", 1)[0]  # http for a plain loopback registry
        self.container = self.container_for()

    def container_for(self, reference: str | None = None) -> oras.container.Container:
        """oras's view of this repository (built field by field: its regex would take a repository's first
        component for a host when it holds a dot)."""
        c = oras.container.Container("placeholder")
        parts = self.repository.split("/")
        c.registry = api_host(self.transport.host)
        c.namespace = "/".join(parts[:-1]) or None
        c.repository = parts[-1]
        c.tag, c.digest = oras.defaults.default_tag, None
        if reference and reference.startswith("sha256:"):
            c.digest = reference
        elif reference:
            c.tag = reference
        return c

    # ---------------------------------------------------------------- the wire

    def do_request(
        self,
        url: str,
        method: str = "GET",
        data=None,
        headers: dict | None = None,
        json: dict | None = None,
        stream: bool = False,
    ) -> requests.Response:
        if json is not None:
            raise TypeError("ocibuild never lets oras re-encode a document; send exact bytes as data")
        actions = "pull" if method in ("GET", "HEAD") else "pull,push"
        return self.transport.request(
            method, url, what=self.what, scopes=(repository_scope(self.repository, actions),),
            headers=headers, data=data, stream=stream,
        )  # fmt: skip

    def _check_200_response(self, response: requests.Response) -> None:
        if response.status_code in (200, 201, 202):
            return
        with response:
            if response.status_code == 404:
                raise NotFoundError(f"{self.what}: no such repository")
            if response.status_code == 403:
                raise self.client._denied(self.what, f"read {self.repository}")
            raise status_error(response, self.what, f"{response.request.method} {response.request.path_url}")

    # ---------------------------------------------------------------- manifests

    def get_manifest_raw(self, reference: str) -> tuple[bytes, str]:
        """The exact manifest bytes tagged or digested ``reference``, verified, and their media type."""
        return self.client.get_manifest(reference)

    def get_manifest(self, container=None, allowed_media_type=None, validation_schema=None) -> dict:
        import json

        container = self.container if container is None else self.get_container(container)
        raw, _ = self.client.get_manifest(container.digest or container.tag)
        return json.loads(raw)

    def put_manifest(self, reference: str, raw: bytes, media_type: str) -> Digest:
        return self.client.put_manifest(reference, raw, media_type)

    def upload_manifest(self, manifest, container) -> requests.Response:
        """oras's signature, our bytes: a dict is sent as canonical JSON, bytes as they are."""
        raw = manifest if isinstance(manifest, bytes) else canonical_json(manifest)
        container = self.get_container(container)
        digest = self.client.put_manifest(
            container.digest or container.tag, raw, oras.defaults.default_manifest_media_type
        )
        response = requests.Response()
        response.status_code = 201
        response.headers["Docker-Content-Digest"] = str(digest)
        return response

    # ---------------------------------------------------------------- blobs

    def has_blob(self, digest: Digest) -> bool:
        return self.client.has_blob(digest)

    def blob_exists(self, layer: dict, container=None) -> bool:
        return self.client.has_blob(Digest(layer["digest"]))

    def push_blob(
        self,
        desc: Descriptor,
        open_stream: Callable[[], AbstractContextManager[Stream]],
        progress: Callable[[int], None] = lambda n: None,
    ) -> str:
        """Make the blob present: "exists" when the registry has it, else "uploaded" (streamed)."""
        if self.client.has_blob(desc.digest):
            return "exists"
        self.client.upload_blob(desc, open_stream, progress)
        return "uploaded"

    def upload_blob(self, blob, container, layer, do_chunked=False, chunk_size=None) -> requests.Response:
        desc = Descriptor(layer["mediaType"], Digest(layer["digest"]), int(layer["size"]))
        self.push_blob(desc, lambda: open(blob, "rb"))
        response = requests.Response()
        response.status_code = 201
        return response

    def put_upload(self, blob, container, layer) -> requests.Response:
        return self.upload_blob(blob, container, layer)

    def chunked_upload(self, blob, container, layer, chunk_size=None) -> requests.Response:
        return self.upload_blob(blob, container, layer)

    def open_blob(self, desc: Descriptor) -> Stream:
        """A stream of the blob that raises at its end unless it hashes to ``desc``."""
        return self.client.open_blob(desc)

    def blob_size(self, digest: Digest) -> int:
        response = self.do_request(f"{self.transport.url('')}/v2/{self.repository}/blobs/{digest}", "HEAD")
        with response:
            if response.status_code == 404:
                raise NotFoundError(f"{self.what}: no blob {digest.short}")
            self._check_200_response(response)
            return int(response.headers.get("Content-Length", "0"))

    def download_blob(self, container, digest: str, outfile: str) -> str:
        """oras's signature (what its ``pull`` calls); streamed, verified against the digest and the size the
        registry states, and renamed into place only once verified."""
        desc = Descriptor("application/octet-stream", Digest(digest), self.blob_size(Digest(digest)))
        directory = os.path.dirname(os.path.abspath(outfile))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = locked_temp(directory, ".ocibuild-download-")
        try:
            with os.fdopen(fd, "wb") as f, self.client.open_blob(desc) as reader:
                while data := reader.read(CHUNK):
                    f.write(data)
            os.replace(tmp, outfile)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return outfile
